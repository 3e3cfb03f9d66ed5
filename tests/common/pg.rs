//! Throw-away PostgreSQL clusters for the tests: Debian's binaries
//! (`/usr/lib/postgresql/15/bin`, installed by `.ci/install-deps.sh`), run
//! as the `postgres` OS user in a temp folder it owns, on a free loopback
//! port, never the system's cluster service.
//!
//! - [`shared`]: one cluster per test process (started on first use);
//!   [`PgCluster::fresh_db`] gives each test its own database and a login
//!   role with a password, reached over TCP with SCRAM.
//! - [`PgCluster::start`]: a cluster of a test's own (failover tests), and
//!   [`PgCluster::add_sync_standby`]: a streaming, synchronous standby of it.
//!
//! The server is a direct child (`postgres -D …`, uid/gid of `postgres`),
//! started from a thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG = SIGKILL`: a test process that dies, however it dies,
//! takes its clusters with it. The shared cluster is stopped cleanly
//! (SIGQUIT) and its folder removed when the test process exits.
//!
//! TLS is on, with a certificate from a throw-away CA for `localhost` and
//! `127.0.0.1`; the cluster also listens on `127.0.0.2` (a loopback address
//! the certificate does not name: the TLS name-mismatch test).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::servers::{free_port, require_tool, TestCa};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The password of every test database's login role (the tests give it to
/// milebatch through `database_password_env` / `_file`).
pub const PASSWORD: &str = "mb-test-password";

/// A running cluster.
pub struct PgCluster {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// The CA whose certificate the server presents (for `sslrootcert`).
    pub ca: std::sync::Arc<TestCa>,
    pid: Mutex<Option<u32>>,
    /// Set for clusters owned by a test (dropped: stopped and removed).
    owned: bool,
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no `postgres` OS user: apt-get install -y postgresql (or run `bash .ci/install-deps.sh` as root)"
    );
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// `runuser -u postgres -- BIN/tool args…`, panicking with its output on
/// failure.
fn as_postgres(tool: &str, args: &[&str]) -> String {
    let exe = format!("{BIN}/{tool}");
    require_tool(&exe, "postgresql");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &exe])
        .args(args)
        .current_dir("/tmp")
        .output()
        .unwrap_or_else(|e| panic!("runuser {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed: {text}");
    text
}

fn new_dir(prefix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    chown_postgres(&dir);
    dir
}

/// Start `postgres -D data` as the `postgres` user from a thread that never
/// ends (the parent-death signal fires when the spawning *thread* exits).
fn spawn_server(data: &Path, log: &Path) -> u32 {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    type Job = (PathBuf, PathBuf, std::sync::mpsc::Sender<u32>);
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            for (data, log, reply) in rx {
                let (uid, gid) = postgres_ids();
                let log = fs::File::create(&log).unwrap();
                let mut cmd = Command::new(format!("{BIN}/postgres"));
                cmd.arg("-D")
                    .arg(&data)
                    .uid(uid)
                    .gid(gid)
                    .current_dir("/tmp")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log);
                // SAFETY: prctl is async-signal-safe; nothing else runs here.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let child = cmd.spawn().expect("spawn postgres");
                reply.send(child.id()).unwrap();
                children.push(child);
                // Reap the ones that ended (killed by a test).
                children.retain_mut(|c| c.try_wait().ok().flatten().is_none());
            }
            // The sender lives in a static: this thread never gets here.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    });
    let (reply, rx) = std::sync::mpsc::channel();
    tx.lock()
        .unwrap()
        .send((data.to_owned(), log.to_owned(), reply))
        .unwrap();
    rx.recv().unwrap()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the pid exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

impl PgCluster {
    /// A new cluster owned by the caller: stopped and removed on drop.
    pub fn start() -> PgCluster {
        let mut c = Self::init();
        c.owned = true;
        c
    }

    fn init() -> PgCluster {
        let dir = new_dir("mb-pg-");
        let data = dir.join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let ca = std::sync::Arc::new(TestCa::new());
        let (cert, key) = ca.server_cert("postgres");
        for (from, to) in [(&cert, "server.crt"), (&key, "server.key")] {
            let dest = data.join(to);
            fs::copy(from, &dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
            chown_postgres(&dest);
        }
        // Local admin over the socket; everyone else over TCP with SCRAM;
        // replication for the standby.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host replication postgres 127.0.0.1/32 trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.0/8 scram-sha-256\n",
        )
        .unwrap();
        let port = free_port();
        let c = PgCluster {
            dir,
            data,
            port,
            ca,
            pid: Mutex::new(None),
            owned: false,
        };
        c.append_conf(&format!(
            "listen_addresses = '127.0.0.1,127.0.0.2'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             ssl = on\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             max_replication_slots = 4\n\
             log_min_messages = warning\n",
            c.dir.display()
        ));
        c.run();
        c
    }

