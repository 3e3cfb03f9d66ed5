//! Real servers on 127.0.0.1 for integration tests.
//!
//! * [`TestCa`]: a throw-away certificate authority (rcgen) issuing leaf
//!   certificates for `localhost` / `127.0.0.1`.
//! * [`Sshd`]: the system OpenSSH server (`/usr/sbin/sshd -D -e`) serving SFTP.
//! * [`Ftpd`]: the system `vsftpd`, plain FTP or explicit FTPS.
//! * [`HttpServer`]: an in-process HTTP/1.1 (optionally TLS) server with fault
//!   injection (status codes, truncated bodies, stalls).
//!
//! Every server listens on a free loopback port, lives in its own temp dir
//! and is killed (with all its children) on `Drop`. Missing binaries make the
//! test panic with the package to install: tests never silently skip.
//! `sshd` and `vsftpd` need root (a dedicated login user [`TEST_USER`] is
//! created on first use); run `.ci/install-deps.sh` to install the packages.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Login user for sshd and vsftpd (created with `useradd` when missing).
pub const TEST_USER: &str = "mbtest";
/// Password of [`TEST_USER`] (set with `chpasswd`). Fixed so that several test
/// processes running at once agree on it. The servers only listen on loopback.
pub const TEST_PASSWORD: &str = "mbtest-Pw-4711";

const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const VSFTPD: &str = "/usr/sbin/vsftpd";
/// How long a server may take to accept connections before the test panics.
const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

/// Panics (never skips) when a server binary is missing, naming the Debian
/// package to install.
pub fn require_tool(path: &str, debian_pkg: &str) {
    if !Path::new(path).exists() {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string());
        panic!(
            "{name} not found ({path}): apt-get install -y {debian_pkg} \
             (or run `bash .ci/install-deps.sh` as root)"
        );
    }
}

fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("{what} tests must run as root (they create the login user {TEST_USER})");
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

fn pseudo_random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // xorshift64*
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// `len` consecutive free ports below the kernel's ephemeral range
/// (for vsftpd's passive data connections).
fn free_port_range(len: u16) -> (u16, u16) {
    for _ in 0..500 {
        let base = 20_000 + (pseudo_random() % 12_000) as u16;
        let all_free = (base..base + len).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return (base, base + len - 1);
        }
    }
    panic!("no range of {len} free ports found in 20000..32000");
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            // keep the end, which is where the error usually is
            let tail: Vec<&str> = s.lines().rev().take(60).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

enum StartError {
    Exited(String),
    Timeout,
}

/// Waits until `port` accepts TCP connections, or the child exits, or
/// [`START_TIMEOUT`] passes.
/// What `respawn_on_same_port` needs of a server.
trait Respawn {
    fn spawn(&mut self) -> Result<(), StartError>;
    fn log_says_in_use(&self) -> bool;
    fn start_failed(&self, e: StartError) -> !;
}

/// Start a killed server again on its old port, which the kernel may still
/// hold for a moment: retry while the log says so, up to START_TIMEOUT.
fn respawn_on_same_port(server: &mut impl Respawn) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match server.spawn() {
            Ok(()) => return,
            Err(StartError::Exited(_)) if server.log_says_in_use() && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => server.start_failed(e),
        }
    }
}

/// Start a server in the foreground with its output in `log`, and wait
/// until it listens on `port` (killed again if it does not).
fn spawn_logged(mut cmd: Command, log: &Path, port: u16) -> Result<Child, StartError> {
    let out = File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    match wait_for_port(&mut child, port) {
        Ok(()) => Ok(child),
        Err(e) => {
            kill_tree(&mut child);
            Err(e)
        }
    }
}

impl StartError {
    fn describe(&self) -> String {
        match self {
            StartError::Exited(s) => format!("exited ({s})"),
            StartError::Timeout => format!("not listening after {START_TIMEOUT:?}"),
        }
    }
}

fn wait_for_port(child: &mut Child, port: u16) -> Result<(), StartError> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited(status.to_string()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // make sure it is our server and not someone else's on that port
            thread::sleep(Duration::from_millis(20));
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError::Exited(status.to_string()));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(StartError::Timeout);
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// (pid, ppid) of every process, from /proc.
fn process_table() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." - comm may contain spaces and parens
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let _state = f.next();
        if let Some(ppid) = f.next().and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

