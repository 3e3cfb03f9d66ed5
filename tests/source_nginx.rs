//! Debian's nginx as a partner would publish files: TLS with the test CA,
//! basic auth, a dated URL, WebDAV PUT for `errors_url`, a folder where PUT
//! is forbidden; and a Shift_JIS partner end to end through the binary.

mod common;
mod conformance;

use std::path::Path;
use std::time::Duration;

use common::servers::{Nginx, TestCa};
use common::workspace::Workspace;
use milebatch::source::http::HttpSource;
use milebatch::source::{
    After, HttpAuth, HttpConfig, Pickup, Ready, SecretRef, Source, SourceError,
};

fn secret(dir: &Path, value: &str) -> SecretRef {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("pw");
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretRef::File(p)
}

struct Fx {
    nginx: Nginx,
    ca: TestCa,
    tmp: tempfile::TempDir,
}

impl Fx {
    fn start() -> Fx {
        let ca = TestCa::new();
        Fx {
            nginx: Nginx::start(&ca),
            ca,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn config_with(&self, url: String, errors_url: Option<String>, pw: &str) -> HttpConfig {
        HttpConfig {
            url,
            errors_url,
            auth: HttpAuth::Basic {
                user: self.nginx.user.clone(),
                password: secret(self.tmp.path(), pw),
            },
            ca_file: Some(self.ca.ca_pem.clone()),
            pickup: Pickup {
                pattern: glob::Pattern::new("*.csv").unwrap(),
                pattern_case_sensitive: false,
                max_size: 1 << 30,
                trust_mtime: true,
                ready: Ready::Immediate,
                after: After::Keep,
                move_failed: None,
                errors_dir: Some("errors".into()),
                ignore: vec![],
                timeout: Duration::from_secs(5),
                retries: 0,
            },
        }
    }
}

impl conformance::http::HttpFixture for Fx {
    fn url(&self, path: &str) -> String {
        self.nginx.url(path)
    }
    fn serve(&self, path: &str, data: &[u8]) {
        self.nginx.put_file(path, data);
    }
    fn uploaded(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.nginx.root.join(path.trim_start_matches('/'))).ok()
    }
    fn config(&self, url: String, errors_url: Option<String>) -> HttpConfig {
        self.config_with(url, errors_url, &self.nginx.password)
    }
}

fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
}

/// The URL suite over nginx, then what nginx answers when something is
/// wrong: 401 for a wrong password, 403 where PUT is not allowed.
#[test]
fn nginx_conformance_and_refusals() {
    let fx = Fx::start();
    conformance::http::run(&fx);

    // 401: the password is wrong.
    let c = fx.config_with(fx.nginx.url("/in/a.csv"), None, "not-the-password");
    let mut s = HttpSource::new(&c, today()).expect("new");
    match s.list() {
        Err(e @ SourceError::Auth(_)) => {
            let m = e.to_string();
            assert!(
                m.starts_with("authentication failed: ") && m.contains("401"),
                "{m}"
            );
            assert!(!m.contains("not-the-password"), "{m}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }

    // 403: logged in, but the server does not allow PUT there.
    let c = fx.config_with(
        fx.nginx.url("/in/a.csv"),
        Some(fx.nginx.url("/readonly/")),
        &fx.nginx.password,
    );
    let mut s = HttpSource::new(&c, today()).expect("new");
    let e = s
        .upload("errors", "a.errors.csv", b"x\n")
        .expect_err("PUT into /readonly/ is forbidden");
    let m = e.to_string();
    assert!(!e.retryable(), "{e:?}");
    assert!(
        !m.contains("authentication"),
        "a 403 is not a login problem: {m}"
    );
    assert!(
        m.contains("HTTP 403")
            && m.contains("forbidden (check the server's permissions for this path)"),
        "{m}"
    );
    fx.nginx.wait_access_log("PUT /readonly/a.errors.csv 403");
}

/// A CP932 partner end to end through the binary: the file is read from
/// nginx's dated URL, and the error report goes back by PUT, in CP932 and
/// labelled `text/csv; charset=Shift_JIS`.
#[test]
fn nginx_shift_jis_partner_end_to_end() {
    let fx = Fx::start();
    let w = Workspace::new();
    let pw = w.write("pw", format!("{}\n", fx.nginx.password));
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    w.config(&format!(
        r#"
[[partner]]
id = "konbini"
schedule = "monthly 1 05:00"
encoding = "shift_jis"
max_miles_per_row = 10000
[partner.source]
kind = "https"
url = "{url}"
errors_url = "{errors}"
auth = "basic"
user = "{user}"
password_file = "pw"
ca_file = "{ca}"
timeout = "5s"
retries = 1
"#,
        url = fx.nginx.url("/in/point-{date:%Y%m%d}.csv"),
        errors = fx.nginx.url("/reports/"),
        user = fx.nginx.user,
        ca = fx.ca.ca_pem.display(),
    ));
    w.demo_members();
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y%m%d");
    let bad_row = encoding_rs::SHIFT_JIS
        .encode("髙橋①㈱,k2,5\r\n")
        .0
        .into_owned();
    let mut file = b"NM0000000001,k1,100\r\n".to_vec();
    file.extend_from_slice(&bad_row);
    fx.nginx.put_file(&format!("in/point-{today}.csv"), &file);

    let (code, run) = w.once_json("konbini", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 1, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 100);

    let report = std::fs::read(
        fx.nginx
            .root
            .join(format!("reports/point-{today}.errors.csv")),
    )
    .expect("the report was PUT");
    let mut want = bad_row[..bad_row.len() - 2].to_vec();
    want.extend_from_slice(b",E003\r\n");
    assert!(report == want, "report bytes: {report:?}");
    let log = fx.nginx.wait_access_log("PUT /reports/");
    let put = log
        .lines()
        .find(|l| l.starts_with("PUT /reports/"))
        .unwrap_or_else(|| panic!("no PUT in nginx's log:\n{log}"));
    assert!(
        put.ends_with("\"text/csv; charset=Shift_JIS\""),
        "the PUT's Content-Type: {put}"
    );
}
