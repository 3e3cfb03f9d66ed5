//! The command line. Each subcommand is a small function over the library;
//! `anyhow` is used here only (`main.rs` prints what `run` returns).
//!
//! What must stay true:
//! - every argument has help text (a unit test walks the clap `Command`);
//! - exit 1 means "the answer is no" (a refused file, a `check` problem, an
//!   unknown `--partner` or member) and 2 "could not start";
//! - times for people go through `timefmt`, in the configured zone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::pipeline::{self, RunOptions, RunReport, Trigger};
use crate::schedule::Clock;
use crate::{check, daemon, db, members, money, query, timefmt};

#[derive(Parser, Debug)]
#[command(
    name = "milebatch",
    version,
    about = "Partner point-exchange batch: pull, validate, credit miles exactly once"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "partners.toml"
    )]
    pub config: PathBuf,
    /// Log line format on stderr (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every partner (or one) now, once.
    Once {
        /// Run only this partner (its `id` in partners.toml).
        #[arg(long, value_name = "ID")]
        partner: Option<String>,
        /// Validate and write the error reports, credit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the run reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon: run every partner on its schedule until SIGTERM/SIGINT
    /// (what the systemd unit runs). Catches up a run missed while down.
    Run,
    /// The web process: the partner API and the management site over HTTPS
    /// (`[server]` in the config), until SIGTERM/SIGINT. Prints the address
    /// it listens on as its first line on stdout.
    Serve,
    /// Per partner: last run, next run, consecutive failures, last error,
    /// last missed delivery. Reads the database; safe while the daemon runs.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that every partner can run: secrets, key files, known_hosts,
    /// CA files, inboxes, the database and data_dir. Exits 1 naming each
    /// problem. Also lists the partners and their next three runs.
    Check {
        /// Also connect to each partner's server (host key, login), list the
        /// inbox and count the files matching the pattern. Changes nothing.
        #[arg(long)]
        connect: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Management-site accounts (`milebatch serve`): partner staff and ops.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Exchanges sent through the partner API, newest first: credited
    /// (201) and rejected (422, with the code).
    Exchanges {
        /// Only this partner's exchanges.
        #[arg(long, value_name = "ID")]
        partner: Option<String>,
        /// Show at most this many (0: all).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Partner API keys: create, list, revoke.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The member store.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// A member's balance, by member ID or e-mail. Exits 1 if there is no
    /// such member.
    Balance {
        /// A member ID, or a registered e-mail (any case).
        member: String,
        /// Print as JSON (`"found": false` for an unknown member).
        #[arg(long)]
        json: bool,
    },
    /// Every credit of one partner key.
    History {
        /// The partner (its `id` in partners.toml).
        #[arg(long, value_name = "ID")]
        partner: String,
        /// The partner key to search for, as in the exchange file.
        #[arg(long)]
        key: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that the money adds up: every balance equals its member's
    /// ledger rows, every credited file's ledger rows match its counts,
    /// miles and the digest stored at commit. Exits 1 naming each mismatch.
    /// Reads only; safe while the daemon runs.
    Verify {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a wrong credit back: compensating negative ledger rows for every
    /// credited row of a file (or one API exchange), balances reduced in the
    /// same transaction. Refused whole, naming each member and shortfall, if
    /// a balance would go below zero. Reversing twice changes nothing.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["file", "exchange"])))]
    Reverse {
        /// The file to reverse (its id in `milebatch files`).
        #[arg(long, value_name = "ID")]
        file: Option<i64>,
        /// The API exchange to reverse (its id in the API's answers).
        #[arg(long, value_name = "ID")]
        exchange: Option<i64>,
        /// Why: kept with the reversal and in the audit trail.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A partner's monthly statement (the basis of its invoice): miles
    /// issued by channel (pull, upload, API), by file and by day, then the
    /// reversals, then the net total, with row counts. The month runs from
    /// local midnight on its first day in `[daemon] timezone`.
    Statement {
        /// The partner (its `id` in partners.toml).
        #[arg(long)]
        partner: String,
        /// The month, as YYYY-MM (e.g. 2026-11).
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
        /// Print as CSV (`section,item,detail,rows,miles`).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy the database to DEST while everything runs (one consistent
    /// snapshot, file mode 0600), then check the copy with `verify`.
    /// Never overwrites a file. Exits 1 if the copy does not verify.
    Backup {
        /// The new backup file (must not exist).
        dest: PathBuf,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a backup in place of the database. Refused while any process
    /// (the daemon, `serve`, a `once`) has the database open, and if the
    /// backup does not verify. The replaced database is kept beside it as
    /// `<name>.before-restore-<time>`.
    Restore {
        /// The backup file to restore.
        src: PathBuf,
    },
    /// Process a refused (or reversed) file again from its archived bytes,
    /// through the same credit stage, as a new file row linked to the old
    /// one. Refused for a file that is credited and not reversed.
    Retry {
        /// The file to retry (its id in `milebatch files`).
        #[arg(long, value_name = "ID")]
        file: i64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delivered files, newest first: outcome, counts, error report, reason.
    Files {
        /// Only this partner's files.
        #[arg(long, value_name = "ID")]
        partner: Option<String>,
        /// Only files received on or after this day (YYYY-MM-DD, in the
        /// configured time zone).
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        since: Option<chrono::NaiveDate>,
        /// Only files with this outcome (`refused` includes `duplicate`).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(query::FILE_OUTCOMES))]
        outcome: Option<String>,
        /// Show at most this many files (0: all).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u64,
        /// Oldest first instead of newest first.
        #[arg(long)]
        oldest_first: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

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
    /// List the site users: role, partner, disabled, locked, failed logins.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

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

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Upsert members from a `member_id,email,status` CSV. All or nothing.
    Import {
        /// The CSV file: `member_id,email,status` (optional header line).
        file: PathBuf,
        /// The file's text encoding.
        #[arg(long, value_enum, default_value_t = FileEncoding::Utf8)]
        encoding: FileEncoding,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Text encodings `members import` reads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEncoding {
    #[value(name = "utf-8")]
    Utf8,
    /// Shift_JIS as Windows writes it (CP932).
    #[value(name = "shift_jis")]
    ShiftJis,
}

impl From<FileEncoding> for crate::config::Encoding {
    fn from(e: FileEncoding) -> Self {
        match e {
            FileEncoding::Utf8 => crate::config::Encoding::Utf8,
            FileEncoding::ShiftJis => crate::config::Encoding::ShiftJis,
        }
    }
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date: use YYYY-MM-DD, e.g. 2026-11-24"))
}

/// Text logs carry their time in the configured zone. The config is read
/// here only for that; an unreadable one is reported by the command itself,
/// and logs fall back to UTC until then.
pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if cli.log_format == LogFormat::Json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        let tz = Config::load(&cli.config)
            .map(|c| c.daemon.timezone)
            .unwrap_or(chrono_tz::UTC);
        builder.with_timer(crate::timefmt::LogTimer(tz)).init();
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&cli.config)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Print `milebatch: error: …` and give exit code 1: the command ran and
/// the answer is "no" (an unknown partner or member, a problem found).
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("milebatch: error: {message}");
    ExitCode::from(1)
}

/// `Err(exit code 1)` unless `id` is a partner of `config`; the message
/// names the partners there are.
fn known_partner(config: &Config, id: &str) -> Result<(), ExitCode> {
    if config.partner(id).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = config.partners.iter().map(|p| p.id.as_str()).collect();
    Err(fail(format_args!(
        "no partner {id:?} in {}; the partners are: {}",
        config.path.display(),
        if known.is_empty() {
            "(none)".to_owned()
        } else {
            known.join(", ")
        }
    )))
}

/// Run the parsed command. `Ok(code)`: the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Once {
            partner,
            dry_run,
            json,
        } => once(&cli, partner.as_deref(), *dry_run, *json),
        Command::Check { json, connect } => check(&cli, *json, *connect),
        Command::Run => run_daemon(&cli),
        Command::Serve => serve(&cli),
        Command::Status { json } => status(&cli, *json),
        Command::User { command } => user(&cli, command),
        Command::ApiKey { command } => api_key(&cli, command),
        Command::Exchanges {
            partner,
            limit,
            json,
        } => {
            let config = load(&cli)?;
            if let Some(p) = partner {
                if let Err(code) = known_partner(&config, p) {
                    return Ok(code);
                }
            }
            let conn = db::open_query(&config.daemon.database)?;
            let rows = query::api_exchanges(&conn, partner.as_deref(), *limit)?;
            let tz = config.daemon.timezone;
            if *json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no API exchanges");
            } else {
                println!("id\treceived\tpartner\tkey\tstatus\tmember\tpartner key\tmiles");
                for r in rows {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.id,
                        timefmt::stored_for_people(&r.created_at, tz),
                        r.partner,
                        r.key_prefix,
                        match (r.status, &r.code) {
                            (201, _) => "credited".to_owned(),
                            (_, Some(c)) => format!("rejected {c}"),
                            (s, None) => s.to_string(),
                        },
                        r.member_id.as_deref().unwrap_or("-"),
                        r.partner_key.as_deref().unwrap_or("-"),
                        r.miles.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Members {
            command:
                MembersCommand::Import {
                    file,
                    encoding,
                    json,
                },
        } => {
            let config = load(&cli)?;
            let mut conn = db::open(&config.daemon.database)?;
            let started = std::time::Instant::now();
            let s = members::import(&mut conn, file, (*encoding).into())?;
            if *json {
                print_json(&s)?;
            } else {
                println!(
                    "imported {} members from {} in {:.1}s",
                    s.rows,
                    file.display(),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Balance { member, json } => {
            let config = load(&cli)?;
            let conn = db::open_query(&config.daemon.database)?;
            let Some((member_id, status, miles)) = members::balance(&conn, member)? else {
                if *json {
                    print_json(&serde_json::json!({"member": member, "found": false}))?;
                }
                return Ok(fail(format_args!(
                    "no member {member:?} (neither a member ID nor a registered e-mail)"
                )));
            };
            if *json {
                print_json(&serde_json::json!({
                    "member": member,
                    "found": true,
                    "member_id": member_id,
                    "status": status,
                    "miles": miles,
                }))?;
            } else {
                println!(
                    "{member_id}\t{miles} miles\t{}",
                    serde_json::to_value(status)?.as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History { partner, key, json } => {
            let config = load(&cli)?;
            if let Err(code) = known_partner(&config, partner) {
                return Ok(code);
            }
            let conn = db::open_query(&config.daemon.database)?;
            let rows = query::history(&conn, partner, key)?;
            let tz = config.daemon.timezone;
            if *json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no credits for partner {partner} key {key:?}");
            } else {
                println!("credited at\tmember\tmiles\tfile:line");
                for r in rows {
                    let reversal = r
                        .reversal
                        .map(|id| format!("\treversal {id}"))
                        .unwrap_or_default();
                    println!(
                        "{}\t{}\t{}\t{}:{}{reversal}",
                        timefmt::stored_for_people(&r.credited_at, tz),
                        r.member_id,
                        r.miles,
                        r.file,
                        r.line
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { json } => {
            let config = load(&cli)?;
            let conn = db::open_query(&config.daemon.database)?;
            let report = money::verify::verify(&conn)?;
            if *json {
                print_json(&report)?;
            } else {
                for m in &report.mismatches {
                    println!("MISMATCH {}: {}: {}", m.kind, m.subject, m.detail);
                }
                println!(
                    "{}: {} ledger rows, {} balances, {} credited files{} in {:.2} s",
                    if report.ok { "ok" } else { "FAILED" },
                    report.ledger_rows,
                    report.members,
                    report.credited_files,
                    if report.files_without_digest > 0 {
                        format!(
                            " ({} credited before digests were stored: digest not checked)",
                            report.files_without_digest
                        )
                    } else {
                        String::new()
                    },
                    report.elapsed_ms as f64 / 1000.0
                );
            }
            if report.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(fail(format!(
                    "verify: {} mismatch(es) between balances, ledger and files",
                    report.mismatches.len()
                )))
            }
        }
        Command::Reverse {
            file,
            exchange,
            reason,
            json,
        } => {
            use money::reverse::{self, Outcome, Target};
            let config = load(&cli)?;
            let target = match (file, exchange) {
                (Some(id), _) => Target::File(*id),
                (None, Some(id)) => Target::Exchange(*id),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let mut conn = db::open(&config.daemon.database)?;
            let actor = crate::audit::cli_actor();
            let outcome =
                reverse::reverse(&mut conn, target, reason, &actor, None, clock()?.now())?;
            if *json {
                print_json(&outcome)?;
            }
            let tz = config.daemon.timezone;
            let done = |r: &reverse::Reversal| {
                format!(
                    "reversal {} of {target} ({}): {} rows, {} miles taken back from {} members, by {} at {}: {}",
                    r.id,
                    r.partner,
                    r.rows,
                    r.miles,
                    r.members,
                    r.actor,
                    timefmt::stored_for_people(&r.at, tz),
                    r.reason
                )
            };
            match &outcome {
                Outcome::Reversed(r) => {
                    if !*json {
                        println!("{}", done(r));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::AlreadyReversed(r) => {
                    if !*json {
                        println!("already reversed, nothing changed: {}", done(r));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::Refused { reason } => {
                    Ok(fail(format!("cannot reverse {target}: {reason}")))
                }
                Outcome::Shortfall { members } => {
                    let list: Vec<String> = members
                        .iter()
                        .map(|m| {
                            format!(
                                "{} (balance {}, to take back {}, short by {})",
                                m.member_id, m.balance, m.to_reverse, m.shortfall
                            )
                        })
                        .collect();
                    Ok(fail(format!(
                        "cannot reverse {target}: nothing changed, because {} member(s) no longer hold the miles it would take back: {}",
                        members.len(),
                        list.join("; ")
                    )))
                }
            }
        }
        Command::Statement {
            partner,
            month,
            csv,
            json,
        } => {
            let config = load(&cli)?;
            if let Err(code) = known_partner(&config, partner) {
                return Ok(code);
            }
            let tz = config.daemon.timezone;
            // A bad month is the user's to fix: say so before the database.
            if let Err(e) = money::statement::month_bounds(month, tz) {
                return Ok(fail(e));
            }
            let conn = db::open_query(&config.daemon.database)?;
            let st = money::statement::statement(&conn, partner, month, tz)?;
            if *json {
                print_json(&st)?;
            } else if *csv {
                print!("{}", money::statement::to_csv(&st));
            } else {
                print_statement(&st, tz);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { dest, json } => {
            let config = load(&cli)?;
            let r = money::backup::backup(&config.daemon.database, dest)?;
            if *json {
                print_json(&r)?;
            } else {
                for m in &r.verify.mismatches {
                    println!("MISMATCH {}: {}: {}", m.kind, m.subject, m.detail);
                }
                println!(
                    "backup {} ({} bytes): {} ledger rows, {} balances, {} credited files; verify {}",
                    r.path.display(),
                    r.bytes,
                    r.verify.ledger_rows,
                    r.verify.members,
                    r.verify.credited_files,
                    if r.verify.ok { "ok" } else { "FAILED" }
                );
            }
            if r.verify.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(fail(format!(
                    "the backup {} was written but does not verify ({} mismatch(es)): the live database has them too; run `milebatch verify`",
                    r.path.display(),
                    r.verify.mismatches.len()
                )))
            }
        }
        Command::Restore { src } => {
            let config = load(&cli)?;
            match money::backup::restore(src, &config.daemon.database, clock()?.now()) {
                Ok(r) => {
                    println!(
                        "restored {} to {}{}",
                        r.restored_from.display(),
                        r.database.display(),
                        r.previous
                            .map(|p| format!(
                                "; the database it replaced is kept as {}",
                                p.display()
                            ))
                            .unwrap_or_default()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(
                    e @ (money::backup::BackupError::InUse { .. }
                    | money::backup::BackupError::SourceBad { .. }),
                ) => Ok(fail(e)),
                Err(e) => Err(e.into()),
            }
        }
        Command::Retry { file, json } => {
            use money::retry::RetryOutcome;
            let config = load(&cli)?;
            let actor = crate::audit::cli_actor();
            let outcome = money::retry::retry(&config, *file, &actor, clock()?.now())?;
            if *json {
                print_json(&outcome)?;
            }
            match outcome {
                RetryOutcome::Refused { reason } => {
                    Ok(fail(format!("cannot retry file {file}: {reason}")))
                }
                RetryOutcome::Done {
                    retry_of,
                    file_id,
                    report,
                } => {
                    let c = &report.counts;
                    if !*json {
                        println!(
                            "file {retry_of} retried as file {}: {}, {} rows, {} credited, {} failed, {} miles{}{}",
                            file_id.map_or("-".into(), |i| i.to_string()),
                            report.outcome,
                            c.rows,
                            c.credited,
                            c.failed,
                            c.miles,
                            report
                                .reason
                                .as_ref()
                                .map(|r| format!(" — {r}"))
                                .unwrap_or_default(),
                            report
                                .report_path
                                .as_ref()
                                .map(|p| format!("; error report {}", p.display()))
                                .unwrap_or_default()
                        );
                    }
                    if report.outcome == "credited" {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Ok(ExitCode::from(1))
                    }
                }
            }
        }
        Command::Files {
            partner,
            since,
            outcome,
            limit,
            oldest_first,
            json,
        } => {
            let config = load(&cli)?;
            if let Some(id) = partner {
                if let Err(code) = known_partner(&config, id) {
                    return Ok(code);
                }
            }
            let tz = config.daemon.timezone;
            let conn = db::open_query(&config.daemon.database)?;
            let page = query::files(
                &conn,
                &query::FileFilter {
                    partner: partner.as_deref(),
                    since: since.map(|d| timefmt::start_of_day(d, tz)),
                    outcome: outcome.as_deref(),
                    limit: (*limit > 0).then_some(*limit),
                    newest_first: !*oldest_first,
                },
                tz,
            )?;
            let more = page.total - page.rows.len() as u64;
            let hint = format!(
                "{more} more file(s) not shown; use --limit {} (or --limit 0 for all)",
                page.total
            );
            if *json {
                print_json(&page.rows)?;
                if more > 0 {
                    eprintln!("milebatch: {hint}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if page.rows.is_empty() {
                println!("no files");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "id\treceived\tpartner\tfile\toutcome\trows\tcredited\tfailed\trepeats\tmiles\treport\treason"
            );
            for r in &page.rows {
                // A refused file's reason starts with its file code (F001–F007);
                // its report is shown too: the partner gets it.
                let reason = match (&r.file_code, &r.reason) {
                    (Some(code), Some(why)) => format!("{code} {why}"),
                    (None, Some(why)) => why.clone(),
                    (Some(code), None) => code.clone(),
                    (None, None) => "-".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    timefmt::stored_for_people(&r.started_at, tz),
                    r.partner,
                    r.name,
                    r.outcome,
                    r.rows,
                    r.credited,
                    r.failed,
                    r.repeats.map_or("-".to_owned(), |n| n.to_string()),
                    r.miles,
                    r.report_path.as_deref().unwrap_or("-"),
                    reason,
                );
            }
            if more > 0 {
                println!("{hint}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn once(cli: &Cli, only: Option<&str>, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    let partners: Vec<_> = match only {
        Some(id) => match known_partner(&config, id) {
            Ok(()) => config.partners.iter().filter(|p| p.id == id).collect(),
            Err(code) => return Ok(code),
        },
        None => config.partners.iter().collect(),
    };
    // Fail early and clearly if the database cannot be opened.
    db::open(&config.daemon.database)?;
    let clock = clock()?;
    let shutdown = AtomicBool::new(false);
    let reports: Vec<RunReport> = partners
        .into_iter()
        .map(|p| {
            pipeline::run_partner(
                &config,
                p,
                &RunOptions {
                    dry_run,
                    trigger: Trigger::Manual,
                    now: clock.now(),
                    shutdown: &shutdown,
                    // At the terminal, "busy" at once says more than a wait.
                    lock_wait: std::time::Duration::ZERO,
                },
            )
        })
        .collect();
    if json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            print_run(r, dry_run, config.daemon.timezone);
        }
    }
    Ok(if reports.iter().all(RunReport::is_clean) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_run(r: &RunReport, dry_run: bool, tz: chrono_tz::Tz) {
    let c = &r.counts;
    let verb = if dry_run { "would credit" } else { "credited" };
    println!(
        "{}: {} — {} file(s), {} rows, {verb} {}, failed {} ({}), {} miles",
        r.partner,
        r.outcome,
        r.files.len(),
        c.rows,
        c.credited,
        c.failed,
        c.by_code_text(),
        c.miles
    );
    for f in &r.files {
        print!(
            "  {} [{}] rows {} credited {} failed {}",
            f.name, f.outcome, f.counts.rows, f.counts.credited, f.counts.failed
        );
        if let Some(why) = &f.reason {
            print!(" — {why}");
        }
        if let Some(r) = f.counts.repeats.filter(|r| *r > 0) {
            print!(" repeats {r}");
        }
        if let Some(w) = &f.warning {
            print!(" — {w}");
        }
        if let Some(p) = &f.report_path {
            print!(" — error report {}", p.display());
        }
        println!();
    }
    for t in &r.tidy_failed {
        println!(
            "  {} [tidy-failed] file {} — {} (failing since {})",
            t.name,
            t.file_id,
            t.error,
            timefmt::stored_for_people(&t.failing_since, tz)
        );
    }
    for s in &r.skipped {
        // Escaped: an unsafe name may hold control characters.
        print!(
            "  {} [skipped: {}]",
            s.name.escape_debug(),
            s.reason.as_str()
        );
        if let Some(id) = s.file_id {
            print!(" file {id}");
        }
        println!(" — {}", s.detail);
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}

fn print_statement(st: &money::statement::Statement, tz: chrono_tz::Tz) {
    let t = |s: &str| timefmt::stored_for_people(s, tz);
    println!(
        "statement {} {}: {} to {}",
        st.partner,
        st.month,
        t(&st.from),
        t(&st.until)
    );
    println!("issued by channel");
    for c in &st.by_channel {
        println!(
            "  {:<8}{:>10} rows{:>14} miles",
            c.channel, c.total.rows, c.total.miles
        );
    }
    println!("issued by file");
    for f in &st.by_file {
        let id = if f.file_id == 0 {
            "API".to_owned()
        } else {
            format!("file {}", f.file_id)
        };
        println!(
            "  {id} {} ({}){:>10} rows{:>14} miles",
            f.name, f.channel, f.total.rows, f.total.miles
        );
    }
    println!("issued by day");
    for d in &st.by_day {
        println!(
            "  {}{:>10} rows{:>14} miles",
            d.day, d.total.rows, d.total.miles
        );
    }
    println!("issued  {} rows, {} miles", st.issued.rows, st.issued.miles);
    println!("reversals");
    for r in &st.reversals {
        println!(
            "  reversal {} of {} at {} by {}: {} rows, {} miles — {}",
            r.id,
            r.what,
            t(&r.at),
            r.actor,
            r.total.rows,
            r.total.miles,
            r.reason
        );
    }
    println!(
        "reversed  {} rows, {} miles",
        st.reversed.rows, st.reversed.miles
    );
    println!("net  {} rows, {} miles", st.net.rows, st.net.miles);
}

/// The system clock, or the test-only fake one (see [`daemon::FAKE_NOW_ENV`]).
fn clock() -> anyhow::Result<Arc<dyn Clock>> {
    daemon::clock_from_env().map_err(anyhow::Error::msg)
}

/// `milebatch run`: a tokio runtime, SIGTERM/SIGINT wired to the daemon's
/// shutdown, exit 0 after a clean stop.
fn run_daemon(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = Arc::new(load(cli)?);
    // Held open for the daemon's whole life, idle or not: `restore` refuses
    // while any process has the database open (money/backup.rs).
    let _holder = db::open(&config.daemon.database)?;
    let clock = clock()?;
    let metrics_listener = bind_metrics(config.daemon.metrics_listen, "[daemon] metrics_listen")?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        // Install the handlers before anything is scheduled (and before
        // READY=1), so an early SIGTERM is never the default "die now".
        let rx = shutdown_on_signals()?;
        if let Some(l) = metrics_listener {
            let m = Arc::new(crate::metrics::Metrics::new(
                config.daemon.database.clone(),
                config.partners.iter().map(|p| p.id.clone()).collect(),
                None,
            ));
            let stop = rx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(m, l, stop).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        daemon::run(config, clock, rx)
            .await
            .map_err(anyhow::Error::from)
    });
    // A run that outlived shutdown_timeout is abandoned here: its open
    // transaction rolls back with the process.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The `/metrics` listener, bound before anything starts so that a taken
/// port fails the start with the key to change.
fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
    key: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    addr.map(|a| {
        std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} ({key})"))
    })
    .transpose()
}

fn user(cli: &Cli, command: &UserCommand) -> anyhow::Result<ExitCode> {
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
                        r.email, role, state, r.failed_logins
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(cli: &Cli) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let config = Arc::new(load(cli)?);
    // Create or migrate the database before the first request, and fail
    // here, clearly, if it cannot be opened. Held open for the process's
    // life: `restore` refuses while any process has the database open.
    let _holder = db::open(&config.daemon.database)?;
    let listen = config.server.listen;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (`[server] listen`)"))?;
    let addr = listener.local_addr()?;
    let metrics_listener = bind_metrics(config.server.metrics_listen, "[server] metrics_listen")?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let rt = runtime()?;
    // Before the `listening` line: a bad certificate or key fails the start.
    let tls = rt.block_on(crate::web::load_tls(&config))?;
    crate::web::nofile::raise_soft_limit(config.server.limits.max_connections);
    // The bound address (port 0 picks one) for scripts and tests.
    println!("listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    let result = rt.block_on(async move {
        let rx = shutdown_on_signals()?;
        crate::web::serve(config, tls, listener, metrics_listener, rx)
            .await
            .map_err(anyhow::Error::from)
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

fn api_key(cli: &Cli, command: &ApiKeyCommand) -> anyhow::Result<ExitCode> {
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
            let mut conn = db::open(&config.daemon.database)?;
            let c = api_keys::create(&mut conn, partner, label, &actor, None)?;
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
            let conn = db::open_query(&config.daemon.database)?;
            let keys = api_keys::list(&conn, partner.as_deref())?;
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
                        k.label,
                        timefmt::stored_for_people(&k.created_at, tz),
                        when(&k.last_used_at),
                        when(&k.revoked_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::Revoke { prefix } => {
            let mut conn = db::open(&config.daemon.database)?;
            match api_keys::revoke(&mut conn, prefix, None, &actor, None)? {
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("milebatch")
        .build()
        .context("starting the tokio runtime")
}

/// A channel that turns true on the first SIGTERM or SIGINT (later ones
/// are logged). Call inside the runtime.
fn shutdown_on_signals() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if tx.send_replace(true) {
                tracing::warn!(signal = name, "already shutting down");
            } else {
                tracing::info!(signal = name, "signal received: shutting down");
            }
        }
    });
    Ok(rx)
}

fn status(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    // Before the first run there is no database: every partner simply has
    // no history yet.
    let conn = match db::open_query(&config.daemon.database) {
        Err(db::DbError::Missing { .. }) => None,
        other => Some(other?),
    };
    let tz = config.daemon.timezone;
    let now = clock()?.now();
    let mut out = Vec::new();
    for p in &config.partners {
        let st = match &conn {
            Some(c) => query::partner_status(c, &p.id)?,
            None => query::PartnerStatus::default(),
        };
        let next = p.schedule.next_after(now, tz).map(|t| daemon::zoned(t, tz));
        let mut v = serde_json::to_value(&st)?;
        v["id"] = p.id.clone().into();
        v["schedule"] = p.schedule.to_string().into();
        v["next_run"] = next.into();
        out.push(v);
    }
    let (last_verify, last_backup) = match &conn {
        Some(c) => (
            crate::money::verify::last_run(c)?,
            crate::money::backup::last_run(c)?,
        ),
        None => (None, None),
    };
    let d = &config.daemon;
    let next = |s: &Option<crate::schedule::Schedule>| {
        s.as_ref()
            .and_then(|s| s.next_after(now, tz))
            .map(|t| daemon::zoned(t, tz))
    };
    let maintenance = serde_json::json!({
        "verify": {
            "schedule": d.verify.as_ref().map(|s| s.to_string()),
            "next": next(&d.verify),
            "last": last_verify,
        },
        "backup": {
            "schedule": d.backup.as_ref().map(|s| s.to_string()),
            "next": next(&d.backup),
            "dir": d.backup_dir.as_ref().map(|p| p.display().to_string()),
            "keep": d.keep,
            "last": last_backup,
        },
    });
    if json {
        print_json(&serde_json::json!({
            "now": daemon::zoned(now, tz),
            "timezone": tz.to_string(),
            "verify": maintenance["verify"],
            "backup": maintenance["backup"],
            "partners": out,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("now {} ({tz})", timefmt::for_people(now, tz));
    print_maintenance(&maintenance, tz);
    for v in &out {
        print_status(v, tz);
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's scheduled verify and backup, for `status`.
fn print_maintenance(m: &serde_json::Value, tz: chrono_tz::Tz) {
    let t = |v: &serde_json::Value| {
        v.as_str()
            .map(|x| timefmt::stored_for_people(x, tz))
            .unwrap_or_else(|| "-".into())
    };
    let sched = |v: &serde_json::Value| match v["schedule"].as_str() {
        Some(s) => format!("{s}, next {}", t(&v["next"])),
        None => "off".into(),
    };
    let v = &m["verify"];
    let last = &v["last"];
    let verify_last = if last.is_null() {
        "never run by the daemon".to_owned()
    } else if last["ok"].as_bool() == Some(true) {
        format!(
            "last {} ok ({} ledger rows, {:.1} s)",
            t(&last["at"]),
            last["ledger_rows"],
            last["seconds"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!(
            "last {} FAILED: {} problem(s): {}",
            t(&last["at"]),
            last["problems"],
            last["first_problem"].as_str().unwrap_or("-")
        )
    };
    println!("verify    ({}) {verify_last}", sched(v));
    let b = &m["backup"];
    let last = &b["last"];
    let backup_last = if last.is_null() {
        "never run by the daemon".to_owned()
    } else if last["ok"].as_bool() == Some(true) {
        format!(
            "last {} ok: {} ({} bytes, verified; {} old deleted, keep {})",
            t(&last["at"]),
            last["path"].as_str().unwrap_or("-"),
            last["bytes"],
            last["deleted"],
            b["keep"]
        )
    } else {
        format!(
            "last {} FAILED: {}",
            t(&last["at"]),
            last["error"].as_str().unwrap_or("-")
        )
    };
    println!("backup    ({}) {backup_last}", sched(b));
}

/// One partner of `status`, from its JSON form.
fn print_status(v: &serde_json::Value, tz: chrono_tz::Tz) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let t = |v: &serde_json::Value| {
        v.as_str()
            .map(|x| timefmt::stored_for_people(x, tz))
            .unwrap_or_else(|| "-".into())
    };
    println!("{} ({})", s(&v["id"]), s(&v["schedule"]));
    match v["last_run"].as_object() {
        Some(r) => {
            println!(
                "  last run  {} [{}] {} — {} file(s), {} rows, credited {}, failed {}, skipped {}",
                t(&r["started_at"]),
                s(&r["trigger"]),
                r["outcome"].as_str().unwrap_or("running"),
                r["files"],
                r["rows"],
                r["credited"],
                r["failed"],
                r["skipped"]
            );
            if let Some(by) = r["skipped_by_reason"].as_object().filter(|m| !m.is_empty()) {
                let counts: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("  skipped   {}", counts.join(", "));
                for k in r["skips"].as_array().into_iter().flatten() {
                    let id = k["file_id"]
                        .as_i64()
                        .map(|i| format!(" (file {i})"))
                        .unwrap_or_default();
                    println!(
                        "            {}: {}{id} — {}",
                        s(&k["name"]).escape_debug(),
                        s(&k["reason"]),
                        s(&k["detail"])
                    );
                }
            }
        }
        None => println!("  last run  never"),
    }
    println!("  next run  {}", t(&v["next_run"]));
    if v["failing"].as_bool() == Some(true) {
        println!(
            "  FAILING   since {} — {} failed run(s) in a row",
            t(&v["failing_since"]),
            v["consecutive_failures"]
        );
        if v["consecutive_failures"].as_i64() > Some(0) {
            if let Some(e) = v["last_error"].as_str() {
                println!("  error     {e}");
            }
        }
    } else {
        println!("  failures  0 in a row");
        if let Some(e) = v["last_error"].as_str() {
            println!("  last error at {}: {e}", t(&v["last_error_at"]));
        }
    }
    for w in v["waiting"].as_array().into_iter().flatten() {
        match w["tidy_error"].as_str() {
            Some(e) => println!(
                "  waiting   file {} {} [{}]: tidy-up failing since {} — {e}",
                w["id"],
                s(&w["name"]),
                s(&w["outcome"]),
                t(&w["tidy_failing_since"])
            ),
            None => println!(
                "  waiting   file {} {} [{}]: tidy-up pending",
                w["id"],
                s(&w["name"]),
                s(&w["outcome"])
            ),
        }
    }
    if let Some(f) = v["last_credited"].as_object() {
        println!(
            "  credited  last: file {} {} at {} ({} rows, {} miles)",
            f["id"],
            s(&f["name"]),
            t(&f["at"]),
            f["credited"],
            f["miles"]
        );
    }
    if let Some(f) = v["last_refused"].as_object() {
        println!(
            "  refused   last: file {} {} [{}] at {} — {}",
            f["id"],
            s(&f["name"]),
            s(&f["outcome"]),
            t(&f["at"]),
            s(&f["reason"])
        );
    }
    if let Some(r) = v["last_reversal"].as_object() {
        println!(
            "  reversed  last: {} (reversal {}) at {} by {}: {} rows, {} miles taken back — {}",
            s(&r["what"]),
            r["id"],
            t(&r["at"]),
            s(&r["actor"]),
            r["rows"],
            r["miles"],
            s(&r["reason"])
        );
    }
    if let Some(m) = v["last_missed"].as_str() {
        println!(
            "  missed    delivery expected at {}",
            timefmt::stored_for_people(m, tz)
        );
    }
    if let Some(r) = v["run_request"].as_object() {
        let by = format!("by {} at {}", s(&r["requested_by"]), t(&r["requested_at"]));
        match r["started_at"].as_str() {
            Some(at) => println!(
                "  run now   request {} {by}: running since {}",
                r["id"],
                timefmt::stored_for_people(at, tz)
            ),
            None => println!(
                "  run now   request {} {by}: queued — the daemon (`milebatch run`) starts it within seconds; if it stays queued, the daemon is not running",
                r["id"]
            ),
        }
    }
}

/// `milebatch check [--connect]`: the partners, their next runs, and every
/// problem a run would meet (see `check.rs`). Exit 1 when there is one.
fn check(cli: &Cli, json: bool, connect: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    let tz = config.daemon.timezone;
    let now = clock()?.now();
    let today = now.with_timezone(&tz).date_naive();
    let mut report = check::check(&config, today);
    if connect {
        for (p, pc) in config.partners.iter().zip(report.partners.iter_mut()) {
            // A partner whose settings are already wrong would only fail
            // again, less clearly (and a bad password may count against
            // the account).
            if !pc.problems.is_empty() {
                continue;
            }
            let c = check::connect(p, today);
            if let Some(e) = &c.error {
                pc.problems
                    .push(format!("connecting to {}: {e}", c.location));
            }
            pc.connect = Some(c);
        }
    }
    let problems = report.problems();
    if json {
        let partners: Vec<_> = config
            .partners
            .iter()
            .zip(&report.partners)
            .map(|(p, pc)| {
                serde_json::json!({
                    "id": p.id,
                    "name": p.name,
                    "schedule": p.schedule.to_string(),
                    "encoding": p.encoding.to_string(),
                    "source": p.source.to_string(),
                    "kind": p.source.kind(),
                    "next_runs": p.schedule.upcoming(now, tz, 3).into_iter().map(|t| daemon::zoned(t, tz)).collect::<Vec<_>>(),
                    "problems": pc.problems,
                    "notes": pc.notes,
                    "connect": pc.connect,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "config": config.path,
            "ok": problems.is_empty(),
            "problems": problems,
            "partners": partners,
        }))?;
    } else {
        println!(
            "{}: {}, {} partner(s), time zone {}, database {}",
            config.path.display(),
            if problems.is_empty() {
                "OK".to_owned()
            } else {
                format!("{} problem(s)", problems.len())
            },
            config.partners.len(),
            tz,
            config.daemon.database.display()
        );
        for (p, pc) in config.partners.iter().zip(&report.partners) {
            println!(
                "  {} ({}): {} — {} [{}]",
                p.id, p.name, p.schedule, p.source, p.encoding
            );
            let next: Vec<String> = p
                .schedule
                .upcoming(now, tz, 3)
                .into_iter()
                .map(|t| timefmt::for_people(t, tz))
                .collect();
            println!("    next runs: {}", next.join(", "));
            for n in &pc.notes {
                println!("    ok: {n}");
            }
            if let Some(c) = &pc.connect {
                match c.matching_files {
                    Some(0) if p.source.kind() == "http" => {
                        println!("    connect: ok, no file today at {}", c.location)
                    }
                    Some(n) => println!(
                        "    connect: ok, {n} file(s) matching {:?} at {}",
                        c.pattern, c.location
                    ),
                    None => println!("    connect: FAILED (see below)"),
                }
            } else if connect {
                println!("    connect: not tried (fix the problems below first)");
            }
        }
        for pr in &problems {
            match &pr.partner {
                Some(id) => println!("problem: {id}: {}", pr.problem),
                None => println!("problem: [daemon]: {}", pr.problem),
            }
        }
        if !problems.is_empty() {
            println!(
                "{} problem(s): fix each one above, then run `milebatch check` again",
                problems.len()
            );
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand says what it does and every flag and argument has
    /// help text: `--help` is the manual on a server without the README.
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{p} (the subcommand)"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        let cmd = Cli::command();
        walk(&cmd, "milebatch", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        // The walk does see every argument (a check that cannot fail is no check).
        let files = cmd.find_subcommand("files").unwrap();
        assert!(files.get_arguments().any(|a| a.get_id() == "since"));
    }
}
