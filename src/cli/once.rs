//! `milebatch once`: every partner (or one) now, once.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;

use super::output::print_json;
use super::{clock, known_partner, load, Cli};
use crate::pipeline::{self, RunOptions, RunReport, Trigger};
use crate::termtext::cell;
use crate::timefmt;

#[derive(Args, Debug)]
pub struct OnceArgs {
    /// Run only this partner (its `id` in partners.toml).
    #[arg(long, value_name = "ID")]
    pub partner: Option<String>,
    /// Validate and write the error reports, credit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run reports as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(cli: &Cli, args: &OnceArgs) -> anyhow::Result<ExitCode> {
    let (only, dry_run, json) = (args.partner.as_deref(), args.dry_run, args.json);
    let config = load(cli)?;
    let partners: Vec<_> = match only {
        Some(id) => match known_partner(&config, id) {
            Ok(()) => config.partners.iter().filter(|p| p.id == id).collect(),
            Err(code) => return Ok(code),
        },
        None => config.partners.iter().collect(),
    };
    // Fail early and clearly if the database cannot be opened.
    crate::store::open_writer(&config.daemon.store)?;
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
    if !dry_run {
        // What the runs had to say goes out now; what cannot be sent is
        // left to the daemon (or the next `once`) to retry. Never changes
        // the exit code: a credit does not depend on its notification.
        let conn = crate::store::open_writer(&config.daemon.store)?;
        match crate::notify::deliver(&config, &conn, chrono::Utc::now(), &shutdown) {
            Ok(d) if !json && d != crate::notify::Delivered::default() => {
                println!("{}", super::notify::summary_line(&d));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "notifications not sent: they stay in the outbox"),
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
            cell(&f.name),
            f.outcome,
            f.counts.rows,
            f.counts.credited,
            f.counts.failed
        );
        if let Some(why) = &f.reason {
            print!(" — {}", cell(why));
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
            cell(&t.name),
            t.file_id,
            t.error,
            timefmt::stored_for_people(&t.failing_since, tz)
        );
    }
    for s in &r.skipped {
        print!("  {} [skipped: {}]", cell(&s.name), s.reason.as_str());
        if let Some(id) = s.file_id {
            print!(" file {id}");
        }
        println!(" — {}", s.detail);
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
}
