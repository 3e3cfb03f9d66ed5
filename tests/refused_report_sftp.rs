//! A refused file's report as the partner receives it: uploaded to a real
//! sshd, checked byte for byte. A Shift_JIS (CP932), CRLF partner: every row
//! of the refused file comes back in the partner's own bytes with its own E
//! code or F004; an empty file and a duplicate get their one-line reports.

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
            "GOOD-AGAIN.errors.csv",
            "KOUKAN.errors.csv"
        ]
    );
}
