//! Nothing silent, the credit side (issue 10), through the real binary: a
//! missing header, re-sends, E010, one report per delivery, dry runs apart,
//! and refused files whose report holds every row.

mod common;

use common::workspace::{local_partner, Workspace};
use serde_json::Value;

/// `files --json`, oldest first: index i is the (i+1)-th file delivered.
fn files_json(w: &Workspace) -> Value {
    serde_json::from_str(&w.ok(&["files", "--json", "--oldest-first"])).unwrap()
}

fn read(p: &std::path::Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap()).unwrap()
}

/// `header = true` and a file sent without its header: refused whole (F007),
/// every row in the report, nothing lost; re-delivered once the config says
/// `auto`, every row is credited.
#[test]
fn a_headerless_file_under_header_true_is_refused_not_short_of_a_row() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", "header = true"));
    w.demo_members();
    let body = "NM0000000001,k1,10\nNM0000000002,k2,20\nnobody,k3,30\n";
    w.write("inbox/shop/a.csv", body);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["outcome"], "refused", "{f:#}");
    assert_eq!(f["file_code"], "F007");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("header = true but the first line is a data row"),
        "{reason}"
    );
    assert_eq!(f["rows"], 3, "the first line counted as a row: {f:#}");
    assert_eq!(f["credited"], 0);
    assert_eq!(w.ledger_rows(), 0);
    assert_eq!(
        read(&w.report_of(f)),
        "NM0000000001,k1,10,F007\nNM0000000002,k2,20,F007\nnobody,k3,30,E003\n"
    );
    let files = files_json(&w);
    assert_eq!(files[0]["file_code"], "F007");
    assert_eq!(files[0]["report_path"], f["report_path"]);

    // Fixed config, file delivered again: all rows credited.
    w.config(&local_partner("shop", "inbox/shop", "header = \"auto\""));
    w.write("inbox/shop/a-again.csv", body);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 2);
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 20);
}

/// `auto` (the default): a header line is skipped, a first data row is
/// credited, and a first row whose miles are badly written stays data (E006
/// in the report) instead of being dropped as a header.
#[test]
fn header_auto_is_the_default_and_tells_header_from_data() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write(
        "inbox/shop/with.csv",
        "会員,キー,マイル\r\nNM0000000001,k1,10\r\n",
    );
    w.write("inbox/shop/without.csv", "NM0000000002,k2,20\n");
    w.write(
        "inbox/shop/bad-first.csv",
        "NM0000000005,k3,5.0\nNM0000000005,k4,7\n",
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let by_name = |n: &str| {
        run["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in {run:#}"))
            .clone()
    };
    let with = by_name("with.csv");
    assert_eq!(
        (with["rows"].as_u64(), with["failed"].as_u64()),
        (Some(1), Some(0)),
        "{with:#}"
    );
    let without = by_name("without.csv");
    assert_eq!(
        (without["rows"].as_u64(), without["credited"].as_u64()),
        (Some(1), Some(1))
    );
    let bad = by_name("bad-first.csv");
    assert_eq!(bad["rows"], 2, "{bad:#}");
    assert_eq!(bad["failed_by_code"]["E006"], 1);
    assert_eq!(read(&w.report_of(&bad)), "NM0000000005,k3,5.0,E006\n");
    assert_eq!(w.balance("NM0000000001"), 10);
    assert_eq!(w.balance("NM0000000002"), 20);
    assert_eq!(w.balance("NM0000000005"), 7);
}

/// Ten rows, two of which fail (unknown member); the partner then fixes
/// those two and sends the whole file again.
const FIRST: &str = "NM0000000001,c1,100\nNM0000000002,c2,200\nNM0000000005,c3,300\n\
NM0000000001,c4,400\nNM0000000002,c5,500\nNM0000000005,c6,600\nNM0000000001,c7,700\n\
NM0000000002,c8,800\nNM0000000077,c9,900\nNM0000000078,c10,1000\n";
const CORRECTED: &str = "NM0000000001,c1,100\nNM0000000002,c2,200\nNM0000000005,c3,300\n\
NM0000000001,c4,400\nNM0000000002,c5,500\nNM0000000005,c6,600\nNM0000000001,c7,700\n\
NM0000000002,c8,800\nNM0000000005,c9,900\nNM0000000001,c10,1000\n";

