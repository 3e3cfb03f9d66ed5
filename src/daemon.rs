//! `milebatch run`: the unattended daemon. Every partner fires on its own
//! schedule (in `[daemon] timezone`), a run missed while the daemon was down
//! is caught up once at start-up, a partner never overlaps itself, and
//! SIGTERM lets the file in progress finish its transaction.
//!
//! Shaped like mini-redis `server::run(listener, shutdown)`: the caller owns
//! the runtime and the signal handling and hands in a shutdown
//! [`watch::Receiver`]; [`run`] returns once everything has stopped.
//!
//! # Why not `tokio-cron-scheduler`
//!
//! It was the first suggestion and we do **not** use it: it has no
//! catch-up of runs missed while the process was down, no overlap guard, its
//! cron reads day-of-month AND day-of-week (cron's rule is OR), and a job
//! that panics is dead for good. Instead each partner gets its own small
//! tokio loop over [`crate::schedule`] (croner underneath, DST and month-end
//! rules documented there): `next = plan.next_after(now)` (the partner's
//! [`crate::schedule::Plan`]: business days and `on_holiday`), [`sleep_until`] (chunks
//! of at most a minute that re-read the wall clock), fire, repeat.
//!
//! # Rules
//!
//! - **Catch-up**: at start-up a partner whose
//!   [`Plan::due_at_startup`](crate::schedule::Plan::due_at_startup)
//!   holds for its `partner_state.last_success` runs once with
//!   [`Trigger::CatchUp`], however many occurrences were missed. A partner
//!   that never succeeded is not caught up: it waits for its first occurrence.
//! - **No overlap**: a firing that finds the partner's previous run (or
//!   catch-up) still going is logged at WARN and skipped. Across processes
//!   the pipeline's per-partner lock file keeps a manual `once` out too;
//!   a run that finds the lock held (a site upload, a manual `once`) waits
//!   up to [`LOCK_WAIT`] for it rather than skip its pull, and only then
//!   ends "not started" (logged at WARN and in systemd's `STATUS=`; the
//!   partner's last success stays where it was, for its alert).
//! - **Bounded concurrency**: different partners run in parallel, at most
//!   `[daemon] max_concurrent` at once (a semaphore; a firing waits for a
//!   permit). Concurrent credit steps queue on SQLite's write lock:
//!   `BEGIN IMMEDIATE` plus a 300 s `busy_timeout` per connection, never
//!   `SQLITE_BUSY` (tested with several partners at once).
//! - **Runs are blocking code** (`pipeline::run_partner`) on
//!   `spawn_blocking`; a panic in one is logged and the partner keeps its
//!   schedule.
//! - **Shutdown**: no new run starts; the shared stop flag makes running
//!   pipelines stop *between* files (a file in progress always finishes its
//!   transaction); running jobs get up to `[daemon] shutdown_timeout`, then
//!   [`run`] returns `Ok`. A job still going then dies with the process, which
//!   rolls its open transaction back: nothing is lost or half-credited.
//! - **systemd** (`sd-notify`, all no-ops without `NOTIFY_SOCKET`):
//!   `READY=1` once every partner is scheduled, `STATUS=` with the last and
//!   next run, `WATCHDOG=1` every half `WatchdogSec=` when the watchdog is
//!   enabled, `STOPPING=1` on shutdown.
//! - Time only ever comes from the injected [`Clock`], including each run's
//!   `now`, so tests run the loop at millisecond speed with a `ManualClock`.
//! - **Maintenance**: `[daemon] verify` and `backup` each get a loop of
//!   their own on the same schedule grammar ([`maintenance_loop`]); a run
//!   happens inside its loop, so it never overlaps itself, and there is no
//!   catch-up (the next occurrence comes soon enough). Each run is recorded
//!   and logged by `money::verify::scheduled` / `money::backup::scheduled`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::db::{self, DbError};
use crate::pipeline::{self, RunOptions, RunReport, Trigger};
use crate::run_requests;
use crate::schedule::{sleep_until, Clock};

/// How long a run waits for its partner's lock held by another process.
/// An upload of a million rows holds it for seconds; a run skipped instead
/// would leave the partner's file for the next occurrence, a day later.
pub const LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What the daemon did, for tests to follow the loop without sleeping.
// Only the unit tests read the fields.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A partner's next firing was computed.
    Scheduled { partner: String, at: DateTime<Utc> },
    /// A run holds its permit and is about to enter the pipeline.
    Started { partner: String, trigger: Trigger },
    /// A run came back from the pipeline.
    Finished {
        partner: String,
        trigger: Trigger,
        report: Box<RunReport>,
    },
    /// A firing came while the partner's previous run was still going.
    Skipped { partner: String, at: DateTime<Utc> },
    /// Everything scheduled; `READY=1` sent.
    Ready,
}

/// Run the daemon until `shutdown` turns `true` (or its sender is dropped),
/// then stop as described in the module docs and return `Ok`.
pub async fn run(
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    run_observed(config, clock, shutdown, None, run_requests::POLL).await
}

/// The last and next run of one partner, for `STATUS=`.
#[derive(Default, Clone)]
struct Board {
    last: Option<(DateTime<Utc>, String)>,
    next: Option<DateTime<Utc>>,
    /// A run of this partner is inside the pipeline right now.
    in_pipeline: bool,
}

