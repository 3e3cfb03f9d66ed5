//! Any bytes as a partner file through parse → decode → validate → credit
//! (dry run): no panic, and every row read is credited or failed.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run pipeline -- -max_total_time=60`
#![no_main]

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use milebatch::config::Config;
use milebatch::pipeline::credit::{credit_file, CreditJob, Credited};
use milebatch::pipeline::Fetched;

struct State {
    _dir: tempfile_dir::Dir,
    conn: rusqlite::Connection,
    configs: Vec<Config>,
    archive: PathBuf,
    report: PathBuf,
}

mod tempfile_dir {
    /// A temp folder removed on drop (no extra dependency).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn init() -> State {
    let dir = std::env::temp_dir().join(format!("milebatch-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut conn = milebatch::db::open(&dir.join("m.db")).unwrap();
    milebatch::members::import_from(
        &mut conn,
        "M1,m1@example.jp,active\nM2,m2@example.jp,active\nM3,,suspended\n".as_bytes(),
        "m",
    )
    .unwrap();
    let configs = ["utf-8", "shift_jis"]
        .iter()
        .map(|enc| {
            Config::parse(
                &format!(
                    "[[partner]]\nid = \"p\"\nschedule = \"daily 03:00\"\nencoding = \"{enc}\"\nmax_miles_per_row = 5000\nmax_error_ratio = 1.0\n[partner.source]\nkind = \"local\"\ndir = \"inbox\"\n"
                ),
                Path::new("/tmp/partners.toml"),
            )
            .unwrap()
        })
        .collect();
    State {
        archive: dir.join("in.csv"),
        report: dir.join("in.errors.csv"),
        _dir: tempfile_dir::Dir(dir),
        conn,
        configs,
    }
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let st = s.get_or_insert_with(init);
        let (which, body) = data.split_first().unwrap_or((&0, &[]));
        std::fs::write(&st.archive, body).unwrap();
        let file = Fetched {
            name: "in.csv".into(),
            size: body.len() as u64,
            mtime: None,
            sha256: "fuzz".into(),
            archive: st.archive.clone(),
        };
        let cfg = &st.configs[(*which as usize) % st.configs.len()];
        let job = CreditJob {
            partner: &cfg.partners[0],
            file: &file,
            run_id: None,
            reports: milebatch::pipeline::report::ReportPlace::new(
                st.report.parent().unwrap(),
                "p",
                chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                "in.csv",
                "fuzz",
                true,
            ),
            now: chrono::Utc::now(),
            dry_run: true,
            retry_of: None,
            channel: milebatch::pipeline::Channel::Pull,
        };
        match credit_file(&mut st.conn, &job).expect("no I/O or database error") {
            Credited::Done { counts, .. } | Credited::Refused { counts, .. } => {
                assert_eq!(counts.credited + counts.failed, counts.rows);
            }
            Credited::Duplicate { .. } => panic!("dry runs never commit"),
        }
    });
});
