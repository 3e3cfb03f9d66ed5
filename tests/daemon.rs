//! `milebatch run`, `status` and `check`, driven through the real binary on a
//! temp folder: config, members, local inboxes, SQLite. Time is injected with
//! the test-only `MILEBATCH_FAKE_NOW` (a clock that starts there and then
//! runs in real time), so a 03:00 JST occurrence is seconds away.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::workspace::{has_file_ending, wait_for, Workspace, FAKE_NOW};

const LONG: Duration = Duration::from_secs(120);

/// `rows` exchange rows for partner `p`; every `bad_every`-th names an
/// unknown member (E003). Returns the text and the number of valid rows.
fn exchange(p: &str, rows: usize, members: usize, bad_every: usize) -> (String, u64) {
    let mut text = String::with_capacity(rows * 24);
    let mut valid = 0;
    for i in 0..rows {
        if bad_every > 0 && i % bad_every == bad_every - 1 {
            text.push_str(&format!("NOBODY{i},{p}-{i},5\n"));
        } else {
            text.push_str(&format!("M{:06},{p}-{i},{}\n", i % members, i % 50 + 1));
            valid += 1;
        }
    }
    (text, valid)
}

fn status_json(ws: &Workspace, fake_now: &str) -> serde_json::Value {
    let mut c = ws.cmd(&["status", "--json"]);
    c.env(FAKE_NOW, fake_now);
    let out = ws.ok_cmd(c);
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// `milebatch status` as text, at `fake_now`.
fn status_text(ws: &Workspace, fake_now: &str) -> String {
    let mut c = ws.cmd(&["status"]);
    c.env(FAKE_NOW, fake_now);
    String::from_utf8(ws.ok_cmd(c).stdout).unwrap()
}

/// `demo-shop` daily at 03:00 with 100 members, and a successful (empty)
/// run at 03:00 JST on Nov 21, which sets its last success.
fn daily_shop_last_succeeded_nov_21() -> Workspace {
    let ws = Workspace::new();
    ws.write_config("", &ws.scheduled_partner("demo-shop", "daily 03:00"));
    ws.members(100);
    let mut once = ws.cmd(&["once", "--partner", "demo-shop"]);
    once.env(FAKE_NOW, "2026-11-20T18:00:00Z");
    ws.ok_cmd(once);
    ws
}

/// Wait until the daemon's one catch-up run has finished.
fn wait_for_the_catch_up(ws: &Workspace) {
    wait_for("the catch-up run to finish", LONG, || {
        ws.try_int(
            "SELECT count(*) FROM runs WHERE trigger = 'catch-up' AND finished_at IS NOT NULL",
        ) == Ok(1)
    });
}

/// Catch-up at start-up credits the file; `status --json` shows the run
/// while the daemon is up and after it stopped; SIGTERM when idle exits 0.
#[test]
fn run_catches_up_at_startup_and_status_shows_last_and_next_run() {
    let ws = daily_shop_last_succeeded_nov_21();
    assert_eq!(
        ws.int(
            "SELECT count(*) FROM partner_state WHERE last_success = '2026-11-20T18:00:00.000Z'"
        ),
        1
    );
    let (text, valid) = exchange("demo-shop", 100, 100, 25);
    assert_eq!(valid, 96);
    ws.write("inbox/demo-shop/demo.csv", text);

    // Down over three occurrences (Nov 22-24 03:00 JST); back at 21:00 JST.
    let mut d = ws.spawn_daemon(Some("2026-11-24T12:00:00Z"));
    wait_for_the_catch_up(&ws);
    d.wait_log("catching up once now", LONG);

    let st = status_json(&ws, "2026-11-24T12:01:00Z");
    let p = &st["partners"][0];
    assert_eq!(p["id"], "demo-shop");
    assert_eq!(p["next_run"], "2026-11-25T03:00:00+09:00", "{st:#}");
    let last = &p["last_run"];
    assert_eq!(last["trigger"], "catch-up", "{st:#}");
    assert_eq!(last["outcome"], "ok", "{st:#}");
    assert_eq!(last["files"], 1);
    assert_eq!(last["credited"], 96);
    assert_eq!(last["failed"], 4);
    assert_eq!(p["consecutive_failures"], 0);
    assert!(p["last_missed"].is_null(), "{st:#}");

    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    assert!(d.log_text().contains("daemon stopped"), "{}", d.log_text());

    // Exactly one catch-up for three missed occurrences; credited once.
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE trigger = 'catch-up'"),
        1
    );
    assert_eq!(ws.int("SELECT count(*) FROM runs"), 2);
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), 96);
    assert_eq!(
        ws.int("SELECT sum(miles) FROM ledger"),
        ws.int("SELECT sum(miles) FROM balances")
    );
    // After the daemon stopped, status still reads it, in text form too.
    let st = status_json(&ws, "2026-11-24T12:05:00Z");
    assert_eq!(st["partners"][0]["last_run"]["trigger"], "catch-up");
    let out = status_text(&ws, "2026-11-24T12:05:00Z");
    assert!(out.contains("next run  2026-11-25 03:00:00 JST"), "{out}");
    assert!(out.contains("[catch-up] ok"), "{out}");
}

