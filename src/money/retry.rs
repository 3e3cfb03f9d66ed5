//! `milebatch retry`: credit a refused (or reversed) file again from its
//! archived bytes, without the partner sending anything.
//!
//! What must stay true:
//! - Only the archived copy is read, and only if its SHA-256 is still the
//!   one recorded when it was received.
//! - A file that is credited and not reversed is never retried, and
//!   content credited under any file row is never credited again: the
//!   credit stage's duplicate check and the credited-once index still hold.
//!   A reversed file's content is let through by the credit stage for a
//!   retry only (`CreditJob::retry_of`).
//! - The retry is a new transaction and a new `files` row (`retry_of` names
//!   the old one); the old row is never changed.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::pipeline::{self, Fetched, FileReport, PipelineError};
use crate::store::{Exec, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("retry: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<StoreError> for RetryError {
    fn from(e: StoreError) -> Self {
        RetryError::Db(e.into())
    }
}

impl From<rusqlite::Error> for RetryError {
    fn from(e: rusqlite::Error) -> Self {
        RetryError::Db(e.into())
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum RetryOutcome {
    /// Processed again: the new file row and what became of it (credited,
    /// refused again, …).
    Done {
        retry_of: i64,
        file_id: Option<i64>,
        #[serde(flatten)]
        report: Box<FileReport>,
    },
    /// Not retried, for this reason; nothing changed.
    Refused { reason: String },
}

/// Retry file `file_id` for `actor`.
pub fn retry(
    config: &Config,
    file_id: i64,
    actor: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RetryOutcome, RetryError> {
    let refused = |reason: String| Ok(RetryOutcome::Refused { reason });
    let conn = crate::store::open_writer(&config.daemon.store)?;
    let row = match conn.query_opt(
        "SELECT partner, name, size, mtime, sha256, archive_path, outcome FROM files WHERE id = ?1",
        crate::store_args![file_id],
    )? {
        None => None,
        Some(r) => Some((
            r.text(0)?,
            r.text(1)?,
            r.int(2)?,
            r.opt_int(3)?,
            r.text(4)?,
            r.opt_text(5)?,
            r.text(6)?,
        )),
    };
    let Some((partner_id, name, size, mtime, sha256, archive, outcome)) = row else {
        return refused(format!(
            "there is no file {file_id} (see `milebatch files`)"
        ));
    };
    if outcome == "credited" {
        return refused(format!(
            "file {file_id} ({name}) is credited and not reversed: retrying it would credit it twice. \
             If it was wrong, reverse it first: `milebatch reverse --file {file_id} --reason TEXT`"
        ));
    }
    if let Some((other, other_name)) = conn
        .query_opt(
            "SELECT id, name FROM files WHERE partner = ?1 AND sha256 = ?2 AND outcome = 'credited'",
            crate::store_args![&partner_id, &sha256],
        )?
        .map(|r| Ok::<_, StoreError>((r.int(0)?, r.text(1)?)))
        .transpose()?
    {
        return refused(format!(
            "the content of file {file_id} ({name}) is credited already, as file {other} ({other_name}): \
             nothing to retry"
        ));
    }
    let Some(partner) = config.partners.iter().find(|p| p.id == partner_id) else {
        return refused(format!(
            "file {file_id} belongs to partner {partner_id:?}, which is not in the configuration"
        ));
    };
    let Some(archive) = archive.map(PathBuf::from) else {
        return refused(format!("file {file_id} ({name}) has no archived copy"));
    };
    // Streamed, as pickup hashed it: the archive may be gigabytes.
    let actual = match crate::pipeline::pickup::hash_file(&archive) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refused(format!(
                "the archived copy of file {file_id} ({name}), {}, is missing",
                archive.display()
            ))
        }
        Err(source) => {
            return Err(RetryError::Io {
                path: archive,
                source,
            })
        }
    };
    if actual != sha256 {
        return refused(format!(
            "the archived copy of file {file_id} ({name}), {}, has changed since it was received \
             (SHA-256 {actual}, recorded {sha256}): it is not retried",
            archive.display()
        ));
    }
    drop(conn);
    let fetched = Fetched {
        name: name.clone(),
        size: size as u64,
        mtime,
        sha256,
        archive,
    };
    let report = pipeline::retry_archived(config, partner, &fetched, file_id, now)?;
    let conn = crate::store::open_writer(&config.daemon.store)?;
    let new_id = report.id;
    crate::store::audit::append(
        &conn,
        &crate::audit::Entry {
            actor,
            action: "retry",
            partner: Some(&partner.id),
            detail: &format!(
                "file {file_id} ({name}) retried as file {}: {}, {} rows, {} credited, {} failed, {} miles",
                new_id.map_or("-".into(), |i| i.to_string()),
                report.outcome,
                report.counts.rows,
                report.counts.credited,
                report.counts.failed,
                report.counts.miles
            ),
            client: None,
        },
        chrono::Utc::now(),
    )?;
    Ok(RetryOutcome::Done {
        retry_of: file_id,
        file_id: new_id,
        report: Box::new(report),
    })
}
