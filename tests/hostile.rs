//! Hostile and broken input: none of it may panic, credit wrongly or leak.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::workspace::{local_partner, Workspace};

fn codes(run: &serde_json::Value) -> serde_json::Value {
    run["files"][0]["failed_by_code"].clone()
}

#[test]
fn hostile_rows_each_get_their_code_and_good_rows_still_credit() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", "max_error_ratio = 0.95"));
    w.demo_members();
    let mut f: Vec<u8> = Vec::new();
    let rows: &[(&[u8], &str)] = &[
        (b"NM0000000001,ok-1,10\r\n", "ok"),
        (b"NM0000000001,plus,+5\n", "E006"), // mixed LF after CRLF
        (b"NM0000000001,dec,5.0\r\n", "E006"),
        (b"NM0000000001,space, 5\r\n", "E006"),
        (b"NM0000000001,zero,0\r\n", "E006"),
        (b"NM0000000001,neg,-1\r\n", "E006"),
        ("NM0000000001,fw,１２\r\n".as_bytes(), "E006"),
        (b"NM0000000001,big,99999999999999999999\r\n", "E007"),
        (b"'; DROP TABLE members;--,sql,10\r\n", "E003"),
        (
            b"\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",formula,10\r\n",
            "E003",
        ),
        (b"NM0000000002,ok-2,20\n", "ok"),
    ];
    for (r, _) in rows {
        f.extend_from_slice(r);
    }
    // 10,000 columns.
    f.extend_from_slice(vec!["x"; 10_000].join(",").as_bytes());
    f.extend_from_slice(b"\r\n");
    w.write("inbox/hostile.csv", &f);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let c = codes(&run);
    assert_eq!(c["E006"], 6, "{c}");
    assert_eq!(c["E007"], 1, "{c}");
    assert_eq!(c["E003"], 2, "{c}");
    assert_eq!(c["E001"], 1, "{c}");
    assert_eq!(run["files"][0]["credited"], 2);
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 20);
    // The SQL-looking member did nothing to the database.
    let members: i64 = w
        .db()
        .query_row("SELECT count(*) FROM members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(members, 6);
    // The report echoes the formula row byte for byte (the contract), once.
    let report = std::fs::read(w.report_of(&run["files"][0])).unwrap();
    let text = String::from_utf8_lossy(&report);
    assert_eq!(text.matches("HYPERLINK").count(), 1);
    assert!(
        text.contains("'; DROP TABLE members;--,sql,10,E003\r\n"),
        "{text}"
    );
}

#[test]
fn a_utf8_bom_in_a_shift_jis_partner_is_dropped() {
    let w = Workspace::new();
    w.config(&local_partner("k", "inbox", "encoding = \"shift_jis\""));
    w.demo_members();
    let mut f = b"\xEF\xBB\xBF".to_vec();
    f.extend_from_slice(b"NM0000000001,k1,10\r\nNM0000000002,k2,20\r\n");
    w.write("inbox/bom.csv", &f);
    let (code, run) = w.once_json("k", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 2);
    assert_eq!(w.balance("NM0000000001"), 10);
}

#[test]
fn a_balance_overflow_refuses_the_file_instead_of_wrapping() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    w.write("inbox/a.csv", "NM0000000001,k1,10\n");
    assert_eq!(w.once_json("shop", &[]).0, 0);
    // An (absurd) balance near the top of i64, set behind milebatch's back.
    w.db()
        .execute("UPDATE balances SET miles = 9223372036854775800", [])
        .unwrap();
    w.write("inbox/b.csv", "NM0000000001,k2,100\nNM0000000002,k3,5\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "refused");
    assert!(
        run["files"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("overflow"),
        "{run:#}"
    );
    assert_eq!(w.balance("NM0000000001"), 9223372036854775800);
    assert_eq!(
        w.balance("NM0000000002"),
        0,
        "nothing of the refused file credited"
    );
    assert_eq!(w.ledger_rows(), 1);
}

#[test]
fn a_symlink_in_the_inbox_is_not_followed() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    let outside = w.write("secret/outside.csv", "NM0000000001,k1,10\n");
    std::fs::create_dir_all(w.path("inbox")).unwrap();
    std::os::unix::fs::symlink(&outside, w.path("inbox/link.csv")).unwrap();
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "no-file");
    assert_eq!(w.ledger_rows(), 0);
    assert!(outside.exists());
}

#[test]
fn a_50_mb_single_line_is_refused_without_reading_it_all() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    w.write("inbox/huge.csv", vec![b'7'; 50 << 20]);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert!(run["files"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("line 1: a record longer than"));
    assert_eq!(w.ledger_rows(), 0);
}

#[test]
fn database_reports_and_archive_are_owner_only() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    w.write("inbox/a.csv", "NM0000000001,k1,10\nnobody,k2,1\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.path("var/milebatch.db")), 0o600);
    assert_eq!(mode(&w.path("var")), 0o700);
    assert_eq!(mode(&w.path("var/reports/shop")), 0o700);
    let report = w.report_of(&run["files"][0]);
    assert_eq!(mode(report.parent().unwrap()), 0o700);
    assert_eq!(mode(&report), 0o600);
    for e in std::fs::read_dir(w.path("var/archive/shop")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
}

#[test]
fn a_header_only_file_is_refused_as_empty() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", "header = true"));
    w.demo_members();
    w.write("inbox/h.csv", "member,key,miles\r\n");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "refused");
    assert!(run["files"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no data rows"));
    assert_eq!(w.ledger_rows(), 0);
}
