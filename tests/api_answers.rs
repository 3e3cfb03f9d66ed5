//! What the partner API answers, on the real `milebatch serve` over TLS:
//! a disabled partner gets its 403 on every call, reads included; the
//! served OpenAPI document is valid (a real validator) and exact (every
//! documented status is reached, nothing answered is undocumented); text
//! with control characters, big numbers, a repeated `Idempotency-Key` and
//! a forged paging cursor get the same codes a CSV row would.

mod common;

use common::serve::{json, tls_server_section, Serve};
use common::servers::TestCa;
use common::workspace::Workspace;
use reqwest::blocking::{Client, RequestBuilder, Response};
use std::time::Duration;

/// A plain-HTTP `[server]` on loopback.
const PLAIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

const API: &str = "[partner.api]\nenabled = true\ndaily_miles_limit = 1000000\n";

/// `partners.toml` for partner `shop` with `shop_api` and partner `other`
/// with the API on, served with `server` (a `[server]` section).
fn config(ws: &Workspace, server: &str, shop_api: &str) {
    ws.write_config(
        "",
        &format!(
            "{server}\n{}{shop_api}\n{}{API}\n",
            ws.scheduled_partner("shop", "daily 03:00"),
            ws.scheduled_partner("other", "daily 03:00"),
        ),
    );
}

fn setup(shop_api: &str) -> (Workspace, Serve) {
    let ca = TestCa::new();
    let ws = Workspace::new();
    config(&ws, &tls_server_section(&ca), shop_api);
    ws.demo_members();
    let s = Serve::start(&ws, Some(ca));
    (ws, s)
}

fn new_key(ws: &Workspace, partner: &str) -> String {
    ws.ok(&["api-key", "create", "--partner", partner, "--label", "test"])
        .trim()
        .to_owned()
}

