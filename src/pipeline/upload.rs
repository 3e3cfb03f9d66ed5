//! Upload: a file handed over through the management site (flow ③) enters
//! the pipeline here instead of through a source.
//!
//! What must stay true:
//! - the bytes are streamed to a temp file under `data_dir/uploads/` as
//!   they arrive, hashed on the way ([`Receiving`]); they are never held
//!   whole in memory, and a temp file never outlives its upload (removed
//!   when dropped, whether the upload failed, was cut off or was too big);
//! - from the archive on, an upload is a pulled file: the same partner lock
//!   as the daemon and `once`, archived first ([`super::pickup::archive`]),
//!   the same credit stage and money rules (F001 by SHA-256 across every
//!   channel, the error ratio, one transaction), the same reports. Only the
//!   file row differs: `channel = 'upload'` (set in the credit's
//!   transaction) and nothing to tidy on the partner's server;
//! - a dry run ("validate only") credits nothing, records no file and
//!   writes its report under `reports/<partner>/dry-run/` only;
//! - every upload, whatever its outcome, writes one audit row (`upload`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Config, PartnerConfig};
use crate::db::{self, DbError};
use crate::source::safe_name;

use super::{pickup, Channel, FileReport, PipelineError, Single, Trigger};

/// Where uploads are received, under `data_dir`.
pub const UPLOADS_DIR: &str = "uploads";

/// The longest file name an upload may have, in bytes: the archive and the
/// report add a prefix to it, and a file name is at most 255 bytes.
pub const MAX_NAME_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("file name {0:?} cannot be used: it must be 1 to {MAX_NAME_BYTES} bytes without control characters, and not end in '/'")]
    BadName(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// An upload being received: a temp file under `data_dir/uploads/`, with
/// its SHA-256 and size kept as the bytes go in. Removed when dropped
/// unless [`Receiving::finish`]ed and then archived.
pub struct Receiving {
    out: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    size: u64,
    guard: TempGuard,
}

/// A received upload: complete, synced to disk, hashed.
#[derive(Debug)]
pub struct Received {
    pub size: u64,
    pub sha256: String,
    guard: TempGuard,
}

impl Received {
    pub fn path(&self) -> &Path {
        &self.guard.0
    }
}

/// Removes its file when dropped (after a rename into the archive there is
/// nothing left to remove).
#[derive(Debug)]
struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(path = %self.0.display(), "upload temp file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), error = %e, "upload temp file not removed")
            }
        }
    }
}

impl Receiving {
    /// A new, empty temp file (0600, in a 0700 folder) under `data_dir`.
    pub fn create(data_dir: &Path) -> std::io::Result<Receiving> {
        let dir = data_dir.join(UPLOADS_DIR);
        db::create_private_dir(&dir)?;
        let mut b = [0u8; 12];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let path = dir.join(format!(".upload-{name}.part"));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?
        };
        Ok(Receiving {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            size: 0,
            guard: TempGuard(path),
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hash.update(chunk);
        self.size += chunk.len() as u64;
        self.out.write_all(chunk)
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.guard.0
    }

    /// Flush and sync: the upload is complete.
    pub fn finish(self) -> std::io::Result<Received> {
        let Receiving {
            out,
            hash,
            size,
            guard,
        } = self;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Received {
            size,
            sha256: format!("{:x}", hash.finalize()),
            guard,
        })
    }
}

/// Remove temp files of uploads cut off by a crash (a live upload's file
/// is younger than `older_than`).
pub fn sweep_stale(data_dir: &Path, older_than: Duration) {
    let Ok(entries) = std::fs::read_dir(data_dir.join(UPLOADS_DIR)) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(".upload-")
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > older_than);
        if stale {
            let _ = std::fs::remove_file(e.path());
            tracing::info!(path = %e.path().display(), "stale upload temp file removed");
        }
    }
}

/// The name an upload is known by (the files row, the pages, the
/// exports): what the browser sent, after the last `\` (old browsers send
/// a whole Windows path), if it is usable. A `/` is kept: no browser
/// sends a directory with it, and on macOS it is part of a file's name,
/// so cutting there would show the partner a name it never gave
/// (`=cmd|' /C calc'!A0.csv` as `C calc'!A0.csv`). Such a name never
/// reaches a path as it is: see [`local_name`].
pub fn upload_name(sent: &str) -> Result<String, UploadError> {
    let name = sent.rsplit('\\').next().unwrap_or("");
    if safe_name(&local_name(name)) && !name.ends_with('/') && name.len() <= MAX_NAME_BYTES {
        Ok(name.to_owned())
    } else {
        Err(UploadError::BadName(sent.to_owned()))
    }
}

