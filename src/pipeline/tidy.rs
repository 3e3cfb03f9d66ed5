//! Tidy: after the credit committed, put the error report on the partner's
//! server and move (or delete) the inbox file.
//!
//! What must stay true: tidying happens only after the commit, and a file's
//! row stays `tidy = 'pending'` until every step succeeded. The next run
//! retries pending tidies first; since the file is already recorded, it is
//! never credited again however often tidying fails.

use rusqlite::{params, Connection};

use crate::source::{retry::with_retries, After, Pickup, Ready, Source, SourceError};

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
    conn: &Connection,
    item: &TidyItem,
) -> Result<(), SourceError> {
    // Uploading the report does not depend on `can_tidy`: an HTTP source
    // cannot move files but PUTs reports to its `errors_url`.
    if let (Some(dir), Some(report)) = (&pickup.errors_dir, &item.report_path) {
        let data = std::fs::read(report)
            .map_err(|e| SourceError::Permanent(format!("reading report {report}: {e}")))?;
        // The partner's contract: `<stem>.errors.csv`, whatever the local
        // (per delivery) name.
        let name = super::report::upload_name(&item.name);
        with_retries(pickup.retries, "uploading the error report", || {
            source.upload(dir, &name, &data)
        })?;
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
            After::Delete => {
                with_retries(pickup.retries, "deleting", || source.remove(&item.name))?
            }
            After::Move(dir) => {
                with_retries(pickup.retries, "moving", || source.move_to(&item.name, dir))?
            }
        }
        if pickup.ready == Ready::DoneFile && action != After::Keep {
            let marker = format!("{}.done", item.name);
            with_retries(pickup.retries, "removing the done-file", || {
                source.remove(&marker)
            })?;
        }
    }
    conn.execute(
        "UPDATE files SET tidy = 'done' WHERE id = ?1",
        params![item.file_id],
    )
    .map_err(|e| SourceError::Permanent(format!("database: {e}")))?;
    Ok(())
}

/// Files of `partner` whose tidy-up is still owed.
pub fn pending(conn: &Connection, partner: &str) -> rusqlite::Result<Vec<TidyItem>> {
    let mut st = conn.prepare(
        "SELECT id, name, outcome, report_path FROM files WHERE partner = ?1 AND tidy = 'pending' ORDER BY id",
    )?;
    let rows = st.query_map([partner], |r| {
        Ok(TidyItem {
            file_id: r.get(0)?,
            name: r.get(1)?,
            outcome: r.get(2)?,
            report_path: r.get(3)?,
        })
    })?;
    rows.collect()
}
