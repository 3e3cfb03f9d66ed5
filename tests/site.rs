//! The management site in a real browser (headless Chromium over WebDriver,
//! tests/common/browser.rs) against the real `milebatch serve` over TLS.
//! Every page a test sees is saved under `<target>/tmp/screenshots/<test>/` (`common::browser::screenshot_dir`).

mod common;

use common::browser::{serve_pin, Browser};
use common::serve::{tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::{local_partner, Workspace};

fn site() -> (Workspace, Serve, String) {
    site_with(|ws| ws.scheduled_partner("shop", "daily 03:00"), |_| {})
}

/// A workspace with `partners` (given the workspace), `prepare` run on it
/// (members, runs) before `serve` starts over TLS; returns the pin for
/// [`Browser::start`].
fn site_with(
    partners: impl FnOnce(&Workspace) -> String,
    prepare: impl FnOnce(&Workspace),
) -> (Workspace, Serve, String) {
    let ca = TestCa::new();
    let ws = Workspace::new();
    let p = partners(&ws);
    ws.write_config("", &format!("{}\n{p}", tls_server_section(&ca)));
    prepare(&ws);
    let pin = serve_pin(&ca);
    let s = Serve::start(&ws, Some(ca));
    (ws, s, pin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_reaches_the_server_over_tls_with_the_pinned_key() {
    let (_ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let mut b = Browser::start("harness", Some(&pin)).await;
    b.visit(&s.url("/healthz"), "healthz").await;
    let text = b.text().await;
    assert!(text.contains("ok"), "{text}");
    b.close().await;
}

/// `user add` through the real binary; the printed one-time password.
fn add_user(ws: &Workspace, email: &str, role: &[&str]) -> String {
    let mut args = vec!["user", "add", email];
    args.extend_from_slice(role);
    let out = ws.ok(&args);
    let pw = out.lines().nth(1).expect("password line").trim().to_owned();
    assert!(pw.len() >= 12, "{out}");
    pw
}

async fn log_in(b: &mut Browser, s: &Serve, email: &str, password: &str, step: &str) {
    b.visit(&s.url("/login"), &format!("{step}-form")).await;
    b.fill_labelled("メールアドレス", email).await;
    b.fill_labelled("パスワード", password).await;
    b.click_button("ログイン").await;
    b.shot(step).await;
}

const GENERIC: &str = "メールアドレスまたはパスワードが正しくありません。";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failed_login_lockout_and_logout() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let mut b = Browser::start("login", Some(&pin)).await;

    // Not logged in: every page sends you to the login page.
    b.visit(&s.url("/"), "anonymous").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");

    // A wrong password and an unknown account get the same one message.
    log_in(
        &mut b,
        &s,
        "staff@shop.example",
        "wrong password!",
        "wrong-password",
    )
    .await;
    let wrong = b.text().await;
    assert!(wrong.contains(GENERIC), "{wrong}");
    log_in(&mut b, &s, "nobody@shop.example", &pw, "unknown-account").await;
    assert!(b.text().await.contains(GENERIC));

    // The right password: the start page names the user and the partner.
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");
    let home = b.text().await;
    assert!(
        home.contains("staff@shop.example") && home.contains("shop"),
        "{home}"
    );
    let cookie = b.client.get_all_cookies().await.unwrap();
    let c = cookie
        .iter()
        .find(|c| c.name() == "__Host-mb_session")
        .expect("session cookie");
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(c.secure(), Some(true));
    assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)");
    let first_session = c.value().to_owned();

    // Logout ends the session on the server, not only in the browser.
    b.click_button("ログアウト").await;
    b.shot("logged-out").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    assert_eq!(ws.int("SELECT count(*) FROM sessions"), 0);
    b.visit(&s.url("/"), "after-logout").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");

    // A new login gets a new session id.
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in-again").await;
    let again = b
        .client
        .get_named_cookie("__Host-mb_session")
        .await
        .unwrap();
    assert_ne!(again.value(), first_session, "session id rotated");
    b.click_button("ログアウト").await;

    // Five wrong passwords lock the account: even the right one is refused,
    // with the same message.
    for i in 0..5 {
        log_in(
            &mut b,
            &s,
            "staff@shop.example",
            "guess",
            &format!("guess-{i}"),
        )
        .await;
        assert!(b.text().await.contains(GENERIC));
    }
    log_in(&mut b, &s, "staff@shop.example", &pw, "locked").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    assert!(b.text().await.contains(GENERIC));
    let list = ws.ok(&["user", "list"]);
    assert!(list.contains("locked"), "{list}");

    // Ops give a new password: unlocked.
    let out = ws.ok(&["user", "passwd", "staff@shop.example"]);
    let pw2 = out.lines().nth(1).unwrap().trim().to_owned();
    log_in(&mut b, &s, "staff@shop.example", &pw2, "new-password").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");

    // Every attempt is in the audit trail, with the client address and
    // never the password.
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'login'"),
        3
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'login-failed' AND client = '127.0.0.1'"),
        8
    );
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM audit WHERE detail LIKE '%{pw}%' OR detail LIKE '%guess%'"
        )),
        0
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_expires_and_disabled_user_is_logged_out() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let mut b = Browser::start("expiry", Some(&pin)).await;
    log_in(&mut b, &s, "ops@example.jp", &pw, "logged-in").await;
    assert!(b.text().await.contains("運用"));
    // 12 hours without a request: the stored idle expiry has passed.
    ws.db()
        .execute("UPDATE sessions SET expires_at = unixepoch() - 1", [])
        .unwrap();
    b.visit(&s.url("/"), "expired").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    assert!(b.text().await.contains("有効期限が切れました"));

    log_in(&mut b, &s, "ops@example.jp", &pw, "logged-in-again").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");
    ws.ok(&["user", "disable", "ops@example.jp"]);
    b.visit(&s.url("/"), "disabled").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/login");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_post_is_refused() {
    let (ws, s, pin) = tokio::task::spawn_blocking(site).await.unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let mut b = Browser::start("csrf", Some(&pin)).await;
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    let token = b
        .client
        .find(fantoccini::Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    // Another site's page with a form aimed at our logout, even carrying
    // the right token (as if it had leaked).
    let evil = format!(
        "data:text/html,<form method=post action='{}'><input name=csrf value='{token}'>\
         <button type=submit>go</button></form>",
        s.url("/logout")
    );
    b.visit(&evil, "evil-page").await;
    b.click_button("go").await;
    b.shot("evil-post").await;
    assert_eq!(
        ws.int("SELECT count(*) FROM sessions"),
        1,
        "still logged in"
    );
    b.visit(&s.url("/"), "still-logged-in").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");
    b.close().await;
}

/// The checks themselves, without the browser's SameSite help: the session
/// cookie with a wrong token, a foreign Origin or a cross-site fetch is 403.
#[test]
fn csrf_token_and_origin_are_both_checked() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let c = s.client();
    let sid = {
        // Log in over HTTP to get a cookie of our own.
        let r = c
            .post(s.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("email", "staff@shop.example"),
                ("password", pw.as_str()),
            ]))
            .send()
            .unwrap();
        assert_eq!(r.status(), 303);
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Strict"),
            "{set}"
        );
        set.split(';').next().unwrap().to_owned()
    };
    let home = c
        .get(s.url("/"))
        .header("cookie", &sid)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let token = home
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    let r = c
        .post(s.url("/logout"))
        .header("cookie", &sid)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", "wrong")]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(s.url("/logout"))
        .header("cookie", &sid)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", token.as_str())]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(s.url("/logout"))
        .header("cookie", &sid)
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", token.as_str())]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        ws.int("SELECT count(*) FROM sessions"),
        1,
        "nothing logged out"
    );
    let r = c
        .post(s.url("/logout"))
        .header("cookie", &sid)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", token.as_str())]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "the real form's POST works");
    assert_eq!(ws.int("SELECT count(*) FROM sessions"), 0);
}

/// Log in over HTTP (no browser): the `name=value` session cookie.
fn http_login(s: &Serve, email: &str, password: &str) -> String {
    let r = s
        .client()
        .post(s.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("email", email), ("password", password)]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "login of {email}");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token of the page at `path` for session `sid`.
fn csrf_of(s: &Serve, sid: &str, path: &str) -> String {
    let page = s
        .client()
        .get(s.url(path))
        .header("cookie", sid)
        .send()
        .unwrap()
        .text()
        .unwrap();
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("no csrf in {path}: {page}"))
        .to_owned()
}

/// While the batch holds the database's write lock (a file's credit
/// transaction), pages still answer at once (they read through the pool;
/// the session's expiry is not rewritten on every page), and a write
/// (logout) waits for the lock instead of failing with SQLITE_BUSY.
#[test]
fn pages_answer_while_the_batch_holds_the_write_lock_and_writes_wait() {
    let (ws, s, _pin) = site_with(
        |ws| ws.scheduled_partner("shop", "daily 03:00"),
        |ws| {
            ws.members(3);
            ws.write("inbox/shop/x.csv", "M000001,K1,500\r\n");
            ws.ok(&["once"]);
        },
    );
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let sid = http_login(&s, "staff@shop.example", &pw);
    let token = csrf_of(&s, &sid, "/");
    let lock = ws.db();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let c = s.client();
    for path in ["/", "/files", "/history?key=K1"] {
        let started = std::time::Instant::now();
        let r = c
            .get(s.url(path))
            .header("cookie", &sid)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .unwrap_or_else(|e| panic!("{path} did not answer under the write lock: {e}"));
        assert_eq!(r.status(), 200, "{path}");
        let body = r.text().unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{path} took {:?}",
            started.elapsed()
        );
        if path == "/files" {
            assert!(body.contains("x.csv"), "{body}");
        }
    }
    // A write waits for the lock, then succeeds.
    let logout = {
        let c = s.client();
        let url = s.url("/logout");
        let sid = sid.clone();
        std::thread::spawn(move || {
            c.post(url)
                .header("cookie", &sid)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[("csrf", token.as_str())]))
                .send()
                .unwrap()
                .status()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!logout.is_finished(), "the logout waits for the write lock");
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(logout.join().unwrap(), 303);
    assert_eq!(ws.int("SELECT count(*) FROM sessions"), 0);
}

