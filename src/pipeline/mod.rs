//! The exchange pipeline, one partner at a time, stage by stage:
//!
//! ```text
//! pickup  → list the inbox, keep ready & new files, download, archive bytes
//! decode  → each record in the partner's encoding (E009)
//! parse   → CSV records from raw bytes, streaming
//! validate→ E001–E007 against the member store
//! credit  → ledger + balances + file row in one transaction (E008, E010,
//!           repeats of earlier files); refusals F002–F007, F008 (pgp)
//! report  → the error CSV, failed records byte for byte + ",CODE"; for a
//!           refused file every row (own E code, else the F code)
//! tidy    → after the commit: upload the report, move/delete the inbox file
//! ```
//!
//! What must stay true: a row is credited exactly once. That rests on three
//! things only: the archive holds the exact bytes before any credit, one
//! transaction per file, and a file row that makes the same content
//! uncreditable a second time. Everything after the commit (tidy) may fail
//! and be retried without touching money.

pub mod batch;
pub mod credit;
mod credit_pg;
pub mod decode;
pub mod failed_rows;
pub mod parse;
pub mod pgp;
pub mod pickup;
pub mod report;
pub mod summary;
pub mod tidy;
pub mod upload;
pub mod validate;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::Exec;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, PartnerConfig};
use crate::db::{self, now_text, DbError};
use crate::source::SourceError;

use credit::{CreditError, CreditJob, Credited};
use report::ReportPlace;
use validate::{Code, FileCode};

/// A file downloaded and archived, ready to credit.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub name: String,
    pub size: u64,
    pub mtime: Option<i64>,
    pub sha256: String,
    /// The archived copy; every later stage reads this, never the source.
    pub archive: PathBuf,
}

/// Row counts of one file (or one run). Serialized with the names of the
/// `files` columns (`query::FileRow`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub rows: u64,
    pub credited: u64,
    pub failed: u64,
    pub miles: u64,
    #[serde(rename = "failed_by_code", serialize_with = "ser_by_code")]
    pub by_code: [u64; Code::ALL.len()],
    /// Credited rows that repeat (member, key, miles) of a row credited in
    /// an earlier file within `resend_window`; `None`: not checked
    /// (`resend_check = "off"`).
    pub repeats: Option<u64>,
}

fn ser_by_code<S: serde::Serializer>(v: &[u64; Code::ALL.len()], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    for c in Code::ALL {
        if v[c.index()] > 0 {
            m.serialize_entry(c.as_str(), &v[c.index()])?;
        }
    }
    m.end()
}

impl Counts {
    pub fn fail(&mut self, code: Code) {
        self.failed += 1;
        self.by_code[code.index()] += 1;
    }
    pub fn add(&mut self, o: &Counts) {
        self.rows += o.rows;
        self.credited += o.credited;
        self.failed += o.failed;
        self.miles += o.miles;
        for (mine, theirs) in self.by_code.iter_mut().zip(o.by_code) {
            *mine += theirs;
        }
        self.repeats = match (self.repeats, o.repeats) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
    }
    pub fn by_code_json(&self) -> String {
        self.by_code_value().to_string()
    }

    /// `{"E003": 2, …}` as a JSON value (the notification events).
    pub fn by_code_value(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .map(|v| v["failed_by_code"].clone())
            .unwrap_or_default()
    }
    /// `E003=2 E006=1`, for logs.
    pub fn by_code_text(&self) -> String {
        let parts: Vec<String> = Code::ALL
            .iter()
            .filter(|c| self.by_code[c.index()] > 0)
            .map(|c| format!("{}={}", c.as_str(), self.by_code[c.index()]))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("partner {partner}: another milebatch is already running this partner (lock {lock})")]
    Busy { partner: String, lock: PathBuf },
    #[error("partner {partner}: {during}: {source}")]
    Source {
        partner: String,
        during: &'static str,
        source: SourceError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("partner {partner}: {source}")]
    Pgp {
        partner: String,
        source: pgp::PgpError,
    },
}

impl From<crate::store::StoreError> for PipelineError {
    fn from(e: crate::store::StoreError) -> Self {
        PipelineError::Db(e.into())
    }
}

impl From<CreditError> for PipelineError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::Db(d) => PipelineError::Db(d),
            CreditError::Io { path, source } => PipelineError::Io { path, source },
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Manual,
    Schedule,
    CatchUp,
    /// `milebatch retry`: one archived file credited again.
    Retry,
    /// A file uploaded through the management site.
    Upload,
    /// A "run now" request from the management site, run by the daemon
    /// (`crate::run_requests`).
    RunNow,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Retry => "retry",
            Trigger::Upload => "upload",
            Trigger::RunNow => "run-now",
        }
    }
}