fn descendants(root: i32) -> Vec<i32> {
    let table = process_table();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &table {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILLs a server and every process it forked (sshd and vsftpd fork one
/// process per connection, sshd's even call setsid, so a process-group kill
/// is not enough), then reaps it.
fn kill_tree(child: &mut Child) {
    let pid = child.id() as i32;
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: plain kill(2) calls on pids we own.
    unsafe {
        // stop the listener so it forks no new connection handlers meanwhile
        libc::kill(pid, libc::SIGSTOP);
        for _ in 0..3 {
            let kids = descendants(pid);
            if kids.is_empty() {
                break;
            }
            for k in kids {
                libc::kill(k, libc::SIGKILL);
            }
        }
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents.as_bytes()).unwrap();
    set_mode(path, mode);
}

/// A temp dir that other users may traverse (the servers drop privileges to
/// [`TEST_USER`] before reading some files, e.g. sshd's authorized_keys).
fn server_tempdir(prefix: &str) -> TempDir {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    set_mode(tmp.path(), 0o755);
    tmp
}

/// Write `data` at `path` as a file of the login user's (a partner's
/// delivery on an SFTP or FTP server).
pub fn put_owned(path: &Path, data: &[u8]) {
    let (u, g) = ensure_test_user();
    fs::write(path, data).unwrap();
    std::os::unix::fs::chown(path, Some(u), Some(g)).unwrap();
}

/// uid and gid of the test user; creates it (and sets its password) once per
/// process.
pub fn ensure_test_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        require_root("sshd/vsftpd");
        if lookup_user(TEST_USER).is_none() {
            let out = Command::new("useradd")
                .args(["--create-home", "--home-dir"])
                .arg(format!("/home/{TEST_USER}"))
                .args(["--shell", "/bin/bash", "--comment", "milebatch test user"])
                .arg(TEST_USER)
                .stdin(Stdio::null())
                .output()
                .expect("run useradd (package passwd)");
            // exit code 9: created meanwhile by another test process
            if !out.status.success() && out.status.code() != Some(9) {
                panic!(
                    "useradd {TEST_USER} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // chpasswd also unlocks the account (`UsePAM no` refuses locked ones);
        // /etc/shadow may be locked by a concurrent test process: retry.
        let mut last_err = String::new();
        let mut ok = false;
        for _ in 0..20 {
            let mut child = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run chpasswd");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{TEST_USER}:{TEST_PASSWORD}\n").as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                ok = true;
                break;
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "chpasswd for {TEST_USER} failed: {last_err}");
        lookup_user(TEST_USER).expect("test user exists after useradd")
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Creates `dir` owned by the test user (mode 0755).
fn user_dir(dir: &Path) -> PathBuf {
    let (uid, gid) = ensure_test_user();
    fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    set_mode(dir, 0o755);
    dir.to_path_buf()
}

// ---------------------------------------------------------------------------
// TestCa
// ---------------------------------------------------------------------------

/// A throw-away CA. Trust `ca_pem` in the client; give servers
/// [`TestCa::server_cert`].
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    _tmp: TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let tmp = server_tempdir("mb-ca-");
        let dir = tmp.path().to_path_buf();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "milebatch test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "milebatch tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_pem = dir.join("ca.pem");
        write_file(&ca_pem, &cert.pem(), 0o644);
        TestCa {
            dir,
            ca_pem,
            issuer: Issuer::new(params, key),
            _tmp: tmp,
        }
    }

    /// The CA certificate, PEM encoded.
    pub fn ca_pem_bytes(&self) -> Vec<u8> {
        fs::read(&self.ca_pem).unwrap()
    }

    /// Issues a leaf certificate (CA:FALSE, serverAuth) valid for
    /// `localhost` and IP `127.0.0.1`; returns `(cert_pem, key_pem)` paths
    /// (`<dir>/<name>.crt.pem`, `<dir>/<name>.key.pem`, key mode 0600).
    pub fn server_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_path = self.dir.join(format!("{name}.crt.pem"));
        let key_path = self.dir.join(format!("{name}.key.pem"));
        write_file(&cert_path, &cert.pem(), 0o644);
        write_file(&key_path, &key.serialize_pem(), 0o600);
        (cert_path, key_path)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// Sshd
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    Rsa,
    /// ECDSA on P-256 (`ecdsa-sha2-nistp256`).
    Ecdsa,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [KeyType::Rsa, KeyType::Ecdsa, KeyType::Ed25519];

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyType::Ed25519 => &["-t", "ed25519"],
            // PEM: the format every server reads (proftpd's mod_sftp too)
            KeyType::Rsa => &["-t", "rsa", "-b", "3072", "-m", "PEM"],
            KeyType::Ecdsa => &["-t", "ecdsa", "-b", "256", "-m", "PEM"],
        }
    }

    /// The key's type name in known_hosts and typed pins.
    pub fn ssh_name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::Rsa => "ssh-rsa",
            KeyType::Ecdsa => "ecdsa-sha2-nistp256",
        }
    }
}

/// A host key pair made with ssh-keygen: private key file, fingerprint as
/// `ssh-keygen -lf` prints it, and the `keytype base64` public line.
#[derive(Clone, Debug)]
pub struct HostKey {
    pub kind: KeyType,
    pub path: PathBuf,
    pub fingerprint: String,
    pub line: String,
}

impl HostKey {
    pub fn generate(kind: KeyType, path: &Path) -> HostKey {
        keygen(kind, path, "milebatch-test-host");
        let public = PathBuf::from(format!("{}.pub", path.display()));
        let fp_out = run(Command::new(SSH_KEYGEN).arg("-lf").arg(&public));
        let fingerprint = fp_out
            .split_whitespace()
            .nth(1)
            .filter(|f| f.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("unexpected ssh-keygen -lf output: {fp_out}"))
            .to_string();
        let line = fs::read_to_string(&public)
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        HostKey {
            kind,
            path: path.to_path_buf(),
            fingerprint,
            line,
        }
    }

    /// A typed pin: `ssh-rsa SHA256:…`.
    pub fn typed_pin(&self) -> String {
        format!("{} {}", self.kind.ssh_name(), self.fingerprint)
    }
}

#[derive(Clone, Debug)]
pub struct SshdOpts {
    /// Host key type (default ed25519).
    pub host_key: KeyType,
    /// Type of the generated client key (default ed25519).
    pub client_key: KeyType,
    /// Allow password authentication with [`TEST_PASSWORD`] (default true).
    pub password_auth: bool,
    /// More host keys served beside `host_key` (default none), as a server
    /// with one key of each type does.
    pub more_host_keys: Vec<KeyType>,
}

impl Default for SshdOpts {
    fn default() -> Self {
        SshdOpts {
            host_key: KeyType::Ed25519,
            client_key: KeyType::Ed25519,
            password_auth: true,
            more_host_keys: vec![],
        }
    }
}

/// OpenSSH sshd serving SFTP on 127.0.0.1 (no chroot: SFTP paths are the
/// absolute local paths, so `root` is also the remote directory).
pub struct Sshd {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Private client key (mode 0600) listed in the server's authorized_keys.
    pub client_key: PathBuf,
    /// The matching public key (`client_key` + ".pub").
    pub client_pub_key: PathBuf,
    /// `[127.0.0.1]:PORT keytype base64` line for the host key.
    pub known_hosts: PathBuf,
    /// Host public key file (OpenSSH format).
    pub host_key_pub: PathBuf,
    /// Directory the SSH user can read/write; absolute, same path over SFTP.
    pub root: PathBuf,
    /// The server's temp dir (config, keys, log).
    pub dir: PathBuf,
    pub opts: SshdOpts,
    /// Every host key served, `host_key` first.
    pub host_keys: Vec<HostKey>,
    fingerprint: String,
    host_key_line: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _tmp: TempDir,
}

