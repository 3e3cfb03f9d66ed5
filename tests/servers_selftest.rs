//! Proves that the test servers in `tests/common/servers.rs` really work,
//! using the same client crates as milebatch (ssh2, suppaftp, reqwest).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::{
    Fault, Ftpd, HttpAuth, HttpServer, KeyType, Sshd, SshdOpts, TestCa, TEST_PASSWORD, TEST_USER,
};

// ---------------------------------------------------------------- helpers

fn b64_nopad(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn ssh_session(sshd: &Sshd) -> ssh2::Session {
    let tcp = TcpStream::connect(sshd.addr()).expect("tcp connect sshd");
    let mut sess = ssh2::Session::new().unwrap();
    sess.set_timeout(10_000);
    sess.set_tcp_stream(tcp);
    sess.handshake().expect("ssh handshake");
    sess
}

fn check_host_key(sshd: &Sshd, sess: &ssh2::Session) {
    let hash = sess
        .host_key_hash(ssh2::HashType::Sha256)
        .expect("host key hash");
    let fp = sshd.host_key_fingerprint();
    assert_eq!(
        fp.strip_prefix("SHA256:").expect("SHA256: prefix"),
        b64_nopad(hash)
    );
    // the known_hosts file works with libssh2's checker
    let (key, _) = sess.host_key().unwrap();
    let mut kh = sess.known_hosts().unwrap();
    kh.read_file(&sshd.known_hosts, ssh2::KnownHostFileKind::OpenSSH)
        .expect("read known_hosts");
    assert!(matches!(
        kh.check_port("127.0.0.1", sshd.port, key),
        ssh2::CheckResult::Match
    ));
}

fn sftp_roundtrip(sess: &ssh2::Session, dir: &Path, name: &str, data: &[u8]) {
    let sftp = sess.sftp().expect("sftp subsystem");
    let remote = dir.join(name);
    let mut f = sftp.create(&remote).expect("sftp create");
    f.write_all(data).unwrap();
    drop(f);
    let mut back = Vec::new();
    sftp.open(&remote)
        .expect("sftp open")
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
    let names: Vec<_> = sftp
        .readdir(dir)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&name.to_string()), "{names:?}");
}

fn reqwest_client(ca: Option<&TestCa>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let cert = reqwest::Certificate::from_pem(&ca.ca_pem_bytes()).unwrap();
        b = b.tls_certs_only([cert]);
    }
    b.build().unwrap()
}

// ---------------------------------------------------------------- sshd