/// An [`upload_name`] as part of a local file name (the archive's): each
/// `/` as `_`, so the name can never name a folder.
pub fn local_name(name: &str) -> String {
    name.replace('/', "_")
}

/// One upload and who made it.
pub struct Upload<'a> {
    pub received: Received,
    /// As the browser sent it; checked by [`upload_name`].
    pub name: &'a str,
    /// "Validate only": nothing credited, nothing recorded but the audit row.
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// How long to wait for the partner's lock while a run holds it.
    pub lock_wait: Duration,
    /// For the audit row: `user:<email>`.
    pub actor: &'a str,
    pub client: Option<&'a str>,
}

/// Credit an uploaded file for `partner`, exactly as a pulled one: under
/// the partner's lock, archived first, then the credit stage (see the
/// module doc). Writes the audit row whatever happens.
pub fn credit_upload(
    config: &Config,
    partner: &PartnerConfig,
    up: Upload<'_>,
) -> Result<FileReport, UploadError> {
    let span = tracing::info_span!("upload", partner = %partner.id, file = %up.name.escape_debug(), bytes = up.received.size, dry_run = up.dry_run);
    let _enter = span.enter();
    let started = Instant::now();
    let result = credit_inner(config, partner, &up);
    let detail = match &result {
        Ok(fr) => {
            let c = &fr.counts;
            let what = match (&fr.id, up.dry_run) {
                (_, true) => "validate only (dry run)".to_owned(),
                (Some(id), false) => format!("file {id}"),
                (None, false) => "no file row".to_owned(),
            };
            format!(
                "{what} {:?}: {}{}, {} rows, {} credited, {} failed, {} miles",
                fr.name,
                fr.outcome,
                fr.file_code
                    .map(|c| format!(" {}", c.as_str()))
                    .unwrap_or_default(),
                c.rows,
                c.credited,
                c.failed,
                c.miles
            )
        }
        Err(e) => format!("{:?} not processed: {e}", up.name),
    };
    match &result {
        Ok(fr) => tracing::info!(
            outcome = %fr.outcome,
            file_id = fr.id,
            rows = fr.counts.rows,
            credited = fr.counts.credited,
            failed = fr.counts.failed,
            failed_by_code = %fr.counts.by_code_text(),
            miles = fr.counts.miles,
            reason = fr.reason.as_deref().unwrap_or(""),
            report = %fr.report_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            duration_ms = started.elapsed().as_millis() as u64,
            "upload done"
        ),
        Err(e) => tracing::warn!(error = %e, "upload not processed"),
    }
    // After the credit, in a statement of its own: a failure to audit is
    // logged and does not turn a committed credit into an error.
    let audited = db::open(&config.daemon.database).and_then(|c| {
        crate::audit::record(
            &c,
            &crate::audit::Entry {
                actor: up.actor,
                action: "upload",
                partner: Some(&partner.id),
                detail: &detail,
                client: up.client,
            },
        )
        .map_err(DbError::from)
    });
    if let Err(e) = audited {
        tracing::error!(error = %e, %detail, "upload not audited");
    }
    result
}