/// How a file came to us (`files.channel`; a ledger row's channel is its
/// file's, or `api` for an API exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// Pulled from the partner's server by a run.
    Pull,
    /// Uploaded through the management site.
    Upload,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Pull => "pull",
            Channel::Upload => "upload",
        }
    }

    fn parse(s: &str) -> Channel {
        if s == "upload" {
            Channel::Upload
        } else {
            Channel::Pull
        }
    }
}

pub struct RunOptions<'a> {
    pub dry_run: bool,
    pub trigger: Trigger,
    pub now: DateTime<Utc>,
    /// Checked between files: a file in progress always finishes its
    /// transaction.
    pub shutdown: &'a AtomicBool,
    /// How long to wait for the partner's lock while another process holds
    /// it (an upload on the site, a manual `once`) before the run gives up
    /// without starting. Zero: give up at once.
    pub lock_wait: std::time::Duration,
}

/// The outcome of one file, for the summary and `--json`. Field names are
/// those of `files --json` (`query::FileRow`).
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The `files` row; `None` in a dry run (nothing is recorded).
    pub id: Option<i64>,
    pub partner: String,
    pub name: String,
    pub sha256: String,
    /// credited | refused | duplicate | dry-run
    pub outcome: String,
    pub reason: Option<String>,
    /// Why the whole file was refused, for the partner: F001–F008.
    pub file_code: Option<FileCode>,
    /// Credited, but worth a look (`resend_check = "warn"`).
    pub warning: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    pub report_path: Option<PathBuf>,
    pub archive_path: PathBuf,
}

/// The outcome of one partner run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub partner: String,
    pub run_id: Option<i64>,
    /// failed | refused | tidy-failed | skipped | ok | missed | no-file
    /// (the first that applies; see [`RunReport::outcome_name`]).
    pub outcome: String,
    pub files: Vec<FileReport>,
    /// Files the run listed and did not take, each with its reason.
    pub skipped: Vec<pickup::Skip>,
    /// Tidy-ups (report upload, move) that failed after the credit: the
    /// credit stands, the run fails until a later tidy-up succeeds.
    pub tidy_failed: Vec<tidy::TidyFailure>,
    #[serde(flatten)]
    pub counts: Counts,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl RunReport {
    /// Whether everything found was handled (failed rows do not count): no
    /// error, no refused file, no failed tidy-up, no skip that needs a human.
    /// `once` exits 0 exactly then, and only then does a run count as a
    /// success for catch-up and `consecutive_failures`.
    pub fn is_clean(&self) -> bool {
        self.error.is_none()
            && self
                .files
                .iter()
                .all(|f| f.outcome == "credited" || f.outcome == "dry-run")
            && self.tidy_failed.is_empty()
            && !self.skipped.iter().any(|s| s.action_needed)
    }

    /// The run's outcome: the first of these that applies.
    /// `missed` only for a scheduled run of an `expect_file` partner that
    /// found nothing new at all (files already credited do not count).
    fn outcome_name(&self, expect_file: bool, trigger: Trigger) -> &'static str {
        // Ignored names are not deliveries: a run that found only them
        // found no file (and may have `missed` one).
        let only_seen = self.skipped.iter().all(|s| {
            matches!(
                s.reason,
                pickup::SkipReason::AlreadySeen | pickup::SkipReason::Ignored
            )
        });
        let not_ignored = self
            .skipped
            .iter()
            .any(|s| s.reason != pickup::SkipReason::Ignored);
        if self.error.is_some() {
            "failed"
        } else if !self
            .files
            .iter()
            .all(|f| f.outcome == "credited" || f.outcome == "dry-run")
        {
            "refused"
        } else if !self.tidy_failed.is_empty() {
            "tidy-failed"
        } else if self.skipped.iter().any(|s| s.action_needed) {
            "skipped"
        } else if !self.files.is_empty() {
            "ok"
        } else if expect_file && !matches!(trigger, Trigger::Manual | Trigger::RunNow) && only_seen
        {
            "missed"
        } else if not_ignored {
            "skipped"
        } else {
            "no-file"
        }
    }

    /// `pattern-mismatch=2 still-changing=1`, for logs.
    pub fn skipped_text(&self) -> String {
        let by = self.skipped_by_reason();
        if by.is_empty() {
            return "none".into();
        }
        by.iter()
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn skipped_by_reason(&self) -> std::collections::BTreeMap<pickup::SkipReason, u64> {
        let mut by = std::collections::BTreeMap::new();
        for s in &self.skipped {
            *by.entry(s.reason).or_insert(0) += 1;
        }
        by
    }
}

