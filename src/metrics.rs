//! `GET /metrics`: Prometheus text, for the daemon and for `serve`, on a
//! listener of its own (`[daemon] metrics_listen`, `[server]
//! metrics_listen`; plain HTTP, loopback unless allowed in the config).
//!
//! What must stay true:
//! - run, file and credit figures are read from the DATABASE at scrape time,
//!   so the daemon and `serve` export the same numbers, and a restart loses
//!   nothing; only the HTTP request counters of `serve` live in the process;
//! - a scrape is cheap on a large ledger: it never reads `ledger`. Credits
//!   come from `files` (a credited file's `credited`/`miles` are its ledger
//!   rows, committed in the same transaction) and from `api_exchanges`, read
//!   incrementally by id (rows are append-only: triggers refuse deletes and
//!   changes of status), reversals from `reversals`;
//! - every counter only grows: credits are gross, and what reversals took
//!   back is a counter of its own (`milebatch_reversed_*`);
//! - label values are escaped (a file name is the partner's text) and a
//!   route label is the matched route template, never the raw path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::Connection;
use tokio::sync::watch;

use crate::db;
use crate::pipeline::validate::FileCode;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("reading metrics from the database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("serving metrics on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Upper bounds (seconds) of the request latency histogram.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A file name is the partner's text: at most this many characters of it go
/// into a label.
const MAX_LABEL_CHARS: usize = 200;

/// Every outcome a finished run can have (`RunReport::outcome_name`, and
/// `missed`): each has its `milebatch_runs_total` series from the start,
/// at 0, so that `increase()` and alerts see the first one.
const RUN_OUTCOMES: [&str; 7] = [
    "ok",
    "no-file",
    "missed",
    "refused",
    "failed",
    "skipped",
    "tidy-failed",
];

/// The channels a credit comes by.
const CHANNELS: [&str; 3] = ["pull", "upload", "api"];

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// In-process request counters of `serve`, by matched route.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
    /// What the connection layer (`web::conn`) did, counted lock-free.
    pub conns: ConnCounters,
}

/// Connection counters of `serve` (atomics: the accept loop and every
/// connection task update them without a lock).
#[derive(Default)]
pub struct ConnCounters {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused at accept: `max_connections` reached.
    pub refused_total_cap: AtomicU64,
    /// Refused at accept: `max_connections_per_address` reached.
    pub refused_address_cap: AtomicU64,
    /// Closed: no whole request header within `header_timeout`.
    pub closed_header_timeout: AtomicU64,
    /// Closed: no request in progress for `idle_timeout`.
    pub closed_idle: AtomicU64,
    /// Closed: the TLS handshake did not finish within its deadline.
    pub tls_handshake_timeout: AtomicU64,
    /// The TLS handshake failed (bad client, scanner, wrong protocol).
    pub tls_handshake_failed: AtomicU64,
}

impl ConnCounters {
    fn render(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            out,
            "milebatch_http_connections_open",
            "gauge",
            "connections serve holds open now",
        );
        let _ = writeln!(out, "milebatch_http_connections_open {}", get(&self.open));
        header(
            out,
            "milebatch_http_connections_accepted_total",
            "counter",
            "connections serve accepted and served",
        );
        let _ = writeln!(
            out,
            "milebatch_http_connections_accepted_total {}",
            get(&self.accepted)
        );
        header(
            out,
            "milebatch_http_connections_refused_total",
            "counter",
            "connections closed at accept because a [server] connection cap was reached",
        );
        for (limit, a) in [
            ("max_connections", &self.refused_total_cap),
            ("max_connections_per_address", &self.refused_address_cap),
        ] {
            let _ = writeln!(
                out,
                "milebatch_http_connections_refused_total{{limit=\"{limit}\"}} {}",
                get(a)
            );
        }
        header(
            out,
            "milebatch_http_connections_closed_total",
            "counter",
            "connections serve closed on a [server] deadline",
        );
        for (reason, a) in [
            ("header_timeout", &self.closed_header_timeout),
            ("idle_timeout", &self.closed_idle),
            ("tls_handshake_timeout", &self.tls_handshake_timeout),
            ("tls_handshake_failed", &self.tls_handshake_failed),
        ] {
            let _ = writeln!(
                out,
                "milebatch_http_connections_closed_total{{reason=\"{reason}\"}} {}",
                get(a)
            );
        }
        header(
            out,
            "milebatch_tls_sni_ip_address_total",
            "counter",
            "TLS clients that sent an IP address as server name (ignored)",
        );
        let _ = writeln!(
            out,
            "milebatch_tls_sni_ip_address_total {}",
            get(&crate::web::ratelog::SNI_IP_ADDRESS)
        );
    }
}

