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

async fn worker(
    a: Arc<Args>,
    client: reqwest::Client,
    n: usize,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use std::sync::atomic::Ordering;
    let mut t = Tally::default();
    let mut rnd = 0x9e37_79b9_7f4a_7c15_u64 ^ (n as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let (path, expect) = match a.mode {
        Mode::Credits => ("/api/v1/exchanges", 201),
        Mode::Verify => ("/api/v1/members/verify", 200),
    };
    let url = format!("{}{path}", a.url);
    let auth = format!("Bearer {}", a.key);
    let mut i = 0u64;
    while running.load(Ordering::Relaxed) {
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
        let start = Instant::now();
        let sent = client
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .header("idempotency-key", &idem)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.bytes().await;
                t.micros
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                let ok = status == expect
                    && (a.mode == Mode::Credits
                        || text.as_deref().is_ok_and(|b| b == br#"{"match":true}"#));
                // A verify "no" for a member that should match is a failure.
                let key = if ok || status != expect { status } else { 0 };
                *t.by_status.entry(key).or_insert(0) += 1;
            }
            Err(e) => {
                if t.errors < 3 {
                    eprintln!("loadgen: request failed: {e}");
                }
                t.errors += 1;
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
        let ca = std::fs::read(&a.ca).expect("read --ca");
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("a PEM CA")])
            .pool_max_idle_per_host(a.conns)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.conns)
            .map(|n| tokio::spawn(worker(a.clone(), client.clone(), n, running.clone())))
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