fn ensure_run_sshd() {
    let d = Path::new("/run/sshd");
    if !d.is_dir() {
        fs::create_dir_all(d).expect("mkdir /run/sshd (privilege separation dir)");
        set_mode(d, 0o755);
    }
}

fn keygen(kind: KeyType, path: &Path, comment: &str) {
    run(Command::new(SSH_KEYGEN)
        .args(kind.keygen_args())
        .args(["-q", "-N", "", "-C", comment, "-f"])
        .arg(path));
    set_mode(path, 0o600);
}

/// Does this sshd understand `PerSourcePenalties` (OpenSSH >= 9.8)? Those
/// penalties would block 127.0.0.1 after a few failed-auth tests.
fn sshd_has_penalties(config: &Path) -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let probe = config.with_file_name("probe_config");
        let base = fs::read_to_string(config).unwrap();
        write_file(&probe, &format!("{base}PerSourcePenalties no\n"), 0o644);
        let ok = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&probe)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let _ = fs::remove_file(&probe);
        ok
    })
}

impl Sshd {
    pub fn start(opts: SshdOpts) -> Sshd {
        require_tool(SSHD, "openssh-server");
        require_tool(SSH_KEYGEN, "openssh-client");
        require_root("sshd");
        ensure_test_user();
        ensure_run_sshd();

        let tmp = server_tempdir("mb-sshd-");
        let dir = tmp.path().to_path_buf();
        let root = user_dir(&dir.join("root"));

        let mut host_keys = vec![HostKey::generate(opts.host_key, &dir.join("ssh_host_key"))];
        for (i, k) in opts.more_host_keys.iter().enumerate() {
            host_keys.push(HostKey::generate(
                *k,
                &dir.join(format!("ssh_host_key_{i}")),
            ));
        }
        let host_key_pub = dir.join("ssh_host_key.pub");
        let client_key = dir.join("client_key");
        keygen(opts.client_key, &client_key, "milebatch-test-client");
        let client_pub_key = dir.join("client_key.pub");
        let authorized = dir.join("authorized_keys");
        write_file(
            &authorized,
            &fs::read_to_string(&client_pub_key).unwrap(),
            0o644,
        );

        let fingerprint = host_keys[0].fingerprint.clone();
        let host_key_line = host_keys[0].line.clone();

        let config = dir.join("sshd_config");
        let log = dir.join("sshd.log");
        let mut sshd = Sshd {
            port: 0,
            user: TEST_USER.to_string(),
            password: TEST_PASSWORD.to_string(),
            client_key,
            client_pub_key,
            known_hosts: dir.join("known_hosts"),
            host_key_pub,
            root,
            dir,
            opts,
            host_keys,
            fingerprint,
            host_key_line,
            config,
            log,
            child: None,
            _tmp: tmp,
        };
        // a port picked free may be taken before sshd binds it: retry
        for attempt in 1..=3 {
            sshd.port = free_port();
            sshd.write_config();
            match sshd.spawn() {
                Ok(()) => break,
                Err(StartError::Exited(_)) if attempt < 3 && sshd.log_says_in_use() => continue,
                Err(e) => sshd.start_failed(e),
            }
        }
        write_file(
            &sshd.known_hosts,
            &format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key_line),
            0o644,
        );
        sshd
    }

    fn write_config(&self) {
        let d = &self.dir;
        let mut c = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             AddressFamily inet\n\
             {host_keys}\
             PidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication {pw}\n\
             KbdInteractiveAuthentication no\n\
             PermitEmptyPasswords no\n\
             PermitRootLogin no\n\
             AllowUsers {user}\n\
             UseDNS no\n\
             LoginGraceTime 30\n\
             MaxStartups 100:30:200\n\
             MaxSessions 50\n\
             MaxAuthTries 10\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            port = self.port,
            d = d.display(),
            pw = if self.opts.password_auth { "yes" } else { "no" },
            user = TEST_USER,
            host_keys = self
                .host_keys
                .iter()
                .map(|k| format!("HostKey {}\n", k.path.display()))
                .collect::<String>(),
        );
        write_file(&self.config, &c, 0o644);
        if sshd_has_penalties(&self.config) {
            c.push_str("PerSourcePenalties no\n");
            write_file(&self.config, &c, 0o644);
        }
    }
}

impl Respawn for Sshd {
    fn spawn(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&self.config);
        self.child = Some(spawn_logged(cmd, &self.log, self.port)?);
        Ok(())
    }

    fn log_says_in_use(&self) -> bool {
        read_log(&self.log).contains("Address already in use")
    }

    fn start_failed(&self, e: StartError) -> ! {
        let why = e.describe();
        panic!(
            "sshd on 127.0.0.1:{} {why}; log {}:\n{}",
            self.port,
            self.log.display(),
            read_log(&self.log)
        );
    }
}