/// `application/x-www-form-urlencoded` (reqwest's `form` feature is off).
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_dashboard_shows_a_failed_partner_in_red_and_member_lookup() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                format!(
                    "{}{}",
                    ws.scheduled_partner("shop", "daily 03:00"),
                    // Its inbox does not exist: every run fails.
                    local_partner("broken", "inbox/missing", "")
                )
            },
            |ws| {
                ws.members(10);
                ws.write(
                    "inbox/shop/x.csv",
                    "M000001,K1,500\r\nm2@example.jp,K2,40\r\n",
                );
                let out = ws.run(&["once"]);
                assert_eq!(out.status.code(), Some(1), "broken fails");
            },
        )
    })
    .await
    .unwrap();
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let partner_pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);

    let mut b = Browser::start("ops", Some(&pin)).await;
    // A partner user does not see the ops pages: 404, as for a missing page.
    log_in(
        &mut b,
        &s,
        "staff@shop.example",
        &partner_pw,
        "partner-logged-in",
    )
    .await;
    for path in ["/ops", "/ops/members?q=M000001", "/ops/audit"] {
        b.visit(&s.url(path), "partner-ops").await;
        let t = b.text().await;
        assert!(t.contains("404") && !t.contains("M000001"), "{path}: {t}");
    }
    b.visit(&s.url("/"), "partner-home").await;
    b.click_button("ログアウト").await;

    log_in(&mut b, &s, "ops@example.jp", &ops_pw, "ops-logged-in").await;
    b.visit(&s.url("/ops"), "dashboard").await;
    let light = |id: &'static str| {
        let c = b.client.clone();
        async move {
            c.find(fantoccini::Locator::Css(&format!("tr[data-partner={id}]")))
                .await
                .unwrap()
                .attr("data-light")
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(light("broken").await, "red");
    assert_eq!(light("shop").await, "green");
    // Red is red on the screen too, not only in an attribute.
    let color = b
        .client
        .find(fantoccini::Locator::Css("tr[data-partner=broken] .light"))
        .await
        .unwrap()
        .css_value("color")
        .await
        .unwrap();
    assert!(
        color.starts_with("rgb") && color.contains("180, 35, 24"),
        "{color}"
    );
    assert!(b.text().await.contains("失敗中"));

    // Member lookup by e-mail: balance and the ledger rows.
    b.visit(&s.url("/ops/members"), "member-form").await;
    b.fill_labelled("会員IDまたはメールアドレス", "m1@example.jp")
        .await;
    b.click_button("検索").await;
    b.shot("member-found").await;
    let t = b.text().await;
    assert!(
        t.contains("会員 M000001") && t.contains("500") && t.contains("K1"),
        "{t}"
    );
    assert!(!t.contains("K2"), "another member's row: {t}");
    b.fill_labelled("会員IDまたはメールアドレス", "nobody@example.jp")
        .await;
    b.click_button("検索").await;
    b.shot("member-missing").await;
    assert!(b.text().await.contains("該当する会員はいません"));

    // The audit log shows logins and the look-up (by member ID, not e-mail).
    b.visit(&s.url("/ops/audit"), "audit").await;
    let t = b.text().await;
    assert!(
        t.contains("ログイン") && t.contains("会員検索") && t.contains("member M000001"),
        "{t}"
    );
    assert!(
        !t.contains("m1@example.jp"),
        "no member e-mail in the audit log"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_page_error_download_is_byte_exact_and_other_partners_files_are_404() {
    // A CP932 file with one good row and one unknown member ("未登録" in
    // CP932), and another partner's file.
    let mut shop_file = b"M000001,K1,500\r\n".to_vec();
    let (bad, _, _) = encoding_rs::SHIFT_JIS.encode("未登録,K2,40\r\n");
    shop_file.extend_from_slice(&bad);
    let (ws, s, pin) = tokio::task::spawn_blocking(move || {
        site_with(
            |ws| {
                std::fs::create_dir_all(ws.inbox("shop")).unwrap();
                std::fs::create_dir_all(ws.inbox("other")).unwrap();
                format!(
                    "{}{}",
                    local_partner(
                        "shop",
                        "inbox/shop",
                        "encoding = \"shift_jis\"\nmax_error_ratio = 0.9"
                    ),
                    local_partner("other", "inbox/other", "max_error_ratio = 0.9")
                )
            },
            move |ws| {
                ws.members(10);
                ws.write("inbox/shop/交換.csv", &shop_file);
                ws.write("inbox/other/o.csv", "M000002,O1,7\r\nnobody,O2,1\r\n");
                ws.ok(&["once"]);
            },
        )
    })
    .await
    .unwrap();
    let shop_id = ws.int("SELECT id FROM files WHERE partner = 'shop'");
    let other_id = ws.int("SELECT id FROM files WHERE partner = 'other'");
    let report: String = ws
        .db()
        .query_row(
            "SELECT report_path FROM files WHERE id = ?1",
            [shop_id],
            |r| r.get(0),
        )
        .unwrap();
    let expected = std::fs::read(&report).unwrap();
    assert!(
        expected
            .windows(bad.len() - 2)
            .any(|w| w == &bad[..bad.len() - 2]),
        "the failed row's CP932 bytes are in the report"
    );
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let mut b = Browser::start("files", Some(&pin)).await;
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    b.client
        .find(fantoccini::Locator::LinkText("ファイル一覧"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("files").await;
    let t = b.text().await;
    assert!(
        t.contains("交換.csv") && t.contains("積算済み") && t.contains("500"),
        "{t}"
    );
    assert!(
        !t.contains("o.csv"),
        "another partner's file is listed: {t}"
    );
    // Asking for the other partner's list still shows only our own.
    b.visit(&s.url("/files?partner=other"), "files-other-query")
        .await;
    assert!(!b.text().await.contains("o.csv"));

    // The error file, downloaded by the browser, byte for byte.
    b.visit(&s.url("/files"), "files-again").await;
    b.client
        .find(fantoccini::Locator::LinkText("ダウンロード"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let downloaded = b.downloaded("csv").await;
    assert_eq!(
        downloaded.file_name().unwrap().to_str().unwrap(),
        std::path::Path::new(&report)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        "the file name"
    );
    assert_eq!(
        std::fs::read(&downloaded).unwrap(),
        expected,
        "byte for byte"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'download' AND partner = 'shop' AND client = '127.0.0.1'"),
        1
    );

    // Partner B's file id in partner A's session: 404, like a missing id.
    b.visit(
        &s.url(&format!("/files/{other_id}/errors")),
        "other-partner-file",
    )
    .await;
    let t = b.text().await;
    assert!(t.contains("404") && !t.contains("O2"), "{t}");
    assert!(t.contains("ログアウト"), "the 404 page has the menu: {t}");
    b.visit(&s.url("/files/999999/errors"), "missing-file")
        .await;
    assert!(b.text().await.contains("404"));
    // A path no route takes: the HTML 404 with the menu, for a browser.
    b.visit(&s.url("/no-such-page"), "no-such-page").await;
    let t = b.text().await;
    assert!(
        t.contains("ページが見つかりません") && t.contains("ファイル一覧"),
        "{t}"
    );
    b.close().await;
}

/// Click the history page's CSV link and read the download as Excel
/// would (then removed, so the next export is the next download).
async fn export_csv(b: &Browser) -> String {
    as_excel_reads(&download_bytes(b, "a[href^='/history.csv']").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_search_by_key_prefix_and_dates_pages_and_exports_csv() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| ws.scheduled_partner("shop", "daily 03:00"),
            |ws| {
                ws.members(10);
                let mut f = String::new();
                for i in 0..150 {
                    f.push_str(&format!("M{:06},K1{i:04},{}\r\n", i % 10, i + 1));
                }
                f.push_str("M000001,K2,9\r\n");
                ws.write("inbox/shop/h.csv", f);
                ws.ok(&["once"]);
                // An API exchange: file_id 0, line = dup = its id.
                ws.db()
                    .execute(
                        "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at) \
                         SELECT 'shop', 'K1API', 0, id, 77, 5, 5, unixepoch() FROM members WHERE member_id = 'M000003'",
                        [],
                    )
                    .unwrap();
                // A partner key a spreadsheet would take for a formula.
                ws.db()
                    .execute(
                        "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at) \
                         SELECT 'shop', '=1+1', 0, id, 8, 6, 6, unixepoch() FROM members WHERE member_id = 'M000004'",
                        [],
                    )
                    .unwrap();
            },
        )
    })
    .await
    .unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let mut b = Browser::start("history", Some(&pin)).await;
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    b.visit(&s.url("/history"), "form").await;
    b.fill_labelled("指定キー", "K1").await;
    b.client
        .find(fantoccini::Locator::Id("mode"))
        .await
        .unwrap()
        .select_by_value("prefix")
        .await
        .unwrap();
    b.click_button("検索").await;
    b.shot("prefix-page-1").await;
    let t = b.text().await;
    assert!(t.contains("151 件") && t.contains("1 / 2 ページ"), "{t}");
    assert!(!t.contains("K2 "), "K2 is not under the prefix K1: {t}");
    let rows = b
        .client
        .find_all(fantoccini::Locator::Css("tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    b.client
        .find(fantoccini::Locator::LinkText("次へ"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("prefix-page-2").await;
    let rows = b
        .client
        .find_all(fantoccini::Locator::Css("tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 51);
    // The API credit is found with the file credits, as channel `api`.
    let t = b.text().await;
    assert!(t.contains("K1API") && t.contains("API"), "{t}");

    // The CSV export of the whole search.
    let csv = export_csv(&b).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "積算日時,指定キー,会員ID,マイル,経路,ファイル,行");
    assert_eq!(lines.len(), 152, "header + 151 rows");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("K10005,M000005,6,取得,h.csv,6")),
        "{csv}"
    );
    assert!(
        lines.iter().any(|l| l.contains("K1API,M000003,77,API,,5")),
        "{csv}"
    );
    // A key that starts like a formula is exported as text (a leading `'`),
    // so a spreadsheet shows it and does not run it.
    b.visit(&s.url("/history?key=%3D1%2B1"), "formula-key")
        .await;
    assert!(b.text().await.contains("=1+1"));
    let csv = export_csv(&b).await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].ends_with(",'=1+1,M000004,8,API,,6"), "{csv}");

    // Exact key; and a date range that excludes today.
    b.visit(&s.url("/history?key=K10005"), "exact").await;
    let t = b.text().await;
    assert!(t.contains("1 件") && t.contains("M000005"), "{t}");
    b.visit(
        &s.url("/history?key=K10005&from=2000-01-01&to=2000-01-31"),
        "old-range",
    )
    .await;
    assert!(b.text().await.contains("0 件"));
    // Another partner's history is not reachable by editing the URL.
    b.visit(
        &s.url("/history?partner=other&key=K1&mode=prefix"),
        "other-partner",
    )
    .await;
    assert!(b.text().await.contains("151 件"), "still our own partner");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_page_creates_a_key_shown_once_and_revokes_after_confirmation() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                format!(
                    "{}\n[partner.api]\nenabled = true\ndaily_miles_limit = 1000\n{}",
                    ws.scheduled_partner("shop", "daily 03:00"),
                    ws.scheduled_partner("other", "daily 03:00")
                )
            },
            |_| {},
        )
    })
    .await
    .unwrap();
    let other = ws.ok(&[
        "api-key",
        "create",
        "--partner",
        "other",
        "--label",
        "theirs",
        "--json",
    ]);
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    let other_prefix = other["prefix"].as_str().unwrap().to_owned();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let mut b = Browser::start("keys", Some(&pin)).await;
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    b.client
        .find(fantoccini::Locator::LinkText("API キー"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("keys-empty").await;
    let t = b.text().await;
    assert!(
        t.contains("キーはまだありません") && !t.contains(&other_prefix),
        "{t}"
    );

    // Create: the key is on the result page, once.
    b.fill_labelled("名前（用途）", "POS 本番").await;
    b.click_button("キーを作成").await;
    b.shot("key-created").await;
    let key = b.text_at("#new-key").await;
    assert!(key.starts_with("mbk_") && key.len() == 44, "{key}");
    let prefix = key[..12].to_owned();
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM api_keys WHERE partner = 'shop' AND prefix = '{prefix}' AND label = 'POS 本番'"
        )),
        1
    );
    // The key works against the API, and is never shown again.
    let r = tokio::task::block_in_place(|| {
        s.client()
            .post(s.url("/api/v1/exchanges"))
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", "k1")
            .header("content-type", "application/json")
            .body(r#"{"member":"nobody","partner_key":"P1","miles":1}"#)
            .send()
            .unwrap()
    });
    assert_eq!(r.status(), 422, "authenticated (unknown member)");
    b.visit(&s.url("/keys"), "keys-list").await;
    let t = b.text().await;
    assert!(
        t.contains(&prefix) && t.contains("POS 本番") && t.contains("有効"),
        "{t}"
    );
    assert!(!t.contains(&key), "the key is shown only once: {t}");
    let html = b.client.source().await.unwrap();
    assert!(!html.contains(&key[12..]), "not even in the page source");

    // Another partner's prefix: 404 like a missing one, for the
    // confirmation page and for the POST itself.
    b.visit(
        &s.url(&format!("/keys/{other_prefix}/revoke")),
        "other-partner-key",
    )
    .await;
    assert!(b.text().await.contains("404"));
    b.visit(&s.url("/keys/mbk_00000000/revoke"), "missing-key")
        .await;
    assert!(b.text().await.contains("404"));
    let (sid, token) = tokio::task::block_in_place(|| {
        let sid = http_login(&s, "staff@shop.example", &pw);
        let token = csrf_of(&s, &sid, "/keys");
        (sid, token)
    });
    let r = tokio::task::block_in_place(|| {
        s.client()
            .post(s.url(&format!("/keys/{other_prefix}/revoke")))
            .header("cookie", &sid)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", token.as_str())]))
            .send()
            .unwrap()
    });
    assert_eq!(r.status(), 404);
    // Without the CSRF token: refused, nothing revoked.
    let r = tokio::task::block_in_place(|| {
        s.client()
            .post(s.url(&format!("/keys/{prefix}/revoke")))
            .header("cookie", &sid)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", "wrong")]))
            .send()
            .unwrap()
    });
    assert_eq!(r.status(), 403);
    assert_eq!(
        ws.int("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL"),
        0
    );

    // Revoke: a confirmation page first, then the key is refused by the API.
    b.visit(&s.url("/keys"), "keys-before-revoke").await;
    b.client
        .find(fantoccini::Locator::LinkText("失効させる"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("revoke-confirm").await;
    assert!(b.text().await.contains("元に戻すことはできません"));
    assert_eq!(
        ws.int("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL"),
        0
    );
    b.click_button("失効させる").await;
    let t = b.text().await;
    b.shot("revoked").await;
    assert!(
        t.contains("失効させました") && t.contains("失効済み"),
        "{t}"
    );
    let r = tokio::task::block_in_place(|| {
        s.client()
            .post(s.url("/api/v1/exchanges"))
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", "k2")
            .header("content-type", "application/json")
            .body(r#"{"member":"nobody","partner_key":"P2","miles":1}"#)
            .send()
            .unwrap()
    });
    assert_eq!(r.status(), 401);
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM audit WHERE actor = 'user:staff@shop.example' AND client = '127.0.0.1' \
             AND ((action = 'api-key-create' AND detail LIKE 'key {prefix}%') OR (action = 'api-key-revoke' AND detail = 'key {prefix}'))"
        )),
        2
    );
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM audit WHERE detail LIKE '%{}%'",
            &key[12..]
        )),
        0,
        "the key is never in the audit trail"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM api_keys WHERE partner = 'other' AND revoked_at IS NULL"),
        1,
        "the other partner's key is untouched"
    );
    b.click_button("ログアウト").await;

    // Ops have no key page (they use `milebatch api-key`).
    log_in(&mut b, &s, "ops@example.jp", &ops_pw, "ops-logged-in").await;
    b.visit(&s.url("/keys"), "ops-keys").await;
    assert!(b.text().await.contains("404"));
    b.close().await;
}

