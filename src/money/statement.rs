//! `milebatch statement`: a partner's monthly statement, the basis of its
//! invoice (partners pay for the miles issued).
//!
//! What must stay true: the net total is exactly the sum of the partner's
//! ledger rows whose `credited_at` falls in the month, month boundaries
//! being local midnights in the daemon's zone; every credit row is counted
//! once in each breakdown (channel, file, day), and every reversal row once
//! under reversals, in the month the reversal was made. One pass over the
//! partner's part of the ledger (its key starts with the partner).

use std::collections::BTreeMap;

use crate::store::{Engine, Exec, StoreError};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::excel::Lang;
use crate::timefmt;

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("statement: reading the {0}")]
    Store(#[from] StoreError),
    #[error("statement: --month {0:?} is not a month: write it as YYYY-MM, e.g. 2026-11")]
    Month(String),
}

/// Rows and miles.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Total {
    pub rows: i64,
    pub miles: i64,
}

impl Total {
    fn add(&mut self, miles: i64) {
        self.rows += 1;
        self.miles += miles;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelLine {
    /// `pull`, `upload` or `api`.
    pub channel: String,
    #[serde(flatten)]
    pub total: Total,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileLine {
    /// 0 for the API exchanges, taken together.
    pub file_id: i64,
    /// The file's name, or `API exchanges`.
    pub name: String,
    pub channel: String,
    #[serde(flatten)]
    pub total: Total,
}

#[derive(Debug, Clone, Serialize)]
pub struct DayLine {
    /// `2026-11-24`, in the daemon's zone.
    pub day: String,
    #[serde(flatten)]
    pub total: Total,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReversalLine {
    pub id: i64,
    /// `file 3` or `API exchange 17`.
    pub what: String,
    pub actor: String,
    pub reason: String,
    /// RFC 3339 UTC.
    pub at: String,
    /// Miles are negative: what the reversal took back.
    #[serde(flatten)]
    pub total: Total,
}

#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub partner: String,
    /// `2026-11`.
    pub month: String,
    pub timezone: String,
    /// The month's first instant and the next month's, RFC 3339 UTC.
    pub from: String,
    pub until: String,
    pub by_channel: Vec<ChannelLine>,
    pub by_file: Vec<FileLine>,
    pub by_day: Vec<DayLine>,
    /// Everything credited in the month (the three channels together).
    pub issued: Total,
    pub reversals: Vec<ReversalLine>,
    /// Everything reversed in the month (negative miles).
    pub reversed: Total,
    /// `issued + reversed`: the sum of the partner's ledger rows in the month.
    pub net: Total,
}

/// The first instants of `month` (`YYYY-MM`) and of the next, in `tz`.
pub fn month_bounds(month: &str, tz: Tz) -> Result<(DateTime<Utc>, DateTime<Utc>), StatementError> {
    let bad = || StatementError::Month(month.to_owned());
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or_else(bad)?;
    Ok((
        timefmt::start_of_day(first, tz),
        timefmt::start_of_day(next, tz),
    ))
}

/// `partner`'s statement for `month` (`YYYY-MM`) in `tz`.
pub fn statement(
    conn: &dyn Exec,
    partner: &str,
    month: &str,
    tz: Tz,
) -> Result<Statement, StatementError> {
    let (from, until) = month_bounds(month, tz)?;
    // One snapshot: the breakdowns and the net agree even while the daemon
    // credits.
    conn.batch(match conn.engine() {
        Engine::Sqlite => "BEGIN",
        Engine::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    })?;
    let result = build(conn, partner, month, tz, from, until);
    let _ = conn.batch("ROLLBACK");
    result
}

fn build(
    conn: &dyn Exec,
    partner: &str,
    month: &str,
    tz: Tz,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Statement, StatementError> {
    let mut by_file: BTreeMap<i64, Total> = BTreeMap::new();
    let mut by_day: BTreeMap<NaiveDate, Total> = BTreeMap::new();
    let mut by_reversal: BTreeMap<i64, Total> = BTreeMap::new();
    let mut net = Total::default();
    conn.for_each(
        "SELECT file_id, miles, credited_at, reversal FROM ledger
         WHERE partner = ?1 AND credited_at >= ?2 AND credited_at < ?3",
        crate::store_args![partner, from.timestamp(), until.timestamp()],
        &mut |r| {
            let (file_id, miles, at, reversal) = (r.int(0)?, r.int(1)?, r.int(2)?, r.opt_int(3)?);
            net.add(miles);
            if let Some(id) = reversal {
                by_reversal.entry(id).or_default().add(miles);
                return Ok(());
            }
            by_file.entry(file_id).or_default().add(miles);
            let day = DateTime::from_timestamp(at, 0)
                .unwrap_or_default()
                .with_timezone(&tz)
                .date_naive();
            by_day.entry(day).or_default().add(miles);
            Ok(())
        },
    )?;
    let mut channels: BTreeMap<String, Total> = ["pull", "upload", "api"]
        .into_iter()
        .map(|c| (c.to_owned(), Total::default()))
        .collect();
    let mut files = Vec::with_capacity(by_file.len());
    let mut issued = Total::default();
    for (file_id, total) in by_file {
        let (name, channel) = if file_id == 0 {
            ("API exchanges".to_owned(), "api".to_owned())
        } else {
            match conn.query_opt(
                "SELECT name, channel FROM files WHERE id = ?1",
                crate::store_args![file_id],
            )? {
                Some(r) => (r.text(0)?, r.text(1)?),
                None => (format!("file {file_id} (not recorded)"), "pull".into()),
            }
        };
        let c = channels.entry(channel.clone()).or_default();
        c.rows += total.rows;
        c.miles += total.miles;
        issued.rows += total.rows;
        issued.miles += total.miles;
        files.push(FileLine {
            file_id,
            name,
            channel,
            total,
        });
    }
    // Fixed order: pull, upload, api, then any other channel by name.
    let order = |c: &str| match c {
        "pull" => 0,
        "upload" => 1,
        "api" => 2,
        _ => 3,
    };
    let mut by_channel: Vec<ChannelLine> = channels
        .into_iter()
        .map(|(channel, total)| ChannelLine { channel, total })
        .collect();
    by_channel
        .sort_by(|a, b| (order(&a.channel), &a.channel).cmp(&(order(&b.channel), &b.channel)));
    let mut reversals = Vec::with_capacity(by_reversal.len());
    let mut reversed = Total::default();
    for (id, total) in by_reversal {
        let found = conn.query_opt(
            "SELECT COALESCE('file ' || CAST(file_id AS TEXT), 'API exchange ' || CAST(exchange AS TEXT)),
                    actor, reason, at
             FROM reversals WHERE id = ?1",
            crate::store_args![id],
        )?;
        let (what, actor, reason, at) = match found {
            Some(r) => (r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?),
            None => (
                "?".into(),
                "?".into(),
                "(no reversal record)".into(),
                String::new(),
            ),
        };
        reversed.rows += total.rows;
        reversed.miles += total.miles;
        reversals.push(ReversalLine {
            id,
            what,
            actor,
            reason,
            at,
            total,
        });
    }
    Ok(Statement {
        partner: partner.to_owned(),
        month: month.to_owned(),
        timezone: tz.name().to_owned(),
        from: crate::db::now_text(from),
        until: crate::db::now_text(until),
        by_channel,
        by_file: files,
        by_day: by_day
            .into_iter()
            .map(|(d, total)| DayLine {
                day: format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
                total,
            })
            .collect(),
        issued,
        reversals,
        reversed,
        net,
    })
}

/// The statement as CSV: `section,item,detail,rows,miles`, one line per
/// breakdown line, then `issued`, `reversed` and `net` (the form for
/// scripts: [`to_csv_for`] with `Lang::En`).
pub fn to_csv(s: &Statement) -> String {
    to_csv_for(s, Lang::En, false)
}

/// The statement as CSV in `lang`: `Lang::Ja` has Japanese headers and
/// words, CRLF (encode it with [`crate::excel::encode`]). With
/// `for_partner`, a reversal names no person (運用担当), as the API does.
/// Reversal times are in the statement's zone with the offset.
pub fn to_csv_for(s: &Statement, lang: Lang, for_partner: bool) -> String {
    let ja = lang == Lang::Ja;
    let tz: Tz = s.timezone.parse().unwrap_or(chrono_tz::UTC);
    let mut w = lang.writer();
    // File names and reversal reasons are people's text: a spreadsheet
    // must not run them (`csvcell`).
    let mut line = |section: &str, item: &str, detail: &str, t: &Total| {
        w.write_record([
            section,
            item,
            &crate::csvcell::text(detail),
            &t.rows.to_string(),
            &t.miles.to_string(),
        ])
        .expect("writing to memory");
    };
    let word = |en: &'static str, jp: &'static str| if ja { jp } else { en };
    line(
        word("section", "区分"),
        word("item", "項目"),
        word("detail", "詳細"),
        &Total::default(),
    );
    let channel = |c: &str| {
        if ja {
            crate::words::channel(c)
        } else {
            c.to_owned()
        }
    };
    for c in &s.by_channel {
        line(
            word("channel", "経路別"),
            &channel(&c.channel),
            "",
            &c.total,
        );
    }
    for f in &s.by_file {
        let detail = if ja {
            format!("{}（{}）", f.name, channel(&f.channel))
        } else {
            format!("{} ({})", f.name, f.channel)
        };
        line(
            word("file", "ファイル別"),
            &f.file_id.to_string(),
            &detail,
            &f.total,
        );
    }
    for d in &s.by_day {
        line(word("day", "日別"), &d.day, "", &d.total);
    }
    line(word("issued", "積算合計"), "", "", &s.issued);
    for r in &s.reversals {
        let at = timefmt::parse_stored(&r.at)
            .map(|t| crate::excel::time(t, tz, lang))
            .unwrap_or_else(|| r.at.clone());
        let actor = if for_partner {
            "運用担当"
        } else {
            r.actor.as_str()
        };
        let detail = if ja {
            let what =
                r.what
                    .replacen("API exchange ", "API 交換 ", 1)
                    .replacen("file ", "ファイル ", 1);
            format!("{what}、{actor}、{at}: {}", r.reason)
        } else {
            format!("{} by {actor} at {at}: {}", r.what, r.reason)
        };
        line(
            word("reversal", "取り消し"),
            &r.id.to_string(),
            &detail,
            &r.total,
        );
    }
    line(word("reversed", "取り消し合計"), "", "", &s.reversed);
    line(word("net", "差引合計"), "", "", &s.net);
    let mut out =
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 in, UTF-8 out");
    // The header's rows,miles columns are names, not zeros.
    out = if ja {
        out.replacen("区分,項目,詳細,0,0", "区分,項目,詳細,行数,マイル", 1)
    } else {
        out.replacen(
            "section,item,detail,0,0",
            "section,item,detail,rows,miles",
            1,
        )
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_at_local_midnight() {
        let tz: Tz = "Asia/Tokyo".parse().unwrap();
        let (a, b) = month_bounds("2026-11", tz).unwrap();
        assert_eq!(crate::db::now_text(a), "2026-10-31T15:00:00.000Z");
        assert_eq!(crate::db::now_text(b), "2026-11-30T15:00:00.000Z");
        let (_, b) = month_bounds("2026-12", tz).unwrap();
        assert_eq!(crate::db::now_text(b), "2026-12-31T15:00:00.000Z");
        for bad in [
            "2026-13", "2026-1", "26-11", "2026/11", "november", "2026-00",
        ] {
            assert!(month_bounds(bad, tz).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_shows_a_formula_like_file_name_as_text_and_keeps_negative_miles_numbers() {
        let t = |rows, miles| Total { rows, miles };
        let s = Statement {
            partner: "shop".into(),
            month: "2026-11".into(),
            timezone: "Asia/Tokyo".into(),
            from: String::new(),
            until: String::new(),
            by_channel: vec![ChannelLine {
                channel: "upload".into(),
                total: t(2, 30),
            }],
            by_file: vec![FileLine {
                file_id: 4,
                name: "=HYPERLINK(\"https://x.example\").csv".into(),
                channel: "upload".into(),
                total: t(2, 30),
            }],
            by_day: vec![],
            issued: t(2, 30),
            reversals: vec![ReversalLine {
                id: 1,
                what: "file 4".into(),
                actor: "user:ops@example.jp".into(),
                reason: "=1+1".into(),
                at: "2026-11-30T01:00:00Z".into(),
                total: t(2, -30),
            }],
            reversed: t(2, -30),
            net: t(4, 0),
        };
        let csv = to_csv(&s);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "section,item,detail,rows,miles");
        assert_eq!(
            lines[2],
            "file,4,\"'=HYPERLINK(\"\"https://x.example\"\").csv (upload)\",2,30"
        );
        assert_eq!(
            lines[4],
            "reversal,1,file 4 by user:ops@example.jp at 2026-11-30T10:00:00+09:00: =1+1,2,-30"
        );
        assert_eq!(lines[5], "reversed,,,2,-30");
        let ja = to_csv_for(&s, Lang::Ja, true);
        let lines: Vec<&str> = ja.split("\r\n").collect();
        assert_eq!(lines[0], "区分,項目,詳細,行数,マイル");
        assert_eq!(lines[1], "経路別,アップロード,,2,30");
        assert_eq!(
            lines[4],
            "取り消し,1,ファイル 4、運用担当、2026-11-30 10:00:00 +09:00: =1+1,2,-30"
        );
        assert_eq!(lines[6], "差引合計,,,4,0");
    }
}