fn resend_workspace(extra: &str) -> (Workspace, i64) {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", extra));
    w.demo_members();
    w.write("inbox/shop/day1.csv", FIRST);
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 8);
    let checked = !extra.contains("off");
    assert_eq!(
        run["files"][0]["repeats"],
        if checked { 0.into() } else { Value::Null }
    );
    let id = run["files"][0]["id"].as_i64().unwrap();
    w.write("inbox/shop/day1-fixed.csv", CORRECTED);
    (w, id)
}

#[test]
fn a_corrected_resend_is_refused_naming_the_earlier_file() {
    let (w, first) = resend_workspace("");
    let before = (w.ledger_rows(), w.balance("NM0000000001"));
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["outcome"], "refused", "{f:#}");
    assert_eq!(f["file_code"], "F006");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "looks like a re-send of file {first}: 8 of 10 rows already credited"
        )),
        "{reason}"
    );
    assert_eq!(f["repeats"], 8);
    assert_eq!((w.ledger_rows(), w.balance("NM0000000001")), before);
    // Every row F006: the partner sees that nothing was credited.
    let want: String = CORRECTED.lines().map(|l| format!("{l},F006\n")).collect();
    assert_eq!(read(&w.report_of(f)), want);
    assert!(w.path("inbox/shop/failed/day1-fixed.csv").exists());
    let files = files_json(&w);
    assert_eq!(files[1]["repeats"], 8);
    assert_eq!(files[1]["file_code"], "F006");
}

/// Only rows credited within `resend_window` count: the same re-send is
/// refused ten days after the first file, credited a hundred days after.
#[test]
fn repeats_count_only_within_the_resend_window() {
    let w = Workspace::new();
    w.config(&local_partner(
        "shop",
        "inbox/shop",
        "resend_window = \"30d\"",
    ));
    w.demo_members();
    let once_at = |at: &str| {
        let out = w.run_env(
            &["once", "--json", "--partner", "shop"],
            &[("RUST_LOG", "info"), (common::workspace::FAKE_NOW, at)],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v[0]["files"][0].clone())
    };
    w.write("inbox/shop/jan.csv", FIRST);
    assert_eq!(once_at("2026-01-01T00:00:00Z").0, Some(0));
    w.write("inbox/shop/jan-fixed.csv", CORRECTED);
    let (code, f) = once_at("2026-01-11T00:00:00Z");
    assert_eq!(code, Some(1), "{f:#}");
    assert_eq!(f["file_code"], "F006", "{f:#}");
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("within resend_window 30d"),
        "{f:#}"
    );
    w.write("inbox/shop/apr.csv", CORRECTED);
    let (code, f) = once_at("2026-04-11T00:00:00Z");
    assert_eq!(code, Some(0), "{f:#}");
    assert_eq!(f["credited"], 10);
    assert_eq!(f["repeats"], 0, "{f:#}");
}

#[test]
fn resend_check_warn_credits_and_says_so() {
    let (w, first) = resend_workspace("resend_check = \"warn\"");
    let out = w.run(&["once", "--json", "--partner", "shop"]);
    assert!(out.status.success());
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &run[0]["files"][0];
    assert_eq!(f["outcome"], "credited", "{f:#}");
    assert_eq!(f["credited"], 10);
    assert_eq!(f["repeats"], 8);
    let sentence = format!("looks like a re-send of file {first}: 8 of 10 rows already credited");
    assert_eq!(f["warning"], sentence.as_str());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&sentence)),
        "{log}"
    );
    assert_eq!(w.balance("NM0000000001"), 2 * (100 + 400 + 700) + 1000);
}

#[test]
fn resend_check_off_credits_without_counting() {
    let (w, _) = resend_workspace("resend_check = \"off\"");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["credited"], 10);
    assert_eq!(f["repeats"], Value::Null, "not checked: {f:#}");
    assert_eq!(f["warning"], Value::Null);
    assert_eq!(files_json(&w)[1]["repeats"], Value::Null);
}

