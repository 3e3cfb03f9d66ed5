//! Debian's proftpd as partners run it: the conformance suite over FTP and
//! FTPS (MLSD allowed, and denied with `<Limit MLSD> DenyAll`, which answers
//! 550), and over SFTP with mod_sftp serving an RSA, an ECDSA and an
//! Ed25519 host key at once.

mod common;
mod conformance;

use std::path::{Path, PathBuf};

use common::servers::{ensure_test_user, Proftpd, ProftpdKind, TestCa};
use milebatch::source::ftp::FtpSource;
use milebatch::source::sftp::SftpSource;
use milebatch::source::{
    FtpConfig, HostKeyCheck, HostKeyPin, SecretRef, SftpAuth, SftpConfig, Source,
};

fn secret(dir: &Path, pw: &str) -> SecretRef {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("pw");
    std::fs::write(&p, pw).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretRef::File(p)
}

struct FtpFx {
    server: Proftpd,
    ca: Option<TestCa>,
    tmp: tempfile::TempDir,
}

impl FtpFx {
    fn config(&self, dir: &str) -> FtpConfig {
        FtpConfig {
            host: "127.0.0.1".into(),
            port: self.server.port,
            user: self.server.user.clone(),
            dir: dir.into(),
            password: secret(self.tmp.path(), &self.server.password),
            tls: self.server.kind == ProftpdKind::Ftps,
            ca_file: self.ca.as_ref().map(|c| c.ca_pem.clone()),
            pickup: conformance::test_pickup(2),
        }
    }
}

impl conformance::Fixture for FtpFx {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        let dir = format!("{}/{inbox}", self.server.remote_dir);
        Box::new(FtpSource::connect(&self.config(&dir)).expect("connect"))
    }
    fn inbox_path(&self, inbox: &str) -> PathBuf {
        self.server.root.join(inbox)
    }
    fn owner(&self) -> Option<(u32, u32)> {
        Some(ensure_test_user())
    }
}

fn ftp_fx(tls: bool, mlsd: bool) -> FtpFx {
    let ca = tls.then(TestCa::new);
    FtpFx {
        server: Proftpd::start_ftp(ca.as_ref(), mlsd),
        ca,
        tmp: tempfile::tempdir().unwrap(),
    }
}

#[test]
fn proftpd_ftp_conformance() {
    let fx = ftp_fx(false, true);
    conformance::run_all(&fx);
    let log = fx.server.log();
    assert!(
        !log.contains("MLSD denied"),
        "MLSD is allowed here; it should have been used: {log}"
    );
}

/// `<Limit MLSD> DenyAll`: proftpd answers MLSD with 550, and listing falls
/// back to LIST (names with spaces and Japanese names included).
#[test]
fn proftpd_ftp_mlsd_denied_with_550_falls_back_to_list() {
    let fx = ftp_fx(false, false);
    // The server really refuses MLSD with a 550.
    {
        use suppaftp::FtpStream;
        let mut f = FtpStream::connect(fx.server.addr()).expect("connect");
        f.login(&fx.server.user, &fx.server.password)
            .expect("login");
        match f.mlsd(None) {
            Err(suppaftp::FtpError::UnexpectedResponse(r)) => assert_eq!(r.status.code(), 550),
            other => panic!("MLSD should be refused with 550: {other:?}"),
        }
    }
    let inbox = conformance::fresh_inbox(&fx, "list");
    let names = ["a.csv", "point exchange 2026.csv", "ポイント交換.csv"];
    for (i, n) in names.iter().enumerate() {
        conformance::put(&fx, &inbox, n, &conformance::payload(100 + i, i as u8));
    }
    std::fs::create_dir(inbox.join("processed")).unwrap();
    let mut src = conformance::Fixture::source(&fx, "list");
    let list = src.list().expect("LIST after MLSD's 550");
    let got: Vec<(&str, u64)> = list.iter().map(|f| (f.name.as_str(), f.size)).collect();
    assert_eq!(
        got,
        [
            ("a.csv", 100),
            ("point exchange 2026.csv", 101),
            ("ポイント交換.csv", 102)
        ]
    );
    let out = tempfile::tempdir().unwrap();
    src.fetch(&list[2], &out.path().join("jp"))
        .expect("fetch the Japanese name");
    assert!(std::fs::read(out.path().join("jp")).unwrap() == conformance::payload(102, 2));
    // and the whole suite on LIST
    conformance::run_all(&fx);
}

