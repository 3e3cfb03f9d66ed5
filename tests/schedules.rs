//! Schedules on Japanese business days (営業日), through the real binary:
//! `check` names the holiday a run was moved off, the daemon runs a moved
//! run on the moved day, an `expect_file` partner is not "missed" on a
//! closed day, the catch-up follows `on_holiday`, and schedules written in
//! Japanese are read (or answered with the forms and the closest one).
//! Time is injected with the test-only `MILEBATCH_FAKE_NOW`.

mod common;

use std::time::Duration;

use common::workspace::{wait_for, Workspace, FAKE_NOW};

const LONG: Duration = Duration::from_secs(120);

/// 年末年始 as most Japanese operators close.
const NENMATSU: &str = "closed = [\"12-29\", \"12-30\", \"12-31\", \"01-02\", \"01-03\"]\n";

fn with_keys(ws: &Workspace, id: &str, schedule: &str, keys: &str) -> String {
    ws.scheduled_partner(id, schedule)
        .replace("[partner.source]", &format!("{keys}[partner.source]"))
}

fn check_at(ws: &Workspace, args: &[&str], now: &str) -> std::process::Output {
    let mut c = ws.cmd(args);
    c.env(FAKE_NOW, now);
    c.output().unwrap()
}

/// Start the daemon at `fake_now`, wait until `sql` (a count) reads `n`,
/// stop it with SIGTERM (exit 0) and return its log.
fn daemon_until(ws: &Workspace, fake_now: &str, what: &str, sql: &str, n: i64) -> String {
    let mut d = ws.spawn_daemon(Some(fake_now));
    wait_for(what, LONG, || ws.try_int(sql) == Ok(n));
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    d.log_text()
}

const FINISHED: &str = "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL";

#[test]
fn check_names_the_holiday_a_run_moved_off_and_reads_japanese_schedules() {
    let ws = Workspace::new();
    let partners = [
        with_keys(
            &ws,
            "first-next",
            "monthly 1 09:00",
            "on_holiday = \"next\"\n",
        ),
        with_keys(
            &ws,
            "first-prev",
            "毎月1日 09:00",
            "on_holiday = \"previous\"\n",
        ),
        with_keys(
            &ws,
            "first-skip",
            "monthly 1 09:00",
            "on_holiday = \"skip\"\n",
        ),
        ws.scheduled_partner("third-bd", "毎月第3営業日 09:00"),
        ws.scheduled_partner("last-bd", "monthly last business-day 23:00"),
        ws.scheduled_partner("every-bd", "毎営業日 03:00"),
        with_keys(&ws, "mondays", "毎週月曜 04:00", "on_holiday = \"next\"\n"),
        ws.scheduled_partner("month-end", "毎月末日 03:00"),
        ws.scheduled_partner("daily-ja", "毎日 03:00"),
    ]
    .concat();
    ws.write_config(NENMATSU, &partners);
    // 2026-12-15 12:00 JST.
    let out = check_at(&ws, &["check"], "2026-12-15T03:00:00Z");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs_of = |id: &str| -> String {
        let at = text
            .find(&format!("  {id} ("))
            .unwrap_or_else(|| panic!("{id} not in {text}"));
        text[at..]
            .lines()
            .find(|l| l.trim_start().starts_with("next runs:"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        runs_of("first-next"),
        "next runs: 2027-01-04 09:00:00 JST (moved from 2027-01-01: 元日), \
         2027-02-01 09:00:00 JST, 2027-03-01 09:00:00 JST"
    );
    // Dec 28 is the last business day before the closed 12-29..31.
    assert_eq!(
        runs_of("first-prev"),
        "next runs: 2026-12-28 09:00:00 JST (moved from 2027-01-01: 元日), \
         2027-02-01 09:00:00 JST, 2027-03-01 09:00:00 JST"
    );
    assert_eq!(
        runs_of("first-skip"),
        "next runs: 2027-02-01 09:00:00 JST, 2027-03-01 09:00:00 JST, 2027-04-01 09:00:00 JST"
    );
    // January 2027: 1st 元日, 2nd-3rd closed (and a weekend): 4, 5, 6.
    // February: 11th 建国記念の日 does not come into it; 1, 2, 3.
    assert_eq!(
        runs_of("third-bd"),
        "next runs: 2027-01-06 09:00:00 JST, 2027-02-03 09:00:00 JST, 2027-03-03 09:00:00 JST"
    );
    assert_eq!(
        runs_of("last-bd"),
        "next runs: 2026-12-28 23:00:00 JST, 2027-01-29 23:00:00 JST, 2027-02-26 23:00:00 JST"
    );
    assert_eq!(
        runs_of("every-bd"),
        "next runs: 2026-12-16 03:00:00 JST, 2026-12-17 03:00:00 JST, 2026-12-18 03:00:00 JST"
    );
    assert_eq!(
        runs_of("month-end"),
        "next runs: 2026-12-31 03:00:00 JST, 2027-01-31 03:00:00 JST, 2027-02-28 03:00:00 JST"
    );
    // The Japanese forms are shown as the English ones they are.
    assert!(
        text.contains("  third-bd (third-bd): monthly business-day 3 09:00 —"),
        "{text}"
    );
    assert!(
        text.contains("  daily-ja (daily-ja): daily 03:00 —"),
        "{text}"
    );
    assert!(
        text.contains("  mondays (mondays): weekly mon 04:00 —"),
        "{text}"
    );

    // 振替休日: 春分の日 2027-03-21 is a Sunday; Monday the 22nd is off.
    let out = check_at(&ws, &["check"], "2027-03-16T00:00:00Z");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "next runs: 2027-03-23 04:00:00 JST (moved from 2027-03-22: 春分の日 振替休日), \
             2027-03-29 04:00:00 JST, 2027-04-05 04:00:00 JST"
        ),
        "{text}"
    );

    // JSON keeps RFC 3339 times and says beside each where it moved from.
    let out = check_at(&ws, &["check", "--json"], "2026-12-15T03:00:00Z");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["partners"][0];
    assert_eq!(p["on_holiday"], "next");
    assert_eq!(p["next_runs"][0], "2027-01-04T09:00:00+09:00", "{v:#}");
    assert_eq!(
        p["next_runs_moved"],
        serde_json::json!([{"from": "2027-01-01", "why": "元日"}, null, null])
    );
}