/// 3 of 10 rows repeat rows of an earlier file: credited, and counted in
/// `once --json`, `files --json`, `files` and the run summary log line.
#[test]
fn a_file_with_30_percent_repeats_is_credited_with_the_repeats_counted() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write("inbox/shop/nov.csv", FIRST);
    assert_eq!(w.once_json("shop", &[]).0, 0);
    // Same customers, same amounts for c1–c3 (a monthly exchange); new rows
    // otherwise, c4 with other miles is not a repeat.
    let dec = "NM0000000001,c1,100\nNM0000000002,c2,200\nNM0000000005,c3,300\n\
NM0000000001,c4,401\nNM0000000002,d5,500\nNM0000000005,d6,600\nNM0000000001,d7,700\n\
NM0000000002,d8,800\nNM0000000005,d9,900\nNM0000000001,d10,1000\n";
    w.write("inbox/shop/dec.csv", dec);
    let out = w.run(&["once", "--json", "--partner", "shop"]);
    assert!(out.status.success());
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &run[0]["files"][0];
    assert_eq!(f["outcome"], "credited", "{f:#}");
    assert_eq!(f["credited"], 10);
    assert_eq!(f["repeats"], 3);
    assert_eq!(run[0]["repeats"], 3, "run total");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("run summary") && l.contains("repeats=3")),
        "{log}"
    );
    let files = files_json(&w);
    assert_eq!(files[1]["repeats"], 3);
    assert_eq!(files[0]["repeats"], 0);
    let plain = w.ok(&["files"]);
    assert!(plain.lines().next().unwrap().contains("repeats"), "{plain}");
    assert!(
        plain
            .lines()
            .any(|l| l.contains("dec.csv") && l.split('\t').nth(8) == Some("3")),
        "{plain}"
    );
}

/// `unique_partner_key`: a key credited in an earlier file fails E010 in a
/// later one; within a file the key's first row is credited, an identical
/// repeat is E008, any other reuse E010.
#[test]
fn unique_partner_key_fails_reused_keys_with_e010() {
    let w = Workspace::new();
    w.config(&local_partner(
        "shop",
        "inbox/shop",
        "unique_partner_key = true\nmax_error_ratio = 0.9",
    ));
    w.demo_members();
    w.write(
        "inbox/shop/a.csv",
        "NM0000000001,ORD-1,100\nNM0000000002,ORD-2,200\n",
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(run["files"][0]["credited"], 2);
    w.write(
        "inbox/shop/b.csv",
        "NM0000000005,ORD-2,999\n\
         NM0000000005,ORD-3,300\n\
         NM0000000001,ORD-3,300\n\
         NM0000000002,ORD-4,400\n\
         NM0000000002,ORD-4,400\n\
         NM0000000001,ORD-1,100\n\
         NM0000000001,ORD-5,500\n",
    );
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    let f = &run["files"][0];
    assert_eq!(f["credited"], 3, "{f:#}");
    assert_eq!(f["failed_by_code"]["E010"], 3, "{f:#}");
    assert_eq!(f["failed_by_code"]["E008"], 1, "{f:#}");
    assert_eq!(
        read(&w.report_of(f)),
        "NM0000000005,ORD-2,999,E010\n\
         NM0000000001,ORD-3,300,E010\n\
         NM0000000002,ORD-4,400,E008\n\
         NM0000000001,ORD-1,100,E010\n"
    );
    assert_eq!(w.balance("NM0000000005"), 300);
    assert_eq!(w.balance("NM0000000001"), 100 + 500);
    assert_eq!(w.balance("NM0000000002"), 200 + 400);
    w.assert_balances_match_ledger();
}

/// Two deliveries of `POINT.csv` with different content: two reports, both
/// still on disk, each at the path `files` shows, each with its own rows.
#[test]
fn two_deliveries_of_one_name_keep_two_reports() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write("inbox/shop/POINT.csv", "NM0000000001,p1,10\nnobody,p2,20\n");
    assert_eq!(w.once_json("shop", &[]).0, 0);
    w.write(
        "inbox/shop/POINT.csv",
        "NM0000000002,q1,30\nNM0000000003,q2,40\n",
    );
    assert_eq!(w.once_json("shop", &[]).0, 0);
    let files = files_json(&w);
    assert_eq!(files.as_array().unwrap().len(), 2, "{files:#}");
    let (r1, r2) = (w.report_of(&files[0]), w.report_of(&files[1]));
    assert_ne!(r1, r2);
    assert_eq!(read(&r1), "nobody,p2,20,E003\n");
    assert_eq!(read(&r2), "NM0000000003,q2,40,E004\n");
    // The partner's copy keeps the contract name (the latest delivery's).
    assert_eq!(
        read(&w.path("inbox/shop/errors/POINT.errors.csv")),
        read(&r2)
    );
    let plain = w.ok(&["files"]);
    for r in [&r1, &r2] {
        assert!(plain.contains(&r.display().to_string()), "{plain}");
    }
}

