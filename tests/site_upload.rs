//! The upload page (flow ③) against the real `milebatch serve` over TLS:
//! multipart posts made by hand (the form without JavaScript, the CSRF
//! checks, the size limit) and a real Chromium (the page with its script,
//! the result page, the error-file download). Screenshots go to
//! `<target>/tmp/screenshots/<test>/` (`common::browser::screenshot_dir`).

mod common;

use std::io::Read;

use common::browser::{serve_pin, Browser};
use common::serve::{tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::{local_partner, Workspace};

/// `shop` (Shift_JIS, CRLF, `max_error_ratio = 0.9`) and `other` (UTF-8),
/// both with an empty local inbox; 10 members; `serve` on TLS.
fn site() -> (Workspace, Serve, String) {
    let ca = TestCa::new();
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.inbox("shop")).unwrap();
    std::fs::create_dir_all(ws.inbox("other")).unwrap();
    let partners = format!(
        "{}{}",
        local_partner(
            "shop",
            "inbox/shop",
            "encoding = \"shift_jis\"\nmax_error_ratio = 0.9"
        ),
        local_partner("other", "inbox/other", "")
    );
    ws.write_config("", &format!("{}\n{partners}", tls_server_section(&ca)));
    ws.members(10);
    let pin = serve_pin(&ca);
    let s = Serve::start(&ws, Some(ca));
    (ws, s, pin)
}

fn add_user(ws: &Workspace, email: &str, role: &[&str]) -> String {
    let mut args = vec!["user", "add", email];
    args.extend_from_slice(role);
    let out = ws.ok(&args);
    out.lines().nth(1).expect("password line").trim().to_owned()
}

fn cp932(s: &str) -> Vec<u8> {
    let (b, _, unmappable) = encoding_rs::SHIFT_JIS.encode(s);
    assert!(!unmappable);
    b.into_owned()
}

/// A CP932 exchange file with two good rows, an unknown member written in
/// kanji (E003) and bad miles (E006), and the error CSV the pipeline must
/// give back: the failed rows byte for byte, `,CODE`, CRLF.
fn shop_file() -> (Vec<u8>, Vec<u8>) {
    let file = cp932("M000001,注文-1,500\r\n未登録会員,注文-2,40\r\nM000002,注文-3,１２\r\nm3@example.jp,注文-4,70\r\n");
    let errors = cp932("未登録会員,注文-2,40,E003\r\nM000002,注文-3,１２,E006\r\n");
    (file, errors)
}

// ---------------------------------------------------------------------
// Without a browser: the form as a plain POST, as a browser without
// JavaScript sends it.

struct Client {
    c: reqwest::blocking::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn log_in(s: &Serve, email: &str, password: &str) -> Client {
    let c = s.client();
    let body = format!(
        "email={}&password={}",
        email.replace('@', "%40"),
        password
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let r = c
        .post(s.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "logged in");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = c
        .get(s.url("/upload"))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("enctype=\"multipart/form-data\""), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    Client {
        c,
        base: s.base.clone(),
        cookie,
        csrf,
    }
}

const BOUNDARY: &str = "----milebatch-test-boundary-7d2f";

/// The multipart framing before and after a file's bytes, with `fields`
/// (name, value) first.
fn framing(fields: &[(&str, &str)], file_name: &str) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::new();
    for (k, v) in fields {
        head.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    head.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: text/csv\r\n\r\n"
        )
        .as_bytes(),
    );
    (head, format!("\r\n--{BOUNDARY}--\r\n").into_bytes())
}

impl Client {
    fn post(
        &self,
        fields: &[(&str, &str)],
        file_name: &str,
        bytes: &[u8],
        header_token: Option<&str>,
    ) -> (u16, String) {
        let (mut body, tail) = framing(fields, file_name);
        body.extend_from_slice(bytes);
        body.extend_from_slice(&tail);
        self.send(reqwest::blocking::Body::from(body), header_token)
    }