/// A catch-up run that finds the partner's lock held by another process
/// (here the test, as a site upload or a manual `once` would hold it)
/// waits for it instead of skipping the pull, then credits the file.
#[test]
fn a_run_waits_for_the_partner_lock_held_by_another_process() {
    let ws = daily_shop_last_succeeded_nov_21();
    let (text, valid) = exchange("demo-shop", 100, 100, 0);
    ws.write("inbox/demo-shop/demo.csv", text);

    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(ws.path("var/locks/demo-shop.lock"))
        .unwrap();
    lock.lock().unwrap();
    let mut d = ws.spawn_daemon(Some("2026-11-24T12:00:00Z"));
    d.wait_log("waiting for it", LONG);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE trigger = 'catch-up'"),
        0,
        "the run must not start while the lock is held"
    );
    assert!(
        !d.log_text().contains("run did not start"),
        "{}",
        d.log_text()
    );
    drop(lock);
    wait_for_the_catch_up(&ws);
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), valid as i64);
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
}

/// SIGTERM while a 300k-row file is being credited: the file finishes its
/// transaction (every valid row credited exactly once), the next file is not
/// started, and the process exits 0.
#[test]
fn sigterm_mid_run_finishes_the_file_and_exits_0() {
    const ROWS: usize = 300_000;
    const MEMBERS: usize = 5_000;
    let ws = Workspace::new();
    ws.write_config(
        "shutdown_timeout = \"300s\"",
        &ws.scheduled_partner("bigco", "daily 03:00"),
    );
    ws.members(MEMBERS);
    let (text, valid) = exchange("bigco", ROWS, MEMBERS, 1000);
    ws.write("inbox/bigco/a-big.csv", text);
    let (small, _) = exchange("small", 10, MEMBERS, 0);
    ws.write("inbox/bigco/b-next.csv", small);

    // 03:00 JST on Nov 25 is two seconds away.
    let mut d = ws.spawn_daemon(Some("2026-11-24T17:59:58Z"));
    let archive = ws.path("var/archive/bigco");
    wait_for("the big file archived (credit starts next)", LONG, || {
        has_file_ending(&archive, "-a-big.csv")
    });
    let credited_before = ws.int("SELECT count(*) FROM files");
    d.signal("TERM");
    let t = Instant::now();
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    let log = d.log_text();
    eprintln!("exited {:?} after SIGTERM", t.elapsed());

    // The signal really came mid-file: before the commit, and logged before
    // the file's "file done".
    assert_eq!(
        credited_before, 0,
        "the file was already committed at SIGTERM"
    );
    let sig = log.find("signal received").expect("signal logged");
    let done = log.find("file done").expect("file done logged");
    assert!(sig < done, "SIGTERM was not handled mid-file:\n{log}");
    assert!(log.contains("not starting another file"), "{log}");

    // The big file: completely credited, each valid row exactly once.
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE name = 'a-big.csv' AND outcome = 'credited'"),
        1
    );
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), valid as i64);
    assert_eq!(
        ws.int("SELECT count(DISTINCT partner_key) FROM ledger"),
        valid as i64
    );
    assert_eq!(
        ws.int("SELECT count(DISTINCT line) FROM ledger"),
        valid as i64
    );
    assert_eq!(
        ws.int("SELECT sum(miles) FROM ledger"),
        ws.int("SELECT sum(miles) FROM balances")
    );
    let expected_miles: i64 = (0..ROWS)
        .filter(|i| i % 1000 != 999)
        .map(|i| (i % 50 + 1) as i64)
        .sum();
    assert_eq!(ws.int("SELECT sum(miles) FROM balances"), expected_miles);
    // The run is recorded as finished; the second file was never started.
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL AND outcome = 'ok'"),
        1
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE name = 'b-next.csv'"),
        0
    );
    assert!(ws.inbox("bigco").join("b-next.csv").exists());
}

