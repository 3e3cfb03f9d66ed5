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
//! rules documented there): `next = next_after(now)`, [`sleep_until`] (chunks
//! of at most a minute that re-read the wall clock), fire, repeat.
//!
//! # Rules
//!
//! - **Catch-up**: at start-up a partner whose
//!   [`Schedule::due_at_startup`](crate::schedule::Schedule::due_at_startup)
//!   holds for its `partner_state.last_success` runs once with
//!   [`Trigger::CatchUp`], however many occurrences were missed. A partner
//!   that never succeeded is not caught up: it waits for its first occurrence.
//! - **No overlap**: a firing that finds the partner's previous run (or
//!   catch-up) still going is logged at WARN and skipped. Across processes
//!   the pipeline's per-partner lock file keeps a manual `once` out too.
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
use crate::schedule::{sleep_until, Clock};

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
    run_observed(config, clock, shutdown, None).await
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

/// `partner_state.last_success` of every partner that has one.
fn last_successes(config: &Config) -> Result<HashMap<String, DateTime<Utc>>, DaemonError> {
    let conn = db::open(&config.daemon.database)?;
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
) -> Result<(), DaemonError> {
    // Opens (and migrates) the database up front: a bad path fails the start,
    // not the first run hours later.
    let last = last_successes(&config)?;
    let tz = config.daemon.timezone;
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(config.daemon.max_concurrent)),
        stop: Arc::new(AtomicBool::new(false)),
        shutdown: shutdown.clone(),
        events,
        boards: Mutex::new(vec![Board::default(); config.partners.len()]),
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

    let mut loops = JoinSet::new();
    for (idx, p) in shared.config.partners.iter().enumerate() {
        let last_success = last.get(&p.id).copied();
        let catch_up = p.schedule.due_at_startup(last_success, now, tz);
        if catch_up {
            tracing::info!(
                partner = %p.id,
                last_success = %last_success.map(|t| zoned(t, tz)).unwrap_or_default(),
                "an occurrence was missed while the daemon was down: catching up once now"
            );
        }
        loops.spawn(partner_loop(shared.clone(), idx, catch_up));
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
    let mut running: Option<JoinHandle<()>> = None;
    if catch_up {
        running = Some(spawn_job(&sh, idx, Trigger::CatchUp));
    }
    loop {
        let now = sh.clock.now();
        let Some(next) = partner.schedule.next_after(now, tz) else {
            tracing::warn!(partner = %partner.id, schedule = %partner.schedule, "the schedule has no further occurrence: partner idle");
            sh.set_next(idx, None);
            break;
        };
        sh.set_next(idx, Some(next));
        sh.emit(Event::Scheduled {
            partner: partner.id.clone(),
            at: next,
        });
        tracing::debug!(partner = %partner.id, next = %zoned(next, tz), "next run scheduled");
        if !sleep_until(&*sh.clock, next, &mut shutdown).await {
            break;
        }
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
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
        running = Some(spawn_job(&sh, idx, Trigger::Schedule));
    }
    if let Some(h) = running {
        if let Err(e) = h.await {
            tracing::error!(partner = %partner.id, error = %e, "run task failed");
        }
    }
}

/// Start one run of partner `idx`: wait for a concurrency permit (or
/// shutdown), then the blocking pipeline on the blocking pool.
fn spawn_job(sh: &Arc<Shared>, idx: usize, trigger: Trigger) -> JoinHandle<()> {
    let sh = sh.clone();
    tokio::spawn(async move {
        let id = sh.config.partners[idx].id.clone();
        let mut shutdown = sh.shutdown.clone();
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => None,
            p = sh.permits.clone().acquire_owned() => p.ok(),
        };
        let Some(permit) = permit else {
            tracing::info!(partner = %id, "shutdown: not starting the queued run");
            return;
        };
        if sh.stop.load(Ordering::SeqCst) {
            tracing::info!(partner = %id, "shutdown: not starting the queued run");
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
                },
            )
        })
        .await;
        drop(permit);
        match result {
            Ok(report) => {
                if report.run_id.is_none() {
                    // Not even recorded: most often the partner's lock is held
                    // by a manual `milebatch once`.
                    tracing::warn!(partner = %id, error = report.error.as_deref().unwrap_or(""), "run did not start");
                }
                sh.set_last(idx, now, &report.outcome);
                sh.emit(Event::Finished {
                    partner: id,
                    trigger,
                    report: Box::new(report),
                });
            }
            Err(e) => {
                tracing::error!(partner = %id, error = %e, "the run panicked; the partner keeps its schedule");
                sh.set_last(idx, now, "panicked");
            }
        }
    })
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
