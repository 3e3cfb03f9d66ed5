//! `milebatch api-key …`: partner API keys.

use std::process::ExitCode;

use clap::Subcommand;

use super::output::{fail, print_json};
use super::{known_partner, load, Cli};
use crate::termtext::cell;
use crate::timefmt;

#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Create a key for a partner's API calls and print it, once: only its
    /// hash is kept. Needs `[partner.api] enabled = true` to be of use.
    Create {
        /// The partner the key acts for (its `id` in partners.toml).
        #[arg(long, value_name = "ID")]
        partner: String,
        /// A note for people: where the key is used.
        #[arg(long, default_value = "")]
        label: String,
        /// Print as JSON (`key` and its `prefix`).
        #[arg(long)]
        json: bool,
    },
    /// Every key: prefix, partner, label, created, last used, revoked.
    List {
        /// Only this partner's keys.
        #[arg(long, value_name = "ID")]
        partner: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once, by the prefix `list` shows (`mbk_` and 8 hex
    /// digits). Exits 1 if no such key is active.
    Revoke {
        /// The key's prefix.
        prefix: String,
    },
}

pub(super) fn run(cli: &Cli, command: &ApiKeyCommand) -> anyhow::Result<ExitCode> {
    use crate::web::auth::api_keys;
    let config = load(cli)?;
    let actor = crate::audit::cli_actor();
    match command {
        ApiKeyCommand::Create {
            partner,
            label,
            json,
        } => {
            if let Err(code) = known_partner(&config, partner) {
                return Ok(code);
            }
            let conn = crate::store::open_writer(&config.daemon.store)?;
            let c = api_keys::create(&conn, partner, label, &actor, None)?;
            if *json {
                print_json(
                    &serde_json::json!({"key": c.key, "prefix": c.info.prefix, "partner": partner}),
                )?;
            } else {
                println!("{}", c.key);
                eprintln!(
                    "API key {} for partner {partner} created. It is shown only now: give it to the partner over a safe channel.",
                    c.info.prefix
                );
                if !config.partner(partner).is_some_and(|p| p.api.enabled) {
                    eprintln!("note: partner {partner} has no `[partner.api] enabled = true` yet: the key is refused until it has");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::List { partner, json } => {
            if let Some(p) = partner {
                if let Err(code) = known_partner(&config, p) {
                    return Ok(code);
                }
            }
            // A PostgreSQL database never migrated has no keys yet.
            let keys = match super::open_existing(&config)? {
                Some(conn) => api_keys::list(conn.as_ref(), partner.as_deref())?,
                None => Vec::new(),
            };
            let tz = config.daemon.timezone;
            if *json {
                print_json(&keys)?;
            } else if keys.is_empty() {
                println!("no API keys");
            } else {
                println!("prefix\tpartner\tlabel\tcreated\tlast used\trevoked");
                let when = |t: &Option<String>| {
                    t.as_deref()
                        .map(|t| timefmt::stored_for_people(t, tz))
                        .unwrap_or_else(|| "-".into())
                };
                for k in keys {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        k.prefix,
                        k.partner,
                        cell(&k.label),
                        timefmt::stored_for_people(&k.created_at, tz),
                        when(&k.last_used_at),
                        when(&k.revoked_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::Revoke { prefix } => {
            let conn = crate::store::open_writer(&config.daemon.store)?;
            match api_keys::revoke(&conn, prefix, None, &actor, None)? {
                Some(k) => {
                    println!("revoked API key {} of partner {}", k.prefix, k.partner);
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(fail(format_args!(
                    "no active API key with prefix {prefix:?}; `milebatch api-key list` shows them"
                ))),
            }
        }
    }
}