/// The attribute `attr` of the first element matching `css`.
async fn attr_of(b: &Browser, css: &str, attr: &str) -> String {
    b.client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .attr(attr)
        .await
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_is_queued_by_the_site_and_run_by_the_real_daemon() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| ws.scheduled_partner("shop", "daily 03:00"),
            |ws| {
                ws.members(5);
                ws.write("inbox/shop/now.csv", "M000001,N1,300\r\nM000002,N2,20\r\n");
            },
        )
    })
    .await
    .unwrap();
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let partner_pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);

    // A partner user cannot ask for a run: 404.
    tokio::task::block_in_place(|| {
        let sid = http_login(&s, "staff@shop.example", &partner_pw);
        let token = csrf_of(&s, &sid, "/");
        let r = s
            .client()
            .post(s.url("/ops/partners/shop/run"))
            .header("cookie", &sid)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", token.as_str())]))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
    });
    assert_eq!(ws.int("SELECT count(*) FROM run_requests"), 0);

    let mut b = Browser::start("run-now", Some(&pin)).await;
    log_in(&mut b, &s, "ops@example.jp", &ops_pw, "ops-logged-in").await;
    b.visit(&s.url("/files?partner=shop"), "partner-files")
        .await;
    b.click_button("今すぐ実行").await;
    b.shot("queued").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/files");
    assert_eq!(
        attr_of(&b, "tr[data-request]", "data-state").await,
        "queued"
    );
    assert!(b.text().await.contains("待機中"));
    // Asking again while it is open does not queue a second run.
    b.click_button("今すぐ実行").await;
    assert_eq!(ws.int("SELECT count(*) FROM run_requests"), 1);
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'run-now' AND partner = 'shop' AND actor = 'user:ops@example.jp'"),
        1
    );
    let status = ws.ok(&["status"]);
    assert!(
        status.contains("run now   request 1 by user:ops@example.jp"),
        "{status}"
    );
    assert!(status.contains("queued"), "{status}");

    // No daemon: after a minute the page says nobody is picking it up.
    ws.db()
        .execute(
            "UPDATE run_requests SET requested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 minutes')",
            [],
        )
        .unwrap();
    b.visit(&s.url("/files?partner=shop"), "stale").await;
    let t = b.text().await;
    assert!(t.contains("デーモンがこの要求を受け付けていません"), "{t}");
    assert_eq!(ws.int("SELECT count(*) FROM files"), 0, "nothing ran");

    // The daemon starts, picks the request up and runs the partner.
    let daemon = ws.spawn_daemon(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        b.visit(&s.url("/files?partner=shop"), "waiting").await;
        if attr_of(&b, "tr[data-request]", "data-state").await == "done" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request was not run:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    b.shot("done").await;
    let t = b.text().await;
    assert!(
        t.contains("完了: 成功（ok）") && t.contains("now.csv") && t.contains("積算済み"),
        "{t}"
    );
    assert!(!t.contains("受け付けていません"), "{t}");
    assert_eq!(
        ws.int(
            "SELECT count(*) FROM run_requests r JOIN runs ON runs.id = r.run_id \
                WHERE runs.trigger = 'run-now' AND runs.partner = 'shop' AND r.outcome = 'ok' \
                AND r.started_at IS NOT NULL AND r.finished_at IS NOT NULL"
        ),
        1
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM files WHERE outcome = 'credited'"),
        1
    );
    assert_eq!(ws.balance("M000001"), 300);
    let status = ws.ok(&["status"]);
    assert!(!status.contains("run now"), "nothing pending: {status}");
    assert!(status.contains("[run-now] ok"), "{status}");
    b.close().await;
}

