//! `milebatch serve` started by a test: the real binary on a random loopback
//! port (it binds port 0 and prints the address), HTTPS with a certificate
//! from a throw-away [`TestCa`], and a reqwest client that trusts only it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::servers::TestCa;
use super::workspace::Workspace;

/// A running `milebatch serve`; killed when dropped.
pub struct Serve {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT` (or `http://…` without TLS).
    pub base: String,
    pub log: std::path::PathBuf,
    /// The CA its certificate comes from (`None`: plain HTTP).
    pub ca: Option<TestCa>,
}

/// The `[server]` section for a TLS server on a random loopback port, with a
/// fresh certificate from `ca`.
pub fn tls_server_section(ca: &TestCa) -> String {
    let (cert, key) = ca.server_cert("milebatch-serve");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

impl Serve {
    /// Start `milebatch serve` on `ws`, whose config must already hold a
    /// `[server]` section (see [`tls_server_section`]), and wait until it
    /// prints its address.
    pub fn start(ws: &Workspace, ca: Option<TestCa>) -> Serve {
        let log = ws.path("serve.log");
        let mut child = ws
            .cmd(&["serve"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn milebatch serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "milebatch serve did not start (stdout {line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let mut s = Serve {
            child: Some(child),
            base: base.to_owned(),
            log,
            ca,
        };
        // The port is bound before the line is printed; wait for the
        // server loop itself (TLS config loaded) to answer.
        let client = s.client();
        super::workspace::wait_for("serve answering /healthz", Duration::from_secs(30), || {
            client.get(s.url("/healthz")).send().is_ok()
        });
        s.assert_running();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A client that trusts only the test CA (no system roots) and never
    /// follows redirects.
    pub fn client(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &self.ca {
            b = b.tls_certs_only([reqwest::Certificate::from_pem(&ca.ca_pem_bytes()).unwrap()]);
        }
        b.build().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("milebatch serve exited ({st}):\n{}", self.log_text());
        }
    }

    /// SIGTERM, then wait (at most `limit`) for the exit code.
    pub fn stop(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            assert!(
                std::time::Instant::now() < end,
                "milebatch serve still running {limit:?} after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The body as JSON; panics with the body text if it is not.
pub fn json(r: reqwest::blocking::Response) -> serde_json::Value {
    let text = r.text().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `/metrics` URL a process logged (`serving metrics on http://…/metrics`),
/// once it has.
pub fn metrics_url(log: &str) -> Option<String> {
    let start = log.find("serving metrics on http://")? + "serving metrics on ".len();
    let rest = &log[start..];
    let end = rest.find("/metrics")? + "/metrics".len();
    Some(rest[..end].to_owned())
}

/// `GET` the metrics at `url` (plain HTTP on loopback): the text.
pub fn scrape(url: &str) -> String {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "{url}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    r.text().unwrap()
}

/// The value of the series written exactly `series` (name and labels as
/// rendered) in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
