//! Pick up: list the inbox, keep what is ready and new, download it, and
//! archive the exact bytes before anything else reads them.
//!
//! What must stay true:
//! - an unsafe name never reaches a path (`source::safe_name`);
//! - a download lands in a temp file, is size-checked and hashed, and only
//!   then renamed into the archive: a dropped connection leaves nothing that
//!   a later step could mistake for a file;
//! - a listing entry already credited (same name, size and mtime) is not even
//!   downloaded again; one recorded as refused is, and judged by content, so
//!   a corrected file put back under the same name is never ignored;
//! - **nothing listed is silent**: every listed file is either taken or
//!   becomes a [`Skip`] with its reason. Only names starting with `.`
//!   (uploads in progress, our own `.x.part`) and, under
//!   `ready = "done-file"`, the `*.done` markers themselves are passed over
//!   without a word: they are not deliveries.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::store::{Exec, Row, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::{
    retry::with_retries, safe_name, Pickup, Ready, RemoteFile, Source, SourceError,
};

use super::{Fetched, PipelineError};

/// Why a listed file was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// Recorded as credited before (same listing entry, or same name and
    /// content): nothing to do. Stays while the file stays in the inbox
    /// (`after = "keep"`, a pending tidy-up, a re-upload).
    AlreadySeen,
    /// Same name and content as a refused (or duplicate) file: needs a
    /// corrected file or a re-delivery under another name.
    RefusedContent,
    /// The name does not match `pattern` (nor `ignore`), seen for the
    /// first time as it is now: reported once (see `store::strays`).
    PatternMismatch,
    /// Not a delivery, by the partner's settings: the name matches
    /// `ignore`, or it is a stray already reported unchanged.
    Ignored,
    /// Over `max_size`.
    TooLarge,
    /// A name that could escape the inbox or is not printable.
    UnsafeName,
    /// `ready = "done-file"` and its `.done` marker is not there yet.
    DoneFileMissing,
    /// `ready = "stable:…"` and it changed while we watched it.
    StillChanging,
    /// The run was asked to stop before this file was started.
    NotStarted,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadySeen => "already-seen",
            SkipReason::RefusedContent => "refused-content",
            SkipReason::PatternMismatch => "pattern-mismatch",
            SkipReason::Ignored => "ignored",
            SkipReason::TooLarge => "too-large",
            SkipReason::UnsafeName => "unsafe-name",
            SkipReason::DoneFileMissing => "done-file-missing",
            SkipReason::StillChanging => "still-changing",
            SkipReason::NotStarted => "not-started",
        }
    }

    /// Whether a human has to act (the run then fails: `once` exits 1).
    /// Files that are merely not ready yet, or already credited, are not.
    pub fn action_needed(self) -> bool {
        matches!(
            self,
            SkipReason::RefusedContent
                | SkipReason::PatternMismatch
                | SkipReason::TooLarge
                | SkipReason::UnsafeName
        )
    }
}

/// One listed file a run did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub name: String,
    pub reason: SkipReason,
    /// The reason in words, with what to do about it.
    pub detail: String,
    /// The earlier `files` row this one was recognised as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<i64>,
    /// `still-changing`: seconds until it may be ready, if nothing changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_left: Option<u64>,
    pub action_needed: bool,
}

impl Skip {
    pub fn new(name: &str, reason: SkipReason, detail: String) -> Skip {
        Skip {
            name: name.to_owned(),
            reason,
            detail,
            file_id: None,
            seconds_left: None,
            action_needed: reason.action_needed(),
        }
    }

    /// Log it (inside the run's span, which names the partner): WARN when
    /// someone has to act, INFO otherwise. The name is escaped: an unsafe
    /// one may hold control characters.
    pub fn log(&self) {
        if self.action_needed {
            tracing::warn!(file = %self.name.escape_debug(), reason = self.reason.as_str(), file_id = self.file_id, detail = %self.detail, "file skipped");
        } else {
            tracing::info!(file = %self.name.escape_debug(), reason = self.reason.as_str(), file_id = self.file_id, seconds_left = self.seconds_left, detail = %self.detail, "file skipped");
        }
    }
}

