//! `milebatch status`: per partner, what happened and what comes next.

use std::process::ExitCode;

use clap::Args;

use super::output::print_json;
use super::{clock, load, Cli};
use crate::termtext::cell;
use crate::{daemon, query, timefmt};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let config = load(cli)?;
    // Before the first run there is no database: every partner simply has
    // no history yet.
    let conn = super::open_for_reading(&config)?;
    let tz = config.daemon.timezone;
    let now = clock()?.now();
    let mut out = Vec::new();
    for p in &config.partners {
        let st = match &conn {
            Some(c) => query::partner_status(&**c, &p.id)?,
            None => query::PartnerStatus::default(),
        };
        let next = p
            .plan(&config.daemon)
            .next_after(now)
            .map(|o| daemon::zoned(o.at, tz));
        let mut v = serde_json::to_value(&st)?;
        v["id"] = p.id.clone().into();
        v["schedule"] = p.schedule.to_string().into();
        v["next_run"] = next.into();
        out.push(v);
    }
    let (last_verify, last_backup) = match &conn {
        Some(c) => (
            crate::money::verify::last_run(&**c)?,
            crate::money::backup::last_run(&**c)?,
        ),
        None => (None, None),
    };
    let d = &config.daemon;
    let next = |s: &Option<crate::schedule::Schedule>| {
        s.as_ref()
            .and_then(|s| d.plan(s).next_after(now))
            .map(|o| daemon::zoned(o.at, tz))
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
    let notifications = match &conn {
        Some(c) => crate::store::outbox::counts(&**c, now)?,
        None => Default::default(),
    };
    if json {
        print_json(&serde_json::json!({
            "now": daemon::zoned(now, tz),
            "timezone": tz.to_string(),
            "verify": maintenance["verify"],
            "backup": maintenance["backup"],
            "notifications": notifications,
            "partners": out,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("now {} ({tz})", timefmt::for_people(now, tz));
    print_maintenance(&maintenance, tz);
    println!(
        "notify    {} pending, {} failed{}",
        notifications.pending,
        notifications.failed,
        if notifications.failed > 0 {
            " (gave up after 24 h: `milebatch notify list` shows them and why)"
        } else {
            ""
        }
    );
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
                        cell(&s(&k["name"])),
                        s(&k["reason"]),
                        cell(&s(&k["detail"]))
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
