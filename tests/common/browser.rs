//! A real Chromium, driven over WebDriver: Debian's `chromedriver` started
//! on a random loopback port, and a fantoccini client talking to it.
//!
//! - headless (`--headless=new --no-sandbox --disable-dev-shm-usage`: tests
//!   run as root, and /dev/shm is small in containers);
//! - the server's certificate is trusted by pinning its public key
//!   (`--ignore-certificate-errors-spki-list`): only the test server's key
//!   is accepted, every other certificate error still fails the page;
//! - [`Browser::shot`] saves a PNG after each step to
//!   `<target>/tmp/screenshots/<test>/NN-step.png` ([`screenshot_dir`]:
//!   under the cargo target folder in use, `CARGO_TARGET_DIR` included), so
//!   a person can look at every page a test saw.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use fantoccini::{Client, ClientBuilder, Locator};
use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

/// Where `test`'s screenshots go: `<target>/tmp/screenshots/<test>`, in the
/// cargo target folder this test was built in (`CARGO_TARGET_DIR` when set,
/// else `./target`), never a `target` folder cargo does not use.
pub fn screenshot_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join(test)
}

use super::servers::{free_port, require_tool};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A running chromedriver with one browser session; both end when dropped
/// (call [`Browser::close`] for a clean end).
pub struct Browser {
    pub client: Client,
    driver: Child,
    shots: PathBuf,
    step: u32,
    pub downloads: PathBuf,
    _downloads_tmp: tempfile::TempDir,
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the key in `key_pem`:
/// what Chromium's `--ignore-certificate-errors-spki-list` pins.
pub fn spki_pin(key_pem: &Path) -> String {
    let pem = std::fs::read_to_string(key_pem).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).expect("parse test server key");
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.subject_public_key_info()))
}