#[test]
fn sshd_ed25519_pubkey_and_password() {
    let sshd = Sshd::start(SshdOpts::default());
    assert_eq!(sshd.user, TEST_USER);
    assert!(sshd.root.is_absolute());
    let kh = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(
        kh.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 AAAA", sshd.port)),
        "{kh}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sshd.client_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // key auth
    let sess = ssh_session(&sshd);
    check_host_key(&sshd, &sess);
    sess.userauth_pubkey_file(&sshd.user, None, &sshd.client_key, None)
        .expect("pubkey auth");
    assert!(sess.authenticated());
    sftp_roundtrip(&sess, &sshd.root, "key.csv", b"id,miles\n1,100\n");
    assert_eq!(
        std::fs::read(sshd.root.join("key.csv")).unwrap(),
        b"id,miles\n1,100\n"
    );

    // password auth
    let sess = ssh_session(&sshd);
    sess.userauth_password(&sshd.user, &sshd.password)
        .expect("password auth");
    sftp_roundtrip(&sess, &sshd.root, "pw.csv", b"x");

    // wrong password refused
    let sess = ssh_session(&sshd);
    assert!(sess.userauth_password(&sshd.user, "wrong").is_err());
}

#[test]
fn sshd_rsa_keys_no_password() {
    let sshd = Sshd::start(SshdOpts {
        host_key: KeyType::Rsa,
        client_key: KeyType::Rsa,
        password_auth: false,
        ..SshdOpts::default()
    });
    assert!(sshd.host_key_openssh().starts_with("ssh-rsa "));
    let sess = ssh_session(&sshd);
    check_host_key(&sshd, &sess);
    assert!(sess.userauth_password(&sshd.user, TEST_PASSWORD).is_err());
    let sess = ssh_session(&sshd);
    sess.userauth_pubkey_file(&sshd.user, None, &sshd.client_key, None)
        .expect("rsa pubkey auth");
    sftp_roundtrip(&sess, &sshd.root, "rsa.csv", &vec![b'r'; 100_000]);
}

#[test]
fn sshd_kill_and_restart() {
    let mut sshd = Sshd::start(SshdOpts::default());
    let fp = sshd.host_key_fingerprint();
    let port = sshd.port;

    // an open SFTP session dies with the server
    let sess = ssh_session(&sshd);
    sess.userauth_pubkey_file(&sshd.user, None, &sshd.client_key, None)
        .unwrap();
    let sftp = sess.sftp().unwrap();
    sftp.readdir(&sshd.root).unwrap();
    sshd.kill();
    assert!(!sshd.is_running());
    assert!(sftp.readdir(&sshd.root).is_err(), "session survived kill");
    assert!(TcpStream::connect(sshd.addr()).is_err());

    sshd.restart();
    assert_eq!(sshd.port, port);
    let sess = ssh_session(&sshd);
    let hash = sess.host_key_hash(ssh2::HashType::Sha256).unwrap();
    assert_eq!(fp, format!("SHA256:{}", b64_nopad(hash)));
    sess.userauth_pubkey_file(&sshd.user, None, &sshd.client_key, None)
        .unwrap();
    sftp_roundtrip(&sess, &sshd.root, "after.csv", b"ok");
}

// ---------------------------------------------------------------- vsftpd

fn ftp_roundtrip<T: suppaftp::TlsStream>(ftp: &mut suppaftp::ImplFtpStream<T>, ftpd: &Ftpd) {
    ftp.login(&ftpd.user, &ftpd.password).expect("ftp login");
    assert_eq!(ftp.pwd().unwrap(), ftpd.ftp_dir);
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .unwrap();
    let data = b"id;miles\n1;200\n".repeat(1000);
    ftp.put_file("up.csv", &mut &data[..]).expect("ftp put");
    assert_eq!(std::fs::read(ftpd.root.join("up.csv")).unwrap(), data);

    std::fs::write(ftpd.root.join("partner.csv"), b"a,b\n").unwrap();
    let names = ftp.nlst(None).expect("nlst");
    assert!(
        names.iter().any(|n| n.ends_with("partner.csv")),
        "{names:?}"
    );
    let list = ftp.list(Some(&ftpd.ftp_dir)).expect("list");
    assert!(list.iter().any(|l| l.contains("up.csv")), "{list:?}");
    let got = ftp
        .retr_as_buffer("partner.csv")
        .expect("retr")
        .into_inner();
    assert_eq!(got, b"a,b\n");
    let got = ftp
        .retr_as_buffer(&format!("{}/up.csv", ftpd.ftp_dir))
        .unwrap()
        .into_inner();
    assert_eq!(got, data);
    ftp.quit().unwrap();
}

#[test]
fn vsftpd_plain() {
    let ftpd = Ftpd::start_plain();
    let mut ftp = suppaftp::FtpStream::connect(ftpd.addr()).expect("ftp connect");
    ftp_roundtrip(&mut ftp, &ftpd);

    let mut ftp = suppaftp::FtpStream::connect(ftpd.addr()).unwrap();
    assert!(ftp.login(ftpd.user.as_str(), "wrong").is_err());
}

#[test]
fn vsftpd_explicit_tls_verified_against_test_ca() {
    use suppaftp::rustls;
    let ca = TestCa::new();
    let ftpd = Ftpd::start_tls(&ca);

    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from(rustls_pemfile_der(
        &std::fs::read_to_string(&ca.ca_pem).unwrap(),
    ));
    roots.add(ca_der).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);

    for host in ["localhost", "127.0.0.1"] {
        let mut ftp = suppaftp::RustlsFtpStream::connect(ftpd.addr())
            .unwrap()
            .into_secure(suppaftp::RustlsConnector::from(config.clone()), host)
            .expect("AUTH TLS");
        ftp_roundtrip(&mut ftp, &ftpd);
    }

    // plain login is refused
    let mut ftp = suppaftp::FtpStream::connect(ftpd.addr()).unwrap();
    assert!(ftp.login(&ftpd.user, &ftpd.password).is_err());

    // a client trusting another CA fails the handshake
    let other = TestCa::new();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(rustls_pemfile_der(
            &std::fs::read_to_string(&other.ca_pem).unwrap(),
        )))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let bad = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let r = suppaftp::RustlsFtpStream::connect(ftpd.addr())
        .unwrap()
        .into_secure(suppaftp::RustlsConnector::from(Arc::new(bad)), "localhost")
        .and_then(|mut f| f.login(&ftpd.user, &ftpd.password));
    assert!(r.is_err(), "untrusted certificate accepted");
}

/// DER of the first certificate in a PEM string.
fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn vsftpd_kill_and_restart() {
    let mut ftpd = Ftpd::start_plain();
    let mut ftp = suppaftp::FtpStream::connect(ftpd.addr()).unwrap();
    ftp.login(&ftpd.user, &ftpd.password).unwrap();
    ftpd.kill();
    assert!(ftp.pwd().is_err(), "session survived kill");
    ftpd.restart();
    let mut ftp = suppaftp::FtpStream::connect(ftpd.addr()).unwrap();
    ftp.login(&ftpd.user, &ftpd.password).unwrap();
    ftp.quit().unwrap();
}

// ---------------------------------------------------------------- http