#[test]
fn proftpd_ftps_conformance() {
    conformance::run_all(&ftp_fx(true, true));
}

#[test]
fn proftpd_ftps_conformance_mlsd_denied() {
    conformance::run_all(&ftp_fx(true, false));
}

struct SftpFx {
    server: Proftpd,
    tmp: tempfile::TempDir,
}

impl SftpFx {
    fn config(&self, dir: &Path, host_key: HostKeyCheck) -> SftpConfig {
        SftpConfig {
            host: "127.0.0.1".into(),
            port: self.server.port,
            user: self.server.user.clone(),
            dir: dir.to_string_lossy().into_owned(),
            auth: SftpAuth::Password(secret(self.tmp.path(), &self.server.password)),
            host_key,
            pickup: conformance::test_pickup(2),
        }
    }
}

impl conformance::Fixture for SftpFx {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        let pin = HostKeyPin::parse(&self.server.host_keys[0].typed_pin()).unwrap();
        let c = self.config(&self.inbox_path(inbox), HostKeyCheck::Pins(vec![pin]));
        Box::new(SftpSource::connect(&c).expect("connect"))
    }
    fn inbox_path(&self, inbox: &str) -> PathBuf {
        self.server.root.join(inbox)
    }
    fn owner(&self) -> Option<(u32, u32)> {
        Some(ensure_test_user())
    }
}

/// The suite over mod_sftp, and no read request past any file's end (mod_sftp
/// logs each one as "requested read offset … greater than size").
#[test]
fn proftpd_mod_sftp_conformance() {
    let fx = SftpFx {
        server: Proftpd::start_sftp(),
        tmp: tempfile::tempdir().unwrap(),
    };
    conformance::run_all(&fx);
    // Files of awkward sizes, read whole.
    let inbox = conformance::fresh_inbox(&fx, "sizes");
    let sizes = [
        1usize,
        2,
        3,
        4,
        5,
        31,
        32_768,
        100_003,
        4 << 20,
        (9 << 20) + 7,
    ];
    for (i, n) in sizes.iter().enumerate() {
        conformance::put(
            &fx,
            &inbox,
            &format!("f{i}.csv"),
            &conformance::payload(*n, i as u8),
        );
    }
    let mut src = conformance::Fixture::source(&fx, "sizes");
    let out = tempfile::tempdir().unwrap();
    for f in src.list().expect("list") {
        let dest = out.path().join(&f.name);
        src.fetch(&f, &dest).expect("fetch");
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), f.size);
    }
    drop(src);
    let log = fx.server.log();
    assert!(
        log.contains("received READ (5) SFTP request"),
        "the trace log should show the reads: {}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert!(
        !log.contains("greater than size"),
        "a read went past a file's end:\n{}",
        log.lines()
            .filter(|l| l.contains("greater than size"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// RSA-only, ECDSA-only and Ed25519-only pins, known_hosts with one line,
/// a rotated pin list and the refusal, against mod_sftp's three keys.
#[test]
fn proftpd_mod_sftp_pins_of_each_type() {
    let fx = SftpFx {
        server: Proftpd::start_sftp(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let keys: Vec<conformance::host_keys::Key> = fx
        .server
        .host_keys
        .iter()
        .map(|k| conformance::host_keys::Key {
            kind: k.kind.ssh_name().into(),
            fingerprint: k.fingerprint.clone(),
            line: k.line.clone(),
        })
        .collect();
    let root = fx.server.root.clone();
    conformance::host_keys::run(fx.server.port, &keys, fx.tmp.path(), &|check| {
        SftpSource::connect(&fx.config(&root, check)).map(|s| Box::new(s) as Box<dyn Source>)
    });
}
