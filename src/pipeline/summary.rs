//! Summary: the per-file receipt for the partner (`summary = true`), a small
//! CSV written beside the error report and uploaded where it goes.
//!
//! What must stay true:
//! - it is made from the file's committed `files` row, never from memory:
//!   a crash between the commit and the upload makes the next run's tidy-up
//!   write the same bytes again and deliver them (the `tidy = 'pending'`
//!   marker), so a receipt never disagrees with the ledger;
//! - it is in the partner's encoding (CP932 for `shift_jis` partners), with
//!   the file's own line ending (else CRLF for `shift_jis`, LF for UTF-8),
//!   like the error report;
//! - the layout is a contract, like the codes: `item,value` lines in a fixed
//!   order, one line per E code whether or not it occurred ([`render`]);
//!   lines may be added at the end, never renamed or reordered;
//! - locally `reports/<partner>/<received-date>/<file-id>-<stem>.summary.csv`
//!   (written to a temp name, synced, renamed; 0600); uploaded as
//!   `<stem>.summary.csv`. Dry runs write none: nothing was recorded.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;

use crate::config::Encoding;
use crate::timefmt;

use super::parse::LineEnding;
use super::validate::Code;

/// What the summary says, as read from one `files` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub file_id: i64,
    pub partner: String,
    pub name: String,
    pub sha256: String,
    /// `files.started_at`: when the run that picked it up started (RFC 3339 UTC).
    pub received_at: String,
    /// `files.finished_at`: when its outcome was recorded.
    pub processed_at: Option<String>,
    pub outcome: String,
    pub rows: i64,
    pub credited: i64,
    pub failed: i64,
    pub miles: i64,
    /// `{"E003": 2, …}`
    pub failed_by_code: String,
    pub file_code: Option<String>,
    pub reason: Option<String>,
    pub archive_path: Option<String>,
}

/// Read the facts of file `file_id`.
pub fn load(
    conn: &dyn crate::store::Exec,
    file_id: i64,
) -> Result<Facts, crate::store::StoreError> {
    let r = conn
        .query_opt(
            "SELECT id, partner, name, sha256, started_at, finished_at, outcome, rows, credited, failed,
                    miles, failed_by_code, file_code, reason, archive_path
             FROM files WHERE id = ?1",
            crate::store_args![file_id],
        )?
        .ok_or(crate::store::StoreError::Decode {
            column: 0,
            wanted: "the file's row",
        })?;
    Ok(Facts {
        file_id: r.int(0)?,
        partner: r.text(1)?,
        name: r.text(2)?,
        sha256: r.text(3)?,
        received_at: r.text(4)?,
        processed_at: r.opt_text(5)?,
        outcome: r.text(6)?,
        rows: r.int(7)?,
        credited: r.int(8)?,
        failed: r.int(9)?,
        miles: r.int(10)?,
        failed_by_code: r.text(11)?,
        file_code: r.opt_text(12)?,
        reason: r.opt_text(13)?,
        archive_path: r.opt_text(14)?,
    })
}

/// The name the summary is uploaded under: `<stem>.summary.csv`.
pub fn upload_name(file_name: &str) -> String {
    format!("{}.summary.csv", super::report::stem(file_name))
}

/// Where the summary of `f` is kept: beside its error report.
pub fn local_path(data_dir: &Path, tz: Tz, f: &Facts) -> PathBuf {
    let day = timefmt::parse_stored(&f.received_at)
        .map(|t| timefmt::local_date(t, tz))
        .unwrap_or_else(|| "unknown-date".into());
    data_dir
        .join("reports")
        .join(&f.partner)
        .join(day)
        .join(format!(
            "{}-{}.summary.csv",
            f.file_id,
            super::report::stem(&f.name)
        ))
}