/// The first `.csv` the browser downloads (at most 20 s).
async fn downloaded_csv(b: &Browser) -> Vec<u8> {
    std::fs::read(b.downloaded("csv").await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_reverse_a_file_after_confirmation_and_statements_download() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                format!(
                    "{}{}",
                    ws.scheduled_partner("shop", "daily 03:00"),
                    ws.scheduled_partner("other", "daily 03:00")
                )
            },
            |ws| {
                ws.members(5);
                ws.write(
                    "inbox/shop/wrong.csv",
                    "M000001,W1,500\r\nM000002,W2,40\r\n",
                );
                ws.write("inbox/other/o.csv", "M000003,O1,7\r\n");
                // A header line only: refused, F003.
                ws.write("inbox/other/p.csv", "member,key,miles\r\n");
                let out = ws.run(&["once"]);
                assert_eq!(out.status.code(), Some(1), "{out:?}");
            },
        )
    })
    .await
    .unwrap();
    let file = ws.int("SELECT id FROM files WHERE partner = 'shop'");
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m")
        .to_string();
    let ops_pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let partner_pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    // M000002 has spent 30 of its 40 miles elsewhere.
    ws.db()
        .execute(
            "UPDATE balances SET miles = 10 WHERE member = (SELECT id FROM members WHERE member_id = 'M000002')",
            [],
        )
        .unwrap();

    // Partner users never reach the reverse pages.
    tokio::task::block_in_place(|| {
        let sid = http_login(&s, "staff@shop.example", &partner_pw);
        let token = csrf_of(&s, &sid, "/");
        let c = s.client();
        let r = c
            .get(s.url(&format!("/ops/files/{file}/reverse")))
            .header("cookie", &sid)
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = c
            .post(s.url(&format!("/ops/files/{file}/reverse")))
            .header("cookie", &sid)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("csrf", token.as_str()), ("reason", "mine")]))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
    });

    let mut b = Browser::start("money", Some(&pin)).await;
    log_in(&mut b, &s, "ops@example.jp", &ops_pw, "ops-logged-in").await;
    b.visit(&s.url("/files?partner=shop"), "partner-files")
        .await;
    b.client
        .find(fantoccini::Locator::LinkText("取り消す"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.shot("confirm").await;
    let t = b.text().await;
    assert!(
        t.contains("wrong.csv") && t.contains("540") && t.contains("理由"),
        "{t}"
    );
    assert_eq!(
        ws.int("SELECT count(*) FROM reversals"),
        0,
        "nothing before the confirmation"
    );
    b.fill_labelled("理由（必須・記録に残ります）", "誤送信（パートナー依頼）")
        .await;
    b.click_button("取り消しを実行").await;
    let t = b.text().await;
    b.shot("shortfall").await;
    assert!(
        t.contains("取り消しできません")
            && t.contains("M000002")
            && t.contains("何も変更していません"),
        "{t}"
    );
    let short = b
        .client
        .find(fantoccini::Locator::Css("tr[data-member=M000002] td.red"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(short, "30");
    assert!(!t.contains("M000001"), "only members short are named: {t}");
    assert_eq!(ws.int("SELECT count(*) FROM reversals"), 0);
    assert_eq!(ws.balance("M000001"), 500, "nothing changed");

    // The miles come back (a refund elsewhere): the reversal goes through.
    ws.db()
        .execute(
            "UPDATE balances SET miles = 40 WHERE member = (SELECT id FROM members WHERE member_id = 'M000002')",
            [],
        )
        .unwrap();
    b.visit(
        &s.url(&format!("/ops/files/{file}/reverse")),
        "confirm-again",
    )
    .await;
    b.fill_labelled("理由（必須・記録に残ります）", "誤送信（パートナー依頼）")
        .await;
    b.click_button("取り消しを実行").await;
    let t = b.text().await;
    b.shot("reversed").await;
    assert!(
        t.contains("取り消しました") && t.contains("540 マイル"),
        "{t}"
    );
    assert_eq!(ws.balance("M000001"), 0);
    assert_eq!(ws.balance("M000002"), 0);
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM reversals WHERE file_id = {file} AND actor = 'user:ops@example.jp' AND reason = '誤送信（パートナー依頼）'"
        )),
        1
    );
    assert_eq!(
        ws.int(
            "SELECT count(*) FROM audit WHERE action = 'reverse' AND actor = 'user:ops@example.jp' AND client = '127.0.0.1'"
        ),
        1
    );
    ws.assert_balances_match_ledger();
    let verify = ws.run(&["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    b.visit(&s.url("/files?partner=shop"), "files-after").await;
    let t = b.text().await;
    assert!(
        t.contains("取り消し済み")
            && t.contains("取り消し番号 1（")
            && t.contains("JST、user:ops@example.jp）: 誤送信（パートナー依頼）"),
        "{t}"
    );

    // A refused file shows its code and what it means.
    b.visit(&s.url("/files?partner=other"), "other-files").await;
    let t = b.text().await;
    assert!(
        t.contains("F003 データ行がありません") && t.contains("p.csv"),
        "{t}"
    );

    // Ops: another partner's statement, equal to the CLI's.
    // The site's file for Excel is the CLI's `--header ja`.
    let cli_other = ws
        .run(&[
            "statement",
            "--partner",
            "other",
            "--month",
            &month,
            "--csv",
            "--header",
            "ja",
        ])
        .stdout;
    let web_other = tokio::task::block_in_place(|| {
        let sid = http_login(&s, "ops@example.jp", &ops_pw);
        let r = s
            .client()
            .get(s.url(&format!("/statement.csv?partner=other&month={month}")))
            .header("cookie", &sid)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap().to_vec()
    });
    assert_eq!(web_other, cli_other);
    b.click_button("ログアウト").await;

    // A partner user downloads its own statement from the files page:
    // the reversal is in it, and it equals the CLI's byte for byte.
    log_in(
        &mut b,
        &s,
        "staff@shop.example",
        &partner_pw,
        "partner-logged-in",
    )
    .await;
    b.visit(&s.url("/files"), "partner-files").await;
    b.click_button("明細を CSV でダウンロード").await;
    let csv = downloaded_csv(&b).await;
    let cli = ws.run(&[
        "statement",
        "--partner",
        "shop",
        "--month",
        &month,
        "--csv",
        "--header",
        "ja",
    ]);
    // The partner's copy names no person for the reversal.
    let cli = String::from_utf8(cli.stdout)
        .unwrap()
        .replace("user:ops@example.jp", "運用担当");
    assert_eq!(String::from_utf8(csv).unwrap(), cli);
    assert!(
        cli.contains("差引合計") && cli.contains("運用担当"),
        "{cli}"
    );
    // Another partner's statement: 404.
    b.visit(
        &s.url(&format!("/statement.csv?partner=other&month={month}")),
        "other-statement",
    )
    .await;
    assert!(b.text().await.contains("404"));
    b.visit(&s.url("/statement.csv?month=2026-13"), "bad-month")
        .await;
    assert!(b.text().await.contains("YYYY-MM"));
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'statement-download' AND client = '127.0.0.1'"),
        2
    );
    b.close().await;
}

/// The ops dashboard's next run is the daemon's: a Saturday run with
/// `on_holiday = "next"` shows on the next business day, saying why.
#[test]
fn ops_dashboard_next_run_follows_business_days() {
    let (ws, s, _pin) = site_with(
        |ws| {
            ws.scheduled_partner("shop", "weekly sat 03:00").replace(
                "[partner.source]",
                "on_holiday = \"next\"\n[partner.source]",
            )
        },
        |_| {},
    );
    let pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let sid = http_login(&s, "ops@example.jp", &pw);
    let r = s
        .client()
        .get(s.url("/ops"))
        .header("cookie", sid)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().unwrap();
    assert!(
        body.contains("(moved from ") && body.contains(": 土曜日)"),
        "{body}"
    );
}
/// The `name=value` session cookie of a login, and the login's answer.
fn login_answer(s: &Serve, email: &str, password: &str, next: &str) -> reqwest::blocking::Response {
    s.client()
        .post(s.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("email", email),
            ("password", password),
            ("next", next),
        ]))
        .send()
        .unwrap()
}

/// Issue 22: a POST that lacks the `csrf` field (or is no form at all) is
/// the documented 403 page, not axum's 422 text; and every HTTPS answer
/// (pages, static files, the API, probes, errors) carries HSTS.
#[test]
fn every_csrf_failure_is_the_403_page_and_https_answers_carry_hsts() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let sid = http_login(&s, "staff@shop.example", &pw);
    let c = s.client();
    for (path, body, ctype) in [
        ("/logout", "", "application/x-www-form-urlencoded"),
        ("/keys", "label=POS", "application/x-www-form-urlencoded"),
        ("/logout", "csrf=x", "text/plain"),
    ] {
        let r = c
            .post(s.url(path))
            .header("cookie", &sid)
            .header("content-type", ctype)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 403, "{path} {body:?} {ctype}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let text = r.text().unwrap();
        assert!(
            text.contains("このリクエストは受け付けられません") && text.contains("エラー 403"),
            "{path}: {text}"
        );
    }
    assert_eq!(ws.int("SELECT count(*) FROM api_keys"), 0, "no key made");
    assert_eq!(
        ws.int("SELECT count(*) FROM sessions"),
        1,
        "still logged in"
    );
    for path in [
        "/login",
        "/",
        "/static/site.css",
        "/healthz",
        "/api/v1/nothing",
        "/no-such-page",
    ] {
        let r = c.get(s.url(path)).header("cookie", &sid).send().unwrap();
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("max-age=31536000".to_owned()),
            "{path} ({})",
            r.status()
        );
    }
}

