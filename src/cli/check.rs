//! `milebatch check [--connect [--no-write-probe]]`.

use std::process::ExitCode;

use clap::Args;

use super::output::print_json;
use super::{clock, load, Cli};
use crate::{check, daemon};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also connect to each partner's server (host key, login), list the
    /// inbox, count the files matching the pattern, and check the folders a
    /// run writes to (`after = "move:…"`, `move_failed`, `errors_dir`): that
    /// each is a folder (or missing: the run creates it) and can be written,
    /// by writing one probe file `.milebatch-check-probe-…` into it and
    /// removing it again. Nothing else is changed on the server.
    #[arg(long)]
    pub connect: bool,
    /// With --connect: only look at the folders, write no probe file (the
    /// server is left exactly as it was; whether a folder is writable is
    /// then not known).
    #[arg(long, requires = "connect")]
    pub no_write_probe: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `milebatch check [--connect]`: the partners, their next runs, and every
/// problem a run would meet (see `check.rs`). Exit 1 when there is one.
pub(super) fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let (json, connect) = (args.json, args.connect);
    let config = load(cli)?;
    let tz = config.daemon.timezone;
    let now = clock()?.now();
    let today = now.with_timezone(&tz).date_naive();
    let mut report = check::check(&config, today, now);
    if connect {
        for (p, pc) in config.partners.iter().zip(report.partners.iter_mut()) {
            // A partner whose settings are already wrong would only fail
            // again, less clearly (and a bad password may count against
            // the account).
            if !pc.problems.is_empty() {
                continue;
            }
            let c = check::connect(p, today, !args.no_write_probe);
            if let Some(e) = &c.error {
                pc.problems
                    .push(format!("connecting to {}: {e}", c.location));
            }
            for f in &c.folders {
                if let Some(e) = &f.error {
                    pc.problems
                        .push(format!("folder {}/ on {}: {e}", f.dir, c.location));
                }
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
                    "on_holiday": p.on_holiday.to_string(),
                    "next_runs": p.plan(&config.daemon).upcoming(now, 3).iter().map(|o| daemon::zoned(o.at, tz)).collect::<Vec<_>>(),
                    "next_runs_moved": check::moves_json(&p.plan(&config.daemon).upcoming(now, 3)),
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
            "warnings": report.server.warnings,
            "server_notes": report.server.notes,
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
            config.daemon.store
        );
        for (p, pc) in config.partners.iter().zip(&report.partners) {
            println!(
                "  {} ({}): {} — {} [{}]",
                p.id, p.name, p.schedule, p.source, p.encoding
            );
            let next: Vec<String> = p
                .plan(&config.daemon)
                .upcoming(now, 3)
                .iter()
                .map(|o| o.for_people(tz))
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
                for f in &c.folders {
                    println!("    {}", f.for_people());
                }
                if c.folders.is_empty() && c.error.is_none() {
                    println!(
                        "    folders: {}",
                        if p.source.kind() == "http" {
                            "none (HTTP; an errors_url is not probed: a PUT cannot be taken back)"
                        } else {
                            "none written to (after = \"keep\" or \"delete\", move_failed = \"keep\", errors_dir = \"none\")"
                        }
                    );
                }
            } else if connect {
                println!("    connect: not tried (fix the problems below first)");
            }
        }
        for n in &report.server.notes {
            println!("  [server] ok: {n}");
        }
        for w in &report.server.warnings {
            println!("warning: [server]: {w}");
        }
        for pr in &problems {
            match &pr.partner {
                Some(id) => println!("problem: {id}: {}", pr.problem),
                None => println!("problem: [{}]: {}", pr.section, pr.problem),
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