impl Browser {
    /// Start chromedriver and a headless Chromium that accepts the server
    /// key `pin` (see [`spki_pin`]; `None` for plain HTTP). Screenshots go
    /// to [`screenshot_dir`]`(test)`.
    pub async fn start(test: &str, pin: Option<&str>) -> Browser {
        require_tool(CHROMEDRIVER, "chromium-driver");
        require_tool(CHROMIUM, "chromium");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let downloads_tmp = tempfile::tempdir().unwrap();
        let downloads = downloads_tmp.path().to_path_buf();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1280,900".to_string(),
            "--lang=ja".to_string(),
        ];
        if let Some(pin) = pin {
            args.push(format!("--ignore-certificate-errors-spki-list={pin}"));
        }
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "intl.accept_languages": "ja"
                }
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .expect("rustls connector")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "chromedriver on {url} gave no session: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        let shots = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            shots,
            step: 0,
            downloads,
            _downloads_tmp: downloads_tmp,
        }
    }

    /// Save a screenshot of the page as `NN-<step>.png`.
    pub async fn shot(&mut self, step: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{:02}-{step}.png", self.step));
        std::fs::write(&path, png).unwrap();
    }

    /// Save the whole page, top to bottom, as `NN-<step>.png`: the window
    /// is made as tall as the page for the shot (at most 8,000 px), then
    /// given back its size, so a page longer than the window is seen
    /// whole and never half scrolled.
    pub async fn full_shot(&mut self, step: &str) {
        let (w, h) = self.client.get_window_size().await.expect("window size");
        let dims = self
            .client
            .execute(
                "window.scrollTo(0, 0);
                 return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .expect("page height");
        let page = dims[0].as_u64().unwrap_or(h);
        let chrome = dims[1].as_u64().unwrap_or(0);
        let tall = (page + chrome).clamp(h, 8_000);
        self.client
            .set_window_size(w as u32, tall as u32)
            .await
            .expect("resize");
        self.shot(step).await;
        self.client
            .set_window_size(w as u32, h as u32)
            .await
            .expect("resize back");
    }

    /// Go to `url` and take a screenshot named `step`.
    pub async fn visit(&mut self, url: &str, step: &str) {
        self.client.goto(url).await.expect("goto");
        self.shot(step).await;
    }

    /// The text of the whole page.
    pub async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("body")
            .text()
            .await
            .expect("body text")
    }

    /// The text of the first element matching `css` (fails the test when
    /// there is none).
    pub async fn text_at(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// The bytes the page's own origin answers for `path` (a GET with the
    /// session's cookie, as a click on a download link would send). The
    /// page's `fetch`, so no download folder or file name is involved.
    pub async fn fetch_bytes(&self, path: &str) -> Vec<u8> {
        let got = self
            .client
            .execute_async(
                "var done = arguments[arguments.length - 1];
                 fetch(arguments[0], { credentials: 'same-origin' })
                   .then(function (r) {
                     if (!r.ok) { throw new Error('HTTP ' + r.status); }
                     return r.arrayBuffer();
                   })
                   .then(function (b) { done(Array.from(new Uint8Array(b))); })
                   .catch(function (e) { done('failed: ' + e); });",
                vec![serde_json::Value::String(path.to_owned())],
            )
            .await
            .expect("fetch in the page");
        let bytes = got
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: {got}"));
        bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect()
    }

    /// Put a file named `name` holding `bytes` into the file input `#id`,
    /// as if chosen there: a name no file on this machine can have (a
    /// `/` in it, as macOS allows) reaches the page's own upload script.
    pub async fn choose_file(&self, id: &str, name: &str, bytes: &[u8]) {
        self.client
            .execute(
                "var dt = new DataTransfer();
                 dt.items.add(new File([new Uint8Array(arguments[2])], arguments[1]));
                 document.getElementById(arguments[0]).files = dt.files;",
                vec![id.into(), name.into(), bytes.to_vec().into()],
            )
            .await
            .expect("choose a file");
    }

    /// Press the upload page's アップロード and wait (60 s at most) for
    /// its result page, then take a screenshot named `step`.
    pub async fn send_upload(&mut self, step: &str) {
        self.click_button("アップロード").await;
        self.client
            .wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Id("upload-outcome"))
            .await
            .expect("result page");
        self.shot(step).await;
    }

    /// Run axe-core on the page now shown and fail the test, naming each
    /// rule and element, if it finds any `serious` or `critical`
    /// violation. `page` names the page in the message.
    pub async fn assert_accessible(&self, page: &str) {
        self.client
            .execute(&format!("{}\nreturn true;", axe_source()), vec![])
            .await
            .expect("inject axe-core");
        let found = self
            .client
            .execute_async(
                "var done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] }).then(function (r) {
                   done(r.violations
                     .filter(function (v) { return v.impact === 'serious' || v.impact === 'critical'; })
                     .map(function (v) {
                       return v.impact + ' ' + v.id + ': ' + v.help + ' — ' +
                         v.nodes.map(function (n) { return n.target.join(' '); }).join(', ');
                     }));
                 }, function (e) { done(['axe failed: ' + e]); });",
                vec![],
            )
            .await
            .expect("axe.run");
        assert_eq!(
            found,
            serde_json::json!([]),
            "axe-core on {page}: serious or critical violations"
        );
    }

    /// Press `key` (a character or a [`fantoccini::key::Key`]) on the
    /// keyboard, down then up, wherever the focus is.
    pub async fn press(&self, key: impl Into<char>) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let k = key.into();
        let actions = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k });
        self.client
            .perform_actions(actions)
            .await
            .expect("key press");
    }

    /// Press Tab until the focused element matches `css` (none if it
    /// already does; at most 60 times, then the test fails): how a
    /// keyboard user reaches it.
    pub async fn tab_to(&self, css: &str) {
        for _ in 0..=60 {
            let hit = self
                .client
                .execute(
                    "return document.activeElement !== null && document.activeElement.matches(arguments[0]);",
                    vec![css.into()],
                )
                .await
                .expect("focused element");
            if hit == serde_json::Value::Bool(true) {
                return;
            }
            self.press(fantoccini::key::Key::Tab).await;
        }
        panic!("Tab never reached {css}");
    }

    /// Type `text` with the keyboard into the focused element.
    pub async fn type_text(&self, text: &str) {
        for c in text.chars() {
            self.press(c).await;
        }
    }

    /// Type `value` into the field whose `<label>` says `label` (so the
    /// tests also check the labels are real and linked).
    pub async fn fill_labelled(&self, label: &str, value: &str) {
        let xpath = format!("//label[normalize-space(.)='{label}']");
        let l = self
            .client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no <label> {label:?}: {e}"));
        let id = l
            .attr("for")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("<label> {label:?} has no for="));
        let input = self
            .client
            .find(Locator::Id(&id))
            .await
            .unwrap_or_else(|e| panic!("label {label:?} points at no #{id}: {e}"));
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }

    /// Click the button (or submit input) showing `text`, then wait (up to
    /// 10 s) until the page's body has been replaced: by the answer to a
    /// posted form, or by the upload script's result. Reading right after
    /// the click could otherwise see the old page, or fail with a stale
    /// element when the answer arrives mid-read. A click that changes no
    /// page (a script refusing in place) costs the wait and nothing else:
    /// the caller then checks what it expects to see.
    pub async fn click_button(&self, text: &str) {
        let xpath = format!(
            "//button[normalize-space(.)='{text}'] | //input[@type='submit' and @value='{text}']"
        );
        let button = self
            .client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button {text:?}: {e}"));
        let old = self.client.find(Locator::Css("body")).await.expect("body");
        button.click().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while old.tag_name().await.is_ok() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The first download with extension `ext` that Chromium has finished
    /// (waits at most 20 s, then fails the test).
    pub async fn downloaded(&self, ext: &str) -> PathBuf {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let done = std::fs::read_dir(&self.downloads)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| finished_download(p, ext));
            if let Some(p) = done {
                return p;
            }
            assert!(std::time::Instant::now() < deadline, "no download");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// axe-core's `axe.min.js`, installed by `.ci/install-deps.sh` into
/// `tests/support/axe` (read once per test binary).
fn axe_source() -> &'static str {
    static SRC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SRC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/axe/node_modules/axe-core/axe.min.js"
        );
        std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{path}: {e}: axe-core is installed by `bash .ci/install-deps.sh` (which `bash .ci/test` runs first)")
        })
    })
}

/// The pin for the certificate [`super::serve::tls_server_section`] issued
/// from `ca` (its key is `<ca dir>/milebatch-serve.key.pem`).
pub fn serve_pin(ca: &super::servers::TestCa) -> String {
    spki_pin(&ca.dir.join("milebatch-serve.key.pem"))
}

/// Whether `p` is a download Chromium has finished: the wanted extension,
/// not empty, and no `.crdownload` beside it. Chromium creates the final
/// name empty when a download starts and fills it at the end, so a file
/// that merely exists may still be that placeholder.
fn finished_download(p: &std::path::Path, ext: &str) -> bool {
    let in_progress = p
        .parent()
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|rd| {
            rd.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "crdownload"))
        });
    p.extension().is_some_and(|x| x == ext)
        && !in_progress
        && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}