/// The matched route of a request, handed from the inner layer (which runs
/// after routing) to the outer one (which sees every response, 404s too).
#[derive(Clone)]
struct Route(MatchedPath);

/// The route template `resp` came from (`unmatched` for none), as
/// [`remember_route`] noted it.
pub fn route_of(resp: &Response) -> &str {
    resp.extensions()
        .get::<Route>()
        .map_or("unmatched", |r| r.0.as_str())
}

impl HttpMetrics {
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteStats::default());
        }
        let Some(r) = routes.get_mut(route) else {
            return;
        };
        *r.by_status.entry(status).or_insert(0) += 1;
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        r.buckets[i] += 1;
        r.sum += secs;
        r.count += 1;
    }

    fn render(&self, out: &mut String) {
        self.conns.render(out);
        let Ok(routes) = self.routes.lock() else {
            return;
        };
        header(
            out,
            "milebatch_http_requests_total",
            "counter",
            "HTTP requests answered by serve, by matched route and status",
        );
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "milebatch_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        header(
            out,
            "milebatch_http_request_duration_seconds",
            "histogram",
            "time from request to response head, by matched route",
        );
        for (route, r) in routes.iter() {
            let route = escape(route);
            let mut cum = 0;
            for (i, n) in r.buckets.iter().enumerate() {
                cum += n;
                let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "milebatch_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(
                out,
                "milebatch_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                r.sum
            );
            let _ = writeln!(
                out,
                "milebatch_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                r.count
            );
        }
    }
}

/// The route layer that tells the edge layer (`web::edge`) which route
/// template answered: `app.route_layer(from_fn(remember_route))`.
pub async fn remember_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(Route(path));
    resp
}

/// API credits since the last scrape's id. `NOT INDEXED`: otherwise
/// SQLite walks `api_exchanges_by_partner` whole for the GROUP BY (0.12 s
/// at 1M exchanges) instead of seeking the rowid range (pinned by a test).
const API_SINCE: &str = "SELECT partner, count(*), coalesce(sum(miles), 0), max(id)
     FROM api_exchanges NOT INDEXED WHERE id > ?1 AND status = 201 GROUP BY partner";

/// API credits per partner, read by id since the last scrape.
#[derive(Default)]
struct ApiTotals {
    last_id: i64,
    by_partner: BTreeMap<String, (u64, i64)>,
}

/// What a `/metrics` listener renders.
pub struct Metrics {
    database: PathBuf,
    /// Configured partners: each gets its series even before its first run.
    partners: Vec<String>,
    http: Option<Arc<HttpMetrics>>,
    api: Mutex<ApiTotals>,
}

impl Metrics {
    pub fn new(database: PathBuf, partners: Vec<String>, http: Option<Arc<HttpMetrics>>) -> Self {
        Metrics {
            database,
            partners,
            http,
            api: Mutex::default(),
        }
    }

    /// The whole exposition: database figures, then `serve`'s request counters.
    pub fn render(&self) -> Result<String, MetricsError> {
        let start = Instant::now();
        let conn = db::open_query(&self.database)?;
        let mut out = String::with_capacity(8 * 1024);
        self.render_db(&conn, &mut out)?;
        // The daemon's scheduled verify, from `verify_runs` (both processes
        // show it: whichever Prometheus scrapes).
        out.push_str(&crate::money::verify::metrics_lines(&conn));
        if let Some(h) = &self.http {
            h.render(&mut out);
        }
        header(
            &mut out,
            "milebatch_metrics_scrape_duration_seconds",
            "gauge",
            "time this scrape took to read the database",
        );
        let _ = writeln!(
            out,
            "milebatch_metrics_scrape_duration_seconds {}",
            start.elapsed().as_secs_f64()
        );
        Ok(out)
    }

    fn render_db(&self, conn: &Connection, out: &mut String) -> Result<(), MetricsError> {
        // One read transaction: every figure from the same snapshot.
        conn.execute_batch("BEGIN")?;
        let r = self.render_snapshot(conn, out);
        let _ = conn.execute_batch("COMMIT");
        r
    }