fn credit_inner(
    config: &Config,
    partner: &PartnerConfig,
    up: &Upload<'_>,
) -> Result<FileReport, UploadError> {
    let name = upload_name(up.name)?;
    let data_dir = &config.daemon.data_dir;
    let _lock = super::lock_partner_wait(data_dir, &partner.id, up.lock_wait, None)?;
    let archive_dir = pickup::archive_dir(data_dir, &partner.id);
    let received = pickup::archive(
        up.received.path(),
        &archive_dir,
        &local_name(&name),
        up.received.size,
        None,
        up.received.sha256.clone(),
    )?;
    // An encrypted upload is decrypted as a pulled file is (F008 if not).
    let (fetched, undecryptable) = super::pgp::open_delivery(
        &partner.id,
        partner.pgp.as_ref(),
        &mut None,
        received,
        &archive_dir,
        partner.source.pickup().max_size,
    )?;
    // From here on the file is known by the name it was sent with; the
    // report's name is made safe by `report::stem`.
    let fetched = super::Fetched { name, ..fetched };
    Ok(super::credit_single(
        config,
        partner,
        &fetched,
        undecryptable,
        &Single {
            trigger: Trigger::Upload,
            retry_of: None,
            channel: Channel::Upload,
            dry_run: up.dry_run,
            now: up.now,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{run_partner, RunOptions};
    use rusqlite::Connection;
    use std::sync::atomic::AtomicBool;

    struct Ws {
        dir: tempfile::TempDir,
        config: Config,
    }

    /// Partner `p` (local inbox `inbox/p`, `after = "move:done/"`), members
    /// M0..M9.
    fn ws() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let toml = "[daemon]\ndatabase = \"var/m.db\"\ndata_dir = \"var\"\n\n\
                    [[partner]]\nid = \"p\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
                    max_error_ratio = 0.5\n\
                    [partner.source]\nkind = \"local\"\ndir = \"inbox/p\"\nready = \"immediate\"\n\
                    after = \"move:done/\"\n";
        std::fs::create_dir_all(dir.path().join("inbox/p")).unwrap();
        let path = dir.path().join("partners.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::load(&path).unwrap();
        let members: String = (0..10)
            .map(|i| format!("M{i},m{i}@example.com,active\n"))
            .collect();
        let mut conn = db::open(&config.daemon.database).unwrap();
        crate::members::import_from(&mut conn, members.as_bytes(), "members.csv").unwrap();
        Ws { dir, config }
    }

    impl Ws {
        fn upload(
            &self,
            name: &str,
            bytes: &[u8],
            dry_run: bool,
        ) -> Result<FileReport, UploadError> {
            let mut r = Receiving::create(&self.config.daemon.data_dir).unwrap();
            // In two pieces, as a stream would bring it.
            let half = bytes.len() / 2;
            r.write(&bytes[..half]).unwrap();
            r.write(&bytes[half..]).unwrap();
            let received = r.finish().unwrap();
            assert_eq!(received.sha256, pickup::hash_file(received.path()).unwrap());
            credit_upload(
                &self.config,
                &self.config.partners[0],
                Upload {
                    received,
                    name,
                    dry_run,
                    now: Utc::now(),
                    lock_wait: Duration::from_millis(300),
                    actor: "user:staff@p.example",
                    client: Some("127.0.0.1"),
                },
            )
        }
        fn deliver(&self, name: &str, bytes: &[u8]) -> crate::pipeline::RunReport {
            std::fs::write(self.dir.path().join("inbox/p").join(name), bytes).unwrap();
            let stop = AtomicBool::new(false);
            run_partner(
                &self.config,
                &self.config.partners[0],
                &RunOptions {
                    dry_run: false,
                    trigger: Trigger::Manual,
                    now: Utc::now(),
                    shutdown: &stop,
                    lock_wait: std::time::Duration::ZERO,
                },
            )
        }
        fn db(&self) -> Connection {
            Connection::open(&self.config.daemon.database).unwrap()
        }
        fn int(&self, sql: &str) -> i64 {
            self.db().query_row(sql, [], |r| r.get(0)).unwrap()
        }
        fn uploads_left(&self) -> usize {
            std::fs::read_dir(self.config.daemon.data_dir.join(UPLOADS_DIR))
                .map(|d| d.count())
                .unwrap_or(0)
        }
    }

    const GOOD: &[u8] = b"M1,K1,10\nM2,K2,20\nnobody,K3,30\n";

    #[test]
    fn a_name_with_a_slash_is_kept_and_names_no_folder() {
        let w = ws();
        let fr = w.upload("=cmd|' /C calc'!A0.csv", GOOD, false).unwrap();
        assert_eq!(fr.name, "=cmd|' /C calc'!A0.csv");
        assert_eq!(
            w.int("SELECT count(*) FROM files WHERE name = '=cmd|'' /C calc''!A0.csv'"),
            1
        );
        // The archive and the report sit in their partner's folders, each
        // under one file name with the `/` as `_`.
        let report = fr.report_path.unwrap();
        assert!(report
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-=cmd|' _C calc'!A0.errors.csv"));
        assert_eq!(
            report.parent().unwrap().parent().unwrap(),
            w.config.daemon.data_dir.join("reports/p")
        );
        assert_eq!(
            fr.archive_path.parent().unwrap(),
            pickup::archive_dir(&w.config.daemon.data_dir, "p")
        );
    }

    #[test]
    fn an_upload_is_credited_like_a_pulled_file_with_channel_upload() {
        let w = ws();
        let fr = w.upload("x.csv", GOOD, false).unwrap();
        assert_eq!(fr.outcome, "credited");
        assert_eq!(
            (
                fr.counts.rows,
                fr.counts.credited,
                fr.counts.failed,
                fr.counts.miles
            ),
            (3, 2, 1, 30)
        );
        let id = fr.id.unwrap();
        let (channel, tidy, trigger): (String, String, String) = w
            .db()
            .query_row(
                "SELECT f.channel, f.tidy, r.trigger FROM files f JOIN runs r ON r.id = f.run_id WHERE f.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (channel.as_str(), tidy.as_str(), trigger.as_str()),
            ("upload", "done", "upload")
        );
        // Archived under its content address; the report is the pipeline's.
        assert!(fr.archive_path.exists());
        assert_eq!(std::fs::read(&fr.archive_path).unwrap(), GOOD);
        let report = fr.report_path.unwrap();
        assert_eq!(std::fs::read(&report).unwrap(), b"nobody,K3,30,E003\n");
        assert!(report
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("{id}-x")));
        assert_eq!(w.int("SELECT sum(miles) FROM ledger"), 30);
        assert_eq!(w.uploads_left(), 0, "no temp file left");
        assert_eq!(
            w.int("SELECT count(*) FROM audit WHERE action = 'upload' AND partner = 'p' AND client = '127.0.0.1'"),
            1
        );
        // A pull run afterwards has nothing to tidy for it (an upload has
        // no file on the partner's server).
        let run = w.deliver("other.csv", b"M3,K9,1\n");
        assert!(run.tidy_failed.is_empty() && run.is_clean(), "{run:?}");
    }

    #[test]
    fn pulled_then_uploaded_is_a_duplicate_and_uploaded_then_pulled_too() {
        let w = ws();
        let run = w.deliver("a.csv", GOOD);
        assert_eq!(run.files[0].outcome, "credited");
        let fr = w.upload("renamed.csv", GOOD, false).unwrap();
        assert_eq!(
            (fr.outcome.as_str(), fr.file_code.map(|c| c.as_str())),
            ("duplicate", Some("F001"))
        );
        assert_eq!(fr.counts.credited, 0);
        assert_eq!(
            std::fs::read(fr.report_path.unwrap()).unwrap(),
            b",,,F001\n"
        );
        // The same bytes uploaded again: a duplicate of the upload too.
        assert_eq!(w.upload("a.csv", GOOD, false).unwrap().outcome, "duplicate");

        let other: &[u8] = b"M4,U1,7\n";
        assert_eq!(w.upload("u.csv", other, false).unwrap().outcome, "credited");
        // Pulled under another name: refused F001, nothing credited twice.
        let run = w.deliver("pulled.csv", other);
        assert_eq!(run.files[0].outcome, "duplicate", "{run:?}");
        // Pulled under the same name: the same delivery already credited.
        let run = w.deliver("u.csv", other);
        assert!(run.files.is_empty(), "{run:?}");
        assert!(
            run.skipped
                .iter()
                .any(|s| s.name == "u.csv" && s.reason == pickup::SkipReason::AlreadySeen),
            "{run:?}"
        );
        assert_eq!(w.int("SELECT sum(miles) FROM ledger"), 37);
        assert_eq!(
            w.int("SELECT count(*) FROM files WHERE outcome = 'credited'"),
            2
        );
        assert_eq!(
            w.int("SELECT count(*) FROM audit WHERE action = 'upload'"),
            3
        );
    }

    #[test]
    fn too_many_bad_rows_refuse_the_upload_with_every_row_in_the_report() {
        let w = ws();
        let fr = w
            .upload("bad.csv", b"M1,K1,10\nx,K2,1\ny,K3,1\n", false)
            .unwrap();
        assert_eq!(
            (fr.outcome.as_str(), fr.file_code.map(|c| c.as_str())),
            ("refused", Some("F004"))
        );
        assert_eq!(w.int("SELECT count(*) FROM ledger"), 0);
        assert_eq!(
            std::fs::read(fr.report_path.unwrap()).unwrap(),
            b"M1,K1,10,F004\nx,K2,1,E003\ny,K3,1,E003\n"
        );
        assert_eq!(
            w.int("SELECT count(*) FROM files WHERE outcome = 'refused' AND channel = 'upload' AND tidy = 'done'"),
            1
        );
    }

    #[test]
    fn a_retried_upload_stays_an_upload() {
        let w = ws();
        let fr = w
            .upload("bad.csv", b"M1,K1,10\nx,K2,1\ny,K3,1\n", false)
            .unwrap();
        assert_eq!(fr.outcome, "refused");
        let fetched = crate::pipeline::Fetched {
            name: fr.name.clone(),
            size: 0,
            mtime: None,
            sha256: fr.sha256.clone(),
            archive: fr.archive_path.clone(),
        };
        let again = crate::pipeline::retry_archived(
            &w.config,
            &w.config.partners[0],
            &fetched,
            fr.id.unwrap(),
            Utc::now(),
        )
        .unwrap();
        let channel: String = w
            .db()
            .query_row(
                "SELECT channel FROM files WHERE id = ?1",
                [again.id.unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(channel, "upload");
    }

    #[test]
    fn validate_only_credits_and_records_nothing() {
        let w = ws();
        let fr = w.upload("x.csv", GOOD, true).unwrap();
        assert_eq!((fr.outcome.as_str(), fr.id), ("dry-run", None));
        assert_eq!(fr.counts.failed, 1);
        let report = fr.report_path.unwrap();
        assert!(
            report.starts_with(w.config.daemon.data_dir.join("reports/p/dry-run")),
            "{report:?}"
        );
        assert_eq!(std::fs::read(&report).unwrap(), b"nobody,K3,30,E003\n");
        assert_eq!(w.int("SELECT count(*) FROM ledger"), 0);
        assert_eq!(w.int("SELECT count(*) FROM files"), 0);
        assert_eq!(w.int("SELECT count(*) FROM runs"), 0);
        assert_eq!(
            w.int("SELECT count(*) FROM audit WHERE detail LIKE 'validate only%'"),
            1
        );
        // Validated, then sent for real: credited.
        assert_eq!(w.upload("x.csv", GOOD, false).unwrap().outcome, "credited");
    }

    #[test]
    fn a_busy_partner_or_a_bad_name_leaves_nothing_but_the_audit_row() {
        let w = ws();
        let held = super::super::lock_partner(&w.config.daemon.data_dir, "p").unwrap();
        let t = Instant::now();
        let e = w.upload("x.csv", GOOD, false).unwrap_err();
        assert!(
            matches!(e, UploadError::Pipeline(PipelineError::Busy { .. })),
            "{e}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "waited for the lock"
        );
        drop(held);
        let e = w.upload("../x\u{1}.csv", GOOD, false).unwrap_err();
        assert!(matches!(e, UploadError::BadName(_)), "{e}");
        assert_eq!(w.uploads_left(), 0);
        assert_eq!(w.int("SELECT count(*) FROM files"), 0);
        assert_eq!(
            w.int("SELECT count(*) FROM audit WHERE detail LIKE '%not processed%'"),
            2
        );
    }

    #[test]
    fn names_are_what_follows_a_windows_path_and_never_a_folder() {
        assert_eq!(upload_name("C:\\Users\\a\\交換.csv").unwrap(), "交換.csv");
        // A `/` is part of the name (macOS), kept; never part of a path.
        assert_eq!(upload_name("dir/x.csv").unwrap(), "dir/x.csv");
        assert_eq!(
            upload_name("=cmd|' /C calc'!A0.csv").unwrap(),
            "=cmd|' /C calc'!A0.csv"
        );
        assert_eq!(
            local_name("=cmd|' /C calc'!A0.csv"),
            "=cmd|' _C calc'!A0.csv"
        );
        for bad in [
            "",
            "a/",
            "..",
            "C:\\x\\..",
            "x\u{1}.csv",
            &"a".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(upload_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_dropped_upload_removes_its_temp_file() {
        let w = ws();
        let mut r = Receiving::create(&w.config.daemon.data_dir).unwrap();
        r.write(b"M1,K1,1\n").unwrap();
        let path = r.path().to_owned();
        assert!(path.exists());
        drop(r);
        assert!(!path.exists());
        let received = Receiving::create(&w.config.daemon.data_dir)
            .unwrap()
            .finish()
            .unwrap();
        let path = received.path().to_owned();
        drop(received);
        assert!(!path.exists());
        std::fs::write(
            w.config
                .daemon
                .data_dir
                .join(UPLOADS_DIR)
                .join(".upload-old.part"),
            b"x",
        )
        .unwrap();
        sweep_stale(&w.config.daemon.data_dir, Duration::ZERO);
        assert_eq!(w.uploads_left(), 0);
    }
}
