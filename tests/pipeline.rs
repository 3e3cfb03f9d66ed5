//! The pipeline end to end, through the real binary on fixtures.

mod common;

use common::workspace::{fixture, local_partner, Workspace};

fn every_code_workspace() -> Workspace {
    let w = Workspace::new();
    w.config(&local_partner(
        "shop",
        "inbox/shop",
        "max_error_ratio = 0.5",
    ));
    w.demo_members();
    w.write(
        "inbox/shop/every-code.csv",
        std::fs::read(fixture("cases/every-code.csv")).unwrap(),
    );
    w
}

#[test]
fn every_error_code_comes_from_a_fixture_row() {
    let w = every_code_workspace();
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let file = &run["files"][0];
    assert_eq!(file["outcome"], "credited");
    assert_eq!(file["rows"], 19);
    assert_eq!(file["failed"], 9);
    assert_eq!(file["credited"], 10);
    for c in [
        "E001", "E002", "E003", "E004", "E005", "E006", "E007", "E008", "E009",
    ] {
        assert_eq!(file["failed_by_code"][c], 1, "{c} in {file:#}");
    }
    // The report: each failed line as sent, plus ",CODE", in file order.
    let report = std::fs::read(w.report_of(file)).unwrap();
    let original = std::fs::read(fixture("cases/every-code.csv")).unwrap();
    let lines: Vec<&[u8]> = original.split(|b| *b == b'\n').collect();
    let expect: Vec<(usize, &str)> = vec![
        (1, "E001"),
        (2, "E002"),
        (3, "E003"),
        (4, "E004"),
        (5, "E005"),
        (6, "E006"),
        (7, "E007"),
        (8, "E008"),
        (9, "E009"),
    ];
    let mut want = Vec::new();
    for (i, code) in expect {
        want.extend_from_slice(lines[i]);
        want.extend_from_slice(format!(",{code}\n").as_bytes());
    }
    assert_eq!(report, want);
    // Money: 100+700+1000 (NM1, line 1 once), 200 via e-mail → NM1 too.
    assert_eq!(w.balance("NM0000000001"), 100 + 200 + 700 + 1000);
    assert_eq!(w.balance("NM0000000002"), 400 + 600 + 900);
    assert_eq!(w.balance("NM0000000005"), 300 + 500 + 800);
    assert_eq!(w.balance("NM0000000003"), 0, "suspended member credited");
    w.assert_balances_match_ledger();
    // The ledger names partner, file, line, member, key and miles.
    let (line, key, miles): (i64, String, i64) = w
        .db()
        .query_row(
            "SELECT l.line, l.partner_key, l.miles FROM ledger l JOIN files f ON f.id = l.file_id
             WHERE f.name = 'every-code.csv' AND l.partner = 'shop' ORDER BY l.line LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((line, key.as_str(), miles), (1, "K-OK-1", 100));
    // History by partner key, and balance by e-mail.
    let h: serde_json::Value =
        serde_json::from_str(&w.ok(&["history", "--partner", "shop", "--key", "K-OK-2", "--json"]))
            .unwrap();
    assert_eq!(h[0]["member_id"], "NM0000000001");
    assert_eq!(h[0]["miles"], 200);
    let b: serde_json::Value =
        serde_json::from_str(&w.ok(&["balance", " Taro.Yamada@Example.JP ", "--json"])).unwrap();
    assert_eq!(b["miles"], 2000);
}

#[test]
fn shift_jis_crlf_is_credited_and_answered_in_kind() {
    let w = Workspace::new();
    w.config(&local_partner(
        "konbini",
        "inbox/k",
        "encoding = \"shift_jis\"\nmax_error_ratio = 0.6",
    ));
    w.demo_members();
    let original = std::fs::read(fixture("cases/sjis-crlf.csv")).unwrap();
    w.write("inbox/k/KOUKAN.csv", &original);
    let (code, run) = w.once_json("konbini", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 3);
    assert_eq!(run["files"][0]["failed"], 4);
    assert_eq!(w.balance("NM0000000001"), 1000);
    assert_eq!(
        w.balance("NM0000000006"),
        2000,
        "髙橋① e-mail (CP932) matched"
    );
    assert_eq!(w.balance("NM0000000005"), 500);
    let report = std::fs::read(w.report_of(&run["files"][0])).unwrap();
    let lines: Vec<&[u8]> = original.split(|b| *b == b'\n').collect();
    let mut want = Vec::new();
    for (i, code) in [(2, "E004"), (3, "E006"), (4, "E009"), (6, "E003")] {
        let l = lines[i].strip_suffix(b"\r").unwrap();
        want.extend_from_slice(l);
        want.extend_from_slice(format!(",{code}\r\n").as_bytes());
    }
    assert_eq!(
        report, want,
        "byte-identical failed lines + ,CODE with CRLF"
    );
    // The quoted key with a comma kept its comma.
    let h: serde_json::Value = serde_json::from_str(&w.ok(&[
        "history",
        "--partner",
        "konbini",
        "--key",
        "顧客,005",
        "--json",
    ]))
    .unwrap();
    assert_eq!(h[0]["miles"], 500);
}

#[test]
fn redelivered_content_under_another_name_is_not_credited_again() {
    let w = every_code_workspace();
    assert_eq!(w.once_json("shop", &[]).0, 0);
    let before = w.ledger_rows();
    let b1 = w.balance("NM0000000001");
    w.write(
        "inbox/shop/every-code-AGAIN.csv",
        std::fs::read(fixture("cases/every-code.csv")).unwrap(),
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "a refused file is reported with a non-zero exit");
    assert_eq!(run["files"][0]["outcome"], "duplicate");
    assert!(
        run["files"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("every-code.csv"),
        "{run:#}"
    );
    assert_eq!(w.ledger_rows(), before);
    assert_eq!(w.balance("NM0000000001"), b1);
    // A third run: nothing new at all, exit 0.
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["outcome"], "no-file");
    // `files` shows both, with the duplicate refused.
    let files: serde_json::Value =
        serde_json::from_str(&w.ok(&["files", "--json", "--oldest-first"])).unwrap();
    assert_eq!(files.as_array().unwrap().len(), 2);
    assert_eq!(files[1]["outcome"], "duplicate");
}

#[test]
fn a_file_over_its_error_ratio_credits_nothing() {
    let w = Workspace::new();
    w.config(&local_partner(
        "shop",
        "inbox/shop",
        "max_error_ratio = 0.2",
    ));
    w.demo_members();
    w.write(
        "inbox/shop/every-code.csv",
        std::fs::read(fixture("cases/every-code.csv")).unwrap(),
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1);
    let f = &run["files"][0];
    assert_eq!(f["outcome"], "refused");
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("above max_error_ratio 0.2"),
        "{f:#}"
    );
    assert_eq!(f["credited"], 0);
    assert_eq!(w.ledger_rows(), 0);
    assert_eq!(w.balance("NM0000000001"), 0);
    // The report holds every row: the failed ones with their own code, the
    // others with F004 (nothing was credited); the file is kept.
    let report = std::fs::read(w.report_of(f)).unwrap();
    let original = std::fs::read(fixture("cases/every-code.csv")).unwrap();
    let own = [
        "E001", "E002", "E003", "E004", "E005", "E006", "E007", "E008", "E009",
    ];
    let mut want = Vec::new();
    // Lines 2–10 (0-based 1–9) fail E001–E009 on their own.
    for (i, line) in original.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        want.extend_from_slice(line);
        want.push(b',');
        let code = i.checked_sub(1).and_then(|j| own.get(j)).unwrap_or(&"F004");
        want.extend_from_slice(code.as_bytes());
        want.push(b'\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&report),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(f["file_code"], "F004");
    assert!(w.path("inbox/shop/failed/every-code.csv").exists());
    let status: String = w
        .db()
        .query_row("SELECT outcome || ': ' || reason FROM files", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        status.starts_with("refused: 9 of 19 rows failed"),
        "{status}"
    );
}

#[test]
fn dry_run_credits_nothing_but_writes_the_report() {
    let w = every_code_workspace();
    let (code, run) = w.once_json("shop", &["--dry-run"]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["outcome"], "dry-run");
    assert_eq!(run["files"][0]["credited"], 10);
    assert_eq!(run["files"][0]["id"], serde_json::Value::Null);
    let dry = w.path(run["files"][0]["report_path"].as_str().unwrap());
    assert!(
        dry.starts_with(w.path("var/reports/shop/dry-run")),
        "{}",
        dry.display()
    );
    assert!(dry.is_file());
    assert_eq!(w.ledger_rows(), 0);
    assert_eq!(w.balance("NM0000000001"), 0);
    assert!(
        w.path("inbox/shop/every-code.csv").exists(),
        "dry run leaves the inbox alone"
    );
    // The real run afterwards credits.
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 2000);
    assert!(w.path("inbox/shop/processed/every-code.csv").exists());
}

