//! Money operations through the real binary: `verify` (balances against
//! the ledger, each credited file's counts, miles and digest), catching each
//! kind of tampering done directly in the database; `reverse` (negative
//! rows, balances, refusals, idempotence, visibility).

mod common;

use common::workspace::{local_partner, Workspace, FAKE_NOW};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two credited files (one with duplicate rows allowed) and a refused one.
fn credited() -> Workspace {
    let w = Workspace::new();
    w.config(&format!(
        "{}{}",
        local_partner("shop", "inbox/shop", ""),
        local_partner("dupes", "inbox/dupes", "allow_duplicate_rows = true")
    ));
    w.demo_members();
    w.write(
        "inbox/shop/a.csv",
        "NM0000000001,A-1,10\nNM0000000002,A-2,20\nNM0000000001,A-3,5\nNOPE,A-4,1\n",
    );
    w.write(
        "inbox/dupes/b.csv",
        "NM0000000002,B-1,7\nNM0000000002,B-1,7\n",
    );
    w.ok(&["once"]);
    w.write("inbox/shop/c.csv", "NOPE1,C-1,10\nNOPE2,C-2,10\n");
    let _ = w.run(&["once"]);
    assert_eq!(
        w.int("SELECT count(*) FROM files WHERE outcome = 'credited'"),
        2
    );
    assert_eq!(
        w.int("SELECT count(*) FROM files WHERE outcome = 'refused'"),
        1
    );
    assert_eq!(w.ledger_rows(), 5);
    w
}

