//! `milebatch user …`: management-site accounts.

use std::process::ExitCode;

use clap::Subcommand;

use super::output::print_json;
use super::{load, Cli};
use crate::db;
use crate::termtext::cell;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a site user and print a one-time initial password (shown
    /// once; it is stored only as an argon2id hash).
    Add {
        /// The user's e-mail address (the login name; any case).
        email: String,
        /// A partner's staff: sees only this partner (its `id` in partners.toml).
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "ops",
            required_unless_present = "ops"
        )]
        partner: Option<String>,
        /// An operator: sees every partner, the dashboard and "run now".
        #[arg(long)]
        ops: bool,
    },
    /// Give a user a new generated password (printed once); also unlocks a
    /// locked account and ends the user's sessions.
    Passwd {
        /// The user's e-mail address.
        email: String,
    },
    /// Disable a user: no more logins, and open sessions end now.
    Disable {
        /// The user's e-mail address.
        email: String,
    },
    /// Enable a disabled user again (also clears a lock); the password is
    /// unchanged.
    Enable {
        /// The user's e-mail address.
        email: String,
    },
    /// List the site users: role, partner, disabled, locked, failed logins.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cli: &Cli, command: &UserCommand) -> anyhow::Result<ExitCode> {
    use crate::web::auth::users;
    let config = load(cli)?;
    let conn = db::open(&config.daemon.database)?;
    let actor = crate::audit::cli_actor();
    match command {
        UserCommand::Add {
            email,
            partner,
            ops: _,
        } => {
            if let Some(p) = partner {
                if !config.partners.iter().any(|c| &c.id == p) {
                    anyhow::bail!("no partner {p:?} in {}", config.path.display());
                }
            }
            let users::InitialPassword(pw) = users::add(&conn, email, partner.as_deref(), &actor)?;
            println!(
                "created {email}; initial password (shown once, give it to the user securely):"
            );
            println!("{pw}");
        }
        UserCommand::Passwd { email } => {
            let users::InitialPassword(pw) = users::reset_password(&conn, email, &actor)?;
            println!("new password for {email} (shown once; its sessions were ended):");
            println!("{pw}");
        }
        UserCommand::Disable { email } => {
            users::disable(&conn, email, &actor)?;
            println!("disabled {email}; its sessions were ended");
        }
        UserCommand::Enable { email } => {
            users::enable(&conn, email, &actor)?;
            println!("enabled {email}; it can log in with its password again");
        }
        UserCommand::List { json } => {
            let rows = users::list(&conn, chrono::Utc::now().timestamp())?;
            if *json {
                print_json(&rows)?;
            } else {
                println!("{:<32} {:<16} {:<9} FAILED", "EMAIL", "ROLE", "STATE");
                for r in rows {
                    let role = r
                        .partner
                        .as_deref()
                        .map_or("ops".to_owned(), |p| format!("partner {p}"));
                    let state = if r.disabled {
                        "disabled"
                    } else if r.locked_until.is_some() {
                        "locked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<32} {:<16} {:<9} {}",
                        cell(&r.email),
                        cell(&role),
                        state,
                        r.failed_logins
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
