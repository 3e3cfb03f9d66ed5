//! `milebatch serve`, the web process, on the real binary: TLS with a test
//! CA, the health probes, problem+json for unknown paths, the security
//! headers, the plain-HTTP policy and a clean stop on SIGTERM.

mod common;

use std::time::Duration;

use common::serve::{json, tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::Workspace;

fn workspace_with_server(server: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!("{server}\n{}", ws.scheduled_partner("shop", "daily 03:00")),
    );
    ws
}

#[test]
fn serves_health_over_tls_and_stops_cleanly() {
    let ca = TestCa::new();
    let ws = workspace_with_server(&tls_server_section(&ca));
    let mut s = Serve::start(&ws, Some(ca));
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let c = s.client();

    let r = c.get(s.url("/healthz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"),
        "{h:?}"
    );
    assert_eq!(json(r)["status"], "ok");

    // serve created and migrated the database: ready.
    let r = c.get(s.url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let v = json(r);
    assert_eq!(v["status"], "ready", "{v}");

    // Unknown paths are problem+json 404s, with the same headers.
    let r = c.get(s.url("/no/such/thing")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let v = json(r);
    assert_eq!(v["status"], 404);
    assert_eq!(v["type"], "/problems/not-found");

    // A client that does not trust the test CA is refused.
    let other = TestCa::new();
    let stranger = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&other.ca_pem_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(stranger.get(s.url("/healthz")).send().is_err());

    assert_eq!(s.stop(Duration::from_secs(15)), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("shutting down"), "{}", s.log_text());
}

#[test]
fn readyz_fails_while_the_database_is_unreadable() {
    let ca = TestCa::new();
    let ws = workspace_with_server(&tls_server_section(&ca));
    let s = Serve::start(&ws, Some(ca));
    let c = s.client();
    assert_eq!(c.get(s.url("/readyz")).send().unwrap().status(), 200);
    // The schema claims a version this binary does not know.
    ws.db().pragma_update(None, "user_version", 999).unwrap();
    let r = c.get(s.url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().contains_key("retry-after"));
    let v = json(r);
    assert!(v["detail"].as_str().unwrap().contains("999"), "{v}");
    // /healthz still answers: the process is alive, only not ready.
    assert_eq!(c.get(s.url("/healthz")).send().unwrap().status(), 200);
}

#[test]
fn plain_http_only_on_loopback_unless_insecure_plaintext() {
    // Loopback without TLS: allowed.
    let ws = workspace_with_server("[server]\nlisten = \"127.0.0.1:0\"\n");
    let s = Serve::start(&ws, None);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    assert_eq!(
        s.client().get(s.url("/healthz")).send().unwrap().status(),
        200
    );
    drop(s);

    // Any other address without TLS: refused by the config, naming the fix.
    let ws = workspace_with_server("[server]\nlisten = \"0.0.0.0:0\"\n");
    let out = ws.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("tls_cert"),
        "{err}"
    );

    // A certificate without its key: refused.
    let ws = workspace_with_server("[server]\ntls_cert = \"cert.pem\"\n");
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs `tls_key`"),
        "{out:?}"
    );
}

#[test]
fn insecure_plaintext_warns_on_every_start() {
    // The wildcard address is not loopback: without TLS it needs
    // insecure_plaintext, and then every start warns. (No request is sent:
    // tests send traffic to loopback only.)
    let ws = workspace_with_server("[server]\nlisten = \"0.0.0.0:0\"\ninsecure_plaintext = true\n");
    for _ in 0..2 {
        let mut d = ws.spawn(ws.cmd(&["serve"]));
        d.wait_log("cross the network unencrypted", Duration::from_secs(30));
        d.signal("TERM");
        assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
    }
}

/// Issue 22: a missing or unusable `tls_cert`/`tls_key` fails the start
/// before `listening on …` is printed, with the error said once.
#[test]
fn a_missing_or_bad_tls_file_fails_the_start_before_listening() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert("milebatch-serve");
    let garbage = std::env::temp_dir().join(format!("mb-garbage-{}.pem", std::process::id()));
    std::fs::write(&garbage, "not a PEM key\n").unwrap();
    let missing = cert.with_file_name("no-such-cert.pem");
    for (c, k, says) in [(&missing, &key, "No such file"), (&cert, &garbage, "key")] {
        let ws = workspace_with_server(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            c.display(),
            k.display()
        ));
        let out = ws.run(&["serve"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(!stdout.contains("listening on"), "{stdout}");
        let line = "cannot load the TLS certificate";
        assert_eq!(stderr.matches(line).count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        // The cause once, not again as a "caused by".
        let cause = stderr.lines().find(|l| l.contains(line)).unwrap();
        let tail = cause.split("`tls_key`): ").nth(1).unwrap_or_default();
        assert!(!tail.is_empty(), "no cause in {cause}");
        assert_eq!(stderr.matches(tail).count(), 1, "{stderr}");
    }
    let _ = std::fs::remove_file(garbage);
}