    fn render_snapshot(&self, conn: &Connection, out: &mut String) -> Result<(), MetricsError> {
        // Credits and miles by (partner, channel): files, then the API.
        let mut credits: BTreeMap<(String, String), (u64, i64)> = BTreeMap::new();
        for p in &self.partners {
            for ch in CHANNELS {
                credits.insert((p.clone(), ch.into()), (0, 0));
            }
        }
        let mut st = conn.prepare(
            "SELECT partner, channel, sum(credited), sum(miles) FROM files
             WHERE outcome IN ('credited', 'reversed') GROUP BY partner, channel",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (p, ch, n, miles) = row?;
            credits.insert((p, ch), (n.max(0) as u64, miles));
        }
        {
            let mut api = self.api.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = conn.prepare(API_SINCE)?;
            let mut max_seen = api.last_id;
            let rows = st.query_map([api.last_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut fresh = Vec::new();
            for row in rows {
                fresh.push(row?);
            }
            // Rejected exchanges take ids too: move past them as well, so the
            // next scrape starts where this snapshot ends.
            let top: i64 =
                conn.query_row("SELECT coalesce(max(id), 0) FROM api_exchanges", [], |r| {
                    r.get(0)
                })?;
            for (p, n, miles, max_id) in fresh {
                let e = api.by_partner.entry(p).or_insert((0, 0));
                e.0 += n.max(0) as u64;
                e.1 += miles;
                max_seen = max_seen.max(max_id);
            }
            api.last_id = max_seen.max(top);
            for (p, (n, miles)) in &api.by_partner {
                credits.insert((p.clone(), "api".into()), (*n, *miles));
            }
        }
        header(
            out,
            "milebatch_credits_total",
            "counter",
            "ledger rows credited (gross: reversals are milebatch_reversed_credits_total), by partner and channel",
        );
        for ((p, ch), (n, _)) in &credits {
            let _ = writeln!(
                out,
                "milebatch_credits_total{{partner=\"{}\",channel=\"{ch}\"}} {n}",
                escape(p)
            );
        }
        header(
            out,
            "milebatch_miles_total",
            "counter",
            "miles credited (gross: reversals are milebatch_reversed_miles_total), by partner and channel",
        );
        for ((p, ch), (_, miles)) in &credits {
            let _ = writeln!(
                out,
                "milebatch_miles_total{{partner=\"{}\",channel=\"{ch}\"}} {miles}",
                escape(p)
            );
        }

        // Reversals, by the channel of what they took back.
        let mut st = conn.prepare(
            "SELECT r.partner, CASE WHEN r.exchange IS NOT NULL THEN 'api' ELSE coalesce(f.channel, 'pull') END,
                    sum(r.rows), sum(r.miles)
             FROM reversals r LEFT JOIN files f ON f.id = r.file_id GROUP BY 1, 2",
        )?;
        let rev = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // Every partner and channel from the start, at 0 until a reversal.
        let mut reversed: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for p in &self.partners {
            for ch in CHANNELS {
                reversed.insert((p.clone(), ch.into()), (0, 0));
            }
        }
        for (p, ch, n, miles) in rev {
            reversed.insert((p, ch), (n, miles));
        }
        header(
            out,
            "milebatch_reversed_credits_total",
            "counter",
            "compensating ledger rows written by reversals, by partner and channel of the reversed credit",
        );
        for ((p, ch), (n, _)) in &reversed {
            let _ = writeln!(
                out,
                "milebatch_reversed_credits_total{{partner=\"{}\",channel=\"{}\"}} {n}",
                escape(p),
                escape(ch)
            );
        }
        header(
            out,
            "milebatch_reversed_miles_total",
            "counter",
            "miles taken back by reversals (positive), by partner and channel",
        );
        for ((p, ch), (_, miles)) in &reversed {
            let _ = writeln!(
                out,
                "milebatch_reversed_miles_total{{partner=\"{}\",channel=\"{}\"}} {miles}",
                escape(p),
                escape(ch)
            );
        }

        // Runs by outcome (dry runs excluded: they credit nothing).
        let mut runs: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut missed: BTreeMap<String, i64> = BTreeMap::new();
        for p in &self.partners {
            for o in RUN_OUTCOMES {
                runs.insert((p.clone(), o.into()), 0);
            }
            missed.insert(p.clone(), 0);
        }
        let mut st = conn.prepare(
            "SELECT partner, outcome, count(*) FROM runs
             WHERE outcome IS NOT NULL AND dry_run = 0 GROUP BY partner, outcome",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (p, o, n) = row?;
            if o == "missed" {
                missed.insert(p.clone(), n);
            }
            runs.insert((p, o), n);
        }
        header(
            out,
            "milebatch_runs_total",
            "counter",
            "finished runs (not dry runs), by partner and outcome (ok, no-file, missed, refused, failed, skipped, tidy-failed)",
        );
        for ((p, o), n) in &runs {
            let _ = writeln!(
                out,
                "milebatch_runs_total{{partner=\"{}\",outcome=\"{}\"}} {n}",
                escape(p),
                escape(o)
            );
        }
        header(
            out,
            "milebatch_missed_deliveries_total",
            "counter",
            "scheduled runs of an expect_file partner that found no new file",
        );
        for (p, n) in &missed {
            let _ = writeln!(
                out,
                "milebatch_missed_deliveries_total{{partner=\"{}\"}} {n}",
                escape(p)
            );
        }

        // Refused (and duplicate) files, by file code; the last one named.
        let mut st = conn.prepare(
            "SELECT partner, coalesce(file_code, ''), count(*) FROM files
             WHERE outcome IN ('refused', 'duplicate') GROUP BY 1, 2",
        )?;
        let refused = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // Every partner and file code from the start, at 0 until a refusal.
        let mut by_code: BTreeMap<(String, String), i64> = BTreeMap::new();
        for p in &self.partners {
            for code in FileCode::ALL {
                by_code.insert((p.clone(), code.as_str().into()), 0);
            }
        }
        for (p, code, n) in refused {
            by_code.insert((p, code), n);
        }
        header(
            out,
            "milebatch_refused_files_total",
            "counter",
            "files refused whole (F002-F008) or as duplicates (F001), by partner and file code",
        );
        for ((p, code), n) in &by_code {
            let _ = writeln!(
                out,
                "milebatch_refused_files_total{{partner=\"{}\",code=\"{}\"}} {n}",
                escape(p),
                escape(code)
            );
        }
        // SQLite: the bare columns come from the row holding max(id).
        let mut st = conn.prepare(
            "SELECT partner, max(id), name, coalesce(file_code, ''), started_at FROM files
             WHERE outcome IN ('refused', 'duplicate') GROUP BY partner",
        )?;
        let last = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        header(
            out,
            "milebatch_last_refused_file_info",
            "gauge",
            "the partner's most recent refused or duplicate file; the value is its file id (milebatch files)",
        );
        for (p, id, name, code, _) in &last {
            let _ = writeln!(
                out,
                "milebatch_last_refused_file_info{{partner=\"{}\",file=\"{}\",code=\"{}\"}} {id}",
                escape(p),
                escape(name),
                escape(code)
            );
        }
        header(
            out,
            "milebatch_last_refused_file_timestamp_seconds",
            "gauge",
            "when the partner's most recent refused or duplicate file was received",
        );
        for (p, _, _, _, at) in &last {
            let _ = writeln!(
                out,
                "milebatch_last_refused_file_timestamp_seconds{{partner=\"{}\"}} {}",
                escape(p),
                unix(at)
            );
        }

        // Per partner state: last success (0: never), failing streak.
        let mut state: BTreeMap<String, (i64, i64)> =
            self.partners.iter().map(|p| (p.clone(), (0, 0))).collect();
        let mut st =
            conn.prepare("SELECT partner, last_success, consecutive_failures FROM partner_state")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (p, last, fails) = row?;
            state.insert(p, (last.as_deref().map_or(0, unix), fails));
        }
        header(
            out,
            "milebatch_last_success_timestamp_seconds",
            "gauge",
            "start of the partner's last successful run (unix seconds; 0: never)",
        );
        for (p, (t, _)) in &state {
            let _ = writeln!(
                out,
                "milebatch_last_success_timestamp_seconds{{partner=\"{}\"}} {t}",
                escape(p)
            );
        }
        let n = crate::store::outbox::counts(conn, chrono::Utc::now())
            .map_err(crate::store::StoreError::into_sqlite)?;
        header(
            out,
            "milebatch_notifications",
            "gauge",
            "notification deliveries (e-mail, webhooks) by state: pending (being sent or retried), failed (gave up after 24 h), unrouted (events not yet given their deliveries)",
        );
        for (state, v) in [
            ("pending", n.pending),
            ("failed", n.failed),
            ("unrouted", n.unrouted),
        ] {
            let _ = writeln!(out, "milebatch_notifications{{state=\"{state}\"}} {v}");
        }
        header(
            out,
            "milebatch_consecutive_failed_runs",
            "gauge",
            "runs in a row that were not a success (0: the last run succeeded)",
        );
        for (p, (_, n)) in &state {
            let _ = writeln!(
                out,
                "milebatch_consecutive_failed_runs{{partner=\"{}\"}} {n}",
                escape(p)
            );
        }
        Ok(())
    }
}

fn unix(stored: &str) -> i64 {
    crate::timefmt::parse_stored(stored).map_or(0, |t| t.timestamp())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it: `\`, `"` and newlines
/// escaped, cut to [`MAX_LABEL_CHARS`] characters.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars().take(MAX_LABEL_CHARS) {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Serve `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: std::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MetricsError> {
    let addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Serve {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let err = |source| MetricsError::Serve { addr, source };
    listener.set_nonblocking(true).map_err(err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(err)?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(err)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_credits_are_read_by_rowid_range() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(&dir.path().join("m.db")).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {API_SINCE}"))
            .unwrap()
            .query_map([0], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("INTEGER PRIMARY KEY (rowid>?)")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.starts_with("SCAN")), "{plan:?}");
    }

    /// A scrape carries the last scheduled verify's result: a tampered
    /// balance turns `milebatch_verify_last_ok` to 0 at the next verify.
    #[test]
    fn render_includes_the_last_scheduled_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = db::open(&path).unwrap();
        conn.execute(
            "INSERT INTO members(id, member_id, email, status) VALUES (1, 'M1', 'a@x', 0)",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO balances(member, miles) VALUES (1, 5)", [])
            .unwrap();
        let m = Metrics::new(path.clone(), vec![], None);
        crate::money::verify::scheduled(&path, chrono::Utc::now()).unwrap();
        let out = m.render().unwrap();
        assert!(out.contains("\nmilebatch_verify_last_ok 0\n"), "{out}");
        assert!(out.contains("\nmilebatch_verify_problems 1\n"), "{out}");
    }

    #[test]
    fn render_counts_notifications_by_state() {
        use crate::store::outbox;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = db::open(&path).unwrap();
        let now = chrono::Utc::now();
        let event = || {
            let data = serde_json::json!({});
            outbox::enqueue(&conn, "file.refused", Some("p"), &data, now).unwrap()
        };
        for _ in 0..3 {
            let route = outbox::Route {
                channel: "email",
                target: "a@x",
                next_at: 0,
                give_up_at: 1,
            };
            outbox::route(&conn, &event(), &[route]).unwrap();
        }
        event(); // not routed yet
        let first = outbox::due(&conn, 0, 1).unwrap()[0].id;
        outbox::attempt_failed(&conn, first, "gone", None).unwrap();
        let out = Metrics::new(path, vec![], None).render().unwrap();
        for line in [
            "milebatch_notifications{state=\"pending\"} 2",
            "milebatch_notifications{state=\"failed\"} 1",
            "milebatch_notifications{state=\"unrouted\"} 1",
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape(&"x".repeat(500)).len(), MAX_LABEL_CHARS);
    }

    #[test]
    fn histogram_is_cumulative_and_ends_at_inf() {
        let h = HttpMetrics::default();
        h.observe("/a", 201, Duration::from_micros(500));
        h.observe("/a", 201, Duration::from_millis(30));
        h.observe("/a", 422, Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("milebatch_http_requests_total{route=\"/a\",status=\"201\"} 2"));
        assert!(out.contains("milebatch_http_requests_total{route=\"/a\",status=\"422\"} 1"));
        assert!(
            out.contains("_bucket{route=\"/a\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("_bucket{route=\"/a\",le=\"0.05\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("_bucket{route=\"/a\",le=\"10\"} 2\n"), "{out}");
        assert!(
            out.contains("_bucket{route=\"/a\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("_count{route=\"/a\"} 3\n"), "{out}");
    }
}
