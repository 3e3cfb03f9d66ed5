//! `milebatch check` on `[server]` (what `milebatch serve` needs), on the
//! real binary: the TLS certificate and key exist and are readable PEM, the
//! key is private (mode 600, like every other secret) and belongs to the
//! certificate, the certificate is in its validity period (a warning 30
//! days ahead of its end, not a problem), and the listen addresses are
//! this host's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::servers::TestCa;
use common::workspace::{Workspace, FAKE_NOW};

fn with_server(ws: &Workspace, server: &str) {
    ws.write_config(
        "",
        &format!("{server}\n{}", ws.scheduled_partner("shop", "daily 03:00")),
    );
}

fn tls(cert: &Path, key: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// `check --json` at `now` (RFC 3339; `None`: the real time): exit code
/// and answer.
fn check(ws: &Workspace, now: Option<&str>) -> (i32, serde_json::Value) {
    let mut cmd = ws.cmd(&["check", "--json"]);
    if let Some(now) = now {
        cmd.env(FAKE_NOW, now);
    }
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

fn server_problems(v: &serde_json::Value) -> Vec<String> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["section"] == "server")
        .map(|p| p["problem"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn check_finds_every_server_tls_problem() {
    let ca = TestCa::new();
    let ws = Workspace::new();
    let (cert, key) = ca.server_cert("serve");
    let (_, other_key) = ca.server_cert("another");

    // All good: exit 0, and the human form says so.
    with_server(&ws, &tls(&cert, &key));
    let (code, v) = check(&ws, None);
    assert_eq!(code, 0, "{v:#}");
    assert!(server_problems(&v).is_empty(), "{v:#}");
    let text = ws.ok(&["check"]);
    assert!(text.contains("belongs to tls_cert"), "{text}");

    // A key readable by others, and the key of another certificate.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, v) = check(&ws, None);
    assert_eq!(code, 1, "{v:#}");
    let p = server_problems(&v);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("accessible by group or others") && p[0].contains("chmod 600"),
        "{p:?}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    with_server(&ws, &tls(&cert, &other_key));
    let (code, v) = check(&ws, None);
    assert_eq!(code, 1, "{v:#}");
    let p = server_problems(&v);
    assert!(
        p.len() == 1 && p[0].contains("does not belong to tls_cert"),
        "{p:?}"
    );

    // Missing files, and PEM that is not a certificate or a key.
    with_server(&ws, &tls(&ws.path("no.crt"), &ws.path("no.key")));
    let (code, v) = check(&ws, None);
    assert_eq!(code, 1);
    let p = server_problems(&v);
    assert!(p.len() == 2, "{p:?}");
    assert!(
        p[0].starts_with("tls_cert") && p[0].contains("No such file"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("tls_key") && p[1].contains("No such file"),
        "{p:?}"
    );
    let junk = ws.write("junk.pem", "not PEM\n");
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    with_server(&ws, &tls(&junk, &junk));
    let p = server_problems(&check(&ws, None).1);
    assert!(p.len() == 2, "{p:?}");
    assert!(p[0].contains("holds no PEM certificate"), "{p:?}");
    assert!(p[1].contains("holds no PEM private key"), "{p:?}");
}

/// rcgen's certificates are valid until 4096-01-01: the clock is moved
/// instead (`MILEBATCH_FAKE_NOW`).
#[test]
fn check_warns_30_days_before_the_certificate_expires() {
    let ca = TestCa::new();
    let ws = Workspace::new();
    let (cert, key) = ca.server_cert("serve");
    with_server(&ws, &tls(&cert, &key));
    let (code, v) = check(&ws, Some("4095-11-01T00:00:00Z"));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v:#}");
    // 12 days before: a warning, not a problem.
    let (code, v) = check(&ws, Some("4095-12-20T00:00:00Z"));
    assert_eq!(code, 0, "{v:#}");
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{v:#}");
    assert!(
        w[0].as_str().unwrap().contains("expires at 4096-01-01"),
        "{w:?}"
    );
    // The fake clock runs on from its start: just under 12 days.
    assert!(w[0].as_str().unwrap().contains("in 11 day(s)"), "{w:?}");
    let mut cmd = ws.cmd(&["check"]);
    cmd.env(FAKE_NOW, "4095-12-20T00:00:00Z");
    let text = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    assert!(text.contains("warning: [server]: tls_cert"), "{text}");
    // Expired: a problem.
    let (code, v) = check(&ws, Some("4096-01-02T00:00:00Z"));
    assert_eq!(code, 1, "{v:#}");
    let p = server_problems(&v);
    assert!(
        p.len() == 1 && p[0].contains("expired at 4096-01-01"),
        "{p:?}"
    );
}

#[test]
fn check_refuses_a_listen_address_this_host_does_not_have() {
    let ca = TestCa::new();
    let ws = Workspace::new();
    let (cert, key) = ca.server_cert("serve");
    // 192.0.2.1 (TEST-NET-1) is no host's address.
    with_server(
        &ws,
        &tls(&cert, &key).replace("127.0.0.1:8443", "192.0.2.1:8443"),
    );
    let (code, v) = check(&ws, None);
    assert_eq!(code, 1, "{v:#}");
    let p = server_problems(&v);
    assert!(
        p.len() == 1 && p[0].starts_with("listen 192.0.2.1:8443"),
        "{p:?}"
    );
    assert!(p[0].contains("cannot listen on 192.0.2.1"), "{p:?}");
}