/// Issue 22: a page asked for before the login is where the login goes
/// (never to another host); every failed login, a locked account's too,
/// shows the same neutral hint.
#[test]
fn login_returns_to_the_page_first_asked_for_and_every_failure_has_the_same_hint() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let c = s.client();
    let r = c.get(s.url("/history?key=K1&mode=exact")).send().unwrap();
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(to, "/login?next=%2Fhistory%3Fkey%3DK1%26mode%3Dexact");
    let page = c.get(s.url(&to)).send().unwrap().text().unwrap();
    assert!(
        page.contains(r#"name="next" value="&#x2f;history?key=K1&amp;mode=exact""#),
        "{page}"
    );
    let r = login_answer(&s, "staff@shop.example", &pw, "/history?key=K1&mode=exact");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/history?key=K1&mode=exact");
    for evil in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let r = login_answer(&s, "staff@shop.example", &pw, evil);
        assert_eq!(r.headers()["location"], "/", "{evil}");
    }
    // Locked: the wrong password five times, then the right one.
    let hint = "何度も失敗した場合は、しばらく時間をおいてからもう一度お試しください。";
    let failed = |email: &str, password: &str| {
        let r = login_answer(&s, email, password, "");
        assert_eq!(r.status(), 401);
        r.text().unwrap().replace(email, "EMAIL")
    };
    let unknown = failed("nobody@shop.example", "whatever-it-is");
    assert!(
        unknown.contains(hint) && unknown.contains(GENERIC),
        "{unknown}"
    );
    for _ in 0..5 {
        failed("staff@shop.example", "wrong-password");
    }
    let locked = failed("staff@shop.example", &pw);
    assert_eq!(locked, unknown, "a locked account reads like any failure");
}

/// Issue 22: `user enable` undoes `user disable`; `user list` says which.
#[test]
fn a_disabled_user_is_enabled_again_and_user_list_shows_the_state() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    ws.ok(&["user", "disable", "staff@shop.example"]);
    let r = login_answer(&s, "staff@shop.example", &pw, "");
    assert_eq!(r.status(), 401);
    let list = ws.ok(&["user", "list"]);
    assert!(list.contains("disabled"), "{list}");
    let out = ws.ok(&["user", "enable", "staff@shop.example"]);
    assert!(out.contains("enabled staff@shop.example"), "{out}");
    let list = ws.ok(&["user", "list"]);
    let line = list.lines().find(|l| l.contains("staff@")).unwrap();
    assert!(line.contains("active"), "{list}");
    http_login(&s, "staff@shop.example", &pw);
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'user-enable'"),
        1
    );
    let out = ws.run(&["user", "enable", "nobody@shop.example"]);
    assert!(!out.status.success());
}