/// Whether `expect_file` makes a run at `now` that finds nothing a missed
/// delivery: `true` means on business days only (the daemon's calendar).
fn file_expected(config: &Config, partner: &PartnerConfig, now: DateTime<Utc>) -> bool {
    use crate::config::ExpectFile;
    match partner.expect_file {
        ExpectFile::No => false,
        ExpectFile::EveryRun => true,
        ExpectFile::BusinessDays => {
            let day = now.with_timezone(&config.daemon.timezone).date_naive();
            let off = config.daemon.calendar.day_off(day);
            if let Some(off) = &off {
                tracing::debug!(%day, why = %off, "a closed day: no file is expected");
            }
            off.is_none()
        }
    }
}

/// Run one partner now: every new file in its inbox, one after the other.
pub fn run_partner(config: &Config, partner: &PartnerConfig, opts: &RunOptions<'_>) -> RunReport {
    let started = std::time::Instant::now();
    let span = tracing::info_span!("run", partner = %partner.id, trigger = opts.trigger.as_str(), dry_run = opts.dry_run);
    let _enter = span.enter();
    let mut report = RunReport {
        partner: partner.id.clone(),
        run_id: None,
        outcome: "ok".into(),
        files: vec![],
        skipped: vec![],
        tidy_failed: vec![],
        counts: Counts::default(),
        error: None,
        duration_ms: 0,
    };
    if let Err(e) = run_inner(config, partner, opts, &mut report) {
        tracing::error!(error = %e, "run failed");
        report.error = Some(e.to_string());
    }
    report.outcome = report
        .outcome_name(file_expected(config, partner, opts.now), opts.trigger)
        .into();
    if report.outcome == "missed" {
        tracing::warn!("no new file: missed delivery (expect_file = true)");
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(run_id) = report.run_id {
        if let Err(e) = finish_run(config, &report, run_id, opts) {
            tracing::error!(error = %e, "could not record the run's end");
        }
    }
    let c = &report.counts;
    let paths: Vec<String> = report
        .files
        .iter()
        .filter_map(|f| f.report_path.as_ref().map(|p| p.display().to_string()))
        .collect();
    tracing::info!(
        outcome = %report.outcome,
        files = report.files.len(),
        rows = c.rows,
        credited = c.credited,
        failed = c.failed,
        failed_by_code = %c.by_code_text(),
        repeats = %c.repeats.map_or("not checked".to_owned(), |r| r.to_string()),
        miles = c.miles,
        skipped = report.skipped.len(),
        skipped_by_reason = %report.skipped_text(),
        tidy_failed = report.tidy_failed.len(),
        duration_ms = report.duration_ms,
        reports = %paths.join(" "),
        "run summary"
    );
    report
}

/// Tidy up every file of `partner` that still owes one (earlier runs'
/// owed tidy-ups, or the file just done), recording each failure on its
/// file and in the run report. A file whose tidy-up already failed in this
/// run is not tried again in it. A dry run tidies nothing.
fn tidy_owed(
    source: &mut dyn crate::source::Source,
    pickup_cfg: &crate::source::Pickup,
    back: tidy::WriteBack<'_>,
    conn: &dyn Exec,
    partner: &str,
    opts: &RunOptions<'_>,
    report: &mut RunReport,
) -> Result<(), PipelineError> {
    if opts.dry_run {
        return Ok(());
    }
    for item in tidy::pending(conn, partner).map_err(DbError::from)? {
        if report.tidy_failed.iter().any(|f| f.file_id == item.file_id) {
            continue;
        }
        if let Err(e) = tidy::tidy_file(source, pickup_cfg, conn, &item, back) {
            tracing::warn!(file = %item.name, file_id = item.file_id, error = %e, "tidy-up failed; the file is credited and will not be credited again; the run fails until a later tidy-up succeeds");
            let failure = tidy::record_failure(conn, &item, &e, opts.now).map_err(DbError::from)?;
            report.tidy_failed.push(failure);
        }
    }
    Ok(())
}

fn run_inner(
    config: &Config,
    partner: &PartnerConfig,
    opts: &RunOptions<'_>,
    report: &mut RunReport,
) -> Result<(), PipelineError> {
    let data_dir = &config.daemon.data_dir;
    let _lock = lock_partner_wait(data_dir, &partner.id, opts.lock_wait, Some(opts.shutdown))?;
    let mut conn = crate::store::open_writer(&config.daemon.store)?;
    if !opts.dry_run {
        report.run_id = Some(start_run(&conn, &partner.id, opts.trigger, opts.now)?);
    }
    let pickup_cfg = partner.source.pickup();
    let today = opts.now.with_timezone(&config.daemon.timezone).date_naive();
    let mut source = crate::source::retry::with_retries(pickup_cfg.retries, "connecting", || {
        partner.source.build(today, partner.encoding)
    })
    .map_err(|e| PipelineError::Source {
        partner: partner.id.clone(),
        during: "connecting",
        source: e,
    })?;
    if matches!(&partner.source, crate::source::SourceConfig::Ftp(f) if !f.tls) {
        tracing::warn!(source = %source.describe(), "plain FTP: the password and the files cross the network unencrypted");
    }

    let summary_opts = partner.summary.then_some(summary::SummaryOpts {
        data_dir,
        tz: config.daemon.timezone,
        encoding: partner.encoding,
    });
    // A report key that cannot be read fails the run before anything is
    // credited: no report would reach the partner.
    let pgp_error = |source| PipelineError::Pgp {
        partner: partner.id.clone(),
        source,
    };
    let sealer = match &partner.pgp {
        Some(g) => pgp::Sealer::load(g).map_err(pgp_error)?,
        None => None,
    };
    let back = tidy::WriteBack {
        summary: summary_opts.as_ref(),
        sealer: sealer.as_ref(),
    };
    let mut keys = None;
    // Tidy-ups owed by earlier runs come first: they never touch money.
    tidy_owed(
        source.as_mut(),
        pickup_cfg,
        back,
        &conn,
        &partner.id,
        opts,
        report,
    )?;

    let mut listing = pickup::survey_for(
        source.as_mut(),
        pickup_cfg,
        &conn,
        &partner.id,
        opts.now,
        partner.pgp.is_some(),
    )?;
    if !opts.dry_run {
        pickup::remember_strays(&conn, &partner.id, &listing, opts.now)?;
    }
    report.skipped.append(&mut listing.skipped);
    let archive_dir = pickup::archive_dir(data_dir, &partner.id);
    // Files ready now go first; `stable:` files too young to judge are
    // watched afterwards, so an old file never waits for a young one.
    let mut batch = std::mem::take(&mut listing.ready);
    let mut watch = std::mem::take(&mut listing.watch);
    loop {
        for (i, f) in batch.iter().enumerate() {
            if opts.shutdown.load(Ordering::Relaxed) {
                tracing::info!("shutdown requested: not starting another file");
                for f in batch[i..].iter().chain(watch.iter().map(|w| &w.file)) {
                    let s = pickup::Skip::new(
                        &f.name,
                        pickup::SkipReason::NotStarted,
                        "shutdown requested before this file was started".into(),
                    );
                    s.log();
                    report.skipped.push(s);
                }
                return Ok(());
            }
            let fspan = tracing::info_span!("file", file = %f.name, bytes = f.size);
            let _fenter = fspan.enter();
            let received =
                pickup::fetch(source.as_mut(), pickup_cfg, f, &partner.id, &archive_dir)?;
            let (fetched, undecryptable) = pgp::open_delivery(
                &partner.id,
                partner.pgp.as_ref(),
                &mut keys,
                received,
                &archive_dir,
                pickup_cfg.max_size,
            )?;
            if let Some(e) =
                pickup::earlier_content(&conn, &partner.id, &fetched).map_err(DbError::from)?
            {
                let s = e.skip(&fetched.name, "same name and content");
                s.log();
                report.skipped.push(s);
                continue;
            }
            // One report per delivery: received today (in the daemon's zone),
            // named by file id.
            let reports = ReportPlace::new(
                data_dir,
                &partner.id,
                today,
                &fetched.name,
                &fetched.sha256,
                opts.dry_run,
            );
            let job = CreditJob {
                partner,
                file: &fetched,
                run_id: report.run_id,
                reports,
                now: opts.now,
                dry_run: opts.dry_run,
                retry_of: None,
                channel: Channel::Pull,
            };
            let outcome = match undecryptable {
                Some(reason) => job.refused_unread(FileCode::F008, reason)?,
                None => credit::credit_file(&mut conn, &job)?,
            };
            let file_report = record(&mut conn, &job, outcome, config.daemon.timezone)?;
            tracing::info!(
                outcome = %file_report.outcome,
                file_id = file_report.id,
                rows = file_report.counts.rows,
                credited = file_report.counts.credited,
                failed = file_report.counts.failed,
                repeats = file_report.counts.repeats,
                miles = file_report.counts.miles,
                reason = file_report.reason.as_deref().unwrap_or(""),
                report = %file_report.report_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "file done"
            );
            report.counts.add(&file_report.counts);
            report.files.push(file_report);
            tidy_owed(
                source.as_mut(),
                pickup_cfg,
                back,
                &conn,
                &partner.id,
                opts,
                report,
            )?;
        }
        if watch.is_empty() {
            return Ok(());
        }
        let (ready, mut skipped) = pickup::settle(
            source.as_mut(),
            pickup_cfg,
            &partner.id,
            std::mem::take(&mut watch),
            opts.now,
            opts.shutdown,
        )?;
        report.skipped.append(&mut skipped);
        batch = ready;
    }
}

/// `milebatch retry`: credit an archived file again, through the same
/// credit stage as a run, in a new transaction and a new `files` row linked
/// to the old one (`retry_of`), under the partner's lock and a run of its
/// own (trigger `retry`). Nothing is fetched, moved or uploaded: the new
/// row's tidy-up is `done` from the start, and its error report stays local.
/// The caller decides whether the old file may be retried
/// (`money::retry`).
pub fn retry_archived(
    config: &Config,
    partner: &PartnerConfig,
    fetched: &Fetched,
    retry_of: i64,
    now: DateTime<Utc>,
) -> Result<FileReport, PipelineError> {
    let _lock = lock_partner(&config.daemon.data_dir, &partner.id)?;
    // A retried upload is still an upload (statements count by channel).
    let row = crate::store::open_writer(&config.daemon.store)?
        .query_opt(
            "SELECT channel, file_code FROM files WHERE id = ?1",
            crate::store_args![retry_of],
        )
        .map_err(DbError::from)?
        .ok_or_else(|| DbError::Sql(rusqlite::Error::QueryReturnedNoRows))?;
    let (channel, file_code) = (
        row.text(0).map_err(DbError::from)?,
        row.opt_text(1).map_err(DbError::from)?,
    );
    // Only a file refused F008 has its bytes archived as received, still
    // encrypted; every other archived file is the plaintext already. It is
    // decrypted again with today's keys (the fix for a wrong key on our side).
    let (fetched, undecryptable) = if file_code.as_deref() == Some("F008") {
        let dir = fetched
            .archive
            .parent()
            .unwrap_or(std::path::Path::new("."));
        pgp::open_delivery(
            &partner.id,
            partner.pgp.as_ref(),
            &mut None,
            fetched.clone(),
            dir,
            partner.source.pickup().max_size,
        )?
    } else {
        (fetched.clone(), None)
    };
    credit_single(
        config,
        partner,
        &fetched,
        undecryptable,
        &Single {
            trigger: Trigger::Retry,
            retry_of: Some(retry_of),
            channel: Channel::parse(&channel),
            dry_run: false,
            now,
        },
    )
}

/// How [`credit_single`] credits its one file.
struct Single {
    trigger: Trigger,
    retry_of: Option<i64>,
    channel: Channel,
    dry_run: bool,
    now: DateTime<Utc>,
}

/// One archived file through the same credit stage and [`record`] as a
/// run's files, outside a run of the inbox (a retry, an upload). The
/// caller holds the partner's lock. Unless a dry run, the file gets a run
/// row of its own (`s.trigger`) that says how it went; partner_state
/// (catch-up, consecutive failures) is about scheduled deliveries and is
/// left alone.
fn credit_single(
    config: &Config,
    partner: &PartnerConfig,
    fetched: &Fetched,
    undecryptable: Option<String>,
    s: &Single,
) -> Result<FileReport, PipelineError> {
    let mut conn = crate::store::open_writer(&config.daemon.store)?;
    let run_id = if s.dry_run {
        None
    } else {
        Some(start_run(&conn, &partner.id, s.trigger, s.now)?)
    };
    let today = s.now.with_timezone(&config.daemon.timezone).date_naive();
    let job = CreditJob {
        partner,
        file: fetched,
        run_id,
        reports: ReportPlace::new(
            &config.daemon.data_dir,
            &partner.id,
            today,
            &fetched.name,
            &fetched.sha256,
            s.dry_run,
        ),
        now: s.now,
        dry_run: s.dry_run,
        retry_of: s.retry_of,
        channel: s.channel,
    };
    let result = match undecryptable {
        Some(reason) => job.refused_unread(FileCode::F008, reason),
        None => credit::credit_file(&mut conn, &job),
    }
    .map_err(PipelineError::from)
    .and_then(|outcome| record(&mut conn, &job, outcome, config.daemon.timezone));
    // A retry's or an upload's summary, like its error report, stays local. The credit
    // has committed: a summary that cannot be written is logged, not an Err.
    if let (true, Ok(FileReport { id: Some(id), .. })) = (partner.summary, &result) {
        let written = summary::load(&conn, *id)
            .map_err(|e| e.to_string())
            .and_then(|facts| {
                summary::write(
                    &config.daemon.data_dir,
                    config.daemon.timezone,
                    partner.encoding,
                    &facts,
                )
                .map_err(|e| e.to_string())
            });
        match written {
            Ok((path, _)) => {
                tracing::info!(file_id = id, summary = %path.display(), "summary written")
            }
            Err(error) => {
                tracing::error!(file_id = id, %error, "the summary could not be written")
            }
        }
    }
    let Some(run_id) = run_id else {
        return result;
    };
    // The run row says how it went; partner_state (catch-up, failures) is
    // about deliveries and is left alone.
    let (outcome, error, c) = match &result {
        Ok(fr) if fr.outcome == "credited" => ("ok", None, fr.counts),
        Ok(fr) => ("refused", None, fr.counts),
        Err(e) => ("failed", Some(e.to_string()), Counts::default()),
    };
    conn.execute(
        "UPDATE runs SET finished_at = ?2, outcome = ?3, files = 1, rows = ?4, credited = ?5, failed = ?6,
                         miles = ?7, error = ?8
         WHERE id = ?1",
        crate::store_args![
            run_id,
            &now_text(Utc::now()),
            outcome,
            c.rows as i64,
            c.credited as i64,
            c.failed as i64,
            c.miles as i64,
            error.as_deref()
        ],
    )
    .map_err(DbError::from)?;
    result
}

/// A new `runs` row for `partner`; its id.
fn start_run(
    conn: &dyn crate::store::Exec,
    partner: &str,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    Ok(conn.insert_id(
        "INSERT INTO runs(partner, trigger, dry_run, started_at) VALUES (?1, ?2, 0, ?3)",
        crate::store_args![partner, trigger.as_str(), &now_text(now)],
    )?)
}

/// Record a refused or duplicate file (credited files recorded themselves in
/// their transaction) with its report, and describe the outcome. Times in
/// a reason are for people, in `tz` (the site and the summary show it).
fn record(
    conn: &mut crate::store::Conn,
    job: &CreditJob<'_>,
    outcome: Credited,
    tz: chrono_tz::Tz,
) -> Result<FileReport, PipelineError> {
    let f = job.file;
    let mut fr = FileReport {
        id: None,
        partner: job.partner.id.clone(),
        name: f.name.clone(),
        sha256: f.sha256.clone(),
        outcome: String::new(),
        reason: None,
        file_code: None,
        warning: None,
        counts: Counts::default(),
        report_path: None,
        archive_path: f.archive.clone(),
    };
    let staged = match outcome {
        Credited::Done {
            file_id,
            counts,
            report,
            warning,
        } => {
            fr.outcome = if job.dry_run { "dry-run" } else { "credited" }.into();
            fr.id = (!job.dry_run).then_some(file_id);
            fr.counts = counts;
            fr.report_path = report;
            if let Some(w) = &warning {
                tracing::warn!(warning = %w, "credited, but it looks like a re-send (resend_check = \"warn\")");
            }
            fr.warning = warning;
            return Ok(fr);
        }
        Credited::Refused {
            code,
            counts,
            reason,
            report,
        } => {
            tracing::warn!(%reason, code = code.as_str(), "file refused: nothing credited");
            fr.outcome = "refused".into();
            fr.reason = Some(reason);
            fr.file_code = Some(code);
            fr.counts = counts;
            report
        }
        Credited::Duplicate {
            first_id,
            first_name,
            first_at,
            reversed_file,
            rows,
        } => {
            let mut reason = format!(
                "duplicate delivery: the same content was credited as file {first_id} ({first_name:?}) at {}",
                crate::timefmt::stored_for_people(&first_at, tz)
            );
            if let Some(id) = reversed_file {
                reason.push_str(&format!(
                    " and then reversed; a delivery never credits it again \
                     (to credit these bytes again: `milebatch retry --file {id}`)"
                ));
            }
            tracing::warn!(%reason, code = "F001", "file refused: nothing credited");
            fr.outcome = "duplicate".into();
            fr.reason = Some(reason);
            fr.file_code = Some(FileCode::F001);
            // What it held (the credited file's rows), so the partner sees
            // the file it sent, not an empty one; none of it is credited.
            fr.counts.rows = rows;
            job.duplicate_report()?
        }
    };
    // A refused file credits nothing.
    fr.counts.credited = 0;
    fr.counts.miles = 0;
    if job.dry_run {
        fr.report_path = Some(staged);
        return Ok(fr);
    }
    // The row and the report's final name (it holds the row's id) go in
    // together: a crash leaves either neither (the rerun judges the file
    // again) or both.
    let c = &fr.counts;
    let path = crate::store::write(&*conn, |tx| {
        let id = tx.insert_id(
            "INSERT INTO files(partner, run_id, name, size, mtime, sha256, outcome, reason, rows, credited,
                               failed, failed_by_code, miles, archive_path, started_at, finished_at,
                               repeats, file_code, retry_of, tidy, channel)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?11, 0, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19)",
            crate::store_args![
                &job.partner.id,
                job.run_id,
                &f.name,
                f.size as i64,
                f.mtime,
                &f.sha256,
                &fr.outcome,
                fr.reason.as_deref(),
                c.rows as i64,
                c.failed as i64,
                &c.by_code_json(),
                &f.archive.display().to_string(),
                &now_text(job.now),
                &now_text(Utc::now()),
                c.repeats.map(|r| r as i64),
                fr.file_code.map(FileCode::as_str),
                job.retry_of,
                job.tidy_state(),
                job.channel.as_str(),
            ],
        )?;
        let path = job.reports.path(id);
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| PipelineError::Io { path, source }
        };
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        tx.execute(
            "UPDATE files SET report_path = ?2 WHERE id = ?1",
            crate::store_args![id, &path.display().to_string()],
        )?;
        crate::notify::file_refused(
            tx,
            &job.partner.id,
            // `c` credits nothing: zeroed above.
            &job.facts(id, c, fr.file_code),
            fr.reason.as_deref().unwrap_or_default(),
            job.now,
        )?;
        Ok::<_, PipelineError>((id, path))
    })?;
    let (id, path) = path;
    fr.id = Some(id);
    fr.report_path = Some(path);
    Ok(fr)
}

