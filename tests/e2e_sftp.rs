//! End to end through the real binary: a partner whose file sits on a real
//! sshd, `ready = "done-file"`; the run credits it, moves it to
//! `processed/`, removes the `.done`, uploads the error CSV to `errors/` on
//! the server; a second run credits nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::servers::{ensure_test_user, Sshd, SshdOpts};

fn milebatch(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_milebatch"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run milebatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn put_owned(path: &Path, data: &[u8]) {
    let (u, g) = ensure_test_user();
    std::fs::write(path, data).unwrap();
    std::os::unix::fs::chown(path, Some(u), Some(g)).unwrap();
}

#[test]
fn sftp_partner_end_to_end() {
    let sshd = Sshd::start(SshdOpts::default());
    let (u, g) = ensure_test_user();
    let inbox = sshd.root.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::os::unix::fs::chown(&inbox, Some(u), Some(g)).unwrap();

    let ws = tempfile::tempdir().unwrap();
    let cfg = ws.path().join("partners.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[daemon]
database = "var/milebatch.sqlite"
data_dir = "var"
timezone = "Asia/Tokyo"

[[partner]]
id = "sftp-shop"
schedule = "daily 03:00"
max_miles_per_row = 10000
[partner.source]
kind = "sftp"
host = "127.0.0.1"
port = {port}
user = "{user}"
dir = "{dir}"
key_file = "{key}"
host_key = "{fp}"
ready = "done-file"
timeout = "5s"
retries = 1
"#,
            port = sshd.port,
            user = sshd.user,
            dir = inbox.display(),
            key = sshd.client_key.display(),
            fp = sshd.host_key_fingerprint(),
        ),
    )
    .unwrap();
    let members = ws.path().join("members.csv");
    std::fs::write(
        &members,
        "member_id,email,status\nM1,m1@example.jp,active\nM2,m2@example.jp,active\n",
    )
    .unwrap();
    let (ok, _, err) = milebatch(&cfg, &["members", "import", members.to_str().unwrap()]);
    assert!(ok, "members import failed: {err}");
    let (ok, out, err) = milebatch(&cfg, &["check"]);
    assert!(ok, "check failed: {out}\n{err}");

    // A file without its .done is not read yet.
    put_owned(
        &inbox.join("x.csv"),
        b"M1,k-1,100\nm2@example.jp,k-2,250\nNOPE,k-3,5\n",
    );
    let (_, out, err) = milebatch(&cfg, &["once", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v[0]["files"].as_array().unwrap().len(), 0, "{out}\n{err}");
    assert!(inbox.join("x.csv").exists());

    put_owned(&inbox.join("x.csv.done"), b"");
    let (_, out, err) = milebatch(&cfg, &["once", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let files = v[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{out}\n{err}");
    assert_eq!(files[0]["outcome"], "credited", "{out}\n{err}");
    assert_eq!(v[0]["error"], serde_json::Value::Null, "{out}\n{err}");
    assert_eq!(v[0]["miles"], 350, "{out}");

    // tidied on the server
    assert!(!inbox.join("x.csv").exists(), "still in the inbox\n{err}");
    assert!(
        !inbox.join("x.csv.done").exists(),
        ".done not removed\n{err}"
    );
    assert_eq!(
        std::fs::read(inbox.join("processed/x.csv")).unwrap(),
        b"M1,k-1,100\nm2@example.jp,k-2,250\nNOPE,k-3,5\n"
    );
    let report = std::fs::read_to_string(inbox.join("errors/x.errors.csv"))
        .unwrap_or_else(|e| panic!("no error report on the server ({e})\n{err}"));
    assert!(report.contains("NOPE,k-3,5,E003"), "{report}");
    let leftovers: Vec<_> = std::fs::read_dir(inbox.join("errors"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let (ok, out, _) = milebatch(&cfg, &["balance", "M2", "--json"]);
    assert!(ok);
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["miles"], 250);

    // Second run: the same file shows up again (partner re-uploads it):
    // recognised by content, credited nothing.
    put_owned(
        &inbox.join("x.csv"),
        b"M1,k-1,100\nm2@example.jp,k-2,250\nNOPE,k-3,5\n",
    );
    put_owned(&inbox.join("x.csv.done"), b"");
    let (_, out, err) = milebatch(&cfg, &["once", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v[0]["credited"], 0, "{out}\n{err}");
    assert_eq!(v[0]["miles"], 0, "{out}\n{err}");
    let (_, out, _) = milebatch(&cfg, &["balance", "M2", "--json"]);
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["miles"], 250, "credited twice");

    // And a run with nothing new credits nothing either.
    let (_, out, err) = milebatch(&cfg, &["once", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(v[0]["miles"], 0, "{out}\n{err}");
}
