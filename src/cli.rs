//! The command line. Each subcommand is a small function over the library;
//! `anyhow` is used here and in `main.rs` only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::pipeline::{self, RunOptions, RunReport, Trigger};
use crate::{db, members, query};

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
    /// Validate the configuration and list the partners.
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
            let conn = db::open(&config.daemon.database)?;
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
            let conn = db::open(&config.daemon.database)?;
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
            let conn = db::open(&config.daemon.database)?;
            let rows = query::files(&conn, partner.as_deref())?;
            if *json {
                print_json(&rows)?;
            } else {
                println!(
                    "id\tpartner\tfile\toutcome\trows\tcredited\tfailed\tmiles\treport/reason"
                );
                for r in rows {
                    let note = r.reason.or(r.report_path).unwrap_or_default();
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.id,
                        r.partner,
                        r.name,
                        r.outcome,
                        r.rows,
                        r.credited,
                        r.failed,
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
                    now: chrono::Utc::now(),
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
        if let Some(p) = &f.report {
            print!(" — error report {}", p.display());
        }
        println!();
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}

fn check(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(cli)?;
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
            for s in p["secrets"].as_array().into_iter().flatten() {
                println!("    secret {}", s.as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
