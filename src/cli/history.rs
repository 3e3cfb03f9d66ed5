//! What happened: `history`, `exchanges`, `files` and `balance`.

use std::process::ExitCode;

use clap::Args;

use super::output::{fail, print_json};
use super::{known_partner, load, Cli};
use crate::termtext::cell;
use crate::{members, query, timefmt};

#[derive(Args, Debug)]
pub struct ExchangesArgs {
    /// Only this partner's exchanges.
    #[arg(long, value_name = "ID")]
    pub partner: Option<String>,
    /// Show at most this many (0: all).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u64,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn exchanges(cli: &Cli, args: &ExchangesArgs) -> anyhow::Result<ExitCode> {
    let ExchangesArgs {
        partner,
        limit,
        json,
    } = args;
    let config = load(cli)?;
    if let Some(p) = partner {
        if let Err(code) = known_partner(&config, p) {
            return Ok(code);
        }
    }
    let rows = match super::open_existing(&config)? {
        Some(conn) => query::api_exchanges(&*conn, partner.as_deref(), *limit)?,
        None => Vec::new(),
    };
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
                cell(r.member_id.as_deref().unwrap_or("-")),
                cell(r.partner_key.as_deref().unwrap_or("-")),
                r.miles.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct BalanceArgs {
    /// A member ID, or a registered e-mail (any case).
    pub member: String,
    /// Print as JSON (`"found": false` for an unknown member).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn balance(cli: &Cli, args: &BalanceArgs) -> anyhow::Result<ExitCode> {
    let BalanceArgs { member, json } = args;
    let config = load(cli)?;
    let found = match super::open_existing(&config)? {
        Some(conn) => members::balance(&*conn, member)?,
        None => None,
    };
    let Some((member_id, status, miles)) = found else {
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

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The partner (its `id` in partners.toml).
    #[arg(long, value_name = "ID")]
    pub partner: String,
    /// The partner key to search for, as in the exchange file.
    #[arg(long)]
    pub key: String,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn history(cli: &Cli, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let HistoryArgs { partner, key, json } = args;
    let config = load(cli)?;
    if let Err(code) = known_partner(&config, partner) {
        return Ok(code);
    }
    // A PostgreSQL database never migrated has no credits yet.
    let rows = match super::open_existing(&config)? {
        Some(conn) => query::history(conn.as_ref(), partner, key)?,
        None => Vec::new(),
    };
    let tz = config.daemon.timezone;
    if *json {
        print_json(&rows)?;
    } else if rows.is_empty() {
        println!("no credits for partner {partner} key \"{}\"", cell(key));
    } else {
        println!("credited at\tchannel\tmember\tmiles\tfile:line");
        for r in rows {
            let reversal = r
                .reversal
                .map(|id| format!("\treversal {id}"))
                .unwrap_or_default();
            println!(
                "{}\t{}\t{}\t{}\t{}:{}{reversal}",
                timefmt::stored_for_people(&r.credited_at, tz),
                r.channel,
                cell(&r.member_id),
                r.miles,
                cell(&r.file),
                r.line
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct FilesArgs {
    /// Only this partner's files.
    #[arg(long, value_name = "ID")]
    pub partner: Option<String>,
    /// Only files received on or after this day (YYYY-MM-DD, in the
    /// configured time zone).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub since: Option<chrono::NaiveDate>,
    /// Only files with this outcome (`refused` includes `duplicate`).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(query::FILE_OUTCOMES))]
    pub outcome: Option<String>,
    /// Show at most this many files (0: all).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u64,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn files(cli: &Cli, args: &FilesArgs) -> anyhow::Result<ExitCode> {
    let FilesArgs {
        partner,
        since,
        outcome,
        limit,
        oldest_first,
        json,
    } = args;
    let config = load(cli)?;
    if let Some(id) = partner {
        if let Err(code) = known_partner(&config, id) {
            return Ok(code);
        }
    }
    let tz = config.daemon.timezone;
    let Some(conn) = super::open_existing(&config)? else {
        // PostgreSQL never migrated: no files yet.
        if *json {
            print_json(&Vec::<query::FileRow>::new())?;
        } else {
            println!("no files");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let page = query::files(
        &*conn,
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
        // A refused file's reason starts with its file code (F001–F008);
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
            cell(&r.name),
            r.outcome,
            r.rows,
            r.credited,
            r.failed,
            r.repeats.map_or("-".to_owned(), |n| n.to_string()),
            r.miles,
            cell(r.report_path.as_deref().unwrap_or("-")),
            cell(&reason),
        );
    }
    if more > 0 {
        println!("{hint}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date: use YYYY-MM-DD, e.g. 2026-11-24"))
}