/// Issue 22: what a clerk reads: the partner's name with its id, numbers
/// with 桁区切り, channels and outcomes in Japanese, a reversal that names
/// no person to the partner; ops reach ファイル一覧 through a picker.
#[test]
fn pages_speak_japanese_with_partner_names_and_grouped_digits() {
    let (ws, s, _pin) = site_with(
        |ws| {
            ws.scheduled_partner("shop", "daily 03:00").replacen(
                "id = \"shop\"\n",
                "id = \"shop\"\nname = \"ACME ストア\"\n",
                1,
            )
        },
        |ws| {
            ws.members(3);
            ws.write(
                "inbox/shop/a.csv",
                "M000001,K1,45000\r\nM000002,K2,5175\r\n",
            );
            ws.ok(&["once"]);
            ws.write("inbox/shop/b.csv", "M000001,K3,1200\r\n");
            ws.ok(&["once"]);
        },
    );
    let b_id = ws.int("SELECT id FROM files WHERE name = 'b.csv'");
    ws.ok(&["reverse", "--file", &b_id.to_string(), "--reason", "誤送信"]);
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let ops_pw = add_user(&ws, "ops@op.example", &["--ops"]);
    let sid = http_login(&s, "staff@shop.example", &pw);
    let get = |sid: &str, path: &str| {
        let r = s
            .client()
            .get(s.url(path))
            .header("cookie", sid)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().unwrap()
    };
    let home = get(&sid, "/");
    assert!(home.contains("ACME ストア（shop）"), "{home}");
    let files = get(&sid, "/files");
    assert!(
        files.contains("ファイル一覧 — ACME ストア（shop）"),
        "{files}"
    );
    assert!(files.contains(">50,175<"), "miles grouped: {files}");
    assert!(files.contains(">1,200<"), "{files}");
    assert!(files.contains("取得"), "{files}");
    assert!(files.contains("運用担当"), "{files}");
    assert!(
        !files.contains("cli:"),
        "no person named to the partner: {files}"
    );
    let history = get(&sid, "/history?key=K&mode=prefix");
    assert!(history.contains(">45,000<"), "{history}");
    assert!(!history.contains(">pull<"), "{history}");
    let ops = http_login(&s, "ops@op.example", &ops_pw);
    let picker = get(&ops, "/files");
    assert!(
        picker.contains(r#"<option value="shop">ACME ストア（shop）</option>"#),
        "{picker}"
    );
    assert!(
        picker.contains(r#"<a href="/files">ファイル一覧</a>"#),
        "in the menu"
    );
    let ops_files = get(&ops, "/files?partner=shop");
    assert!(
        ops_files.contains("cli:"),
        "ops see who reversed: {ops_files}"
    );
    let r = s
        .client()
        .get(s.url("/files?partner=nope"))
        .header("cookie", &ops)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let dash = get(&ops, "/ops");
    assert!(dash.contains("ACME ストア（shop）"), "{dash}");
    assert!(
        dash.contains("成功") && !dash.contains("<td class=\"nowrap\">ok</td>"),
        "{dash}"
    );
    let member = get(&ops, "/ops/members?q=M000001");
    assert!(
        member.contains("有効") && member.contains("取得"),
        "{member}"
    );
    assert!(!member.contains(">active<"), "{member}");
    let audit = get(&ops, "/ops/audit");
    assert!(
        audit.contains("会員検索") && audit.contains("ログイン"),
        "{audit}"
    );
}

/// `sjis`, サンプル商店: a Shift_JIS shop, daily.
fn sjis_partner(ws: &Workspace) -> String {
    ws.scheduled_partner("sjis", "daily 03:00").replacen(
        "id = \"sjis\"\n",
        "id = \"sjis\"\nname = \"サンプル商店\"\nencoding = \"shift_jis\"\n",
        1,
    )
}

/// A CSV as Japanese Excel opens it by double-click: UTF-8 when it starts
/// with the BOM, else CP932.
fn as_excel_reads(bytes: &[u8]) -> String {
    match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => String::from_utf8(rest.to_vec()).expect("UTF-8 after the BOM"),
        None => {
            let (text, _, bad) = encoding_rs::SHIFT_JIS.decode(bytes);
            assert!(!bad, "not CP932: {bytes:?}");
            text.into_owned()
        }
    }
}

/// Issue 22: the history lists a date range without a key (paged, and
/// exported); an empty search or a bad date keeps the form; the exports
/// open in Japanese Excel (CP932 for a Shift_JIS shop, UTF-8 with a BOM
/// for a UTF-8 one) with Japanese headers and times with the offset;
/// `lang=en` keeps the form for scripts.
#[test]
fn history_by_dates_and_exports_that_open_in_japanese_excel() {
    let (ws, s, _pin) = site_with(
        |ws| {
            format!(
                "{}{}",
                sjis_partner(ws),
                ws.scheduled_partner("shop", "daily 03:00")
            )
        },
        |ws| {
            ws.members(3);
            ws.write("inbox/sjis/a.csv", "M000001,K1,100\r\nM000002,K2,200\r\n");
            ws.write("inbox/shop/b.csv", "M000001,S1,300\r\n");
            ws.ok(&["once"]);
        },
    );
    let shop_file = ws.int("SELECT id FROM files WHERE partner = 'shop'");
    ws.ok(&[
        "reverse",
        "--file",
        &shop_file.to_string(),
        "--reason",
        "誤り",
    ]);
    let sjis_pw = add_user(&ws, "staff@sjis.example", &["--partner", "sjis"]);
    let shop_pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let sjis = http_login(&s, "staff@sjis.example", &sjis_pw);
    let shop = http_login(&s, "staff@shop.example", &shop_pw);
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m-%d")
        .to_string();
    let get = |sid: &str, path: &str| {
        s.client()
            .get(s.url(path))
            .header("cookie", sid)
            .send()
            .unwrap()
    };
    let page = get(&sjis, &format!("/history?key=&from={today}&to={today}"));
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    assert!(
        page.contains("2 件") && page.contains("K1") && page.contains("K2"),
        "{page}"
    );
    let empty = get(&sjis, "/history?key=&from=&to=");
    assert_eq!(empty.status(), 400);
    let empty = empty.text().unwrap();
    assert!(
        empty.contains("指定キー、または期間（開始日・終了日）を入力してください。"),
        "{empty}"
    );
    assert!(!empty.contains("パートナーと"), "{empty}");
    let bad = get(&sjis, "/history?key=K1&from=2026-13-01");
    assert_eq!(bad.status(), 400);
    let bad = bad.text().unwrap();
    assert!(
        bad.contains("日付「2026-13-01」") && bad.contains(r#"value="K1""#),
        "the form keeps its text: {bad}"
    );
    // The export for Excel: CP932 for the Shift_JIS shop, CRLF.
    let r = get(&sjis, &format!("/history.csv?key=&from={today}&to={today}"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=Shift_JIS");
    let bytes = r.bytes().unwrap().to_vec();
    assert!(!bytes.starts_with(b"\xEF\xBB\xBF"));
    let text = as_excel_reads(&bytes);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "積算日時,指定キー,会員ID,マイル,経路,ファイル,行");
    assert!(lines[1].ends_with(",K1,M000001,100,取得,a.csv,1"), "{text}");
    assert!(
        lines[1].starts_with(&today) && lines[1].contains(" +09:00,"),
        "{text}"
    );
    // For scripts: English, plain UTF-8, RFC 3339 with the offset.
    let en = get(&sjis, "/history.csv?key=K&mode=prefix&lang=en");
    let en = en.text().unwrap();
    assert!(
        en.starts_with("credited_at,partner_key,member_id,miles,channel,file,line\n"),
        "{en}"
    );
    assert!(en.contains("+09:00,K1,M000001,100,pull,a.csv,1\n"), "{en}");
    // The UTF-8 shop's statement: a BOM, Japanese, the reversal in JST
    // with its offset and by 運用担当.
    let month = &today[..7];
    let r = get(&shop, &format!("/statement.csv?month={month}"));
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().unwrap().to_vec();
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "BOM");
    let text = as_excel_reads(&bytes);
    assert!(text.starts_with("区分,項目,詳細,行数,マイル\r\n"), "{text}");
    assert!(text.contains("経路別,取得,,1,300\r\n"), "{text}");
    let reversal = text
        .lines()
        .find(|l| l.starts_with("取り消し,"))
        .expect(&text);
    assert!(
        reversal.contains("運用担当") && reversal.contains(" +09:00: 誤り"),
        "{reversal}"
    );
    assert!(
        !reversal.contains("cli:") && !reversal.contains('Z'),
        "{reversal}"
    );
    // The CLI keeps today's form unless asked.
    let cli = ws.ok(&["statement", "--partner", "shop", "--month", month, "--csv"]);
    assert!(cli.starts_with("section,item,detail,rows,miles\n"), "{cli}");
    let out = ws.run(&[
        "statement",
        "--partner",
        "sjis",
        "--month",
        month,
        "--csv",
        "--header",
        "ja",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = as_excel_reads(&out.stdout);
    assert!(text.starts_with("区分,項目,詳細,行数,マイル\r\n"), "{text}");
}

/// Issue 22: the dashboard says in red when no daemon polls, and shows the
/// last poll once `milebatch run` polls; `/ops/daemon.json` tells monitors
/// the same (503, then 200), without a login.
#[test]
fn dashboard_and_daemon_json_show_whether_the_daemon_polls() {
    let (ws, s, _pin) = site();
    let ops_pw = add_user(&ws, "ops@op.example", &["--ops"]);
    let ops = http_login(&s, "ops@op.example", &ops_pw);
    let c = s.client();
    let daemon_json = || {
        let r = c.get(s.url("/ops/daemon.json")).send().unwrap();
        let code = r.status().as_u16();
        (code, common::serve::json(r))
    };
    let (code, j) = daemon_json();
    assert_eq!(code, 503, "{j}");
    assert_eq!(j["running"], false);
    assert!(j["last_poll"].is_null(), "{j}");
    let dash = |sid: &str| {
        c.get(s.url("/ops"))
            .header("cookie", sid)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let page = dash(&ops);
    assert!(
        page.contains("デーモンが動いていません") && page.contains(r#"class="red""#),
        "{page}"
    );
    let _daemon = ws.spawn_daemon(None);
    common::workspace::wait_for(
        "the daemon's first poll",
        std::time::Duration::from_secs(30),
        || daemon_json().0 == 200,
    );
    let (_, j) = daemon_json();
    assert_eq!(j["running"], true, "{j}");
    assert!(j["seconds_since_poll"].as_i64().unwrap() <= 60, "{j}");
    let page = dash(&ops);
    assert!(page.contains("動いています（最終確認:"), "{page}");
    assert!(!page.contains("デーモンが動いていません"), "{page}");
}

/// Issue 22: the audit log is filtered by action, user, partner and date,
/// and exported as CSV for Excel (BOM, Japanese headers and actions).
#[test]
fn audit_log_filters_and_exports_csv() {
    let (ws, s, _pin) = site();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let ops_pw = add_user(&ws, "ops@op.example", &["--ops"]);
    http_login(&s, "staff@shop.example", &pw);
    let ops = http_login(&s, "ops@op.example", &ops_pw);
    let get = |path: &str| {
        let r = s
            .client()
            .get(s.url(path))
            .header("cookie", &ops)
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    };
    let text = |path: &str| {
        let (code, b) = get(path);
        assert_eq!(code, 200, "{path}");
        String::from_utf8(b).unwrap()
    };
    get("/ops/members?q=nobody");
    let all = text("/ops/audit");
    assert!(
        all.contains("staff@shop.example") && all.contains("ユーザー追加"),
        "{all}"
    );
    let logins = text("/ops/audit?action=login&user=staff%40shop");
    assert!(logins.contains("user:staff@shop.example"), "{logins}");
    assert!(!logins.contains("user:ops@op.example"), "{logins}");
    assert!(
        !logins.contains(r#"<td class="nowrap">ユーザー追加</td>"#),
        "{logins}"
    );
    let none = text("/ops/audit?action=login&from=2000-01-01&to=2000-01-02");
    assert!(none.contains("該当する記録はありません"), "{none}");
    let (code, bad) = get("/ops/audit?from=2026-02-30");
    assert_eq!(code, 400);
    assert!(String::from_utf8(bad)
        .unwrap()
        .contains("日付「2026-02-30」"));
    let (code, csv) = get("/ops/audit.csv?action=login");
    assert_eq!(code, 200);
    let csv = as_excel_reads(&csv);
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(lines[0], "日時,実行者,操作,パートナー,詳細,接続元");
    assert_eq!(lines.len(), 4, "two logins and the end: {csv}");
    assert!(
        lines[1].contains(",ログイン,") && lines[1].contains(" +09:00,"),
        "{csv}"
    );
    // A partner user has no audit log.
    let sid = http_login(&s, "staff@shop.example", &pw);
    let r = s
        .client()
        .get(s.url("/ops/audit.csv"))
        .header("cookie", &sid)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The key-created page is POST → 303 → GET: the key comes from a flash
/// kept for the session and is taken by the first GET, so reloading that
/// page (or going back to it) never posts the form again, never makes a
/// second key, and no longer shows the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_created_page_reloads_without_a_second_key_or_the_secret() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                format!(
                    "{}\n[partner.api]\nenabled = true\ndaily_miles_limit = 1000\n",
                    ws.scheduled_partner("shop", "daily 03:00")
                )
            },
            |_| {},
        )
    })
    .await
    .unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let mut b = Browser::start("key-created-reload", Some(&pin)).await;
    log_in(&mut b, &s, "staff@shop.example", &pw, "logged-in").await;
    b.visit(&s.url("/keys"), "keys").await;
    b.fill_labelled("名前（用途）", "POS 本番").await;
    b.click_button("キーを作成").await;
    b.shot("key-created").await;
    // The browser followed a redirect: what it shows was got by a GET.
    assert_eq!(
        b.client.current_url().await.unwrap().path(),
        "/keys/created"
    );
    let key = b.text_at("#new-key").await;
    assert!(key.starts_with("mbk_") && key.len() == 44, "{key}");

    b.client.refresh().await.expect("reload");
    b.shot("key-created-reloaded").await;
    let t = b.text().await;
    let html = b.client.source().await.unwrap();
    assert!(
        !html.contains(&key[12..]),
        "the secret is not shown again: {t}"
    );
    assert!(t.contains("もう表示できません"), "{t}");
    let list = ws.ok(&["api-key", "list", "--partner", "shop", "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(ws.int("SELECT count(*) FROM api_keys"), 1);
    // Nothing of the secret was written anywhere in the database either.
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM sessions WHERE data LIKE '%{}%'",
            &key[12..]
        )),
        0
    );
    b.close().await;
}

/// Issue 22: the ops files table fits a 1280 px window without a
/// horizontal scroll bar, and nothing in it wraps mid-word: the 経路
/// cells stay one line however long the file names and reasons are
/// (those wrap inside their own cells).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_files_table_fits_1280_px_and_channel_cells_stay_one_line() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                ws.scheduled_partner("shop", "daily 03:00").replacen(
                    "id = \"shop\"\n",
                    "id = \"shop\"\nname = \"ACME ストア 東京本店\"\nmax_error_ratio = 0.1\n",
                    1,
                )
            },
            |ws| {
                ws.members(5);
                // Long names without a space to break at, and a refusal
                // with a long technical reason.
                ws.write(
                    "inbox/shop/exchange_data_for_partner_acme_store_tokyo_20261204_final_v2.csv",
                    "M000001,K-1,500\r\nM000002,K-2,40\r\n",
                );
                ws.write(
                    "inbox/shop/交換データ店舗別東京本店二〇二六年十二月四日最終版修正済み.csv",
                    "nobody,K-3,5\r\nnone,K-4,6\r\nM000003,K-5,7\r\n",
                );
                let out = ws.run(&["once"]);
                assert_eq!(out.status.code(), Some(1), "one file refused: {out:?}");
            },
        )
    })
    .await
    .unwrap();
    let first = ws.int("SELECT min(id) FROM files");
    ws.ok(&[
        "reverse",
        "--file",
        &first.to_string(),
        "--reason",
        "パートナーからの依頼により、誤って送られたファイルを取り消します（問い合わせ番号 20261204-0001）",
    ]);
    let pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    let mut b = Browser::start("ops-files-1280", Some(&pin)).await;
    b.client.set_window_size(1280, 900).await.unwrap();
    log_in(&mut b, &s, "ops@example.jp", &pw, "logged-in").await;
    // An upload, so that the table has アップロード (the word that wrapped).
    b.visit(&s.url("/upload"), "upload").await;
    b.client
        .find(fantoccini::Locator::Id("partner"))
        .await
        .unwrap()
        .select_by_value("shop")
        .await
        .unwrap();
    b.choose_file(
        "file",
        "アップロード用の交換ファイル_店舗コード0001_2026年12月分.csv",
        b"M000004,U-1,9\r\n",
    )
    .await;
    b.send_upload("uploaded").await;
    b.visit(&s.url("/files?partner=shop"), "files").await;
    // A "run now" request waiting for a daemon that is not running: its
    // long warning is in the page too.
    b.click_button("今すぐ実行").await;
    ws.db()
        .execute(
            "UPDATE run_requests SET requested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 minutes')",
            [],
        )
        .unwrap();
    b.visit(&s.url("/files?partner=shop"), "files-with-request")
        .await;
    let inner = b
        .client
        .execute("return window.innerWidth;", vec![])
        .await
        .unwrap();
    assert_eq!(inner, 1280, "the window is 1280 px wide");
    let width = b
        .client
        .execute("return document.documentElement.scrollWidth;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(width <= 1280, "the page is {width} px wide");
    // Each word cell (経路, 結果) and each link (ダウンロード, 取り消す) is
    // laid out on one line: all its line boxes share one top.
    let lines = b
        .client
        .execute(
            "function lines(el) {
               var r = document.createRange(); r.selectNodeContents(el);
               return new Set(Array.from(r.getClientRects()).map(function (x) { return Math.round(x.top); })).size;
             }
             var rows = Array.from(document.querySelectorAll('tr[data-file]'));
             return {
               channel: rows.map(function (tr) { return [tr.cells[2].innerText, lines(tr.cells[2])]; }),
               words: Array.from(document.querySelectorAll('tr[data-file] td:nth-child(4), tr[data-file] a'))
                 .filter(function (el) { return lines(el) > 1; })
                 .map(function (el) { return el.innerText; })
             };",
            vec![],
        )
        .await
        .unwrap();
    let cells = lines["channel"].as_array().unwrap();
    assert_eq!(cells.len(), 3, "{lines}");
    for c in cells {
        assert_eq!(c[1], 1, "a 経路 cell on more than one line: {c}");
    }
    assert_eq!(lines["words"], serde_json::json!([]), "words on two lines");
    // The header cells and links too (行数, 再送行, 取り消す …).
    assert_no_broken_words(&b, "ops files").await;
    b.close().await;
}

