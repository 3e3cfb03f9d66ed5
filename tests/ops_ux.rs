//! What ops see on the command line, through the real binary: `files`
//! (filters, order, limit, times in the configured zone), unknown partners
//! and members (exit 1), `members import` refusing what it cannot import
//! correctly, and the text log's time zone. First-install edges: the
//! members header rule, `daemon` as `run`, no config found, a closed stdout.

mod common;

use std::process::Command;
use std::time::Duration;

use common::workspace::{local_partner, Workspace, BIN, FAKE_NOW};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `once` for `shop` with the clock at `at`.
fn once_at(w: &Workspace, at: &str) -> serde_json::Value {
    let mut c = w.cmd(&["once", "--json", "--partner", "shop"]);
    c.env(FAKE_NOW, at);
    let o = c.output().unwrap();
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o.stdout), text(&o.stderr)))[0]
        .clone()
}

/// Three deliveries: a credited file, a refused one, a credited one, at
/// known instants (Tokyo is UTC+9).
fn three_files() -> Workspace {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write("inbox/shop/a.csv", "NM0000000001,A-1,10\n");
    assert_eq!(once_at(&w, "2026-11-20T00:00:00Z")["outcome"], "ok");
    // Every row unknown: over max_error_ratio, refused whole.
    w.write("inbox/shop/b.csv", "NOPE1,B-1,10\nNOPE2,B-2,10\n");
    let r = once_at(&w, "2026-11-22T16:00:00Z");
    assert_eq!(r["files"][0]["outcome"], "refused", "{r:#}");
    w.write("inbox/shop/c.csv", "NM0000000001,C-1,30\n");
    assert_eq!(once_at(&w, "2026-11-23T03:00:00Z")["outcome"], "ok");
    w
}

