//! Notifications on the real binary against real servers: aiosmtpd (PyPI)
//! over STARTTLS and implicit TLS with AUTH, and an HTTPS webhook receiver
//! in Python that checks `Milebatch-Signature` with its own HMAC. Mails
//! are decoded by Python's email package, not by milebatch.
//!
//! - a file credited with errors mails the partner in Japanese
//!   (ISO-2022-JP, 7 bit), ops get their own mail, a partner without
//!   `[partner.notify]` gets nothing;
//! - a refused file over implicit TLS with an HTML part; a name ISO-2022-JP
//!   cannot carry goes out in UTF-8, not mangled;
//! - a failing webhook is retried with the same event id and a valid
//!   signature each time; `status`, `notify list` and the credit itself
//!   are as they should be;
//! - SIGKILL of the daemon while it sends: the restarted daemon delivers
//!   the same event id, and nothing else;
//! - an unreachable SMTP server never fails a credit;
//! - `notify test`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::servers::{free_port, TestCa};
use common::workspace::{wait_for, Workspace};

const PYTHON: &str = "/opt/milebatch-test/pyvenv/bin/python";

/// A helper process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the TLS server `script` (tests/common/…) with the test
/// virtualenv's Python on a free port, with a certificate named `cert`
/// from `ca`, then `args`; wait for its "ready" line.
fn start_py(script: &str, ca: &TestCa, cert: &str, args: &[&str]) -> (u16, Proc) {
    let (cert, key) = ca.server_cert(cert);
    let port = free_port();
    let port_arg = port.to_string();
    let mut all = vec![
        port_arg.as_str(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    (port, start_py_args(script, &all))
}

fn start_py_args(script: &str, args: &[&str]) -> Proc {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} not found: run `bash .ci/install-deps.sh` as root (it installs aiosmtpd there)"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/common")
        .join(script);
    let mut child = Command::new(PYTHON)
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{script} did not start");
    Proc(child)
}

struct Smtp {
    port: u16,
    out: PathBuf,
    _p: Proc,
}

fn smtp(w: &Workspace, ca: &TestCa, mode: &str) -> Smtp {
    let out = w.path(&format!("mail-{mode}"));
    std::fs::create_dir_all(&out).unwrap();
    let (port, p) = start_py(
        "smtp_sink.py",
        ca,
        &format!("smtp-{mode}"),
        &[mode, out.to_str().unwrap(), "mb", "s3cret-smtp"],
    );
    Smtp { port, out, _p: p }
}