/// The earlier `files` row a listed or downloaded file matches.
#[derive(Debug, Clone)]
pub struct Earlier {
    pub id: i64,
    pub outcome: String,
    pub reason: Option<String>,
    pub tidy: String,
}

impl Earlier {
    /// The skip for a file recognised as this earlier one.
    pub fn skip(&self, name: &str, how: &str) -> Skip {
        let id = self.id;
        let mut s = if self.outcome == "credited" {
            let mut detail = format!("already credited as file {id} ({how})");
            if self.tidy == "pending" {
                detail.push_str("; its tidy-up is still pending");
            }
            Skip::new(name, SkipReason::AlreadySeen, detail)
        } else {
            let why = self
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            Skip::new(
                name,
                SkipReason::RefusedContent,
                format!(
                    "same content as refused file {id}{why}: re-deliver it under another name or \
                     with corrected content (`milebatch retry --file {id}` will come with the \
                     money-operations issue)"
                ),
            )
        };
        s.file_id = Some(id);
        s
    }
}

/// What one listing gave.
#[derive(Debug, Default)]
pub struct Listing {
    /// Ready and new, in listing order.
    pub ready: Vec<RemoteFile>,
    /// `stable:` files too young to judge yet: [`settle`] watches them.
    pub watch: Vec<Watched>,
    /// Listed and not taken.
    pub skipped: Vec<Skip>,
    /// Strays seen for the first time (or changed since reported): the
    /// caller records them ([`remember_strays`]) unless it is a dry run.
    pub new_strays: Vec<RemoteFile>,
    /// Every name the listing gave (for forgetting strays that are gone).
    pub listed: Vec<String>,
}

/// A file `stable:` has to watch until `until`.
#[derive(Debug, Clone)]
pub struct Watched {
    pub file: RemoteFile,
    pub until: Instant,
}

/// Every step of pickup before any download: list, then sort each file into
/// ready, watched or skipped. `now` is the run's time; file ages are judged
/// against it.
pub fn survey(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &dyn Exec,
    partner: &str,
    now: DateTime<Utc>,
) -> Result<Listing, PipelineError> {
    survey_for(source, pickup, conn, partner, now, false)
}

/// [`survey`]; with `encrypted` (the partner has `[partner.pgp]`) a name
/// also matches `pattern` once its `.pgp`, `.gpg` or `.asc` ending is
/// removed: `*.csv` takes `orders.csv.pgp`.
pub fn survey_for(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &dyn Exec,
    partner: &str,
    now: DateTime<Utc>,
    encrypted: bool,
) -> Result<Listing, PipelineError> {
    let listing = list(source, pickup, partner)?;
    let started = Instant::now();
    let mut out = Listing {
        listed: listing.iter().map(|f| f.name.clone()).collect(),
        ..Listing::default()
    };
    for f in &listing {
        if !safe_name(&f.name) {
            out.skipped.push(Skip::new(
                &f.name,
                SkipReason::UnsafeName,
                "unsafe name (path separators, '..', control characters or over 255 bytes): \
                 never read; rename or remove it on the server"
                    .into(),
            ));
            continue;
        }
        if f.name.starts_with('.') {
            tracing::debug!(partner, file = %f.name, "hidden name: not a delivery");
            continue;
        }
        if pickup.ready == Ready::DoneFile && f.name.ends_with(".done") {
            continue;
        }
        let plain_name = super::pgp::strip_suffix(&f.name).filter(|_| encrypted);
        if !pickup.matches(&f.name) && !plain_name.is_some_and(|n| pickup.matches(n)) {
            out.skipped
                .push(stray(conn, pickup, partner, f, &mut out.new_strays)?);
            continue;
        }
        if let Some(e) =
            earlier_listing(conn, partner, f).map_err(|e| PipelineError::Db(e.into()))?
        {
            // Refused before: downloaded again and judged by content, so a
            // corrected file put back under the same name is processed.
            if e.outcome == "credited" {
                out.skipped
                    .push(e.skip(&f.name, "same name, size and modification time"));
                continue;
            }
        }
        if f.size > pickup.max_size {
            out.skipped.push(Skip::new(
                &f.name,
                SkipReason::TooLarge,
                format!(
                    "{} bytes, over max_size ({} bytes): raise `max_size` for this partner, \
                     or ask the partner to split the file",
                    f.size, pickup.max_size
                ),
            ));
            continue;
        }
        match &pickup.ready {
            Ready::Immediate => out.ready.push(f.clone()),
            Ready::DoneFile => {
                let marker = format!("{}.done", f.name);
                if listing.iter().any(|g| g.name == marker) {
                    out.ready.push(f.clone());
                } else {
                    out.skipped.push(Skip::new(
                        &f.name,
                        SkipReason::DoneFileMissing,
                        format!("not ready yet: waiting for its done-file {marker:?}"),
                    ));
                }
            }
            Ready::Stable(dur) => match stable_left(pickup, f, now, *dur) {
                None => out.ready.push(f.clone()),
                Some(left) => out.watch.push(Watched {
                    file: f.clone(),
                    until: started + left,
                }),
            },
        }
    }
    for s in &out.skipped {
        s.log();
    }
    Ok(out)
}

