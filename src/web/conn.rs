//! The connection layer of `serve`: our own accept loop over hyper's
//! HTTP/1.1 + HTTP/2 connection builder, so that no client, however idle
//! or slow, holds a connection (a file descriptor, its buffers) for long.
//!
//! What must stay true:
//! - at most `max_connections` open, and `max_connections_per_address`
//!   from one IP; the excess is closed at accept, before any TLS work,
//!   counted in `/metrics` and WARNed at most once a minute;
//! - every connection is bounded in time: the TLS handshake
//!   (`tls_handshake_timeout`), the first request's headers and each
//!   HTTP/2 header block (`header_timeout`; HTTP/1.1's is hyper's own),
//!   and no request in progress for `idle_timeout` (then GOAWAY for
//!   HTTP/2); a connection past a header deadline is dropped at once, one
//!   asked to close gets `header_timeout` more to finish, then is dropped;
//! - the request path pays two atomic updates, never a lock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::header_limit;
use super::ratelog::WarnEvery;
use crate::config::ConnLimits;

/// The most a client may send before its headers end (a header flood gets
/// 431 or a closed connection, never unbounded memory).
pub const MAX_HEADER_BUF: usize = 64 * 1024;

/// What every connection task shares.
struct Ctx {
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    counters: Arc<crate::metrics::HttpMetrics>,
    open: Open,
    refused_warn: WarnEvery,
    shutdown: watch::Receiver<bool>,
}

/// Hyper's builder with `limits`: the HTTP/1.1 header deadline and buffer,
/// and HTTP/2's header list, streams and keep-alive PINGs.
fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BUF);
    // No `.max_headers(…)`: hyper's default is 100 fields, header_limit's
    // own cap, and a request over it gets hyper's bare 431, replaced on the
    // wire like the one for a head over MAX_HEADER_BUF. Setting it costs
    // two heap arrays of that many entries on every request (with 400: part
    // of a members/verify regression, docs/performance.md).
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BUF as u32)
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    b
}

/// Serve `app` on `listener` until `shutdown` turns true; then close every
/// connection gracefully, waiting at most `grace` for them.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: ConnLimits,
    counters: Arc<crate::metrics::HttpMetrics>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let ctx = Arc::new(Ctx {
        app,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        builder: builder(&limits),
        limits,
        counters,
        open: Open::default(),
        refused_warn: WarnEvery::new(Duration::from_secs(60)),
        shutdown: shutdown.clone(),
    });
    let accept_warn = WarnEvery::new(Duration::from_secs(60));
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // A dropped sender is a shutdown too.
            r = shutdown.changed() => match r {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (EMFILE) or a connection reset
                // before accept: wait a little rather than spin.
                if let Some(skipped) = accept_warn.due(Instant::now()) {
                    tracing::warn!(error = %e, skipped, "accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = match ctx.open.admit(peer.ip(), &ctx.limits, &ctx.counters) {
            Ok(g) => g,
            Err(limit) => {
                refuse(&ctx, peer, limit);
                drop(stream);
                continue;
            }
        };
        ctx.counters.conns.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(ctx.clone(), stream, peer, guard));
    }
    let deadline = Instant::now() + grace;
    while ctx.open.total() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    Total,
    PerAddress,
}

