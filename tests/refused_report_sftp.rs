//! A refused file's report as the partner receives it: uploaded to a real
//! sshd, checked byte for byte. A Shift_JIS (CP932), CRLF partner: every row
//! of the refused file comes back in the partner's own bytes with its own E
//! code or F004; an empty file and a duplicate get their one-line reports.
//! With `summary = true`, every file's summary is uploaded beside it, in
//! CP932 with CRLF, byte-checked against the layout built here.

mod common;

use std::path::Path;

use common::servers::{ensure_test_user, Sshd, SshdOpts};
use common::workspace::{fixture, Workspace};

fn sjis(s: &str) -> Vec<u8> {
    let (b, _, bad) = encoding_rs::SHIFT_JIS.encode(s);
    assert!(!bad, "{s} is not CP932");
    b.into_owned()
}

fn put_owned(path: &Path, data: &[u8]) {
    let (u, g) = ensure_test_user();
    std::fs::write(path, data).unwrap();
    std::os::unix::fs::chown(path, Some(u), Some(g)).unwrap();
}

#[test]
fn a_refused_files_uploaded_report_holds_every_row_with_f_codes() {
    let sshd = Sshd::start(SshdOpts::default());
    let (u, g) = ensure_test_user();
    let inbox = sshd.root.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::os::unix::fs::chown(&inbox, Some(u), Some(g)).unwrap();

    let w = Workspace::new();
    w.config(&format!(
        r#"[[partner]]
id = "konbini"
schedule = "daily 03:00"
encoding = "shift_jis"
max_miles_per_row = 5000
max_error_ratio = 0.2
summary = true
[partner.source]
kind = "sftp"
host = "127.0.0.1"
port = {port}
user = "{user}"
dir = "{dir}"
key_file = "{key}"
host_key = "{fp}"
ready = "immediate"
timeout = "5s"
retries = 1
"#,
        port = sshd.port,
        user = sshd.user,
        dir = inbox.display(),
        key = sshd.client_key.display(),
        fp = sshd.host_key_fingerprint(),
    ));
    w.ok(&[
        "members",
        "import",
        fixture("members.csv").to_str().unwrap(),
    ]);

    // (line as sent, its own code if it fails on its own)
    let rows: [(&str, Option<&str>); 6] = [
        ("NM0000000001,顧客-001,100", None),
        ("髙橋①@example.jp,顧客-002,200", None),
        ("NM0000000099,顧客-003,300", Some("E003")),
        ("NM0000000003,顧客-004,400", Some("E004")),
        ("NM0000000005,\"顧客,005\",500", None),
        ("NM0000000002,顧客-006,５００", Some("E006")),
    ];
    let mut file = Vec::new();
    let mut want = Vec::new();
    for (line, code) in rows {
        file.extend(sjis(line));
        file.extend_from_slice(b"\r\n");
        want.extend(sjis(line));
        want.extend_from_slice(format!(",{}\r\n", code.unwrap_or("F004")).as_bytes());
    }
    put_owned(&inbox.join("KOUKAN.csv"), &file);
    put_owned(&inbox.join("EMPTY.csv"), b"");
    let good = sjis("NM0000000001,顧客-100,10\r\n");
    put_owned(&inbox.join("GOOD.csv"), &good);
    put_owned(
        &inbox.join("ポイント交換.csv"),
        &sjis("NM0000000002,顧客-200,20\r\nNM0000000005,顧客-201,30\r\n"),
    );

    let (code, run) = w.once_json("konbini", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["error"], serde_json::Value::Null, "{run:#}");
    let files = run["files"].as_array().unwrap();
    let koukan = files.iter().find(|f| f["name"] == "KOUKAN.csv").unwrap();
    assert_eq!(koukan["file_code"], "F004", "{koukan:#}");
    assert_eq!(w.balance("NM0000000001"), 10, "only GOOD.csv credited");

    let uploaded = std::fs::read(inbox.join("errors/KOUKAN.errors.csv")).unwrap();
    assert!(
        uploaded == want,
        "uploaded report differs:\n{}\nwant\n{}",
        String::from_utf8_lossy(&uploaded),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(
        std::fs::read(w.report_of(koukan)).unwrap(),
        want,
        "the local copy"
    );
    assert_eq!(
        std::fs::read(inbox.join("errors/EMPTY.errors.csv")).unwrap(),
        b",,,F003\r\n"
    );
    assert!(inbox.join("failed/KOUKAN.csv").exists());
    assert!(inbox.join("failed/EMPTY.csv").exists());
    assert!(
        !inbox.join("errors/GOOD.errors.csv").exists(),
        "no failed row, no report"
    );

    // The summaries: a credited file with a Japanese name, the refused one
    // with its F code and reason, the empty one.
    let jp = files
        .iter()
        .find(|f| f["name"] == "ポイント交換.csv")
        .unwrap();
    assert_eq!(jp["outcome"], "credited", "{jp:#}");
    let uploaded = std::fs::read(inbox.join("errors/ポイント交換.summary.csv")).unwrap();
    let want = expected_summary(
        &w,
        jp["id"].as_i64().unwrap(),
        "credited",
        [2, 2, 0, 50],
        &[],
        None,
    );
    assert!(
        uploaded == want,
        "summary differs:\n{}\nwant\n{}",
        String::from_utf8_lossy(&uploaded),
        String::from_utf8_lossy(&want)
    );
    // CP932 on the wire, not UTF-8: the name's bytes as Shift_JIS.
    let name_sjis = sjis("file,ポイント交換.csv\r\n");
    assert!(uploaded.windows(name_sjis.len()).any(|x| x == name_sjis));
    assert!(!uploaded
        .windows("ポイント".len())
        .any(|x| x == "ポイント".as_bytes()));
    assert_eq!(
        std::fs::read(summary_local(
            &w,
            jp["id"].as_i64().unwrap(),
            "ポイント交換"
        ))
        .unwrap(),
        want,
        "the local copy beside the report"
    );

    let reason: String = w
        .db()
        .query_row(
            "SELECT reason FROM files WHERE name = 'KOUKAN.csv'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!reason.is_empty());
    let uploaded = std::fs::read(inbox.join("errors/KOUKAN.summary.csv")).unwrap();
    let want = expected_summary(
        &w,
        koukan["id"].as_i64().unwrap(),
        "refused",
        [6, 0, 3, 0],
        &["E003", "E004", "E006"],
        Some(("F004", &reason)),
    );
    assert!(
        uploaded == want,
        "refused summary differs:\n{}\nwant\n{}",
        String::from_utf8_lossy(&uploaded),
        String::from_utf8_lossy(&want)
    );
    let empty = files.iter().find(|f| f["name"] == "EMPTY.csv").unwrap();
    let uploaded =
        String::from_utf8(std::fs::read(inbox.join("errors/EMPTY.summary.csv")).unwrap()).unwrap();
    assert!(
        uploaded.contains("outcome,refused\r\nrows,0\r\n")
            && uploaded.contains("file_code,F003\r\n"),
        "{uploaded}"
    );
    assert_eq!(empty["file_code"], "F003");

    // The same content again under another name: a duplicate, one line.
    put_owned(&inbox.join("GOOD-AGAIN.csv"), &good);
    let (code, run) = w.once_json("konbini", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["files"][0]["file_code"], "F001", "{run:#}");
    assert_eq!(
        std::fs::read(inbox.join("errors/GOOD-AGAIN.errors.csv")).unwrap(),
        b",,,F001\r\n"
    );
    assert_eq!(w.balance("NM0000000001"), 10);
    let mut left: Vec<String> = std::fs::read_dir(inbox.join("errors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "EMPTY.errors.csv",
            "EMPTY.summary.csv",
            "GOOD-AGAIN.errors.csv",
            "GOOD-AGAIN.summary.csv",
            "GOOD.summary.csv",
            "KOUKAN.errors.csv",
            "KOUKAN.summary.csv",
            "ポイント交換.summary.csv",
        ]
    );
    let again =
        String::from_utf8(std::fs::read(inbox.join("errors/GOOD-AGAIN.summary.csv")).unwrap())
            .unwrap();
    assert!(
        again.contains("outcome,duplicate\r\n")
            && again.contains("file_code,F001\r\nreason,\"duplicate delivery"),
        "{again}"
    );
}

/// A stored UTC time in Japan time, to the second, with its offset.
fn jst(stored: &str) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(stored).unwrap();
    t.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).unwrap())
        .format("%Y-%m-%dT%H:%M:%S+09:00")
        .to_string()
}