/// How much longer `f` must stay unchanged to count as stable, or `None`
/// when its listed mtime is already more than `dur` before `now`. Listing
/// mtimes are whole seconds: the change may have happened up to a second
/// after the one shown, so that second counts as still changing. Without a
/// trusted mtime (FTP) the whole `dur` is watched.
fn stable_left(
    pickup: &Pickup,
    f: &RemoteFile,
    now: DateTime<Utc>,
    dur: Duration,
) -> Option<Duration> {
    if dur.is_zero() {
        return None;
    }
    let Some(mtime) = f.mtime.filter(|_| pickup.trust_mtime) else {
        return Some(dur);
    };
    let ready_at_ms = (mtime + 1)
        .saturating_mul(1000)
        .saturating_add(dur.as_millis() as i64);
    let left_ms = ready_at_ms - now.timestamp_millis();
    // An mtime in the future (a fast server clock) is watched for `dur`.
    (left_ms > 0).then(|| Duration::from_millis(left_ms as u64).min(dur))
}

/// The skip for a name that does not match `pattern`: ignored when it
/// matches `ignore` or was reported before exactly as it is now; otherwise
/// a `pattern-mismatch` that needs action, and a new stray for the caller
/// to record.
fn stray(
    conn: &dyn Exec,
    pickup: &Pickup,
    partner: &str,
    f: &RemoteFile,
    new_strays: &mut Vec<RemoteFile>,
) -> Result<Skip, PipelineError> {
    if let Some(g) = pickup.ignored_by(&f.name) {
        return Ok(Skip::new(
            &f.name,
            SkipReason::Ignored,
            format!("matches `ignore` {:?}: not a delivery", g.as_str()),
        ));
    }
    let reported = crate::store::strays::reported_at(conn, partner, &f.name, f.size, f.mtime)
        .map_err(|e| PipelineError::Db(e.into()))?;
    Ok(match reported {
        Some(at) => Skip::new(
            &f.name,
            SkipReason::Ignored,
            format!(
                "does not match pattern {:?}; reported at {at} and ignored since, until it \
                 changes. Remove it from the server, or add it to `ignore` to stop seeing it",
                pickup.pattern.as_str()
            ),
        ),
        None => {
            new_strays.push(f.clone());
            Skip::new(
                &f.name,
                SkipReason::PatternMismatch,
                format!(
                    "{} (reported once: later runs list it as ignored until it changes; \
                     `ignore = [\"…\"]` silences such names for good)",
                    mismatch_detail(pickup, &f.name)
                ),
            )
        }
    })
}