struct Shared {
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    /// Handed to every pipeline run: set on shutdown, checked between files.
    stop: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    events: Option<mpsc::UnboundedSender<Event>>,
    boards: Mutex<Vec<Board>>,
    /// Per partner: set from the moment a run is queued until its result is
    /// recorded (the overlap guard, shared by the schedule and run-now
    /// requests; taken with compare-and-swap).
    busy: Vec<Arc<AtomicBool>>,
    /// How often "run now" requests are polled for.
    request_poll: Duration,
}

impl Shared {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn tz(&self) -> Tz {
        self.config.daemon.timezone
    }

    fn set_next(&self, idx: usize, next: Option<DateTime<Utc>>) {
        if let Ok(mut b) = self.boards.lock() {
            b[idx].next = next;
        }
        self.send_status();
    }

    fn set_in_pipeline(&self, idx: usize) {
        if let Ok(mut b) = self.boards.lock() {
            b[idx].in_pipeline = true;
        }
    }

    fn set_last(&self, idx: usize, at: DateTime<Utc>, outcome: &str) {
        if let Ok(mut b) = self.boards.lock() {
            b[idx].last = Some((at, outcome.to_owned()));
            b[idx].in_pipeline = false;
        }
        self.send_status();
    }

    /// `STATUS=last: acme ok at …; next: demo-shop at …`
    fn status_line(&self) -> String {
        let Ok(boards) = self.boards.lock() else {
            return String::new();
        };
        let tz = self.tz();
        let ids = self.config.partners.iter().map(|p| p.id.as_str());
        let last = ids
            .clone()
            .zip(boards.iter())
            .filter_map(|(id, b)| b.last.as_ref().map(|(at, o)| (at, id, o)))
            .max_by_key(|(at, _, _)| **at);
        let next = ids
            .zip(boards.iter())
            .filter_map(|(id, b)| b.next.map(|at| (at, id)))
            .min_by_key(|(at, _)| *at);
        let last = match last {
            Some((at, id, outcome)) => format!("last: {id} {outcome} at {}", zoned(*at, tz)),
            None => "last: none yet".into(),
        };
        let next = match next {
            Some((at, id)) => format!("next: {id} at {}", zoned(at, tz)),
            None => "next: none".into(),
        };
        format!("{last}; {next}")
    }

    fn send_status(&self) {
        let line = self.status_line();
        notify(&[NotifyState::Status(&line)]);
    }
}

/// An instant in the configured zone, with its offset: `2026-11-25T03:00:00+09:00`.
pub fn zoned(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// `partner_state.last_success` of every partner that has one. (Also
/// finishes "run now" requests a dead daemon left running.)
fn last_successes(
    config: &Config,
    now: DateTime<Utc>,
) -> Result<HashMap<String, DateTime<Utc>>, DaemonError> {
    let conn = db::open(&config.daemon.database)?;
    let interrupted = run_requests::interrupt_running(&conn, now).map_err(|e| match e {
        run_requests::RequestError::Db(e) => DbError::from(e),
    })?;
    if interrupted > 0 {
        tracing::warn!(
            requests = interrupted,
            "run-now requests left running by a daemon that stopped: marked interrupted"
        );
    }
    let mut st = conn
        .prepare("SELECT partner, last_success FROM partner_state WHERE last_success IS NOT NULL")
        .map_err(DbError::from)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(DbError::from)?;
    let mut out = HashMap::new();
    for row in rows {
        let (partner, text) = row.map_err(DbError::from)?;
        match DateTime::parse_from_rfc3339(&text) {
            Ok(t) => {
                out.insert(partner, t.with_timezone(&Utc));
            }
            Err(e) => tracing::warn!(
                partner,
                last_success = text,
                error = %e,
                "unreadable last_success: treating the partner as never run (no catch-up)"
            ),
        }
    }
    Ok(out)
}

pub(crate) async fn run_observed(
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
    events: Option<mpsc::UnboundedSender<Event>>,
    request_poll: Duration,
) -> Result<(), DaemonError> {
    // Opens (and migrates) the database up front: a bad path fails the start,
    // not the first run hours later.
    let last = last_successes(&config, clock.now())?;
    let tz = config.daemon.timezone;
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.daemon.max_concurrent)),
        stop: Arc::new(AtomicBool::new(false)),
        shutdown: shutdown.clone(),
        events,
        boards: Mutex::new(vec![Board::default(); config.partners.len()]),
        busy: (0..config.partners.len()).map(|_| Arc::default()).collect(),
        request_poll,
        clock,
        config,
    });
    let now = shared.clock.now();
    tracing::info!(
        partners = shared.config.partners.len(),
        timezone = %tz,
        max_concurrent = shared.config.daemon.max_concurrent,
        now = %zoned(now, tz),
        "daemon starting"
    );
    if shared.config.partners.is_empty() {
        tracing::warn!(config = %shared.config.path.display(), "no partners configured: nothing to schedule");
    }

    // The first firing of every partner, so READY=1 already carries it.
    if let Ok(mut boards) = shared.boards.lock() {
        for (b, p) in boards.iter_mut().zip(&shared.config.partners) {
            b.next = p.plan(&shared.config.daemon).next_after(now).map(|o| o.at);
        }
    }
    let mut loops = JoinSet::new();
    for (idx, p) in shared.config.partners.iter().enumerate() {
        let last_success = last.get(&p.id).copied();
        // Same plan as the regular runs: a run skipped or moved by
        // `on_holiday` is caught up only if it would have run by now.
        let catch_up = p
            .plan(&shared.config.daemon)
            .due_at_startup(last_success, now);
        if catch_up {
            tracing::info!(
                partner = %p.id,
                last_success = %last_success.map(|t| zoned(t, tz)).unwrap_or_default(),
                "an occurrence was missed while the daemon was down: catching up once now"
            );
        }
        loops.spawn(partner_loop(shared.clone(), idx, catch_up));
    }
    loops.spawn(request_loop(shared.clone()));
    loops.spawn(notify_loop(shared.clone()));
    if shared.config.daemon.verify.is_some() {
        loops.spawn(maintenance_loop(shared.clone(), Maintenance::Verify));
    }
    if shared.config.daemon.backup.is_some() {
        loops.spawn(maintenance_loop(shared.clone(), Maintenance::Backup));
    }

    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        let half = (every / 2).max(Duration::from_millis(100));
        tracing::info!(
            watchdog_ms = every.as_millis() as u64,
            "systemd watchdog enabled: pinging every half period"
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(half);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        })
    });

    let status = shared.status_line();
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    shared.emit(Event::Ready);
    tracing::info!(status = %status, "daemon ready");

    // Wait for the shutdown request (a dropped sender counts as one).
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let timeout = shared.config.daemon.shutdown_timeout;
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: waiting for running jobs"),
    ]);
    tracing::info!(
        timeout_s = timeout.as_secs_f64(),
        "shutdown requested: starting no new runs, letting running ones finish their file"
    );
    let started = Instant::now();
    let drained = tokio::time::timeout(timeout, async {
        while let Some(r) = loops.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a partner loop ended abnormally");
            }
        }
    })
    .await;
    if let Some(w) = watchdog {
        w.abort();
    }
    match drained {
        Ok(()) => tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "all runs finished: daemon stopped"
        ),
        Err(_) => {
            let still: Vec<String> = shared
                .boards
                .lock()
                .map(|b| {
                    b.iter()
                        .zip(&shared.config.partners)
                        .filter(|(b, _)| b.in_pipeline)
                        .map(|(_, p)| p.id.clone())
                        .collect()
                })
                .unwrap_or_default();
            tracing::error!(
                timeout_s = timeout.as_secs_f64(),
                still_running = %still.join(" "),
                "shutdown_timeout reached with runs still going: exiting anyway; their open \
                 transaction rolls back with the process and the file is credited on a later run"
            );
        }
    }
    Ok(())
}

