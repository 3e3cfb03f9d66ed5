//! Exactly-once under SIGKILL: kill `milebatch once` mid-file, run it again,
//! and every row is credited exactly once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::workspace::{exchange_csv, local_partner, Workspace, BIN};

#[test]
fn killed_mid_run_then_rerun_credits_each_row_exactly_once() {
    const MEMBERS: usize = 2000;
    const ROWS: usize = 150_000;
    let mut killed_before_done = 0;
    // Different moments: during download/archive, inside the transaction,
    // around the commit.
    for (i, delay_ms) in [30u64, 250, 600, 1200].into_iter().enumerate() {
        let w = Workspace::new();
        w.config(&local_partner("shop", "inbox/shop", ""));
        w.members(MEMBERS);
        let (file, expect) = exchange_csv(ROWS, MEMBERS, 7 + i as u64);
        w.write("inbox/shop/big.csv", &file);

        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(w.config_path())
            .args(["once", "--partner", "shop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if !finished {
            killed_before_done += 1;
        }

        // Run again until clean; then once more to be sure nothing changes.
        let (code, run) = w.once_json("shop", &[]);
        assert_eq!(code, 0, "rerun after kill at {delay_ms} ms: {run:#}");
        let (code, again) = w.once_json("shop", &[]);
        assert_eq!(code, 0, "{again:#}");
        assert_eq!(again["outcome"], "no-file");

        assert_eq!(w.ledger_rows(), ROWS as i64, "kill at {delay_ms} ms");
        let credited_files: i64 = w
            .db()
            .query_row(
                "SELECT count(*) FROM files WHERE outcome = 'credited'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(credited_files, 1);
        assert_eq!(
            w.balances(MEMBERS),
            expect,
            "kill at {delay_ms} ms: balances"
        );
        w.assert_balances_match_ledger();
        assert!(
            w.path("inbox/shop/processed/big.csv").exists(),
            "tidy finished on rerun"
        );
    }
    assert!(
        killed_before_done >= 2,
        "the kills must land mid-run to prove anything"
    );
}