#[test]
fn check_prints_the_next_three_runs_in_the_configured_zone() {
    let ws = Workspace::new();
    let partners = format!(
        "{}{}",
        ws.scheduled_partner("daily-co", "daily 03:00"),
        ws.scheduled_partner("month-end", "monthly last 10:00")
    );
    ws.write_config("", &partners);
    let mut c = ws.cmd(&["check"]);
    c.env(FAKE_NOW, "2026-11-24T12:00:00Z");
    let out = String::from_utf8(ws.ok_cmd(c).stdout).unwrap();
    assert!(
        out.contains(
            "next runs: 2026-11-25 03:00:00 JST, 2026-11-26 03:00:00 JST, 2026-11-27 03:00:00 JST"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "next runs: 2026-11-30 10:00:00 JST, 2026-12-31 10:00:00 JST, 2027-01-31 10:00:00 JST"
        ),
        "{out}"
    );
    let mut c = ws.cmd(&["check", "--json"]);
    c.env(FAKE_NOW, "2026-11-24T12:00:00Z");
    let v: serde_json::Value = serde_json::from_slice(&ws.ok_cmd(c).stdout).unwrap();
    assert_eq!(
        v["partners"][1]["next_runs"],
        serde_json::json!([
            "2026-11-30T10:00:00+09:00",
            "2026-12-31T10:00:00+09:00",
            "2027-01-31T10:00:00+09:00"
        ])
    );
}

