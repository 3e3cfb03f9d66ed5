//! HTTP(S) against an in-process server on 127.0.0.1: the subset of the
//! conformance behaviour a URL supports (list, fetch, 404, report PUT), TLS
//! with a test CA, basic and bearer auth, and fault handling.

mod common;
mod conformance;

use std::path::Path;
use std::time::Duration;

use common::servers::{HttpAuth as ServerAuth, HttpServer, TestCa};
use milebatch::source::http::HttpSource;
use milebatch::source::{
    After, HttpAuth, HttpConfig, Pickup, Ready, SecretRef, Source, SourceError,
};

fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
}

fn config(
    url: String,
    errors_url: Option<String>,
    auth: HttpAuth,
    ca: Option<&TestCa>,
) -> HttpConfig {
    HttpConfig {
        url,
        errors_url,
        auth,
        ca_file: ca.map(|c| c.ca_pem.clone()),
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
            timeout: Duration::from_secs(3),
            retries: 2,
        },
    }
}

fn secret(dir: &Path, name: &str, value: &str) -> SecretRef {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretRef::File(p)
}

struct Fx(HttpServer);

impl conformance::http::HttpFixture for Fx {
    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }
    fn serve(&self, path: &str, data: &[u8]) {
        self.0.put_file(path, data);
    }
    fn uploaded(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.0.uploads.join(path.trim_start_matches('/'))).ok()
    }
    fn config(&self, url: String, errors_url: Option<String>) -> HttpConfig {
        config(url, errors_url, HttpAuth::None, None)
    }
}

#[test]
fn http_conformance() {
    conformance::http::run(&Fx(HttpServer::start_plain()));
}

/// The report PUT says which charset it is in: the partner's encoding
/// (`Shift_JIS` for a CP932 partner), UTF-8 otherwise.
#[test]
fn http_report_put_is_labelled_with_the_partner_charset() {
    use milebatch::config::Encoding;
    let srv = HttpServer::start_plain();
    let c = config(
        srv.url("/in/a.csv"),
        Some(srv.url("/reports/")),
        HttpAuth::None,
        None,
    );
    let sjis = encoding_rs::SHIFT_JIS
        .encode("髙橋,k1,5,E003\r\n")
        .0
        .into_owned();
    for (enc, label) in [
        (Encoding::ShiftJis, "text/csv; charset=Shift_JIS"),
        (Encoding::Utf8, "text/csv; charset=utf-8"),
    ] {
        srv.clear_requests();
        let mut s = milebatch::source::SourceConfig::Http(c.clone())
            .build(today(), enc)
            .expect("build");
        s.upload("errors", "a.errors.csv", &sjis).expect("PUT");
        let reqs = srv.requests();
        let put = reqs.iter().find(|r| r.method == "PUT").expect("a PUT");
        assert_eq!(put.header("content-type"), Some(label));
    }
    // the bytes are sent as they are, never re-encoded
    assert!(std::fs::read(srv.uploads.join("reports/a.errors.csv")).unwrap() == sjis);
}

#[test]
fn http_list_fetch_404_and_put() {
    let srv = HttpServer::start_plain();
    let data = conformance::payload(200_000, 5);
    srv.put_file("/in/exchange-20261124.csv", &data);
    let c = config(
        srv.url("/in/exchange-{date:%Y%m%d}.csv"),
        Some(srv.url("/reports/{date:%Y}/")),
        HttpAuth::None,
        None,
    );
    let mut s = HttpSource::new(&c, today()).expect("new");
    assert!(!s.can_tidy());
    let list = s.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "exchange-20261124.csv");
    assert_eq!(list[0].size, data.len() as u64);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    s.fetch(&list[0], &dest).expect("fetch");
    assert!(std::fs::read(&dest).unwrap() == data);
    // the listing's response was reused: one GET for list + fetch
    let gets = srv.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(gets, 1);
    // fetching again (no pending response) GETs again
    s.fetch(&list[0], &out.path().join("y"))
        .expect("fetch again");
    assert!(std::fs::read(out.path().join("y")).unwrap() == data);

    // tidy steps are no-ops; the report is PUT under errors_url
    s.move_to("exchange-20261124.csv", "processed")
        .expect("no-op");
    s.remove("exchange-20261124.csv").expect("no-op");
    assert!(srv.root.join("in/exchange-20261124.csv").exists());
    s.upload("errors", "exchange-20261124.errors.csv", b"row,code\n")
        .expect("PUT");
    assert_eq!(
        std::fs::read(
            srv.uploads
                .join("reports/2026/exchange-20261124.errors.csv")
        )
        .unwrap(),
        b"row,code\n"
    );

    // another day: nothing there yet is an empty listing, not an error
    let mut s = HttpSource::new(&c, today().succ_opt().unwrap()).expect("new");
    assert!(s.list().expect("404 is empty").is_empty());
    srv.set_fail(1, 410);
    assert!(s.list().expect("410 is empty").is_empty());

    // without errors_url, upload is an Ok no-op
    let c2 = config(srv.url("/in/a.csv"), None, HttpAuth::None, None);
    let mut s = HttpSource::new(&c2, today()).expect("new");
    let before = srv.requests().len();
    s.upload("errors", "r.csv", b"x").expect("no-op");
    assert_eq!(
        srv.requests().len(),
        before,
        "no request without errors_url"
    );
}