/// Click the element `css` (a download link or button) and give back the
/// bytes Chromium saved, removing them so the next download is the next.
async fn download_bytes(b: &Browser, css: &str) -> Vec<u8> {
    for e in std::fs::read_dir(&b.downloads).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    b.client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    let path = b.downloaded("csv").await;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(path).unwrap();
    bytes
}

/// Issue 22: each export a partner downloads in Chromium (the history's
/// CSV and the monthly statement) opens by double-click in Japanese
/// Excel, which reads a file with the UTF-8 BOM as UTF-8 and anything else
/// as CP932: the Shift_JIS shop's files are CP932 (not UTF-8) with CRLF,
/// the UTF-8 shop's carry the BOM; both decode to the Japanese headers,
/// partner keys, file names, channel and reversal reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_downloaded_in_chromium_open_in_japanese_excel_for_both_encodings() {
    let (ws, s, pin) = tokio::task::spawn_blocking(|| {
        site_with(
            |ws| {
                format!(
                    "{}{}",
                    sjis_partner(ws),
                    ws.scheduled_partner("shop", "daily 03:00").replacen(
                        "id = \"shop\"\n",
                        "id = \"shop\"\nname = \"ACME ストア\"\n",
                        1
                    )
                )
            },
            |ws| {
                ws.members(3);
                let (sjis, _, _) =
                    encoding_rs::SHIFT_JIS.encode("M000001,注文-1,100\r\nM000002,注文-2,200\r\n");
                ws.write("inbox/sjis/交換データ.csv", &sjis);
                ws.write("inbox/shop/交換-ACME.csv", "M000001,注文-3,300\n");
                ws.ok(&["once"]);
            },
        )
    })
    .await
    .unwrap();
    for partner in ["sjis", "shop"] {
        let id = ws.int(&format!("SELECT id FROM files WHERE partner = '{partner}'"));
        ws.ok(&[
            "reverse",
            "--file",
            &id.to_string(),
            "--reason",
            "誤送信のため取り消し",
        ]);
    }
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m-%d")
        .to_string();
    let mut b = Browser::start("exports-excel", Some(&pin)).await;
    for (partner, file, keys) in [
        ("sjis", "交換データ.csv", &["注文-1", "注文-2"][..]),
        ("shop", "交換-ACME.csv", &["注文-3"][..]),
    ] {
        let email = format!("staff@{partner}.example");
        let pw = add_user(&ws, &email, &["--partner", partner]);
        log_in(&mut b, &s, &email, &pw, &format!("{partner}-logged-in")).await;
        b.visit(
            &s.url(&format!("/history?key=&from={today}&to={today}")),
            &format!("{partner}-history"),
        )
        .await;
        let history = download_bytes(&b, "a[href^='/history.csv']").await;
        b.visit(&s.url("/files"), &format!("{partner}-files")).await;
        let statement = download_bytes(&b, "form[action='/statement.csv'] button").await;
        for (what, bytes) in [("history", &history), ("statement", &statement)] {
            let bom = bytes.starts_with(b"\xEF\xBB\xBF");
            if partner == "sjis" {
                // CP932 for Excel, so not the BOM, and not UTF-8 either.
                assert!(!bom, "{what}");
                assert!(std::str::from_utf8(bytes).is_err(), "{what} is CP932");
            } else {
                assert!(bom, "{what}: a UTF-8 file needs its BOM for Excel");
            }
            // Every line ends CRLF, as Windows Excel writes them.
            let lf = bytes.iter().filter(|&&c| c == b'\n').count();
            let crlf = bytes.windows(2).filter(|w| w == b"\r\n").count();
            assert!(lf > 1 && lf == crlf, "{what}: CRLF line ends");
        }
        let history = as_excel_reads(&history);
        let statement = as_excel_reads(&statement);
        assert!(
            history.starts_with("積算日時,指定キー,会員ID,マイル,経路,ファイル,行\r\n"),
            "{history}"
        );
        for key in keys {
            assert!(history.contains(&format!(",{key},")), "{history}");
        }
        assert!(
            history.contains(&format!(",取得,{file},1\r\n")),
            "{history}"
        );
        assert!(
            statement.starts_with("区分,項目,詳細,行数,マイル\r\n"),
            "{statement}"
        );
        assert!(
            statement.contains(&format!("{file}（取得）")),
            "{statement}"
        );
        assert!(statement.contains("経路別,取得,"), "{statement}");
        assert!(statement.contains("誤送信のため取り消し"), "{statement}");
        assert!(statement.contains("差引合計"), "{statement}");
        b.click_button("ログアウト").await;
    }
    b.close().await;
}

/// Both shops (Shift_JIS サンプル商店 and UTF-8 ACME ストア, API on) with a
/// pulled file each (one failed row), a refused file, and 10 members.
fn two_shops() -> (Workspace, Serve, String) {
    site_with(
        |ws| {
            let api = "[partner.api]\nenabled = true\ndaily_miles_limit = 100000\n";
            format!(
                "{}{api}{}{api}",
                sjis_partner(ws),
                ws.scheduled_partner("shop", "daily 03:00").replacen(
                    "id = \"shop\"\n",
                    "id = \"shop\"\nname = \"ACME ストア\"\n",
                    1
                )
            )
        },
        |ws| {
            ws.members(10);
            let (sjis, _, _) = encoding_rs::SHIFT_JIS
                .encode("M000001,注文-1,100\r\n未登録会員,注文-2,40\r\nM000002,注文-3,200\r\n");
            ws.write("inbox/sjis/交換データ.csv", &sjis);
            ws.write(
                "inbox/shop/exchange-1204.csv",
                "M000003,S-1,300\nnobody,S-2,5\nM000004,S-3,70\n",
            );
            ws.write("inbox/shop/header-only.csv", "member,key,miles\n");
            let out = ws.run(&["once"]);
            assert_eq!(out.status.code(), Some(1), "one refused: {out:?}");
        },
    )
}

/// Checks the page now shown for what the issue calls wrapping mid-word:
/// no link, header or one-line cell in a table is laid out on more than
/// one line (a
/// partner's name, ダウンロード, 経路 …; free text may wrap).
async fn assert_no_broken_words(b: &Browser, page: &str) {
    let broken = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('td a, th, td.nowrap:not(:has(br))')).filter(function (el) {
               var r = document.createRange(); r.selectNodeContents(el);
               return new Set(Array.from(r.getClientRects()).map(function (x) { return Math.round(x.top); })).size > 1;
             }).map(function (el) { return el.innerText; });",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(broken, serde_json::json!([]), "{page}: words on two lines");
}

