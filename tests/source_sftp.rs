//! SFTP against a real OpenSSH sshd on 127.0.0.1: the conformance suite,
//! host key checks, authentication, and a server killed mid-download.

mod common;
mod conformance;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::servers::{ensure_test_user, KeyType, Sshd, SshdOpts};
use milebatch::source::sftp::SftpSource;
use milebatch::source::{
    HostKeyCheck, HostKeyPin, Pickup, SecretRef, SftpAuth, SftpConfig, Source, SourceError,
};

fn pickup() -> Pickup {
    conformance::test_pickup(2)
}

fn config(sshd: &Sshd, dir: &Path) -> SftpConfig {
    SftpConfig {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        dir: dir.to_string_lossy().into_owned(),
        auth: SftpAuth::Key {
            key_file: sshd.client_key.clone(),
            passphrase: None,
        },
        host_key: HostKeyCheck::Pins(vec![
            HostKeyPin::parse(&sshd.host_key_fingerprint()).unwrap()
        ]),
        pickup: pickup(),
    }
}

/// A password file (mode 0600) holding `pw`.
fn password_file(dir: &Path, pw: &str) -> SecretRef {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("pw-{}", pw.len()));
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretRef::File(p)
}

struct Fx(Sshd);

impl conformance::Fixture for Fx {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        Box::new(SftpSource::connect(&config(&self.0, &self.inbox_path(inbox))).expect("connect"))
    }
    fn inbox_path(&self, inbox: &str) -> PathBuf {
        self.0.root.join(inbox)
    }
    fn owner(&self) -> Option<(u32, u32)> {
        Some(ensure_test_user())
    }
}

#[test]
fn sftp_conformance() {
    conformance::run_all(&Fx(Sshd::start(SshdOpts::default())));
}

#[test]
fn sftp_rsa_host_key_and_known_hosts_with_password() {
    let sshd = Sshd::start(SshdOpts {
        host_key: KeyType::Rsa,
        client_key: KeyType::Rsa,
        password_auth: true,
        ..SshdOpts::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    // rsa client key (rsa-sha2 signatures)
    let mut c = config(&sshd, &sshd.root);
    let mut s = SftpSource::connect(&c).expect("rsa host key + rsa client key");
    assert!(s.list().expect("list").is_empty());
    // known_hosts + password
    c.host_key = HostKeyCheck::KnownHosts(sshd.known_hosts.clone());
    c.auth = SftpAuth::Password(password_file(tmp.path(), &sshd.password));
    let mut s = SftpSource::connect(&c).expect("known_hosts + password");
    assert!(s.list().expect("list").is_empty());
}

#[test]
fn sftp_wrong_or_unknown_host_key_is_refused_before_auth() {
    let sshd = Sshd::start(SshdOpts::default());
    let seen = sshd.host_key_fingerprint();

    // wrong fingerprint
    let mut c = config(&sshd, &sshd.root);
    c.host_key = HostKeyCheck::Pins(vec![HostKeyPin::parse(
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .unwrap()]);
    let e = SftpSource::connect(&c)
        .err()
        .expect("a wrong host key must be refused");
    match &e {
        SourceError::HostKey(m) => {
            assert!(m.contains(&seen), "message should show the key seen: {m}");
            assert!(
                m.contains("ssh-ed25519"),
                "message should show the key type: {m}"
            );
        }
        other => panic!("expected HostKey, got {other:?}"),
    }
    assert!(!e.retryable());

    // a known_hosts file that lists another port only: unknown host
    let tmp = tempfile::tempdir().unwrap();
    let kh = tmp.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port + 1,
            sshd.host_key_openssh()
        ),
    )
    .unwrap();
    c.host_key = HostKeyCheck::KnownHosts(kh.clone());
    match SftpSource::connect(&c)
        .err()
        .expect("unknown host must be refused")
    {
        SourceError::HostKey(m) => assert!(m.contains(&seen) && m.contains("not in"), "{m}"),
        other => panic!("expected HostKey, got {other:?}"),
    }

    // known_hosts with a different key for this host: mismatch
    let other = Sshd::start(SshdOpts::default());
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}\n", sshd.port, other.host_key_openssh()),
    )
    .unwrap();
    match SftpSource::connect(&c)
        .err()
        .expect("changed key must be refused")
    {
        SourceError::HostKey(m) => {
            assert!(m.contains(&seen) && m.contains("does not match"), "{m}")
        }
        other => panic!("expected HostKey, got {other:?}"),
    }

    // No credential was ever tried: sshd logged no authentication attempt
    // for these connections.
    let log = sshd.log();
    assert!(
        !log.contains("Accepted publickey") && !log.contains("Failed "),
        "auth was attempted despite the host key failure:\n{log}"
    );
}

