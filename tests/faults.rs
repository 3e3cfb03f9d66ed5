//! Faults during the credit transaction: the transaction rolls back, the
//! file is not marked done, the inbox is untouched, the run says why and
//! exits non-zero; once the fault is cleared the file is credited once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::workspace::{exchange_csv, Workspace};

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk(at.to_owned())
    }
    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_the_credit_rolls_back_and_a_later_run_credits_once() {
    let w = Workspace::new();
    let disk = SmallDisk::mount(&w.path("db"), "1m");
    w.write(
        "partners.toml",
        "[daemon]\ndatabase = \"db/milebatch.db\"\ndata_dir = \"var\"\n\n\
         [[partner]]\nid = \"shop\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n\
         [partner.source]\nkind = \"local\"\ndir = \"inbox\"\nready = \"immediate\"\n",
    );
    w.members(500);
    let (file, expect) = exchange_csv(60_000, 500, 3);
    w.write("inbox/big.csv", &file);

    let out = w.run(&["once"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("full"), "the cause is named: {text}");
    assert!(!text.contains("panicked"), "{text}");
    let db = || rusqlite::Connection::open(w.path("db/milebatch.db")).unwrap();
    let ledger: i64 = db()
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ledger, 0, "rolled back");
    let done: i64 = db()
        .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(done, 0, "the file is not marked done");
    assert!(
        w.path("inbox/big.csv").exists(),
        "the inbox file is not moved"
    );

    disk.resize("64m");
    let out = w.run(&["once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = w.run(&["once"]);
    assert!(out.status.success());
    let ledger: i64 = db()
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ledger, 60_000, "credited once");
    let total: i64 = db()
        .query_row("SELECT SUM(miles) FROM balances", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, expect.iter().sum::<i64>());
}
