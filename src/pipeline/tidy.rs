//! Tidy: after the credit committed, put the error report on the partner's
//! server and move (or delete) the inbox file.
//!
//! What must stay true: tidying happens only after the commit, and a file's
//! row stays `tidy = 'pending'` until every step succeeded. The next run
//! retries pending tidies first; since the file is already recorded, it is
//! never credited again however often tidying fails. A failure is never
//! only a log line: it is recorded on the file (`tidy_error`,
//! `tidy_failing_since`) and fails the run (`tidy-failed`) until a later
//! tidy-up succeeds.
//!
//! With `summary = true` the file's summary ([`super::summary`]) is written
//! from its committed row and uploaded after the error report, under the
//! same rules: a failed upload is an undelivered report.

use crate::store::{Exec, StoreError};
use chrono::{DateTime, Utc};

use crate::db::now_text;
use crate::source::{retry::with_retries, After, Pickup, Ready, Source, SourceError};

/// Which step of a tidy-up failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum TidyError {
    #[error("error report {name} not delivered: {source}")]
    Upload { name: String, source: SourceError },
    #[error("error report {path} cannot be read for upload: {source}")]
    ReadReport {
        path: String,
        source: std::io::Error,
    },
    #[error("{name} not moved to {dir}/: {source}")]
    Move {
        name: String,
        dir: String,
        source: SourceError,
    },
    #[error("{name} not deleted: {source}")]
    Delete { name: String, source: SourceError },
    #[error("done-file {name} not removed: {source}")]
    DoneFile { name: String, source: SourceError },
    #[error("summary {path} cannot be written: {source}")]
    WriteSummary {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Seal(#[from] super::pgp::PgpError),
    #[error(transparent)]
    Db(#[from] StoreError),
}

/// Everything tidy needs to know about one recorded file.
#[derive(Debug, Clone)]
pub struct TidyItem {
    pub file_id: i64,
    pub name: String,
    pub outcome: String,
    pub report_path: Option<String>,
}

/// Do the after-steps for one file, then mark it tidied.
pub fn tidy(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &dyn Exec,
    item: &TidyItem,
) -> Result<(), TidyError> {
    tidy_file(source, pickup, conn, item, WriteBack::default())
}

/// What a tidy-up writes back beside the error report, and how.
#[derive(Clone, Copy, Default)]
pub struct WriteBack<'a> {
    /// The partner has `summary = true`.
    pub summary: Option<&'a super::summary::SummaryOpts<'a>>,
    /// `encrypt_reports = true`: the partner's key.
    pub sealer: Option<&'a super::pgp::Sealer>,
}

/// [`tidy`], and with `back.summary` (the partner has `summary = true`) the
/// file's summary written and uploaded after its error report. With
/// `back.sealer` (`encrypt_reports = true`) both are encrypted to the partner's
/// key and uploaded as `<name>.pgp`; the local copies stay plain.
pub fn tidy_file(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &dyn Exec,
    item: &TidyItem,
    back: WriteBack<'_>,
) -> Result<(), TidyError> {
    let seal = |name: String, data: Vec<u8>| -> Result<(String, Vec<u8>), TidyError> {
        match back.sealer {
            None => Ok((name, data)),
            Some(s) => {
                let sealed = s.seal(&name, &data)?;
                Ok((format!("{name}.pgp"), sealed))
            }
        }
    };
    // Uploading the report does not depend on `can_tidy`: an HTTP source
    // cannot move files but PUTs reports to its `errors_url`.
    if let (Some(dir), Some(report)) = (&pickup.errors_dir, &item.report_path) {
        let data = std::fs::read(report).map_err(|source| TidyError::ReadReport {
            path: report.clone(),
            source,
        })?;
        // The partner's contract: `<stem>.errors.csv`, whatever the local
        // (per delivery) name.
        let (name, data) = seal(super::report::upload_name(&item.name), data)?;
        with_retries(pickup.retries, "uploading the error report", || {
            source.upload(dir, &name, &data)
        })
        .map_err(|source| TidyError::Upload {
            name: name.clone(),
            source,
        })?;
    }
    if let Some(opts) = back.summary {
        let facts = super::summary::load(conn, item.file_id)?;
        let (_, data) = super::summary::write(opts.data_dir, opts.tz, opts.encoding, &facts)
            .map_err(|source| TidyError::WriteSummary {
                path: super::summary::local_path(opts.data_dir, opts.tz, &facts)
                    .display()
                    .to_string(),
                source,
            })?;
        if let Some(dir) = &pickup.errors_dir {
            let (name, data) = seal(super::summary::upload_name(&item.name), data)?;
            with_retries(pickup.retries, "uploading the summary", || {
                source.upload(dir, &name, &data)
            })
            .map_err(|source| TidyError::Upload {
                name: name.clone(),
                source,
            })?;
        }
    }
    if source.can_tidy() {
        let action = if item.outcome == "credited" {
            pickup.after.clone()
        } else {
            match &pickup.move_failed {
                Some(d) => After::Move(d.clone()),
                None => After::Keep,
            }
        };
        match &action {
            After::Keep => {}
            After::Delete => with_retries(pickup.retries, "deleting", || source.remove(&item.name))
                .map_err(|source| TidyError::Delete {
                    name: item.name.clone(),
                    source,
                })?,
            After::Move(dir) => {
                with_retries(pickup.retries, "moving", || source.move_to(&item.name, dir)).map_err(
                    |source| TidyError::Move {
                        name: item.name.clone(),
                        dir: dir.clone(),
                        source,
                    },
                )?
            }
        }
        if pickup.ready == Ready::DoneFile && action != After::Keep {
            let marker = format!("{}.done", item.name);
            with_retries(pickup.retries, "removing the done-file", || {
                source.remove(&marker)
            })
            .map_err(|source| TidyError::DoneFile {
                name: marker.clone(),
                source,
            })?;
        }
    }
    conn.execute(
        "UPDATE files SET tidy = 'done', tidy_error = NULL, tidy_failing_since = NULL WHERE id = ?1",
        crate::store_args![item.file_id],
    )?;
    Ok(())
}

/// A tidy-up that failed, as the run reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TidyFailure {
    pub file_id: i64,
    pub name: String,
    pub error: String,
    /// When it first failed (RFC 3339 UTC).
    pub failing_since: String,
}