/// OpenSSH with an Ed25519, an RSA and an ECDSA host key at once (libssh2
/// would negotiate Ed25519 on its own): a pin or known_hosts line of any
/// one type connects.
#[test]
fn sftp_pins_of_each_type_against_a_multi_key_sshd() {
    let sshd = Sshd::start(SshdOpts {
        more_host_keys: vec![KeyType::Rsa, KeyType::Ecdsa],
        ..SshdOpts::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let keys: Vec<conformance::host_keys::Key> = sshd
        .host_keys
        .iter()
        .map(|k| conformance::host_keys::Key {
            kind: k.kind.ssh_name().into(),
            fingerprint: k.fingerprint.clone(),
            line: k.line.clone(),
        })
        .collect();
    conformance::host_keys::run(sshd.port, &keys, tmp.path(), &|check| {
        let mut c = config(&sshd, &sshd.root);
        c.host_key = check;
        SftpSource::connect(&c).map(|s| Box::new(s) as Box<dyn Source>)
    });
    // No credential went to a server whose key did not match: each
    // accepted login is one that matched (the probes before never logged in).
    let log = sshd.log();
    assert!(!log.contains("Failed "), "{log}");
}

/// A session ends with SSH_MSG_DISCONNECT (sshd logs "Received
/// disconnect"), not with the TCP connection dropped under it.
#[test]
fn sftp_session_ends_with_a_clean_disconnect() {
    let sshd = Sshd::start(SshdOpts::default());
    let mut s = SftpSource::connect(&config(&sshd, &sshd.root)).expect("connect");
    s.list().expect("list");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = sshd.log();
        if log.contains("Received disconnect from 127.0.0.1")
            && log.contains("milebatch: session done")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sshd saw no clean disconnect:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sshd.log().contains("Connection reset"), "{}", sshd.log());
}

#[test]
fn sftp_wrong_password_is_auth_and_not_retried() {
    let sshd = Sshd::start(SshdOpts::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(&sshd, &sshd.root);
    c.auth = SftpAuth::Password(password_file(tmp.path(), "not-the-password"));
    let mut attempts = 0;
    let r = milebatch::source::retry::with_retries(3, "connecting", || {
        attempts += 1;
        SftpSource::connect(&c)
    });
    match r.err().expect("wrong password must fail") {
        SourceError::Auth(m) => assert!(!m.contains("not-the-password"), "{m}"),
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_eq!(attempts, 1, "an auth failure must not be retried");

    // a key file others can read is refused before it is used
    use std::os::unix::fs::PermissionsExt;
    let key = tmp.path().join("key");
    std::fs::copy(&sshd.client_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.auth = SftpAuth::Key {
        key_file: key,
        passphrase: None,
    };
    let e = SftpSource::connect(&c)
        .err()
        .expect("group/other-readable key");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(!e.retryable());
}

#[test]
fn sftp_connection_refused_is_transient() {
    let sshd = Sshd::start(SshdOpts::default());
    let mut c = config(&sshd, &sshd.root);
    c.port = common::servers::free_port();
    let e = SftpSource::connect(&c)
        .err()
        .expect("nothing listens there");
    assert!(e.retryable(), "{e:?}");
}

/// Wraps a source and records what each `fetch` returned.
struct Recording {
    inner: Box<dyn Source>,
    fetches: std::sync::Arc<std::sync::Mutex<Vec<Result<(), String>>>>,
}

impl Source for Recording {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&mut self) -> Result<Vec<milebatch::source::RemoteFile>, SourceError> {
        self.inner.list()
    }
    fn fetch(
        &mut self,
        file: &milebatch::source::RemoteFile,
        dest: &Path,
    ) -> Result<(), SourceError> {
        let r = self.inner.fetch(file, dest);
        self.fetches.lock().unwrap().push(match &r {
            Ok(()) => Ok(()),
            Err(e) => Err(format!(
                "{}: {e}",
                if e.retryable() { "transient" } else { "fatal" }
            )),
        });
        r
    }
    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        self.inner.remove(name)
    }
    fn move_to(&mut self, name: &str, dir: &str) -> Result<(), SourceError> {
        self.inner.move_to(name, dir)
    }
    fn upload(&mut self, dir: &str, name: &str, data: &[u8]) -> Result<(), SourceError> {
        self.inner.upload(dir, name, data)
    }
    fn folder(&mut self, dir: &str) -> Result<milebatch::source::Folder, SourceError> {
        self.inner.folder(dir)
    }
}

#[test]
fn sftp_server_killed_mid_download_then_retried() {
    let mut sshd = Sshd::start(SshdOpts::default());
    let data = conformance::payload(64 << 20, 9);
    let inbox = sshd.root.join("kill");
    std::fs::create_dir_all(&inbox).unwrap();
    let (u, g) = ensure_test_user();
    std::os::unix::fs::chown(&inbox, Some(u), Some(g)).unwrap();
    std::fs::write(inbox.join("big.csv"), &data).unwrap();

    let fetches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut src = Recording {
        inner: Box::new(SftpSource::connect(&config(&sshd, &inbox)).expect("connect")),
        fetches: fetches.clone(),
    };
    let file = src.list().expect("list").remove(0);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("archive");

    // The pipeline's download step (temp file, retries with backoff, size
    // check, rename) runs in a thread; the server dies under it.
    let archive2 = archive.clone();
    let t = std::thread::spawn(move || {
        let r = milebatch::pipeline::pickup::fetch(&mut src, &pickup(), &file, "p", &archive2);
        r.map_err(|e| e.to_string())
    });
    let part = archive.join(".big.csv.part");
    let start = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "download never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    sshd.kill();
    // Back within the first backoff (1 s).
    sshd.restart();
    let fetched = t.join().unwrap().expect("the retry after restart succeeds");

    let log = fetches.lock().unwrap().clone();
    assert!(
        log.len() >= 2,
        "expected a failed attempt and a retry: {log:?}"
    );
    assert!(
        log[0].as_ref().is_err_and(|e| e.starts_with("transient")),
        "the first attempt should fail as transient: {log:?}"
    );
    assert!(log.last().unwrap().is_ok(), "{log:?}");
    assert!(
        std::fs::read(&fetched.archive).unwrap() == data,
        "archived bytes differ"
    );
    let names: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "only the archived file may remain: {names:?}"
    );
}
