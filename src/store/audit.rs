//! The audit trail's one statement: append a row (the trail itself is
//! `crate::audit`: who records what, and the append-only rule).
//!
//! What must stay true: this is the only INSERT into `audit`, on either
//! engine, and nothing in the store updates or deletes an audit row (the
//! triggers of both engines refuse it anyway).

use super::{Exec, StoreError};
use crate::audit::Entry;

/// Append `e` at `now`; the new row's id.
pub fn append<E: Exec + ?Sized>(
    db: &E,
    e: &Entry<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<i64, StoreError> {
    db.insert_id(
        "INSERT INTO audit(at, actor, action, partner, detail, client) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        crate::store_args![
            crate::db::now_text(now).as_str(),
            e.actor,
            e.action,
            e.partner,
            e.detail,
            e.client
        ],
    )
}
