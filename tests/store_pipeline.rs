//! One pipeline, both engines (issue 21): the same deliveries credited by
//! `milebatch once` into SQLite and into a throw-away PostgreSQL
//! (tests/common/pg.rs) must come out the same: every file's outcome, F
//! code, reason, counts and repeats, the error CSV byte for byte, the
//! ledger row for row and every balance. The files cover what the credit
//! stage decides: E003/E004/E006 before the database, E008 within a file,
//! E010 under `unique_partner_key` (within a file and against an earlier
//! one), re-sends counted (credited) and refused (F006), a duplicate
//! (F001), an empty file (F003), too many errors (F004), a header line, a
//! key with a backslash, an e-mail as the member, and a balance that
//! would overflow (F005), then `retry` of that file, twice.
//!
//! File ids are left out of the comparison: a PostgreSQL sequence does not
//! give back the id of a rolled-back insert (a refused file's first row),
//! SQLite does. Everything a partner sees by id (report names) is checked
//! by content instead.

mod common;

use std::process::Output;

use common::pg::{self, TestDb};
use common::workspace::{fixture, local_partner, Workspace, FAKE_NOW};
use serde_json::Value;

const PW_VAR: &str = "MB_TEST_DB_PASSWORD";
const NOW: &str = "2026-12-04T10:00:00+09:00";

/// One engine's side: a workspace whose `[daemon] database` is SQLite (the
/// default) or `db`.
struct Side {
    w: Workspace,
    pg: Option<TestDb>,
}

impl Side {
    fn new(pg: Option<TestDb>) -> Side {
        let w = Workspace::new();
        for inbox in ["inbox/shop", "inbox/uniq"] {
            std::fs::create_dir_all(w.path(inbox)).unwrap();
        }
        let database = match &pg {
            None => "database = \"var/milebatch.db\"\n".to_owned(),
            Some(db) => format!(
                "database = \"{}\"\ndatabase_password_env = \"{PW_VAR}\"\n",
                db.url()
            ),
        };
        w.write(
            "partners.toml",
            format!(
                "[daemon]\n{database}data_dir = \"var\"\ntimezone = \"Asia/Tokyo\"\n\n{}{}",
                local_partner(
                    "shop",
                    "inbox/shop",
                    "resend_check = \"refuse\"\nresend_ratio = 0.5\nmax_error_ratio = 0.6"
                ),
                local_partner("uniq", "inbox/uniq", "unique_partner_key = true"),
            ),
        );
        Side { w, pg }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.w
            .cmd(args)
            .env(FAKE_NOW, NOW)
            .env(PW_VAR, pg::PASSWORD)
            .output()
            .expect("run milebatch")
    }

