//! `bench/run.sh --smoke`: the benchmark script end to end on 10k members x
//! 10k rows with this build's binary. The timings are meaningless at this
//! size (and in a debug build); what is checked is that the script runs and
//! that milebatch agrees with both baselines: credited + failed = rows,
//! credited rows and miles equal the sqlite3 floor's ledger, failed rows equal
//! the Python baseline's errors. The workload generator and the baselines are
//! in `bench/`; needs sqlite3, python3 and /usr/bin/time.

use std::path::Path;
use std::process::Command;

/// `bench/run.sh --smoke` with `extra` arguments and this build's binary;
/// its stdout, once it exited 0.
fn run_smoke(extra: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .arg("--smoke")
        .args(extra)
        .args(["--bin", env!("CARGO_BIN_EXE_milebatch")])
        .output()
        .expect("run bench/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench/run.sh --smoke {extra:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The report's correctness section (between "correctness" and "targets").
fn correctness(stdout: &str) -> &str {
    stdout
        .split("correctness")
        .nth(1)
        .and_then(|s| s.split("targets").next())
        .unwrap_or_default()
}

#[test]
fn bench_smoke_run_agrees_with_the_baselines() {
    let stdout = run_smoke(&[]);
    for job in [
        "mkmembers.sh",
        "milebatch members import",
        "sqlite_floor.sh",
        "python_baseline.py",
        "milebatch once",
        "milebatch verify",
    ] {
        assert!(stdout.contains(job), "no {job:?} row in:\n{stdout}");
    }
    let correctness = correctness(&stdout);
    assert_eq!(correctness.matches("  OK   ").count(), 8, "{stdout}");
    assert!(correctness.contains("OK   verify ok over "), "{stdout}");
    assert!(
        correctness.contains("OK   re-send detection ran"),
        "the timed run must have re-send detection on:\n{stdout}"
    );
    assert!(!correctness.contains("FAIL"), "{stdout}");
    // Both sides agreeing on nothing credited would prove nothing.
    let credited: u64 = correctness
        .lines()
        .find(|l| l.contains(" + failed "))
        .and_then(|l| l.split("credited ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a credited count");
    assert!(credited > 9_000, "{stdout}");
}

/// `bench/run.sh --smoke --store postgres`: the same run with the member
/// import and `once` also on a throw-away PostgreSQL cluster (bench/pg.sh);
/// what is checked is that the script runs and that PostgreSQL credited
/// the file exactly as SQLite did (the script's own correctness lines).
#[test]
fn bench_smoke_on_postgres_credits_as_sqlite_does() {
    let stdout = run_smoke(&["--store", "postgres"]);
    for row in ["members import, PostgreSQL", "milebatch once, PostgreSQL"] {
        assert!(stdout.contains(row), "no {row:?} row in:\n{stdout}");
    }
    assert!(
        stdout.contains("OK   PostgreSQL: the file credited as on SQLite"),
        "{stdout}"
    );
    assert!(stdout.contains("OK   PostgreSQL ledger rows"), "{stdout}");
    assert!(!correctness(&stdout).contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("PostgreSQL once"),
        "the target is shown:\n{stdout}"
    );
}

/// `bench/upload.sh --smoke`: `once` and the same file uploaded through the
/// site (real `serve` over HTTPS, curl) credit the same rows and miles, the
/// upload is recorded as channel `upload`, no temp file is left, and the
/// table of targets is printed.
#[test]
fn upload_bench_smoke_run_credits_the_same_as_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("bench/upload.sh"))
        .args(["--smoke", "--bin", env!("CARGO_BIN_EXE_milebatch")])
        .output()
        .expect("run bench/upload.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/upload.sh --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(stdout.matches("\nok    ").count(), 5, "{stdout}");
    assert!(!stdout.contains("FAIL  "), "{stdout}");
    for row in ["upload / once", "serve peak RSS (VmHWM)"] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
}