/// `verify --json`: (exit code, report).
fn verify(w: &Workspace) -> (i32, serde_json::Value) {
    let out = w.run(&["verify", "--json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

/// The (kind, subject) of each mismatch.
fn found(v: &serde_json::Value) -> Vec<(String, String)> {
    v["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_owned(),
                m["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn tamper(w: &Workspace, sql: &str) {
    let db = w.db();
    db.execute_batch("DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;")
        .unwrap();
    db.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn an_untouched_database_verifies() {
    let w = credited();
    let (code, v) = verify(&w);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["ledger_rows"], 5);
    assert_eq!(v["credited_files"], 2);
    assert_eq!(v["files_without_digest"], 0, "digests are stored at commit");
    let out = w.ok(&["verify"]);
    assert!(
        out.starts_with("ok: 5 ledger rows, 2 balances, 2 credited files"),
        "{out}"
    );
}

#[test]
fn a_changed_balance_is_named() {
    let w = credited();
    w.db()
        .execute_batch("UPDATE balances SET miles = miles + 1 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000002')")
        .unwrap();
    let (code, v) = verify(&w);
    assert_eq!(code, 1, "{v:#}");
    let f = found(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0].0, "balance");
    assert!(f[0].1.starts_with("member NM0000000002 "), "{f:?}");
    assert!(
        v["mismatches"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("balance 35 miles, its ledger rows sum to 34"),
        "{v:#}"
    );
    // The text form names it too, on stdout, and fails.
    let out = w.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("MISMATCH balance: member NM0000000002"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("1 mismatch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn changed_miles_in_a_ledger_row_are_caught_three_ways() {
    let w = credited();
    tamper(&w, "UPDATE ledger SET miles = 11 WHERE partner_key = 'A-1'");
    let (code, v) = verify(&w);
    assert_eq!(code, 1, "{v:#}");
    let kinds: Vec<String> = found(&v).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["balance", "file-counts", "file-digest"], "{v:#}");
}

#[test]
fn a_changed_key_is_caught_by_the_digest_alone() {
    // Same miles, same member: only the digest can see it.
    let w = credited();
    tamper(
        &w,
        "UPDATE ledger SET partner_key = 'A-9' WHERE partner_key = 'A-2'",
    );
    let (code, v) = verify(&w);
    assert_eq!(code, 1, "{v:#}");
    let f = found(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0].0, "file-digest");
    assert!(f[0].1.starts_with("file 1 (shop, a.csv)"), "{f:?}");
}

#[test]
fn a_moved_row_is_caught() {
    // A row given to another member, both balances adjusted to match.
    let w = credited();
    tamper(
        &w,
        "UPDATE ledger SET member = (SELECT id FROM members WHERE member_id = 'NM0000000003') WHERE partner_key = 'B-1' AND line = 2;
         UPDATE balances SET miles = miles - 7 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000002');
         INSERT INTO balances(member, miles) SELECT id, 7 FROM members WHERE member_id = 'NM0000000003';",
    );
    let (code, v) = verify(&w);
    assert_eq!(code, 1, "{v:#}");
    let f = found(&v);
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0].0, "file-digest");
    assert!(f[0].1.starts_with("file 2 (dupes, b.csv)"), "{f:?}");
}

#[test]
fn deleted_and_stray_rows_are_caught() {
    let w = credited();
    tamper(
        &w,
        "DELETE FROM ledger WHERE partner_key = 'A-3';
         UPDATE balances SET miles = miles - 5 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000001');
         INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
             SELECT 'shop', 'X-1', 99, id, 3, 0, 1, 0 FROM members WHERE member_id = 'NM0000000004';
         INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
             SELECT 'shop', 'X-2', 3, id, 3, 0, 1, 0 FROM members WHERE member_id = 'NM0000000004';",
    );
    let (code, v) = verify(&w);
    assert_eq!(code, 1, "{v:#}");
    let f = found(&v);
    let kinds: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    // NM0000000004 has 6 miles of rows and no balance; file 1 lost a row;
    // the refused file 3 and the missing file 99 have rows.
    assert_eq!(
        kinds,
        [
            "balance",
            "file-counts",
            "file-digest",
            "stray-rows",
            "stray-rows"
        ],
        "{v:#}"
    );
    assert!(f[0].1.starts_with("member NM0000000004"), "{f:?}");
    assert!(f[3].1.starts_with("file 3 (shop, c.csv)"), "{f:?}");
    assert!(f[4].1.starts_with("file 99 (no such file)"), "{f:?}");
}

/// Everything a reversal may change, to prove that nothing did.
fn money_state(w: &Workspace) -> (i64, i64, i64, i64, String, i64) {
    (
        w.ledger_rows(),
        w.int("SELECT COALESCE(SUM(miles), 0) FROM balances"),
        w.int("SELECT count(*) FROM reversals"),
        w.int("SELECT count(*) FROM audit WHERE action = 'reverse'"),
        w.db()
            .query_row("SELECT group_concat(outcome) FROM files", [], |r| r.get(0))
            .unwrap(),
        w.int("SELECT COALESCE(SUM(reversal), 0) FROM files"),
    )
}

#[test]
fn a_reversal_takes_every_row_back_visibly_and_verifies() {
    let w = credited();
    assert_eq!(w.balance("NM0000000001"), 15);
    assert_eq!(w.balance("NM0000000002"), 34);
    let out = w.ok(&["reverse", "--file", "1", "--reason", "wrong prices"]);
    assert!(
        out.starts_with(
            "reversal 1 of file 1 (shop): 3 rows, 35 miles taken back from 2 members, by cli:"
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with(": wrong prices"), "{out}");
    // Balances down by exactly the file's credits; the other file stays.
    assert_eq!(w.balance("NM0000000001"), 0);
    assert_eq!(w.balance("NM0000000002"), 14);
    // The ledger only grew: three negative rows naming the reversal.
    assert_eq!(w.ledger_rows(), 8);
    assert_eq!(
        w.int("SELECT count(*) FROM ledger WHERE reversal = 1 AND miles < 0 AND file_id = 1"),
        3
    );
    assert_eq!(w.int("SELECT SUM(miles) FROM ledger WHERE file_id = 1"), 0);
    w.assert_balances_match_ledger();
    let (code, v) = verify(&w);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["reversals"], 1);
    // Who, why, when: the reversal row and the audit trail.
    assert_eq!(w.int("SELECT count(*) FROM audit WHERE action = 'reverse' AND partner = 'shop' AND actor LIKE 'cli:%' AND detail LIKE 'file 1: reversal 1, 3 rows, 35 miles%wrong prices'"), 1);
    // Visible in files, history and status.
    let out = w.ok(&["files", "--outcome", "reversed"]);
    assert!(out.contains("\treversed\t"), "{out}");
    assert!(out.contains("reversed (reversal 1) by cli:"), "{out}");
    assert!(out.contains(": wrong prices"), "{out}");
    let h = w.ok(&["history", "--partner", "shop", "--key", "A-1"]);
    let lines: Vec<&str> = h.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{h}");
    assert!(lines[0].ends_with("NM0000000001\t10\ta.csv:1"), "{h}");
    assert!(
        lines[1].ends_with("NM0000000001\t-10\ta.csv:1\treversal 1"),
        "{h}"
    );
    let st = w.ok(&["status"]);
    assert!(
        st.contains("reversed  last: file 1 (reversal 1) at "),
        "{st}"
    );
    assert!(
        st.contains("3 rows, 35 miles taken back — wrong prices"),
        "{st}"
    );

    // The same bytes delivered again are not credited: only retry may.
    w.write(
        "inbox/shop/a-again.csv",
        "NM0000000001,A-1,10\nNM0000000002,A-2,20\nNM0000000001,A-3,5\nNOPE,A-4,1\n",
    );
    let (code, r) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["files"][0]["outcome"], "duplicate", "{r:#}");
    let reason = r["files"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("reversed") && reason.contains("milebatch retry --file 1"),
        "{reason}"
    );
    assert_eq!(w.balance("NM0000000001"), 0);
    assert_eq!(w.ledger_rows(), 8);
}

#[test]
fn reversing_twice_changes_nothing_the_second_time() {
    let w = credited();
    w.ok(&["reverse", "--file", "2", "--reason", "test file"]);
    let before = money_state(&w);
    assert_eq!(w.balance("NM0000000002"), 20);
    let out = w.ok(&["reverse", "--file", "2", "--reason", "again"]);
    assert!(
        out.starts_with(
            "already reversed, nothing changed: reversal 1 of file 2 (dupes): 2 rows, 14 miles"
        ),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(": test file"),
        "the first reason: {out}"
    );
    assert_eq!(money_state(&w), before);
    let out = w.run(&["reverse", "--file", "2", "--reason", "json", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "already-reversed", "{v:#}");
    assert_eq!(money_state(&w), before);
}

#[test]
fn a_reversal_that_would_overdraw_is_refused_whole_naming_each_member() {
    let w = credited();
    // Members spent miles elsewhere (a redemption): 15 → 4 and 34 → 30.
    w.db()
        .execute_batch(
            "UPDATE balances SET miles = 4 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000001');
             UPDATE balances SET miles = 30 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000002');",
        )
        .unwrap();
    let before = money_state(&w);
    let out = w.run(&["reverse", "--file", "1", "--reason", "wrong"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    // NM0000000001 must give back 15 and holds 4; NM0000000002 gives back 20
    // of 30 and is fine.
    assert!(err.contains("cannot reverse file 1: nothing changed, because 1 member(s) no longer hold the miles it would take back: NM0000000001 (balance 4, to take back 15, short by 11)"), "{err}");
    assert!(!err.contains("NM0000000002"), "{err}");
    assert_eq!(money_state(&w), before);
    assert_eq!(w.balance("NM0000000002"), 30);
    let out = w.run(&["reverse", "--file", "1", "--reason", "wrong", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "shortfall");
    assert_eq!(v["members"][0]["shortfall"], 11);
    assert_eq!(money_state(&w), before);
}

#[test]
fn what_cannot_be_reversed_is_refused_with_a_reason() {
    let w = credited();
    let before = money_state(&w);
    for (args, needle) in [
        (
            vec!["--file", "3", "--reason", "x"],
            "file 3 (c.csv) is refused: nothing of it was credited",
        ),
        (vec!["--file", "9", "--reason", "x"], "there is no file 9"),
        (
            vec!["--exchange", "5", "--reason", "x"],
            "no API exchange 5 was credited",
        ),
        (
            vec!["--file", "1", "--reason", "  "],
            "a reason is required",
        ),
    ] {
        let mut a = vec!["reverse"];
        a.extend(args);
        let out = w.run(&a);
        assert_eq!(out.status.code(), Some(1), "{a:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{a:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(money_state(&w), before);
}

#[test]
fn an_api_exchange_is_reversed_alone() {
    let w = credited();
    // An API credit as the API writes it: file id 0, line = dup = its id.
    w.db()
        .execute_batch(
            "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
                 SELECT 'shop', 'P-17', 0, id, 40, 17, 17, 1700000000 FROM members WHERE member_id = 'NM0000000001';
             UPDATE balances SET miles = miles + 40 WHERE member = (SELECT id FROM members WHERE member_id = 'NM0000000001');",
        )
        .unwrap();
    assert_eq!(verify(&w).0, 0);
    let out = w.ok(&["reverse", "--exchange", "17", "--reason", "cancelled order"]);
    assert!(
        out.starts_with("reversal 1 of API exchange 17 (shop): 1 rows, 40 miles"),
        "{out}"
    );
    assert_eq!(w.balance("NM0000000001"), 15);
    assert_eq!(
        w.int("SELECT count(*) FROM files WHERE outcome = 'reversed' OR reversal IS NOT NULL"),
        0,
        "no file changed"
    );
    let (code, v) = verify(&w);
    assert_eq!(code, 0, "{v:#}");
    let h = w.ok(&["history", "--partner", "shop", "--key", "P-17"]);
    assert!(h.contains("\t-40\tAPI:17\treversal 1"), "{h}");
    // Tampering with a reversal's row is caught like a file's.
    tamper(&w, "UPDATE ledger SET line = 18 WHERE reversal = 1");
    let (code, v) = verify(&w);
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        [(
            "reversal-digest".to_owned(),
            "reversal 1 (shop, API exchange 17)".to_owned()
        )]
    );
}

/// A small deterministic generator; the seed is printed on failure.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Seconds from 2026-10-28T00:00Z to 2026-12-03T00:00Z, as RFC 3339.
fn random_time(rng: &mut Rng) -> String {
    let base = 1_793_145_600i64; // 2026-10-28T00:00:00Z
    let t = base + rng.below(36 * 86_400) as i64;
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn statement(w: &Workspace, month: &str) -> serde_json::Value {
    let out = w.ok(&["statement", "--partner", "shop", "--month", month, "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn sum(v: &serde_json::Value, field: &str) -> i64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_i64().unwrap())
        .sum()
}

#[test]
fn statement_totals_equal_the_ledger_over_a_random_mix() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    let mut key = 0;
    // Two files on either side of the November boundary (Tokyo midnight).
    let mut times = vec![
        "2026-10-31T14:59:59Z".to_owned(),
        "2026-10-31T15:00:00Z".to_owned(),
    ];
    for _ in 0..5 {
        times.push(random_time(&mut rng));
    }
    for (i, at) in times.iter().enumerate() {
        let mut csv = String::new();
        for _ in 0..1 + rng.below(12) {
            key += 1;
            let member = 1 + rng.below(2);
            csv.push_str(&format!(
                "NM000000000{member},K{key},{}\n",
                1 + rng.below(500)
            ));
        }
        w.write(&format!("inbox/shop/f{i}.csv"), csv);
        let out = w.run_env(&["once", "--partner", "shop"], &[(FAKE_NOW, at.as_str())]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // One file came by upload.
    w.db()
        .execute_batch("UPDATE files SET channel = 'upload' WHERE id = 3")
        .unwrap();
    // API credits as the API writes them (file id 0, line = dup = its id).
    for x in 1..=5 {
        let at = chrono::DateTime::parse_from_rfc3339(&random_time(&mut rng))
            .unwrap()
            .timestamp();
        let miles = 1 + rng.below(300);
        let member = 1 + rng.below(2);
        w.db()
            .execute_batch(&format!(
                "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
                     SELECT 'shop', 'P{x}', 0, id, {miles}, {x}, {x}, {at} FROM members WHERE member_id = 'NM000000000{member}';
                 UPDATE balances SET miles = miles + {miles} WHERE member = (SELECT id FROM members WHERE member_id = 'NM000000000{member}');"
            ))
            .unwrap();
    }
    // Reversals at random times: two files and one exchange.
    let mut reversed = std::collections::BTreeSet::new();
    while reversed.len() < 2 {
        reversed.insert(1 + rng.below(times.len() as u64));
    }
    for id in &reversed {
        let at = random_time(&mut rng);
        let out = w.run_env(
            &["reverse", "--file", &id.to_string(), "--reason", "test"],
            &[(FAKE_NOW, at.as_str())],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let at = random_time(&mut rng);
    let out = w.run_env(
        &[
            "reverse",
            "--exchange",
            &(1 + rng.below(5)).to_string(),
            "--reason",
            "x",
        ],
        &[(FAKE_NOW, at.as_str())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(verify(&w).0, 0);

    let mut all = 0;
    let mut all_rows = 0;
    for month in ["2026-10", "2026-11", "2026-12"] {
        let s = statement(&w, month);
        let (from, until) = (
            chrono::DateTime::parse_from_rfc3339(s["from"].as_str().unwrap())
                .unwrap()
                .timestamp(),
            chrono::DateTime::parse_from_rfc3339(s["until"].as_str().unwrap())
                .unwrap()
                .timestamp(),
        );
        let in_month =
            format!("partner = 'shop' AND credited_at >= {from} AND credited_at < {until}");
        let ledger = w.int(&format!("SELECT SUM(miles) FROM ledger WHERE {in_month}"));
        let rows = w.int(&format!("SELECT count(*) FROM ledger WHERE {in_month}"));
        assert_eq!(s["net"]["miles"].as_i64().unwrap(), ledger, "{month} {s:#}");
        assert_eq!(s["net"]["rows"].as_i64().unwrap(), rows, "{month} {s:#}");
        let issued = s["issued"]["miles"].as_i64().unwrap();
        for part in ["by_channel", "by_file", "by_day"] {
            assert_eq!(sum(&s[part], "miles"), issued, "{month} {part}: {s:#}");
            assert_eq!(
                sum(&s[part], "rows"),
                s["issued"]["rows"].as_i64().unwrap(),
                "{month} {part}"
            );
        }
        assert_eq!(
            sum(&s["reversals"], "miles"),
            s["reversed"]["miles"].as_i64().unwrap()
        );
        assert_eq!(issued + s["reversed"]["miles"].as_i64().unwrap(), ledger);
        // Each channel against the ledger directly.
        let api = w.int(&format!(
            "SELECT SUM(miles) FROM ledger WHERE {in_month} AND reversal IS NULL AND file_id = 0"
        ));
        let upload = w.int(&format!(
            "SELECT SUM(miles) FROM ledger WHERE {in_month} AND reversal IS NULL AND file_id = 3"
        ));
        let ch = |c: &str| {
            s["by_channel"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["channel"] == c)
                .unwrap()["miles"]
                .as_i64()
                .unwrap()
        };
        assert_eq!(ch("api"), api, "{month}");
        assert_eq!(ch("upload"), upload, "{month}");
        assert_eq!(ch("pull"), issued - api - upload, "{month}");
        // The CSV ends with the same net.
        let csv = w.ok(&["statement", "--partner", "shop", "--month", month, "--csv"]);
        assert!(csv.starts_with("section,item,detail,rows,miles\n"), "{csv}");
        assert_eq!(
            csv.lines().last().unwrap(),
            format!("net,,,{rows},{ledger}")
        );
        all += ledger;
        all_rows += rows;
    }
    // Every row fell in one of the three months.
    assert_eq!(all, w.int("SELECT SUM(miles) FROM ledger"));
    assert_eq!(all_rows, w.ledger_rows());
    // The boundary: file 1 (14:59:59Z on Oct 31) is October's, file 2
    // (15:00Z, midnight in Tokyo) November's.
    let nov = statement(&w, "2026-11");
    assert_eq!(nov["from"], "2026-10-31T15:00:00.000Z");
    let ids = |s: &serde_json::Value| -> Vec<i64> {
        s["by_file"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["file_id"].as_i64().unwrap())
            .collect()
    };
    assert!(ids(&nov).contains(&2) && !ids(&nov).contains(&1), "{nov:#}");
    assert!(ids(&statement(&w, "2026-10")).contains(&1));
    let out = w.run(&["statement", "--partner", "shop", "--month", "2026-13"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("write it as YYYY-MM"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_backup_is_private_verified_and_restores_only_when_nobody_holds_the_database() {
    use std::os::unix::fs::PermissionsExt;
    let w = credited();
    let dest = w.path("backups/b1.db");
    std::fs::create_dir_all(w.path("backups")).unwrap();
    let out = w.ok(&["backup", dest.to_str().unwrap()]);
    assert!(out.contains("verify ok"), "{out}");
    assert!(
        out.contains("5 ledger rows, 2 balances, 2 credited files"),
        "{out}"
    );
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!w.path("backups/b1.db.partial").exists());
    // Never overwrites.
    let out = w.run(&["backup", dest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    // Money moves after the backup.
    w.ok(&["reverse", "--file", "1", "--reason", "after the backup"]);
    assert_eq!(w.balance("NM0000000001"), 0);

    // Another process holds the database open: refused, naming it.
    let holder = w.db();
    let _: i64 = holder
        .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
        .unwrap();
    let out = w.run(&["restore", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("is open in process {}", std::process::id())),
        "{err}"
    );
    drop(holder);
    assert_eq!(w.balance("NM0000000001"), 0, "nothing restored");
    // A running `serve` or daemon counts the same way: a real milebatch.
    let mut daemon = w.spawn_daemon(None);
    daemon.wait_log("daemon ready", std::time::Duration::from_secs(20));
    let out = w.run(&["restore", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(w.balance("NM0000000001"), 0, "nothing restored");
    assert!(
        text(&out.stderr).contains(&format!("is open in process {}", daemon.pid())),
        "{}",
        text(&out.stderr)
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(std::time::Duration::from_secs(20)),
        Some(0)
    );

    let out = w.ok(&["restore", dest.to_str().unwrap()]);
    assert!(out.contains("the database it replaced is kept as"), "{out}");
    assert_eq!(w.balance("NM0000000001"), 15, "the backup's balances");
    assert_eq!(w.int("SELECT count(*) FROM reversals"), 0);
    assert_eq!(verify(&w).0, 0);
    let kept: Vec<_> = std::fs::read_dir(w.path("var"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("milebatch.db.before-restore-") && !n.ends_with("-wal"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mode = std::fs::metadata(w.path("var/milebatch.db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_backup_taken_during_a_300k_row_credit_restores_to_a_database_that_verifies() {
    use common::workspace::exchange_csv;
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.members(2000);
    let (bytes, _) = exchange_csv(300_000, 2000, 42);
    w.write("inbox/shop/big.csv", bytes);
    let mut run = w.spawn(w.cmd(&["once", "--partner", "shop"]));
    // Back up as soon as the credit holds the write lock, and again while
    // it runs: each copy is a snapshot of whole transactions.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut copies = Vec::new();
    for i in 0..3 {
        let dest = w.path(&format!("b{i}.db"));
        let out = w.run(&["backup", "--json", dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        copies.push(dest);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(run.wait_exit(std::time::Duration::from_secs(300)), Some(0));
    let after = w.path("after.db");
    w.ok(&["backup", after.to_str().unwrap()]);
    copies.push(after);
    for c in &copies {
        w.ok(&["restore", c.to_str().unwrap()]);
        let (code, v) = verify(&w);
        assert_eq!(code, 0, "{}: {v:#}", c.display());
        let rows = w.ledger_rows();
        assert!(
            rows == 0 || rows == 300_000,
            "{}: {rows} rows: all or nothing",
            c.display()
        );
    }
    assert_eq!(
        w.ledger_rows(),
        300_000,
        "the last copy was taken after the commit"
    );
}

#[test]
fn a_retry_after_importing_missing_members_credits_exactly_the_rows_that_now_pass_once() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    // Members 8 and 9 are imported an hour late: 3 of 4 rows fail, refused.
    w.write(
        "inbox/shop/late.csv",
        "NM0000000008,L-1,100\nNM0000000009,L-2,200\nNM0000000001,L-3,5\nNM0000000009,L-4,300\nNOPE,L-5,7\n",
    );
    let (code, r) = w.once_json("shop", &[]);
    assert_eq!(code, 1);
    assert_eq!(r["files"][0]["outcome"], "refused", "{r:#}");
    assert_eq!(w.ledger_rows(), 0);
    w.write(
        "late-members.csv",
        "member_id,email,status\nNM0000000008,m8@example.jp,active\nNM0000000009,m9@example.jp,active\n",
    );
    w.ok(&["members", "import", "late-members.csv"]);

    let out = w.ok(&["retry", "--file", "1"]);
    assert!(
        out.starts_with(
            "file 1 retried as file 2: credited, 5 rows, 4 credited, 1 failed, 605 miles"
        ),
        "{out}"
    );
    assert!(out.contains("error report "), "the NOPE row: {out}");
    assert_eq!(w.balance("NM0000000008"), 100);
    assert_eq!(w.balance("NM0000000009"), 500);
    assert_eq!(w.balance("NM0000000001"), 5);
    assert_eq!(w.ledger_rows(), 4);
    assert_eq!(w.int("SELECT retry_of FROM files WHERE id = 2"), 1);
    assert_eq!(
        w.int("SELECT count(*) FROM files WHERE id = 1 AND outcome = 'refused'"),
        1,
        "the old row is unchanged"
    );
    assert_eq!(
        w.int("SELECT count(*) FROM runs WHERE trigger = 'retry' AND outcome = 'ok'"),
        1
    );
    assert_eq!(w.int("SELECT count(*) FROM audit WHERE action = 'retry' AND detail LIKE 'file 1 (late.csv) retried as file 2: credited%'"), 1);
    assert_eq!(verify(&w).0, 0);

    // Once: retrying again, or the retry itself, changes nothing.
    for id in ["1", "2"] {
        let out = w.run(&["retry", "--file", id]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("credited"), "{err}");
    }
    let err = text(&w.run(&["retry", "--file", "2"]).stderr);
    assert!(err.contains("file 2 (late.csv) is credited and not reversed: retrying it would credit it twice. If it was wrong, reverse it first: `milebatch reverse --file 2"), "{err}");
    let err = text(&w.run(&["retry", "--file", "1"]).stderr);
    assert!(err.contains("is credited already, as file 2"), "{err}");
    assert_eq!(w.ledger_rows(), 4);
    assert_eq!(w.int("SELECT count(*) FROM files"), 2);
}

#[test]
fn a_reversed_file_is_credited_again_by_retry_and_only_by_retry() {
    let w = credited();
    w.ok(&["reverse", "--file", "1", "--reason", "members were merged"]);
    assert_eq!(w.balance("NM0000000001"), 0);
    let out = w.ok(&["retry", "--file", "1"]);
    assert!(
        out.starts_with(
            "file 1 retried as file 4: credited, 4 rows, 3 credited, 1 failed, 35 miles"
        ),
        "{out}"
    );
    assert_eq!(w.balance("NM0000000001"), 15);
    assert_eq!(w.balance("NM0000000002"), 34);
    assert_eq!(verify(&w).0, 0);
    // Now credited again: a delivery of the same bytes is a plain duplicate.
    w.write(
        "inbox/shop/a-again.csv",
        "NM0000000001,A-1,10\nNM0000000002,A-2,20\nNM0000000001,A-3,5\nNOPE,A-4,1\n",
    );
    let (_, r) = w.once_json("shop", &[]);
    assert_eq!(r["files"][0]["outcome"], "duplicate", "{r:#}");
    assert_eq!(w.balance("NM0000000001"), 15);
    // The retried file can itself be reversed and retried.
    w.ok(&["reverse", "--file", "4", "--reason", "again"]);
    w.ok(&["retry", "--file", "4"]);
    assert_eq!(w.balance("NM0000000001"), 15);
    assert_eq!(verify(&w).0, 0);
}

#[test]
fn a_changed_or_missing_archive_is_not_retried() {
    let w = credited();
    // File 3 was refused; its archived copy is altered.
    let archive: String = w
        .db()
        .query_row("SELECT archive_path FROM files WHERE id = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    let archive = if std::path::Path::new(&archive).is_absolute() {
        std::path::PathBuf::from(archive)
    } else {
        w.path(&archive)
    };
    std::fs::write(&archive, "NM0000000001,C-1,99999\n").unwrap();
    let out = w.run(&["retry", "--file", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has changed since it was received"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(&archive).unwrap();
    let out = w.run(&["retry", "--file", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is missing"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run(&["retry", "--file", "77"]);
    assert!(
        text(&out.stderr).contains("there is no file 77"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.ledger_rows(), 5);
    assert_eq!(w.int("SELECT count(*) FROM files"), 3);
}

#[test]
fn reversed_credits_are_neither_re_sends_nor_taken_keys() {
    let w = Workspace::new();
    w.config(&format!(
        "{}{}",
        local_partner("shop", "inbox/shop", ""),
        local_partner("uniq", "inbox/uniq", "unique_partner_key = true")
    ));
    w.demo_members();
    let wrong = "NM0000000001,S-1,10\nNM0000000002,S-2,20\nNM0000000001,S-3,30\n";
    w.write("inbox/shop/wrong.csv", wrong);
    w.write("inbox/uniq/wrong.csv", wrong);
    w.ok(&["once"]);
    // Before any reversal, the corrected file is a re-send (F006) for shop
    // and every key is taken (E010) for uniq: the checks are on.
    let corrected =
        "NM0000000001,S-1,10\nNM0000000002,S-2,20\nNM0000000001,S-3,30\nNM0000000002,S-4,1\n";
    w.write("inbox/shop/probe.csv", corrected);
    let (_, r) = w.once_json("shop", &[]);
    assert_eq!(r["files"][0]["file_code"], "F006", "{r:#}");
    w.write(
        "inbox/uniq/probe.csv",
        "NM0000000002,S-1,15\nNM0000000002,S-9,15\n",
    );
    let (_, r) = w.once_json("uniq", &[]);
    assert_eq!(r["files"][0]["failed_by_code"]["E010"], 1, "{r:#}");
    let before = w.ledger_rows();

    // Both wrong files reversed: the partners' corrected files go through.
    let ids: Vec<i64> = w
        .db()
        .prepare("SELECT id FROM files WHERE name = 'wrong.csv' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for id in ids {
        w.ok(&[
            "reverse",
            "--file",
            &id.to_string(),
            "--reason",
            "wrong file",
        ]);
    }
    w.write(
        "inbox/shop/corrected.csv",
        format!("{corrected}NM0000000002,S-5,2\n"),
    );
    let (code, r) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["files"][0]["outcome"], "credited", "{r:#}");
    assert_eq!(r["files"][0]["credited"], 5, "{r:#}");
    w.write(
        "inbox/uniq/corrected.csv",
        "NM0000000002,S-1,11\nNM0000000002,S-3,12\n",
    );
    let (code, r) = w.once_json("uniq", &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        r["files"][0]["credited"], 2,
        "S-1 and S-3 are free again: {r:#}"
    );
    assert_eq!(w.ledger_rows(), before + 6 + 7);
    assert_eq!(verify(&w).0, 0);
}

#[test]
fn a_reversal_that_cannot_find_every_credited_row_changes_nothing() {
    // The file row says 4 credited rows, the ledger holds 3 (as after
    // tampering): the reversal must not take back a part.
    let w = credited();
    w.db()
        .execute_batch("UPDATE files SET credited = 4 WHERE id = 1")
        .unwrap();
    let before = money_state(&w);
    let out = w.run(&["reverse", "--file", "1", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("it records 4 credited rows but 3 were found in the ledger; nothing changed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(money_state(&w), before);
}