#[test]
fn http_plain_get_put_faults() {
    let http = HttpServer::start_plain();
    let c = reqwest_client(None);
    http.put_file("in/partner.csv", b"id,miles\n1,5\n");

    let r = c.get(http.url("/in/partner.csv")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), b"id,miles\n1,5\n");

    assert_eq!(
        c.get(http.url("/missing.csv")).send().unwrap().status(),
        404
    );
    assert_eq!(
        c.get(http.url("/a/..%2f..%2fetc/passwd"))
            .send()
            .unwrap()
            .status(),
        400
    );

    let r = c
        .put(http.url("/out/errors.csv"))
        .body("line,error\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        std::fs::read(http.uploads.join("out/errors.csv")).unwrap(),
        b"line,error\n"
    );

    // range
    let r = c
        .get(http.url("/in/partner.csv"))
        .header("Range", "bytes=3-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), b"miles\n1,5\n");

    // forced 500 twice, then normal again
    http.set_fail(2, 500);
    assert_eq!(
        c.get(http.url("/in/partner.csv")).send().unwrap().status(),
        500
    );
    assert_eq!(
        c.get(http.url("/in/partner.csv")).send().unwrap().status(),
        500
    );
    assert_eq!(
        c.get(http.url("/in/partner.csv")).send().unwrap().status(),
        200
    );

    // truncated body: headers fine, reading the body fails
    http.put_file("big.csv", vec![b'z'; 200_000]);
    http.set_truncate(1);
    let r = c.get(http.url("/big.csv")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(200_000));
    assert!(r.bytes().is_err(), "truncated body read as complete");

    // stall: client read timeout fires
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    http.set_stall(1, Duration::from_secs(30));
    let t = Instant::now();
    let r = quick.get(http.url("/big.csv")).send();
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().is_err(),
    };
    assert!(failed, "stalled response completed");
    assert!(t.elapsed() < Duration::from_secs(5));

    // close without response
    http.push_fault(Fault::Close, 1);
    assert!(c.get(http.url("/big.csv")).send().is_err());

    let reqs = http.requests();
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/in/partner.csv");
    assert!(!reqs[0].auth_header);
    assert!(reqs
        .iter()
        .any(|r| r.method == "PUT" && r.status == 201 && r.body_len == 11));
}

#[test]
fn https_with_test_ca_and_auth() {
    let ca = TestCa::new();
    let http = HttpServer::start(
        Some(&ca),
        HttpAuth::Basic {
            user: "partner".into(),
            password: "s3cret".into(),
        },
    );
    http.put_file("a.csv", b"hello");
    let c = reqwest_client(Some(&ca));
    assert!(http.url("/a.csv").starts_with("https://127.0.0.1:"));

    let r = c.get(http.url("/a.csv")).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(http.url("/a.csv"))
        .basic_auth("partner", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(http.url("/a.csv"))
        .basic_auth("partner", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "hello");

    // also valid for the name "localhost"
    let r = c
        .get(format!("https://localhost:{}/a.csv", http.port))
        .basic_auth("partner", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    http.set_auth(HttpAuth::Bearer("tok-123".into()));
    assert_eq!(c.get(http.url("/a.csv")).send().unwrap().status(), 401);
    let r = c
        .put(http.url("/up.csv"))
        .bearer_auth("tok-123")
        .body(vec![b'q'; 50_000])
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        std::fs::read(http.uploads.join("up.csv")).unwrap().len(),
        50_000
    );

    // forced 500 over TLS
    http.set_fail(1, 503);
    let r = c
        .get(http.url("/a.csv"))
        .bearer_auth("tok-123")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);

    let reqs = http.requests();
    assert!(!reqs[0].auth_header && !reqs[0].authorized && reqs[0].status == 401);
    assert!(reqs[2].auth_header && reqs[2].authorized);

    // a client without the test CA refuses the server
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain.get(http.url("/a.csv")).send().is_err());
}

#[test]
fn test_ca_leaf_is_not_a_ca() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert("leaf");
    assert!(cert.starts_with(&ca.dir) && key.starts_with(&ca.dir));
    // a server certificate must not be a CA (rustls refuses CA:TRUE leaves),
    // which the HTTPS/FTPS tests prove end to end; check the DER here too:
    // the basicConstraints extension (OID 2.5.29.19) is present. (Checked with
    // `openssl x509 -text`: "Basic Constraints: critical CA:FALSE".)
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap();
    let oid_bc = [0x06, 0x03, 0x55, 0x1d, 0x13];
    assert!(
        der.windows(oid_bc.len()).any(|w| w == oid_bc),
        "no basicConstraints"
    );
}

#[test]
#[should_panic(expected = "apt-get install -y no-such-package")]
fn require_tool_panics_with_install_hint() {
    common::servers::require_tool("/nonexistent/tool", "no-such-package");
}