    /// The demo members, imported the same way on both sides.
    fn seed_members(&self) {
        let csv = fixture("members.csv");
        let out = self.run(&["members", "import", csv.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `once --json` of one partner after writing `files` into its inbox:
    /// (exit code, the run's files with what differs by engine or
    /// workspace taken out, and each file's report bytes).
    fn deliver(&self, partner: &str, files: &[(&str, &[u8])]) -> (i32, Vec<Value>) {
        for (name, body) in files {
            self.w.write(&format!("inbox/{partner}/{name}"), body);
        }
        let out = self.run(&["once", "--json", "--partner", partner]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains(" ERROR "),
            "once logged an error (on {}):\n{stderr}",
            if self.pg.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            }
        );
        let mut seen = Vec::new();
        for f in v[0]["files"].as_array().unwrap() {
            let mut f = f.clone();
            let report = f["report_path"]
                .as_str()
                .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap());
            without_ids(&mut f);
            f.as_object_mut()
                .unwrap()
                .insert("report".into(), report.into());
            seen.push(f);
        }
        (out.status.code().unwrap_or(-1), seen)
    }

    /// Run a command that must succeed; its JSON on stdout.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Run a statement on this side's database (a test's own change).
    fn exec(&self, sql: &str) {
        match &self.pg {
            None => {
                self.w.db().execute_batch(sql).unwrap();
            }
            Some(db) => {
                pg::shared().psql(&db.name, sql);
            }
        }
    }

    /// `sql` (one text column) on this side's database, one string a row.
    fn rows(&self, sql: &str) -> Vec<String> {
        match &self.pg {
            None => {
                let db = self.w.db();
                let mut st = db.prepare(sql).unwrap();
                let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
                rows.map(Result::unwrap).collect()
            }
            Some(db) => pg::shared()
                .psql(&db.name, sql)
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// A file's JSON (`once`, `retry`) without what differs by engine (file
/// ids, also inside reasons: "credited as file 3") or by workspace (paths).
fn without_ids(f: &mut Value) {
    let o = f.as_object_mut().unwrap();
    for k in ["id", "file_id", "retry_of", "report_path", "archive_path"] {
        o.remove(k);
    }
    if let Some(r) = o.get("reason").and_then(Value::as_str) {
        let r = r
            .split(|c: char| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .join("#");
        o.insert("reason".into(), r.into());
    }
}

/// What a partner and ops see of the ledger, without file ids.
const LEDGER: &str = "SELECT f.partner || '|' || f.name || '|' || CAST(l.line AS TEXT) || '|' ||
        m.member_id || '|' || l.partner_key || '|' || CAST(l.miles AS TEXT) || '|' ||
        CAST(l.dup AS TEXT) || '|' || CAST(l.credited_at AS TEXT)
    FROM ledger l JOIN files f ON f.id = l.file_id JOIN members m ON m.id = l.member
    ORDER BY f.partner, f.name, l.line";
const BALANCES: &str = "SELECT m.member_id || '=' || CAST(b.miles AS TEXT)
    FROM balances b JOIN members m ON m.id = b.member ORDER BY m.member_id";
const FILES: &str = "SELECT partner || '|' || name || '|' || outcome || '|' ||
        COALESCE(file_code, '-') || '|' || CAST(rows AS TEXT) || '|' || CAST(credited AS TEXT) || '|' ||
        CAST(failed AS TEXT) || '|' || failed_by_code || '|' || CAST(miles AS TEXT) || '|' ||
        COALESCE(CAST(repeats AS TEXT), '-') || '|' || tidy || '|' || channel
    FROM files ORDER BY partner, name, outcome";

/// A partner and the files put into its inbox before one `once`.
type Delivery<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);

/// Every run's row, as `status` and the site read it, without times.
const RUNS: &str = "SELECT partner || '|' || trigger || '|' || COALESCE(outcome, '-') || '|' ||
        CAST(files AS TEXT) || '|' || CAST(rows AS TEXT) || '|' || CAST(credited AS TEXT) || '|' ||
        CAST(failed AS TEXT) || '|' || CAST(miles AS TEXT) || '|' || COALESCE(error, '-') || '|' ||
        CASE WHEN finished_at IS NULL THEN 'open' ELSE 'finished' END
    FROM runs ORDER BY id";
/// Each partner's state (catch-up, failures), without times and ids.
const STATE: &str = "SELECT partner || '|' || CAST(consecutive_failures AS TEXT) || '|' ||
        CASE WHEN last_success IS NULL THEN 'never' ELSE 'succeeded' END || '|' ||
        CASE WHEN failing_since IS NULL THEN 'ok' ELSE 'failing' END
    FROM partner_state ORDER BY partner";

#[test]
fn sqlite_and_postgres_credit_the_same_files_the_same_way() {
    let sides = [Side::new(None), Side::new(Some(pg::shared().fresh_db()))];
    let a: &[u8] = b"NM0000000001,k1,100\nNM0000000002,k2,200\nNM0000000001,k1,100\n\
        NM0000000003,k3,50\nnobody,k4,10\ntaro.yamada@example.jp,k5,7\n\
        NM0000000002,k\\6,30\nNM0000000005,k7,abc\n";
    let deliveries: Vec<Delivery<'_>> = vec![
        ("shop", vec![("a.csv", a)]),
        // Three of four rows repeat a.csv: refused as a re-send.
        (
            "shop",
            vec![(
                "b.csv",
                b"NM0000000001,k1,100\nNM0000000002,k2,200\ntaro.yamada@example.jp,k5,7\nNM0000000005,k8,1\n",
            )],
        ),
        // One of four: credited, the repeat counted.
        (
            "shop",
            vec![(
                "c.csv",
                b"NM0000000001,k1,100\nNM0000000005,k9,3\nNM0000000005,k10,4\nNM0000000002,k11,5\n",
            )],
        ),
        ("shop", vec![("a-again.csv", a)]),
        ("shop", vec![("empty.csv", b"")]),
        (
            "shop",
            vec![(
                "bad.csv",
                b"nobody,x1,1\nnobody,x2,2\nNM0000000005,x3,zz\nNM0000000005,x4,4\n",
            )],
        ),
        (
            "shop",
            vec![(
                "header.csv",
                "会員番号,キー,マイル\r\nNM0000000005,h1,11\r\nNM0000000002,h2,12\r\n".as_bytes(),
            )],
        ),
        (
            "uniq",
            vec![(
                "u1.csv",
                b"NM0000000001,u1,10\nNM0000000002,u2,20\nNM0000000001,u1,10\nNM0000000002,u1,10\n",
            )],
        ),
        ("uniq", vec![("u2.csv", b"NM0000000001,u1,10\nNM0000000001,u3,5\n")]),
    ];
    let mut seen: Vec<Vec<(i32, Vec<Value>)>> = vec![Vec::new(), Vec::new()];
    // Last, a balance one credit short of the largest BIGINT: the file
    // that would pass it is refused (F005) and the balance left as it was.
    let near_max = "UPDATE balances SET miles = 9223372036854775000
        WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000005')";
    let overflow: &[u8] = b"NM0000000002,o1,5\nNM0000000005,o2,900\n";
    for (i, side) in sides.iter().enumerate() {
        side.seed_members();
        for (partner, files) in &deliveries {
            seen[i].push(side.deliver(partner, files));
        }
        let before = side.rows(BALANCES);
        side.exec(near_max);
        seen[i].push(side.deliver("shop", &[("overflow.csv", overflow)]));
        let kept = side.rows(BALANCES);
        let back: Vec<&str> = before
            .iter()
            .map(|b| b.split('=').collect::<Vec<_>>()[1])
            .collect();
        let five = before
            .iter()
            .position(|b| b.starts_with("NM0000000005="))
            .unwrap();
        assert_eq!(kept[five], "NM0000000005=9223372036854775000", "{kept:?}");
        side.exec(&format!(
            "UPDATE balances SET miles = {} WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000005')",
            back[five]
        ));
        assert_eq!(side.rows(BALANCES), before);
        // With the balance back, `retry` credits the refused file's
        // archived bytes, once; a second retry is refused.
        let files: Value = serde_json::from_slice(&side.run(&["files", "--json"]).stdout).unwrap();
        let id = files
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "overflow.csv")
            .unwrap()["id"]
            .to_string();
        for (attempt, code) in [(1, 0), (2, 1)] {
            let out = side.run(&["retry", "--file", &id, "--json"]);
            let mut v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("retry: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
            assert_eq!(out.status.code(), Some(code), "retry {attempt}: {v:#}");
            without_ids(&mut v);
            seen[i].push((code, vec![v]));
        }
    }
    for (step, (sqlite, postgres)) in seen[0].iter().zip(&seen[1]).enumerate() {
        assert_eq!(
            sqlite,
            postgres,
            "delivery {step} ({:?}): SQLite left, PostgreSQL right",
            deliveries
                .get(step)
                .map_or("overflow.csv, its retries", |d| d.1[0].0)
        );
    }
    // The files cover what they are meant to (on SQLite, the reference).
    let s = &seen[0];
    assert_eq!(s[0].1[0]["outcome"], "credited", "{:#?}", s[0]);
    assert_eq!(s[0].1[0]["credited"], 4, "{:#?}", s[0]);
    let report = s[0].1[0]["report"].as_str().unwrap();
    for code in ["E008", "E003", "E004", "E006"] {
        assert!(report.contains(code), "{code} in {report}");
    }
    assert_eq!(s[1].1[0]["file_code"], "F006", "{:#?}", s[1]);
    assert_eq!(s[2].1[0]["repeats"], 1, "{:#?}", s[2]);
    assert_eq!(s[3].1[0]["file_code"], "F001", "{:#?}", s[3]);
    assert_eq!(s[4].1[0]["file_code"], "F003", "{:#?}", s[4]);
    assert_eq!(s[5].1[0]["file_code"], "F004", "{:#?}", s[5]);
    assert_eq!(s[6].1[0]["credited"], 2, "{:#?}", s[6]);
    let u1 = s[7].1[0]["report"].as_str().unwrap();
    assert_eq!(u1, "NM0000000001,u1,10,E008\nNM0000000002,u1,10,E010\n");
    let u2 = s[8].1[0]["report"].as_str().unwrap();
    assert_eq!(u2, "NM0000000001,u1,10,E010\n");
    assert_eq!(s[9].1[0]["file_code"], "F005", "{:#?}", s[9]);
    assert!(
        s[9].1[0]["reason"]
            .as_str()
            .unwrap()
            .contains("overflow the balance of member"),
        "{:#?}",
        s[9]
    );

    for sql in [LEDGER, BALANCES, FILES, RUNS, STATE] {
        let (sqlite, postgres) = (sides[0].rows(sql), sides[1].rows(sql));
        assert!(!sqlite.is_empty(), "{sql}");
        assert_eq!(sqlite, postgres, "{sql}");
    }
    // `history` reads the same credits of a key (k1: credited once, then
    // its repeat in c.csv), file ids aside.
    let mut histories = Vec::new();
    for side in &sides {
        for key in ["k1", "u1", "k\\6", "nothing"] {
            let partner = if key == "u1" { "uniq" } else { "shop" };
            let mut v = side.json(&["history", "--partner", partner, "--key", key, "--json"]);
            for r in v.as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("file_id");
            }
            histories.push(v);
        }
    }
    assert_eq!(histories[..4], histories[4..]);
    assert_eq!(
        histories[0].as_array().unwrap().len(),
        2,
        "{:#}",
        histories[0]
    );
    assert_eq!(
        histories[2].as_array().unwrap().len(),
        1,
        "{:#}",
        histories[2]
    );

    // The month's statement: the same totals per channel, file and day.
    let mut statements = Vec::new();
    for side in &sides {
        for partner in ["shop", "uniq"] {
            let month = [
                "statement",
                "--partner",
                partner,
                "--month",
                "2026-12",
                "--json",
            ];
            let mut v = side.json(&month);
            for f in v["by_file"].as_array_mut().unwrap() {
                f.as_object_mut().unwrap().remove("file_id");
            }
            statements.push(v);
        }
    }
    assert_eq!(statements[..2], statements[2..]);
    assert!(
        statements[0]["issued"]["miles"].as_i64().unwrap() > 0,
        "{:#}",
        statements[0]
    );

    // verify recomputes every file's digest from its ledger rows: the one
    // PostgreSQL stored (E008/E010 rows taken back out) must match.
    let mut verified = Vec::new();
    for side in &sides {
        let out = side.run(&["verify", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("verify: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{v:#}");
        assert_eq!(v["ok"], true, "{v:#}");
        verified.push((
            v["ledger_rows"].clone(),
            v["members"].clone(),
            v["credited_files"].clone(),
        ));
    }
    assert_eq!(verified[0], verified[1]);
    assert!(verified[0].0.as_u64().unwrap() > 0);
    assert!(
        sides[1]
            .rows(LEDGER)
            .iter()
            .any(|r| r.contains("|k\\6|30|")),
        "the backslash key went through COPY intact"
    );
}

/// PostgreSQL only (SQLite has one writer: a `members import` and a credit
/// never overlap there): a credit waits while `members import` holds the
/// members lock, so a file is never judged against members changing under
/// it. Here a psql session holds that lock for 6 s; `once` (under 2 s on
/// its own, debug build) must wait for it.
#[test]
fn a_credit_on_postgres_waits_for_a_members_import() {
    let side = Side::new(Some(pg::shared().fresh_db()));
    side.seed_members();
    side.w.write("inbox/shop/w.csv", "NM0000000001,w1,10\n");
    let cluster = pg::shared();
    let db = side.pg.as_ref().unwrap().name.clone();
    let mut holder = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&cluster.dir)
        .args([
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            &db,
            "-c",
        ])
        .arg("SELECT pg_advisory_lock(hashtextextended('members', 0)); SELECT pg_sleep(6);")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the lock is held.
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted";
    let t0 = std::time::Instant::now();
    while cluster.psql(&db, held).trim() == "0" {
        assert!(t0.elapsed().as_secs() < 10, "psql never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    let (code, files) = side.deliver("shop", &[]);
    let waited = started.elapsed();
    holder.wait().unwrap();
    assert_eq!(code, 0, "{files:#?}");
    assert_eq!(files[0]["credited"], 1, "{files:#?}");
    assert!(
        waited >= std::time::Duration::from_secs(4),
        "once did not wait for the members lock: {waited:?}"
    );
}

/// `api-key create`, `list`, `revoke` from the CLI, on both engines: the
/// same answers (a key is shown once, listed, revoked once) and the same
/// audit rows.
#[test]
fn api_keys_from_the_cli_behave_alike_on_both_engines() {
    let sides = [Side::new(None), Side::new(Some(pg::shared().fresh_db()))];
    let mut seen = Vec::new();
    for side in &sides {
        side.seed_members();
        let out = side.run(&[
            "api-key",
            "create",
            "--partner",
            "shop",
            "--label",
            "till 1",
            "--json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        let prefix = created["prefix"].as_str().unwrap().to_owned();
        assert!(
            created["key"].as_str().unwrap().starts_with(&prefix),
            "{created:#}"
        );
        let list = |side: &Side| side.json(&["api-key", "list", "--json"]);
        let before = list(side);
        assert_eq!(before.as_array().unwrap().len(), 1, "{before:#}");
        assert_eq!(before[0]["partner"], "shop");
        assert_eq!(before[0]["label"], "till 1");
        assert!(before[0]["revoked_at"].is_null(), "{before:#}");
        let revoke = |side: &Side| {
            let out = side.run(&["api-key", "revoke", &prefix]);
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).replace(&prefix, "PREFIX"),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| l.contains("error"))
                    .collect::<Vec<_>>()
                    .join("\n")
                    .replace(&prefix, "PREFIX"),
            )
        };
        let first = revoke(side);
        let again = revoke(side);
        let after = list(side);
        assert!(after[0]["revoked_at"].is_string(), "{after:#}");
        let audit =
            side.rows("SELECT action || '|' || COALESCE(partner, '-') FROM audit ORDER BY id");
        seen.push((first, again, audit));
    }
    assert_eq!(seen[0], seen[1], "SQLite left, PostgreSQL right");
    assert_eq!(seen[0].0 .0, Some(0), "{:?}", seen[0]);
    assert_eq!(seen[0].1 .0, Some(1), "{:?}", seen[0]);
    assert_eq!(seen[0].2.len(), 2, "{:?}", seen[0]);
}