#[test]
fn an_unreadable_or_idle_schedule_is_a_clear_error() {
    let ws = Workspace::new();
    ws.write_config("", &ws.scheduled_partner("acme", "毎日3時"));
    let out = ws.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot read schedule \"毎日3時\"; accepted forms: \"daily HH:MM\""),
        "{err}"
    );
    assert!(err.contains("\"毎月第3営業日 HH:MM\""), "{err}");
    assert!(
        err.contains("Closest to what was written: \"毎日 03:00\""),
        "{err}"
    );
    assert!(err.contains("line 8: partner \"acme\" `schedule`"), "{err}");

    ws.write_config("", &ws.scheduled_partner("acme", "every monday at 04:00"));
    let err = String::from_utf8(ws.run(&["check"]).stderr).unwrap();
    assert!(
        err.contains("Closest to what was written: \"weekly mon 04:00\""),
        "{err}"
    );

    ws.write_config(
        "closed = [\"12/31\"]\n",
        &ws.scheduled_partner("acme", "daily 03:00"),
    );
    let err = String::from_utf8(ws.run(&["check"]).stderr).unwrap();
    assert!(
        err.contains("`daemon.closed`: closed day \"12/31\" is not a date: write \"MM-DD\""),
        "{err}"
    );
    ws.write_config(
        "",
        &with_keys(&ws, "acme", "daily 03:00", "on_holiday = \"monday\"\n"),
    );
    let err = String::from_utf8(ws.run(&["check"]).stderr).unwrap();
    assert!(
        err.contains("`on_holiday`: \"monday\" is not a choice: \"run\""),
        "{err}"
    );

    // Every run on a Saturday, every Saturday skipped: check says so.
    ws.write_config(
        "",
        &with_keys(&ws, "acme", "毎週土曜 10:00", "on_holiday = \"skip\"\n"),
    );
    let out = ws.run(&["check"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "problem: acme: schedule \"weekly sat 10:00\" with on_holiday = \"skip\" never runs"
        ),
        "{text}"
    );
}