/// Check the page now shown: axe-core, no word broken in a table, and
/// no horizontal scroll bar in the 1280 px window.
async fn assert_page_ok(b: &Browser, page: &str) {
    b.assert_accessible(page).await;
    assert_no_broken_words(b, page).await;
    let over = b
        .client
        .execute(
            "var d = document.documentElement; return d.scrollWidth - d.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(over, 0, "{page}: wider than the window by {over} px");
}

/// Go to `url` and save the whole page as `step` (see
/// [`Browser::full_shot`]).
async fn see(b: &mut Browser, url: &str, step: &str) {
    b.client.goto(url).await.expect("goto");
    b.full_shot(step).await;
}

/// Every page a partner user sees, screenshotted and checked with
/// axe-core; `file` is an exchange file in the partner's encoding with one
/// failed row, `key` a partner key it credits.
async fn partner_tour(
    b: &mut Browser,
    s: &Serve,
    ws: &Workspace,
    partner: &str,
    file: &[u8],
    key: &str,
) {
    let email = format!("staff@{partner}.example");
    let pw = add_user(ws, &email, &["--partner", partner]);
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m-%d")
        .to_string();
    see(b, &s.url("/login"), &format!("{partner}-login")).await;
    assert_page_ok(b, "login").await;
    log_in(b, s, &email, &pw, &format!("{partner}-logged-in")).await;
    b.full_shot(&format!("{partner}-home")).await;
    assert_page_ok(b, "home").await;
    see(b, &s.url("/files"), &format!("{partner}-files")).await;
    assert_page_ok(b, "files").await;
    see(b, &s.url("/upload"), &format!("{partner}-upload")).await;
    assert_page_ok(b, "upload").await;
    b.choose_file("file", "アップロード.csv", file).await;
    b.send_upload(&format!("{partner}-upload-sent")).await;
    b.full_shot(&format!("{partner}-upload-result")).await;
    assert_page_ok(b, "upload result").await;
    see(b, &s.url("/history"), &format!("{partner}-history-form")).await;
    assert_page_ok(b, "history form").await;
    see(
        b,
        &s.url(&format!("/history?key=&from={today}&to={today}")),
        &format!("{partner}-history-dates"),
    )
    .await;
    assert_page_ok(b, "history by dates").await;
    see(
        b,
        &s.url(&format!("/history?key={key}")),
        &format!("{partner}-history-key"),
    )
    .await;
    assert_page_ok(b, "history by key").await;
    see(b, &s.url("/keys"), &format!("{partner}-keys")).await;
    assert_page_ok(b, "keys").await;
    b.fill_labelled("名前（用途）", "POS 本番").await;
    b.click_button("キーを作成").await;
    b.full_shot(&format!("{partner}-key-created")).await;
    assert_page_ok(b, "key created").await;
    let prefix = b.text_at("#new-key").await[..12].to_owned();
    see(
        b,
        &s.url(&format!("/keys/{prefix}/revoke")),
        &format!("{partner}-key-revoke"),
    )
    .await;
    assert_page_ok(b, "key revoke").await;
    see(b, &s.url("/no-such-page"), &format!("{partner}-not-found")).await;
    assert_page_ok(b, "404").await;
    b.click_button("ログアウト").await;
}

/// Issue 22: every page passes axe-core (no serious or critical
/// violation) in each view: a Shift_JIS partner's, a UTF-8 partner's and
/// ops'. Each page is saved as a screenshot on the way (`<target>/tmp/
/// screenshots/every-page/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_passes_axe_core_in_both_partner_views_and_ops() {
    let (ws, s, pin) = tokio::task::spawn_blocking(two_shops).await.unwrap();
    let mut b = Browser::start("every-page", Some(&pin)).await;
    let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("M000005,注文-9,10\r\nだれ,注文-10,5\r\n");
    partner_tour(&mut b, &s, &ws, "sjis", &sjis, "注文-1").await;
    partner_tour(
        &mut b,
        &s,
        &ws,
        "shop",
        b"M000006,U-1,10\nwho,U-2,5\n",
        "S-1",
    )
    .await;

    let pw = add_user(&ws, "ops@example.jp", &["--ops"]);
    log_in(&mut b, &s, "ops@example.jp", &pw, "ops-login").await;
    assert_page_ok(&b, "ops home").await;
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m-%d")
        .to_string();
    let shop_file =
        ws.int("SELECT min(id) FROM files WHERE partner = 'shop' AND outcome = 'credited'");
    for (path, step) in [
        ("/ops".to_owned(), "ops-dashboard"),
        ("/files".to_owned(), "ops-files-picker"),
        ("/files?partner=shop".to_owned(), "ops-files"),
        ("/upload".to_owned(), "ops-upload"),
        ("/history".to_owned(), "ops-history-form"),
        (
            format!("/history?partner=sjis&key=&from={today}&to={today}"),
            "ops-history",
        ),
        ("/ops/members?q=M000001".to_owned(), "ops-member"),
        ("/ops/audit".to_owned(), "ops-audit"),
        (
            format!("/ops/files/{shop_file}/reverse"),
            "ops-reverse-confirm",
        ),
    ] {
        see(&mut b, &s.url(&path), step).await;
        assert_page_ok(&b, step).await;
    }
    b.fill_labelled("理由（必須・記録に残ります）", "誤送信（パートナー依頼）")
        .await;
    b.click_button("取り消しを実行").await;
    b.full_shot("ops-reversed").await;
    assert_page_ok(&b, "ops reversed").await;
    b.close().await;
}

/// Issue 22: the site works by keyboard alone. From the login page, only
/// Tab, Enter, Space and typed text: log in, reach the upload page, choose
/// a file (WebDriver fills the file input, as the system's file dialog
/// would), send it, then reach the history and find the row just credited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_history_by_keyboard_alone() {
    use fantoccini::key::Key;
    let (ws, s, pin) = tokio::task::spawn_blocking(two_shops).await.unwrap();
    let pw = add_user(&ws, "staff@shop.example", &["--partner", "shop"]);
    let file = ws.write("to-upload/keyboard.csv", "M000007,KB-1,25\n");
    let mut b = Browser::start("keyboard", Some(&pin)).await;
    b.visit(&s.url("/login"), "login").await;
    b.tab_to("#email").await;
    b.type_text("staff@shop.example").await;
    b.tab_to("#password").await;
    b.type_text(&pw).await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(fantoccini::Locator::Css("nav a[href='/upload']"))
        .await
        .expect("logged in");
    b.shot("home").await;
    b.tab_to("nav a[href='/upload']").await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(fantoccini::Locator::Id("file"))
        .await
        .expect("upload page");
    b.tab_to("#file").await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    b.shot("file-chosen").await;
    b.tab_to("form[data-upload] button[type=submit]").await;
    b.press(' ').await;
    b.client
        .wait()
        .at_most(std::time::Duration::from_secs(60))
        .for_element(fantoccini::Locator::Id("upload-outcome"))
        .await
        .expect("result page");
    b.shot("uploaded").await;
    assert!(b.text().await.contains("積算しました"));
    assert_eq!(ws.balance("M000007"), 25);
    b.tab_to("nav a[href='/history']").await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(fantoccini::Locator::Id("key"))
        .await
        .expect("history page");
    b.tab_to("#key").await;
    b.type_text("KB-1").await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(fantoccini::Locator::XPath(
            "//td[normalize-space(.)='KB-1']",
        ))
        .await
        .expect("the row in the results");
    b.shot("history").await;
    let t = b.text().await;
    assert!(
        t.contains("KB-1") && t.contains("M000007") && t.contains("アップロード"),
        "{t}"
    );
    b.close().await;
}

/// Log in with the keyboard alone: Tab to each field, type, Enter.
async fn keyboard_login(b: &mut Browser, s: &Serve, email: &str, password: &str) {
    use fantoccini::key::Key;
    b.visit(&s.url("/login"), "login").await;
    b.tab_to("#email").await;
    b.type_text(email).await;
    b.tab_to("#password").await;
    b.type_text(password).await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(fantoccini::Locator::Css("nav"))
        .await
        .expect("logged in");
}

async fn wait_css(b: &Browser, css: &str, what: &str) {
    b.client
        .wait()
        .at_most(std::time::Duration::from_secs(30))
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// The rest of the issue's keyboard list: a partner creates and revokes an
/// API key, and ops reverse a file, with Tab, Enter, Space and typing only.
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_reversal_by_keyboard_alone() {
    use fantoccini::key::Key;
    let (ws, s, pin) = tokio::task::spawn_blocking(two_shops).await.unwrap();
    let staff = add_user(&ws, "kb-staff@shop.example", &["--partner", "shop"]);
    let ops = add_user(&ws, "kb-ops@operator.example", &["--ops"]);
    let mut b = Browser::start("keyboard-keys-reversal", Some(&pin)).await;

    keyboard_login(&mut b, &s, "kb-staff@shop.example", &staff).await;
    b.tab_to("nav a[href='/keys']").await;
    b.press(Key::Enter).await;
    wait_css(&b, "#label", "keys page").await;
    b.tab_to("#label").await;
    b.type_text("POS レジ 1").await;
    b.press(Key::Enter).await;
    wait_css(&b, "#new-key", "the new key shown").await;
    b.shot("key-created").await;
    assert!(b.text().await.contains("mbk_"));
    b.tab_to("nav a[href='/keys']").await;
    b.press(Key::Enter).await;
    wait_css(
        &b,
        "tr[data-key] a[href$='/revoke']",
        "the key's revoke link",
    )
    .await;
    b.tab_to("tr[data-key] a[href$='/revoke']").await;
    b.press(Key::Enter).await;
    wait_css(&b, "form button.danger", "the revoke page").await;
    b.tab_to("form button.danger").await;
    b.press(' ').await;
    wait_css(&b, "tr[data-key] .red", "the key shown revoked").await;
    b.shot("key-revoked").await;
    let list = ws.ok(&["api-key", "list", "--partner", "shop", "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys:#}");
    assert!(keys[0]["revoked_at"].is_string(), "{keys:#}");
    b.close().await;

    // Ops: from the dashboard to the shop's files, then reverse file 2.
    let before = ws.balance("M000003");
    assert_eq!(before, 300);
    let mut b = Browser::start("keyboard-reversal", Some(&pin)).await;
    keyboard_login(&mut b, &s, "kb-ops@operator.example", &ops).await;
    b.tab_to("nav a[href='/ops']").await;
    b.press(Key::Enter).await;
    wait_css(&b, "table.dashboard", "the ops dashboard").await;
    b.tab_to("a[href='/files?partner=shop']").await;
    b.press(Key::Enter).await;
    wait_css(&b, "a[href='/ops/files/2/reverse']", "the shop's files").await;
    b.tab_to("a[href='/ops/files/2/reverse']").await;
    b.press(Key::Enter).await;
    wait_css(&b, "#reason", "the reversal page").await;
    b.tab_to("#reason").await;
    b.type_text("キーボードだけで取り消し").await;
    b.tab_to("form button.danger").await;
    b.press(' ').await;
    b.client
        .wait()
        .at_most(std::time::Duration::from_secs(30))
        .for_element(fantoccini::Locator::XPath(
            "//*[contains(., '取り消しました')]",
        ))
        .await
        .expect("the reversal result");
    b.shot("reversed").await;
    assert_eq!(ws.balance("M000003"), 0, "file 2's credit taken back");
    b.close().await;
}