/// Record the run's new strays (see `store::strays`) and forget those no
/// longer listed. A real run calls it; a dry run does not.
pub fn remember_strays(
    conn: &dyn Exec,
    partner: &str,
    listing: &Listing,
    now: DateTime<Utc>,
) -> Result<(), PipelineError> {
    use crate::store::strays;
    let db_err = |e: crate::store::StoreError| PipelineError::Db(e.into());
    // A read first: most runs have nothing to record or forget, and need
    // not take the database's write lock for it.
    let gone: Vec<String> = strays::names(conn, partner)
        .map_err(db_err)?
        .into_iter()
        .filter(|n| !listing.listed.contains(n))
        .collect();
    if gone.is_empty() && listing.new_strays.is_empty() {
        return Ok(());
    }
    let at = crate::db::now_text(now);
    crate::store::write(conn, |db| {
        for name in &gone {
            strays::forget(db, partner, name)?;
        }
        for f in &listing.new_strays {
            strays::record(db, partner, &f.name, f.size, f.mtime, &at)?;
        }
        Ok(())
    })
    .map_err(db_err)
}

fn mismatch_detail(pickup: &Pickup, name: &str) -> String {
    let mut d = format!(
        "name does not match pattern {:?}{}: fix `pattern` or ask the partner to rename it",
        pickup.pattern.as_str(),
        if pickup.pattern_case_sensitive {
            " (pattern_case = \"sensitive\")"
        } else {
            ""
        }
    );
    if name.ends_with(".done") && pickup.ready != Ready::DoneFile {
        d.push_str(" (a done-file marker? then set ready = \"done-file\")");
    }
    d
}

/// Wait until the watched files are old enough, list again, and take those
/// that did not change meanwhile. The rest are `still-changing` skips (the
/// next run looks again); on shutdown they are `not-started`.
pub fn settle(
    source: &mut dyn Source,
    pickup: &Pickup,
    partner: &str,
    watch: Vec<Watched>,
    now: DateTime<Utc>,
    shutdown: &AtomicBool,
) -> Result<(Vec<RemoteFile>, Vec<Skip>), PipelineError> {
    let Some(until) = watch.iter().map(|w| w.until).max() else {
        return Ok((vec![], vec![]));
    };
    let Ready::Stable(dur) = pickup.ready else {
        return Ok((watch.into_iter().map(|w| w.file).collect(), vec![]));
    };
    let clock = Instant::now();
    let left = |w: &Watched| {
        w.until
            .saturating_duration_since(clock)
            .as_secs_f64()
            .ceil() as u64
    };
    let names: Vec<String> = watch
        .iter()
        .map(|w| format!("{} ({} s left)", w.file.name, left(w)))
        .collect();
    tracing::info!(
        partner,
        files = %names.join(", "),
        wait_s = until.saturating_duration_since(clock).as_secs_f64().ceil() as u64,
        "waiting for files to be stable"
    );
    let started = Instant::now();
    if !sleep_until(until, shutdown) {
        let skipped: Vec<Skip> = watch
            .into_iter()
            .map(|w| {
                Skip::new(
                    &w.file.name,
                    SkipReason::NotStarted,
                    "shutdown requested while waiting for it to be stable".into(),
                )
            })
            .collect();
        skipped.iter().for_each(|s| s.log());
        return Ok((vec![], skipped));
    }
    let second = list(source, pickup, partner)?;
    let now2 = now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
    let mut ready = Vec::new();
    let mut skipped = Vec::new();
    for w in watch {
        match second.iter().find(|g| g.name == w.file.name) {
            Some(g) if *g == w.file => ready.push(w.file),
            Some(g) => {
                let left = stable_left(pickup, g, now2, dur).unwrap_or(dur);
                let secs = left.as_secs_f64().ceil() as u64;
                let mut s = Skip::new(
                    &g.name,
                    SkipReason::StillChanging,
                    format!(
                        "not ready yet: still changing (size {} -> {} bytes); ready once \
                         unchanged for {} s, about {secs} s from now",
                        w.file.size,
                        g.size,
                        dur.as_secs()
                    ),
                );
                s.seconds_left = Some(secs);
                skipped.push(s);
            }
            None => skipped.push(Skip::new(
                &w.file.name,
                SkipReason::StillChanging,
                "not ready yet: gone from the inbox while it was watched".into(),
            )),
        }
    }
    skipped.iter().for_each(|s| s.log());
    Ok((ready, skipped))
}