#[test]
fn https_test_ca_with_basic_and_bearer_auth() {
    let ca = TestCa::new();
    let srv = HttpServer::start(
        Some(&ca),
        ServerAuth::Basic {
            user: "partner".into(),
            password: "s3cret-pw".into(),
        },
    );
    srv.put_file("/x.csv", b"a,b\n");
    let tmp = tempfile::tempdir().unwrap();

    // no credentials: 401 is Auth
    let c = config(srv.url("/x.csv"), None, HttpAuth::None, Some(&ca));
    let e = HttpSource::new(&c, today())
        .unwrap()
        .list()
        .expect_err("401");
    assert!(matches!(e, SourceError::Auth(_)), "{e:?}");

    // basic
    let c = config(
        srv.url("/x.csv"),
        None,
        HttpAuth::Basic {
            user: "partner".into(),
            password: secret(tmp.path(), "pw", "s3cret-pw"),
        },
        Some(&ca),
    );
    let mut s = HttpSource::new(&c, today()).unwrap();
    assert_eq!(s.list().expect("basic auth").len(), 1);

    // wrong basic password: Auth, and the password is in no message
    let c = config(
        srv.url("/x.csv"),
        None,
        HttpAuth::Basic {
            user: "partner".into(),
            password: secret(tmp.path(), "bad", "wrong-pw"),
        },
        Some(&ca),
    );
    let e = HttpSource::new(&c, today())
        .unwrap()
        .list()
        .expect_err("wrong");
    assert!(matches!(e, SourceError::Auth(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("wrong-pw"));

    // bearer
    srv.set_auth(ServerAuth::Bearer("tok-123".into()));
    let c = config(
        srv.url("/x.csv"),
        None,
        HttpAuth::Bearer(secret(tmp.path(), "tok", "tok-123")),
        Some(&ca),
    );
    let mut s = HttpSource::new(&c, today()).unwrap();
    let list = s.list().expect("bearer");
    let dest = tmp.path().join("dl");
    s.fetch(&list[0], &dest).expect("fetch");
    assert_eq!(std::fs::read(&dest).unwrap(), b"a,b\n");

    // a certificate from another CA is refused, permanently
    let other = TestCa::new();
    let c = config(srv.url("/x.csv"), None, HttpAuth::None, Some(&other));
    let mut attempts = 0;
    let mut s = HttpSource::new(&c, today()).unwrap();
    let e = milebatch::source::retry::with_retries(2, "listing", || {
        attempts += 1;
        s.list()
    })
    .expect_err("untrusted certificate");
    assert!(matches!(e, SourceError::Permanent(_)), "{e:?}");
    assert_eq!(attempts, 1);
}

#[test]
fn http_faults_are_classified() {
    let srv = HttpServer::start_plain();
    let data = conformance::payload(100_000, 6);
    srv.put_file("/f.csv", &data);
    let c = config(srv.url("/f.csv"), None, HttpAuth::None, None);
    let mut s = HttpSource::new(&c, today()).unwrap();

    // 500 then success through the retry helper
    srv.set_fail(1, 500);
    let e = s.list().expect_err("500");
    assert!(e.retryable(), "{e:?}");
    srv.set_fail(1, 503);
    let mut attempts = 0;
    let list = milebatch::source::retry::with_retries(2, "listing", || {
        attempts += 1;
        s.list()
    })
    .expect("succeeds after a retry");
    assert_eq!(attempts, 2);
    assert_eq!(list[0].size, data.len() as u64);

    srv.set_fail(1, 429);
    assert!(s.list().expect_err("429").retryable());
    // 403 is not a login failure (issue 11): Permanent, worded as such
    srv.set_fail(1, 401);
    assert!(matches!(s.list().expect_err("401"), SourceError::Auth(_)));
    srv.set_fail(1, 403);
    let e = s.list().expect_err("403");
    assert!(matches!(e, SourceError::Permanent(_)), "{e:?}");
    assert!(
        e.to_string().ends_with(
            "HTTP 403 Forbidden: forbidden (check the server's permissions for this path)"
        ),
        "{e}"
    );
    srv.set_fail(1, 400);
    assert!(matches!(
        s.list().expect_err("400"),
        SourceError::Permanent(_)
    ));

    // a truncated body is a transient error
    let tmp = tempfile::tempdir().unwrap();
    srv.set_truncate(1);
    let list = s.list().expect("list (truncated response pending)");
    let e = s
        .fetch(&list[0], &tmp.path().join("t"))
        .expect_err("truncated body");
    assert!(e.retryable(), "{e:?}");
    // and the next attempt gets it whole
    s.fetch(&list[0], &tmp.path().join("t")).expect("refetch");
    assert!(std::fs::read(tmp.path().join("t")).unwrap() == data);

    // nothing listens: transient
    let c = config(
        format!("http://127.0.0.1:{}/f.csv", common::servers::free_port()),
        None,
        HttpAuth::None,
        None,
    );
    let e = HttpSource::new(&c, today())
        .unwrap()
        .list()
        .expect_err("refused");
    assert!(e.retryable(), "{e:?}");

    // a stalled body hits the timeout
    srv.set_stall(1, Duration::from_secs(10));
    let list = s.list().expect("headers arrive");
    let t0 = std::time::Instant::now();
    let e = s
        .fetch(&list[0], &tmp.path().join("s"))
        .expect_err("stalled");
    assert!(e.retryable(), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(8), "timeout not applied");
}

#[test]
fn http_url_with_credentials_is_refused() {
    let c = config(
        "https://user:pw@127.0.0.1:1/x.csv".into(),
        None,
        HttpAuth::None,
        None,
    );
    let e = HttpSource::new(&c, today())
        .err()
        .expect("userinfo refused");
    assert!(!e.to_string().contains(":pw@"), "{e}");
}