/// One partner: optional catch-up, then fire on schedule until shutdown,
/// never two runs of this partner at once.
async fn partner_loop(sh: Arc<Shared>, idx: usize, catch_up: bool) {
    let partner = &sh.config.partners[idx];
    let tz = sh.tz();
    let mut shutdown = sh.shutdown.clone();
    // The overlap guard. (The task's own `is_finished` lags behind
    // `Finished`.)
    let busy = sh.busy[idx].clone();
    let mut running: Option<JoinHandle<()>> = None;
    if catch_up && take(&busy) {
        running = Some(spawn_job(&sh, idx, Trigger::CatchUp, &busy, None));
    }
    loop {
        let now = sh.clock.now();
        let Some(occurrence) = partner.plan(&sh.config.daemon).next_after(now) else {
            tracing::warn!(partner = %partner.id, schedule = %partner.schedule, "the schedule has no further occurrence: partner idle");
            sh.set_next(idx, None);
            break;
        };
        let next = occurrence.at;
        if let Some(m) = &occurrence.moved {
            tracing::info!(partner = %partner.id, next = %zoned(next, tz), moved_from = %m.from, why = %m.why, on_holiday = %partner.on_holiday, "the next run falls on a closed day and is moved");
        }
        sh.set_next(idx, Some(next));
        sh.emit(Event::Scheduled {
            partner: partner.id.clone(),
            at: next,
        });
        tracing::debug!(partner = %partner.id, next = %zoned(next, tz), "next run scheduled");
        if !sleep_until(&*sh.clock, next, &mut shutdown).await {
            break;
        }
        if !take(&busy) {
            tracing::warn!(
                partner = %partner.id,
                scheduled_for = %zoned(next, tz),
                "the previous run of this partner is still going: skipping this firing"
            );
            sh.emit(Event::Skipped {
                partner: partner.id.clone(),
                at: next,
            });
            continue;
        }
        running = Some(spawn_job(&sh, idx, Trigger::Schedule, &busy, None));
    }
    if let Some(h) = running {
        if let Err(e) = h.await {
            tracing::error!(partner = %partner.id, error = %e, "run task failed");
        }
    }
}

/// The daemon's own scheduled jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maintenance {
    Verify,
    Backup,
}