impl Sshd {
    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A folder `name` under the server's root, owned by the login user
    /// (an inbox the partner writes and milebatch tidies).
    pub fn owned_dir(&self, name: &str) -> PathBuf {
        let (u, g) = ensure_test_user();
        let dir = self.root.join(name);
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(u), Some(g)).unwrap();
        dir
    }

    /// `[partner.source]` for the inbox `dir` on this server: key login,
    /// the host key pinned, files ready at once, one retry.
    pub fn source_section(&self, dir: &Path) -> String {
        format!(
            "[partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\n\
             user = \"{}\"\ndir = \"{}\"\nkey_file = \"{}\"\nhost_key = \"{}\"\n\
             ready = \"immediate\"\ntimeout = \"5s\"\nretries = 1\n",
            self.port,
            self.user,
            dir.display(),
            self.client_key.display(),
            self.host_key_fingerprint()
        )
    }

    /// Host key fingerprint exactly as `ssh-keygen -lf` prints it
    /// (`SHA256:` + unpadded base64).
    pub fn host_key_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The host key of one type (`host_key` or one of `more_host_keys`).
    pub fn host_key(&self, kind: KeyType) -> &HostKey {
        self.host_keys
            .iter()
            .find(|k| k.kind == kind)
            .expect("sshd serves this key type")
    }

    /// `keytype base64` of the host key (as in known_hosts / the .pub file).
    pub fn host_key_openssh(&self) -> &str {
        &self.host_key_line
    }

    /// The server's log (stderr), for assertions and debugging.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the server and all its connection processes (open sessions
    /// drop at once).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills (if running) and starts again on the same port with the same
    /// keys, so clients see the same host key.
    pub fn restart(&mut self) {
        self.kill();
        respawn_on_same_port(self);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Ftpd (vsftpd)
// ---------------------------------------------------------------------------

/// vsftpd on 127.0.0.1, local user [`TEST_USER`] with [`TEST_PASSWORD`],
/// passive mode, uploads allowed. No chroot: the FTP client sees absolute
/// paths, and logs in with its working directory set to `root`.
pub struct Ftpd {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Local absolute path of the FTP-visible directory (owned by the user).
    pub root: PathBuf,
    /// `root` as the FTP client sees it (also the directory after login).
    pub ftp_dir: String,
    /// Explicit FTPS (AUTH TLS) required for login and data.
    pub tls: bool,
    /// Passive data port range (inclusive).
    pub pasv_ports: (u16, u16),
    /// The server's temp dir (config, log).
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _tmp: TempDir,
}

impl Ftpd {
    /// Plain FTP.
    pub fn start_plain() -> Ftpd {
        Self::start_inner(None)
    }

    /// Explicit FTPS with a certificate from `ca`; plain logins and plain
    /// data connections are refused.
    pub fn start_tls(ca: &TestCa) -> Ftpd {
        Self::start_inner(Some(ca))
    }

    fn start_inner(ca: Option<&TestCa>) -> Ftpd {
        require_tool(VSFTPD, "vsftpd");
        require_root("vsftpd");
        ensure_test_user();
        let tmp = server_tempdir("mb-ftpd-");
        let dir = tmp.path().to_path_buf();
        let root = user_dir(&dir.join("root"));
        // vsftpd chroots its unprivileged helper here: empty, root-owned
        let empty = dir.join("empty");
        fs::create_dir(&empty).unwrap();
        set_mode(&empty, 0o555);

        let tls_conf = match ca {
            None => "ssl_enable=NO\n".to_string(),
            Some(ca) => {
                let (cert, key) = ca.server_cert("vsftpd");
                format!(
                    "ssl_enable=YES\n\
                     rsa_cert_file={}\n\
                     rsa_private_key_file={}\n\
                     allow_anon_ssl=NO\n\
                     force_local_logins_ssl=YES\n\
                     force_local_data_ssl=YES\n\
                     ssl_tlsv1=YES\n\
                     ssl_sslv2=NO\n\
                     ssl_sslv3=NO\n\
                     require_ssl_reuse=NO\n\
                     ssl_ciphers=HIGH\n",
                    cert.display(),
                    key.display()
                )
            }
        };

        let mut ftpd = Ftpd {
            port: 0,
            user: TEST_USER.to_string(),
            password: TEST_PASSWORD.to_string(),
            ftp_dir: root.to_string_lossy().into_owned(),
            root,
            tls: ca.is_some(),
            pasv_ports: (0, 0),
            config: dir.join("vsftpd.conf"),
            log: dir.join("vsftpd.log"),
            dir,
            child: None,
            _tmp: tmp,
        };
        for attempt in 1..=3 {
            ftpd.port = free_port();
            ftpd.pasv_ports = free_port_range(20);
            let conf = format!(
                "listen=YES\n\
                 listen_ipv6=NO\n\
                 listen_address=127.0.0.1\n\
                 listen_port={port}\n\
                 background=NO\n\
                 anonymous_enable=NO\n\
                 local_enable=YES\n\
                 write_enable=YES\n\
                 local_umask=022\n\
                 local_root={root}\n\
                 chroot_local_user=NO\n\
                 userlist_enable=NO\n\
                 pam_service_name=vsftpd\n\
                 secure_chroot_dir={empty}\n\
                 seccomp_sandbox=NO\n\
                 pasv_enable=YES\n\
                 pasv_address=127.0.0.1\n\
                 pasv_min_port={pmin}\n\
                 pasv_max_port={pmax}\n\
                 port_enable=YES\n\
                 connect_from_port_20=NO\n\
                 dirmessage_enable=NO\n\
                 use_localtime=NO\n\
                 max_clients=0\n\
                 max_per_ip=0\n\
                 delay_failed_login=0\n\
                 delay_successful_login=0\n\
                 idle_session_timeout=300\n\
                 data_connection_timeout=120\n\
                 ftpd_banner=milebatch test vsftpd\n\
                 syslog_enable=NO\n\
                 xferlog_enable=YES\n\
                 xferlog_std_format=NO\n\
                 log_ftp_protocol=YES\n\
                 vsftpd_log_file={log}\n\
                 {tls_conf}",
                port = ftpd.port,
                root = ftpd.root.display(),
                empty = empty.display(),
                pmin = ftpd.pasv_ports.0,
                pmax = ftpd.pasv_ports.1,
                log = ftpd.dir.join("transfer.log").display(),
            );
            // vsftpd insists on a root-owned config file
            write_file(&ftpd.config, &conf, 0o600);
            match ftpd.spawn() {
                Ok(()) => break,
                Err(StartError::Exited(_)) if attempt < 3 && ftpd.log_says_in_use() => continue,
                Err(e) => ftpd.start_failed(e),
            }
        }
        ftpd
    }
}

impl Respawn for Ftpd {
    fn spawn(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new(VSFTPD);
        cmd.arg(&self.config);
        self.child = Some(spawn_logged(cmd, &self.log, self.port)?);
        Ok(())
    }

    fn log_says_in_use(&self) -> bool {
        read_log(&self.log).contains("could not bind")
    }

    fn start_failed(&self, e: StartError) -> ! {
        let why = e.describe();
        panic!(
            "vsftpd on 127.0.0.1:{} {why}; output {}:\n{}\nconfig:\n{}",
            self.port,
            self.log.display(),
            read_log(&self.log),
            fs::read_to_string(&self.config).unwrap_or_default()
        );
    }
}

impl Ftpd {
    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Protocol / transfer log of vsftpd (for debugging).
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&fs::read_to_string(self.dir.join("transfer.log")).unwrap_or_default());
        s
    }

    /// SIGKILLs the server and all its session processes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }

    /// Kills (if running) and starts again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        respawn_on_same_port(self);
    }
}