fn post(c: &Client, s: &Serve, key: &str, idem: &str, body: &str) -> RequestBuilder {
    c.post(s.url("/api/v1/exchanges"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(body.to_owned())
}

fn credit(c: &Client, s: &Serve, key: &str, idem: &str, body: serde_json::Value) -> Response {
    post(c, s, key, idem, &body.to_string()).send().unwrap()
}

fn problem(r: Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status(), status, "{:?}", r.headers());
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v = json(r);
    assert_eq!(v["status"], status, "{v}");
    v
}

#[test]
fn a_disabled_partner_gets_403_on_every_call_reads_included() {
    // Plain HTTP on loopback: the server is started twice, and a TLS
    // server's certificate lives only as long as its `Serve`.
    let server = PLAIN;
    let ws = Workspace::new();
    config(&ws, server, API);
    ws.demo_members();
    let key = new_key(&ws, "shop");
    // A credit by the API and one by file, while the API is on.
    let id = {
        let s = Serve::start(&ws, None);
        let c = s.client();
        let r = credit(
            &c,
            &s,
            &key,
            "a",
            serde_json::json!({"member": "NM0000000001", "partner_key": "K-1", "miles": 10}),
        );
        assert_eq!(r.status(), 201);
        json(r)["id"].as_i64().unwrap()
    };
    std::fs::write(ws.inbox("shop").join("x.csv"), "NM0000000002,K-1,30\n").unwrap();
    ws.ok(&["once", "--partner", "shop"]);

    // Then the operator turns the partner's API off.
    config(&ws, server, "[partner.api]\nenabled = false\n");
    let s = Serve::start(&ws, None);
    let c = s.client();
    let calls: Vec<(&str, RequestBuilder)> = vec![
        (
            "search",
            c.get(s.url("/api/v1/exchanges?partner_key=K-1"))
                .bearer_auth(&key),
        ),
        (
            "one",
            c.get(s.url(&format!("/api/v1/exchanges/{id}")))
                .bearer_auth(&key),
        ),
        (
            "unknown id",
            c.get(s.url("/api/v1/exchanges/999999")).bearer_auth(&key),
        ),
        (
            "create",
            post(
                &c,
                &s,
                &key,
                "b",
                r#"{"member":"NM0000000001","partner_key":"K-2","miles":1}"#,
            ),
        ),
        (
            "verify",
            c.post(s.url("/api/v1/members/verify"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(r#"{"member_id":"NM0000000001","email":"taro.yamada@example.jp"}"#),
        ),
    ];
    for (what, req) in calls {
        let v = problem(req.send().unwrap(), 403);
        assert_eq!(v["type"], "/problems/api-disabled", "{what}: {v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("[partner.api] enabled"),
            "{what}: {v}"
        );
    }
    // Nothing was credited by the refused call.
    assert_eq!(ws.ledger_rows(), 2);
    // The other partner's reads still work.
    let other = new_key(&ws, "other");
    let r = c
        .get(s.url("/api/v1/exchanges?partner_key=K-1"))
        .bearer_auth(&other)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The Python virtualenv `.ci/install-deps.sh` makes, with
/// openapi-spec-validator and schemathesis.
const PYVENV: &str = "/opt/milebatch-test/pyvenv";

fn venv_tool(name: &str) -> String {
    let path = format!("{PYVENV}/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: run `bash .ci/install-deps.sh` as root (it makes {PYVENV} with \
         openapi-spec-validator and schemathesis from PyPI)"
    );
    path
}

/// Partners `shop` (API on, `unique_partner_key`), `off` (API off) and
/// `tiny` (5 miles and 1 verify call a day), on plain HTTP on loopback (so
/// that raw bytes can reach it).
fn three_partners() -> (Workspace, Serve) {
    let ws = Workspace::new();
    let unique = |p: String| {
        p.replace(
            "[partner.source]",
            "unique_partner_key = true\n[partner.source]",
        )
    };
    ws.write_config(
        "",
        &format!(
            "{PLAIN}{}{API}\n{}[partner.api]\nenabled = false\n\n{}\
             [partner.api]\nenabled = true\ndaily_miles_limit = 5\ndaily_verify_limit = 1\n",
            unique(ws.scheduled_partner("shop", "daily 03:00")),
            ws.scheduled_partner("off", "daily 03:00"),
            ws.scheduled_partner("tiny", "daily 03:00"),
        ),
    );
    ws.demo_members();
    let s = Serve::start(&ws, None);
    (ws, s)
}

/// What a tool printed, stdout then stderr.
fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Raw bytes to the plain-HTTP server: what no HTTP library would send.
fn raw(base: &str, bytes: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = t.write_all(&bytes);
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_served_openapi_document_is_valid_openapi_3_1() {
    let (ws, s) = three_partners();
    let r = s
        .client()
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let path = ws.write("openapi.json", r.bytes().unwrap());
    let out = std::process::Command::new(venv_tool("openapi-spec-validator"))
        .arg(&path)
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(out.status.success(), "openapi-spec-validator:\n{text}");
    assert!(text.contains("OK"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let search = v["paths"]["/api/v1/exchanges"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "partner_key")
        .unwrap();
    assert_eq!(
        search["required"], true,
        "the server answers 400 without it"
    );
}

/// Every response the document lists for every operation is reached on the
/// running server, with that status and a problem+json body for errors;
/// and the server answers nothing else here. Likewise the `code` enum: each
/// code is answered, and every answered code is in it.
#[test]
fn every_documented_answer_is_reached_and_nothing_else() {
    use std::collections::BTreeSet;
    let (ws, s) = three_partners();
    let c = s.client();
    let spec = json(c.get(s.url("/api/v1/openapi.json")).send().unwrap());
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, answer) in op["responses"].as_object().unwrap() {
                assert!(
                    answer["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
                documented.insert(format!("{method} {path} {status}"));
            }
        }
    }
    let codes: BTreeSet<String> = spec["components"]["schemas"]["RowCode"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no RowCode enum: {:#}", spec["components"]))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();

    let shop = new_key(&ws, "shop");
    let off = new_key(&ws, "off");
    let tiny = new_key(&ws, "tiny");
    let mut reached = BTreeSet::new();
    let mut seen_codes = BTreeSet::new();
    let mut expect = |op: &str, status: u16, r: Response| {
        let got = r.status().as_u16();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        let body = r.text().unwrap();
        assert_eq!(got, status, "{op}: {body}");
        if status >= 400 {
            assert_eq!(ctype, "application/problem+json", "{op} {status}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(code) = v["code"].as_str() {
                seen_codes.insert(code.to_owned());
            }
        }
        reached.insert(format!("{op} {status}"));
    };
    const EX: &str = "post /api/v1/exchanges";
    const SEARCH: &str = "get /api/v1/exchanges";
    const ONE: &str = "get /api/v1/exchanges/{id}";
    const VERIFY: &str = "post /api/v1/members/verify";
    let body = |member: &str, pk: &str, miles: &str| {
        format!(
            r#"{{"member":{},"partner_key":{},"miles":{miles}}}"#,
            serde_json::json!(member),
            serde_json::json!(pk)
        )
    };
    let verify = |key: &str, body: &str| {
        c.post(s.url("/api/v1/members/verify"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    const YES: &str = r#"{"member_id":"NM0000000001","email":"taro.yamada@example.jp"}"#;

    // 408: bodies that never arrive whole, beside the rest (10 s).
    let slow: Vec<_> = [("exchanges", EX), ("members/verify", VERIFY)]
        .into_iter()
        .map(|(route, op)| {
            let (base, key) = (s.base.clone(), shop.clone());
            std::thread::spawn(move || {
                let req = format!(
                    "POST /api/v1/{route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                     Content-Type: application/json\r\nIdempotency-Key: slow\r\n\
                     Content-Length: 100\r\n\r\n{{\"member\":"
                );
                (op, raw(&base, req.into_bytes()))
            })
        })
        .collect();

    // POST /api/v1/exchanges
    let ok = post(&c, &s, &shop, "ok", &body("NM0000000001", "K-1", "10"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 201);
    let id = json(ok)["id"].as_i64().unwrap();
    expect(
        EX,
        400,
        c.post(s.url("/api/v1/exchanges"))
            .bearer_auth(&shop)
            .header("content-type", "application/json")
            .body(body("NM0000000001", "K-2", "1"))
            .send()
            .unwrap(),
    );
    expect(
        EX,
        401,
        post(&c, &s, "mbk_nope", "a", &body("NM0000000001", "K-2", "1"))
            .send()
            .unwrap(),
    );
    expect(
        EX,
        403,
        post(&c, &s, &off, "a", &body("NM0000000001", "K-2", "1"))
            .send()
            .unwrap(),
    );
    expect(
        EX,
        415,
        c.post(s.url("/api/v1/exchanges"))
            .bearer_auth(&shop)
            .header("content-type", "text/plain")
            .header("idempotency-key", "a")
            .body(body("NM0000000001", "K-2", "1"))
            .send()
            .unwrap(),
    );
    for (i, (member, pk, miles)) in [
        (" ", "K", "1"),
        ("NM9999999999", "K", "1"),
        ("NM0000000003", "K", "1"),
        ("NM0000000001", "", "1"),
        ("NM0000000001", "K", "0"),
        ("NM0000000001", "K", "100001"),
        ("NM0000000001", "K\u{1b}[31m", "1"),
        ("NM0000000001", "K-1", "1"),
    ]
    .into_iter()
    .enumerate()
    {
        expect(
            EX,
            422,
            post(
                &c,
                &s,
                &shop,
                &format!("code-{i}"),
                &body(member, pk, miles),
            )
            .send()
            .unwrap(),
        );
    }
    expect(
        EX,
        429,
        post(&c, &s, &tiny, "big", &body("NM0000000001", "T", "6"))
            .send()
            .unwrap(),
    );
    {
        // 409: the same key again while the first is still in the writer
        // (held up by a write lock taken here).
        let db = ws.db();
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        let first = {
            let (c, url, key, b) = (
                c.clone(),
                s.url("/api/v1/exchanges"),
                shop.clone(),
                body("NM0000000001", "K-9", "1"),
            );
            std::thread::spawn(move || {
                c.post(url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .header("idempotency-key", "held")
                    .body(b)
                    .send()
                    .unwrap()
                    .status()
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        expect(
            EX,
            409,
            post(&c, &s, &shop, "held", &body("NM0000000001", "K-9", "1"))
                .send()
                .unwrap(),
        );
        db.execute_batch("ROLLBACK").unwrap();
        assert_eq!(first.join().unwrap(), 201);
    }

    // GET /api/v1/exchanges and /api/v1/exchanges/{id}
    let get = |key: &str, path: &str| c.get(s.url(path)).bearer_auth(key).send().unwrap();
    expect(SEARCH, 200, get(&shop, "/api/v1/exchanges?partner_key=K-1"));
    expect(SEARCH, 400, get(&shop, "/api/v1/exchanges"));
    expect(
        SEARCH,
        401,
        get("mbk_nope", "/api/v1/exchanges?partner_key=K-1"),
    );
    expect(SEARCH, 403, get(&off, "/api/v1/exchanges?partner_key=K-1"));
    expect(ONE, 200, get(&shop, &format!("/api/v1/exchanges/{id}")));
    expect(
        ONE,
        401,
        get("mbk_nope", &format!("/api/v1/exchanges/{id}")),
    );
    expect(ONE, 403, get(&off, &format!("/api/v1/exchanges/{id}")));
    expect(ONE, 404, get(&shop, "/api/v1/exchanges/999999"));

    // POST /api/v1/members/verify
    expect(VERIFY, 200, verify(&shop, YES).send().unwrap());
    expect(VERIFY, 400, verify(&shop, "{}").send().unwrap());
    expect(VERIFY, 401, verify("mbk_nope", YES).send().unwrap());
    expect(VERIFY, 403, verify(&off, YES).send().unwrap());
    expect(
        VERIFY,
        415,
        c.post(s.url("/api/v1/members/verify"))
            .bearer_auth(&shop)
            .header("content-type", "text/plain")
            .body(YES)
            .send()
            .unwrap(),
    );
    expect(VERIFY, 200, verify(&tiny, YES).send().unwrap());
    expect(VERIFY, 429, verify(&tiny, YES).send().unwrap());

    // 500: the database fails under each route, then recovers.
    let db = ws.db();
    db.execute_batch(
        "CREATE TRIGGER fault_bal BEFORE INSERT ON balances BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
         CREATE TRIGGER fault_upd BEFORE UPDATE ON balances BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
         CREATE TRIGGER fault_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();
    expect(
        EX,
        500,
        post(&c, &s, &shop, "f", &body("NM0000000002", "K-F", "1"))
            .send()
            .unwrap(),
    );
    expect(VERIFY, 500, verify(&shop, YES).send().unwrap());
    db.execute_batch(
        "DROP TRIGGER fault_bal; DROP TRIGGER fault_upd; DROP TRIGGER fault_audit;
                      ALTER TABLE ledger RENAME TO ledger_away;",
    )
    .unwrap();
    expect(SEARCH, 500, get(&shop, "/api/v1/exchanges?partner_key=K-1"));
    expect(ONE, 500, get(&shop, &format!("/api/v1/exchanges/{id}")));
    db.execute_batch("ALTER TABLE ledger_away RENAME TO ledger;")
        .unwrap();
    expect(ONE, 200, get(&shop, &format!("/api/v1/exchanges/{id}")));

    reached.insert(format!("{EX} 201"));
    for t in slow {
        let (op, answer) = t.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{op}: {answer}");
        assert!(
            answer.contains("application/problem+json"),
            "{op}: {answer}"
        );
        reached.insert(format!("{op} 408"));
    }

    assert_eq!(
        documented, reached,
        "documented (left) and answered (right) must be the same"
    );
    assert_eq!(
        codes, seen_codes,
        "the `code` enum (left) and the codes answered (right)"
    );
}

/// The codes of a row report (every row failed, none quoted with `,E0`):
/// the code ending each record, in order.
fn report_codes(report: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(report);
    text.match_indices(",E0")
        .filter(|(i, _)| {
            let rest = &text[i + 5..];
            rest.is_empty() || rest.starts_with('\n') || rest.starts_with('\r')
        })
        .map(|(i, _)| text[i + 1..i + 5].to_owned())
        .collect()
}

/// Control characters and big numbers get the same code from a CSV row
/// and from the API: E009 for a control character in the member or the
/// partner key (NUL as before, and tab, CR/LF, ESC, DEL, C1), and the
/// miles rule on the number's text (digits only; beyond the maximum E007
/// however large; a sign, fraction or exponent E006, 1e309 included).
#[test]
fn a_csv_row_and_an_api_call_get_the_same_code_for_the_same_value() {
    let ca = TestCa::new();
    let ws = Workspace::new();
    config(&ws, &tls_server_section(&ca), API);
    ws.demo_members();
    let controls = [
        "\0",
        "\t",
        "\r\n",
        "\u{1b}[31m",
        "\u{7f}",
        "\u{85}",
        "\u{9b}",
    ];
    let mut cases: Vec<(String, String, String)> = Vec::new();
    for c in controls {
        cases.push((format!("NM0000000001{c}"), "K-M".into(), "1".into()));
        cases.push(("NM0000000001".into(), format!("K{c}X"), "1".into()));
    }
    for miles in [
        "18446744073709551616",           // 2^64
        "100000000000000000000000000000", // 10^29
        "9223372036854775808",            // 2^63
        "1e309",
        "1E3",
        "5.0",
        "-5",
        "0",
    ] {
        cases.push(("NM0000000001".into(), "K-N".into(), miles.into()));
    }
    // The CSV path: one file, every field quoted (CR/LF may sit in quotes).
    let file: String = cases
        .iter()
        .map(|(m, k, n)| format!("\"{m}\",\"{k}\",{n}\n"))
        .collect();
    std::fs::write(ws.inbox("shop").join("c.csv"), &file).unwrap();
    let (_, run) = ws.once_json("shop", &[]);
    let csv_codes = report_codes(&std::fs::read(ws.report_of(&run["files"][0])).unwrap());
    assert_eq!(csv_codes.len(), cases.len(), "{run:#}");

    // The API path: the same values, the number's text as written.
    let s = Serve::start(&ws, Some(ca));
    let c = s.client();
    let key = new_key(&ws, "shop");
    let api_codes: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (m, k, n))| {
            let body = format!(
                r#"{{"member":{},"partner_key":{},"miles":{n}}}"#,
                serde_json::json!(m),
                serde_json::json!(k)
            );
            let v = problem(
                post(&c, &s, &key, &format!("c{i}"), &body).send().unwrap(),
                422,
            );
            v["code"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<&str> = std::iter::repeat_n("E009", controls.len() * 2)
        .chain([
            "E007", "E007", "E007", "E006", "E006", "E006", "E006", "E006",
        ])
        .collect();
    assert_eq!(csv_codes, expected, "CSV");
    assert_eq!(api_codes, expected, "API");
    assert_eq!(ws.ledger_rows(), 0);
    // A number JSON cannot carry as a number is not a number: 400.
    problem(
        post(
            &c,
            &s,
            &key,
            "s",
            r#"{"member":"NM0000000001","partner_key":"K","miles":"5"}"#,
        )
        .send()
        .unwrap(),
        400,
    );
}

#[test]
fn two_idempotency_keys_are_refused() {
    let (ws, s) = setup(API);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let body = r#"{"member":"NM0000000001","partner_key":"K-1","miles":10}"#;
    for (a, b) in [("k-1", "k-2"), ("k-1", "k-1")] {
        let v = problem(
            c.post(s.url("/api/v1/exchanges"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .header("idempotency-key", a)
                .header("idempotency-key", b)
                .body(body)
                .send()
                .unwrap(),
            400,
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("one `Idempotency-Key`"),
            "{v}"
        );
    }
    assert_eq!(ws.ledger_rows(), 0);
    assert_eq!(
        post(&c, &s, &key, "k-1", body).send().unwrap().status(),
        201
    );
}

/// The paging cursor is opaque (not JSON, no row ids in it) and sealed:
/// an edited, hand-made or another partner key's cursor is a 400; the
/// one given out still walks every row once, also after a restart.
#[test]
fn a_forged_paging_cursor_is_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Plain HTTP on loopback: the server is restarted below, and a TLS
    // server's certificate lives only as long as its `Serve`.
    let ws = Workspace::new();
    config(&ws, PLAIN, API);
    ws.demo_members();
    let s = Serve::start(&ws, None);
    let c = s.client();
    let key = new_key(&ws, "shop");
    let rows: String = (1..=150)
        .map(|i| format!("NM0000000001,K-P,{i}\n"))
        .collect();
    std::fs::write(ws.inbox("shop").join("p.csv"), rows).unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    std::fs::write(ws.inbox("shop").join("q.csv"), "NM0000000001,K-Q,1\n").unwrap();
    ws.ok(&["once", "--partner", "shop"]);
    let search = |q: &str| {
        c.get(s.url(&format!("/api/v1/exchanges?{q}")))
            .bearer_auth(&key)
            .send()
            .unwrap()
    };
    let p1 = json(search("partner_key=K-P"));
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let raw = b64.decode(&cursor).unwrap();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&raw).is_err(),
        "not JSON"
    );
    // The member's internal id (1) and the file id are not readable in it.
    assert!(!raw.windows(8).any(|w| w == 1i64.to_be_bytes()), "{raw:?}");

    let forged = [
        // What the old cursor was: base64 JSON of the ledger key.
        b64.encode(b"[1,1,100,0]"),
        b64.encode(b"[-1,-1,-1,-1]"),
        // The real one, one bit changed; shortened; lengthened.
        {
            let mut r = raw.clone();
            r[3] ^= 0x40;
            b64.encode(r)
        },
        cursor[..cursor.len() - 3].to_owned(),
        format!("{cursor}AAAA"),
    ];
    for f in &forged {
        let v = problem(search(&format!("partner_key=K-P&cursor={f}")), 400);
        assert!(v["detail"].as_str().unwrap().contains("cursor"), "{v}");
    }
    // Given for K-P, it does not page K-Q.
    problem(search(&format!("partner_key=K-Q&cursor={cursor}")), 400);
    // The real one pages on, also after a restart (the key is in the database).
    drop(s);
    let s = Serve::start(&ws, None);
    let p2 = json(
        s.client()
            .get(s.url(&format!(
                "/api/v1/exchanges?partner_key=K-P&cursor={cursor}"
            )))
            .bearer_auth(&key)
            .send()
            .unwrap(),
    );
    assert_eq!(p2["credits"].as_array().unwrap().len(), 50);
    assert_eq!(p2["next_cursor"], serde_json::Value::Null);
}

/// schemathesis (PyPI) against the running server, bounded in examples
/// and time: every answer must match the document (status, content type,
/// headers, body schema), no 5xx, auth never ignored. Two rejections the
/// schema cannot express are allowed: 422 for an exchange whose member does
/// not exist (or breaks another row rule) and 400 for a well-formed cursor
/// this server did not give out.
#[test]
fn schemathesis_finds_nothing() {
    let (ws, s) = three_partners();
    let key = new_key(&ws, "shop");
    let config = ws.write(
        "schemathesis.toml",
        r#"
[[operations]]
include-name = "POST /api/v1/exchanges"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = "GET /api/v1/exchanges"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"#,
    );
    // Why negative_data_rejection is excluded below: schemathesis 4.32.5
    // adds an unknown query parameter to the search, and when its shrinker
    // later drops it, the valid request that is left (200) is still
    // reported as "schema-violating request accepted" (upstream
    // schemathesis#3730 and #4332; seen in two of three full runs here,
    // and a per-operation `enabled = false` did not take). What that check
    // looks for is asserted directly: any parameter the document does not
    // name is a 400 here, and every 400/422 of the bodies is reached by
    // `every_documented_answer_is_reached_and_nothing_else`.
    for q in [
        "partner_key=K&foo=1",
        "partner_key=K&foo",
        "partner_key=K&=1",
        "partner_key=K&Partner_key=K",
        "partner_key=K&partner_key=L",
        "partner_key=K&limit=5",
    ] {
        let r = s
            .client()
            .get(s.url(&format!("/api/v1/exchanges?{q}")))
            .bearer_auth(&key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    let out = std::process::Command::new(venv_tool("st"))
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(s.url("/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "all", "--workers", "1"])
        .args(["--exclude-checks", "negative_data_rejection"])
        .args([
            "--max-examples",
            "25",
            "--max-time",
            "60",
            "--request-timeout",
            "20",
        ])
        .args(["--seed", "20261203"])
        .current_dir(ws.path(""))
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(out.status.success(), "schemathesis:\n{text}");
    assert!(text.contains("generated"), "{text}");
    assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
}

/// What the CLI's tables print of text from outside is escaped: a CR/LF
/// cannot forge a row, a tab a column, an escape sequence cannot drive the
/// operator's terminal. (The API and CSV paths refuse such text now; a
/// database from before, or a label typed by ops, can still hold it.)
#[test]
fn cli_tables_escape_what_they_print() {
    let ws = Workspace::new();
    config(&ws, PLAIN, API);
    ws.demo_members();
    let forged = "K-1\r\n9\tforged\tshop\u{1b}[31m";
    ws.ok(&[
        "api-key",
        "create",
        "--partner",
        "shop",
        "--label",
        "ops\u{1b}[2J\tx",
    ]);
    let db = ws.db();
    db.execute(
        "INSERT INTO api_exchanges(id, partner, idem_key, request_sha256, key_prefix, status, code, body, member, partner_key, miles, created_at)
         VALUES (1, 'shop', 'k', 'x', 'mbk_x', 201, NULL, '{}', 1, ?1, 5, '2026-12-01T00:00:00Z')",
        [forged],
    )
    .unwrap();
    for (args, header_tabs) in [(vec!["exchanges"], 7), (vec!["api-key", "list"], 5)] {
        let out = ws.ok(&args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\r'),
            "{args:?}: {out:?}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: one header and one row: {out:?}");
        for l in &lines {
            assert_eq!(l.matches('\t').count(), header_tabs, "{args:?}: {l:?}");
        }
        assert!(
            out.contains("\\u{1b}[") && out.contains("\\t"),
            "{args:?}: shown escaped: {out:?}"
        );
    }
    let out = ws.ok(&["exchanges"]);
    assert!(
        out.contains("K-1\\r\\n9\\tforged\\tshop\\u{1b}[31m"),
        "{out}"
    );
    let out = ws.ok(&["history", "--partner", "shop", "--key", forged]);
    assert_eq!(
        out,
        "no credits for partner shop key \"K-1\\r\\n9\\tforged\\tshop\\u{1b}[31m\"\n"
    );
}

/// `/metrics` (here `serve`'s, `[server] metrics_listen`) has every
/// series from the start, at 0: `milebatch_runs_total` for every outcome,
/// `milebatch_reversed_*` for every channel and `milebatch_refused_files_total`
/// for every file code, of every partner; and `promtool check metrics`
/// (Debian's prometheus package) finds nothing but its unit-name lint.
#[test]
fn metrics_have_their_zero_series_from_the_start_and_pass_promtool() {
    use common::serve::{metrics_url, sample, scrape};
    let ws = Workspace::new();
    ws.write_config(
        "",
        &format!(
            "{PLAIN}metrics_listen = \"127.0.0.1:0\"\n\n{}{API}\n{}{API}\n",
            ws.scheduled_partner("shop", "daily 03:00"),
            ws.scheduled_partner("other", "daily 03:00"),
        ),
    );
    let s = Serve::start(&ws, None);
    common::workspace::wait_for(
        "serve to log its metrics URL",
        Duration::from_secs(30),
        || metrics_url(&s.log_text()).is_some(),
    );
    let text = scrape(&metrics_url(&s.log_text()).unwrap());
    for p in ["shop", "other"] {
        for o in [
            "ok",
            "no-file",
            "missed",
            "refused",
            "failed",
            "skipped",
            "tidy-failed",
        ] {
            let series = format!("milebatch_runs_total{{partner=\"{p}\",outcome=\"{o}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
        }
        for ch in ["pull", "upload", "api"] {
            for m in ["credits", "miles"] {
                let series =
                    format!("milebatch_reversed_{m}_total{{partner=\"{p}\",channel=\"{ch}\"}}");
                assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
            }
        }
        for code in ["F001", "F002", "F003", "F004", "F005", "F006", "F007"] {
            let series =
                format!("milebatch_refused_files_total{{partner=\"{p}\",code=\"{code}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
        }
    }
    let promtool = "/usr/bin/promtool";
    common::servers::require_tool(promtool, "prometheus");
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = all_output(&out);
    // The one lint accepted: promtool wants units in some names
    // (`milebatch_miles_total` counts miles, not a base unit).
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("unit"))
        .collect();
    assert!(problems.is_empty(), "promtool check metrics:\n{report}");
}

/// A TLS client that names an IP address as server (SNI) is counted in
/// `milebatch_tls_sni_ip_address_total` and warned about once a minute,
/// not once per handshake (issue 20: 384 WARN lines from one load run).
#[test]
fn an_ip_address_as_sni_is_counted_and_warned_about_once_a_minute() {
    use common::serve::{metrics_url, sample, scrape};
    let openssl = "/usr/bin/openssl";
    common::servers::require_tool(openssl, "openssl");
    let ca = TestCa::new();
    let ws = Workspace::new();
    let server = format!(
        "{}metrics_listen = \"127.0.0.1:0\"\n",
        tls_server_section(&ca)
    );
    config(&ws, &server, API);
    let s = Serve::start(&ws, Some(ca));
    common::workspace::wait_for(
        "serve to log its metrics URL",
        Duration::from_secs(30),
        || metrics_url(&s.log_text()).is_some(),
    );
    let metrics = metrics_url(&s.log_text()).unwrap();
    let series = "milebatch_tls_sni_ip_address_total";
    assert_eq!(sample(&scrape(&metrics), series), Some(0.0));
    let addr = s.base.trim_start_matches("https://").to_owned();
    const HELLOS: usize = 30;
    for _ in 0..HELLOS {
        let out = std::process::Command::new(openssl)
            .args(["s_client", "-connect", &addr, "-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        // The name is ignored, the handshake goes on.
        let text = all_output(&out);
        assert!(text.contains("Verify return code"), "{text}");
    }
    common::workspace::wait_for("every hello counted", Duration::from_secs(10), || {
        sample(&scrape(&metrics), series) == Some(HELLOS as f64)
    });
    let log = s.log_text();
    let warnings = log.lines().filter(|l| l.contains("SNI")).count();
    assert_eq!(warnings, 1, "one warning for {HELLOS} hellos:\n{log}");
}