/// [`survey`] and [`settle`] in one: every file ready now, and every skip.
pub fn candidates(
    source: &mut dyn Source,
    pickup: &Pickup,
    conn: &dyn Exec,
    partner: &str,
    now: DateTime<Utc>,
    shutdown: &AtomicBool,
) -> Result<Listing, PipelineError> {
    let mut l = survey(source, pickup, conn, partner, now)?;
    let watch = std::mem::take(&mut l.watch);
    let (ready, skipped) = settle(source, pickup, partner, watch, now, shutdown)?;
    l.ready.extend(ready);
    l.skipped.extend(skipped);
    Ok(l)
}

/// The listing as the server gave it (names not yet checked).
fn list(
    source: &mut dyn Source,
    pickup: &Pickup,
    partner: &str,
) -> Result<Vec<RemoteFile>, PipelineError> {
    with_retries(pickup.retries, "listing", || source.list()).map_err(|e| PipelineError::Source {
        partner: partner.to_owned(),
        during: "listing the inbox",
        source: e,
    })
}

/// Sleep until `end`, waking early (and returning false) on shutdown.
fn sleep_until(end: Instant, shutdown: &AtomicBool) -> bool {
    while Instant::now() < end {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    !shutdown.load(Ordering::Relaxed)
}

fn earlier_row(r: Row) -> Result<Earlier, StoreError> {
    Ok(Earlier {
        id: r.int(0)?,
        outcome: r.text(1)?,
        reason: r.opt_text(2)?,
        tidy: r.text(3)?,
    })
}

/// The file recorded before with this exact listing entry (a credited one
/// first). Without an mtime, name and size are not enough to tell a
/// regenerated file from the old one: such files are downloaded and judged
/// by content ([`earlier_content`]).
fn earlier_listing(
    conn: &dyn Exec,
    partner: &str,
    f: &RemoteFile,
) -> Result<Option<Earlier>, StoreError> {
    let Some(mtime) = f.mtime else {
        return Ok(None);
    };
    conn.query_opt(
        "SELECT id, outcome, reason, tidy FROM files
         WHERE partner = ?1 AND name = ?2 AND size = ?3 AND mtime = ?4
         ORDER BY outcome = 'credited' DESC, id DESC LIMIT 1",
        crate::store_args![partner, &f.name, f.size as i64, mtime],
    )?
    .map(earlier_row)
    .transpose()
}

/// Download `f` and archive it under `archive_dir`, content-addressed.
pub fn fetch(
    source: &mut dyn Source,
    pickup: &Pickup,
    f: &RemoteFile,
    partner: &str,
    archive_dir: &Path,
) -> Result<Fetched, PipelineError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PipelineError::Io { path, source }
    };
    crate::db::create_private_dir(archive_dir).map_err(io(archive_dir))?;
    let tmp = archive_dir.join(format!(".{}.part", f.name));
    let result = with_retries(pickup.retries, "download", || {
        let r = source.fetch(f, &tmp);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        let size = std::fs::metadata(&tmp)
            .map_err(|e| SourceError::Permanent(format!("{}: {e}", tmp.display())))?
            .len();
        if size != f.size && f.size != 0 {
            let _ = std::fs::remove_file(&tmp);
            return Err(SourceError::Transient(format!(
                "{}: downloaded {size} bytes, listing said {}",
                f.name, f.size
            )));
        }
        Ok(size)
    });
    let size = result.map_err(|e| PipelineError::Source {
        partner: partner.to_owned(),
        during: "downloading",
        source: e,
    })?;
    let sha256 = hash_file(&tmp).map_err(io(&tmp))?;
    archive(&tmp, archive_dir, &f.name, size, f.mtime, sha256)
}