impl Drop for Ftpd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Proftpd (FTP, FTPS, mod_sftp)
// ---------------------------------------------------------------------------

/// Where `.ci/install-deps.sh` unpacks Debian's proftpd (its package
/// conflicts with vsftpd's, so it is not installed).
const PROFTPD_ROOT: &str = "/opt/milebatch-test/proftpd";
const PROFTPD: &str = "/opt/milebatch-test/proftpd/usr/sbin/proftpd";

/// What a [`Proftpd`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProftpdKind {
    /// Plain FTP.
    Ftp,
    /// Explicit FTPS (mod_tls, `TLSRequired on`).
    Ftps,
    /// SFTP (mod_sftp) with an RSA, an ECDSA and an Ed25519 host key at
    /// once; password logins.
    Sftp,
}

/// Debian's proftpd on 127.0.0.1 as a partner's admin would set it up:
/// local user [`TEST_USER`] with [`TEST_PASSWORD`], no chroot (the client
/// sees absolute paths), passive mode. Runs as root in the foreground
/// (`-n`), forking one process per session.
pub struct Proftpd {
    pub port: u16,
    pub kind: ProftpdKind,
    pub user: String,
    pub password: String,
    /// Local absolute path of the served directory (owned by the user).
    pub root: PathBuf,
    /// `root` as the client sees it.
    pub remote_dir: String,
    /// SFTP only: the host keys served, RSA, ECDSA, Ed25519.
    pub host_keys: Vec<HostKey>,
    /// FTP only: whether `MLSD` is allowed (else `<Limit MLSD> DenyAll`,
    /// which answers 550).
    pub mlsd: bool,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _tmp: TempDir,
}

impl Proftpd {
    /// FTP (`ca: None`) or FTPS with a certificate from `ca`, MLSD allowed
    /// or denied.
    pub fn start_ftp(ca: Option<&TestCa>, mlsd: bool) -> Proftpd {
        let kind = if ca.is_some() {
            ProftpdKind::Ftps
        } else {
            ProftpdKind::Ftp
        };
        Self::start(kind, ca, mlsd)
    }

    /// mod_sftp with three host keys (RSA, ECDSA, Ed25519).
    pub fn start_sftp() -> Proftpd {
        Self::start(ProftpdKind::Sftp, None, true)
    }

    fn start(kind: ProftpdKind, ca: Option<&TestCa>, mlsd: bool) -> Proftpd {
        require_tool(PROFTPD, "proftpd-core (unpacked by .ci/install-deps.sh)");
        let module = match kind {
            ProftpdKind::Ftp => None,
            ProftpdKind::Ftps => Some("mod_tls"),
            ProftpdKind::Sftp => Some("mod_sftp"),
        };
        if let Some(m) = module {
            require_tool(
                &format!("{PROFTPD_ROOT}/usr/lib/proftpd/{m}.so"),
                "proftpd-mod-crypto (unpacked by .ci/install-deps.sh)",
            );
        }
        require_root("proftpd");
        ensure_test_user();
        let tmp = server_tempdir("mb-proftpd-");
        let dir = tmp.path().to_path_buf();
        let root = user_dir(&dir.join("root"));
        let host_keys = if kind == ProftpdKind::Sftp {
            KeyType::ALL
                .iter()
                .map(|k| HostKey::generate(*k, &dir.join(format!("host_{}", k.ssh_name()))))
                .collect()
        } else {
            vec![]
        };
        let d = dir.display();
        let extra = match kind {
            ProftpdKind::Ftp => String::new(),
            ProftpdKind::Ftps => {
                let (cert, key) = ca.expect("FTPS needs a CA").server_cert("proftpd");
                // rcgen's keys are ECDSA: the EC certificate directives
                format!(
                    "<IfModule mod_dso.c>\n  ModulePath {PROFTPD_ROOT}/usr/lib/proftpd\n  LoadModule mod_tls.c\n</IfModule>\n\
                     TLSEngine on\n\
                     TLSLog {d}/tls.log\n\
                     TLSRequired on\n\
                     TLSECCertificateFile {cert}\n\
                     TLSECCertificateKeyFile {key}\n\
                     TLSProtocol TLSv1.2 TLSv1.3\n\
                     TLSOptions NoSessionReuseRequired\n\
                     TLSVerifyClient off\n",
                    cert = cert.display(),
                    key = key.display(),
                )
            }
            ProftpdKind::Sftp => format!(
                "<IfModule mod_dso.c>\n  ModulePath {PROFTPD_ROOT}/usr/lib/proftpd\n  LoadModule mod_sftp.c\n</IfModule>\n\
                 SFTPEngine on\n\
                 SFTPLog {d}/sftp.log\n\
                 SFTPAuthMethods password\n\
                 {keys}\
                 TraceLog {d}/trace.log\n\
                 Trace sftp:8 ssh2:1 disconnect:8\n",
                keys = host_keys
                    .iter()
                    .map(|k: &HostKey| format!("SFTPHostKey {}\n", k.path.display()))
                    .collect::<String>(),
            ),
        };
        let mut server = Proftpd {
            port: 0,
            kind,
            user: TEST_USER.to_string(),
            password: TEST_PASSWORD.to_string(),
            remote_dir: root.to_string_lossy().into_owned(),
            root,
            host_keys,
            mlsd,
            config: dir.join("proftpd.conf"),
            log: dir.join("proftpd.log"),
            dir: dir.clone(),
            child: None,
            _tmp: tmp,
        };
        for attempt in 1..=3 {
            server.port = free_port();
            let (pmin, pmax) = free_port_range(20);
            let conf = format!(
                "ServerType standalone\n\
                 ServerName \"milebatch test proftpd\"\n\
                 DefaultAddress 127.0.0.1\n\
                 SocketBindTight on\n\
                 UseIPv6 off\n\
                 Port {port}\n\
                 User nobody\n\
                 Group nogroup\n\
                 PidFile {d}/proftpd.pid\n\
                 ScoreboardFile {d}/scoreboard\n\
                 DelayEngine off\n\
                 WtmpLog off\n\
                 UseReverseDNS off\n\
                 RequireValidShell off\n\
                 AuthOrder mod_auth_unix.c\n\
                 MaxLoginAttempts 10\n\
                 MaxInstances 100\n\
                 SystemLog {d}/system.log\n\
                 TransferLog {d}/xfer.log\n\
                 PassivePorts {pmin} {pmax}\n\
                 Umask 022\n\
                 <Directory />\n  AllowOverwrite on\n</Directory>\n\
                 {mlsd}\
                 {extra}",
                port = server.port,
                mlsd = if mlsd {
                    ""
                } else {
                    "<Limit MLSD>\n  DenyAll\n</Limit>\n"
                },
            );
            write_file(&server.config, &conf, 0o600);
            match server.spawn() {
                Ok(()) => break,
                Err(StartError::Exited(_)) if attempt < 3 && server.log_says_in_use() => continue,
                Err(e) => server.start_failed(e),
            }
        }
        server
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The host key of one type (SFTP only).
    pub fn host_key(&self, kind: KeyType) -> &HostKey {
        self.host_keys
            .iter()
            .find(|k| k.kind == kind)
            .expect("proftpd serves this key type")
    }

    /// Every log the server wrote: stderr, system log, SFTP log, trace log.
    pub fn log(&self) -> String {
        [
            "proftpd.log",
            "system.log",
            "sftp.log",
            "tls.log",
            "trace.log",
        ]
        .iter()
        .map(|f| fs::read_to_string(self.dir.join(f)).unwrap_or_default())
        .collect()
    }
}

impl Respawn for Proftpd {
    fn spawn(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new(PROFTPD);
        cmd.arg("-n").arg("-c").arg(&self.config);
        self.child = Some(spawn_logged(cmd, &self.log, self.port)?);
        Ok(())
    }

