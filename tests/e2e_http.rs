//! End to end through the real binary: a partner that serves its file at a
//! dated HTTPS URL with bearer auth, and takes the error report by PUT.

mod common;

use common::servers::{HttpAuth, HttpServer, TestCa};
use common::workspace::Workspace;

#[test]
fn https_partner_end_to_end() {
    let ca = TestCa::new();
    let server = HttpServer::start(Some(&ca), HttpAuth::Bearer("t0ken-xyz".into()));
    let w = Workspace::new();
    let token = w.write("token", "t0ken-xyz\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    w.config(&format!(
        r#"
[[partner]]
id = "bank"
schedule = "monthly 1 05:00"
max_miles_per_row = 10000
[partner.source]
kind = "http"
url = "{url}"
errors_url = "{errors}"
auth = "bearer"
password_file = "token"
ca_file = "{ca}"
timeout = "5s"
retries = 1
"#,
        url = server.url("/miles/exchange-{date:%Y%m%d}.csv"),
        errors = server.url("/errors/"),
        ca = ca.ca_pem.display(),
    ));
    w.demo_members();
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y%m%d");
    let name = format!("exchange-{today}.csv");

    // Nothing served yet: 404 is "nothing today", not an error.
    let (code, run) = w.once_json("bank", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "no-file");

    server.put_file(
        &format!("miles/{name}"),
        "NM0000000001,k1,100\nNM0000009999,k2,5\n",
    );
    let (code, run) = w.once_json("bank", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 1);
    assert_eq!(w.balance("NM0000000001"), 100);
    let uploaded = std::fs::read_to_string(
        server
            .uploads
            .join(format!("errors/exchange-{today}.errors.csv")),
    )
    .unwrap();
    assert_eq!(uploaded, "NM0000009999,k2,5,E003\n");

    // The URL still serves the same answer: the same delivery, not a new
    // one; not silent either: a skip naming the file it was credited as.
    let (code, run) = w.once_json("bank", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "skipped", "{run:#}");
    assert_eq!(run["files"].as_array().unwrap().len(), 0, "{run:#}");
    assert_eq!(run["skipped"][0]["name"], name.as_str(), "{run:#}");
    assert_eq!(run["skipped"][0]["reason"], "already-seen", "{run:#}");
    assert_eq!(run["skipped"][0]["file_id"], 1, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 100);

    // Regenerated with new content of the very same size: credited.
    server.put_file(
        &format!("miles/{name}"),
        "NM0000000001,k3,200\nNM0000009999,k2,5\n",
    );
    let (code, run) = w.once_json("bank", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 1);
    assert_eq!(w.balance("NM0000000001"), 300);

    // Never the token, in the database or in what the runs printed.
    let dump: String = w
        .db()
        .query_row(
            "SELECT group_concat(COALESCE(reason,'') || COALESCE(archive_path,'')) FROM files",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!dump.contains("t0ken"));
    let out = w.run(&["once", "--partner", "bank"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("t0ken"), "{all}");
    assert!(
        server.requests().iter().all(|r| r.authorized),
        "every request carried the token"
    );
}
