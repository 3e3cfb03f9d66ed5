//! FTP and FTPS against a real vsftpd on 127.0.0.1: the conformance suite,
//! certificate verification, login failures.

mod common;
mod conformance;

use std::path::{Path, PathBuf};

use common::servers::{ensure_test_user, Ftpd, TestCa};
use milebatch::source::ftp::FtpSource;
use milebatch::source::{FtpConfig, SecretRef, Source, SourceError};

fn secret(dir: &Path, pw: &str) -> SecretRef {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("pw-{}", pw.len()));
    std::fs::write(&p, pw).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretRef::File(p)
}

fn config(ftpd: &Ftpd, dir: &str, pw: SecretRef, ca: Option<&TestCa>) -> FtpConfig {
    FtpConfig {
        host: "127.0.0.1".into(),
        port: ftpd.port,
        user: ftpd.user.clone(),
        dir: dir.into(),
        password: pw,
        tls: ftpd.tls,
        ca_file: ca.map(|c| c.ca_pem.clone()),
        pickup: conformance::test_pickup(2),
    }
}

struct Fx {
    ftpd: Ftpd,
    ca: Option<TestCa>,
    tmp: tempfile::TempDir,
}

impl conformance::Fixture for Fx {
    fn source(&self, inbox: &str) -> Box<dyn Source> {
        let pw = secret(self.tmp.path(), &self.ftpd.password);
        let dir = format!("{}/{inbox}", self.ftpd.ftp_dir);
        Box::new(
            FtpSource::connect(&config(&self.ftpd, &dir, pw, self.ca.as_ref())).expect("connect"),
        )
    }
    fn inbox_path(&self, inbox: &str) -> PathBuf {
        self.ftpd.root.join(inbox)
    }
    fn owner(&self) -> Option<(u32, u32)> {
        Some(ensure_test_user())
    }
}

#[test]
fn ftp_plain_conformance() {
    conformance::run_all(&Fx {
        ftpd: Ftpd::start_plain(),
        ca: None,
        tmp: tempfile::tempdir().unwrap(),
    });
}

#[test]
fn ftps_conformance_with_test_ca() {
    let ca = TestCa::new();
    conformance::run_all(&Fx {
        ftpd: Ftpd::start_tls(&ca),
        ca: Some(ca),
        tmp: tempfile::tempdir().unwrap(),
    });
}

#[test]
fn ftps_untrusted_certificate_is_permanent() {
    let ca = TestCa::new();
    let ftpd = Ftpd::start_tls(&ca);
    let other = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let c = config(
        &ftpd,
        &ftpd.ftp_dir,
        secret(tmp.path(), &ftpd.password),
        Some(&other),
    );
    let mut attempts = 0;
    let r = milebatch::source::retry::with_retries(3, "connecting", || {
        attempts += 1;
        FtpSource::connect(&c)
    });
    let e = r
        .err()
        .expect("a certificate from an unknown CA must be refused");
    assert!(matches!(e, SourceError::Permanent(_)), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(attempts, 1, "not retried");
    // and without any ca_file (system roots only) too
    let c = config(
        &ftpd,
        &ftpd.ftp_dir,
        secret(tmp.path(), &ftpd.password),
        None,
    );
    let e = FtpSource::connect(&c)
        .err()
        .expect("not trusted by system roots");
    assert!(matches!(e, SourceError::Permanent(_)), "{e:?}");
}

#[test]
fn ftp_wrong_password_is_auth() {
    let ftpd = Ftpd::start_plain();
    let tmp = tempfile::tempdir().unwrap();
    let c = config(
        &ftpd,
        &ftpd.ftp_dir,
        secret(tmp.path(), "wrong-password"),
        None,
    );
    match FtpSource::connect(&c).err().expect("wrong password") {
        SourceError::Auth(m) => assert!(!m.contains("wrong-password"), "{m}"),
        other => panic!("expected Auth, got {other:?}"),
    }
}

#[test]
fn ftp_server_gone_is_transient_and_reconnects() {
    let mut ftpd = Ftpd::start_plain();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(ftpd.root.join("a.csv"), b"abc").unwrap();
    let c = config(
        &ftpd,
        &ftpd.ftp_dir,
        secret(tmp.path(), &ftpd.password),
        None,
    );
    let mut s = FtpSource::connect(&c).expect("connect");
    assert_eq!(s.list().expect("list").len(), 1);
    ftpd.kill();
    let e = s.list().expect_err("server is gone");
    assert!(e.retryable(), "{e:?}");
    ftpd.restart();
    // As a run does: transient faults are retried (a just-restarted vsftpd
    // under load once answered the first session "500 OOPS", itself
    // transient); anything else fails at once.
    let listed = milebatch::source::retry::with_retries(2, "listing", || s.list());
    assert_eq!(listed.expect("reconnects after a transient error").len(), 1);
}
