//! A throw-away milebatch installation in a temp dir: config, members,
//! inboxes, the SQLite file, and the real binary run against it (once, or
//! as a background daemon).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_milebatch");

/// Test-only: starts the binary's clock at this instant (see
/// `milebatch::daemon::FAKE_NOW_ENV`).
pub const FAKE_NOW: &str = "MILEBATCH_FAKE_NOW";

/// The demo members (see fixtures/members.csv).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

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

    pub fn config_path(&self) -> PathBuf {
        self.path("partners.toml")
    }

    /// Write a file (creating folders).
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Write `partners.toml`: a `[daemon]` section with the database and
    /// data dir inside the workspace, then `partners` as given.
    pub fn config(&self, partners: &str) {
        self.write_config("", partners);
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

    /// A `[[partner]]` on `schedule` with a local inbox `inbox/<id>`
    /// (created), read at once.
    pub fn scheduled_partner(&self, id: &str, schedule: &str) -> String {
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

    /// Run `cmd` to completion; panics with its output unless it exits 0.
    pub fn ok_cmd(&self, mut cmd: Command) -> Output {
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

    /// Import the demo members from fixtures/members.csv.
    pub fn demo_members(&self) {
        self.ok(&[
            "members",
            "import",
            fixture("members.csv").to_str().unwrap(),
        ]);
    }

    /// Run the binary with `--config` and `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[("RUST_LOG", "info")])
    }

    /// Run with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cmd(args)
            .envs(env.iter().copied())
            .output()
            .expect("run milebatch")
    }

    /// Run and insist on exit 0; the stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "milebatch {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `once --json` for one partner: (exit code, the partner's run report).
    pub fn once_json(&self, partner: &str, extra: &[&str]) -> (i32, serde_json::Value) {
        let mut args = vec!["once", "--json", "--partner", partner];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "once --json printed no JSON ({e}):\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v[0].clone())
    }

    /// The database; never creates it (that is milebatch's job).
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

    pub fn balance(&self, member_id: &str) -> i64 {
        self.db()
            .query_row(
                "SELECT COALESCE((SELECT miles FROM balances b JOIN members m ON m.id = b.member WHERE m.member_id = ?1), 0)",
                [member_id],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Ledger rows in total, and per (file, line) the most credits seen.
    pub fn ledger_rows(&self) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
            .unwrap()
    }

    /// Every balance equals the sum of its ledger rows.
    pub fn assert_balances_match_ledger(&self) {
        let bad: i64 = self
            .db()
            .query_row(
                // One pass over the ledger (it has no index by member).
                "SELECT count(*) FROM (
                   SELECT COALESCE(b.miles, 0) AS bal, COALESCE(l.total, 0) AS led
                   FROM members m
                   LEFT JOIN balances b ON b.member = m.id
                   LEFT JOIN (SELECT member, SUM(miles) AS total FROM ledger GROUP BY member) l
                     ON l.member = m.id)
                 WHERE bal <> led",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(bad, 0, "balances differ from ledger sums");
    }
}

/// A local-inbox partner section. `extra` lines go into `[[partner]]`.
pub fn local_partner(id: &str, inbox: &str, extra: &str) -> String {
    format!(
        "[[partner]]\nid = \"{id}\"\nname = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n{extra}\n[partner.source]\nkind = \"local\"\ndir = \"{inbox}\"\nready = \"immediate\"\n\n"
    )
}

/// `n` active members `M000000`… with e-mails `m<i>@example.jp`, as CSV.
pub fn members_csv(n: usize) -> String {
    let mut s = String::from("member_id,email,status\n");
    for i in 0..n {
        s.push_str(&format!("M{i:06},m{i}@example.jp,active\n"));
    }
    s
}

/// A valid exchange file of `rows` rows over `members` members (IDs and
/// e-mails alternating, CRLF), and the miles each member should receive.
pub fn exchange_csv(rows: usize, members: usize, seed: u64) -> (Vec<u8>, Vec<i64>) {
    let mut out = Vec::with_capacity(rows * 28);
    let mut expect = vec![0i64; members];
    let mut x = seed | 1;
    for r in 0..rows {
        // xorshift: deterministic, no extra crate.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let m = (x % members as u64) as usize;
        let miles = 1 + (x >> 32) % 5000;
        expect[m] += miles as i64;
        if r % 2 == 0 {
            out.extend_from_slice(format!("M{m:06},K{r:09},{miles}\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("m{m}@example.jp,K{r:09},{miles}\r\n").as_bytes());
        }
    }
    (out, expect)
}

impl Workspace {
    /// Import `members_csv(n)`.
    pub fn members(&self, n: usize) {
        let p = self.write("members.csv", members_csv(n));
        self.ok(&["members", "import", p.to_str().unwrap()]);
    }

    /// Balances of `M000000`… in order.
    pub fn balances(&self, n: usize) -> Vec<i64> {
        let db = self.db();
        let mut st = db
            .prepare(
                "SELECT m.member_id, b.miles FROM balances b JOIN members m ON m.id = b.member",
            )
            .unwrap();
        let mut v = vec![0i64; n];
        for row in st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
        {
            let (id, miles) = row.unwrap();
            v[id[1..].parse::<usize>().unwrap()] = miles;
        }
        v
    }
}

impl Workspace {
    /// The local report of one file entry of `once --json` or `files --json`
    /// (`id`, `partner`, `name`, `report_path`), checked against the scheme
    /// `var/reports/<partner>/<received-date>/<id>-<stem>.errors.csv`, the
    /// date in Asia/Tokyo (the workspace's zone), and existing.
    pub fn report_of(&self, file: &serde_json::Value) -> PathBuf {
        let id = file["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id: {file:#}"));
        let partner = file["partner"].as_str().unwrap();
        let name = file["name"].as_str().unwrap();
        // An encrypted delivery (`a.csv.pgp`) reports as its plain name would.
        let plain = [".pgp", ".gpg", ".asc"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let stem = plain.rsplit_once('.').map_or(plain, |(s, _)| s);
        let shown = PathBuf::from(
            file["report_path"]
                .as_str()
                .unwrap_or_else(|| panic!("no report_path: {file:#}")),
        );
        // Today in Tokyo, or a minute ago (a run across midnight).
        let days: Vec<String> = [0, 60]
            .iter()
            .map(|ago| {
                (chrono::Utc::now() - chrono::Duration::seconds(*ago))
                    .with_timezone(&chrono_tz::Asia::Tokyo)
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        assert!(
            days.iter().any(|d| shown
                == self.path(&format!("var/reports/{partner}/{d}/{id}-{stem}.errors.csv"))),
            "report path {} is not var/reports/{partner}/<today>/{id}-{stem}.errors.csv",
            shown.display()
        );
        assert!(shown.is_file(), "{} missing", shown.display());
        shown
    }

    /// Every file under `var/reports/<partner>` (any depth), relative paths.
    pub fn report_files(&self, partner: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let base = self.path(&format!("var/reports/{partner}"));
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
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