    fn log_says_in_use(&self) -> bool {
        self.log().contains("in use")
    }

    fn start_failed(&self, e: StartError) -> ! {
        panic!(
            "proftpd on 127.0.0.1:{} {}; logs:\n{}\nconfig:\n{}",
            self.port,
            e.describe(),
            self.log(),
            fs::read_to_string(&self.config).unwrap_or_default()
        );
    }
}

impl Drop for Proftpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }
}

// ---------------------------------------------------------------------------
// Nginx
// ---------------------------------------------------------------------------

const NGINX: &str = "/usr/sbin/nginx";

/// Debian's nginx on 127.0.0.1 over TLS (certificate from a [`TestCa`]),
/// set up as a partner would publish files:
///
/// - `/in/` serves `root/in/` behind basic auth ([`TEST_USER`],
///   [`TEST_PASSWORD`]);
/// - `/reports/` takes WebDAV `PUT` (`create_full_put_path on`) into
///   `root/reports/`, behind the same basic auth;
/// - `/readonly/` refuses `PUT` with 403 (`limit_except GET { deny all; }`).
///
/// The access log records each request's method, path, status and
/// `Content-Type` ([`Nginx::access_log`]).
pub struct Nginx {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Document root: `in/`, `reports/`, `readonly/` under it.
    pub root: PathBuf,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _tmp: TempDir,
}

impl Nginx {
    pub fn start(ca: &TestCa) -> Nginx {
        require_tool(NGINX, "nginx");
        require_root("nginx");
        let tmp = server_tempdir("mb-nginx-");
        let dir = tmp.path().to_path_buf();
        let root = dir.join("www");
        for sub in ["in", "reports", "readonly", "body"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let (cert, key) = ca.server_cert("nginx");
        let hash = run(Command::new("openssl")
            .args(["passwd", "-apr1"])
            .arg(TEST_PASSWORD));
        write_file(
            &dir.join("htpasswd"),
            &format!("{TEST_USER}:{}\n", hash.trim()),
            0o644,
        );
        let mut server = Nginx {
            port: 0,
            user: TEST_USER.to_string(),
            password: TEST_PASSWORD.to_string(),
            root,
            config: dir.join("nginx.conf"),
            log: dir.join("nginx.log"),
            dir,
            child: None,
            _tmp: tmp,
        };
        for attempt in 1..=3 {
            server.port = free_port();
            let d = server.dir.display();
            let conf = format!(
                "daemon off;\n\
                 master_process on;\n\
                 worker_processes 1;\n\
                 user root root;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                   log_format mb '$request_method $uri $status \"$content_type\"';\n\
                   access_log {d}/access.log mb;\n\
                   client_body_temp_path {d}/www/body;\n\
                   proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n\
                   uwsgi_temp_path {d}/uwsgi;\n\
                   scgi_temp_path {d}/scgi;\n\
                   types {{ text/csv csv; }}\n\
                   server {{\n\
                     listen 127.0.0.1:{port} ssl;\n\
                     server_name localhost;\n\
                     ssl_certificate {cert};\n\
                     ssl_certificate_key {key};\n\
                     root {d}/www;\n\
                     auth_basic \"partner\";\n\
                     auth_basic_user_file {d}/htpasswd;\n\
                     location /in/ {{ }}\n\
                     location /reports/ {{\n\
                       dav_methods PUT;\n\
                       create_full_put_path on;\n\
                       dav_access user:rw group:r all:r;\n\
                       client_max_body_size 20m;\n\
                     }}\n\
                     location /readonly/ {{\n\
                       dav_methods PUT;\n\
                       limit_except GET {{ deny all; }}\n\
                     }}\n\
                   }}\n\
                 }}\n",
                port = server.port,
                cert = cert.display(),
                key = key.display(),
            );
            write_file(&server.config, &conf, 0o644);
            match server.spawn() {
                Ok(()) => break,
                Err(StartError::Exited(_)) if attempt < 3 && server.log_says_in_use() => continue,
                Err(e) => server.start_failed(e),
            }
        }
        server
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Put a file where nginx serves it (`rel` under the document root).
    pub fn put_file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }

    /// One line per request: `METHOD /path STATUS "content-type"`.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// The access log once it holds `needle` (nginx logs a request after
    /// sending its response, so a client can be ahead of the log); panics
    /// with the log after 10 s.
    pub fn wait_access_log(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < end,
                "no {needle:?} in nginx's access log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        format!(
            "{}{}",
            read_log(&self.log),
            read_log(&self.dir.join("error.log"))
        )
    }
}

