//! `milebatch serve` under clients that open connections and never finish
//! a request (issue 20): thousands of idle HTTP/2 connections (TLS and the
//! preface only, or an unfinished header block) and slow HTTP/1.1 ones.
//! A normal client still gets its 201 at once, the idle ones are closed on
//! the `[server]` deadlines, the connection caps refuse the excess at
//! accept (counted in /metrics, one WARN), and the defaults are what
//! docs/operations-server.md says.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::{metrics_url, sample, scrape, tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::Workspace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const API: &str = "[partner.api]\nenabled = true\ndaily_miles_limit = 1000000\n";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Each test opens thousands of sockets: raise this process's soft limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 10_000,
        "the hard NOFILE limit {} is too low for this test",
        lim.rlim_cur
    );
}

/// A workspace with partner `shop` (API enabled), the demo members, and a
/// TLS `[server]` section ending with `server_keys`.
fn start(server_keys: &str) -> (Workspace, Serve) {
    let ca = TestCa::new();
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "{}{server_keys}metrics_listen = \"127.0.0.1:0\"\n\n{}{API}\n",
            tls_server_section(&ca),
            ws.scheduled_partner("shop", "daily 03:00"),
        ),
    );
    ws.demo_members();
    let s = Serve::start(&ws, Some(ca));
    (ws, s)
}

fn addr(s: &Serve) -> SocketAddr {
    s.base.trim_start_matches("https://").parse().unwrap()
}

fn tls_client(s: &Serve, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = s.ca.as_ref().unwrap().ca_pem_bytes();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn connect_from(
    tls: &tokio_rustls::TlsConnector,
    to: SocketAddr,
    from: Option<&str>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        sock.bind(format!("{ip}:0").parse().unwrap())?;
    }
    let tcp = sock.connect(to).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(20), tls.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// An HTTP/2 frame header and payload on stream `id`.
fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Read until the server closes (EOF or error); how long after `since`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut s: S, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024.0
}