/// Put the complete, hashed copy at `tmp` (in `archive_dir`, or on the same
/// file system) into the archive: owner-only, synced, renamed to its
/// content-addressed name `<sha256 prefix>-<name>`. The one way bytes enter
/// the archive, whichever channel brought them. `name` must be a
/// [`safe_name`].
pub fn archive(
    tmp: &Path,
    archive_dir: &Path,
    name: &str,
    size: u64,
    mtime: Option<i64>,
    sha256: String,
) -> Result<Fetched, PipelineError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PipelineError::Io { path, source }
    };
    crate::db::create_private_dir(archive_dir).map_err(io(archive_dir))?;
    // Partner data is owner-only, whatever mode the copy came with.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(tmp))?;
    }
    let archive = archive_dir.join(format!("{}-{}", &sha256[..16], name));
    let file = std::fs::File::open(tmp).map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))?;
    std::fs::rename(tmp, &archive).map_err(io(&archive))?;
    if let Ok(dir) = std::fs::File::open(archive_dir) {
        let _ = dir.sync_all();
    }
    Ok(Fetched {
        name: name.to_owned(),
        size,
        mtime,
        sha256,
        archive,
    })
}

pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// `data_dir/archive/<partner>`.
pub fn archive_dir(data_dir: &Path, partner: &str) -> PathBuf {
    data_dir.join("archive").join(partner)
}

/// The file recorded before with the same name and content (a credited one
/// first): the same delivery seen again (e.g. an HTTP URL that still serves
/// yesterday's answer, or a refused file put back unchanged), not a new one,
/// so not a duplicate delivery either.
pub fn earlier_content(
    conn: &dyn Exec,
    partner: &str,
    f: &Fetched,
) -> Result<Option<Earlier>, StoreError> {
    conn.query_opt(
        "SELECT id, outcome, reason, tidy FROM files WHERE partner = ?1 AND name = ?2 AND sha256 = ?3
         ORDER BY outcome = 'credited' DESC, id DESC LIMIT 1",
        crate::store_args![partner, &f.name, &f.sha256],
    )?
    .map(earlier_row)
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::After;

    fn pickup(trust_mtime: bool) -> Pickup {
        Pickup {
            pattern: glob::Pattern::new("*.csv").unwrap(),
            pattern_case_sensitive: false,
            max_size: 1 << 30,
            trust_mtime,
            ready: Ready::Stable(Duration::from_secs(60)),
            after: After::Keep,
            move_failed: None,
            errors_dir: None,
            ignore: vec![],
            timeout: Duration::from_secs(5),
            retries: 0,
        }
    }

    fn file(mtime: Option<i64>) -> RemoteFile {
        RemoteFile {
            name: "a.csv".into(),
            size: 10,
            mtime,
        }
    }

    #[test]
    fn stable_judges_by_mtime_first() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let dur = Duration::from_secs(60);
        let p = pickup(true);
        // Changed more than 60 s ago (the shown second counted whole): ready.
        assert_eq!(stable_left(&p, &file(Some(1_000_000 - 61)), now, dur), None);
        // The second shown may hide a change up to its end: 1 s left.
        assert_eq!(
            stable_left(&p, &file(Some(1_000_000 - 60)), now, dur),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            stable_left(&p, &file(Some(1_000_000 - 10)), now, dur),
            Some(Duration::from_secs(51))
        );
        // From the future (a fast server clock), or no mtime: all of `dur`.
        assert_eq!(stable_left(&p, &file(Some(1_000_500)), now, dur), Some(dur));
        assert_eq!(stable_left(&p, &file(None), now, dur), Some(dur));
        // Untrusted listing times (FTP): always watched for `dur`.
        assert_eq!(
            stable_left(&pickup(false), &file(Some(0)), now, dur),
            Some(dur)
        );
        assert_eq!(stable_left(&p, &file(None), now, Duration::ZERO), None);
    }

    #[test]
    fn only_skips_a_human_must_act_on_fail_the_run() {
        use SkipReason::*;
        for r in [RefusedContent, PatternMismatch, TooLarge, UnsafeName] {
            assert!(r.action_needed(), "{r:?}");
        }
        for r in [AlreadySeen, DoneFileMissing, StillChanging, NotStarted] {
            assert!(!r.action_needed(), "{r:?}");
        }
        let json = serde_json::to_value(Skip::new("x", DoneFileMissing, "d".into())).unwrap();
        assert_eq!(json["reason"], DoneFileMissing.as_str());
    }
}
