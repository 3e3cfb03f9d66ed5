//! Money operations through the real binary: `verify` (balances against
//! the ledger, each credited file's counts, miles and digest), catching each
//! kind of tampering done directly in the database.

mod common;

use common::workspace::{local_partner, Workspace};

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
