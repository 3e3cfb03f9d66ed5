//! Any bytes at all through parse → decode → validate → credit: never a
//! panic, and every row read is either credited or failed.

use std::path::Path;

use milebatch::config::Config;
use milebatch::pipeline::credit::{credit_file, CreditJob, Credited};
use milebatch::pipeline::Fetched;
use proptest::prelude::*;

fn config(encoding: &str, header: bool, dups: bool) -> Config {
    Config::parse(
        &format!(
            r#"
[[partner]]
id = "p"
schedule = "daily 03:00"
encoding = "{encoding}"
header = {header}
max_miles_per_row = 5000
max_error_ratio = 1.0
allow_duplicate_rows = {dups}
[partner.source]
kind = "local"
dir = "inbox"
"#
        ),
        Path::new("/tmp/partners.toml"),
    )
    .unwrap()
}

/// Bytes that look like exchange rows often enough to reach every stage.
fn rowish() -> impl Strategy<Value = Vec<u8>> {
    let member = prop_oneof![
        Just(b"M1".to_vec()),
        Just(b"m2@example.jp".to_vec()),
        Just(b" M3 ".to_vec()),
        Just(b"".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    let miles = prop_oneof![
        Just(b"10".to_vec()),
        Just(b"0".to_vec()),
        Just(b"99999999999999999999999".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    let sep = prop_oneof![
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b",\"".to_vec())
    ];
    let end = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(vec![])
    ];
    let row = (
        member,
        sep.clone(),
        proptest::collection::vec(any::<u8>(), 0..5),
        sep,
        miles,
        end,
    )
        .prop_map(|(a, s1, b, s2, c, e)| [a, s1, b, s2, c, e].concat());
    proptest::collection::vec(row, 0..30).prop_map(|rows| rows.concat())
}

fn check(bytes: &[u8], cfg: &Config, conn: &mut milebatch::store::Conn, dir: &Path) {
    let archive = dir.join("in.csv");
    std::fs::write(&archive, bytes).unwrap();
    let file = Fetched {
        name: "in.csv".into(),
        size: bytes.len() as u64,
        mtime: None,
        sha256: format!("{:x}", bytes.len()),
        archive,
    };
    let job = CreditJob {
        partner: &cfg.partners[0],
        file: &file,
        run_id: None,
        reports: milebatch::pipeline::report::ReportPlace::new(
            dir,
            "p",
            chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            "in.csv",
            &file.sha256,
            true,
        ),
        now: chrono::Utc::now(),
        dry_run: true,
        retry_of: None,
        channel: milebatch::pipeline::Channel::Pull,
    };
    match credit_file(conn, &job).expect("no I/O or database error on any input") {
        Credited::Done { counts, .. } | Credited::Refused { counts, .. } => {
            assert_eq!(counts.credited + counts.failed, counts.rows, "{counts:?}");
            assert_eq!(counts.by_code.iter().sum::<u64>(), counts.failed);
        }
        Credited::Duplicate { .. } => panic!("dry runs never commit, so nothing is a duplicate"),
    }
    let ledger = milebatch::store::Exec::query(&*conn, "SELECT count(*) FROM ledger", &[]).unwrap()
        [0]
    .int(0)
    .unwrap();
    assert_eq!(ledger, 0, "a dry run credits nothing");
}

fn setup() -> (tempfile::TempDir, milebatch::store::Conn) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = milebatch::db::open(&dir.path().join("m.db")).unwrap();
    milebatch::members::import_from(
        &mut conn,
        "M1,m1@example.jp,active\nM2,m2@example.jp,active\nM3,,suspended\n".as_bytes(),
        "m",
    )
    .unwrap();
    (dir, milebatch::store::Conn::Sqlite(conn))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_bytes_never_panic_and_rows_add_up(bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                                             sjis in any::<bool>(), header in any::<bool>()) {
        let (dir, mut conn) = setup();
        let cfg = config(if sjis { "shift_jis" } else { "utf-8" }, header, false);
        check(&bytes, &cfg, &mut conn, dir.path());
    }

    #[test]
    fn rowish_bytes_never_panic_and_rows_add_up(bytes in rowish(), sjis in any::<bool>(), dups in any::<bool>()) {
        let (dir, mut conn) = setup();
        let cfg = config(if sjis { "shift_jis" } else { "utf-8" }, false, dups);
        check(&bytes, &cfg, &mut conn, dir.path());
    }
}