fn finish_run(
    config: &Config,
    r: &RunReport,
    run_id: i64,
    opts: &RunOptions<'_>,
) -> Result<(), DbError> {
    /// At most this many skips are kept per run (the counts are complete).
    const KEEP_SKIPS: usize = 100;
    let conn = crate::store::open_writer(&config.daemon.store)?;
    // The run's row, the partner's state and a missed-delivery event
    // commit together.
    crate::store::write(&conn, |conn| {
        let now = now_text(Utc::now());
        let by_reason: serde_json::Map<String, serde_json::Value> = r
            .skipped_by_reason()
            .into_iter()
            .map(|(k, n)| (k.as_str().to_owned(), n.into()))
            .collect();
        let skips = serde_json::to_string(&r.skipped[..r.skipped.len().min(KEEP_SKIPS)])
            .unwrap_or_else(|_| "[]".into());
        conn.execute(
        "UPDATE runs SET finished_at = ?2, outcome = ?3, files = ?4, rows = ?5, credited = ?6, failed = ?7,
                         miles = ?8, error = ?9, skipped = ?10, skipped_by_reason = ?11, skips = ?12
         WHERE id = ?1",
        crate::store_args![
            run_id,
            &now,
            r.outcome.as_str(),
            r.files.len() as i64,
            r.counts.rows as i64,
            r.counts.credited as i64,
            r.counts.failed as i64,
            r.counts.miles as i64,
            r.error.as_deref(),
            r.skipped.len() as i64,
            &serde_json::Value::Object(by_reason).to_string(),
            &skips,
        ],
    )?;
        // A missed delivery is the partner's failure, not ours: the run itself
        // completed, so it does not count towards consecutive failures (status
        // shows it as `last_missed`), and a restart does not catch it up again.
        // Not-ready and already-seen skips are clean too; a refused file, a
        // failed tidy-up or a skip that needs a human is not.
        let ok = r.is_clean();
        let last_error = r
            .error
            .clone()
            .or_else(|| {
                r.files
                    .iter()
                    .find_map(|f| f.reason.clone().map(|why| format!("{}: {why}", f.name)))
            })
            .or_else(|| {
                r.tidy_failed
                    .first()
                    .map(|t| format!("file {} {}: {}", t.file_id, t.name, t.error))
            })
            .or_else(|| {
                r.skipped
                    .iter()
                    .find(|s| s.action_needed)
                    .map(|s| format!("{}: {}: {}", s.name, s.reason.as_str(), s.detail))
            });
        conn.execute(
        "INSERT INTO partner_state(partner, last_success, last_attempt, consecutive_failures, last_error,
                                   last_error_at, failing_since)
         VALUES (?1, CASE WHEN ?2 THEN ?3 END, ?3, CASE WHEN ?2 THEN 0 ELSE 1 END, ?4,
                 CASE WHEN ?2 THEN NULL ELSE ?3 END, CASE WHEN ?2 THEN NULL ELSE ?3 END)
         ON CONFLICT(partner) DO UPDATE SET
            last_success = CASE WHEN ?2 THEN ?3 ELSE partner_state.last_success END,
            last_attempt = ?3,
            consecutive_failures = CASE WHEN ?2 THEN 0 ELSE partner_state.consecutive_failures + 1 END,
            last_error = CASE WHEN ?2 THEN partner_state.last_error ELSE ?4 END,
            last_error_at = CASE WHEN ?2 THEN partner_state.last_error_at ELSE ?3 END,
            failing_since = CASE WHEN ?2 THEN NULL ELSE COALESCE(partner_state.failing_since, ?3) END",
        crate::store_args![&r.partner, i64::from(ok), &now_text(opts.now), last_error.as_deref()],
    )?;
        if r.outcome == "missed" {
            crate::notify::delivery_missed(
                conn,
                &r.partner,
                run_id,
                &now_text(opts.now),
                Utc::now(),
            )?;
        }
        Ok::<_, DbError>(())
    })
}