/// The sd_notify protocol against a real datagram socket, as systemd has it.
#[test]
fn systemd_notify_ready_status_watchdog_stopping() {
    let ws = Workspace::new();
    ws.write_config("", &ws.scheduled_partner("demo-shop", "daily 03:00"));
    let sock_path = ws.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut run = ws.cmd(&["run"]);
    run.env(FAKE_NOW, "2026-11-24T12:00:00Z")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut d = ws.spawn(run);
    let mut msgs: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv_until = |msgs: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
        let end = Instant::now() + LONG;
        while !done(msgs) {
            assert!(Instant::now() < end, "notifications so far: {msgs:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    recv_until(&mut msgs, &|m| m.iter().any(|s| s.contains("READY=1")));
    let ready = msgs.iter().find(|s| s.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=last: none yet; next: demo-shop at 2026-11-25T03:00:00+09:00"),
        "{ready:?}"
    );
    // 400 ms watchdog: pings every 200 ms.
    recv_until(&mut msgs, &|m| {
        m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 3
    });
    d.signal("TERM");
    recv_until(&mut msgs, &|m| m.iter().any(|s| s.contains("STOPPING=1")));
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
}

/// A scheduled run that finds nothing for an `expect_file` partner is a
/// missed delivery: logged at WARN and shown by `status`.
#[test]
fn missed_delivery_is_shown_by_status() {
    let ws = Workspace::new();
    let partner = ws
        .scheduled_partner("punctual", "daily 03:00")
        .replace("[partner.source]", "expect_file = true\n[partner.source]");
    ws.write_config("", &partner);
    let mut d = ws.spawn_daemon(Some("2026-11-24T17:59:59Z"));
    wait_for("the scheduled run to finish", LONG, || {
        ws.try_int("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") == Ok(1)
    });
    d.wait_log("missed delivery", LONG);
    assert!(d.log_text().contains("WARN"), "{}", d.log_text());
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());

    let st = status_json(&ws, "2026-11-24T18:10:00Z");
    let p = &st["partners"][0];
    assert_eq!(p["last_run"]["trigger"], "schedule", "{st:#}");
    assert_eq!(p["last_run"]["outcome"], "missed", "{st:#}");
    assert_eq!(p["last_missed"], p["last_run"]["started_at"], "{st:#}");
    assert!(
        p["last_missed"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-24T18:00:0"),
        "{st:#}"
    );
    // Not our failure: the run completed; it is shown as last_missed.
    assert_eq!(p["consecutive_failures"], 0, "{st:#}");
    assert_eq!(p["last_success"], p["last_run"]["started_at"], "{st:#}");
    assert_eq!(p["next_run"], "2026-11-26T03:00:00+09:00", "{st:#}");
}

/// The example `partners.toml` with the demo fixtures, as a fresh clone has
/// them: the daemon runs demo-shop at 03:00 JST, and after a day of downtime
/// catches it up once at start-up.
#[test]
fn the_example_config_runs_on_schedule_and_on_catch_up() {
    let ws = Workspace::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("partners.toml"), ws.config_path()).unwrap();
    let copy = |rel: &str| {
        let to = ws.path(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(rel), to).unwrap();
    };
    copy("fixtures/members.csv");
    copy("fixtures/inbox/demo-shop/exchange-20261124.csv");
    copy("fixtures/inbox/demo-konbini/KOUKAN_20261124.csv");
    ws.ok_cmd(ws.cmd(&["members", "import", "fixtures/members.csv"]));

    // Two seconds before 03:00 JST on 25 November.
    let mut d = ws.spawn_daemon(Some("2026-11-24T17:59:58Z"));
    wait_for("demo-shop's scheduled run", LONG, || {
        ws.try_int("SELECT count(*) FROM runs WHERE partner = 'demo-shop' AND trigger = 'schedule' AND finished_at IS NOT NULL") == Ok(1)
    });
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    assert_eq!(
        ws.int("SELECT credited FROM files WHERE partner = 'demo-shop'"),
        4,
        "the demo file is credited"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE partner = 'demo-konbini'"),
        0,
        "not its time"
    );

    // Down for a day and an hour: one catch-up, not one per missed occurrence.
    let mut d = ws.spawn_daemon(Some("2026-11-26T19:00:00Z"));
    wait_for("demo-shop's catch-up run", LONG, || {
        ws.try_int("SELECT count(*) FROM runs WHERE partner = 'demo-shop' AND trigger = 'catch-up' AND finished_at IS NOT NULL") == Ok(1)
    });
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE partner = 'demo-shop'"),
        2
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE partner = 'demo-shop'"),
        1,
        "credited once"
    );
}

