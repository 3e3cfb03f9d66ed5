//! `milebatch notify …`: notifications (e-mail and webhooks, `crate::notify`).

use std::process::ExitCode;

use clap::Subcommand;

use super::output::{fail, print_json};
use super::{known_partner, load, Cli};
use crate::notify::Delivered;
use crate::store::outbox;
use crate::termtext::cell;
use crate::{db, timefmt};

#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Send a test message to a partner now, on each channel of its
    /// `[partner.notify]` (e-mail, webhook), and say what each answered.
    /// Exits 1 if any channel failed.
    Test {
        /// The partner (its `id` in partners.toml).
        #[arg(long, value_name = "ID")]
        partner: String,
    },
    /// Deliveries not sent: pending (being retried) and failed (gave up
    /// after 24 hours), newest first, with the last error.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One line for what a delivery pass did (`once` prints it).
pub(super) fn summary_line(d: &Delivered) -> String {
    let mut s = format!(
        "notifications: {} sent, {} to retry, {} failed",
        d.sent, d.retrying, d.failed
    );
    for e in &d.errors {
        s.push_str(&format!("\n  not delivered: {e}"));
    }
    if d.retrying > 0 {
        s.push_str("\n  (retried by `milebatch run`, or the next `milebatch once`, for 24 hours)");
    }
    s
}

pub(super) fn run(cli: &Cli, command: &NotifyCommand) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    match command {
        NotifyCommand::Test { partner } => {
            if let Err(code) = known_partner(&config, partner) {
                return Ok(code);
            }
            let conn = db::open(&config.daemon.database)?;
            let (event_id, results) =
                match crate::notify::test(&config, &conn, partner, chrono::Utc::now()) {
                    Ok(r) => r,
                    Err(e @ crate::notify::NotifyError::NotConfigured(_)) => {
                        return Ok(fail(format_args!(
                            "{e}: add [partner.notify] with `email` or `webhook`"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                };
            println!("test event {event_id}");
            let mut ok = true;
            for (channel, target, r) in &results {
                match r {
                    Ok(()) => println!("  {channel} {target}: sent"),
                    Err(e) => {
                        ok = false;
                        println!("  {channel} {target}: FAILED: {e}");
                    }
                }
            }
            if results.is_empty() {
                ok = false;
                println!("  no channel takes the test event: check [partner.notify]");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        NotifyCommand::List { limit, json } => {
            let conn = db::open_query(&config.daemon.database)?;
            let rows = outbox::unsent(&conn, *limit)?;
            let counts = outbox::counts(&conn, chrono::Utc::now())?;
            if *json {
                print_json(&serde_json::json!({ "counts": counts, "unsent": rows }))?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "notifications: {} pending, {} failed, {} not yet routed",
                counts.pending, counts.failed, counts.unrouted
            );
            for d in &rows {
                println!(
                    "{}  {}  {:<8} {}  {}  {} ({} attempts){}",
                    timefmt::stored_for_people(&d.created_at, config.daemon.timezone),
                    cell(d.partner.as_deref().unwrap_or("-")),
                    d.state,
                    cell(&d.kind),
                    d.channel,
                    cell(&d.target),
                    d.attempts,
                    d.last_error
                        .as_deref()
                        .map(|e| format!("\n    last error: {}", cell(e)))
                        .unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