fn summary_local(w: &Workspace, id: i64, stem: &str) -> std::path::PathBuf {
    let started: String = w
        .db()
        .query_row("SELECT started_at FROM files WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    w.path(&format!(
        "var/reports/konbini/{}/{id}-{stem}.summary.csv",
        &jst(&started)[..10]
    ))
}

/// The summary the README documents, built here from the file's row, as
/// CP932 with CRLF. `counts`: rows, credited, failed, miles; `codes`: the
/// E codes that occurred once each.
fn expected_summary(
    w: &Workspace,
    id: i64,
    outcome: &str,
    counts: [u64; 4],
    codes: &[&str],
    refused: Option<(&str, &str)>,
) -> Vec<u8> {
    let (name, sha, started, finished): (String, String, String, String) = w
        .db()
        .query_row(
            "SELECT name, sha256, started_at, finished_at FROM files WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let mut t = format!(
        "item,value\r\nfile,{name}\r\nsha256,{sha}\r\nreceived_at,{}\r\nprocessed_at,{}\r\n\
         outcome,{outcome}\r\nrows,{}\r\ncredited,{}\r\nfailed,{}\r\nmiles,{}\r\n",
        jst(&started),
        jst(&finished),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    for n in 1..=10 {
        let code = format!("E{n:03}");
        t.push_str(&format!(
            "{code},{}\r\n",
            u8::from(codes.contains(&code.as_str()))
        ));
    }
    let (fc, why) = refused.unwrap_or(("", ""));
    let why = if why.contains([',', '"']) {
        format!("\"{}\"", why.replace('"', "\"\""))
    } else {
        why.to_owned()
    };
    t.push_str(&format!("file_code,{fc}\r\nreason,{why}\r\n"));
    sjis(&t)
}