/// One CSV field: quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The summary's bytes, in `encoding`, each line ended by `ending`.
///
/// ```text
/// item,value
/// file,POINT_20261130.csv
/// sha256,<64 hex digits>
/// received_at,2026-11-30T03:00:02+09:00
/// processed_at,2026-11-30T03:00:04+09:00
/// outcome,credited            (credited | refused | duplicate)
/// rows,5
/// credited,4
/// failed,1
/// miles,605
/// E001,0 … E010,0             (one line per code, in code order)
/// file_code,                  (F001–F008 for a refused file, else empty)
/// reason,                     (why it was refused, else empty)
/// ```
pub fn render(f: &Facts, tz: Tz, encoding: Encoding, ending: LineEnding) -> Vec<u8> {
    let time = |stored: &str| {
        timefmt::parse_stored(stored)
            .map(|t| timefmt::rfc3339(t, tz))
            .unwrap_or_else(|| stored.to_owned())
    };
    let by_code: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&f.failed_by_code).unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        ("item".into(), "value".into()),
        ("file".into(), f.name.clone()),
        ("sha256".into(), f.sha256.clone()),
        ("received_at".into(), time(&f.received_at)),
        (
            "processed_at".into(),
            f.processed_at.as_deref().map(time).unwrap_or_default(),
        ),
        ("outcome".into(), f.outcome.clone()),
        ("rows".into(), f.rows.to_string()),
        ("credited".into(), f.credited.to_string()),
        ("failed".into(), f.failed.to_string()),
        ("miles".into(), f.miles.to_string()),
    ];
    for c in Code::ALL {
        let n = by_code
            .get(c.as_str())
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        lines.push((c.as_str().into(), n.to_string()));
    }
    lines.push(("file_code".into(), f.file_code.clone().unwrap_or_default()));
    lines.push(("reason".into(), f.reason.clone().unwrap_or_default()));
    let mut text = String::new();
    for (k, v) in lines {
        text.push_str(&field(&k));
        text.push(',');
        text.push_str(&field(&v));
        text.push_str(std::str::from_utf8(ending.as_bytes()).unwrap_or("\n"));
    }
    match encoding {
        Encoding::Utf8 => text.into_bytes(),
        // A character CP932 lacks (only possible in a file name or reason
        // that came from elsewhere) becomes `&#NNNN;`: encoding_rs's rule,
        // visible rather than dropped.
        Encoding::ShiftJis => encoding_rs::SHIFT_JIS.encode(&text).0.into_owned(),
    }
}

/// The line ending of the summary: the delivered file's own (its archived
/// copy's first line), else CRLF for `shift_jis` and LF for UTF-8.
pub fn ending(f: &Facts, encoding: Encoding) -> LineEnding {
    f.archive_path
        .as_deref()
        .and_then(|p| super::report::sniff_ending(Path::new(p)).ok().flatten())
        .unwrap_or(match encoding {
            Encoding::ShiftJis => LineEnding::CrLf,
            Encoding::Utf8 => LineEnding::Lf,
        })
}

/// Write the summary of `f` to its local path (temp name, synced, renamed,
/// 0600) and return the path and the bytes.
pub fn write(
    data_dir: &Path,
    tz: Tz,
    encoding: Encoding,
    f: &Facts,
) -> std::io::Result<(PathBuf, Vec<u8>)> {
    let bytes = render(f, tz, encoding, ending(f, encoding));
    let path = local_path(data_dir, tz, f);
    if let Some(dir) = path.parent() {
        crate::db::create_private_dir(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.part"));
    let mut out = super::report::private_file(&tmp)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok((path, bytes))
}

/// What a tidy-up needs to write a partner's summaries.
#[derive(Debug, Clone, Copy)]
pub struct SummaryOpts<'a> {
    pub data_dir: &'a Path,
    pub tz: Tz,
    pub encoding: Encoding,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            file_id: 7,
            partner: "shop".into(),
            name: "POINT.csv".into(),
            sha256: "ab".repeat(32),
            received_at: "2026-11-29T18:00:02Z".into(),
            processed_at: Some("2026-11-29T18:00:04Z".into()),
            outcome: "credited".into(),
            rows: 5,
            credited: 4,
            failed: 1,
            miles: 605,
            failed_by_code: r#"{"E003":1}"#.into(),
            file_code: None,
            reason: None,
            archive_path: None,
        }
    }

    #[test]
    fn layout_is_item_value_lines_with_every_code() {
        let out = render(
            &facts(),
            chrono_tz::Asia::Tokyo,
            Encoding::Utf8,
            LineEnding::Lf,
        );
        let want = format!(
            "item,value\nfile,POINT.csv\nsha256,{}\nreceived_at,2026-11-30T03:00:02+09:00\n\
             processed_at,2026-11-30T03:00:04+09:00\noutcome,credited\nrows,5\ncredited,4\n\
             failed,1\nmiles,605\nE001,0\nE002,0\nE003,1\nE004,0\nE005,0\nE006,0\nE007,0\n\
             E008,0\nE009,0\nE010,0\nfile_code,\nreason,\n",
            "ab".repeat(32)
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        let mut f = facts();
        f.outcome = "refused".into();
        f.file_code = Some("F006".into());
        f.reason = Some("looks like a re-send of file 18: 2,412 of \"2,450\"".into());
        let out = String::from_utf8(render(&f, chrono_tz::UTC, Encoding::Utf8, LineEnding::CrLf))
            .unwrap();
        assert!(out.contains("received_at,2026-11-29T18:00:02+00:00\r\n"));
        assert!(out.ends_with(
            "file_code,F006\r\nreason,\"looks like a re-send of file 18: 2,412 of \"\"2,450\"\"\"\r\n"
        ));
    }

    #[test]
    fn local_path_is_beside_the_report_by_received_day() {
        let p = local_path(Path::new("/d"), chrono_tz::Asia::Tokyo, &facts());
        assert_eq!(
            p,
            Path::new("/d/reports/shop/2026-11-30/7-POINT.summary.csv")
        );
        assert_eq!(upload_name("POINT.csv"), "POINT.summary.csv");
    }
}