/// Run `what` on its `[daemon]` schedule until shutdown: next occurrence,
/// sleep, run (on the blocking pool, awaited here: never two at once).
async fn maintenance_loop(sh: Arc<Shared>, what: Maintenance) {
    let d = &sh.config.daemon;
    let (schedule, name) = match what {
        Maintenance::Verify => (d.verify.clone(), "verify"),
        Maintenance::Backup => (d.backup.clone(), "backup"),
    };
    let Some(schedule) = schedule else { return };
    let tz = sh.tz();
    let mut shutdown = sh.shutdown.clone();
    loop {
        let Some(next) = d.plan(&schedule).next_after(sh.clock.now()).map(|o| o.at) else {
            tracing::warn!(job = name, %schedule, "the schedule has no further occurrence");
            break;
        };
        tracing::info!(job = name, next = %zoned(next, tz), "next scheduled {name}");
        if !sleep_until(&*sh.clock, next, &mut shutdown).await {
            break;
        }
        let now = sh.clock.now();
        let config = sh.config.clone();
        let done = tokio::task::spawn_blocking(move || {
            let d = &config.daemon;
            match what {
                Maintenance::Verify => {
                    crate::money::verify::scheduled(&d.database, now).map(|_| ())
                }
                Maintenance::Backup => {
                    let dir = d.backup_dir.as_deref().expect("checked with the config");
                    crate::money::backup::scheduled(&d.database, dir, d.keep, now).map(|_| ())
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(job = name, error = %e, "scheduled {name}: could not record the run")
            }
            Err(e) => tracing::error!(job = name, error = %e, "scheduled {name} panicked"),
        }
    }
}

/// Set a partner's busy flag if it was clear: `false` when a run of the
/// partner is already queued or going.
fn take(busy: &AtomicBool) -> bool {
    busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// Poll for "run now" requests every `request_poll` until shutdown; start
/// each queued one whose partner is idle (a busy partner's request waits
/// for the next poll), then wait for the runs it started.
async fn request_loop(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let conn: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let mut jobs: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(sh.request_poll) => {}
        }
        jobs.retain(|h| !h.is_finished());
        let queued = {
            let conn = conn.clone();
            let path = sh.config.daemon.database.clone();
            let now = sh.clock.now();
            tokio::task::spawn_blocking(move || {
                let queued = with_conn(&conn, &path, |c| {
                    run_requests::queued(c).map_err(|e| e.to_string())
                });
                // The site's dashboard says the daemon runs while it polls.
                if queued.is_ok() {
                    if let Err(e) = crate::heartbeat::beat(&path, now, std::process::id()) {
                        tracing::warn!(error = %e, "could not write the daemon heartbeat");
                    }
                }
                queued
            })
            .await
        };
        let queued = match queued {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read run-now requests; trying again");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "run-now poll panicked");
                continue;
            }
        };
        for r in queued {
            let idx = sh.config.partners.iter().position(|p| p.id == r.partner);
            let now = sh.clock.now();
            let Some(idx) = idx else {
                tracing::warn!(request = r.id, partner = %r.partner, "run-now request for a partner not in the config: finished as unknown-partner");
                let conn = conn.clone();
                let path = sh.config.daemon.database.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    with_conn(&conn, &path, |c| {
                        run_requests::finish(c, r.id, now, None, "unknown-partner")
                            .map_err(|e| e.to_string())
                    })
                })
                .await;
                continue;
            };
            let busy = sh.busy[idx].clone();
            if !take(&busy) {
                continue;
            }
            let claimed = {
                let conn = conn.clone();
                let path = sh.config.daemon.database.clone();
                tokio::task::spawn_blocking(move || {
                    with_conn(&conn, &path, |c| {
                        run_requests::claim(c, r.id, now).map_err(|e| e.to_string())
                    })
                })
                .await
            };
            match claimed {
                Ok(Ok(true)) => {
                    tracing::info!(partner = %r.partner, request = r.id, requested_by = %r.requested_by, "running a run-now request");
                    jobs.push(spawn_job(&sh, idx, Trigger::RunNow, &busy, Some(r.id)));
                }
                other => {
                    busy.store(false, Ordering::SeqCst);
                    if let Ok(Err(e)) = other {
                        tracing::warn!(request = r.id, error = %e, "could not start a run-now request; trying again");
                    }
                }
            }
        }
    }
    for h in jobs {
        let _ = h.await;
    }
}

/// Notifications: every [`crate::notify::INTERVAL`], route new events and
/// send what is due, on a blocking thread (SMTP and webhooks have their
/// own time limits). Stops at shutdown between two sends.
async fn notify_loop(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let conn: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(crate::notify::INTERVAL) => {}
        }
        let (conn, config, stop) = (conn.clone(), sh.config.clone(), sh.stop.clone());
        let done = tokio::task::spawn_blocking(move || {
            with_conn(&conn, &config.daemon.database, |c| {
                crate::notify::deliver(&config, c, Utc::now(), &stop).map_err(|e| e.to_string())
            })
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "notifications: the outbox could not be read; trying again")
            }
            Err(e) => {
                tracing::error!(error = %e, "notifications: the sender panicked; trying again")
            }
        }
    }
}

/// Run `f` with the request loop's connection, opening it on first use.
fn with_conn<T>(
    conn: &Mutex<Option<rusqlite::Connection>>,
    path: &std::path::Path,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, String>,
) -> Result<T, String> {
    let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(db::open(path).map_err(|e| e.to_string())?);
    }
    f(guard.as_ref().expect("opened above"))
}