impl Respawn for Nginx {
    fn spawn(&mut self) -> Result<(), StartError> {
        let mut cmd = Command::new(NGINX);
        // -p: a prefix of its own, so nginx never touches /var/lib/nginx
        cmd.arg("-p").arg(&self.dir).arg("-c").arg(&self.config);
        self.child = Some(spawn_logged(cmd, &self.log, self.port)?);
        Ok(())
    }

    fn log_says_in_use(&self) -> bool {
        self.log().contains("Address already in use")
    }

    fn start_failed(&self, e: StartError) -> ! {
        panic!(
            "nginx on 127.0.0.1:{} {}; logs:\n{}\nconfig:\n{}",
            self.port,
            e.describe(),
            self.log(),
            fs::read_to_string(&self.config).unwrap_or_default()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }
}

// ---------------------------------------------------------------------------
// HttpServer
// ---------------------------------------------------------------------------

/// Authentication the [`HttpServer`] demands (401 otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

/// A forced answer for one request (see [`HttpServer::push_fault`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body.
    Status(u16),
    /// 200 with a Content-Length larger than the bytes sent (half the file),
    /// then close the connection (no TLS close_notify).
    Truncate,
    /// Send 200 headers (with the real Content-Length), no body, then hold
    /// the connection open this long before closing it.
    Stall(Duration),
    /// Close the connection without any response.
    Close,
}

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string, as sent.
    pub path: String,
    /// Header names are lower-cased.
    pub headers: Vec<(String, String)>,
    /// An `Authorization` header was present.
    pub auth_header: bool,
    /// The request passed the configured auth.
    pub authorized: bool,
    pub body_len: usize,
    /// Status answered (0 for [`Fault::Close`]).
    pub status: u16,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct HttpState {
    root: PathBuf,
    uploads: PathBuf,
    auth: Mutex<HttpAuth>,
    faults: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Answer every authorized PUT with this status (see `set_put_status`).
    put_status: Mutex<Option<u16>>,
    shutdown: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-process HTTP/1.1 server (one thread per connection, `Connection:
/// close` on every response), plain or TLS.
///
/// * `GET`/`HEAD /p` serves `root/p` (404 when missing; `Range: bytes=N-[M]`
///   gives 206).
/// * `PUT /p` stores the body in `uploads/p` (201), creating directories.
/// * Other methods: 405. Paths with `..` are refused (400).
pub struct HttpServer {
    pub port: u16,
    pub tls: bool,
    /// Files served by GET.
    pub root: PathBuf,
    /// Where PUT bodies are stored.
    pub uploads: PathBuf,
    state: Arc<HttpState>,
    accept: Option<JoinHandle<()>>,
    _tmp: TempDir,
}

impl HttpServer {
    pub fn start_plain() -> HttpServer {
        Self::start(None, HttpAuth::None)
    }

    pub fn start_tls(ca: &TestCa) -> HttpServer {
        Self::start(Some(ca), HttpAuth::None)
    }

    pub fn start(tls: Option<&TestCa>, auth: HttpAuth) -> HttpServer {
        let tmp = tempfile::Builder::new()
            .prefix("mb-http-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().join("root");
        let uploads = tmp.path().join("uploads");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&uploads).unwrap();
        let tls_config = tls.map(|ca| {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let (cert, key) = ca.server_cert("http");
            let certs = CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&key).unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("rustls server config");
            Arc::new(cfg)
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind http");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(HttpState {
            root: root.clone(),
            uploads: uploads.clone(),
            auth: Mutex::new(auth),
            faults: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            put_status: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = thread::Builder::new()
            .name(format!("http-accept-{port}"))
            .spawn(move || accept_loop(listener, st, tls_config))
            .unwrap();
        HttpServer {
            port,
            tls: tls.is_some(),
            root,
            uploads,
            state,
            accept: Some(accept),
            _tmp: tmp,
        }
    }

    /// `http(s)://127.0.0.1:PORT` + path (path should start with `/`).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_auth(&self, auth: HttpAuth) {
        *lock(&self.state.auth) = auth;
    }

    /// Answer the next `n` requests with `status`.
    pub fn set_fail(&self, n: usize, status: u16) {
        self.push_fault(Fault::Status(status), n);
    }

    /// Truncate the next `n` responses (see [`Fault::Truncate`]).
    pub fn set_truncate(&self, n: usize) {
        self.push_fault(Fault::Truncate, n);
    }

    /// Stall the next `n` responses after the headers for `dur`.
    pub fn set_stall(&self, n: usize, dur: Duration) {
        self.push_fault(Fault::Stall(dur), n);
    }

    /// Queue `fault` for the next `n` requests (after the ones queued).
    pub fn push_fault(&self, fault: Fault, n: usize) {
        let mut q = lock(&self.state.faults);
        for _ in 0..n {
            q.push_back(fault.clone());
        }
    }

    /// Answer every PUT with `status` (e.g. 403, an nginx that refuses
    /// uploads) until set back to `None`; GETs are served as usual.
    pub fn set_put_status(&self, status: Option<u16>) {
        *lock(&self.state.put_status) = status;
    }

    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Requests seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// Puts a file under `root` (creating directories) for GET.
    pub fn put_file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    state: Arc<HttpState>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    while !state.shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let st = state.clone();
                let tls = tls.clone();
                let _ = thread::Builder::new()
                    .name("http-conn".into())
                    .spawn(move || {
                        let _ = tcp.set_nonblocking(false);
                        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
                        let _ = tcp.set_nodelay(true);
                        let conn = match tls {
                            None => Conn::Plain(tcp),
                            Some(cfg) => match rustls::ServerConnection::new(cfg) {
                                Ok(c) => Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp))),
                                Err(_) => return,
                            },
                        };
                        handle_conn(conn, &st);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Orderly close (TLS close_notify, then FIN).
    fn finish(mut self) {
        if let Conn::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.flush();
        let _ = self.tcp().shutdown(Shutdown::Write);
        // drain briefly so the close does not turn into a RST
        let _ = self
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1024];
        while let Ok(n) = self.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Abrupt close (no close_notify).
    fn abort(self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<Conn>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many headers",
            ));
        }
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        r.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        r.get_mut().flush()?;
    }
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers until an empty line
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        req.body.resize(len, 0);
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// Minimal base64 (standard alphabet) decoder for Basic auth.
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn check_auth(auth: &HttpAuth, header: Option<&str>) -> bool {
    match auth {
        HttpAuth::None => true,
        HttpAuth::Basic { user, password } => header
            .and_then(|h| {
                h.strip_prefix("Basic ")
                    .or_else(|| h.strip_prefix("basic "))
            })
            .and_then(b64_decode)
            .is_some_and(|d| d == format!("{user}:{password}").as_bytes()),
        HttpAuth::Bearer(token) => header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .is_some_and(|t| t.trim() == token),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps a request target to a relative path; None if it escapes.
fn safe_rel_path(target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path);
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(rel.to_path_buf())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn head_bytes(status: u16, len: usize, extra: &[(&str, String)]) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\nConnection: close\r\nServer: milebatch-test\r\n",
        reason(status)
    );
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Parses `bytes=N-` / `bytes=N-M` against a body of `len` bytes.
fn parse_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end: usize = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn handle_conn(conn: Conn, st: &HttpState) {
    let mut r = BufReader::new(conn);
    let req = match read_request(&mut r) {
        Ok(Some(req)) => req,
        _ => return,
    };
    let mut conn = r.into_inner();
    let auth_value = req.header("authorization").map(str::to_string);
    let authorized = check_auth(&lock(&st.auth), auth_value.as_deref());
    let fault = lock(&st.faults).pop_front();
    let mut rec = RecordedRequest {
        method: req.method.clone(),
        path: req.target.clone(),
        headers: req.headers.clone(),
        auth_header: auth_value.is_some(),
        authorized,
        body_len: req.body.len(),
        status: 0,
    };
    let record = |rec: RecordedRequest| lock(&st.requests).push(rec);

    // file body for GET-like faults
    let file_body = || -> Vec<u8> {
        safe_rel_path(&req.target)
            .and_then(|rel| fs::read(st.root.join(rel)).ok())
            .unwrap_or_else(|| b"milebatch test body\n".repeat(64))
    };

    match fault {
        Some(Fault::Close) => {
            record(rec);
            conn.abort();
            return;
        }
        Some(Fault::Status(code)) => {
            let body = format!("forced status {code}\n");
            rec.status = code;
            record(rec);
            let _ = conn.write_all(&head_bytes(
                code,
                body.len(),
                &[("Content-Type", "text/plain".into())],
            ));
            let _ = conn.write_all(body.as_bytes());
            conn.finish();
            return;
        }
        Some(Fault::Truncate) => {
            let body = file_body();
            let sent = &body[..body.len() / 2];
            let declared = body.len().max(sent.len() + 1);
            rec.status = 200;
            record(rec);
            let _ = conn.write_all(&head_bytes(200, declared, &[]));
            let _ = conn.write_all(sent);
            let _ = conn.flush();
            conn.abort();
            return;
        }
        Some(Fault::Stall(dur)) => {
            let body = file_body();
            rec.status = 200;
            record(rec);
            let _ = conn.write_all(&head_bytes(200, body.len(), &[]));
            let _ = conn.flush();
            let until = Instant::now() + dur;
            while Instant::now() < until && !st.shutdown.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            conn.abort();
            return;
        }
        None => {}
    }

    if !authorized {
        rec.status = 401;
        record(rec);
        let challenge = match &*lock(&st.auth) {
            HttpAuth::Bearer(_) => "Bearer realm=\"milebatch-test\"".to_string(),
            _ => "Basic realm=\"milebatch-test\"".to_string(),
        };
        let body = b"unauthorized\n";
        let _ = conn.write_all(&head_bytes(
            401,
            body.len(),
            &[("WWW-Authenticate", challenge)],
        ));
        let _ = conn.write_all(body);
        conn.finish();
        return;
    }

    let Some(rel) = safe_rel_path(&req.target) else {
        rec.status = 400;
        record(rec);
        let _ = conn.write_all(&head_bytes(400, 0, &[]));
        conn.finish();
        return;
    };

    let (status, extra, body): (u16, Vec<(&str, String)>, Vec<u8>) = match req.method.as_str() {
        "GET" | "HEAD" => match fs::read(st.root.join(&rel)) {
            Ok(data) if st.root.join(&rel).is_file() => {
                match req.header("range").and_then(|v| parse_range(v, data.len())) {
                    Some((a, b)) => (
                        206,
                        vec![("Content-Range", format!("bytes {a}-{b}/{}", data.len()))],
                        data[a..=b].to_vec(),
                    ),
                    None => (200, vec![], data),
                }
            }
            _ => (404, vec![], b"not found\n".to_vec()),
        },
        "PUT" if lock(&st.put_status).is_some() => {
            let code = lock(&st.put_status).unwrap_or(500);
            (
                code,
                vec![],
                format!("forced PUT status {code}\n").into_bytes(),
            )
        }
        "PUT" => {
            let dest = st.uploads.join(&rel);
            let ok = !rel.as_os_str().is_empty()
                && dest
                    .parent()
                    .map(|p| fs::create_dir_all(p).is_ok())
                    .unwrap_or(false)
                && fs::write(&dest, &req.body).is_ok();
            if ok {
                (201, vec![], Vec::new())
            } else {
                (500, vec![], b"cannot store\n".to_vec())
            }
        }
        _ => (405, vec![("Allow", "GET, HEAD, PUT".into())], Vec::new()),
    };
    rec.status = status;
    record(rec);
    let _ = conn.write_all(&head_bytes(status, body.len(), &extra));
    if req.method != "HEAD" {
        let _ = conn.write_all(&body);
    }
    conn.finish();
}
