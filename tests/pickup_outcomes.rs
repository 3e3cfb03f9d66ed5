//! Nothing silent at pickup and after the credit, through the real binary:
//! every listed file that is not credited is a skip with its reason (in
//! `once --json`, the exit code and `status`), the default pattern ignores
//! case, `stable:` judges old files by their mtime at once, and a report the
//! partner's server refuses fails the run until a later tidy-up delivers it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::servers::{ensure_test_user, HttpAuth, HttpServer, Sshd, SshdOpts, TestCa};
use common::workspace::Workspace;
use serde_json::Value;

/// A local-inbox partner `id` reading `inbox/<id>`, with `source` lines
/// (pattern, ready, …) in its `[partner.source]`.
fn partner(w: &Workspace, id: &str, source: &str) -> String {
    std::fs::create_dir_all(w.inbox(id)).unwrap();
    format!(
        "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n\
         [partner.source]\nkind = \"local\"\ndir = \"inbox/{id}\"\n{source}\n\n"
    )
}

fn setup(id: &str, source: &str) -> Workspace {
    let w = Workspace::new();
    w.config(&partner(&w, id, source));
    w.demo_members();
    w
}

fn status_json(w: &Workspace, id: &str) -> Value {
    let v: Value = serde_json::from_str(&w.ok(&["status", "--json"])).unwrap();
    v["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {v:#}"))
}

fn status_text(w: &Workspace) -> String {
    w.ok(&["status"])
}

/// The one skip of `name` in a run report.
fn skip<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped list: {run:#}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not skipped: {run:#}"))
}

