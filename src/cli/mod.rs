//! The command line. Each subcommand is a small function over the library;
//! `anyhow` is used here only (`main.rs` prints what `run` returns).
//!
//! What must stay true:
//! - every argument has help text (a unit test walks the clap `Command`);
//! - exit 1 means "the answer is no" (a refused file, a `check` problem, an
//!   unknown `--partner` or member) and 2 "could not start";
//! - times for people go through `timefmt`, in the configured zone.

mod api_keys;
mod check;
mod daemon;
mod history;
mod members;
mod money;
mod notify;
mod once;
mod output;
mod serve;
mod status;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::schedule::Clock;

pub use output::{init_tracing, quiet_on_closed_pipe};

#[derive(Parser, Debug)]
#[command(
    name = "milebatch",
    version,
    about = "Partner point-exchange batch: pull, validate, credit miles exactly once"
)]
pub struct Cli {
    /// The configuration file (or set MILEBATCH_CONFIG).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MILEBATCH_CONFIG",
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
    Once(once::OnceArgs),
    /// The daemon: run every partner on its schedule until SIGTERM/SIGINT
    /// (what the systemd unit runs). Catches up a run missed while down.
    /// `milebatch daemon` is the same command.
    #[command(visible_alias = "daemon")]
    Run,
    /// The web process: the partner API and the management site over HTTPS
    /// (`[server]` in the config), until SIGTERM/SIGINT. Prints the address
    /// it listens on as its first line on stdout.
    Serve,
    /// Per partner: last run, next run, consecutive failures, last error,
    /// last missed delivery. Reads the database; safe while the daemon runs.
    Status(status::StatusArgs),
    /// Check that every partner can run: secrets, key files, known_hosts,
    /// CA files, inboxes, the database and data_dir. Exits 1 naming each
    /// problem. Also lists the partners and their next three runs.
    Check(check::CheckArgs),
    /// Management-site accounts (`milebatch serve`): partner staff and ops.
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Exchanges sent through the partner API, newest first: credited
    /// (201) and rejected (422, with the code).
    Exchanges(history::ExchangesArgs),
    /// Partner API keys: create, list, revoke.
    ApiKey {
        #[command(subcommand)]
        command: api_keys::ApiKeyCommand,
    },
    /// The member store.
    Members {
        #[command(subcommand)]
        command: members::MembersCommand,
    },
    /// A member's balance, by member ID or e-mail. Exits 1 if there is no
    /// such member.
    Balance(history::BalanceArgs),
    /// Every credit of one partner key.
    History(history::HistoryArgs),
    /// Check that the money adds up: every balance equals its member's
    /// ledger rows, every credited file's ledger rows match its counts,
    /// miles and the digest stored at commit. Exits 1 naming each mismatch.
    /// Reads only; safe while the daemon runs.
    Verify(money::VerifyArgs),
    /// Take a wrong credit back: compensating negative ledger rows for every
    /// credited row of a file (or one API exchange), balances reduced in the
    /// same transaction. Refused whole, naming each member and shortfall, if
    /// a balance would go below zero. Reversing twice changes nothing.
    Reverse(money::ReverseArgs),
    /// A partner's monthly statement (the basis of its invoice): miles
    /// issued by channel (pull, upload, API), by file and by day, then the
    /// reversals, then the net total, with row counts. The month runs from
    /// local midnight on its first day in `[daemon] timezone`.
    Statement(money::StatementArgs),
    /// Copy the database to DEST while everything runs (one consistent
    /// snapshot, file mode 0600), then check the copy with `verify`.
    /// Never overwrites a file. Exits 1 if the copy does not verify.
    Backup(money::BackupArgs),
    /// Put a backup in place of the database. Refused while any process
    /// (the daemon, `serve`, a `once`) has the database open, and if the
    /// backup does not verify. The replaced database is kept beside it as
    /// `<name>.before-restore-<time>`.
    Restore(money::RestoreArgs),
    /// Process a refused (or reversed) file again from its archived bytes,
    /// through the same credit stage, as a new file row linked to the old
    /// one. Refused for a file that is credited and not reversed.
    Retry(money::RetryArgs),
    /// Delivered files, newest first: outcome, counts, error report, reason.
    Files(history::FilesArgs),
    /// Notifications (e-mail, webhooks): send a test, list what is not
    /// delivered.
    Notify {
        #[command(subcommand)]
        command: notify::NotifyCommand,
    },
}

/// Until every command runs on PostgreSQL, one that does not yet refuses a
/// `postgres://` database here (exit code 2), before it opens anything. A
/// config that does not load is left to the command to report.
fn refuse_postgres_for_now(cli: &Cli) -> anyhow::Result<()> {
    let Ok(config) = Config::load(&cli.config) else {
        return Ok(());
    };
    // The subcommand as clap names it: `ApiKey { .. }` → `api-key`.
    let variant = format!("{:?}", cli.command);
    let mut name = String::new();
    for (i, c) in variant
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .enumerate()
    {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('-');
        }
        name.push(c.to_ascii_lowercase());
    }
    match crate::store::not_on_postgres_yet(&config.daemon.store, &name) {
        Some(refusal) => anyhow::bail!(refusal),
        None => Ok(()),
    }
}