    fn send(&self, body: reqwest::blocking::Body, header_token: Option<&str>) -> (u16, String) {
        let mut req = self
            .c
            .post(format!("{}/upload", self.base))
            .header("cookie", &self.cookie)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body);
        if let Some(t) = header_token {
            req = req.header("x-csrf-token", t);
        }
        let r = req.send().unwrap();
        // minijinja escapes `/` in values (links) as `&#x2f;`.
        (
            r.status().as_u16(),
            r.text().unwrap().replace("&#x2f;", "/"),
        )
    }
}

fn uploads_left(ws: &Workspace) -> usize {
    std::fs::read_dir(ws.path("var/uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn upload_form_without_javascript_csrf_limits_and_duplicates() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let c = log_in(&s, "staff@shop.example", &pw);
    let (file, errors) = shop_file();

    // No token, a wrong token: 403, nothing written, nothing credited.
    let (st, _) = c.post(&[], "交換.csv", &file, None);
    assert_eq!(st, 403);
    let (st, _) = c.post(&[("csrf", "wrong")], "交換.csv", &file, None);
    assert_eq!(st, 403);
    // The token after the file is too late: the file is never read.
    let (mut body, _) = framing(&[], "交換.csv");
    body.extend_from_slice(&file);
    body.extend_from_slice(
        format!(
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{}\r\n--{BOUNDARY}--\r\n",
            c.csrf
        )
        .as_bytes(),
    );
    assert_eq!(c.send(body.into(), None).0, 403);
    assert_eq!(ws.int("SELECT count(*) FROM files"), 0);
    assert_eq!(uploads_left(&ws), 0);

    // Validate only: the counts, nothing credited or recorded, and the
    // dry-run report downloadable byte for byte.
    let (st, page) = c.post(
        &[("csrf", &c.csrf), ("dry_run", "1")],
        "交換.csv",
        &file,
        None,
    );
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("検証のみ") && page.contains("何も積算していません"),
        "{page}"
    );
    assert!(
        page.contains("id=\"credited\">2<") && page.contains("id=\"failed\">2<"),
        "{page}"
    );
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), 0);
    assert_eq!(ws.int("SELECT count(*) FROM files"), 0);
    let link = page
        .split("href=\"/upload/dry-run/")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("dry-run report link");
    let r =
        c.c.get(format!("{}/upload/dry-run/{link}", c.base))
            .header("cookie", &c.cookie)
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=Shift_JIS");
    assert_eq!(r.bytes().unwrap().as_ref(), &errors[..]);
    // The download is in the audit trail, with who and from where.
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'download' AND detail LIKE 'dry-run report %' AND client = '127.0.0.1' AND actor LIKE 'user:%'"),
        1
    );
    // A path instead of a name is not served.
    let r =
        c.c.get(format!("{}/upload/dry-run/..%2F..%2Fmilebatch.db", c.base))
            .header("cookie", &c.cookie)
            .send()
            .unwrap();
    assert_eq!(r.status(), 404);

    // For real, the token as the script sends it (a header): credited as
    // an upload, with the pipeline's report.
    let (st, page) = c.post(&[], "交換.csv", &file, Some(&c.csrf));
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("積算しました") && page.contains("id=\"miles\">570<"),
        "{page}"
    );
    assert!(
        page.contains("E003") && page.contains("会員が見つかりません"),
        "{page}"
    );
    let id = ws.int("SELECT id FROM files WHERE outcome = 'credited' AND channel = 'upload'");
    assert!(page.contains(&format!("/files/{id}/errors")), "{page}");
    assert_eq!(ws.balance("M000001"), 500);
    assert_eq!(ws.balance("M000003"), 70);
    let report: String = ws
        .db()
        .query_row("SELECT report_path FROM files WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(std::fs::read(report).unwrap(), errors);

    // The same bytes again, under another name: F001, in plain words.
    let (st, page) = c.post(&[("csrf", &c.csrf)], "again.csv", &file, None);
    assert_eq!(st, 422, "{page}");
    assert!(
        page.contains("重複のため拒否") && page.contains("F001"),
        "{page}"
    );
    assert_eq!(ws.balance("M000001"), 500, "not credited twice");

    // One byte over 100 MiB: refused with a page that says so, the temp
    // file removed, nothing recorded. (The body is streamed, not built.)
    let over = 100 * 1024 * 1024 + 1;
    let (head, tail) = framing(&[("csrf", &c.csrf)], "big.csv");
    let len = (head.len() + over + tail.len()) as u64;
    let reader = std::io::Cursor::new(head)
        .chain(std::io::repeat(b'x').take(over as u64))
        .chain(std::io::Cursor::new(tail));
    let (st, page) = c.send(reqwest::blocking::Body::sized(reader, len), None);
    assert_eq!(st, 413, "{page}");
    assert!(
        page.contains("ファイルが大きすぎます") && page.contains("100 MiB"),
        "{page}"
    );
    assert_eq!(uploads_left(&ws), 0, "temp file removed");
    assert_eq!(ws.int("SELECT count(*) FROM files"), 2);

    // Every upload is audited: the dry run, the credit and the duplicate.
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'upload' AND partner = 'shop'"),
        3
    );
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM audit WHERE action = 'upload' AND detail LIKE 'file {id} %credited%'"
        )),
        1
    );

    // A partner user cannot upload for another partner; ops choose one.
    let (st, _) = c.post(
        &[("csrf", &c.csrf), ("partner", "other")],
        "p.csv",
        b"M000004,X1,4\n",
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE partner = 'other'"),
        0
    );
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let o = log_in(&s, "ops@example.jp", &ops_pw);
    let (st, page) = o.post(&[("csrf", &o.csrf)], "o.csv", b"M000005,O1,5\n", None);
    assert_eq!(st, 400, "ops must choose: {page}");
    let (st, _) = o.post(
        &[("csrf", &o.csrf), ("partner", "other")],
        "o.csv",
        b"M000005,O1,5\n",
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE partner = 'other' AND channel = 'upload'"),
        1
    );
}