fn refuse(ctx: &Ctx, peer: SocketAddr, limit: Limit) {
    let c = &ctx.counters.conns;
    let (counter, key, cap) = match limit {
        Limit::Total => (
            &c.refused_total_cap,
            "max_connections",
            ctx.limits.max_connections,
        ),
        Limit::PerAddress => (
            &c.refused_address_cap,
            "max_connections_per_address",
            ctx.limits.max_connections_per_address,
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(skipped) = ctx.refused_warn.due(Instant::now()) {
        tracing::warn!(
            limit = key,
            cap,
            client = %peer.ip(),
            refused_since_last_warning = skipped,
            "connection refused: `[server] {key}` reached (counted in milebatch_http_connections_refused_total; this warning is logged at most once a minute)"
        );
    }
}

/// One accepted connection: the TLS handshake (bounded), then HTTP.
async fn connection(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr, _guard: Guard) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = &ctx.tls else {
        return serve_io(&ctx, stream, peer, false).await;
    };
    let c = &ctx.counters.conns;
    match tokio::time::timeout(ctx.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_io(&ctx, tls, peer, true).await,
        Ok(Err(e)) => {
            c.tls_handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            c.tls_handshake_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, "TLS handshake not finished in time: closed");
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Close {
    HeaderTimeout,
    Idle,
}

async fn serve_io<I>(ctx: &Ctx, io: I, peer: SocketAddr, tls: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(Instant::now()));
    let io = Watched {
        inner: io,
        frames: Frames::default(),
        state: state.clone(),
        tls,
        replacing: None,
    };
    let svc = PerConn {
        app: ctx.app.clone(),
        peer,
        state: state.clone(),
    };
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut shutdown = ctx.shutdown.clone();
    let mut hard_stop: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            why = watchdog(&state, &ctx.limits), if hard_stop.is_none() => {
                let c = &ctx.counters.conns;
                tracing::debug!(client = %peer, reason = ?why, "closing the connection");
                match why {
                    // Half a request: nothing to finish, closed at once (a
                    // graceful HTTP/2 close would wait for a PING answer).
                    Close::HeaderTimeout => {
                        c.closed_header_timeout.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // GOAWAY (HTTP/2), or a plain close between requests.
                    Close::Idle => {
                        c.closed_idle.fetch_add(1, Ordering::Relaxed);
                        conn.as_mut().graceful_shutdown();
                        hard_stop = Some(Instant::now() + ctx.limits.header_timeout);
                    }
                }
            }
            _ = shutdown.changed(), if hard_stop.is_none() => {
                conn.as_mut().graceful_shutdown();
                hard_stop = Some(Instant::now() + super::GRACE);
            }
            _ = tokio::time::sleep_until(hard_stop.unwrap_or_else(Instant::now)), if hard_stop.is_some() => {
                tracing::debug!(client = %peer, "connection did not close in time: dropped");
                return;
            }
        }
    }
}

/// Resolves when `state` has passed one of `limits`' deadlines.
async fn watchdog(state: &ConnState, limits: &ConnLimits) -> Close {
    loop {
        let now = Instant::now();
        match state.check(now, limits) {
            Ok(why) => return why,
            Err(next) => tokio::time::sleep_until(next).await,
        }
    }
}

/// The open connections, overall and per client address.
#[derive(Default)]
struct Open {
    total: Arc<AtomicUsize>,
    // Touched once per accept and once per close, never per request.
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Open {
    fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn admit(
        &self,
        ip: IpAddr,
        limits: &ConnLimits,
        metrics: &Arc<crate::metrics::HttpMetrics>,
    ) -> Result<Guard, Limit> {
        if self.total() >= limits.max_connections {
            return Err(Limit::Total);
        }
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_address {
            return Err(Limit::PerAddress);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics.conns.open.fetch_add(1, Ordering::Relaxed);
        Ok(Guard {
            ip,
            total: self.total.clone(),
            by_ip: self.by_ip.clone(),
            metrics: metrics.clone(),
        })
    }
}

/// One admitted connection: counted until dropped.
struct Guard {
    ip: IpAddr,
    total: Arc<AtomicUsize>,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    metrics: Arc<crate::metrics::HttpMetrics>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.metrics.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// "None" in the millisecond fields of [`ConnState`].
const NEVER: u64 = u64::MAX;

/// What a connection is doing, for its watchdog: times are milliseconds
/// since `base`.
struct ConnState {
    base: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    idle_since: AtomicU64,
    /// When the HTTP/2 header block being received began.
    header_block_since: AtomicU64,
}

impl ConnState {
    fn new(base: Instant) -> ConnState {
        ConnState {
            base,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            header_block_since: AtomicU64::new(NEVER),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// `Ok`: close now, and why; `Err`: check again then.
    fn check(&self, now: Instant, limits: &ConnLimits) -> Result<Close, Instant> {
        let header = limits.header_timeout.as_millis() as u64;
        // Re-check at least this often: a header block may begin while
        // the watchdog sleeps toward a later deadline.
        let recheck = now + limits.header_timeout / 4;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // A request's body has its own deadline in its handler.
            return Err(recheck);
        }
        let t = self.ms(now);
        let mut next = self.at(t) + limits.idle_timeout;
        let block = self.header_block_since.load(Ordering::Acquire);
        if block != NEVER {
            if t >= block.saturating_add(header) {
                return Ok(Close::HeaderTimeout);
            }
            next = next.min(self.at(block + header));
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            if t >= header {
                return Ok(Close::HeaderTimeout);
            }
            next = next.min(self.at(header));
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        let idle_ms = limits.idle_timeout.as_millis() as u64;
        if t >= idle.saturating_add(idle_ms) {
            return Ok(Close::Idle);
        }
        Err(next.min(self.at(idle + idle_ms)).min(recheck))
    }
}

/// The application for one connection: adds the client's address (for
/// `ConnectInfo`) and counts requests in progress for the watchdog.
#[derive(Clone)]
struct PerConn {
    app: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
}

/// A request in progress on its connection, until dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.ms(Instant::now()), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl tower_service::Service<hyper::Request<Incoming>> for PerConn {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.state.requests.fetch_add(1, Ordering::Release);
        let guard = InFlight(self.state.clone());
        let fut = tower_service::Service::call(&mut self.app, req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// The connection's bytes, read through an HTTP/2 frame-header parser so
/// the watchdog knows when a header block is open (hyper does not say);
/// written with hyper's bare HTTP/1.1 431 replaced by ours
/// ([`header_limit`]).
struct Watched<I> {
    inner: I,
    frames: Frames,
    state: Arc<ConnState>,
    tls: bool,
    /// Our 431 being written in place of hyper's, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() && !matches!(this.frames, Frames::Off) {
                if let Some(event) = this.frames.feed(new) {
                    let v = match event {
                        Block::Opened => this.state.ms(Instant::now()),
                        Block::Closed => NEVER,
                    };
                    this.state.header_block_since.store(v, Ordering::Release);
                }
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // HTTP/1 only (HTTP/2 never got past the preface check to `Off`).
        if this.replacing.is_none()
            && matches!(this.frames, Frames::Off)
            && header_limit::is_bare_431(buf)
        {
            this.replacing = Some((header_limit::http1_answer(this.tls), 0));
        }
        let Some((ours, sent)) = &mut this.replacing else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        // hyper closes the connection after its 431: what it writes is
        // taken as written once ours is out.
        while *sent < ours.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &ours[*sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *sent += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(first) = first {
            if self.replacing.is_some()
                || (matches!(self.frames, Frames::Off) && header_limit::is_bare_431(first))
            {
                return self.poll_write(cx, first);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the frame parser is in the client's byte stream. Only frame
/// headers are read; payloads are skipped by length.
enum Frames {
    /// This many bytes of the preface seen so far.
    Preface(usize),
    /// A frame header, this many of its 9 bytes seen so far.
    Header([u8; 9], usize),
    /// Skipping a payload; a header block ends with it if `ends_block`.
    Payload { left: usize, ends_block: bool },
    /// Not HTTP/2: nothing to watch (hyper bounds HTTP/1.1 itself).
    Off,
}

impl Default for Frames {
    fn default() -> Self {
        Frames::Preface(0)
    }
}

/// A header block began or ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Opened,
    Closed,
}

impl Frames {
    /// Parse `bytes`; the last change of the header-block state, if any.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<Block> {
        let mut event = None;
        while !bytes.is_empty() {
            match self {
                Frames::Off => break,
                Frames::Preface(seen) => {
                    let n = (PREFACE.len() - *seen).min(bytes.len());
                    if bytes[..n] != PREFACE[*seen..*seen + n] {
                        *self = Frames::Off;
                        break;
                    }
                    *seen += n;
                    bytes = &bytes[n..];
                    if *seen == PREFACE.len() {
                        *self = Frames::Header([0; 9], 0);
                    }
                }
                Frames::Header(h, seen) => {
                    let n = (9 - *seen).min(bytes.len());
                    h[*seen..*seen + n].copy_from_slice(&bytes[..n]);
                    *seen += n;
                    bytes = &bytes[n..];
                    if *seen == 9 {
                        let len =
                            usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                        let (kind, flags) = (h[3], h[4]);
                        let in_block = kind == HEADERS || kind == CONTINUATION;
                        if kind == HEADERS {
                            event = Some(Block::Opened);
                        }
                        let ends_block = in_block && flags & END_HEADERS != 0;
                        *self = Frames::Payload {
                            left: len,
                            ends_block,
                        };
                    }
                }
                Frames::Payload { left, ends_block } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if *ends_block {
                            event = Some(Block::Closed);
                        }
                        *self = Frames::Header([0; 9], 0);
                    }
                }
            }
        }
        // A zero-length payload ends at once.
        if let Frames::Payload {
            left: 0,
            ends_block,
        } = *self
        {
            if ends_block {
                event = Some(Block::Closed);
            }
            *self = Frames::Header([0; 9], 0);
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn http1_turns_the_parser_off() {
        let mut f = Frames::default();
        assert_eq!(f.feed(b"GET / HTTP/1.1\r\n"), None);
        assert!(matches!(f, Frames::Off));
    }

    #[test]
    fn a_header_block_opens_and_closes_across_reads() {
        let mut f = Frames::default();
        assert_eq!(f.feed(&PREFACE[..10]), None);
        assert_eq!(f.feed(&PREFACE[10..]), None);
        // SETTINGS: no block.
        assert_eq!(f.feed(&frame(0x4, 0, &[0; 6])), None);
        // HEADERS without END_HEADERS, byte by byte: open.
        let h = frame(HEADERS, 0, b"abc");
        let mut last = None;
        for b in &h {
            last = f.feed(std::slice::from_ref(b)).or(last);
        }
        assert_eq!(last, Some(Block::Opened));
        // CONTINUATION with END_HEADERS: closed.
        assert_eq!(
            f.feed(&frame(CONTINUATION, END_HEADERS, b"de")),
            Some(Block::Closed)
        );
        // A whole HEADERS frame in one read ends where it began.
        assert_eq!(
            f.feed(&frame(HEADERS, END_HEADERS, b"x")),
            Some(Block::Closed)
        );
        // An empty CONTINUATION that ends a block.
        assert_eq!(f.feed(&frame(HEADERS, 0, b"x")), Some(Block::Opened));
        assert_eq!(
            f.feed(&frame(CONTINUATION, END_HEADERS, b"")),
            Some(Block::Closed)
        );
    }

    #[test]
    fn the_watchdog_deadlines() {
        let base = Instant::now();
        let limits = ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnLimits::default()
        };
        let s = ConnState::new(base);
        let at = |secs| base + Duration::from_secs(secs);
        // No request yet: the first request's header deadline.
        assert!(s.check(at(9), &limits).is_err());
        assert_eq!(s.check(at(10), &limits), Ok(Close::HeaderTimeout));
        // A request done at 5 s: idle from then.
        s.requests.store(1, Ordering::Release);
        s.idle_since.store(5_000, Ordering::Release);
        assert!(s.check(at(64), &limits).is_err());
        assert_eq!(s.check(at(65), &limits), Ok(Close::Idle));
        // A header block open since 20 s.
        s.header_block_since.store(20_000, Ordering::Release);
        assert!(s.check(at(29), &limits).is_err());
        assert_eq!(s.check(at(30), &limits), Ok(Close::HeaderTimeout));
        // A request in progress: nothing closes it here.
        s.in_flight.store(1, Ordering::Release);
        assert!(s.check(at(100), &limits).is_err());
    }
}
