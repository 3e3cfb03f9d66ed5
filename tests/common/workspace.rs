//! A throw-away milebatch installation in a temp dir: config, members,
//! inboxes, and the real binary run against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_milebatch");

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
        self.write(
            "partners.toml",
            format!(
                "[daemon]\ndatabase = \"var/milebatch.db\"\ndata_dir = \"var\"\ntimezone = \"Asia/Tokyo\"\n\n{partners}"
            ),
        );
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
        Command::new(BIN)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
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

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path("var/milebatch.db")).unwrap()
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
                "SELECT count(*) FROM (
                   SELECT m.id, COALESCE(b.miles, 0) AS bal,
                          (SELECT COALESCE(SUM(miles), 0) FROM ledger l WHERE l.member = m.id) AS led
                   FROM members m LEFT JOIN balances b ON b.member = m.id) WHERE bal <> led",
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
