//! Load: many partners scheduled for the same minute, through the real
//! daemon: all processed, no SQLITE_BUSY, peak RSS and total time printed.
//!
//! The suite runs 50 partners × 2,000 rows; the full size:
//! `cargo test --release --test load -- --ignored --nocapture`

mod common;

use std::time::{Duration, Instant};

use common::workspace::{exchange_csv, wait_for, Workspace};

fn load(partners: usize, rows: usize) {
    const MEMBERS: usize = 5000;
    let ws = Workspace::new();
    let mut cfg = String::new();
    let mut expect = vec![0i64; MEMBERS];
    for p in 0..partners {
        let id = format!("p{p:02}");
        cfg += &ws.scheduled_partner(&id, "daily 03:00");
        let (file, e) = exchange_csv(rows, MEMBERS, 100 + p as u64);
        ws.write(&format!("inbox/{id}/{id}.csv"), file);
        for (t, x) in expect.iter_mut().zip(e) {
            *t += x;
        }
    }
    ws.write_config("max_concurrent = 4", &cfg);
    ws.members(MEMBERS);

    let started = Instant::now();
    let mut d = ws.spawn_daemon(Some("2026-11-24T17:59:59Z"));
    let mut peak_kib = 0u64;
    wait_for("every partner's run", Duration::from_secs(600), || {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", d.pid())) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                peak_kib = l.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        ws.try_int("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") == Ok(partners as i64)
    });
    let total = started.elapsed();
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        d.log_text()
    );

    let log = d.log_text();
    assert!(
        !log.contains("database is locked") && !log.contains("SQLITE_BUSY"),
        "{log}"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE outcome = 'ok'"),
        partners as i64,
        "{log}"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE outcome = 'credited'"),
        partners as i64
    );
    assert_eq!(ws.ledger_rows(), (partners * rows) as i64);
    assert_eq!(ws.balances(MEMBERS), expect);
    println!(
        "load: {partners} partners x {rows} rows in {:.1}s, daemon peak RSS {:.1} MiB, 0 SQLITE_BUSY",
        total.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
}

#[test]
fn fifty_partners_in_the_same_minute() {
    load(50, 2_000);
}

#[test]
#[ignore = "full size: see the module docs"]
fn fifty_partners_in_the_same_minute_full_size() {
    load(50, 20_000);
}