/// Record how run-now request `id` ended (or put it back in the queue when
/// `outcome` is `None`: the run never started because of shutdown).
async fn record_request(sh: &Shared, id: i64, run_id: Option<i64>, outcome: Option<String>) {
    let path = sh.config.daemon.database.clone();
    let now = sh.clock.now();
    let done = tokio::task::spawn_blocking(move || {
        let conn = db::open(&path).map_err(|e| e.to_string())?;
        match outcome {
            Some(o) => run_requests::finish(&conn, id, now, run_id, &o),
            None => run_requests::unclaim(&conn, id),
        }
        .map_err(|e| e.to_string())
    })
    .await;
    if !matches!(done, Ok(Ok(()))) {
        tracing::error!(request = id, "could not record the end of a run-now request: it shows as running until the daemon restarts");
    }
}

/// Start one run of partner `idx` (its busy flag already taken): wait for a
/// concurrency permit (or shutdown), then the blocking pipeline on the
/// blocking pool. `request`: the run-now request it answers.
fn spawn_job(
    sh: &Arc<Shared>,
    idx: usize,
    trigger: Trigger,
    busy: &Arc<AtomicBool>,
    request: Option<i64>,
) -> JoinHandle<()> {
    let sh = sh.clone();
    busy.store(true, Ordering::SeqCst);
    let busy = BusyGuard(busy.clone());
    tokio::spawn(async move {
        let id = sh.config.partners[idx].id.clone();
        let mut shutdown = sh.shutdown.clone();
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => None,
            p = sh.permits.clone().acquire_owned() => p.ok(),
        };
        if permit.is_none() || sh.stop.load(Ordering::SeqCst) {
            tracing::info!(partner = %id, "shutdown: not starting the queued run");
            if let Some(rid) = request {
                record_request(&sh, rid, None, None).await;
            }
            return;
        }
        let now = sh.clock.now();
        sh.set_in_pipeline(idx);
        sh.emit(Event::Started {
            partner: id.clone(),
            trigger,
        });
        let config = sh.config.clone();
        let stop = sh.stop.clone();
        let result = tokio::task::spawn_blocking(move || {
            let partner = &config.partners[idx];
            pipeline::run_partner(
                &config,
                partner,
                &RunOptions {
                    dry_run: false,
                    trigger,
                    now,
                    shutdown: &stop,
                    lock_wait: LOCK_WAIT,
                },
            )
        })
        .await;
        if let Some(rid) = request {
            let (run_id, outcome) = match &result {
                Ok(r) if r.run_id.is_none() => (None, "not-started".to_owned()),
                Ok(r) => (r.run_id, r.outcome.clone()),
                Err(_) => (None, "panicked".to_owned()),
            };
            record_request(&sh, rid, run_id, Some(outcome)).await;
        }
        match result {
            Ok(report) => {
                if report.run_id.is_none() {
                    // Not even recorded: most often the partner's lock is held
                    // by a manual `milebatch once`.
                    tracing::warn!(partner = %id, error = report.error.as_deref().unwrap_or(""), "run did not start");
                }
                sh.set_last(idx, now, &report.outcome);
                drop(busy);
                sh.emit(Event::Finished {
                    partner: id,
                    trigger,
                    report: Box::new(report),
                });
            }
            Err(e) => {
                tracing::error!(partner = %id, error = %e, "the run panicked; the partner keeps its schedule");
                sh.set_last(idx, now, "panicked");
                drop(busy);
            }
        }
        // Released only after `Finished`, so the events never show more than
        // `max_concurrent` runs in flight.
        drop(permit);
    })
}

/// Clears a partner's busy flag when the run is over, whichever way it ends.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Test-only time injection for the binary
// ---------------------------------------------------------------------------

/// **Test-only.** The environment variable that starts the binary's clock at
/// a given instant (RFC 3339, e.g. `2026-11-24T17:59:58Z`), from which it
/// then advances in real time. Lets integration tests drive the real binary
/// across a schedule occurrence in seconds. Never set it in production: every
/// time the binary reads it, it logs a WARN.
pub const FAKE_NOW_ENV: &str = "MILEBATCH_FAKE_NOW";

/// **Test-only** clock: `start + (time elapsed since creation)`.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    start: DateTime<Utc>,
    origin: Instant,
}