/// One normal API call on a new connection: status and time taken.
fn credit(s: &Serve, key: &str, idem: &str) -> (u16, Duration) {
    let c = s.client();
    let t = Instant::now();
    let r = c
        .post(s.url("/api/v1/exchanges"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(r#"{"member":"NM0000000001","partner_key":"ORDER-1","miles":10}"#)
        .send()
        .unwrap();
    (r.status().as_u16(), t.elapsed())
}

#[test]
fn thousands_of_idle_connections_neither_starve_a_client_nor_stay_open() {
    raise_nofile();
    // Long enough to open 4,000 TLS connections on a busy 2-core machine
    // (a debug build: about 100 handshakes a second).
    const HEADER_TIMEOUT: u64 = 60;
    let (ws, s) = start(&format!(
        "header_timeout = \"{HEADER_TIMEOUT}s\"\nmax_connections = 6000\nmax_connections_per_address = 6000\n\
         # These clients never answer a PING: only the header deadline closes them here.\n\
         http2_keepalive_interval = \"300s\"\n"
    ));
    let key = ws.ok(&["api-key", "create", "--partner", "shop", "--label", "t"]);
    let key = key.trim().to_owned();
    let metrics = metrics_url(&s.log_text()).expect("metrics address in the log");
    let to = addr(&s);
    let idle_rss = rss_mib(s.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h2 = tls_client(&s, b"h2");
    let h1 = tls_client(&s, b"http/1.1");
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4000 {
        let (h2, h1, sem) = (h2.clone(), h1.clone(), sem.clone());
        tasks.push(rt.spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            let opened = Instant::now();
            if i % 2 == 0 {
                let mut c = connect_from(&h2, to, None).await.expect("h2 connect");
                let mut hello = PREFACE.to_vec();
                hello.extend(frame(0x4, 0, 0, &[]));
                if i % 4 == 0 {
                    // An unfinished header block: HEADERS without
                    // END_HEADERS, and no CONTINUATION ever.
                    hello.extend(frame(0x1, 0, 1, &[0x82, 0x87]));
                }
                c.write_all(&hello).await.unwrap();
                drop(permit);
                (true, closed_after(c, opened).await)
            } else {
                // Slowloris: a header line, then a byte every 2 s.
                let c = connect_from(&h1, to, None).await.expect("h1 connect");
                let (r, mut w) = tokio::io::split(c);
                w.write_all(b"POST /api/v1/exchanges HTTP/1.1\r\nHost: localhost\r\nX-A: ")
                    .await
                    .unwrap();
                drop(permit);
                tokio::spawn(async move {
                    while w.write_all(b"a").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                });
                (false, closed_after(r, opened).await)
            }
        }));
    }
    // Every connection open (a handshake behind a permit each).
    let opened_in = loop {
        let text = scrape(&metrics);
        let open = sample(&text, "milebatch_http_connections_open").unwrap_or(0.0);
        if open >= 4000.0 {
            break start.elapsed();
        }
        let done = tasks.iter().filter(|t| t.is_finished()).count();
        assert!(
            start.elapsed() < Duration::from_secs(HEADER_TIMEOUT - 3) && done == 0,
            "only {open} of 4000 connections open after {:?} ({done} ended):\n{text}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("4000 connections open in {opened_in:?}");
    // A normal client: its 201 at once, on a new connection.
    let (status, took) = credit(&s, &key, "normal-1");
    assert_eq!(status, 201);
    assert!(took < Duration::from_secs(1), "the 201 took {took:?}");
    let rss = rss_mib(s.pid());
    eprintln!(
        "serve RSS with 4000 idle connections: {rss:.1} MiB (before them: {idle_rss:.1} MiB)"
    );
    assert!(rss < 150.0, "serve RSS {rss:.1} MiB");
    // Every idle one closed on the header deadline (checked every quarter
    // of it), none before.
    let limit = Duration::from_secs(HEADER_TIMEOUT + HEADER_TIMEOUT / 4 + 3);
    for t in tasks {
        let (is_h2, after) = rt.block_on(t).unwrap();
        assert!(
            after >= Duration::from_secs(HEADER_TIMEOUT - 1) && after <= limit,
            "an idle {} connection closed after {after:?}",
            if is_h2 { "HTTP/2" } else { "HTTP/1.1" }
        );
    }
    let text = scrape(&metrics);
    assert!(
        sample(&text, "milebatch_http_connections_open").unwrap() <= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "milebatch_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .unwrap()
            >= 2000.0,
        "{text}"
    );
    // And the server is as it was.
    let (status, took) = credit(&s, &key, "normal-2");
    assert_eq!(status, 201);
    assert!(took < Duration::from_secs(1), "the 201 took {took:?}");
}

/// GET /healthz on stream `id` (HPACK: :method GET, :scheme https, :path
/// and :authority as literals).
fn get_healthz(id: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    frame(0x1, 0x4 | 0x1, id, &block)
}

/// Frames from the server until `kind` arrives: the time it did.
async fn until_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S, kind: u8) -> Option<Instant> {
    loop {
        let mut h = [0u8; 9];
        s.read_exact(&mut h).await.ok()?;
        let n = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let mut p = vec![0; n];
        s.read_exact(&mut p).await.ok()?;
        if h[3] == kind {
            return Some(Instant::now());
        }
    }
}

#[test]
fn http2_deadlines_idle_goaway_and_a_header_block_after_a_request() {
    let (_ws, s) = start("header_timeout = \"2s\"\nidle_timeout = \"4s\"\n");
    let metrics = metrics_url(&s.log_text()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2 = tls_client(&s, b"h2");
    rt.block_on(async {
        // A request, then nothing: GOAWAY after the idle timeout.
        let mut c = connect_from(&h2, addr(&s), None).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        hello.extend(get_healthz(1));
        c.write_all(&hello).await.unwrap();
        let answered = until_frame(&mut c, 0x1).await.expect("a response");
        let goaway = until_frame(&mut c, 0x7).await.expect("a GOAWAY");
        let idle = goaway - answered;
        assert!(
            idle >= Duration::from_millis(3500) && idle < Duration::from_secs(6),
            "GOAWAY {idle:?} after the answer"
        );
        // A request, then half a header block: closed on the header
        // deadline (2 s), long before the idle timeout.
        let mut c = connect_from(&h2, addr(&s), None).await.unwrap();
        c.write_all(&hello).await.unwrap();
        until_frame(&mut c, 0x1).await.expect("a response");
        let t = Instant::now();
        c.write_all(&frame(0x1, 0, 3, &[0x82])).await.unwrap();
        let after = closed_after(c, t).await;
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_millis(3500),
            "closed {after:?} after an unfinished header block"
        );
    });
    let text = scrape(&metrics);
    assert_eq!(
        sample(
            &text,
            "milebatch_http_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_http_connections_closed_total{reason=\"header_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn a_stalled_tls_handshake_is_closed_on_its_deadline() {
    let (_ws, s) = start("tls_handshake_timeout = \"2s\"\n");
    let metrics = metrics_url(&s.log_text()).unwrap();
    let t = Instant::now();
    let (answer, _) = raw_wait(addr(&s), b"\x16\x03\x01", Duration::from_secs(10));
    let after = t.elapsed();
    assert!(answer.is_empty());
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
        "a stalled handshake closed after {after:?}"
    );
    let text = scrape(&metrics);
    assert_eq!(
        sample(
            &text,
            "milebatch_http_connections_closed_total{reason=\"tls_handshake_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

/// Send `bytes` on a plain TCP connection and read until closed (or `wait`).
fn raw_wait(to: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, Duration) {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(to).unwrap();
    t.set_read_timeout(Some(wait)).unwrap();
    let start = Instant::now();
    t.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    (out, start.elapsed())
}

#[test]
fn the_connection_caps_refuse_at_accept_count_and_warn_once() {
    let (_ws, s) = start("max_connections = 8\nmax_connections_per_address = 4\n");
    let metrics = metrics_url(&s.log_text()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2 = tls_client(&s, b"h2");
    let to = addr(&s);
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(connect_from(&h2, to, Some("127.0.0.1")).await.unwrap());
        }
        // A fifth from the same address: closed before any TLS.
        for _ in 0..3 {
            let e = connect_from(&h2, to, Some("127.0.0.1")).await;
            assert!(e.is_err(), "a fifth connection from one address was served");
        }
        // Another address still gets in, up to 8 in all.
        for _ in 0..4 {
            held.push(connect_from(&h2, to, Some("127.0.0.2")).await.unwrap());
        }
        let e = connect_from(&h2, to, Some("127.0.0.3")).await;
        assert!(e.is_err(), "a ninth connection was served");
        // One closed: room again.
        held.pop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.push(connect_from(&h2, to, Some("127.0.0.3")).await.unwrap());
    });
    let text = scrape(&metrics);
    assert_eq!(
        sample(
            &text,
            "milebatch_http_connections_refused_total{limit=\"max_connections_per_address\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_http_connections_refused_total{limit=\"max_connections\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // Four refusals, one WARN (at most one a minute).
    let log = s.log_text();
    assert_eq!(
        log.matches("connection refused: `[server]").count(),
        1,
        "{log}"
    );
}

#[test]
fn the_default_header_deadline_is_10_s() {
    // No [server] limit keys: the documented defaults.
    let (_ws, s) = start("");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2 = tls_client(&s, b"h2");
    rt.block_on(async {
        let mut c = connect_from(&h2, addr(&s), None).await.unwrap();
        let t = Instant::now();
        c.write_all(PREFACE).await.unwrap();
        let after = tokio::time::timeout(Duration::from_secs(30), closed_after(c, t))
            .await
            .expect("an HTTP/2 connection with only the preface is still open after 30 s");
        assert!(
            after >= Duration::from_millis(9500) && after < Duration::from_millis(13_500),
            "closed after {after:?}"
        );
    });
}