/// Set a file's modification time `ago` before now.
fn age(p: &Path, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn pattern_mismatch_too_large_and_unsafe_names_are_skips_that_need_a_human() {
    let w = setup("shop", "ready = \"immediate\"\nmax_size = \"100B\"");
    w.write("inbox/shop/a.csv", "NM0000000001,k1,10\n");
    w.write("inbox/shop/notes.txt", "not an exchange file\n");
    w.write(
        "inbox/shop/big.csv",
        "NM0000000002,k1,10\n".repeat(10), // 190 bytes
    );
    // A hidden name (an upload in progress) is not a delivery: not a skip.
    w.write("inbox/shop/.partial.csv", "NM0000000003,k1,10\n");
    // A name that could never be a safe path: a skip, not a warning only.
    w.write("inbox/shop/x\\y.csv", "NM0000000003,k1,10\n");

    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "a skip that needs a human fails the run: {run:#}");
    assert_eq!(run["outcome"], "skipped", "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "credited", "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 0, "too large: not read");
    assert_eq!(w.balance("NM0000000003"), 0, "hidden or unsafe: not read");
    let s = skip(&run, "notes.txt");
    assert_eq!(s["reason"], "pattern-mismatch");
    assert_eq!(s["action_needed"], true);
    assert!(s["detail"].as_str().unwrap().contains("*.csv"), "{s:#}");
    let s = skip(&run, "big.csv");
    assert_eq!(s["reason"], "too-large");
    assert!(s["detail"].as_str().unwrap().contains("190 bytes"), "{s:#}");
    assert_eq!(skip(&run, "x\\y.csv")["reason"], "unsafe-name");
    assert_eq!(run["skipped"].as_array().unwrap().len(), 3, "{run:#}");

    let st = status_json(&w, "shop");
    let last = &st["last_run"];
    assert_eq!(last["outcome"], "skipped", "{st:#}");
    assert_eq!(last["skipped"], 3, "{st:#}");
    assert_eq!(last["skipped_by_reason"]["unsafe-name"], 1, "{st:#}");
    assert_eq!(last["skipped_by_reason"]["pattern-mismatch"], 1, "{st:#}");
    assert_eq!(last["skipped_by_reason"]["too-large"], 1, "{st:#}");
    assert_eq!(st["failing"], true, "{st:#}");
    assert_eq!(st["consecutive_failures"], 1, "{st:#}");
    assert_eq!(st["last_credited"]["name"], "a.csv", "{st:#}");
    let text = status_text(&w);
    for needle in [
        "pattern-mismatch 1",
        "too-large 1",
        "notes.txt: pattern-mismatch",
        "big.csv: too-large",
        "x\\\\y.csv: unsafe-name",
        "FAILING",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[test]
fn an_already_credited_file_left_in_the_inbox_is_named_with_its_file_id() {
    let w = setup("shop", "ready = \"immediate\"\nafter = \"keep\"");
    w.write("inbox/shop/a.csv", "NM0000000001,k1,10\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "ok");
    let id = w.int("SELECT id FROM files WHERE name = 'a.csv'");

    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "already credited needs nobody: {run:#}");
    assert_eq!(run["outcome"], "skipped", "not no-file: {run:#}");
    let s = skip(&run, "a.csv");
    assert_eq!(s["reason"], "already-seen");
    assert_eq!(s["file_id"], id);
    assert_eq!(s["action_needed"], false);
    assert_eq!(w.balance("NM0000000001"), 10);

    let st = status_json(&w, "shop");
    assert_eq!(st["last_run"]["skipped_by_reason"]["already-seen"], 1);
    assert_eq!(st["last_run"]["skips"][0]["file_id"], id, "{st:#}");
    assert_eq!(st["failing"], false);
    let text = status_text(&w);
    assert!(
        text.contains(&format!("a.csv: already-seen (file {id})")),
        "{text}"
    );
}

#[test]
fn a_missing_done_file_is_not_ready_and_does_not_fail_the_run() {
    let w = setup("shop", "ready = \"done-file\"");
    w.write("inbox/shop/x.csv", "NM0000000001,k1,10\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "skipped");
    let s = skip(&run, "x.csv");
    assert_eq!(s["reason"], "done-file-missing");
    assert_eq!(s["action_needed"], false);
    assert!(
        s["detail"].as_str().unwrap().contains("x.csv.done"),
        "{s:#}"
    );
    let st = status_json(&w, "shop");
    assert_eq!(st["last_run"]["skipped_by_reason"]["done-file-missing"], 1);
    assert_eq!(st["failing"], false);
    assert!(status_text(&w).contains("x.csv: done-file-missing"));

    // The marker arrives: credited, and the marker is never a skip itself.
    w.write("inbox/shop/x.csv.done", "");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "ok", "{run:#}");
    assert_eq!(run["skipped"].as_array().unwrap().len(), 0, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
}

#[test]
fn a_file_still_changing_is_reported_with_the_seconds_left() {
    let w = setup("shop", "ready = \"stable:2s\"");
    let p = w.write("inbox/shop/growing.csv", "NM0000000001,k1,10\n");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..25 {
            std::thread::sleep(Duration::from_millis(200));
            let mut f = std::fs::File::options().append(true).open(&p).unwrap();
            writeln!(f, "NM0000000001,k{},10", i + 2).unwrap();
        }
    });
    let (code, run) = w.once_json("shop", &[]);
    writer.join().unwrap();
    assert_eq!(code, 0, "not ready yet is not a failure: {run:#}");
    assert_eq!(run["outcome"], "skipped", "{run:#}");
    let s = skip(&run, "growing.csv");
    assert_eq!(s["reason"], "still-changing");
    let left = s["seconds_left"].as_u64().expect("seconds_left");
    assert!((1..=3).contains(&left), "{s:#}");
    assert_eq!(w.balance("NM0000000001"), 0);
    let st = status_json(&w, "shop");
    assert_eq!(st["last_run"]["skipped_by_reason"]["still-changing"], 1);
    assert!(status_text(&w).contains("growing.csv: still-changing"));
}

#[test]
fn a_refused_file_put_back_unchanged_is_a_skip_and_corrected_it_is_read_again() {
    let w = setup("shop", "ready = \"immediate\"");
    // Every row fails (unknown member): over max_error_ratio, refused.
    w.write("inbox/shop/bad.csv", "NOPE1,k1,10\nNOPE2,k2,10\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "refused", "{run:#}");
    let id = w.int("SELECT id FROM files WHERE name = 'bad.csv'");
    let failed = w.path("inbox/shop/failed/bad.csv");
    assert!(failed.exists(), "moved to failed/");

    // Put back as it was (mv keeps the mtime, so even the listing entry is
    // the same as the refused one).
    std::fs::rename(&failed, w.path("inbox/shop/bad.csv")).unwrap();
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "needs a human: {run:#}");
    assert_eq!(run["outcome"], "skipped", "{run:#}");
    let s = skip(&run, "bad.csv");
    assert_eq!(s["reason"], "refused-content");
    assert_eq!(s["file_id"], id);
    let detail = s["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("same content as refused file {id}"))
            && detail.contains("re-deliver it under another name or with corrected content")
            && detail.contains(&format!("milebatch retry --file {id}")),
        "{detail}"
    );
    let st = status_json(&w, "shop");
    assert_eq!(st["last_run"]["skipped_by_reason"]["refused-content"], 1);
    assert_eq!(st["last_refused"]["id"], id, "{st:#}");
    assert!(status_text(&w).contains(&format!("bad.csv: refused-content (file {id})")));

    // Corrected under the same name: processed again, and credited.
    w.write(
        "inbox/shop/bad.csv",
        "NM0000000001,k1,10\nNM0000000002,k2,10\n",
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "credited", "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 10);
}

#[test]
fn the_default_pattern_takes_an_upper_case_csv() {
    let w = Workspace::new();
    let cfg = format!(
        "{}{}",
        partner(&w, "sakura", "ready = \"immediate\""),
        partner(
            &w,
            "strict",
            "ready = \"immediate\"\npattern = \"*.csv\"\npattern_case = \"sensitive\""
        )
    );
    w.config(&cfg);
    w.demo_members();
    w.write("inbox/sakura/SAKURA_20261130.CSV", "NM0000000001,k1,10\n");
    w.write("inbox/strict/SAKURA_20261130.CSV", "NM0000000002,k1,10\n");
    let (code, run) = w.once_json("sakura", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["name"], "SAKURA_20261130.CSV", "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
    // The escape hatch: case-sensitive, and then not silent either.
    let (code, run) = w.once_json("strict", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(
        skip(&run, "SAKURA_20261130.CSV")["reason"],
        "pattern-mismatch"
    );
    assert_eq!(w.balance("NM0000000002"), 0);
}

#[test]
fn stable_takes_an_old_file_at_once() {
    // No `ready`: the default, stable:60s.
    let w = setup("shop", "");
    let p = w.write("inbox/shop/old.csv", "NM0000000001,k1,10\n");
    age(&p, Duration::from_secs(2 * 3600));
    let t = Instant::now();
    let (code, run) = w.once_json("shop", &[]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "credited", "{run:#}");
    assert!(
        took < Duration::from_secs(15),
        "an old file waited: {took:?}"
    );
    assert_eq!(w.balance("NM0000000001"), 10);
}

#[test]
fn stable_takes_an_old_file_on_sftp_at_once() {
    let sshd = Sshd::start(SshdOpts::default());
    let (u, g) = ensure_test_user();
    let inbox = sshd.root.join("stable-in");
    std::fs::create_dir(&inbox).unwrap();
    let own = |p: &Path| std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
    own(&inbox);
    let old = inbox.join("old.csv");
    std::fs::write(&old, "NM0000000001,k1,10\n").unwrap();
    own(&old);
    age(&old, Duration::from_secs(2 * 3600));
    let w = Workspace::new();
    // No `ready`: the default stable:60s.
    w.config(&format!(
        "[[partner]]\nid = \"p\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\n\
         dir = \"{dir}\"\nkey_file = \"{key}\"\nhost_key = \"{fp}\"\ntimeout = \"5s\"\nretries = 1\n",
        port = sshd.port,
        user = sshd.user,
        dir = inbox.display(),
        key = sshd.client_key.display(),
        fp = sshd.host_key_fingerprint(),
    ));
    w.demo_members();
    let t = Instant::now();
    let (code, run) = w.once_json("p", &[]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "credited", "{run:#}");
    assert!(
        took < Duration::from_secs(15),
        "an old file waited: {took:?}"
    );
    assert_eq!(w.balance("NM0000000001"), 10);
}

#[test]
fn stable_waits_for_a_young_file_and_does_not_hold_an_old_one_back() {
    let w = setup("shop", "ready = \"stable:3s\"");
    let old = w.write("inbox/shop/a-old.csv", "NM0000000001,k1,10\n");
    age(&old, Duration::from_secs(3600));
    w.write("inbox/shop/b-young.csv", "NM0000000002,k1,20\n");
    let t = Instant::now();
    let out = w.run(&["once", "--json", "--partner", "shop"]);
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run[0]["files"].as_array().unwrap().len(), 2, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 20);
    assert!(took >= Duration::from_millis(2500), "no wait: {took:?}");
    // The wait is logged with the file and its seconds left, after the old
    // file was already done.
    let wait = stderr
        .find("waiting for files to be stable")
        .unwrap_or_else(|| panic!("no wait logged:\n{stderr}"));
    let line = stderr[wait..].lines().next().unwrap();
    assert!(
        line.contains("b-young.csv (") && line.contains("s left"),
        "{line}"
    );
    assert!(!line.contains("a-old.csv"), "{line}");
    let first_done = stderr.find("file done").unwrap();
    assert!(first_done < wait, "the old file waited:\n{stderr}");
}

#[test]
fn a_report_the_server_refuses_fails_the_run_until_a_later_tidy_delivers_it() {
    let ca = TestCa::new();
    let server = HttpServer::start(Some(&ca), HttpAuth::None);
    server.put_file("/x.csv", "NM0000000001,k1,10\nnobody,k2,1\n");
    let w = Workspace::new();
    w.config(&format!(
        "[[partner]]\nid = \"web\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"https\"\nurl = \"{}\"\nerrors_url = \"{}\"\nca_file = \"{}\"\n\
         timeout = \"5s\"\nretries = 1\n",
        server.url("/x.csv"),
        server.url("/errors/"),
        ca.ca_pem.display()
    ));
    w.demo_members();
    server.set_put_status(Some(403));

    let (code, run) = w.once_json("web", &[]);
    assert_eq!(code, 1, "an undelivered report fails the run: {run:#}");
    assert_eq!(run["outcome"], "tidy-failed", "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "credited", "{run:#}");
    let t = &run["tidy_failed"][0];
    let err = t["error"].as_str().unwrap();
    assert!(
        err.contains("x.errors.csv not delivered") && err.contains("403"),
        "{err}"
    );
    let since = t["failing_since"].as_str().unwrap().to_owned();
    assert_eq!(w.balance("NM0000000001"), 10, "the credit stands");

    let st = status_json(&w, "web");
    assert_eq!(st["failing"], true, "{st:#}");
    assert_eq!(st["failing_since"], since.as_str(), "{st:#}");
    assert_eq!(st["last_run"]["outcome"], "tidy-failed");
    assert!(st["waiting"][0]["tidy_error"]
        .as_str()
        .unwrap()
        .contains("403"));
    let text = status_text(&w);
    assert!(
        text.contains("FAILING") && text.contains("tidy-up failing since") && text.contains("403"),
        "{text}"
    );

    // Still refused: still failing, since the same time; nothing credited twice.
    let (code, run) = w.once_json("web", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["outcome"], "tidy-failed", "{run:#}");
    assert_eq!(skip(&run, "x.csv")["reason"], "already-seen");
    let st = status_json(&w, "web");
    assert_eq!(st["consecutive_failures"], 2, "{st:#}");
    assert_eq!(st["failing_since"], since.as_str(), "{st:#}");
    // One report.undelivered event for the file, at its first failure, not
    // one per run that fails again.
    assert_eq!(
        w.int("SELECT count(*) FROM outbox WHERE kind = 'report.undelivered' AND partner = 'web'"),
        1
    );

    // The server takes it again: delivered, the partner is healthy, and the
    // old error is kept as history.
    server.set_put_status(None);
    let (code, run) = w.once_json("web", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["tidy_failed"].as_array().unwrap().len(), 0);
    assert_eq!(
        std::fs::read_to_string(server.uploads.join("errors/x.errors.csv")).unwrap(),
        "nobody,k2,1,E003\n"
    );
    let st = status_json(&w, "web");
    assert_eq!(st["failing"], false, "{st:#}");
    assert_eq!(st["consecutive_failures"], 0);
    assert_eq!(st["waiting"].as_array().unwrap().len(), 0, "{st:#}");
    assert!(st["last_error"].as_str().unwrap().contains("403"));
    assert!(st["last_error_at"].is_string(), "{st:#}");
    let text = status_text(&w);
    assert!(
        text.contains("last error at") && !text.contains("FAILING"),
        "{text}"
    );
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.ledger_rows(), 1);
}

/// `summary = true` on an HTTP partner: a file with no failed row has no
/// error report, only its summary to PUT. A 403 to it is an undelivered
/// report like any other (the run is `tidy-failed`, `status` shows it);
/// once the server takes it, it arrives as `<stem>.summary.csv` beside
/// where the error reports go.
#[test]
fn a_summary_the_server_refuses_fails_the_run_until_it_is_delivered() {
    let ca = TestCa::new();
    let server = HttpServer::start(Some(&ca), HttpAuth::None);
    server.put_file("/x.csv", "NM0000000001,k1,10\nNM0000000002,k2,5\n");
    let w = Workspace::new();
    w.config(&format!(
        "[[partner]]\nid = \"web\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\nsummary = true\n\
         [partner.source]\nkind = \"https\"\nurl = \"{}\"\nerrors_url = \"{}\"\nca_file = \"{}\"\n\
         timeout = \"5s\"\nretries = 1\n",
        server.url("/x.csv"),
        server.url("/errors/"),
        ca.ca_pem.display()
    ));
    w.demo_members();
    server.set_put_status(Some(403));

    let (code, run) = w.once_json("web", &[]);
    assert_eq!(code, 1, "an undelivered summary fails the run: {run:#}");
    assert_eq!(run["outcome"], "tidy-failed", "{run:#}");
    assert_eq!(run["files"][0]["failed"], 0, "{run:#}");
    let err = run["tidy_failed"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("x.summary.csv not delivered") && err.contains("403"),
        "{err}"
    );
    let st = status_json(&w, "web");
    assert_eq!(st["failing"], true, "{st:#}");
    assert!(st["waiting"][0]["tidy_error"]
        .as_str()
        .unwrap()
        .contains("x.summary.csv"));

    server.set_put_status(None);
    let (code, run) = w.once_json("web", &[]);
    assert_eq!(code, 0, "{run:#}");
    let got = std::fs::read_to_string(server.uploads.join("errors/x.summary.csv")).unwrap();
    assert!(
        got.starts_with("item,value\nfile,x.csv\n")
            && got.contains("\noutcome,credited\nrows,2\ncredited,2\nfailed,0\nmiles,15\n")
            && got.ends_with("\nfile_code,\nreason,\n"),
        "{got}"
    );
    assert!(
        !server.uploads.join("errors/x.errors.csv").exists(),
        "no failed row, no report"
    );
    assert_eq!(status_json(&w, "web")["failing"], false);
    assert_eq!(w.ledger_rows(), 2, "credited once");
}

/// A stray file in an inbox (issue 23, point 6): the run that first sees
/// `readme.txt` reports it (exit 1, `skipped`, FAILING); later runs list it
/// as `ignored` and pass (exit 0, `no-file`); changed, it is reported
/// again; gone and back, too. A dry run reports without remembering.
#[test]
fn a_stray_file_is_reported_once_then_listed_as_ignored_until_it_changes() {
    let w = setup("shop", "ready = \"immediate\"");
    w.write("inbox/shop/readme.txt", "how to send files\n");

    let (code, run) = w.once_json("shop", &["--dry-run"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(skip(&run, "readme.txt")["reason"], "pattern-mismatch");

    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "the first real run reports it: {run:#}");
    assert_eq!(run["outcome"], "skipped", "{run:#}");
    let s = skip(&run, "readme.txt");
    assert_eq!(s["reason"], "pattern-mismatch", "{s:#}");
    assert_eq!(s["action_needed"], true, "{s:#}");
    assert!(
        s["detail"].as_str().unwrap().contains("reported once"),
        "{s:#}"
    );
    let st = status_json(&w, "shop");
    assert_eq!(st["failing"], true, "{st:#}");

    for round in 0..2 {
        let (code, run) = w.once_json("shop", &[]);
        assert_eq!(code, 0, "round {round}: reported already: {run:#}");
        assert_eq!(run["outcome"], "no-file", "{run:#}");
        let s = skip(&run, "readme.txt");
        assert_eq!(s["reason"], "ignored", "{s:#}");
        assert_eq!(s["action_needed"], false, "{s:#}");
        assert!(
            s["detail"].as_str().unwrap().contains("until it changes"),
            "{s:#}"
        );
    }
    let st = status_json(&w, "shop");
    assert_eq!(st["failing"], false, "{st:#}");
    assert_eq!(st["last_run"]["skipped_by_reason"]["ignored"], 1, "{st:#}");
    let text = status_text(&w);
    assert!(
        text.contains("readme.txt: ignored — does not match pattern"),
        "{text}"
    );

    // Changed: a new file to the run, reported again.
    w.write("inbox/shop/readme.txt", "how to send files, v2\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(skip(&run, "readme.txt")["reason"], "pattern-mismatch");
    // Gone for a run, then back unchanged: forgotten, so reported again.
    let bytes = std::fs::read(w.inbox("shop").join("readme.txt")).unwrap();
    std::fs::remove_file(w.inbox("shop").join("readme.txt")).unwrap();
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(
        (code, run["outcome"].as_str()),
        (0, Some("no-file")),
        "{run:#}"
    );
    w.write("inbox/shop/readme.txt", bytes);
    let (code, _) = w.once_json("shop", &[]);
    assert_eq!(code, 1);
    // A credited delivery beside a known stray: `ok`.
    w.write("inbox/shop/a.csv", "NM0000000001,k1,10\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!((code, run["outcome"].as_str()), (0, Some("ok")), "{run:#}");
}

/// `ignore = ["*.txt", …]`: such names are never reported, only listed as
/// ignored; a name that matches `pattern` is taken whatever `ignore` says
/// (case as `pattern`); a glob that does not parse is a config error.
#[test]
fn ignore_silences_names_that_are_not_deliveries() {
    let w = setup(
        "shop",
        "ready = \"immediate\"\nignore = [\"*.txt\", \"*.csv\", \"Thumbs.db\"]",
    );
    w.write("inbox/shop/readme.TXT", "notes\n");
    w.write("inbox/shop/Thumbs.db", "x");
    w.write("inbox/shop/a.csv", "NM0000000001,k1,10\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "ok", "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10, "pattern wins over ignore");
    let s = skip(&run, "readme.TXT");
    assert_eq!(s["reason"], "ignored");
    assert!(s["detail"].as_str().unwrap().contains("\"*.txt\""), "{s:#}");
    assert_eq!(skip(&run, "Thumbs.db")["reason"], "ignored");

    w.config(&partner(&w, "shop", "ignore = [\"[\"]"));
    let o = w.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("`ignore` \"[\" is not a glob"), "{out}");
}
