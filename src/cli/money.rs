//! The money commands: `verify`, `reverse`, `statement`, `backup`,
//! `restore` and `retry`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::output::{fail, print_json};
use super::{clock, known_partner, load, Cli};
use crate::termtext::cell;
use crate::{db, money, timefmt};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs { json } = args;
    let config = load(cli)?;
    // A PostgreSQL database never migrated holds nothing to disagree.
    let report = match super::open_existing(&config)? {
        Some(conn) => money::verify::verify(conn.as_ref())?,
        None => money::verify::Report::empty(),
    };
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

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["file", "exchange"])))]
pub struct ReverseArgs {
    /// The file to reverse (its id in `milebatch files`).
    #[arg(long, value_name = "ID")]
    pub file: Option<i64>,
    /// The API exchange to reverse (its id in the API's answers).
    #[arg(long, value_name = "ID")]
    pub exchange: Option<i64>,
    /// Why: kept with the reversal and in the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn reverse(cli: &Cli, args: &ReverseArgs) -> anyhow::Result<ExitCode> {
    let ReverseArgs {
        file,
        exchange,
        reason,
        json,
    } = args;
    use money::reverse::{self, Outcome, Target};
    let config = load(cli)?;
    let target = match (file, exchange) {
        (Some(id), _) => Target::File(*id),
        (None, Some(id)) => Target::Exchange(*id),
        (None, None) => unreachable!("clap requires one of them"),
    };
    let mut conn = db::open(&config.daemon.database)?;
    let actor = crate::audit::cli_actor();
    let outcome = reverse::reverse(&mut conn, target, reason, &actor, None, clock()?.now())?;
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
        Outcome::Refused { reason } => Ok(fail(format!("cannot reverse {target}: {reason}"))),
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

#[derive(Args, Debug)]
pub struct StatementArgs {
    /// The partner (its `id` in partners.toml).
    #[arg(long)]
    pub partner: String,
    /// The month, as YYYY-MM (e.g. 2026-11).
    #[arg(long, value_name = "YYYY-MM")]
    pub month: String,
    /// Print as CSV (`section,item,detail,rows,miles`).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// With --csv: `en` (default) prints the form for scripts; `ja` the
    /// file for Excel (Japanese headers, the partner's encoding or UTF-8
    /// with a BOM, CRLF), as the site's download.
    #[arg(long, value_name = "en|ja", requires = "csv", default_value = "en",
          value_parser = ["en", "ja"])]
    pub header: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn statement(cli: &Cli, args: &StatementArgs) -> anyhow::Result<ExitCode> {
    let StatementArgs {
        partner,
        month,
        csv,
        header,
        json,
    } = args;
    let config = load(cli)?;
    if let Err(code) = known_partner(&config, partner) {
        return Ok(code);
    }
    let tz = config.daemon.timezone;
    // A bad month is the user's to fix: say so before the database.
    if let Err(e) = money::statement::month_bounds(month, tz) {
        return Ok(fail(e));
    }
    let Some(conn) = super::open_existing(&config)? else {
        // What SQLite says of a database file not made yet.
        return Ok(fail(format_args!(
            "database {} has no tables yet: run `milebatch members import` or `milebatch once` first",
            config.daemon.store
        )));
    };
    let st = money::statement::statement(conn.as_ref(), partner, month, tz)?;
    if *json {
        print_json(&st)?;
    } else if *csv && header == "ja" {
        let lang = crate::excel::Lang::Ja;
        let encoding = config.partner(partner).map(|p| p.encoding);
        let (bytes, _) = crate::excel::encode(
            &money::statement::to_csv_for(&st, lang, false),
            lang,
            encoding.unwrap_or(crate::config::Encoding::Utf8),
        );
        std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
    } else if *csv {
        print!("{}", money::statement::to_csv(&st));
    } else {
        print_statement(&st, tz);
    }
    Ok(ExitCode::SUCCESS)
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
            cell(&f.name),
            f.channel,
            f.total.rows,
            f.total.miles
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
            cell(&r.actor),
            r.total.rows,
            r.total.miles,
            cell(&r.reason)
        );
    }
    println!(
        "reversed  {} rows, {} miles",
        st.reversed.rows, st.reversed.miles
    );
    println!("net  {} rows, {} miles", st.net.rows, st.net.miles);
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The new backup file (must not exist).
    pub dest: PathBuf,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn backup(cli: &Cli, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let BackupArgs { dest, json } = args;
    let config = load(cli)?;
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

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file to restore.
    pub src: PathBuf,
}

pub(super) fn restore(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let RestoreArgs { src } = args;
    let config = load(cli)?;
    match money::backup::restore(src, &config.daemon.database, clock()?.now()) {
        Ok(r) => {
            println!(
                "restored {} to {}{}",
                r.restored_from.display(),
                r.database.display(),
                r.previous
                    .map(|p| format!("; the database it replaced is kept as {}", p.display()))
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

#[derive(Args, Debug)]
pub struct RetryArgs {
    /// The file to retry (its id in `milebatch files`).
    #[arg(long, value_name = "ID")]
    pub file: i64,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn retry(cli: &Cli, args: &RetryArgs) -> anyhow::Result<ExitCode> {
    let RetryArgs { file, json } = args;
    use money::retry::RetryOutcome;
    let config = load(cli)?;
    let actor = crate::audit::cli_actor();
    let outcome = money::retry::retry(&config, *file, &actor, clock()?.now())?;
    if *json {
        print_json(&outcome)?;
    }
    match outcome {
        RetryOutcome::Refused { reason } => Ok(fail(format!("cannot retry file {file}: {reason}"))),
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
