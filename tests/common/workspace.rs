//! A throw-away milebatch installation for driving the real binary: a temp
//! folder with `partners.toml`, members, local inboxes and the SQLite file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_milebatch");

/// Test-only: starts the binary's clock at this instant (see
/// `milebatch::daemon::FAKE_NOW_ENV`).
pub const FAKE_NOW: &str = "MILEBATCH_FAKE_NOW";

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write `rel` (creating folders), returning its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("partners.toml")
    }

    /// `partners.toml` with a `[daemon]` section (database `var/milebatch.db`,
    /// data_dir `var`, Asia/Tokyo) plus `extra_daemon` lines, then `partners`.
    pub fn write_config(&self, extra_daemon: &str, partners: &str) {
        let text = format!(
            "[daemon]\ndatabase = \"var/milebatch.db\"\ndata_dir = \"var\"\n\
             timezone = \"Asia/Tokyo\"\n{extra_daemon}\n{partners}"
        );
        self.write("partners.toml", text);
    }

    /// A `[[partner]]` with a local inbox `inbox/<id>` (created), read at once.
    pub fn local_partner(&self, id: &str, schedule: &str) -> String {
        std::fs::create_dir_all(self.inbox(id)).unwrap();
        format!(
            "[[partner]]\nid = \"{id}\"\nschedule = \"{schedule}\"\nmax_miles_per_row = 100000\n\
             [partner.source]\nkind = \"local\"\ndir = \"inbox/{id}\"\nready = \"immediate\"\n\n"
        )
    }

    pub fn inbox(&self, partner: &str) -> PathBuf {
        self.path("inbox").join(partner)
    }

    /// A command for the binary with `--config` set and a clean environment
    /// as far as milebatch is concerned.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove(FAKE_NOW)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        c
    }

    /// Run to completion; panics with its output unless it exits 0.
    pub fn ok(&self, mut cmd: Command) -> Output {
        let out = cmd.output().expect("spawn milebatch");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `members import` of M0..M{n-1}, all active.
    pub fn import_members(&self, n: usize) {
        let mut text = String::from("member_id,email,status\n");
        for i in 0..n {
            text.push_str(&format!("M{i},m{i}@example.com,active\n"));
        }
        let p = self.write("members.csv", text);
        self.ok(self.cmd(&["members", "import", p.to_str().unwrap()]));
    }

    /// Start `milebatch run` in the background, stderr to `daemon.log`.
    pub fn spawn_daemon(&self, fake_now: Option<&str>) -> Daemon {
        let mut c = self.cmd(&["run"]);
        if let Some(t) = fake_now {
            c.env(FAKE_NOW, t);
        }
        self.spawn(c)
    }

    /// Start `cmd` in the background, stdout discarded, stderr to
    /// `daemon.log`; killed when the returned guard drops.
    pub fn spawn(&self, mut cmd: Command) -> Daemon {
        let log = self.path("daemon.log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn milebatch");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// The daemon's database; never creates it (that is milebatch's job).
    pub fn db(&self) -> Connection {
        self.try_db().expect("open the database")
    }

    fn try_db(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(
            self.path("var/milebatch.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )?;
        c.busy_timeout(Duration::from_secs(30))?;
        Ok(c)
    }

    /// One integer from SQL (`NULL` reads as 0).
    pub fn int(&self, sql: &str) -> i64 {
        self.try_int(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Like [`Self::int`], but an error (no database or schema yet) is `Err`,
    /// for polling while milebatch starts.
    pub fn try_int(&self, sql: &str) -> rusqlite::Result<i64> {
        self.try_db()?
            .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|v| v.unwrap_or(0))
    }
}

/// Poll `f` every 20 ms until it holds; panics after `limit` with `what`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `milebatch run`; killed hard if the test panics.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "daemon exited ({st}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < end,
                "no {needle:?} in the daemon log after {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name} failed");
    }

    /// Wait for the process to exit (at most `limit`); its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            assert!(
                Instant::now() < end,
                "daemon still running {limit:?} after the signal:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `path` holds a file whose name ends with `suffix`.
pub fn has_file_ending(dir: &Path, suffix: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.ends_with(suffix) && !n.starts_with('.')
            })
        })
        .unwrap_or(false)
}