/// The data lines of `files`' table: (id, the rest split on tabs).
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| l.split('\t').count() > 5)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn files_newest_first_with_dates_filters_and_a_limit() {
    let w = three_files();
    let out = w.ok(&["files"]);
    assert!(
        out.starts_with("id\treceived\tpartner\tfile\toutcome\t"),
        "{out}"
    );
    let rows = table(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["3", "2", "1"], "newest first:\n{out}");
    // Received times in the configured zone, named.
    assert_eq!(rows[0][1], "2026-11-23 12:00:00 JST", "{out}");
    assert_eq!(rows[1][1], "2026-11-23 01:00:00 JST", "{out}");
    // A refused file shows its report and its reason.
    assert_eq!(rows[1][4], "refused");
    // id, received, partner, file, outcome, rows, credited, failed,
    // repeats, miles, report, reason
    assert!(rows[1][10].ends_with(".errors.csv"), "report path: {out}");
    assert!(rows[1][11].starts_with("F004 "), "reason: {out}");

    let out = w.ok(&["files", "--oldest-first"]);
    let ids: Vec<String> = table(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["1", "2", "3"], "{out}");

    // --since is a day in Tokyo: 2026-11-23 began at 2026-11-22T15:00Z, so
    // file 2 (received 16:00Z on the 22nd) is on the 23rd.
    let out = w.ok(&["files", "--since", "2026-11-23"]);
    let ids: Vec<String> = table(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["3", "2"], "{out}");

    let out = w.ok(&["files", "--outcome", "refused"]);
    let ids: Vec<String> = table(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["2"], "{out}");
    let out = w.ok(&["files", "--outcome", "credited", "--since", "2026-11-21"]);
    let ids: Vec<String> = table(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["3"], "{out}");

    let out = w.ok(&["files", "--limit", "1"]);
    assert_eq!(table(&out).len(), 1, "{out}");
    assert!(
        out.contains("2 more file(s) not shown; use --limit 3 (or --limit 0 for all)"),
        "{out}"
    );

    // JSON: the same order and filters; the local date; times stay RFC 3339.
    let o = w.run(&["files", "--json", "--limit", "2"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["id"], 3);
    assert_eq!(arr[1]["date"], "2026-11-23");
    assert_eq!(arr[1]["started_at"], "2026-11-22T16:00:00.000Z");
    assert!(text(&o.stderr).contains("1 more file(s) not shown"));

    let o = w.run(&["files", "--outcome", "lost"]);
    assert_eq!(o.status.code(), Some(2), "a bad value is a usage error");
    assert!(text(&o.stderr).contains("credited"), "{}", text(&o.stderr));
    let o = w.run(&["files", "--since", "23.11.2026"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("YYYY-MM-DD"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn history_times_are_in_the_configured_zone() {
    let w = three_files();
    let out = w.ok(&["history", "--partner", "shop", "--key", "C-1"]);
    assert!(
        out.starts_with("credited at\tchannel\tmember\tmiles\tfile:line\n"),
        "{out}"
    );
    let line = out.lines().nth(1).unwrap_or_default();
    // The channel column, as in the command table: a pulled file's row.
    assert!(
        line.contains(" JST\tpull\tNM0000000001\t30\tc.csv:1"),
        "{out}"
    );
}

#[test]
fn an_unknown_partner_exits_1_naming_the_known_ones() {
    let w = Workspace::new();
    w.config(&format!(
        "{}{}",
        local_partner("shop", "inbox/shop", ""),
        local_partner("bank", "inbox/bank", "")
    ));
    w.demo_members();
    for args in [
        &["once", "--partner", "shopp"][..],
        &["files", "--partner", "shopp"],
        &["history", "--partner", "shopp", "--key", "K"],
    ] {
        let o = w.run(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("no partner \"shopp\"") && err.contains("shop, bank"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn balance_of_an_unknown_member_exits_1_and_honours_json() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    let o = w.run(&["balance", "nobody@example.jp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no member \"nobody@example.jp\""));
    let o = w.run(&["balance", "nobody@example.jp", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"member": "nobody@example.jp", "found": false})
    );
    let o = w.run(&["balance", "NM0000000001", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["found"], true);
    assert_eq!(v["miles"], 0);
}

#[test]
fn members_import_refuses_repeats_counts_crlf_lines_and_reads_shift_jis() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    let import = |rel: &str, extra: &[&str]| {
        let mut args = vec!["members", "import", rel];
        args.extend_from_slice(extra);
        w.run(&args)
    };
    let count = || w.int("SELECT count(*) FROM members");

    // A member ID twice: refused, both lines named, nothing imported.
    w.write(
        "dup.csv",
        "member_id,email,status\r\nM1,a@x.jp,active\r\nM2,b@x.jp,active\r\n\r\nM1,c@x.jp,suspended\r\n",
    );
    let o = import("dup.csv", &[]);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("dup.csv:5: member_id is the same as on line 2"),
        "{err}"
    );
    // A bad line in a CRLF file: its real line number.
    w.write(
        "crlf.csv",
        "M1,a@x.jp,active\r\nM2,b@x.jp,active\r\nM3,c@x.jp,sleeping\r\n",
    );
    let err = text(&import("crlf.csv", &[]).stderr);
    assert!(err.contains("crlf.csv:3: status \"sleeping\""), "{err}");

    // Shift_JIS: told how to convert, or read with --encoding.
    let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("M1,a@x.jp,active\r\n髙橋,t@x.jp,active\r\n");
    w.write("sjis.csv", &sjis[..]);
    let err = text(&import("sjis.csv", &[]).stderr);
    assert!(
        err.contains("sjis.csv:2: column 1 is not UTF-8")
            && err.contains("iconv -f CP932 -t UTF-8")
            && err.contains("--encoding shift_jis"),
        "{err}"
    );
    assert_eq!(count(), 0, "nothing of a refused import stays");
    let o = import("sjis.csv", &["--encoding", "shift_jis"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(count(), 2);
    let v: serde_json::Value = serde_json::from_str(&w.ok(&["balance", "髙橋", "--json"])).unwrap();
    assert_eq!(v["member_id"], "髙橋");
}

#[test]
fn text_logs_carry_the_configured_zone() {
    let w = Workspace::new();
    // The workspace's zone is Asia/Tokyo.
    w.config(&local_partner("shop", "inbox/shop", ""));
    std::fs::create_dir_all(w.inbox("shop")).unwrap();
    w.demo_members();
    let o = w.run(&["once"]);
    let err = text(&o.stderr);
    let first = err.lines().next().unwrap_or_default();
    let stamp = first.split_whitespace().next().unwrap_or_default();
    assert!(
        stamp.len() == "2026-11-24T21:00:05.123+09:00".len() && stamp.ends_with("+09:00"),
        "{err}"
    );
    // JSON logs keep an RFC 3339 timestamp field.
    let o = w.run(&["--log-format", "json", "once"]);
    let line = text(&o.stderr);
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok(),
        "{line}"
    );
}

#[test]
fn members_import_recognises_a_header_in_any_language_and_takes_header_flag() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    let import = |file: &str, extra: &[&str]| {
        let mut args = vec!["members", "import", file, "--json"];
        args.extend_from_slice(extra);
        w.run(&args)
    };
    let count = || w.int("SELECT count(*) FROM members");

    // A Japanese header (UTF-8 and Shift_JIS): skipped by `auto`.
    w.write(
        "ja.csv",
        "会員ID,メールアドレス,状態\r\nM1,a@x.jp,active\r\nM2,,suspended\r\n",
    );
    let o = import("ja.csv", &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(count(), 2);
    let (sjis, _, _) =
        encoding_rs::SHIFT_JIS.encode("会員ID,メールアドレス,状態\r\nM3,c@x.jp,active\r\n");
    w.write("ja-sjis.csv", &sjis[..]);
    let o = import("ja-sjis.csv", &["--encoding", "shift_jis"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(count(), 3);

    // A first member line is never taken for a header, even without an
    // e-mail (its status is a status).
    w.write("noheader.csv", "M4,,active\nM5,e@x.jp,active\n");
    let o = import("noheader.csv", &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(count(), 5);

    // --header true on a file without one: refused, saying what to use.
    w.write("data.csv", "M6,f@x.jp,active\n");
    let o = import("data.csv", &["--header", "true"]);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("data.csv:1:") && err.contains("--header auto"),
        "{err}"
    );
    assert_eq!(count(), 5);
    // --header false: line 1 is data, so a header is a bad member line.
    let o = import("ja.csv", &["--header", "false"]);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("ja.csv:1: email \"メールアドレス\" has no '@'"),
        "{err}"
    );
    let o = import("data.csv", &["--header", "false"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(count(), 6);
    let o = w.run(&["members", "import", "data.csv", "--header", "maybe"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("auto"), "{}", text(&o.stderr));
}

#[test]
fn daemon_is_the_run_command() {
    let w = Workspace::new();
    w.config(&w.scheduled_partner("shop", "daily 03:00"));
    w.demo_members();
    let mut d = w.spawn(w.cmd(&["daemon"]));
    d.wait_log("daemon ready", Duration::from_secs(30));
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        d.log_text()
    );
    let help = w.ok(&["--help"]);
    assert!(help.contains("[alias: daemon]"), "{help}");
}

#[test]
fn no_config_is_said_once_with_how_to_point_at_one() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    let empty = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(empty.path())
            .env_remove("MILEBATCH_CONFIG")
            .env_remove(FAKE_NOW)
            .output()
            .unwrap()
    };
    let o = bare(&["status"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("milebatch: error: no config file partners.toml:")
            && err.contains("--config PATH")
            && err.contains("MILEBATCH_CONFIG"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    // MILEBATCH_CONFIG names it; --config wins over it.
    let o = Command::new(BIN)
        .args(["status"])
        .current_dir(empty.path())
        .env("MILEBATCH_CONFIG", w.config_path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("shop ("), "{}", text(&o.stdout));
    let o = Command::new(BIN)
        .args(["--config", "elsewhere.toml", "status"])
        .current_dir(empty.path())
        .env("MILEBATCH_CONFIG", w.config_path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no config file elsewhere.toml"),
        "{}",
        text(&o.stderr)
    );
}

/// `milebatch status --json | head`: the reader is gone before milebatch
/// writes (the pipe's read end is closed before it starts), for a few
/// commands: exit 141 as a shell reports SIGPIPE, and nothing on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    let w = three_files();
    for args in [
        &["status", "--json"][..],
        &["files"],
        &["check"],
        &["history", "--partner", "shop", "--key", "A-1"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = w.cmd(args).stdout(writer).output().unwrap();
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(141), "{args:?}: {err}");
    }
}

/// The browser tests' screenshots go under the target folder this build
/// uses (the one holding the binary under test, `CARGO_TARGET_DIR` when
/// set), not a `./target` beside the sources that cargo may not use.
#[test]
fn browser_screenshots_go_under_the_target_folder_in_use() {
    let dir = common::browser::screenshot_dir("some_test");
    let target = std::path::Path::new(BIN)
        .ancestors()
        .nth(2) // <target>/debug/milebatch
        .unwrap();
    assert!(
        dir.starts_with(target),
        "{} not under {}",
        dir.display(),
        target.display()
    );
    assert!(dir.ends_with("screenshots/some_test"), "{}", dir.display());
}