impl OffsetClock {
    pub fn new(start: DateTime<Utc>) -> OffsetClock {
        OffsetClock {
            start,
            origin: Instant::now(),
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        self.start + self.origin.elapsed()
    }
}

/// The clock the CLI uses: the system clock, unless the **test-only**
/// [`FAKE_NOW_ENV`] is set.
pub fn clock_from_env() -> Result<Arc<dyn Clock>, String> {
    match std::env::var(FAKE_NOW_ENV) {
        Err(_) => Ok(Arc::new(crate::schedule::SystemClock)),
        Ok(text) => {
            let start = DateTime::parse_from_rfc3339(text.trim())
                .map_err(|e| format!("{FAKE_NOW_ENV}={text:?} is not an RFC 3339 time: {e}"))?
                .with_timezone(&Utc);
            tracing::warn!(
                fake_now = %start,
                "{FAKE_NOW_ENV} is set: using a fake clock (test-only; never in production)"
            );
            Ok(Arc::new(OffsetClock::new(start)))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop against a `ManualClock`, the real pipeline, real SQLite files
    //! and real local inboxes. Where a run must be "still going" at a given
    //! moment, the test holds SQLite's write lock (`BEGIN IMMEDIATE`), so the
    //! run is parked on `busy_timeout` until the test lets it go: no timing.

    use super::*;
    use crate::schedule::ManualClock;
    use chrono::TimeZone;
    use rusqlite::Connection;
    use std::path::Path;

    /// Generous bound on waiting for an event; only a guard against a hang.
    const PATIENCE: Duration = Duration::from_secs(120);

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    struct Ws {
        dir: tempfile::TempDir,
        config: Arc<Config>,
    }

    /// A workspace with `partners` (all `daily 03:00` Tokyo, local inbox
    /// `inbox/<id>`) and members M0..M999.
    fn workspace(partners: &[&str], max_concurrent: usize) -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            "[daemon]\ndatabase = \"var/m.db\"\ndata_dir = \"var\"\ntimezone = \"Asia/Tokyo\"\n\
             max_concurrent = {max_concurrent}\nshutdown_timeout = \"60s\"\n"
        );
        for id in partners {
            toml.push_str(&format!(
                "\n[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n\
                 [partner.source]\nkind = \"local\"\ndir = \"inbox/{id}\"\nready = \"immediate\"\n"
            ));
            std::fs::create_dir_all(dir.path().join("inbox").join(id)).unwrap();
        }
        let path = dir.path().join("partners.toml");
        std::fs::write(&path, &toml).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let members: String = (0..1000)
            .map(|i| format!("M{i},m{i}@example.com,active\n"))
            .collect();
        let mut conn = db::open(&config.daemon.database).unwrap();
        crate::members::import_from(&mut conn, members.as_bytes(), "members.csv").unwrap();
        Ws { dir, config }
    }

    impl Ws {
        /// Drop an exchange file of `rows` valid rows (1..=rows miles each
        /// row's number mod 100 + 1) into the partner's inbox.
        fn deliver(&self, partner: &str, name: &str, rows: usize) {
            let text: String = (0..rows)
                .map(|i| format!("M{},{partner}-{name}-{i},{}\n", i % 1000, i % 100 + 1))
                .collect();
            let p = self.dir.path().join("inbox").join(partner).join(name);
            std::fs::write(p, text).unwrap();
        }
        fn db(&self) -> Connection {
            Connection::open(&self.config.daemon.database).unwrap()
        }
        fn count(&self, sql: &str) -> i64 {
            self.db().query_row(sql, [], |r| r.get(0)).unwrap()
        }
        fn db_path(&self) -> &Path {
            &self.config.daemon.database
        }
    }

    struct Running {
        handle: JoinHandle<Result<(), DaemonError>>,
        stop: watch::Sender<bool>,
        rx: mpsc::UnboundedReceiver<Event>,
        /// Every event received so far, in order.
        seen: Vec<Event>,
        /// Received but not yet matched by an `expect`, in order.
        pending: std::collections::VecDeque<Event>,
    }

    fn start(ws: &Ws, clock: &ManualClock) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let handle = tokio::spawn(run_observed(
            ws.config.clone(),
            clock,
            shutdown,
            Some(tx),
            Duration::from_millis(20),
        ));
        Running {
            handle,
            stop,
            rx,
            seen: vec![],
            pending: Default::default(),
        }
    }

    impl Running {
        /// Take in whatever the daemon has sent so far, without waiting.
        fn drain(&mut self) {
            while let Ok(e) = self.rx.try_recv() {
                self.seen.push(e.clone());
                self.pending.push_back(e);
            }
        }

        /// The first not-yet-matched event that satisfies `f`, waiting for it.
        async fn expect(&mut self, what: &str, f: impl Fn(&Event) -> bool) -> Event {
            if let Some(i) = self.pending.iter().position(&f) {
                return self.pending.remove(i).unwrap();
            }
            let found = tokio::time::timeout(PATIENCE, async {
                loop {
                    let e = self.rx.recv().await?;
                    self.seen.push(e.clone());
                    if f(&e) {
                        return Some(e);
                    }
                    self.pending.push_back(e);
                }
            })
            .await;
            match found {
                Ok(Some(e)) => e,
                Ok(None) => panic!("daemon ended before {what}; saw {:#?}", self.seen),
                Err(_) => panic!("no {what} within {PATIENCE:?}; saw {:#?}", self.seen),
            }
        }

        async fn scheduled(&mut self, partner: &str, at: DateTime<Utc>) {
            self.expect(
                &format!("{partner} scheduled at {at}"),
                |e| matches!(e, Event::Scheduled { partner: p, at: t } if p == partner && *t == at),
            )
            .await;
        }

        async fn finished(&mut self, partner: &str) -> (Trigger, RunReport) {
            match self
                .expect(
                    &format!("{partner} finished"),
                    |e| matches!(e, Event::Finished { partner: p, .. } if p == partner),
                )
                .await
            {
                Event::Finished {
                    trigger, report, ..
                } => (trigger, *report),
                _ => unreachable!(),
            }
        }

        /// Shut down, wait for `run` to return Ok, and keep the remaining events.
        async fn shutdown(mut self) -> Vec<Event> {
            self.stop.send_replace(true);
            tokio::time::timeout(PATIENCE, &mut self.handle)
                .await
                .expect("daemon did not stop")
                .expect("daemon task panicked")
                .expect("daemon returned an error");
            self.drain();
            self.seen
        }
    }