/// Run the parsed command. `Ok(code)`: the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    refuse_postgres_for_now(&cli)?;
    let cli = &cli;
    match &cli.command {
        Command::Once(a) => once::run(cli, a),
        Command::Check(a) => check::run(cli, a),
        Command::Run => daemon::run(cli),
        Command::Serve => serve::run(cli),
        Command::Status(a) => status::run(cli, a),
        Command::User { command } => users::run(cli, command),
        Command::ApiKey { command } => api_keys::run(cli, command),
        Command::Exchanges(a) => history::exchanges(cli, a),
        Command::Members { command } => members::run(cli, command),
        Command::Balance(a) => history::balance(cli, a),
        Command::History(a) => history::history(cli, a),
        Command::Verify(a) => money::verify(cli, a),
        Command::Reverse(a) => money::reverse(cli, a),
        Command::Statement(a) => money::statement(cli, a),
        Command::Backup(a) => money::backup(cli, a),
        Command::Restore(a) => money::restore(cli, a),
        Command::Retry(a) => money::retry(cli, a),
        Command::Files(a) => history::files(cli, a),
        Command::Notify { command } => notify::run(cli, command),
    }
}

/// The database of a command that only reads, on either engine: SQLite
/// opened read-only (`None`: no file yet), PostgreSQL connected without
/// migrating (`None`: never migrated; a schema older than this milebatch
/// is an error that says so). Neither is ever created or migrated here.
fn open_for_reading(config: &Config) -> anyhow::Result<Option<Box<dyn crate::store::Exec>>> {
    use crate::store::{Database, PgConn};
    Ok(match &config.daemon.store {
        Database::Sqlite(_) => match crate::db::open_query(&config.daemon.database) {
            Err(crate::db::DbError::Missing { .. }) => None,
            other => Some(Box::new(other?)),
        },
        Database::Postgres(t) => {
            let c = crate::store::connect_postgres(t, false)?;
            match c.schema_version()? {
                0 => None,
                v if v < PgConn::known_version() => anyhow::bail!(
                    "database {} has schema version {v}, older than this milebatch ({}): \
                     it is migrated when the daemon or serve starts with this version",
                    config.daemon.store,
                    PgConn::known_version()
                ),
                _ => Some(Box::new(c)),
            }
        }
    })
}

/// As [`open_for_reading`], but a missing SQLite file is the error every
/// query command gives for it; `None` only for a PostgreSQL database never
/// migrated (nothing in it yet).
fn open_existing(config: &Config) -> anyhow::Result<Option<Box<dyn crate::store::Exec>>> {
    if config.daemon.store.is_postgres() {
        open_for_reading(config)
    } else {
        Ok(Some(Box::new(crate::db::open_query(
            &config.daemon.database,
        )?)))
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&cli.config)?)
}

/// `Err(exit code 1)` unless `id` is a partner of `config`; the message
/// names the partners there are.
fn known_partner(config: &Config, id: &str) -> Result<(), ExitCode> {
    if config.partner(id).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = config.partners.iter().map(|p| p.id.as_str()).collect();
    Err(output::fail(format_args!(
        "no partner {id:?} in {}; the partners are: {}",
        config.path.display(),
        if known.is_empty() {
            "(none)".to_owned()
        } else {
            known.join(", ")
        }
    )))
}

/// The system clock, or the test-only fake one (see [`crate::daemon::FAKE_NOW_ENV`]).
fn clock() -> anyhow::Result<Arc<dyn Clock>> {
    crate::daemon::clock_from_env().map_err(anyhow::Error::msg)
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

    /// Every `milebatch <command> [<subcommand>]` the docs show as a
    /// command (in a fenced code block, or in a `code span`) is one the
    /// binary knows, by name or alias: README.md and docs/*.md are where a
    /// new operator copies commands from.
    #[test]
    fn every_command_named_in_the_docs_exists() {
        use clap::CommandFactory;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md")];
        for e in std::fs::read_dir(root.join("docs")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
        let mut cmd = Cli::command();
        cmd.build(); // adds `help`
        let mut unknown = Vec::new();
        let mut seen = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let mut fenced = false;
            for line in text.lines() {
                if line.trim_start().starts_with("```") {
                    fenced = !fenced;
                    continue;
                }
                let needle = if fenced { "milebatch " } else { "`milebatch " };
                for (i, _) in line.match_indices(needle) {
                    let mut rest = &line[i + needle.len()..];
                    if !fenced {
                        // A code span ends at its backtick.
                        rest = rest.split('`').next().unwrap_or("");
                    }
                    let words: Vec<&str> = rest
                        .split(|c: char| c.is_whitespace() || c == '`')
                        .filter(|w| !w.is_empty())
                        .take(2)
                        .collect();
                    let Some(&name) = words.first() else { continue };
                    // A flag first (`milebatch --config …`), a user named
                    // milebatch (`sudo -u milebatch milebatch run`), a
                    // placeholder: no command name here.
                    if !name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        || name.starts_with('-')
                        || name == "milebatch"
                    {
                        continue;
                    }
                    seen += 1;
                    match cmd.find_subcommand(name) {
                        None => unknown.push(format!("{}: milebatch {name}", file.display())),
                        Some(sub) if sub.has_subcommands() => {
                            let s = words.get(1).copied().unwrap_or("");
                            if s.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                                && !s.is_empty()
                                && !s.starts_with('-')
                                && sub.find_subcommand(s).is_none()
                            {
                                unknown.push(format!("{}: milebatch {name} {s}", file.display()));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "commands the binary does not know: {unknown:?}"
        );
        assert!(
            seen > 10,
            "only {seen} commands found: is it reading the docs?"
        );
        // The check can fail: an unknown name is not found.
        assert!(cmd.find_subcommand("deamon").is_none());
        assert!(cmd.find_subcommand("daemon").is_some());
    }
}