#[test]
fn trailing_blank_lines_header_and_bom_are_handled() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", "header = true"));
    w.demo_members();
    w.write(
        "inbox/shop/a.csv",
        "\u{feff}member,key,miles\r\nNM0000000001,k1,10\r\nNM0000000002,k2,20\r\n\r\n\r\n",
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["rows"], 2);
    assert_eq!(run["files"][0]["failed"], 0);
    assert_eq!(run["files"][0]["report_path"], serde_json::Value::Null);
    assert_eq!(
        w.report_files("shop"),
        Vec::<String>::new(),
        "no failed row, no error file"
    );
}

/// A file of several credit batches (the credit step works in batches of
/// `BATCH_ROWS` rows, member lookups sorted within a batch and shared by two
/// threads, ledger rows inserted 64 per statement in key order, not line
/// order: `K10` before `K9`): every row gets the same
/// code and credit as a row-by-row model says, E008 is decided within one
/// statement, across statements and across batch boundaries in file order,
/// and the report keeps file order.
#[test]
fn a_multi_batch_file_matches_the_row_by_row_model() {
    let w = Workspace::new();
    w.config(&local_partner(
        "shop",
        "inbox/shop",
        "max_error_ratio = 0.9",
    ));
    w.demo_members();
    // (as written in the file, owner or the code it fails with)
    let members: [(&str, Result<&str, &str>); 9] = [
        ("NM0000000001", Ok("NM0000000001")),
        ("TARO.YAMADA@example.jp", Ok("NM0000000001")),
        ("NM0000000002", Ok("NM0000000002")),
        (" hanako.sato@example.jp ", Ok("NM0000000002")),
        ("NM0000000003", Err("E004")),
        ("NM0000000005", Ok("NM0000000005")),
        ("NM0000000099", Err("E003")),
        ("nobody@example.jp", Err("E003")),
        ("NM0000000004", Err("E004")),
    ];
    // Every 7th row repeats the previous row's key and miles (E008 when the
    // same member, however spelled); every 1000th past the first batch
    // repeats a row about half a batch back, often in the previous batch
    // (the same member: BACK is a multiple of 9).
    const BATCH: usize = milebatch::pipeline::batch::BATCH_ROWS;
    const BACK: usize = BATCH / 2 / 9 * 9;
    fn key_miles(line: usize) -> (String, u64) {
        if line > BATCH && line.is_multiple_of(1000) {
            key_miles(line - BACK)
        } else if line.is_multiple_of(7) {
            key_miles(line - 1)
        } else {
            (format!("K{line}"), (line % 4999 + 1) as u64)
        }
    }
    // Rows are short (under 90 bytes, decoded text included): BATCH_ROWS,
    // not BATCH_BYTES, ends each batch.
    const { assert!(90 * BATCH < milebatch::pipeline::batch::BATCH_BYTES) };
    let n = BATCH * 2 + BATCH / 3;
    let (mut file, mut want_report) = (String::new(), String::new());
    let (mut credited, mut failed) = (0u64, 0u64);
    let mut balances = std::collections::HashMap::<&str, i64>::new();
    let mut seen = std::collections::HashSet::<(&str, String, u64)>::new();
    for line in 1..=n {
        let (member, owner) = members[line % members.len()];
        let (key, miles) = key_miles(line);
        let bad_miles = line.is_multiple_of(997);
        let row = if bad_miles {
            format!("{member},{key},12a")
        } else {
            format!("{member},{key},{miles}")
        };
        file.push_str(&row);
        file.push('\n');
        let code = match owner {
            Err(code) => Some(code),
            Ok(_) if bad_miles => Some("E006"),
            Ok(owner) if !seen.insert((owner, key.clone(), miles)) => Some("E008"),
            Ok(owner) => {
                *balances.entry(owner).or_default() += miles as i64;
                None
            }
        };
        match code {
            Some(c) => {
                failed += 1;
                want_report.push_str(&format!("{row},{c}\n"));
            }
            None => credited += 1,
        }
    }
    w.write("inbox/shop/big.csv", &file);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["rows"], n as u64);
    assert_eq!(f["credited"], credited, "{f:#}");
    assert_eq!(f["failed"], failed, "{f:#}");
    assert!(
        f["failed_by_code"]["E008"].as_u64().unwrap() > 1000,
        "{f:#}"
    );
    let report = std::fs::read_to_string(w.report_of(f)).unwrap();
    assert!(
        report == want_report,
        "the error report differs from the model"
    );
    for (member, miles) in balances {
        assert_eq!(w.balance(member), miles, "{member}");
    }
    w.assert_balances_match_ledger();
}

/// A credit that would overflow a balance refuses the whole file and names
/// the member, also when the balances are written many members per statement.
#[test]
fn a_balance_overflow_refuses_the_file_and_names_the_member() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    let mut members = String::from("member_id,email,status\n");
    let mut file = String::new();
    for i in 1..=150 {
        members.push_str(&format!("M{i:04},m{i}@x.jp,active\n"));
        file.push_str(&format!("M{i:04},K{i},10\n"));
    }
    let csv = w.write("members.csv", &members);
    w.ok(&["members", "import", csv.to_str().unwrap()]);
    let id: i64 = w
        .db()
        .query_row(
            "SELECT id FROM members WHERE member_id = 'M0100'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    w.db()
        .execute(
            "INSERT INTO balances VALUES (?1, 9223372036854775800)",
            [id],
        )
        .unwrap();
    w.write("inbox/shop/a.csv", &file);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["outcome"], "refused", "{f:#}");
    let reason = f["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("member #{id}")), "{reason}");
    assert_eq!(w.ledger_rows(), 0);
    assert_eq!(w.balance("M0001"), 0, "nothing of a refused file stays");
    assert_eq!(w.balance("M0100"), 9223372036854775800);
}
