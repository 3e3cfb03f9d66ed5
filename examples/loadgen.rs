//! The load generator of `bench/api.sh`: many keep-alive HTTPS connections
//! to `milebatch serve`, each request with a unique `Idempotency-Key`.
//!
//! usage: loadgen credits|verify --url BASE --key KEY --ca CA.pem
//!                [--conns 64] [--seconds S | --until-pid PID]
//!                [--members N] [--prefix P]
//!
//! `credits` posts `{"member", "partner_key", "miles": 1}` to
//! `/api/v1/exchanges` (201 expected) for random active members of
//! `bench/gen.py`'s store (`NM%010d`; every 97th is suspended and skipped);
//! `verify` posts the matching `{"member_id", "email"}` to
//! `/api/v1/members/verify` (200 `{"match": true}` expected). It prints one
//! JSON line: counts by status, connection errors, requests a second that
//! got the expected answer, and latency percentiles in milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Credits,
    Verify,
}

struct Args {
    mode: Mode,
    url: String,
    key: String,
    ca: String,
    conns: usize,
    seconds: Option<f64>,
    until_pid: Option<u32>,
    members: u64,
    prefix: String,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = match it.next().as_deref() {
        Some("credits") => Mode::Credits,
        Some("verify") => Mode::Verify,
        other => return Err(format!("first argument: credits or verify, not {other:?}")),
    };
    let mut a = Args {
        mode,
        url: String::new(),
        key: String::new(),
        ca: String::new(),
        conns: 64,
        seconds: None,
        until_pid: None,
        members: 1_000_000,
        prefix: format!("lg{}", std::process::id()),
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => a.url = v,
            "--key" => a.key = v,
            "--ca" => a.ca = v,
            "--conns" => a.conns = num(&v)? as usize,
            "--seconds" => a.seconds = Some(num(&v)?),
            "--until-pid" => a.until_pid = Some(num(&v)? as u32),
            "--members" => a.members = num(&v)? as u64,
            "--prefix" => a.prefix = v,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.url.is_empty() || a.key.is_empty() || a.ca.is_empty() {
        return Err("--url, --key and --ca are required".into());
    }
    if a.seconds.is_none() == a.until_pid.is_none() {
        return Err("give one of --seconds or --until-pid".into());
    }
    Ok(a)
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    /// Latency of every request that got an answer, in microseconds.
    micros: Vec<u32>,
}

/// A small xorshift: the member chosen does not need to be good random.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One TLS connection, HTTP/1.1 keep-alive: a request is sent only when
/// the answer to the previous one has been read.
type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<axum::body::Bytes>>;

async fn connect(a: &Args, tls: &tokio_rustls::TlsConnector) -> Result<Sender, String> {
    let hostport = a
        .url
        .strip_prefix("https://")
        .ok_or("--url must be https://HOST:PORT")?
        .trim_end_matches('/');
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| format!("connect {hostport}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    a: Arc<Args>,
    tls: tokio_rustls::TlsConnector,
    n: usize,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use http_body_util::BodyExt as _;
    use std::sync::atomic::Ordering;
    let mut t = Tally::default();
    let mut rnd = 0x9e37_79b9_7f4a_7c15_u64 ^ (n as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let (path, expect) = match a.mode {
        Mode::Credits => ("/api/v1/exchanges", 201),
        Mode::Verify => ("/api/v1/members/verify", 200),
    };
    let host = a.url.trim_start_matches("https://").trim_end_matches('/');
    let auth = format!("Bearer {}", a.key);
    let mut sender: Option<Sender> = None;
    let mut i = 0u64;
    while running.load(Ordering::Relaxed) {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&a, &tls).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    if t.errors < 3 {
                        eprintln!("loadgen: {e}");
                    }
                    t.errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut m = next(&mut rnd) % a.members;
        if m.is_multiple_of(97) {
            m = (m + 1) % a.members;
        }
        let idem = format!("{}-{n}-{i}", a.prefix);
        i += 1;
        let body = match a.mode {
            Mode::Credits => {
                format!(r#"{{"member":"NM{m:010}","partner_key":"{idem}","miles":1}}"#)
            }
            Mode::Verify => {
                format!(r#"{{"member_id":"NM{m:010}","email":"user{m}@example.jp"}}"#)
            }
        };
        let req = hyper::Request::post(path)
            .header("host", host)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .header("idempotency-key", &idem)
            .body(http_body_util::Full::new(axum::body::Bytes::from(body)))
            .expect("a valid request");
        let start = Instant::now();
        let answer = async {
            s.ready().await?;
            let r = s.send_request(req).await?;
            let status = r.status().as_u16();
            let body = r.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(120), answer).await {
            Ok(Ok((status, text))) => {
                t.micros
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                let ok = status == expect
                    && (a.mode == Mode::Credits || &text[..] == br#"{"match":true}"#);
                // A verify "no" for a member that should match is a failure.
                let key = if ok || status != expect { status } else { 0 };
                *t.by_status.entry(key).or_insert(0) += 1;
            }
            Ok(Err(e)) => {
                if t.errors < 3 {
                    eprintln!("loadgen: request failed: {e}");
                }
                t.errors += 1;
                sender = None;
            }
            Err(_) => {
                if t.errors < 3 {
                    eprintln!("loadgen: no answer within 120 s");
                }
                t.errors += 1;
                sender = None;
            }
        }
    }
    t
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let a = match args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(64);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&a.ca).expect("read --ca") {
            roots
                .add(cert.expect("a PEM CA"))
                .expect("a CA certificate");
        }
        let tls = tokio_rustls::TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.conns)
            .map(|n| tokio::spawn(worker(a.clone(), tls.clone(), n, running.clone())))
            .collect();
        match (a.seconds, a.until_pid) {
            (Some(s), _) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            (None, Some(pid)) => {
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (None, None) => unreachable!("checked in args()"),
        }
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await.expect("worker");
            for (s, n) in t.by_status {
                *all.by_status.entry(s).or_insert(0) += n;
            }
            all.errors += t.errors;
            all.micros.extend(t.micros);
        }
        let elapsed = start.elapsed().as_secs_f64();
        all.micros.sort_unstable();
        let expect = if a.mode == Mode::Credits { 201 } else { 200 };
        let ok = all.by_status.get(&expect).copied().unwrap_or(0);
        let sent: u64 = all.by_status.values().sum::<u64>() + all.errors;
        let by_status: BTreeMap<String, u64> = all
            .by_status
            .iter()
            .map(|(s, n)| {
                let name = if *s == 0 {
                    "no-match".to_owned()
                } else {
                    s.to_string()
                };
                (name, *n)
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "mode": if a.mode == Mode::Credits { "credits" } else { "verify" },
                "seconds": (elapsed * 100.0).round() / 100.0,
                "conns": a.conns,
                "sent": sent,
                "ok": ok,
                "failed": sent - ok,
                "errors": all.errors,
                "by_status": by_status,
                "per_second": (ok as f64 / elapsed).round(),
                "p50_ms": pct(&all.micros, 0.50),
                "p99_ms": pct(&all.micros, 0.99),
                "max_ms": pct(&all.micros, 1.0),
            })
        );
    });
}
