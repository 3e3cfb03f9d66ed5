//! The partner API on the real `milebatch serve`, over TLS with a test CA:
//! API keys from the CLI, `POST /api/v1/exchanges` with every status, the
//! idempotency rules (replay, reuse, the concurrent same-key race), rate
//! limits and the daily cap, and credits landing in the one ledger.

mod common;

use std::time::Duration;

use common::serve::{json, tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::Workspace;
use reqwest::blocking::{Client, RequestBuilder, Response};

const API: &str = "[partner.api]\nenabled = true\ndaily_miles_limit = 1000000\n";

/// A workspace with partners `shop` (API enabled with `shop_api`) and
/// `other` (API enabled), the demo members, and a TLS server section.
fn setup(shop_api: &str) -> (Workspace, Serve) {
    setup_with("", shop_api)
}

/// [`setup`] with more `[[partner]]` keys for `shop`.
fn setup_with(shop_keys: &str, shop_api: &str) -> (Workspace, Serve) {
    let ca = TestCa::new();
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "{}\n{}{shop_api}\n{}{API}\n",
            tls_server_section(&ca),
            ws.scheduled_partner("shop", "daily 03:00")
                .replace("[partner.source]", &format!("{shop_keys}[partner.source]")),
            ws.scheduled_partner("other", "daily 03:00"),
        ),
    );
    ws.demo_members();
    let s = Serve::start(&ws, Some(ca));
    (ws, s)
}

fn new_key(ws: &Workspace, partner: &str) -> String {
    let out = ws.ok(&["api-key", "create", "--partner", partner, "--label", "test"]);
    out.trim().to_owned()
}