/// Record that `item`'s tidy-up failed with `error` at `now`: the file keeps
/// `tidy = 'pending'`, and remembers the error and when it first failed.
pub fn record_failure(
    conn: &dyn Exec,
    item: &TidyItem,
    error: &TidyError,
    now: DateTime<Utc>,
) -> Result<TidyFailure, StoreError> {
    let error = error.to_string();
    let now_s = now_text(now);
    // The failure and, the first time, the partner's event commit together.
    let failing_since = crate::store::write(conn, |tx| {
        let row = tx.query(
            "UPDATE files SET tidy_error = ?2, tidy_failing_since = COALESCE(tidy_failing_since, ?3)
             WHERE id = ?1 RETURNING tidy_failing_since, partner",
            crate::store_args![item.file_id, &error, &now_s],
        )?;
        let row = row.first().ok_or(StoreError::Decode {
            column: 0,
            wanted: "the file's row",
        })?;
        let failing_since = row.text(0)?;
        if failing_since == now_s {
            let partner = row.text(1)?;
            crate::notify::report_undelivered(tx, &partner, item.file_id, &item.name, &error, now)?;
        }
        Ok::<_, StoreError>(failing_since)
    })?;
    Ok(TidyFailure {
        file_id: item.file_id,
        name: item.name.clone(),
        error,
        failing_since,
    })
}

/// Files of `partner` whose tidy-up is still owed.
pub fn pending(conn: &dyn Exec, partner: &str) -> Result<Vec<TidyItem>, StoreError> {
    conn.query(
        "SELECT id, name, outcome, report_path FROM files WHERE partner = ?1 AND tidy = 'pending' ORDER BY id",
        crate::store_args![partner],
    )?
    .into_iter()
    .map(|r| {
        Ok(TidyItem {
            file_id: r.int(0)?,
            name: r.text(1)?,
            outcome: r.text(2)?,
            report_path: r.opt_text(3)?,
        })
    })
    .collect()
}
