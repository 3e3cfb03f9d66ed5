//! Bad input gets a clear one-line error, a non-zero exit where the run
//! cannot go on, and never a panic or a partial credit.

mod common;

use common::workspace::{local_partner, Workspace};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_no_panic(o: &std::process::Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "panic: {e}");
    assert_ne!(o.status.code(), Some(101), "panic exit code: {e}");
}

#[test]
fn config_problems_are_one_line_errors_naming_the_file() {
    let w = Workspace::new();
    let o = w.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("partners.toml") && stderr(&o).contains("no config file"),
        "{}",
        stderr(&o)
    );

    w.write("partners.toml", "[daemon\ndatabase = 1\n");
    let o = w.run(&["once"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("partners.toml: line 1"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");

    w.config(&local_partner("shop", "inbox", "encoding = \"latin-1\""));
    let o = w.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("partners.toml: line") && e.contains("latin-1"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");

    w.config(&format!(
        "{}{}",
        local_partner("shop", "a", ""),
        local_partner("shop", "b", "")
    ));
    let o = w.run(&["check"]);
    assert!(stderr(&o).contains("already used"), "{}", stderr(&o));

    w.config(&local_partner("shop", "inbox", "").replace(
        "kind = \"local\"",
        "kind = \"sftp\"\npassword = \"hunter2\"",
    ));
    let o = w.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("`password` must not be written"), "{e}");
    assert!(!e.contains("hunter2"), "the secret is echoed: {e}");
}

#[test]
fn a_missing_inbox_fails_the_run_with_its_path() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "no/such/inbox", ""));
    w.demo_members();
    let o = w.run(&["once"]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("no/such/inbox") && out.contains("No such file"),
        "{out}"
    );
}

#[test]
fn unreadable_files_are_refused_whole_and_named() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    let mut garbage = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..20000 {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        garbage.push((x >> 16) as u8);
    }
    let mut long_line = b"NM0000000001,k,1\n".to_vec();
    long_line.extend(std::iter::repeat_n(b'9', 10 << 20));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.csv", vec![], "no data rows"),
        ("garbage.csv", garbage, ""),
        ("long.csv", long_line, "line 2: a record longer than"),
        (
            "open-quote.csv",
            b"NM0000000001,k,1\n\"NM0000000002,k2,2\n".to_vec(),
            "line 2: a quoted field is never closed",
        ),
        ("nul.csv", b"\0\0\0\0,\0,\0\n\0\0\n".to_vec(), ""),
    ];
    for (name, bytes, _) in &cases {
        w.write(&format!("inbox/{name}"), bytes);
    }
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 1, "{run:#}");
    for f in run["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let (_, _, why) = cases.iter().find(|c| c.0 == name).unwrap();
        assert_eq!(f["outcome"], "refused", "{f:#}");
        assert!(f["reason"].as_str().unwrap().contains(why), "{name}: {f:#}");
    }
    assert_eq!(run["files"].as_array().unwrap().len(), cases.len());
    assert_eq!(w.ledger_rows(), 0, "nothing credited from broken files");
}

#[test]
fn an_unwritable_database_stops_the_run_before_any_file_is_done() {
    let w = Workspace::new();
    w.config(&local_partner("shop", "inbox", ""));
    w.demo_members();
    w.write("inbox/a.csv", "NM0000000001,k1,10\n");
    let db = w.path("var/milebatch.db");
    // Root ignores file modes; the immutable flag stops even root.
    let st = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(
        st.success(),
        "chattr +i failed: this test needs root and e2fsprogs"
    );
    let o = w.run(&["once"]);
    std::process::Command::new("chattr")
        .arg("-i")
        .arg(&db)
        .status()
        .unwrap();
    assert_no_panic(&o);
    assert_ne!(o.status.code(), Some(0));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(
        all.contains("milebatch.db") || all.contains("readonly"),
        "{all}"
    );
    assert_eq!(w.ledger_rows(), 0);
    assert!(w.path("inbox/a.csv").exists(), "the inbox file stays");
    // Fault cleared: credited once.
    let (code, run) = w.once_json("shop", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(w.balance("NM0000000001"), 10);
}
