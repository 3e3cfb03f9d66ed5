//! The command line. Each subcommand is a small function over the library;
//! `anyhow` is used here and in `main.rs` only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::pipeline::{self, RunOptions, RunReport, Trigger};
use crate::schedule::Clock;
use crate::{daemon, db, members, query};

#[derive(Parser, Debug)]
#[command(
    name = "milebatch",
    version,
    about = "Partner point-exchange batch: pull, validate, credit miles exactly once"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = "partners.toml")]
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
        #[arg(long)]
        partner: Option<String>,
        /// Validate and write the error reports, credit nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The daemon: run every partner on its schedule until SIGTERM/SIGINT
    /// (what the systemd unit runs). Catches up a run missed while down.
    Run,
    /// Per partner: last run, next run, consecutive failures, last error,
    /// last missed delivery. Reads the database; safe while the daemon runs.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration, list the partners and their next three runs.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// The member store.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// A member's balance, by member ID or e-mail.
    Balance {
        member: String,
        #[arg(long)]
        json: bool,
    },
    /// Every credit of one partner key.
    History {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Processed and refused files with their counts.
    Files {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Upsert members from a `member_id,email,status` CSV.
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

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
        builder.init();
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&cli.config)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Run the parsed command. `Ok(code)`: the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Once {
            partner,
            dry_run,
            json,
        } => once(&cli, partner.as_deref(), *dry_run, *json),
        Command::Check { json } => check(&cli, *json),
        Command::Run => run_daemon(&cli),
        Command::Status { json } => status(&cli, *json),
        Command::Members {
            command: MembersCommand::Import { file, json },
        } => {
            let config = load(&cli)?;
            let mut conn = db::open(&config.daemon.database)?;
            let started = std::time::Instant::now();
            let s = members::import(&mut conn, file)?;
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
                bail!("no member {member:?} (neither a member ID nor a registered e-mail)");
            };
            if *json {
                print_json(
                    &serde_json::json!({"member_id": member_id, "status": status, "miles": miles}),
                )?;
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
            let conn = db::open_query(&config.daemon.database)?;
            let rows = query::history(&conn, partner, key)?;
            if *json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no credits for partner {partner} key {key:?}");
            } else {
                println!("credited_at\tmember\tmiles\tfile:line");
                for r in rows {
                    println!(
                        "{}\t{}\t{}\t{}:{}",
                        r.credited_at, r.member_id, r.miles, r.file, r.line
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Files { partner, json } => {
            let config = load(&cli)?;
            let conn = db::open_query(&config.daemon.database)?;
            let rows = query::files(&conn, partner.as_deref())?;
            if *json {
                print_json(&rows)?;
            } else {
                println!(
                    "id\tpartner\tfile\toutcome\trows\tcredited\tfailed\trepeats\tmiles\treport/reason"
                );
                for r in rows {
                    // A refused file's report is shown too: the partner gets it.
                    let note = [r.file_code, r.reason, r.report_path]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" — ");
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.id,
                        r.partner,
                        r.name,
                        r.outcome,
                        r.rows,
                        r.credited,
                        r.failed,
                        r.repeats.map_or("-".to_owned(), |n| n.to_string()),
                        r.miles,
                        note
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn once(cli: &Cli, only: Option<&str>, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    let partners: Vec<_> = match only {
        Some(id) => vec![config
            .partner(id)
            .with_context(|| format!("no partner {id:?} in {}", config.path.display()))?],
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
                },
            )
        })
        .collect();
    if json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            print_run(r, dry_run);
        }
    }
    Ok(if reports.iter().all(RunReport::is_clean) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_run(r: &RunReport, dry_run: bool) {
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
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}

/// The system clock, or the test-only fake one (see [`daemon::FAKE_NOW_ENV`]).
fn clock() -> anyhow::Result<Arc<dyn Clock>> {
    daemon::clock_from_env().map_err(anyhow::Error::msg)
}

/// `milebatch run`: a tokio runtime, SIGTERM/SIGINT wired to the daemon's
/// shutdown, exit 0 after a clean stop.
fn run_daemon(cli: &Cli) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Arc::new(load(cli)?);
    let clock = clock()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("milebatch")
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async move {
        // Install the handlers before anything is scheduled (and before
        // READY=1), so an early SIGTERM is never the default "die now".
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
    if json {
        print_json(&serde_json::json!({
            "now": daemon::zoned(now, tz),
            "timezone": tz.to_string(),
            "partners": out,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("now {} ({tz})", daemon::zoned(now, tz));
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    for v in &out {
        println!("{} ({})", s(&v["id"]), s(&v["schedule"]));
        match v["last_run"].as_object() {
            Some(r) => println!(
                "  last run  {} [{}] {} — {} file(s), {} rows, credited {}, failed {}",
                s(&r["started_at"]),
                s(&r["trigger"]),
                r["outcome"].as_str().unwrap_or("running"),
                r["files"],
                r["rows"],
                r["credited"],
                r["failed"]
            ),
            None => println!("  last run  never"),
        }
        println!("  next run  {}", s(&v["next_run"]));
        println!("  failures  {} in a row", v["consecutive_failures"]);
        if let Some(e) = v["last_error"].as_str() {
            println!("  error     {e}");
        }
        if let Some(m) = v["last_missed"].as_str() {
            println!("  missed    delivery expected at {m}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
    let tz = config.daemon.timezone;
    let now = clock()?.now();
    let mut out = Vec::new();
    for p in &config.partners {
        let secrets: Vec<String> = p
            .source
            .secrets()
            .iter()
            .map(|s| match s.read() {
                Ok(_) => format!("{s}: readable"),
                Err(e) => format!("{e} (not readable here)"),
            })
            .collect();
        out.push(serde_json::json!({
            "id": p.id,
            "name": p.name,
            "schedule": p.schedule.to_string(),
            "encoding": p.encoding.to_string(),
            "source": p.source.to_string(),
            "kind": p.source.kind(),
            "secrets": secrets,
            "next_runs": p.schedule.upcoming(now, tz, 3).into_iter().map(|t| daemon::zoned(t, tz)).collect::<Vec<_>>(),
        }));
    }
    if json {
        print_json(&serde_json::json!({"config": config.path, "partners": out}))?;
    } else {
        println!(
            "{}: OK, {} partner(s), time zone {}, database {}",
            config.path.display(),
            config.partners.len(),
            config.daemon.timezone,
            config.daemon.database.display()
        );
        for p in &out {
            println!(
                "  {} ({}): {} — {} [{}]",
                p["id"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                p["schedule"].as_str().unwrap_or(""),
                p["source"].as_str().unwrap_or(""),
                p["encoding"].as_str().unwrap_or("")
            );
            let next: Vec<&str> = p["next_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            println!("    next runs: {}", next.join(", "));
            for s in p["secrets"].as_array().into_iter().flatten() {
                println!("    secret {}", s.as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