impl Smtp {
    fn mails(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<_> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    fn to(&self, addr: &str) -> Vec<serde_json::Value> {
        self.mails()
            .into_iter()
            .filter(|m| m["rcpt_tos"].as_array().unwrap().iter().any(|a| a == addr))
            .collect()
    }
}

struct Hook {
    port: u16,
    out: PathBuf,
    mode: PathBuf,
    _p: Proc,
}

const HOOK_SECRET: &str = "whsec_test_0123456789";

fn hook(w: &Workspace, ca: &TestCa, mode: &str) -> Hook {
    let out = w.path("hooks.jsonl");
    let mode_file = w.write("hook-mode", mode);
    let (port, p) = start_py(
        "webhook_sink.py",
        ca,
        "hook",
        &[
            HOOK_SECRET,
            out.to_str().unwrap(),
            mode_file.to_str().unwrap(),
        ],
    );
    Hook {
        port,
        out,
        mode: mode_file,
        _p: p,
    }
}

impl Hook {
    fn set(&self, mode: &str) {
        std::fs::write(&self.mode, mode).unwrap();
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn smtp_section(ca: &TestCa, port: u16, tls: &str, extra: &str) -> String {
    format!(
        "notify_retry = \"1s\"\n[daemon.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n\
         from = \"milebatch <noreply@operator.example>\"\nusername = \"mb\"\n\
         password_env = \"MB_SMTP_PASSWORD\"\nca_file = \"{}\"\n{extra}\n",
        ca.ca_pem.display()
    )
}

/// A local partner named `name`, then `notify` (a `[partner.notify]`
/// section or nothing).
fn partner(w: &Workspace, id: &str, name: &str, notify: &str) -> String {
    std::fs::create_dir_all(w.inbox(id)).unwrap();
    format!(
        "[[partner]]\nid = \"{id}\"\nname = \"{name}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n\
         [partner.source]\nkind = \"local\"\ndir = \"inbox/{id}\"\nready = \"immediate\"\n{notify}\n"
    )
}

fn run_env(w: &Workspace, args: &[&str]) -> std::process::Output {
    w.cmd(args)
        .env("MB_SMTP_PASSWORD", "s3cret-smtp")
        .env("MB_HOOK_SECRET", HOOK_SECRET)
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One credited row and one unknown member (E003).
const WITH_ERROR: &str = "M000001,k1,100\nNOBODY,k2,5\n";

fn text_part(mail: &serde_json::Value) -> &serde_json::Value {
    mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == "text/plain")
        .unwrap_or_else(|| panic!("no text/plain part: {mail:#}"))
}

#[test]
fn a_file_with_errors_mails_the_partner_in_japanese_and_ops_but_not_a_partner_without_notify() {
    let w = Workspace::new();
    let ca = TestCa::new();
    let s = smtp(&w, &ca, "starttls");
    let daemon = smtp_section(&ca, s.port, "starttls", "")
        + "[daemon.notify]\nemail = [\"ops@operator.example\"]\n";
    w.write_config(
        &daemon,
        &format!(
            "[server]\npublic_url = \"https://mb.example.jp/\"\n\n{}{}",
            partner(
                &w,
                "acme",
                "ACME ストア",
                "[partner.notify]\nemail = [\"ACME 経理 <tanto@acme.example>\"]\n"
            ),
            partner(&w, "quiet", "静かな店", "")
        ),
    );
    w.members(5);
    w.write("inbox/acme/orders.csv", WITH_ERROR);
    w.write("inbox/quiet/q.csv", WITH_ERROR);
    let out = run_env(&w, &["once"]);
    let text = stdout(&out);
    assert!(
        text.contains("notifications: 3 sent, 0 to retry, 0 failed"),
        "{text}"
    );

    let mails = s.mails();
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let acme = s.to("tanto@acme.example");
    assert_eq!(acme.len(), 1, "{mails:#?}");
    let m = &acme[0];
    assert_eq!(m["tls"], true);
    assert_eq!(m["auth"], true);
    assert_eq!(m["mail_from"], "noreply@operator.example");
    assert_eq!(
        m["subject"],
        "【milebatch】ACME ストア: orders.csv の 1 行がエラーになりました"
    );
    assert!(
        m["raw_subject"]
            .as_str()
            .unwrap()
            .starts_with("=?ISO-2022-JP?B?"),
        "{m:#}"
    );
    let part = text_part(m);
    assert_eq!(part["charset"], "iso-2022-jp");
    assert_eq!(part["cte"], "7bit");
    // Folded into short lines for 7 bit: compare the text unfolded.
    let body = &part["text"].as_str().unwrap().replace(['\r', '\n'], "");
    for want in [
        "ACME ストア（acme）ご担当者様",
        "ファイル名: orders.csv",
        "行数: 2 件",
        "積算: 1 件（100 マイル）",
        "エラー: 1 件",
        "E003 会員が見つかりません（会員IDまたは登録メールアドレス）: 1 件",
        "エラーの行だけを直して",
        "https://mb.example.jp/files/1?partner=acme",
        "イベントID: evt_",
    ] {
        assert!(body.contains(want), "no {want:?} in:\n{body}");
    }
    assert!(body.contains(" JST"), "received time in the zone:\n{body}");

    // Ops: one mail per event, naming the partner, and nothing to `quiet`
    // itself (it has no [partner.notify]).
    let ops = s.to("ops@operator.example");
    assert_eq!(ops.len(), 2, "{mails:#?}");
    let ops_text: String = ops
        .iter()
        .map(|m| {
            text_part(m)["text"]
                .as_str()
                .unwrap()
                .replace(['\r', '\n'], "")
        })
        .collect();
    assert!(
        ops_text.contains("静かな店（quiet）: 一部の行がエラー"),
        "{ops_text}"
    );
    assert!(
        ops_text.contains("ACME ストア（acme）: 一部の行がエラー"),
        "{ops_text}"
    );

    // `notify test`: sent now; the partner without notify is told so.
    let out = run_env(&w, &["notify", "test", "--partner", "acme"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("email tanto@acme.example: sent"),
        "{}",
        stdout(&out)
    );
    let tests: Vec<_> = s
        .to("tanto@acme.example")
        .into_iter()
        .filter(|m| m["subject"] == "【milebatch】ACME ストア: 通知のテスト")
        .collect();
    assert_eq!(tests.len(), 1);
    let out = run_env(&w, &["notify", "test", "--partner", "quiet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no [partner.notify]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ops got no mail for the test.
    assert_eq!(s.to("ops@operator.example").len(), 2);
}

#[test]
fn a_refused_file_over_implicit_tls_with_html_and_a_name_iso_2022_jp_cannot_carry() {
    let w = Workspace::new();
    let ca = TestCa::new();
    let s = smtp(&w, &ca, "tls");
    w.write_config(
        &(smtp_section(&ca, s.port, "tls", "html = true")
            + "[daemon.notify]\nemail = [\"ops@operator.example\"]\ndigest = \"08:30\"\n"),
        &partner(
            &w,
            "acme",
            "𠮷野家 本店",
            "[partner.notify]\nemail = [\"tanto@acme.example\"]\n",
        ),
    );
    w.members(5);
    w.write("inbox/acme/empty.csv", "");
    let out = run_env(&w, &["once"]);
    assert!(
        stdout(&out).contains("notifications: 1 sent"),
        "{}",
        stdout(&out)
    );
    let mails = s.mails();
    // Ops are on a daily digest: their mail waits for 08:30, not sent now.
    assert_eq!(mails.len(), 1);
    let list = stdout(&run_env(&w, &["notify", "list"]));
    assert!(
        list.contains("1 pending") && list.contains("ops  ops@operator.example (0 attempts)"),
        "{list}"
    );
    let m = &mails[0];
    assert_eq!(m["tls"], true);
    assert_eq!(
        m["subject"],
        "【milebatch】𠮷野家 本店: empty.csv を受け付けできませんでした（F003）"
    );
    // ① has no ISO-2022-JP form: the whole mail is UTF-8, nothing lost.
    assert!(
        m["raw_subject"].as_str().unwrap().starts_with("=?utf-8?"),
        "{m:#}"
    );
    let part = text_part(m);
    assert_eq!(part["charset"], "utf-8");
    let body = part["text"].as_str().unwrap();
    assert!(body.contains("1 行も積算していません"), "{body}");
    assert!(body.contains("データ行がありません"), "{body}");
    let html = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == "text/html")
        .unwrap_or_else(|| panic!("no HTML part: {m:#}"));
    assert!(
        html["text"]
            .as_str()
            .unwrap()
            .contains("<p>𠮷野家 本店（acme）ご担当者様"),
        "{html:#}"
    );
}

/// The ops dashboard's HTML, fetched from a real `serve` (a certificate of
/// its own CA) as an ops user.
fn ops_dashboard(w: &Workspace) -> String {
    let ca = TestCa::new();
    let config = std::fs::read_to_string(w.config_path()).unwrap();
    // [server] goes before the partners (a table of its own).
    let at = config.find("[[partner]]").unwrap();
    let server = common::serve::tls_server_section(&ca);
    w.write(
        "partners.toml",
        format!("{}{server}\n{}", &config[..at], &config[at..]),
    );
    let add = w.ok(&["user", "add", "ops@operator.example", "--ops"]);
    let password = add.lines().nth(1).unwrap().trim().to_owned();
    let s = common::serve::Serve::start(w, Some(ca));
    let c = s.client();
    let r = c
        .post(s.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("email=ops%40operator.example&password={password}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let sid = r.headers()["set-cookie"].to_str().unwrap();
    let sid = sid.split(';').next().unwrap().to_owned();
    let page = c.get(s.url("/ops")).header("cookie", sid).send().unwrap();
    assert_eq!(page.status(), 200);
    page.text().unwrap()
}

fn status_counts(w: &Workspace) -> serde_json::Value {
    let out = run_env(w, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["notifications"].clone()
}

fn hook_partner(w: &Workspace, h: &Hook, ca: &TestCa, extra: &str) -> String {
    partner(
        w,
        "acme",
        "ACME ストア",
        &format!(
            "[partner.notify]\nwebhook = \"https://127.0.0.1:{}/milebatch\"\n\
             webhook_secret_env = \"MB_HOOK_SECRET\"\nwebhook_ca_file = \"{}\"\n{extra}\n",
            h.port,
            ca.ca_pem.display()
        ),
    )
}

#[test]
fn a_failing_webhook_is_retried_with_the_same_event_id_and_a_valid_signature() {
    let w = Workspace::new();
    let ca = TestCa::new();
    let h = hook(&w, &ca, "fail");
    w.write_config("notify_retry = \"1s\"\n", &hook_partner(&w, &h, &ca, ""));
    w.members(5);
    w.write("inbox/acme/orders.csv", WITH_ERROR);
    let out = run_env(&w, &["once"]);
    let text = stdout(&out);
    assert!(
        text.contains("notifications: 0 sent, 1 to retry, 0 failed"),
        "{text}"
    );
    assert!(text.contains("answered 500"), "{text}");
    // The credit does not depend on its notification.
    assert_eq!(w.int("SELECT count(*) FROM ledger"), 1);
    assert_eq!(status_counts(&w)["pending"], 1);
    let list = stdout(&run_env(&w, &["notify", "list"]));
    assert!(list.contains("1 pending, 0 failed"), "{list}");
    assert!(
        list.contains("last error:") && list.contains("answered 500"),
        "{list}"
    );
    // The ops dashboard shows it too.
    let page = ops_dashboard(&w);
    assert!(
        page.contains("data-pending=\"1\" data-failed=\"0\""),
        "{page}"
    );
    assert!(
        page.contains("一部の行がエラー")
            && page.contains("Webhook")
            && page.contains("answered 500"),
        "{page}"
    );

    h.set("ok");
    std::thread::sleep(Duration::from_millis(1100));
    let text = stdout(&run_env(&w, &["once"]));
    assert!(text.contains("notifications: 1 sent"), "{text}");
    let got = h.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    for r in &got {
        assert_eq!(r["signature_ok"], true, "{r:#}");
        assert_eq!(r["event_id"], got[0]["event_id"]);
        assert_eq!(r["header_event_id"], got[0]["event_id"]);
        assert_eq!(r["content_type"], "application/json");
    }
    let body = &got[1]["body"];
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(body["type"], "file.credited_with_errors");
    assert_eq!(body["partner"]["id"], "acme");
    assert_eq!(body["partner"]["name"], "ACME ストア");
    assert_eq!(body["data"]["file"]["name"], "orders.csv");
    assert_eq!(body["data"]["file"]["failed"], 1);
    assert_eq!(body["data"]["file"]["failed_by_code"]["E003"], 1);
    assert!(
        body["created"].as_str().unwrap().ends_with("+09:00"),
        "{body:#}"
    );
    assert_eq!(status_counts(&w)["pending"], 0);

    // Keys and a reversal are events too, each signed, none naming a person.
    let key = stdout(&run_env(
        &w,
        &[
            "api-key",
            "create",
            "--partner",
            "acme",
            "--label",
            "レジ 1",
        ],
    ));
    let prefix = &key.trim()[..12];
    assert!(run_env(&w, &["api-key", "revoke", prefix]).status.success());
    assert!(
        run_env(&w, &["reverse", "--file", "1", "--reason", "テスト"])
            .status
            .success()
    );
    let text = stdout(&run_env(&w, &["once"]));
    assert!(text.contains("notifications: 3 sent"), "{text}");
    let got = h.received();
    let types: Vec<&str> = got[2..]
        .iter()
        .map(|r| r["body"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["api_key.created", "api_key.revoked", "credits.reversed"]
    );
    assert!(got.iter().all(|r| r["signature_ok"] == true));
    assert_eq!(got[2]["body"]["data"]["key"]["prefix"], prefix);
    assert_eq!(got[2]["body"]["data"]["key"]["label"], "レジ 1");
    let rev = &got[4]["body"]["data"]["reversal"];
    assert_eq!(
        (rev["rows"].as_i64(), rev["miles"].as_i64()),
        (Some(1), Some(100))
    );
    assert_eq!(rev["of"]["file"], 1);
    assert!(
        !got[4]["body"].to_string().contains("cli:"),
        "no person named: {}",
        got[4]["body"]
    );

    // `notify test` against a receiver that fails: exit 1, the answer shown.
    h.set("fail");
    let out = run_env(&w, &["notify", "test", "--partner", "acme"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED") && stdout(&out).contains("answered 500"),
        "{}",
        stdout(&out)
    );
    assert_eq!(h.received().last().unwrap()["body"]["type"], "test");
}

#[test]
fn sigkill_of_the_daemon_while_it_sends_still_delivers_exactly_one_event_id() {
    let w = Workspace::new();
    let ca = TestCa::new();
    let h = hook(&w, &ca, "fail");
    w.write_config(
        "notify_retry = \"1s\"\n",
        &hook_partner(&w, &h, &ca, "webhook_timeout = \"3s\""),
    );
    w.members(5);
    w.write("inbox/acme/orders.csv", WITH_ERROR);
    // Committed, not delivered.
    let text = stdout(&run_env(&w, &["once"]));
    assert!(text.contains("1 to retry"), "{text}");

    // The daemon sends; the receiver holds the request; SIGKILL.
    h.set("hang");
    let d = w.spawn({
        let mut c = w.cmd(&["run"]);
        c.env("MB_HOOK_SECRET", HOOK_SECRET);
        c
    });
    wait_for("the daemon's attempt", Duration::from_secs(20), || {
        h.received().len() == 2
    });
    d.signal("KILL");
    drop(d);
    assert_eq!(status_counts(&w)["pending"], 1);

    h.set("ok");
    let _d = w.spawn({
        let mut c = w.cmd(&["run"]);
        c.env("MB_HOOK_SECRET", HOOK_SECRET);
        c
    });
    // The killed daemon's lease runs out (2 × 3 s + 10 s), then the new
    // daemon sends again.
    wait_for(
        "delivery after the restart",
        Duration::from_secs(45),
        || h.received().iter().any(|r| r["mode"] == "ok"),
    );
    wait_for("the delivery marked sent", Duration::from_secs(10), || {
        status_counts(&w)["pending"] == 0
    });
    let got = h.received();
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "one event, however often it was sent: {got:#?}"
    );
    assert_eq!(
        got.iter().filter(|r| r["mode"] == "ok").count(),
        1,
        "{got:#?}"
    );
    assert!(got.iter().all(|r| r["signature_ok"] == true));
    assert_eq!(
        w.int("SELECT count(*) FROM deliveries WHERE state = 'sent'"),
        1
    );
    assert_eq!(w.int("SELECT count(*) FROM outbox"), 1);
}

#[test]
fn an_unreachable_smtp_server_never_fails_a_credit() {
    let w = Workspace::new();
    let ca = TestCa::new();
    let closed = free_port();
    w.write_config(
        &smtp_section(&ca, closed, "starttls", ""),
        &partner(
            &w,
            "acme",
            "ACME ストア",
            "[partner.notify]\nemail = [\"tanto@acme.example\"]\n",
        ),
    );
    w.members(5);
    w.write("inbox/acme/orders.csv", WITH_ERROR);
    let t = std::time::Instant::now();
    let out = run_env(&w, &["once", "--json"]);
    assert!(t.elapsed() < Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["files"][0]["outcome"], "credited", "{v:#}");
    assert_eq!(w.int("SELECT count(*) FROM ledger"), 1);
    let list = stdout(&run_env(&w, &["notify", "list"]));
    assert!(list.contains("1 pending"), "{list}");
    assert!(list.to_lowercase().contains("refused"), "{list}");
}

/// A server that accepts connections and never says a word: each attempt
/// takes the whole `timeout`. One attempt per pass, not one per mail.
#[test]
fn a_silent_smtp_server_costs_a_pass_one_timeout_not_one_per_mail() {
    let w = Workspace::new();
    let ca = TestCa::new();
    // Bound and listening, never accepted: the kernel completes the
    // handshake and the client waits for a greeting that never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    w.write_config(
        &smtp_section(&ca, port, "starttls", "timeout = \"2s\""),
        &partner(
            &w,
            "acme",
            "ACME ストア",
            "[partner.notify]\nemail = [\"tanto@acme.example\"]\n",
        ),
    );
    w.members(5);
    for n in 1..=3 {
        w.write(
            &format!("inbox/acme/orders-{n}.csv"),
            format!("M000001,k{n},100\nNOBODY,x{n},5\n"),
        );
    }
    let t = std::time::Instant::now();
    let out = run_env(&w, &["once"]);
    let took = t.elapsed();
    let text = stdout(&out);
    assert!(
        text.contains("notifications: 0 sent, 1 to retry, 0 failed"),
        "{text}"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: more than one timeout\n{text}"
    );
    assert_eq!(
        w.int("SELECT count(*) FROM ledger"),
        3,
        "every file credited"
    );
    let list = stdout(&run_env(&w, &["notify", "list"]));
    assert!(list.contains("3 pending"), "{list}");
    assert_eq!(list.matches("(1 attempts)").count(), 1, "{list}");
    assert_eq!(list.matches("(0 attempts)").count(), 2, "{list}");
    drop(silent);
}

#[test]
fn check_finds_the_notification_secrets_that_are_not_there() {
    let w = Workspace::new();
    let ca = TestCa::new();
    w.write_config(
        &smtp_section(&ca, 2525, "starttls", ""),
        &partner(
            &w,
            "acme",
            "ACME ストア",
            "[partner.notify]\nwebhook = \"https://127.0.0.1:9/x\"\nwebhook_secret_env = \"MB_NOT_SET_HOOK\"\n",
        ),
    );
    let out = w
        .cmd(&["check"])
        .env_remove("MB_SMTP_PASSWORD")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "[daemon.smtp] SMTP password: environment variable MB_SMTP_PASSWORD is not set"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "[partner.notify] webhook secret: environment variable MB_NOT_SET_HOOK is not set"
        ),
        "{text}"
    );
    // With both set, nothing is said about them.
    let out = w
        .cmd(&["check"])
        .env("MB_SMTP_PASSWORD", "x")
        .env("MB_NOT_SET_HOOK", "y")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        !text.contains("is not set") && text.contains("ok: [partner.notify] webhook secret"),
        "{text}"
    );
}