/// `[daemon] verify` runs at its scheduled time (Sunday 05:00 JST) and is
/// recorded; scheduled backups (here every 2 s) are written 0600, verified,
/// and only the newest `keep` of the daemon's own backups stay (other files
/// in the folder are never touched); `status` shows the last of each. After
/// a balance is tampered with, the next scheduled verify fails: an ERROR log
/// line naming the member, a failed `verify_runs` row, and `status` says so.
#[test]
fn daemon_runs_verify_and_backups_on_schedule_with_retention() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    let partner = ws.scheduled_partner("demo-shop", "daily 03:00");
    ws.write_config(
        "verify = \"weekly sun 05:00\"\nbackup = \"*/2 * * * * *\"\nbackup_dir = \"backups\"\nkeep = 2\n",
        &partner,
    );
    ws.members(100);
    let (text, valid) = exchange("demo-shop", 100, 100, 0);
    ws.write("inbox/demo-shop/demo.csv", text);
    ws.ok(&["once", "--partner", "demo-shop"]);
    assert_eq!(ws.ledger_rows(), valid as i64);
    // Not the daemon's: never deleted.
    ws.write("backups/milebatch-manual.db", "mine");
    ws.write("backups/milebatch-20261101T040000Z.db.partial", "x");
    // The daemon's (by name), older than any new one: deleted first.
    ws.write("backups/milebatch-20261101T040000Z.db", "old");

    // Sunday 2026-11-29 04:59:57 JST.
    let mut d = ws.spawn_daemon(Some("2026-11-28T19:59:57Z"));
    wait_for("the 05:00 verify", LONG, || {
        ws.try_int("SELECT count(*) FROM verify_runs") == Ok(1)
    });
    wait_for("three scheduled backups", LONG, || {
        ws.try_int("SELECT count(*) FROM backup_runs WHERE ok = 1")
            .is_ok_and(|n| n >= 3)
    });
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    let (at, ok, rows): (String, bool, i64) = ws
        .db()
        .query_row("SELECT at, ok, ledger_rows FROM verify_runs", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(at.starts_with("2026-11-28T20:00:0"), "at 05:00 JST: {at}");
    assert!(ok);
    assert_eq!(rows, valid as i64);
    assert!(
        d.log_text().contains("scheduled verify: ok"),
        "{}",
        d.log_text()
    );

    let mut names: Vec<String> = std::fs::read_dir(ws.path("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("milebatch-2026112") && n.ends_with("Z.db"))
        .collect();
    assert_eq!(ours.len(), 2, "exactly keep = 2 of the daemon's: {names:?}");
    assert!(
        names.contains(&"milebatch-manual.db".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"milebatch-20261101T040000Z.db.partial".to_owned()));
    assert!(
        !names.contains(&"milebatch-20261101T040000Z.db".to_owned()),
        "the oldest went first: {names:?}"
    );
    let newest: String = ws
        .db()
        .query_row(
            "SELECT path FROM backup_runs WHERE ok = 1 ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(newest.ends_with(ours[1].as_str()), "{newest} vs {ours:?}");
    for n in &ours {
        let p = ws.path("backups").join(n);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let copy = rusqlite::Connection::open(&p).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, valid as i64);
    }
    let deleted = ws.int("SELECT sum(deleted) FROM backup_runs");
    let made = ws.int("SELECT count(*) FROM backup_runs WHERE ok = 1");
    assert_eq!(
        deleted,
        made + 1 - 2,
        "one old file + every new one beyond keep"
    );

    let st = status_json(&ws, "2026-11-29T00:00:00Z");
    assert_eq!(st["verify"]["last"]["ok"], true, "{st:#}");
    assert_eq!(st["verify"]["next"], "2026-12-06T05:00:00+09:00", "{st:#}");
    let out = status_text(&ws, "2026-11-29T00:00:00Z");
    assert!(
        out.starts_with("now 2026-11-29 09:00:00 JST (Asia/Tokyo)\n"),
        "{out}"
    );
    assert!(out.contains(", next 2026-12-06 05:00:00 JST)"), "{out}");
    assert_eq!(st["backup"]["last"]["ok"], true, "{st:#}");
    assert_eq!(st["backup"]["keep"], 2);

    // A redemption that never happened: the balance no longer matches.
    ws.db()
        .execute(
            "UPDATE balances SET miles = miles + 7 WHERE member = (SELECT id FROM members WHERE member_id = 'M000003')",
            [],
        )
        .unwrap();
    ws.write_config("verify = \"weekly sun 05:00\"\n", &partner);
    // The next Sunday, 04:59:58 JST.
    let mut d = ws.spawn_daemon(Some("2026-12-05T19:59:58Z"));
    wait_for("the failing verify", LONG, || {
        ws.try_int("SELECT count(*) FROM verify_runs") == Ok(2)
    });
    d.wait_log("scheduled verify FAILED", LONG);
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("MISMATCH"))
        .unwrap_or_else(|| panic!("no ERROR line: {log}"));
    assert!(
        line.contains("balance") && line.contains("M000003"),
        "{line}"
    );
    let (ok, problems, first): (bool, i64, String) = ws
        .db()
        .query_row(
            "SELECT ok, problems, first_problem FROM verify_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(!ok);
    assert_eq!(problems, 1);
    assert!(first.starts_with("balance: member M000003"), "{first}");
    let out = status_text(&ws, "2026-12-05T21:00:00Z");
    assert!(
        out.contains("FAILED: 1 problem(s): balance: member M000003"),
        "{out}"
    );
    assert!(out.contains("backup    (off) last "), "{out}");
}

/// `[daemon] metrics_listen`: after a scheduled run refuses a file, the
/// daemon's `/metrics` names that file and counts the refused run; a
/// missed delivery, credits by channel and last success are there too; and
/// every series `systemd/alerts.yml` names exists in this real output.
#[test]
fn daemon_metrics_name_a_refused_file_and_cover_the_alert_rules() {
    use common::serve::{metrics_url, sample, scrape};
    let ws = Workspace::new();
    let punctual = ws
        .scheduled_partner("punctual", "daily 03:00")
        .replace("[partner.source]", "expect_file = true\n[partner.source]");
    ws.write_config(
        "metrics_listen = \"127.0.0.1:0\"\n",
        &format!(
            "{}{}{punctual}",
            ws.scheduled_partner("shop", "daily 03:00"),
            ws.scheduled_partner("good", "daily 03:00"),
        ),
    );
    ws.demo_members();
    // A header and no rows: refused whole (F003).
    ws.write("inbox/shop/bad \"q\".csv", "member,partner_key,miles\n");
    ws.write(
        "inbox/good/ok.csv",
        "NM0000000001,K1,10\nNM0000000002,K2,20\n",
    );
    let mut d = ws.spawn_daemon(Some("2026-11-24T17:59:59Z"));
    d.wait_log("serving metrics on", LONG);
    let url = metrics_url(&d.log_text()).expect("metrics URL in the log");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Before any run: every configured partner already has its series.
    let before = scrape(&url);
    assert_eq!(
        sample(
            &before,
            "milebatch_last_success_timestamp_seconds{partner=\"shop\"}"
        ),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(
            &before,
            "milebatch_missed_deliveries_total{partner=\"punctual\"}"
        ),
        Some(0.0),
        "{before}"
    );
    wait_for("the three scheduled runs to finish", LONG, || {
        ws.try_int("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") == Ok(3)
    });
    let text = scrape(&url);
    let file_id = ws.int("SELECT id FROM files WHERE partner = 'shop'");
    assert_eq!(
        sample(
            &text,
            "milebatch_last_refused_file_info{partner=\"shop\",file=\"bad \\\"q\\\".csv\",code=\"F003\"}"
        ),
        Some(file_id as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_refused_files_total{partner=\"shop\",code=\"F003\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_runs_total{partner=\"shop\",outcome=\"refused\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "milebatch_consecutive_failed_runs{partner=\"shop\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_missed_deliveries_total{partner=\"punctual\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_credits_total{partner=\"good\",channel=\"pull\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_miles_total{partner=\"good\",channel=\"pull\"}"
        ),
        Some(30.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_credits_total{partner=\"good\",channel=\"api\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let good_success = sample(
        &text,
        "milebatch_last_success_timestamp_seconds{partner=\"good\"}",
    )
    .unwrap();
    // 2026-11-24T18:00Z, give or take the fake clock's real seconds.
    assert!(
        (1_795_543_200.0..1_795_543_500.0).contains(&good_success),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_last_success_timestamp_seconds{partner=\"shop\"}"
        ),
        Some(0.0),
        "{text}"
    );

    // The alert rules: well formed, and naming only series that exist.
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/alerts.yml"))
        .unwrap();
    assert!(rules.contains("\ngroups:\n"), "{rules}");
    let alerts = rules.matches("- alert: ").count();
    assert_eq!(alerts, 6, "{rules}");
    assert_eq!(rules.matches("\n        expr: ").count(), alerts, "{rules}");
    assert_eq!(rules.matches("\n          summary: ").count(), alerts);
    for want in [
        "MilebatchRunFailed",
        "MilebatchFileRefused",
        "MilebatchMissedDelivery",
        "MilebatchNoSuccess26h",
        "MilebatchVerifyFailed",
    ] {
        assert!(rules.contains(&format!("- alert: {want}\n")), "{want}");
    }
    let mut named = 0;
    for expr in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
    {
        for (i, _) in expr.match_indices("milebatch_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named += 1;
            assert!(
                text.contains(&format!("\n# TYPE {name} ")),
                "alerts.yml names {name}, which /metrics does not export:\n{text}"
            );
        }
    }
    assert!(named >= 4, "{rules}");
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
}