    fn started(events: &[Event]) -> Vec<(String, Trigger)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Started { partner, trigger } => Some((partner.clone(), *trigger)),
                _ => None,
            })
            .collect()
    }

    /// Occurrences of `daily 03:00` Tokyo, in UTC.
    fn tokyo_3am(day: u32) -> DateTime<Utc> {
        // 03:00 JST on `day` is 18:00 UTC the day before.
        utc(2026, 11, day - 1, 18, 0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_now_request_is_run_once_and_its_run_recorded() {
        let ws = workspace(&["acme", "idle"], 4);
        let clock = ManualClock::new(utc(2026, 11, 24, 12, 0));
        let mut d = start(&ws, &clock);
        d.expect("ready", |e| matches!(e, Event::Ready)).await;
        ws.deliver("acme", "a.csv", 20);
        let (req, _) = {
            let conn = db::open(ws.db_path()).unwrap();
            run_requests::request(&conn, "acme", "user:ops@x", None, clock.now()).unwrap()
        };
        // And one for a partner no longer in the config.
        {
            let conn = ws.db();
            conn.execute(
                "INSERT INTO run_requests(partner, requested_by, requested_at) VALUES ('gone', 'x', 't')",
                [],
            )
            .unwrap();
        }
        let (trigger, report) = d.finished("acme").await;
        assert_eq!((trigger, report.outcome.as_str()), (Trigger::RunNow, "ok"));
        let conn = db::open(ws.db_path()).unwrap();
        let done = run_requests::recent(&conn, "acme", 5).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, req.id);
        assert_eq!(done[0].state(), run_requests::State::Done);
        assert_eq!(done[0].run_id, report.run_id);
        assert_eq!(done[0].outcome.as_deref(), Some("ok"));
        let trig: String = conn
            .query_row(
                "SELECT trigger FROM runs WHERE id = ?1",
                [report.run_id.unwrap()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(trig, "run-now");
        assert_eq!(
            ws.count("SELECT count(*) FROM files WHERE outcome = 'credited'"),
            1
        );
        // The next polls start nothing more: the request ran once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = run_requests::recent(&conn, "gone", 1).unwrap();
        assert_eq!(gone[0].outcome.as_deref(), Some("unknown-partner"));
        let events = d.shutdown().await;
        assert_eq!(
            started(&events),
            vec![("acme".to_string(), Trigger::RunNow)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catch_up_after_downtime_runs_exactly_once() {
        let ws = workspace(&["acme"], 4);
        // Last success: a run at 03:00 JST on Nov 21 (through the pipeline).
        let stop = AtomicBool::new(false);
        let seed = pipeline::run_partner(
            &ws.config,
            &ws.config.partners[0],
            &RunOptions {
                dry_run: false,
                trigger: Trigger::Schedule,
                now: tokyo_3am(21),
                shutdown: &stop,
                lock_wait: Duration::ZERO,
            },
        );
        assert_eq!(seed.outcome, "no-file", "{seed:?}");
        ws.deliver("acme", "a.csv", 50);

        // Down over Nov 22, 23 and 24 03:00 JST; back at 21:00 JST on Nov 24.
        let clock = ManualClock::new(utc(2026, 11, 24, 12, 0));
        let mut d = start(&ws, &clock);
        let (trigger, report) = d.finished("acme").await;
        assert_eq!(trigger, Trigger::CatchUp);
        assert_eq!(report.outcome, "ok", "{report:?}");
        assert_eq!(report.counts.credited, 50);
        d.scheduled("acme", tokyo_3am(25)).await;
        // The next firing is a plain scheduled run: the three missed
        // occurrences produced one catch-up, not three.
        clock.set(tokyo_3am(25));
        let (trigger, report) = d.finished("acme").await;
        assert_eq!(trigger, Trigger::Schedule);
        assert_eq!(report.outcome, "no-file");
        let events = d.shutdown().await;
        assert_eq!(
            started(&events),
            vec![
                ("acme".to_string(), Trigger::CatchUp),
                ("acme".to_string(), Trigger::Schedule)
            ]
        );
        assert_eq!(
            ws.count("SELECT count(*) FROM runs WHERE trigger = 'catch-up'"),
            1
        );
        assert_eq!(ws.count("SELECT count(*) FROM ledger"), 50);

        // Restarted after the catch-up succeeded (last_success = the 25th
        // run): nothing is due, so no second catch-up.
        clock.set(utc(2026, 11, 25, 1, 0));
        let mut d = start(&ws, &clock);
        d.expect("ready", |e| matches!(e, Event::Ready)).await;
        d.scheduled("acme", tokyo_3am(26)).await;
        clock.set(tokyo_3am(26));
        let (trigger, _) = d.finished("acme").await;
        assert_eq!(trigger, Trigger::Schedule);
        let events = d.shutdown().await;
        assert_eq!(
            started(&events),
            vec![("acme".to_string(), Trigger::Schedule)]
        );
        assert_eq!(
            ws.count("SELECT count(*) FROM runs WHERE trigger = 'catch-up'"),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_catch_up_for_a_partner_that_never_ran() {
        let ws = workspace(&["fresh"], 4);
        ws.deliver("fresh", "a.csv", 10);
        let clock = ManualClock::new(utc(2026, 11, 24, 12, 0));
        let mut d = start(&ws, &clock);
        d.expect("ready", |e| matches!(e, Event::Ready)).await;
        d.scheduled("fresh", tokyo_3am(25)).await;
        clock.set(tokyo_3am(25));
        let (trigger, report) = d.finished("fresh").await;
        // Had a catch-up been started, it would have come first (and this
        // firing would have been skipped or been the second run).
        assert_eq!(trigger, Trigger::Schedule);
        assert_eq!(report.counts.credited, 10);
        let events = d.shutdown().await;
        assert_eq!(
            started(&events),
            vec![("fresh".to_string(), Trigger::Schedule)]
        );
        assert!(!events.iter().any(|e| matches!(e, Event::Skipped { .. })));
        assert_eq!(ws.count("SELECT count(*) FROM runs"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_firing_during_a_run_of_the_same_partner_is_skipped() {
        let ws = workspace(&["slow"], 4);
        ws.deliver("slow", "a.csv", 20);
        let clock = ManualClock::new(utc(2026, 11, 24, 12, 0));
        let mut d = start(&ws, &clock);
        d.scheduled("slow", tokyo_3am(25)).await;

        // Park the run: it cannot even record itself while we hold the lock.
        let blocker = Connection::open(ws.db_path()).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        clock.set(tokyo_3am(25));
        d.expect("the run started", |e| matches!(e, Event::Started { .. }))
            .await;
        d.scheduled("slow", tokyo_3am(26)).await;
        clock.set(tokyo_3am(26));
        let skipped = d
            .expect("the second firing skipped", |e| {
                matches!(e, Event::Skipped { .. })
            })
            .await;
        assert!(
            matches!(&skipped, Event::Skipped { partner, at } if partner == "slow" && *at == tokyo_3am(26)),
            "{skipped:?}"
        );
        blocker.execute_batch("COMMIT").unwrap();
        let (trigger, report) = d.finished("slow").await;
        assert_eq!(
            (trigger, report.outcome.as_str()),
            (Trigger::Schedule, "ok")
        );
        assert_eq!(report.counts.credited, 20);

        // The loop goes on after a skip.
        d.scheduled("slow", tokyo_3am(27)).await;
        clock.set(tokyo_3am(27));
        let (_, report) = d.finished("slow").await;
        assert_eq!(report.outcome, "no-file");
        let events = d.shutdown().await;
        assert_eq!(started(&events).len(), 2, "{events:#?}");
        assert_eq!(ws.count("SELECT count(*) FROM runs"), 2);
        assert_eq!(ws.count("SELECT count(*) FROM ledger"), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partners_run_in_parallel_within_max_concurrent_without_sqlite_busy() {
        const ROWS: usize = 5000;
        let ids = ["p1", "p2", "p3", "p4", "p5"];
        let ws = workspace(&ids, 2);
        for id in ids {
            ws.deliver(id, "a.csv", ROWS);
            ws.deliver(id, "b.csv", ROWS / 2);
        }
        let clock = ManualClock::new(utc(2026, 11, 24, 12, 0));
        let mut d = start(&ws, &clock);
        for id in ids {
            d.scheduled(id, tokyo_3am(25)).await;
        }
        // All five fire together; hold the write lock until two are in.
        let blocker = Connection::open(ws.db_path()).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        clock.set(tokyo_3am(25));
        for n in 1..=2 {
            d.expect(&format!("run {n} started"), |e| {
                matches!(e, Event::Started { .. })
            })
            .await;
        }
        // Both permits are held by runs parked on the lock: a third cannot
        // start. (Checked again over the whole event log below.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.drain();
        assert_eq!(started(&d.seen).len(), 2, "{:#?}", d.seen);
        blocker.execute_batch("COMMIT").unwrap();

        let mut reports = Vec::new();
        for _ in ids {
            match d
                .expect("a run finished", |e| matches!(e, Event::Finished { .. }))
                .await
            {
                Event::Finished { report, .. } => reports.push(*report),
                _ => unreachable!(),
            }
        }
        let events = d.shutdown().await;
        for r in &reports {
            assert_eq!(r.error, None, "{r:?}");
            assert_eq!(r.outcome, "ok", "{r:?}");
            assert_eq!(r.counts.credited, (ROWS + ROWS / 2) as u64, "{r:?}");
        }
        // In flight at any moment, from the ordered events.
        let (mut now, mut max) = (0i32, 0i32);
        for e in &events {
            match e {
                Event::Started { .. } => now += 1,
                Event::Finished { .. } => now -= 1,
                _ => {}
            }
            max = max.max(now);
        }
        assert_eq!(max, 2, "max_concurrent = 2 must be reached, never passed");
        let total = (ids.len() * (ROWS + ROWS / 2)) as i64;
        assert_eq!(ws.count("SELECT count(*) FROM ledger"), total);
        assert_eq!(
            ws.count("SELECT sum(miles) FROM ledger"),
            ws.count("SELECT sum(miles) FROM balances")
        );
        assert_eq!(
            ws.count("SELECT count(*) FROM runs WHERE outcome = 'ok' AND error IS NULL"),
            ids.len() as i64
        );
        assert_eq!(
            ws.count("SELECT count(*) FROM files WHERE outcome = 'credited'"),
            2 * ids.len() as i64
        );
    }
}
