//! Stray files: names in a partner's inbox that match neither `pattern`
//! nor `ignore`. The run that first sees one reports it (action needed:
//! the run fails, `once` exits 1, `status` and the metrics show it); later
//! runs list it as `ignored` while it stays exactly as it was reported.
//!
//! What must stay true:
//! - one row per partner and name, holding the listing entry (size, mtime)
//!   it was reported as: the same name with another size or mtime is a
//!   new file and is reported again;
//! - rows of names no longer in the inbox are forgotten, so a stray put
//!   back later is reported again;
//! - only real runs write here (a dry run reads).

use super::{Exec, StoreError};
use crate::store_args as args;

/// When `name` was reported as a stray of `partner` with exactly this
/// size and mtime (RFC 3339 UTC), if it was.
pub fn reported_at<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    name: &str,
    size: u64,
    mtime: Option<i64>,
) -> Result<Option<String>, StoreError> {
    db.query_opt(
        "SELECT reported_at FROM stray_files \
         WHERE partner = ?1 AND name = ?2 AND size = ?3 AND mtime IS NOT DISTINCT FROM ?4",
        args![partner, name, size as i64, mtime],
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// Record that `name` (with this size and mtime) was reported at `now`,
/// replacing what was recorded for that name before.
pub fn record<E: Exec + ?Sized>(
    db: &E,
    partner: &str,
    name: &str,
    size: u64,
    mtime: Option<i64>,
    now: &str,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO stray_files(partner, name, size, mtime, reported_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT(partner, name) DO UPDATE SET \
         size = excluded.size, mtime = excluded.mtime, reported_at = excluded.reported_at",
        args![partner, name, size as i64, mtime, now],
    )?;
    Ok(())
}

/// The names recorded as strays of `partner`.
pub fn names<E: Exec + ?Sized>(db: &E, partner: &str) -> Result<Vec<String>, StoreError> {
    db.query(
        "SELECT name FROM stray_files WHERE partner = ?1",
        args![partner],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// Forget the stray `name` of `partner` (it is no longer in the inbox).
pub fn forget<E: Exec + ?Sized>(db: &E, partner: &str, name: &str) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM stray_files WHERE partner = ?1 AND name = ?2",
        args![partner, name],
    )?;
    Ok(())
}