// ---------------------------------------------------------------------
// In a real browser, with the page's script.

async fn browser_log_in(b: &mut Browser, s: &Serve, email: &str, password: &str) {
    b.visit(&s.url("/login"), "login").await;
    b.fill_labelled("メールアドレス", email).await;
    b.fill_labelled("パスワード", password).await;
    b.click_button("ログイン").await;
}

/// Choose `path` in the file input, tick "validate only" if asked, send,
/// and wait for the result page.
async fn upload(b: &mut Browser, s: &Serve, path: &std::path::Path, dry_run: bool, step: &str) {
    b.visit(&s.url("/upload"), &format!("{step}-form")).await;
    // A mark on this window, and the furthest the progress bar goes.
    b.client
        .execute(
            "window.mbMarker = 1; window.mbProgress = 0;
             var bar = document.getElementById('upload-progress');
             new MutationObserver(function () {
               if (bar.hasAttribute('value')) { window.mbProgress = Math.max(window.mbProgress, bar.value); }
             }).observe(bar, { attributes: true });",
            vec![],
        )
        .await
        .unwrap();
    b.client
        .find(fantoccini::Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(path.to_str().unwrap())
        .await
        .unwrap();
    if dry_run {
        b.client
            .find(fantoccini::Locator::Id("dry_run"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    b.send_upload(step).await;
}

async fn download(b: &Browser, link: &str) -> Vec<u8> {
    for e in std::fs::read_dir(&b.downloads).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    b.client
        .find(fantoccini::Locator::LinkText(link))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    std::fs::read(b.downloaded("csv").await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_upload_validate_only_credit_download_and_duplicate() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let (file, errors) = shop_file();
    let path = ws.write("to-upload/交換.csv", &file);
    let mut b = Browser::start("upload", Some(&pin)).await;
    browser_log_in(&mut b, &s, "staff@shop.example", &pw).await;
    // The nav leads to the page; its fields have real labels.
    b.client
        .find(fantoccini::Locator::LinkText("アップロード"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("upload-page").await;
    let t = b.text().await;
    assert!(
        t.contains("交換ファイル（CSV）") && t.contains("検証のみ（積算しない）"),
        "{t}"
    );

    // Validate only: says so, credits nothing, records no file.
    upload(&mut b, &s, &path, true, "validate-only").await;
    // It went through the page's script (the window survived: no
    // navigation), which moved the progress bar to the whole body.
    let seen = b
        .client
        .execute(
            "return [window.mbMarker || 0, window.mbProgress || 0];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(seen[0], 1, "the result came through XMLHttpRequest: {seen}");
    assert!(
        seen[1].as_f64().unwrap() >= file.len() as f64,
        "progress reached the file's size: {seen}"
    );
    let t = b.text().await;
    assert!(t.contains("検証のみ: このファイルは積算できます"), "{t}");
    assert!(t.contains("E003") && t.contains("E006"), "{t}");
    assert_eq!(ws.int("SELECT count(*) FROM ledger"), 0);
    assert_eq!(ws.int("SELECT count(*) FROM files"), 0);
    assert_eq!(download(&b, "エラーファイルをダウンロード").await, errors);

    // For real: credited, the counts, and the error file byte for byte.
    upload(&mut b, &s, &path, false, "credited").await;
    let t = b.text().await;
    assert!(t.contains("積算しました"), "{t}");
    let num = |id: &'static str| {
        let c = b.client.clone();
        async move {
            c.find(fantoccini::Locator::Id(id))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(num("rows").await, "4");
    assert_eq!(num("credited").await, "2");
    assert_eq!(num("failed").await, "2");
    assert_eq!(num("miles").await, "570");
    assert_eq!(ws.balance("M000001"), 500);
    assert_eq!(download(&b, "エラーファイルをダウンロード").await, errors);
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE channel = 'upload' AND outcome = 'credited'"),
        1
    );

    // The same file again: refused as a duplicate, in plain words.
    upload(&mut b, &s, &path, false, "duplicate").await;
    let t = b.text().await;
    assert!(
        t.contains("重複のため拒否しました") && t.contains("F001"),
        "{t}"
    );
    assert!(
        t.contains("同じ内容のファイルがすでに積算されています"),
        "{t}"
    );
    assert_eq!(ws.balance("M000001"), 500, "not credited twice");

    // Over 100 MiB: the page's script says so before sending anything.
    let big = ws.path("to-upload/big.csv");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 * 1024 * 1024 + 1)
        .unwrap();
    b.visit(&s.url("/upload"), "too-large-form").await;
    b.client
        .find(fantoccini::Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(big.to_str().unwrap())
        .await
        .unwrap();
    b.click_button("アップロード").await;
    b.shot("too-large").await;
    let status = b
        .client
        .find(fantoccini::Locator::Id("upload-status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.contains("ファイルが大きすぎます"), "{status}");
    assert_eq!(ws.int("SELECT count(*) FROM files"), 2);

    // The files page lists both as uploads.
    b.visit(&s.url("/files"), "files").await;
    let t = b.text().await;
    assert!(t.matches("アップロード").count() >= 3, "{t}");
    b.close().await;
}

/// Issue 22: the upload page explains the partner's format and offers a
/// template in its encoding; after a partly failed upload the page says
/// what to do, lists the failed rows with their line numbers and offers
/// them alone (no codes, the partner's bytes) to fix and send again,
/// while the error CSV stays the contract's; a file in the wrong encoding
/// is recognised; a re-send (F006) names the earlier file in Japanese and
/// no setting.
#[test]
fn upload_explains_the_format_and_what_to_do_after_failed_rows() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let c = log_in(&s, "staff@shop.example", &pw);
    let get = |path: &str| {
        c.c.get(format!("{}{path}", c.base))
            .header("cookie", &c.cookie)
            .send()
            .unwrap()
    };
    let form = get("/upload").text().unwrap();
    assert!(form.contains("Shift_JIS（CP932"), "{form}");
    assert!(
        form.contains("指定キー") && form.contains("100,000 マイル"),
        "{form}"
    );
    let t = get("/upload/template.csv");
    assert_eq!(t.headers()["content-type"], "text/csv; charset=Shift_JIS");
    assert_eq!(
        t.bytes().unwrap().to_vec(),
        cp932("会員ID（またはメールアドレス）,指定キー,マイル\r\n")
    );
    let (file, errors) = shop_file();
    let (code, page) = c.post(&[("csrf", &c.csrf)], "a.csv", &file, None);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("ファイル全体をもう一度送らないでください"),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr data-line="2"><td class="num">2</td><td class="reason"><code>未登録会員,注文-2,40</code></td><td>E003</td>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr data-line="3">"#) && page.contains("マイルが正の整数ではありません"),
        "{page}"
    );
    let id = ws.int("SELECT id FROM files WHERE name = 'a.csv'");
    assert!(page.contains(&format!("/files/{id}/failed-rows")), "{page}");
    let again = get(&format!("/files/{id}/failed-rows"));
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.bytes().unwrap().to_vec(),
        cp932("未登録会員,注文-2,40\r\nM000002,注文-3,１２\r\n"),
        "the failed rows as sent, without codes"
    );
    let report = get(&format!("/files/{id}/errors"))
        .bytes()
        .unwrap()
        .to_vec();
    assert_eq!(report, errors, "the error CSV is the contract's");
    // UTF-8 to a Shift_JIS partner: said in plain Japanese.
    let utf8 = "M000004,K-1,10\r\nM000005,K-2,10\r\nM000006,K-3,10\r\nM000007,注文あ,10\r\n";
    let (code, page) = c.post(&[("csrf", &c.csrf)], "u.csv", utf8.as_bytes(), None);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("このファイルは UTF-8 のようです。Shift_JIS で保存してください"),
        "{page}"
    );
    // A re-send of a.csv's credited rows: F006, naming a.csv, no setting.
    let resend = cp932("M000001,注文-1,500\r\nm3@example.jp,注文-4,70\r\nM000008,注文-5,9\r\n");
    let (code, page) = c.post(&[("csrf", &c.csrf)], "b.csv", &resend, None);
    assert_eq!(code, 422, "{page}");
    assert!(
        page.contains(&format!(
            "以前に積算したファイル「a.csv」（ファイル番号 {id}"
        )),
        "{page}"
    );
    assert!(
        !page.contains("resend_check") && !page.contains("re-send"),
        "{page}"
    );
}

/// Issue 22: a refused file shows what it held. A duplicate (F001) and a
/// re-send (F006) list their real row count on the files page and on
/// the upload's result page, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_duplicate_and_resend_show_their_row_counts() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let (file, _) = shop_file();
    let first = ws.write("to-upload/a.csv", &file);
    let again = ws.write("to-upload/again.csv", &file);
    // Two of its three rows repeat a.csv's credited rows: a re-send.
    let resend = ws.write(
        "to-upload/b.csv",
        cp932("M000001,注文-1,500\r\nm3@example.jp,注文-4,70\r\nM000008,注文-5,9\r\n"),
    );
    let mut b = Browser::start("refused-counts", Some(&pin)).await;
    browser_log_in(&mut b, &s, "staff@shop.example", &pw).await;
    upload(&mut b, &s, &first, false, "credited").await;
    upload(&mut b, &s, &again, false, "duplicate").await;
    assert!(b.text().await.contains("F001"));
    assert_eq!(b.text_at("#rows").await, "4", "the duplicate's rows");
    upload(&mut b, &s, &resend, false, "resend").await;
    assert!(b.text().await.contains("F006"));
    assert_eq!(b.text_at("#rows").await, "3", "the re-send's rows");

    b.visit(&s.url("/files"), "files").await;
    for (name, code, rows) in [("again.csv", "F001", "4"), ("b.csv", "F006", "3")] {
        let id = ws.int(&format!("SELECT id FROM files WHERE name = '{name}'"));
        let row = format!("tr[data-file=\"{id}\"]");
        assert!(
            b.text_at(&format!("{row} td.reason")).await.contains(code),
            "{name}"
        );
        // The fifth column is 行数.
        assert_eq!(
            b.text_at(&format!("{row} td:nth-child(5)")).await,
            rows,
            "{name}'s rows on the files page"
        );
        assert_eq!(
            b.text_at(&format!("{row} td:nth-child(6)")).await,
            "0",
            "{name} credited nothing"
        );
    }
    b.close().await;
}

/// Issue 22: a file name with `/` in it (macOS allows one; a hand-made
/// client sends anything) is kept whole: the history export and the
/// statement show `=cmd|' /C calc'!A0.csv`, not its part after the `/`,
/// still written so that a spreadsheet never runs it (a leading `'`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_with_a_slash_is_kept_whole_in_the_exports() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@other.example", &["--partner", "other"]);
    let name = "=cmd|' /C calc'!A0.csv";
    let mut b = Browser::start("slash-name", Some(&pin)).await;
    browser_log_in(&mut b, &s, "staff@other.example", &pw).await;
    b.visit(&s.url("/upload"), "upload-form").await;
    b.choose_file("file", name, b"M000001,S-1,10\nM000002,S-2,20\n")
        .await;
    b.send_upload("credited").await;
    assert!(b.text().await.contains("積算しました"));
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM files WHERE name = '{}'",
            name.replace('\'', "''")
        )),
        1,
        "recorded under its whole name"
    );
    // Excel reads the file with the BOM as UTF-8; a cell starting with
    // `=` is written with a `'` before it.
    let cell = format!("'{name}");
    let history = b.fetch_bytes("/history.csv?key=S-1").await;
    let history = String::from_utf8(history).unwrap();
    assert!(history.contains(&cell), "{history}");
    b.visit(&s.url("/files"), "files").await;
    assert!(b.text().await.contains(name));
    let month = b
        .client
        .find(fantoccini::Locator::Id("month"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let statement = b
        .fetch_bytes(&format!("/statement.csv?partner=other&month={month}"))
        .await;
    let statement = String::from_utf8(statement).unwrap();
    assert!(
        statement.contains(&format!("{cell}（アップロード）")),
        "{statement}"
    );
    b.close().await;
}

/// What a page shows with every `<details>` taken out: the main text a
/// reader sees without opening anything.
async fn main_text(b: &Browser) -> String {
    let v = b
        .client
        .execute(
            "var c = document.body.cloneNode(true);
             c.querySelectorAll('details').forEach(function (d) { d.remove(); });
             return c.innerText;",
            vec![],
        )
        .await
        .unwrap();
    v.as_str().unwrap().to_owned()
}

/// The settings of `partners.toml` a partner cannot see or change.
const CONFIG_KEYS: &[&str] = &[
    "resend_check",
    "resend_ratio",
    "resend_window",
    "max_error_ratio",
    "max_miles_per_row",
    "header =",
    "partners.toml",
    // Commands are ops' tools (the site's own name, milebatch 管理サイト,
    // is fine).
    "milebatch retry",
    "milebatch run",
    "milebatch once",
];

/// Checks a partner-facing page: no setting named, no English sentence
/// (three English words in a row) in the main text, and every
/// disclosure is the 技術的な詳細 one.
async fn assert_japanese_for_a_partner(b: &Browser, page: &str) {
    let t = main_text(b).await;
    for k in CONFIG_KEYS {
        assert!(!t.contains(k), "{page} names {k}: {t}");
    }
    let english = english_run(&t);
    assert!(
        english.is_none(),
        "{page}: English in the main text: {english:?}\n{t}"
    );
}

/// The first run of three or more English words (letters, 2+ each)
/// separated by spaces, if any.
fn english_run(t: &str) -> Option<String> {
    for line in t.lines() {
        let mut run: Vec<&str> = Vec::new();
        for w in line.split(' ') {
            let word = w.trim_matches(|c: char| ",.;:()\"'".contains(c));
            if word.len() >= 2 && word.chars().all(|c| c.is_ascii_alphabetic()) {
                run.push(word);
                if run.len() >= 3 {
                    return Some(run.join(" "));
                }
            } else {
                run.clear();
            }
        }
    }
    None
}

/// Issue 22: every refusal a partner reads is Japanese. The technical
/// English reason is for ops, behind 技術的な詳細, never the main text,
/// and nothing names a setting the partner cannot see: on the upload's
/// result page and on the files page, for F001, F002, F003, F004, F006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_read_in_japanese_with_the_technical_reason_only_for_ops() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@other.example", &["--partner", "other"]);
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let good = b"M000001,A-1,10\nM000002,A-2,20\nM000003,A-3,30\n";
    let files: [(&str, &[u8], &str); 6] = [
        ("ok.csv", good, ""),
        ("dup.csv", good, "F001"),
        (
            "unclosed.csv",
            b"M000004,\"B-1,10\nM000005,B-2,20\n",
            "F002",
        ),
        ("header-only.csv", b"member,key,miles\n", "F003"),
        (
            "bad.csv",
            b"nobody,C-1,10\nnone,C-2,20\nM000006,C-3,30\n",
            "F004",
        ),
        (
            "resend.csv",
            b"M000001,A-1,10\nM000002,A-2,20\nM000007,A-4,5\n",
            "F006",
        ),
    ];
    let mut b = Browser::start("refusals-japanese", Some(&pin)).await;
    browser_log_in(&mut b, &s, "staff@other.example", &pw).await;
    for (name, bytes, code) in files {
        b.visit(&s.url("/upload"), &format!("{name}-form")).await;
        b.choose_file("file", name, bytes).await;
        b.send_upload(name).await;
        if code.is_empty() {
            continue;
        }
        let t = b.text().await;
        assert!(t.contains(code), "{name}: {t}");
        assert_japanese_for_a_partner(&b, name).await;
        // The partner gets no technical reason at all, not even folded.
        assert!(!t.contains("技術的な詳細"), "{name}: {t}");
    }
    b.visit(&s.url("/files"), "partner-files").await;
    assert_japanese_for_a_partner(&b, "partner files").await;
    let html = b.client.source().await.unwrap();
    assert!(!html.contains("<details"), "{html}");
    b.click_button("ログアウト").await;

    // Ops: the same rows, each with its English reason folded away.
    browser_log_in(&mut b, &s, "ops@example.jp", &ops_pw).await;
    b.visit(&s.url("/files?partner=other"), "ops-files").await;
    for (name, _, code) in files.iter().filter(|f| !f.2.is_empty()) {
        let id = ws.int(&format!("SELECT id FROM files WHERE name = '{name}'"));
        let cell = format!("tr[data-file=\"{id}\"] td.reason");
        let summary = b.text_at(&format!("{cell} details > summary")).await;
        assert_eq!(summary, "技術的な詳細", "{name}");
        let shown = b.text_at(&cell).await;
        assert!(shown.starts_with(code), "{name}: {shown}");
        assert!(
            english_run(&shown).is_none(),
            "{name}: folded, not shown: {shown}"
        );
    }
    b.close().await;
}
