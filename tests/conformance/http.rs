//! The behaviour a URL source supports (list, fetch, "nothing today",
//! report PUT), for any HTTP server: the in-process test server and nginx.

use milebatch::source::http::HttpSource;
use milebatch::source::{HttpConfig, Source};

use super::payload;

/// An HTTP server under test.
pub trait HttpFixture {
    /// The URL of `path` (starting with `/`).
    fn url(&self, path: &str) -> String;
    /// Serve `data` at `path` for GET.
    fn serve(&self, path: &str, data: &[u8]);
    /// What a PUT to `path` stored, if anything.
    fn uploaded(&self, path: &str) -> Option<Vec<u8>>;
    /// A source config for `url` (with the server's auth and CA).
    fn config(&self, url: String, errors_url: Option<String>) -> HttpConfig;
}

fn day(d: u32) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

pub fn run(fx: &dyn HttpFixture) {
    let data = payload(200_000, 5);
    fx.serve("/in/exchange-20261124.csv", &data);
    let c = fx.config(
        fx.url("/in/exchange-{date:%Y%m%d}.csv"),
        Some(fx.url("/reports/{date:%Y}/")),
    );

    // The dated URL lists as one file, with its size, and fetches whole.
    let mut s = HttpSource::new(&c, day(24)).expect("new");
    let list = s.list().expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].name, "exchange-20261124.csv");
    assert_eq!(list[0].size, data.len() as u64);
    let out = tempfile::tempdir().unwrap();
    s.fetch(&list[0], &out.path().join("x")).expect("fetch");
    assert!(
        std::fs::read(out.path().join("x")).unwrap() == data,
        "bytes differ"
    );

    // The report goes up by PUT under errors_url (folders created), and
    // replaces an older one.
    s.upload(
        "errors",
        "exchange-20261124.errors.csv",
        b"row,k,1,E003\r\n",
    )
    .expect("PUT");
    assert_eq!(
        fx.uploaded("/reports/2026/exchange-20261124.errors.csv")
            .as_deref(),
        Some(&b"row,k,1,E003\r\n"[..])
    );
    s.upload("errors", "exchange-20261124.errors.csv", b"newer\n")
        .expect("PUT over");
    assert_eq!(
        fx.uploaded("/reports/2026/exchange-20261124.errors.csv")
            .as_deref(),
        Some(&b"newer\n"[..])
    );

    // Another day, nothing there yet: an empty listing, not an error.
    let mut s = HttpSource::new(&c, day(25)).expect("new");
    assert!(s.list().expect("404 is empty").is_empty());
}