fn post(c: &Client, s: &Serve, key: &str, idem: &str, body: &str) -> RequestBuilder {
    c.post(s.url("/api/v1/exchanges"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(body.to_owned())
}

fn credit(
    c: &Client,
    s: &Serve,
    key: &str,
    idem: &str,
    member: &str,
    pk: &str,
    miles: i64,
) -> Response {
    let body = serde_json::json!({"member": member, "partner_key": pk, "miles": miles}).to_string();
    post(c, s, key, idem, &body).send().unwrap()
}

fn problem(r: Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v = json(r);
    assert_eq!(v["status"], status, "{v}");
    v
}

#[test]
fn api_keys_from_the_cli() {
    let ca = TestCa::new();
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "{}\n{}{API}",
            tls_server_section(&ca),
            ws.scheduled_partner("shop", "daily 03:00")
        ),
    );
    let key = new_key(&ws, "shop");
    assert!(key.starts_with("mbk_") && key.len() >= 4 + 32, "{key}");
    assert_ne!(key, new_key(&ws, "shop"));
    let list = ws.ok(&["api-key", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        !list.contains(&key[12..]),
        "the key itself is never shown again"
    );
    let prefix = &key[..12];
    assert!(ws.ok(&["api-key", "list"]).contains(prefix));
    // Only its hash is stored.
    let stored: i64 = ws.int(&format!(
        "SELECT count(*) FROM api_keys WHERE sha256 LIKE '%{}%' OR label LIKE '%{}%'",
        &key[12..],
        &key[12..]
    ));
    assert_eq!(stored, 0);
    assert!(ws.ok(&["api-key", "revoke", prefix]).contains("revoked"));
    let again = ws.run(&["api-key", "revoke", prefix]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active API key"));
    let unknown = ws.run(&["api-key", "create", "--partner", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action LIKE 'api-key-%'"),
        3
    );
}

#[test]
fn exchanges_credit_once_and_replay() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");

    // Credited: 201, and the ledger row is an API row (file_id 0).
    let r = credit(&c, &s, &key, "k-1", "NM0000000001", "ORDER-1", 120);
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().get("idempotent-replayed").is_none());
    let first = r.text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["partner_key"], "ORDER-1");
    assert_eq!(v["miles"], 120);
    assert!(v["credited_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("balance").is_none() && v.get("member").is_none());
    assert_eq!(ws.balance("NM0000000001"), 120);
    let id = v["id"].as_i64().unwrap();
    assert_eq!(
        ws.int(&format!(
            "SELECT count(*) FROM ledger WHERE file_id = 0 AND line = {id} AND dup = {id} AND partner = 'shop' AND partner_key = 'ORDER-1'"
        )),
        1
    );

    // The same key and body: the stored answer, byte for byte; no new credit.
    let r = credit(&c, &s, &key, "k-1", "NM0000000001", "ORDER-1", 120);
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.text().unwrap(), first);
    assert_eq!(ws.balance("NM0000000001"), 120);

    // The same key, another body: 422, nothing credited.
    let v = problem(
        credit(&c, &s, &key, "k-1", "NM0000000001", "ORDER-1", 121),
        422,
    );
    assert_eq!(v["type"], "/problems/idempotency-key-reused");
    assert_eq!(ws.ledger_rows(), 1);

    // Keys are per partner: another partner may use "k-1" too.
    let other = new_key(&ws, "other");
    assert_eq!(
        credit(&c, &s, &other, "k-1", "NM0000000001", "ORDER-1", 120).status(),
        201
    );
    assert_eq!(ws.balance("NM0000000001"), 240);

    // Row codes, as for a CSV row, stored and replayed the same.
    for (idem, member, pk, miles, code) in [
        ("e2", " ", "k", 1, "E002"),
        ("e3", "NM9999999999", "k", 1, "E003"),
        ("e4", "NM0000000003", "k", 1, "E004"),
        ("e5", "NM0000000001", "", 1, "E005"),
        ("e6", "NM0000000001", "k", 0, "E006"),
        ("e6n", "NM0000000001", "k", -5, "E006"),
        ("e7", "taro.yamada@example.jp", "k", 100001, "E007"),
    ] {
        let v = problem(credit(&c, &s, &key, idem, member, pk, miles), 422);
        assert_eq!(v["code"], code, "{idem}: {v}");
        let r = credit(&c, &s, &key, idem, member, pk, miles);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(problem(r, 422), v);
    }
    let v = problem(
        post(
            &c,
            &s,
            &key,
            "e6f",
            r#"{"member":"NM0000000001","partner_key":"k","miles":5.0}"#,
        )
        .send()
        .unwrap(),
        422,
    );
    assert_eq!(v["code"], "E006");
    // By e-mail, any case.
    assert_eq!(
        credit(&c, &s, &key, "mail", "Hanako.Sato@Example.JP", "O2", 7).status(),
        201
    );
    assert_eq!(ws.balance("NM0000000002"), 7);
    assert_eq!(ws.ledger_rows(), 3);
    ws.assert_balances_match_ledger();

    // `milebatch exchanges` lists them, credited and rejected, newest first.
    let list: serde_json::Value =
        serde_json::from_str(&ws.ok(&["exchanges", "--partner", "shop", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 10, "{list:?}");
    assert_eq!(list[0]["idempotency_key"], "mail");
    assert_eq!(list[0]["member_id"], "NM0000000002");
    assert_eq!(list.iter().filter(|x| x["status"] == 422).count(), 8);
    assert!(list.iter().any(|x| x["code"] == "E004"));
    let text = ws.ok(&["exchanges"]);
    assert!(
        text.contains("rejected E003") && text.contains("credited"),
        "{text}"
    );
    assert_eq!(
        ws.run(&["exchanges", "--partner", "nobody"]).status.code(),
        Some(1)
    );
}

#[test]
fn malformed_requests_and_keys() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let good = r#"{"member":"NM0000000001","partner_key":"k","miles":1}"#;

    // 401: no key, an unknown key, a revoked key: the same body.
    let none = c
        .post(s.url("/api/v1/exchanges"))
        .header("content-type", "application/json")
        .header("idempotency-key", "a")
        .body(good)
        .send()
        .unwrap();
    assert!(none.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let none = problem(none, 401);
    // The real key with its last character changed (never to itself).
    let last = if key.ends_with('0') { '1' } else { '0' };
    let unknown_key = format!("{}{last}", &key[..key.len() - 1]);
    assert_ne!(unknown_key, key);
    let unknown = problem(post(&c, &s, &unknown_key, "a", good).send().unwrap(), 401);
    let revoked = new_key(&ws, "shop");
    ws.ok(&["api-key", "revoke", &revoked[..12]]);
    let revoked = problem(post(&c, &s, &revoked, "a", good).send().unwrap(), 401);
    assert_eq!(none, unknown);
    assert_eq!(unknown, revoked);

    // 415: not JSON.
    let r = c
        .post(s.url("/api/v1/exchanges"))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .header("idempotency-key", "a")
        .body(good)
        .send()
        .unwrap();
    problem(r, 415);

    // 400: no key, a bad key, bad JSON, missing or extra fields, wrong
    // types, a body over 16 KiB.
    let r = c
        .post(s.url("/api/v1/exchanges"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(good)
        .send()
        .unwrap();
    assert!(problem(r, 400)["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    problem(
        post(&c, &s, &key, &"x".repeat(256), good).send().unwrap(),
        400,
    );
    for bad in [
        "{",
        "[]",
        r#"{"member":"NM0000000001","partner_key":"k"}"#,
        r#"{"member":"NM0000000001","partner_key":"k","miles":1,"extra":1}"#,
        r#"{"member":"NM0000000001","partner_key":"k","miles":"1"}"#,
        r#"{"member":1,"partner_key":"k","miles":1}"#,
    ] {
        problem(post(&c, &s, &key, "b", bad).send().unwrap(), 400);
    }
    let huge = format!(
        r#"{{"member":"NM0000000001","partner_key":"{}","miles":1}}"#,
        "k".repeat(17 * 1024)
    );
    assert!(
        problem(post(&c, &s, &key, "h", &huge).send().unwrap(), 400)["detail"]
            .as_str()
            .unwrap()
            .contains("16384")
    );
    assert_eq!(ws.ledger_rows(), 0);
    assert_eq!(
        ws.int("SELECT count(*) FROM api_exchanges"),
        0,
        "malformed requests are not stored"
    );
}

/// A key that was just used (so `serve` has it cached) and is then revoked
/// from the CLI, another process: its next credit, replay and verify are
/// the one 401 at once, with nothing credited and nothing audited.
#[test]
fn a_key_revoked_while_in_use_is_refused_at_once() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let verify = || {
        c.post(s.url("/api/v1/members/verify"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(r#"{"member_id":"NM0000000001","email":"taro.yamada@example.jp"}"#)
            .send()
            .unwrap()
    };
    assert_eq!(
        credit(&c, &s, &key, "r1", "NM0000000001", "k1", 5).status(),
        201
    );
    assert_eq!(verify().text().unwrap(), r#"{"match":true}"#);
    let rows = ws.ledger_rows();
    let audited = ws.int("SELECT count(*) FROM audit WHERE action = 'member-verify'");
    ws.ok(&["api-key", "revoke", &key[..12]]);

    let unknown = problem(
        credit(&c, &s, "mbk_unknown", "r2", "NM0000000001", "k2", 5),
        401,
    );
    // A new exchange, the replay of the first, and a verify call.
    assert_eq!(
        problem(credit(&c, &s, &key, "r2", "NM0000000001", "k2", 5), 401),
        unknown
    );
    assert_eq!(
        problem(credit(&c, &s, &key, "r1", "NM0000000001", "k1", 5), 401),
        unknown
    );
    assert_eq!(problem(verify(), 401), unknown);
    // And again, now that `serve` has forgotten the key.
    assert_eq!(problem(verify(), 401), unknown);
    assert_eq!(ws.ledger_rows(), rows);
    assert_eq!(
        ws.int("SELECT count(*) FROM audit WHERE action = 'member-verify'"),
        audited
    );
}

#[test]
fn concurrent_requests_with_one_key_credit_once() {
    let (ws, s) = setup(API);
    let key = new_key(&ws, "shop");
    let answers: Vec<(u16, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                sc.spawn(|| {
                    let c = s.client();
                    let r = credit(&c, &s, &key, "race", "NM0000000001", "RACE", 5);
                    let st = r.status().as_u16();
                    if st == 409 {
                        assert!(r.headers().get("retry-after").is_some());
                    }
                    (st, r.text().unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<_> = answers.iter().filter(|(st, _)| *st == 201).collect();
    assert!(!ok.is_empty(), "{answers:?}");
    assert!(
        ok.iter().all(|(_, b)| b == &ok[0].1),
        "every 201 is the same answer: {answers:?}"
    );
    assert!(
        answers.iter().all(|(st, _)| *st == 201 || *st == 409),
        "{answers:?}"
    );
    assert_eq!(ws.ledger_rows(), 1);
    assert_eq!(ws.balance("NM0000000001"), 5);
}

#[test]
fn rate_limit_and_daily_cap() {
    let (ws, s) = setup("[partner.api]\nenabled = true\nrate = \"2/m\"\ndaily_miles_limit = 150\n");
    let c = s.client();
    let key = new_key(&ws, "shop");
    assert_eq!(
        credit(&c, &s, &key, "d1", "NM0000000001", "A", 100).status(),
        201
    );
    // Would pass 150 today: 429 until tomorrow, and not stored.
    let r = credit(&c, &s, &key, "d2", "NM0000000001", "B", 100);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86400 + 3600).contains(&after), "{after}");
    assert_eq!(problem(r, 429)["type"], "/problems/daily-limit");
    assert_eq!(
        ws.int("SELECT count(*) FROM api_exchanges WHERE idem_key = 'd2'"),
        0
    );
    // The burst (2) is spent: the rate limit answers next.
    let r = credit(&c, &s, &key, "d3", "NM0000000001", "C", 50);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(problem(r, 429)["type"], "/problems/rate-limited");
    // Another key of the same partner has a bucket of its own, but the same
    // daily cap: 50 more fit.
    let key2 = new_key(&ws, "shop");
    assert_eq!(
        credit(&c, &s, &key2, "d3", "NM0000000001", "C", 50).status(),
        201
    );
    assert_eq!(
        problem(credit(&c, &s, &key2, "d4", "NM0000000001", "D", 1), 429)["type"],
        "/problems/daily-limit"
    );
    assert_eq!(ws.balance("NM0000000001"), 150);
}

#[test]
fn a_partner_without_the_api_is_refused() {
    let (ws, s) = setup("");
    let key = new_key(&ws, "shop");
    let c = s.client();
    let v = problem(credit(&c, &s, &key, "x", "NM0000000001", "A", 1), 403);
    assert_eq!(v["type"], "/problems/api-disabled");
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(ws.ledger_rows(), 0);
}

#[test]
fn reading_credits_back_from_the_api_and_from_files() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let other = new_key(&ws, "other");
    // One credit by file, two by the API, on the same partner key.
    std::fs::write(ws.inbox("shop").join("x.csv"), "NM0000000002,K-7,30\n").unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    let a = json(credit(&c, &s, &key, "a", "NM0000000001", "K-7", 10));
    let b = json(credit(&c, &s, &key, "b", "NM0000000002", "K-7", 20));
    let rejected = json(credit(&c, &s, &key, "r", "NM0000000003", "K-7", 20));
    assert_eq!(rejected["code"], "E004");
    let theirs = json(credit(&c, &s, &other, "o", "NM0000000001", "K-7", 40));

    // One by id: its own credit only.
    let get = |key: &str, id: &serde_json::Value| {
        c.get(s.url(&format!("/api/v1/exchanges/{id}")))
            .bearer_auth(key)
            .send()
            .unwrap()
    };
    let r = get(&key, &a["id"]);
    assert_eq!(r.status(), 200);
    let v = json(r);
    assert_eq!(
        (v["channel"].as_str(), v["miles"].as_i64(), v["id"].clone()),
        (Some("api"), Some(10), a["id"].clone())
    );
    assert_eq!(v["credited_at"], a["credited_at"]);
    // Another partner's id, an unknown id, a non-number: the same 404.
    let not_found = problem(get(&key, &theirs["id"]), 404);
    assert_eq!(
        problem(get(&key, &serde_json::json!(999999)), 404),
        not_found
    );
    assert_eq!(problem(get(&key, &serde_json::json!("x")), 404), not_found);
    assert_eq!(problem(get(&other, &a["id"]), 404), not_found);
    problem(c.get(s.url("/api/v1/exchanges/1")).send().unwrap(), 401);

    // The key's history: the file row and both API rows, not the other
    // partner's; paged with a cursor when asked for a window.
    let search = |q: &str| {
        c.get(s.url(&format!("/api/v1/exchanges?{q}")))
            .bearer_auth(&key)
            .send()
            .unwrap()
    };
    let v = json(search("partner_key=K-7"));
    let credits = v["credits"].as_array().unwrap();
    assert_eq!(credits.len(), 3, "{v}");
    let mut channels: Vec<_> = credits
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    channels.sort();
    assert_eq!(channels, ["api", "api", "pull"]);
    assert!(credits
        .iter()
        .any(|c| c["channel"] == "pull" && c["line"] == 1 && c["miles"] == 30));
    assert!(credits.iter().all(|c| c.get("member").is_none()));
    assert_eq!(v["next_cursor"], serde_json::Value::Null);
    let v = json(search(
        "partner_key=K-7&from=2000-01-01T00:00:00Z&to=2001-01-01T00:00:00Z",
    ));
    assert_eq!(v["credits"].as_array().unwrap().len(), 0);
    problem(search("partner_key=K-7&from=yesterday"), 400);
    problem(search("from=2000-01-01T00:00:00Z"), 400);
    problem(search("partner_key=K-7&cursor=bogus"), 400);
    let _ = b;

    // More than a page: the cursor walks every row once.
    let rows: String = (1..=150)
        .map(|i| format!("NM0000000001,K-P,{i}\n"))
        .collect();
    std::fs::write(ws.inbox("shop").join("p.csv"), rows).unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    let p1 = json(search("partner_key=K-P"));
    assert_eq!(p1["credits"].as_array().unwrap().len(), 100);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let p2 = json(search(&format!("partner_key=K-P&cursor={cursor}")));
    assert_eq!(p2["credits"].as_array().unwrap().len(), 50);
    assert_eq!(p2["next_cursor"], serde_json::Value::Null);
    let mut miles: Vec<i64> = p1["credits"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["credits"].as_array().unwrap())
        .map(|c| c["miles"].as_i64().unwrap())
        .collect();
    miles.sort();
    assert_eq!(miles, (1..=150).collect::<Vec<i64>>());

    // The CLI's history shows the API credits with their channel.
    let h = ws.ok(&["history", "--partner", "shop", "--key", "K-7", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h.iter().filter(|r| r["channel"] == "api").count(), 2);
    assert_eq!(ws.balance("NM0000000002"), 50);
    ws.assert_balances_match_ledger();
}

#[test]
fn api_credits_while_a_batch_file_is_credited() {
    let (ws, s) =
        setup("[partner.api]\nenabled = true\nrate = \"10000/s\"\ndaily_miles_limit = 1000000\n");
    ws.members(1000);
    let key = new_key(&ws, "shop");
    // Large enough (debug build) that its transaction holds the write lock
    // for a while.
    let (file, mut expect) = common::workspace::exchange_csv(200_000, 1000, 7);
    std::fs::write(ws.inbox("shop").join("big.csv"), file).unwrap();
    let once = std::sync::Mutex::new(
        ws.cmd(&["once", "--partner", "shop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let running = || once.lock().unwrap().try_wait().unwrap().is_none();
    // Four clients credit one API exchange after another until it ends.
    let sent: Vec<Vec<u16>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let (s, key, running) = (&s, &key, &running);
                sc.spawn(move || {
                    let c = s.client();
                    let mut out = Vec::new();
                    while running() {
                        let i = out.len();
                        let r = credit(
                            &c,
                            s,
                            key,
                            &format!("t{t}-{i}"),
                            "M000000",
                            &format!("API-{t}-{i}"),
                            1,
                        );
                        out.push(r.status().as_u16());
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = once.into_inner().unwrap().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = sent.iter().flatten().count() as i64;
    assert!(n >= 20, "only {n} API requests while `once` ran");
    assert!(
        sent.iter().flatten().all(|st| *st == 201),
        "{sent:?}\n{}",
        s.log_text()
    );
    assert!(
        !s.log_text().to_lowercase().contains("busy"),
        "{}",
        s.log_text()
    );
    expect[0] += n;
    assert_eq!(ws.balances(1000), expect);
    assert_eq!(ws.ledger_rows(), 200_000 + n);
    ws.assert_balances_match_ledger();
}

#[test]
fn verify_answers_every_no_the_same() {
    let (ws, s) =
        setup("[partner.api]\nenabled = true\ndaily_miles_limit = 100\ndaily_verify_limit = 7\n");
    let c = s.client();
    let key = new_key(&ws, "shop");
    let verify = |member_id: &str, email: &str| {
        c.post(s.url("/api/v1/members/verify"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(serde_json::json!({"member_id": member_id, "email": email}).to_string())
            .send()
            .unwrap()
    };
    let answer = |r: Response| {
        let status = r.status().as_u16();
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str() != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        (status, h, r.text().unwrap())
    };
    let yes = answer(verify("NM0000000001", "Taro.Yamada@example.jp"));
    assert_eq!(yes.0, 200);
    assert_eq!(yes.2, r#"{"match":true}"#);
    let mut noes = Vec::new();
    for (id, email) in [
        ("NM9999999999", "taro.yamada@example.jp"), // no such member ID
        ("NM0000000001", "nobody@example.jp"),      // no such e-mail
        ("NM0000000001", "hanako.sato@example.jp"), // another member's e-mail
        ("NM0000000003", "jiro.suzuki@example.jp"), // suspended
        ("NM0000000004", "saburo.tanaka@example.jp"), // withdrawn
    ] {
        let t = std::time::Instant::now();
        noes.push(answer(verify(id, email)));
        assert!(
            t.elapsed() >= milebatch::web::api::members::FLOOR,
            "padded to the floor"
        );
    }
    assert_eq!(noes[0].2, r#"{"match":false}"#);
    assert!(noes.iter().all(|n| *n == noes[0]), "{noes:#?}");
    // Malformed: problem+json, and not counted as an answer.
    let r = c
        .post(s.url("/api/v1/members/verify"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"member_id": "NM0000000001"}"#)
        .send()
        .unwrap();
    problem(r, 400);
    // The daily quota (7 calls): the 8th call is refused until tomorrow.
    let r = verify("NM0000000001", "taro.yamada@example.jp");
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(problem(r, 429)["type"], "/problems/daily-limit");
    // One audit row per answered call, with the key's prefix, no e-mail.
    let db = ws.db();
    let details: Vec<String> = db
        .prepare("SELECT actor || ' ' || detail || ' ' || coalesce(client, '') FROM audit WHERE action = 'member-verify' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(details.len(), 6, "{details:?}");
    assert!(
        details[0].contains(&key[..12]) && details[0].contains("result match"),
        "{details:?}"
    );
    assert!(details[1..]
        .iter()
        .all(|d| d.contains("result no-match") && d.contains("127.0.0.1")));
    assert!(details.iter().all(|d| !d.contains('@')), "{details:?}");
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let (_ws, s) = setup(API);
    let c = s.client();
    let r = c.get(s.url("/api/v1/openapi.json")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json(r);
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"), "{v}");
    assert_eq!(
        v["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = v["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 3, "{paths:?}");
    // Every documented operation is served (401 without a key), and every
    // other method on those paths is not.
    for (path, ops) in paths {
        let url = s.url(&path.replace("{id}", "1"));
        for method in ["get", "post", "put", "delete", "patch"] {
            let r = c
                .request(method.to_uppercase().parse().unwrap(), &url)
                .send()
                .unwrap();
            if ops.get(method).is_some() {
                assert_eq!(r.status(), 401, "{method} {path}");
                assert!(
                    ops[method]["responses"].get("401").is_some(),
                    "{method} {path}"
                );
            } else {
                problem(r, 405);
            }
        }
    }
    let post = &paths["/api/v1/exchanges"]["post"];
    for status in [
        "201", "400", "401", "408", "409", "415", "422", "429", "500",
    ] {
        assert!(post["responses"].get(status).is_some(), "{status}");
    }
}

/// Raw bytes to a plain-HTTP `serve` (loopback): what a hostile client
/// can send that no HTTP library would.
fn raw(addr: &str, bytes: &[u8], wait: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(wait)).unwrap();
    let start = std::time::Instant::now();
    let _ = t.write_all(bytes);
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn hostile_input_is_refused_and_the_server_lives_on() {
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}{API}",
            ws.scheduled_partner("shop", "daily 03:00")
        ),
    );
    ws.demo_members();
    let s = Serve::start(&ws, None);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let addr = s.base.trim_start_matches("http://").to_owned();

    // A body that never completes: 408 after the body read timeout (10 s),
    // the connection closed, nothing credited. Runs beside the rest.
    let slow_body = {
        let (addr, key) = (addr.clone(), key.clone());
        std::thread::spawn(move || {
            let req = format!(
                "POST /api/v1/exchanges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nIdempotency-Key: slow\r\nContent-Length: 100\r\n\r\n\
                 {{\"member\":\"NM0000000001\","
            );
            raw(&addr, req.as_bytes(), Duration::from_secs(30))
        })
    };

    // The same for every form of the site (the upload has its own idle
    // deadline): 408 after 10 s, the connection closed.
    let slow_forms: Vec<_> = [
        "/login",
        "/logout",
        "/keys",
        "/keys/mb_live_x/revoke",
        "/ops/partners/shop/run",
        "/ops/files/1/reverse",
    ]
    .into_iter()
    .map(|path| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
                 csrf=abc&reason="
            );
            (path, raw(&addr, req.as_bytes(), Duration::from_secs(30)))
        })
    })
    .collect();

    // Deeply nested JSON within the size limit: 400, no stack overflow.
    let nested = "[".repeat(15_000);
    problem(post(&c, &s, &key, "n", &nested).send().unwrap(), 400);
    // A huge body: 400 after 16 KiB, not read into memory.
    let huge = vec![b'x'; 8 << 20];
    let r = c
        .post(s.url("/api/v1/exchanges"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("idempotency-key", "h")
        .body(huge)
        .send();
    if let Ok(r) = r {
        problem(r, 400);
    }
    // Invalid UTF-8 in the body and in the Idempotency-Key.
    let mut body = br#"{"member":"NM0000000001","partner_key":"k"#.to_vec();
    body.extend_from_slice(b"\xff\xfe\",\"miles\":1}");
    problem(
        c.post(s.url("/api/v1/exchanges"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("idempotency-key", "u")
            .body(body)
            .send()
            .unwrap(),
        400,
    );
    let mut req = format!(
        "POST /api/v1/exchanges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: "
    )
    .into_bytes();
    req.extend_from_slice(b"\xc3\xa9\xff\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    let (answer, _) = raw(&addr, &req, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A header flood: refused (431) or cut off, quickly.
    let mut flood = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..5000 {
        flood.push_str(&format!("X-Flood-{i}: {}\r\n", "y".repeat(40)));
    }
    flood.push_str("\r\n");
    let (answer, took) = raw(&addr, flood.as_bytes(), Duration::from_secs(5));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Slowloris: headers never finished are cut off after the header read
    // timeout (10 s), not held open.
    let (answer, took) = raw(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n",
        Duration::from_secs(30),
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(took < Duration::from_secs(15), "held for {took:?}");
    let (answer, took) = slow_body.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains("\"type\":\"/problems/request-timeout\""),
        "{answer}"
    );
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&took),
        "answered and closed after {took:?}"
    );
    for t in slow_forms {
        let (path, (answer, took)) = t.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("connection: close"), "{path}: {answer}");
        assert!(
            answer.contains("10 秒以内に届きませんでした"),
            "{path}: {answer}"
        );
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(20)).contains(&took),
            "{path}: answered and closed after {took:?}"
        );
    }
    // Still serving, nothing credited.
    assert_eq!(c.get(s.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(ws.ledger_rows(), 0);
    assert_eq!(ws.int("SELECT count(*) FROM api_exchanges"), 0);
}

/// A database failure inside an exchange's transaction (a trigger that
/// RAISEs on the balance update, after the exchange and ledger rows went
/// in): 500 problem+json that does not leak the cause, nothing of it
/// kept, the key not claimed; once the fault is gone the same key credits
/// once.
#[test]
fn a_failed_commit_is_a_500_and_the_same_key_credits_once_after() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    ws.db()
        .execute_batch(
            "CREATE TRIGGER fault_ins BEFORE INSERT ON balances
               BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
             CREATE TRIGGER fault_upd BEFORE UPDATE ON balances
               BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    let v = problem(
        credit(&c, &s, &key, "f-1", "NM0000000001", "FAULT-1", 40),
        500,
    );
    assert_eq!(v["type"], "/problems/internal", "{v}");
    assert!(
        !v.to_string().contains("injected"),
        "the cause stays in the log: {v}"
    );
    assert!(s.log_text().contains("injected fault"), "{}", s.log_text());
    assert_eq!(ws.ledger_rows(), 0);
    assert_eq!(ws.int("SELECT count(*) FROM api_exchanges"), 0);
    assert_eq!(ws.int("SELECT count(*) FROM api_daily"), 0);
    // Retried while the fault lasts: the same 500, still nothing.
    problem(
        credit(&c, &s, &key, "f-1", "NM0000000001", "FAULT-1", 40),
        500,
    );
    assert_eq!(ws.ledger_rows(), 0);

    ws.db()
        .execute_batch("DROP TRIGGER fault_ins; DROP TRIGGER fault_upd;")
        .unwrap();
    let r = credit(&c, &s, &key, "f-1", "NM0000000001", "FAULT-1", 40);
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let r = credit(&c, &s, &key, "f-1", "NM0000000001", "FAULT-1", 40);
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(ws.ledger_rows(), 1);
    assert_eq!(ws.balance("NM0000000001"), 40);
    ws.assert_balances_match_ledger();
}

#[test]
fn unique_partner_keys_hold_across_files_and_the_api() {
    let (ws, s) = setup_with("unique_partner_key = true\n", API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    // A key credited by a file: the API refuses it (E010), stored and replayed.
    std::fs::write(ws.inbox("shop").join("a.csv"), "NM0000000002,FILE-1,30\n").unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    let v = problem(credit(&c, &s, &key, "x1", "NM0000000001", "FILE-1", 5), 422);
    assert_eq!(v["code"], "E010", "{v}");
    assert_eq!(
        problem(credit(&c, &s, &key, "x1", "NM0000000001", "FILE-1", 5), 422),
        v
    );
    // A key credited by the API: once only, then a file row with it fails E010.
    assert_eq!(
        credit(&c, &s, &key, "x2", "NM0000000001", "API-1", 5).status(),
        201
    );
    let v = problem(credit(&c, &s, &key, "x3", "NM0000000002", "API-1", 9), 422);
    assert_eq!(v["code"], "E010");
    std::fs::write(
        ws.inbox("shop").join("b.csv"),
        "NM0000000002,API-1,30\nNM0000000002,NEW-1,1\n",
    )
    .unwrap();
    let (_, report) = ws.once_json("shop", &[]);
    assert!(report.to_string().contains("E010"), "{report}");
    assert_eq!(ws.balance("NM0000000001"), 5);
    assert_eq!(ws.balance("NM0000000002"), 31);
    ws.assert_balances_match_ledger();
}

/// The three wave-2 pieces on one ledger: API credits verify, an API
/// exchange is reversed by its id, and the ledger still verifies, with the
/// member's balance back where it was.
#[test]
fn api_credits_verify_and_reverse_by_exchange_id() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let before = ws.balance("NM0000000001");
    let r = credit(&c, &s, &key, "v-1", "NM0000000001", "K-V1", 70);
    assert_eq!(r.status(), 201);
    let id = json(r)["id"].as_i64().expect("an exchange id");
    assert_eq!(
        credit(&c, &s, &key, "v-2", "NM0000000001", "K-V2", 5).status(),
        201
    );
    assert_eq!(ws.balance("NM0000000001"), before + 75);

    let verify = |ws: &Workspace| ws.run(&["verify"]);
    let out = verify(&ws);
    assert!(out.status.success(), "verify after API credits: {out:?}");

    let id = id.to_string();
    ws.ok(&["reverse", "--exchange", &id, "--reason", "test reversal"]);
    assert_eq!(ws.balance("NM0000000001"), before + 5);
    let out = verify(&ws);
    assert!(out.status.success(), "verify after the reversal: {out:?}");
    // Twice is once.
    ws.ok(&["reverse", "--exchange", &id, "--reason", "again"]);
    assert_eq!(ws.balance("NM0000000001"), before + 5);
    ws.assert_balances_match_ledger();
}

/// `[server] metrics_listen`: serve's `/metrics` counts API requests by
/// matched route template (never the raw path) and status, with a latency
/// histogram, and exports the same credit figures as the daemon.
#[test]
fn serve_metrics_count_requests_by_route_and_status() {
    use common::serve::{metrics_url, sample, scrape};
    let ca = TestCa::new();
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "{}metrics_listen = \"127.0.0.1:0\"\n\n{}{API}\n",
            tls_server_section(&ca),
            ws.scheduled_partner("shop", "daily 03:00"),
        ),
    );
    ws.demo_members();
    let s = Serve::start(&ws, Some(ca));
    common::workspace::wait_for(
        "serve to log its metrics URL",
        Duration::from_secs(30),
        || metrics_url(&s.log_text()).is_some(),
    );
    let url = metrics_url(&s.log_text()).unwrap();
    let c = s.client();
    let key = new_key(&ws, "shop");
    for i in 0..2 {
        let r = credit(
            &c,
            &s,
            &key,
            &format!("m-{i}"),
            "NM0000000001",
            &format!("O-{i}"),
            5,
        );
        assert_eq!(r.status(), 201);
    }
    let id = json(credit(&c, &s, &key, "m-0", "NM0000000001", "O-0", 5))["id"]
        .as_i64()
        .unwrap();
    problem(credit(&c, &s, &key, "m-x", "NM9999999999", "O-x", 5), 422);
    problem(
        credit(&c, &s, "mbk_wrong", "m-y", "NM0000000001", "O-y", 5),
        401,
    );
    let r = c
        .get(s.url(&format!("/api/v1/exchanges/{id}")))
        .bearer_auth(&key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    problem(c.get(s.url("/no/such/path")).send().unwrap(), 404);

    let text = scrape(&url);
    let req = |route: &str, status: u16| {
        sample(
            &text,
            &format!("milebatch_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"),
        )
    };
    // Two credits and one replay of the first: 201 all three.
    assert_eq!(req("/api/v1/exchanges", 201), Some(3.0), "{text}");
    assert_eq!(req("/api/v1/exchanges", 422), Some(1.0), "{text}");
    assert_eq!(req("/api/v1/exchanges", 401), Some(1.0), "{text}");
    assert_eq!(req("/api/v1/exchanges/{id}", 200), Some(1.0), "{text}");
    assert_eq!(req("unmatched", 404), Some(1.0), "{text}");
    assert!(req("/healthz", 200).unwrap() >= 1.0, "{text}");
    assert!(!text.contains("/no/such/path"), "{text}");
    assert!(
        !text.contains(&format!("/api/v1/exchanges/{id}\"")),
        "{text}"
    );
    let count = |route: &str| {
        sample(
            &text,
            &format!("milebatch_http_request_duration_seconds_count{{route=\"{route}\"}}"),
        )
    };
    assert_eq!(count("/api/v1/exchanges"), Some(5.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "milebatch_http_request_duration_seconds_bucket{route=\"/api/v1/exchanges\",le=\"+Inf\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_credits_total{partner=\"shop\",channel=\"api\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_miles_total{partner=\"shop\",channel=\"api\"}"
        ),
        Some(10.0),
        "{text}"
    );
    // Read incrementally: one more credit shows at the next scrape.
    assert_eq!(
        credit(&c, &s, &key, "m-3", "NM0000000002", "O-3", 7).status(),
        201
    );
    let text = scrape(&url);
    assert_eq!(
        sample(
            &text,
            "milebatch_credits_total{partner=\"shop\",channel=\"api\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "milebatch_miles_total{partner=\"shop\",channel=\"api\"}"
        ),
        Some(17.0),
        "{text}"
    );
}

/// Crash safety: `serve` killed with SIGKILL under load (16 clients, a
/// unique Idempotency-Key per request). Every 201 a client got is in the
/// ledger exactly once; the only other API rows are requests that were in
/// flight at the kill (no answer); retried with their keys after a restart,
/// those credit at most once; the answered ones replay the same answer; and
/// the balances equal the ledger.
#[test]
fn sigkill_under_load_loses_no_answered_credit_and_credits_nothing_twice() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    const FAST: &str =
        "[partner.api]\nenabled = true\nrate = \"100000/s\"\ndaily_miles_limit = 100000000\n";
    let (ws, mut s) = setup(FAST);
    let key = new_key(&ws, "shop");
    let stop = AtomicBool::new(false);
    let body = |k: &str| {
        let member = if k.ends_with(['0', '2', '4', '6', '8']) {
            "NM0000000001"
        } else {
            "NM0000000002"
        };
        serde_json::json!({"member": member, "partner_key": format!("PK-{k}"), "miles": 3})
            .to_string()
    };
    // Per key: Some(the 201 body) or None (no answer: in flight at the kill).
    let sent: BTreeMap<String, Option<String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let (s, key, stop, body) = (&s, &key, &stop, &body);
                sc.spawn(move || {
                    let c = s.client();
                    let mut mine = BTreeMap::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = format!("crash-{t}-{i}");
                        let answer = match post(&c, s, key, &k, &body(&k)).send() {
                            Ok(r) if r.status() == 201 => Some(r.text().unwrap()),
                            Ok(r) => panic!("{k}: {} {}", r.status(), r.text().unwrap()),
                            // The server died under this request: it may or may not
                            // have committed. The client stops, as it would.
                            Err(_) => {
                                mine.insert(k, None);
                                break;
                            }
                        };
                        mine.insert(k, answer);
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        unsafe { libc::kill(s.pid() as i32, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let answered: Vec<(&String, i64)> = sent
        .iter()
        .filter_map(|(k, b)| {
            let v: serde_json::Value = serde_json::from_str(b.as_ref()?).unwrap();
            Some((k, v["id"].as_i64().unwrap()))
        })
        .collect();
    let in_flight = sent.len() - answered.len();
    assert!(
        answered.len() >= 50,
        "too little load to mean anything: {}",
        answered.len()
    );
    assert!(in_flight >= 1, "the kill hit no request");

    // Before any retry: every answered credit is there exactly once.
    let db = ws.db();
    for (k, id) in &answered {
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM ledger l JOIN api_exchanges e ON e.id = l.dup
                 WHERE l.file_id = 0 AND l.dup = ?1 AND e.idem_key = ?2 AND l.partner_key = ?3",
                rusqlite::params![id, k, format!("PK-{k}")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 1,
            "{k} (id {id}) answered 201 but is in the ledger {n} times"
        );
    }
    let api_rows: i64 = ws.int("SELECT count(*) FROM ledger WHERE file_id = 0");
    assert!(
        api_rows >= answered.len() as i64 && api_rows <= sent.len() as i64,
        "{api_rows} API ledger rows for {} answered of {} sent",
        answered.len(),
        sent.len()
    );
    // Nothing but what was sent: every API row's key is one a client used.
    let mut keys = db.prepare("SELECT idem_key FROM api_exchanges").unwrap();
    for k in keys.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        let k = k.unwrap();
        assert!(sent.contains_key(&k), "an exchange nobody sent: {k}");
    }
    ws.assert_balances_match_ledger();
    eprintln!(
        "sent {}, answered 201 {}, no answer {in_flight}, API ledger rows at the kill {api_rows}",
        sent.len(),
        answered.len()
    );
    drop(keys);
    drop(db);

    // Restart; clients retry what got no answer, and replay one answered key.
    let ca = s.ca.take();
    drop(s);
    let s = Serve::start(&ws, ca);
    let c = s.client();
    for (k, b) in &sent {
        let r = post(&c, &s, &key, k, &body(k)).send().unwrap();
        assert_eq!(r.status(), 201, "{k}");
        let replayed = r.headers().get("idempotent-replayed").is_some();
        let text = r.text().unwrap();
        if let Some(first) = b {
            assert!(replayed, "{k}");
            assert_eq!(&text, first, "{k}: the replay is the first answer");
        }
    }
    assert_eq!(
        ws.int("SELECT count(*) FROM ledger WHERE file_id = 0"),
        sent.len() as i64,
        "one credit per key sent, none twice"
    );
    assert_eq!(
        ws.int("SELECT count(DISTINCT partner_key) FROM ledger WHERE file_id = 0"),
        sent.len() as i64
    );
    assert_eq!(
        ws.balance("NM0000000001") + ws.balance("NM0000000002"),
        3 * sent.len() as i64
    );
    ws.assert_balances_match_ledger();
}

/// A reversed credit reads back as reversed, Stripe-style: the credit keeps
/// its miles and gains `reversed: true` and `reversal` (id, when, why),
/// from `GET /exchanges/{id}` and in the list, where the compensating rows
/// are not entries of their own; a credit not reversed has `reversal: null`.
#[test]
fn a_reversed_credit_reads_back_as_reversed() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    std::fs::write(ws.inbox("shop").join("r.csv"), "NM0000000002,K-R,30\n").unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    let file_id = ws.int("SELECT id FROM files WHERE partner = 'shop'");
    let a = json(credit(&c, &s, &key, "ra", "NM0000000001", "K-R", 70))["id"]
        .as_i64()
        .unwrap();
    let b = json(credit(&c, &s, &key, "rb", "NM0000000001", "K-R", 5))["id"]
        .as_i64()
        .unwrap();
    ws.ok(&[
        "reverse",
        "--exchange",
        &a.to_string(),
        "--reason",
        "partner asked",
    ]);
    ws.ok(&[
        "reverse",
        "--file",
        &file_id.to_string(),
        "--reason",
        "wrong file",
    ]);
    let rev_a = ws.int(&format!("SELECT id FROM reversals WHERE exchange = {a}"));
    let rev_f = ws.int(&format!(
        "SELECT id FROM reversals WHERE file_id = {file_id}"
    ));

    let get = |id: i64| {
        let r = c
            .get(s.url(&format!("/api/v1/exchanges/{id}")))
            .bearer_auth(&key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        json(r)
    };
    let v = get(a);
    assert_eq!(v["miles"], 70, "{v}");
    assert_eq!(v["reversed"], true, "{v}");
    assert_eq!(v["reversal"]["id"], rev_a, "{v}");
    assert_eq!(v["reversal"]["reason"], "partner asked", "{v}");
    let at = v["reversal"]["reversed_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
        "{v}"
    );
    assert!(v["reversal"].get("actor").is_none(), "{v}");
    let v = get(b);
    assert_eq!(v["reversed"], false, "{v}");
    assert_eq!(v["reversal"], serde_json::Value::Null, "{v}");

    let v = json(
        c.get(s.url("/api/v1/exchanges?partner_key=K-R"))
            .bearer_auth(&key)
            .send()
            .unwrap(),
    );
    let credits = v["credits"].as_array().unwrap();
    assert_eq!(credits.len(), 3, "credits only, no compensating rows: {v}");
    assert!(
        credits.iter().all(|c| c["miles"].as_i64().unwrap() > 0),
        "{v}"
    );
    let by = |f: &dyn Fn(&serde_json::Value) -> bool| {
        credits
            .iter()
            .find(|c| f(c))
            .unwrap_or_else(|| panic!("{v}"))
    };
    let fa = by(&|c| c["id"] == a);
    assert_eq!(
        (fa["reversed"].clone(), fa["reversal"]["id"].clone()),
        (true.into(), rev_a.into())
    );
    let fb = by(&|c| c["id"] == b);
    assert_eq!(fb["reversed"], false);
    let ff = by(&|c| c["file_id"] == file_id);
    assert_eq!(ff["reversed"], true, "{v}");
    assert_eq!(ff["reversal"]["id"], rev_f, "{v}");
    assert_eq!(ff["reversal"]["reason"], "wrong file", "{v}");
    ws.assert_balances_match_ledger();
}