/// One run per partner at a time, across processes: the daemon and a manual
/// `once` never work the same inbox together.
fn lock_partner(data_dir: &std::path::Path, partner: &str) -> Result<File, PipelineError> {
    let dir = data_dir.join("locks");
    db::create_private_dir(&dir).map_err(|source| PipelineError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{partner}.lock"));
    let f =
        crate::pipeline::report::private_file_keep(&path).map_err(|source| PipelineError::Io {
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(PipelineError::Busy {
            partner: partner.to_owned(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(PipelineError::Io { path, source }),
    }
}

/// [`lock_partner`], waiting up to `wait` while another run or upload
/// holds it, rather than failing at once (an upload waits for the run in
/// progress; a scheduled run for an upload). Gives up early once `stop`
/// is set.
fn lock_partner_wait(
    data_dir: &std::path::Path,
    partner: &str,
    wait: std::time::Duration,
    stop: Option<&AtomicBool>,
) -> Result<File, PipelineError> {
    let end = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match lock_partner(data_dir, partner) {
            Err(PipelineError::Busy { .. })
                if std::time::Instant::now() < end
                    && !stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) =>
            {
                if !said {
                    tracing::info!(
                        wait_s = wait.as_secs(),
                        "the partner's lock is held (an upload or another milebatch run): waiting for it"
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pickup::{Skip, SkipReason};

    fn report() -> RunReport {
        RunReport {
            partner: "p".into(),
            run_id: None,
            outcome: String::new(),
            files: vec![],
            skipped: vec![],
            tidy_failed: vec![],
            counts: Counts::default(),
            error: None,
            duration_ms: 0,
        }
    }

    fn file(outcome: &str) -> FileReport {
        FileReport {
            id: None,
            partner: "p".into(),
            name: "a.csv".into(),
            sha256: String::new(),
            outcome: outcome.into(),
            reason: None,
            file_code: None,
            warning: None,
            counts: Counts::default(),
            report_path: None,
            archive_path: PathBuf::new(),
        }
    }

    fn skip(reason: SkipReason) -> Skip {
        Skip::new("x.csv", reason, String::new())
    }

    #[test]
    fn outcomes_and_cleanliness() {
        let name = |r: &RunReport, expect: bool, t: Trigger| r.outcome_name(expect, t);
        let mut r = report();
        assert_eq!(name(&r, false, Trigger::Schedule), "no-file");
        assert_eq!(name(&r, true, Trigger::Schedule), "missed");
        assert_eq!(name(&r, true, Trigger::Manual), "no-file");
        // Ignored names (`ignore`, a stray already reported) are no
        // delivery either, and need nobody.
        r.skipped.push(skip(SkipReason::Ignored));
        assert_eq!(name(&r, false, Trigger::Schedule), "no-file");
        assert_eq!(name(&r, true, Trigger::Schedule), "missed");
        assert!(r.is_clean());
        r.skipped.clear();
        // A file still in the inbox after its credit is no new delivery.
        r.skipped.push(skip(SkipReason::AlreadySeen));
        assert_eq!(name(&r, true, Trigger::Schedule), "missed");
        assert_eq!(name(&r, false, Trigger::Schedule), "skipped");
        assert!(r.is_clean());
        // A file that is there but not ready is not a missed delivery.
        r.skipped.push(skip(SkipReason::StillChanging));
        assert_eq!(name(&r, true, Trigger::Schedule), "skipped");
        assert!(r.is_clean());
        r.files.push(file("credited"));
        assert_eq!(name(&r, false, Trigger::Schedule), "ok");
        r.skipped.push(skip(SkipReason::PatternMismatch));
        assert_eq!(name(&r, false, Trigger::Schedule), "skipped");
        assert!(!r.is_clean());
        r.tidy_failed.push(tidy::TidyFailure {
            file_id: 1,
            name: "a.csv".into(),
            error: "e".into(),
            failing_since: String::new(),
        });
        assert_eq!(name(&r, false, Trigger::Schedule), "tidy-failed");
        r.files.push(file("refused"));
        assert_eq!(name(&r, false, Trigger::Schedule), "refused");
        r.error = Some("down".into());
        assert_eq!(name(&r, false, Trigger::Schedule), "failed");

        let mut r = report();
        r.tidy_failed.push(tidy::TidyFailure {
            file_id: 1,
            name: "a.csv".into(),
            error: "e".into(),
            failing_since: String::new(),
        });
        assert!(!r.is_clean(), "an undelivered report fails the run");
        assert_eq!(r.skipped_text(), "none");
        let mut r = report();
        r.skipped = vec![
            skip(SkipReason::StillChanging),
            skip(SkipReason::PatternMismatch),
            skip(SkipReason::PatternMismatch),
        ];
        assert_eq!(r.skipped_text(), "pattern-mismatch=2 still-changing=1");
    }
}