    fn append_conf(&self, text: &str) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn run(&self) {
        let pid = spawn_server(&self.data, &self.log_path());
        *self.pid.lock().unwrap() = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(format!("{BIN}/pg_isready"))
                .args(["-q", "-h"])
                .arg(&self.dir)
                .args(["-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                alive(pid) && Instant::now() < deadline,
                "postgres did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `psql` as the superuser over the UNIX socket; the output (unaligned,
    /// tuples only). Panics on an error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("psql (package postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database owned by a new login role (password
    /// [`PASSWORD`]), for one test.
    pub fn fresh_db(&self) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(
            "postgres",
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'"),
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {name}"));
        TestDb {
            name: name.clone(),
            user: name,
            port: self.port,
            ca_pem: self.ca.ca_pem.clone(),
        }
    }

    /// Add a streaming standby (`pg_basebackup -R -X stream -C -S slot`)
    /// and make it synchronous (`synchronous_standby_names = '*'`): from
    /// then on a commit on this cluster returns only once the standby has
    /// it. Returns when the standby reports `sync`.
    pub fn add_sync_standby(&self) -> PgCluster {
        let dir = new_dir("mb-pg-standby-");
        let data = dir.join("data");
        as_postgres(
            "pg_basebackup",
            &[
                "-D",
                data.to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                "standby1",
                "--no-sync",
            ],
        );
        let port = free_port();
        let standby = PgCluster {
            dir,
            data,
            port,
            ca: self.ca.clone(),
            pid: Mutex::new(None),
            owned: true,
        };
        standby.append_conf(&format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            standby.dir.display()
        ));
        standby.run();
        self.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        );
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        ) != "1"
        {
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous: {}",
                standby.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        standby
    }

    /// `pg_ctl promote -w`: this standby becomes a primary.
    pub fn promote(&self) {
        as_postgres(
            "pg_ctl",
            &[
                "promote",
                "-w",
                "-t",
                "30",
                "-D",
                self.data.to_str().unwrap(),
            ],
        );
    }

    /// SIGKILL the postmaster (a host lost), and wait until it is gone.
    pub fn kill(&self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, shared memory released).
    fn stop(&self) {
        self.signal_and_wait(libc::SIGQUIT);
    }

    fn signal_and_wait(&self, signal: i32) {
        if let Some(pid) = self.pid.lock().unwrap().take() {
            // SAFETY: our own child.
            unsafe { libc::kill(pid as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The cluster of this test process, started on first use and stopped
/// when the process exits.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let c = PgCluster::init();
        extern "C" fn stop_shared() {
            if let Some(c) = SHARED.get() {
                c.stop();
                let _ = fs::remove_dir_all(&c.dir);
            }
        }
        // SAFETY: registers a plain function; it runs at process exit.
        unsafe { libc::atexit(stop_shared) };
        c
    })
}

/// One test's database on a cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub user: String,
    pub port: u16,
    /// The CA file for `sslrootcert`.
    pub ca_pem: PathBuf,
}

impl TestDb {
    /// `postgres://user@127.0.0.1:port/name` (plain: loopback).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.port, self.name
        )
    }

    /// The same database over verified TLS, by the name `host` (`localhost`
    /// and `127.0.0.1` are on the certificate, `127.0.0.2` is not).
    pub fn tls_url(&self, host: &str) -> String {
        format!(
            "postgres://{}@{host}:{}/{}?sslmode=verify-full&sslrootcert={}",
            self.user,
            self.port,
            self.name,
            self.ca_pem.display()
        )
    }

    /// A `milebatch::store::Database` for this database (password from the
    /// process environment variable `var`, which this sets).
    pub fn database(&self, var: &str) -> milebatch::store::Database {
        std::env::set_var(var, PASSWORD);
        milebatch::store::Database::parse(
            &self.url(),
            &milebatch::store::PasswordKeys {
                env: Some(var.to_owned()),
                ..Default::default()
            },
            &|p| PathBuf::from(p),
        )
        .unwrap()
    }
}