/// A dry run of a new `POINT.csv` after a real one was credited writes its
/// own report under dry-run/, never uploaded, and leaves the real report and
/// its uploaded copy byte-identical.
#[test]
fn a_dry_run_leaves_the_real_report_untouched() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write("inbox/shop/POINT.csv", "NM0000000001,p1,10\nnobody,p2,20\n");
    let (_, run) = w.once_json("shop", &[]);
    let real = w.report_of(&run["files"][0]);
    let (real_bytes, uploaded) = (
        std::fs::read(&real).unwrap(),
        std::fs::read(w.path("inbox/shop/errors/POINT.errors.csv")).unwrap(),
    );
    w.write(
        "inbox/shop/POINT.csv",
        "NM0000000004,q1,30\nNM0000000002,q2,40\n",
    );
    let (code, run) = w.once_json("shop", &["--dry-run"]);
    assert_eq!(code, 0, "{run:#}");
    let dry = std::path::PathBuf::from(run["files"][0]["report_path"].as_str().unwrap());
    assert!(
        dry.starts_with(w.path("var/reports/shop/dry-run")),
        "{}",
        dry.display()
    );
    assert_eq!(read(&dry), "NM0000000004,q1,30,E004\n");
    assert_eq!(std::fs::read(&real).unwrap(), real_bytes);
    assert_eq!(
        std::fs::read(w.path("inbox/shop/errors/POINT.errors.csv")).unwrap(),
        uploaded,
        "a dry run uploads nothing"
    );
    assert_eq!(
        w.report_files("shop").len(),
        2,
        "{:?}",
        w.report_files("shop")
    );
}

/// Empty and duplicate files: a one-line report with their file code, in
/// `files` like every other report.
#[test]
fn empty_and_duplicate_files_get_a_one_line_report() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w.demo_members();
    w.write("inbox/shop/a.csv", "NM0000000001,k1,10\r\n");
    assert_eq!(w.once_json("shop", &[]).0, 0);
    w.write("inbox/shop/a-copy.csv", "NM0000000001,k1,10\r\n");
    w.write("inbox/shop/empty.csv", "");
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    let files = files_json(&w);
    let find = |n: &str| {
        files
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap()
            .clone()
    };
    let dup = find("a-copy.csv");
    assert_eq!(dup["outcome"], "duplicate");
    assert_eq!(dup["file_code"], "F001");
    assert!(
        dup["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("file {}", find("a.csv")["id"])),
        "{dup:#}"
    );
    // When it was credited, for people: in the daemon's zone, named.
    let at = dup["reason"]
        .as_str()
        .unwrap()
        .rsplit(" at ")
        .next()
        .unwrap();
    assert!(
        at.len() == "2026-11-30 11:48:47 JST".len() && at.ends_with(" JST"),
        "{dup:#}"
    );
    assert_eq!(
        read(&w.report_of(&dup)),
        ",,,F001\r\n",
        "the file's own line ending"
    );
    let empty = find("empty.csv");
    assert_eq!(empty["file_code"], "F003");
    assert_eq!(read(&w.report_of(&empty)), ",,,F003\n");
    assert_eq!(
        read(&w.path("inbox/shop/errors/a-copy.errors.csv")),
        ",,,F001\r\n"
    );
    assert_eq!(
        read(&w.path("inbox/shop/errors/empty.errors.csv")),
        ",,,F003\n"
    );
    // once --json shows the same names and values as files --json.
    for f in run["files"].as_array().unwrap() {
        let row = find(f["name"].as_str().unwrap());
        for k in [
            "id",
            "outcome",
            "file_code",
            "report_path",
            "archive_path",
            "failed_by_code",
            "rows",
        ] {
            assert_eq!(f[k], row[k], "{k}: {f:#} vs {row:#}");
        }
    }
}