/// `monthly 1 09:00` with `on_holiday = "next"`: January's run is not on
/// 元日 but on Monday January 4th at 09:00, and credits the file there.
#[test]
fn the_daemon_runs_a_run_moved_by_a_holiday_on_the_moved_day() {
    let ws = Workspace::new();
    ws.write_config(
        NENMATSU,
        &with_keys(
            &ws,
            "monthly-co",
            "monthly 1 09:00",
            "on_holiday = \"next\"\nexpect_file = true\n",
        ),
    );
    ws.members(10);
    ws.write("inbox/monthly-co/jan.csv", "M000001,jan-1,500\n");
    // 2027-01-01 08:59:50 JST: the unmoved run would be 10 s away.
    let mut d = ws.spawn_daemon(Some("2026-12-31T23:59:50Z"));
    d.wait_log("the next run falls on a closed day and is moved", LONG);
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(
        ws.try_int("SELECT count(*) FROM runs"),
        Ok(0),
        "ran on 元日: {}",
        d.log_text()
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("moved_from=2027-01-01"), "{log}");
    assert!(log.contains("元日"), "{log}");

    // 2027-01-04 08:59:55 JST: the moved run fires at 09:00.
    let log = daemon_until(&ws, "2027-01-03T23:59:55Z", "the moved run", FINISHED, 1);
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE trigger = 'schedule' AND outcome = 'ok' AND started_at LIKE '2027-01-04T00:00:0%'"),
        1,
        "{log}"
    );
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), 1);
}

/// `expect_file = true`: a scheduled run on 元日 that finds nothing is
/// `no-file`, not a missed delivery; the next business day's is missed.
/// `"every-run"` keeps the strict reading.
#[test]
fn no_missed_delivery_on_a_closed_day() {
    let ws = Workspace::new();
    let partners = [
        with_keys(&ws, "weekdays", "daily 03:00", "expect_file = true\n"),
        with_keys(
            &ws,
            "always",
            "daily 03:00",
            "expect_file = \"every-run\"\n",
        ),
    ]
    .concat();
    ws.write_config("", &partners);
    // 2027-01-01 02:59:58 JST.
    daemon_until(
        &ws,
        "2026-12-31T17:59:58Z",
        "both runs on 元日",
        FINISHED,
        2,
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE partner = 'weekdays' AND outcome = 'no-file'"),
        1
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE partner = 'always' AND outcome = 'missed'"),
        1
    );
    // The notification follows the same calendar: an event for the
    // missed run only.
    let missed_events = |p: &str| {
        ws.int(&format!(
            "SELECT count(*) FROM outbox WHERE kind = 'delivery.missed' AND partner = '{p}'"
        ))
    };
    assert_eq!((missed_events("weekdays"), missed_events("always")), (0, 1));
    // Monday 2027-01-04 is a business day (no closed days configured).
    daemon_until(
        &ws,
        "2027-01-03T17:59:58Z",
        "both runs on the 4th",
        FINISHED,
        4,
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE partner = 'weekdays' AND outcome = 'missed'"),
        1
    );
    assert_eq!((missed_events("weekdays"), missed_events("always")), (1, 2));
}

/// Down over 年末年始 with `on_holiday = "skip"`: every run missed fell on
/// a closed day, so there is nothing to catch up; with "run" there is.
#[test]
fn the_catch_up_follows_on_holiday() {
    let ws = Workspace::new();
    let partners = [
        with_keys(&ws, "skipper", "daily 03:00", "on_holiday = \"skip\"\n"),
        ws.scheduled_partner("runner", "daily 03:00"),
    ]
    .concat();
    ws.write_config(NENMATSU, &partners);
    ws.members(1);
    for id in ["skipper", "runner"] {
        let mut once = ws.cmd(&["once", "--partner", id]);
        // 2026-12-28 03:00 JST: both last succeeded then.
        once.env(FAKE_NOW, "2026-12-27T18:00:00Z");
        ws.ok_cmd(once);
    }
    // Back on 2027-01-03 12:00 JST.
    let mut d = ws.spawn_daemon(Some("2027-01-03T03:00:00Z"));
    wait_for("the catch-up run to finish", LONG, || {
        ws.try_int(
            "SELECT count(*) FROM runs WHERE trigger = 'catch-up' AND finished_at IS NOT NULL",
        ) == Ok(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    d.signal("TERM");
    assert_eq!(d.wait_exit(LONG), Some(0), "{}", d.log_text());
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE trigger = 'catch-up' AND partner = 'runner'"),
        1
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM runs WHERE trigger = 'catch-up' AND partner = 'skipper'"),
        0,
        "{}",
        d.log_text()
    );
}
