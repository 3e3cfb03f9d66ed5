//! No password, passphrase, token or private key ever appears in logs (even
//! at trace level), error messages, `check` output or the database.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::servers::{ensure_test_user, HttpAuth, HttpServer, Sshd, SshdOpts, TestCa};
use common::workspace::Workspace;

const TOKEN: &str = "Tok-9f8e7d6c5b4a3921";
const WRONG: &str = "Wrong-Secret-5521";

#[test]
fn secrets_never_reach_output_or_the_database() {
    let sshd = Sshd::start(SshdOpts::default());
    let (u, g) = ensure_test_user();
    let inbox = sshd.root.join("in");
    std::fs::create_dir(&inbox).unwrap();
    std::os::unix::fs::chown(&inbox, Some(u), Some(g)).unwrap();
    let put = |name: &str, data: &[u8]| {
        let p = inbox.join(name);
        std::fs::write(&p, data).unwrap();
        std::os::unix::fs::chown(&p, Some(u), Some(g)).unwrap();
    };
    put("a.csv", b"NM0000000001,k1,10\nnobody,k2,1\n");
    let ca = TestCa::new();
    let http = HttpServer::start(Some(&ca), HttpAuth::Bearer(TOKEN.into()));
    http.put_file("/x.csv", "NM0000000002,k3,20\n");

    let w = Workspace::new();
    let token = w.write("secrets/token", format!("{TOKEN}\n"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loose = w.write("secrets/loose", format!("{WRONG}\n"));
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sftp = |id: &str, auth: &str, host_key: &str| {
        format!(
            "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
             [partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\n\
             dir = \"{dir}\"\n{auth}\nhost_key = \"{host_key}\"\nready = \"immediate\"\nafter = \"keep\"\n\
             errors_dir = \"none\"\ntimeout = \"5s\"\nretries = 0\n\n",
            port = sshd.port,
            user = sshd.user,
            dir = inbox.display(),
        )
    };
    let fp = sshd.host_key_fingerprint();
    let mut cfg = String::new();
    cfg += &sftp("pw-ok", "password_env = \"MB_SFTP_PW\"", &fp);
    cfg += &sftp("pw-wrong", "password_env = \"MB_WRONG_PW\"", &fp);
    cfg += &sftp("pw-loose", "password_file = \"secrets/loose\"", &fp);
    cfg += &sftp(
        "hostkey-wrong",
        "password_env = \"MB_SFTP_PW\"",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    cfg += &sftp(
        "key-ok",
        &format!("key_file = \"{}\"", sshd.client_key.display()),
        &fp,
    );
    cfg += &format!(
        "[[partner]]\nid = \"web\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"http\"\nurl = \"{}\"\nauth = \"bearer\"\npassword_file = \"secrets/token\"\n\
         ca_file = \"{}\"\nretries = 0\n",
        http.url("/x.csv"),
        ca.ca_pem.display()
    );
    w.config(&cfg);
    w.demo_members();

    let env = [
        ("RUST_LOG", "trace"),
        ("MB_SFTP_PW", sshd.password.as_str()),
        ("MB_WRONG_PW", WRONG),
    ];
    let mut seen = String::new();
    for args in [
        &["check"][..],
        &["check", "--json"],
        &["once", "--json"],
        &["once"],
        &["status", "--json"],
        &["files", "--json"],
    ] {
        let o = w.run_env(args, &env);
        seen += &String::from_utf8_lossy(&o.stdout);
        seen += &String::from_utf8_lossy(&o.stderr);
    }
    // The runs really did the things whose errors could leak.
    assert!(seen.contains("authentication failed"), "{seen}");
    assert!(seen.contains("host key verification failed"), "{seen}");
    assert!(
        seen.contains("chmod 600"),
        "a group-readable secret file is refused: {seen}"
    );
    // pw-ok and key-ok are two partners reading the same inbox: 10 each.
    assert_eq!(w.balance("NM0000000001"), 20, "the good SFTP partners ran");
    assert_eq!(w.balance("NM0000000002"), 20, "the HTTP partner ran");

    let key = std::fs::read_to_string(&sshd.client_key).unwrap();
    let key_line = key.lines().nth(2).expect("a private key body line");
    let mut db = std::fs::read(w.path("var/milebatch.db")).unwrap();
    db.extend(std::fs::read(w.path("var/milebatch.db-wal")).unwrap_or_default());
    let db = String::from_utf8_lossy(&db);
    for secret in [sshd.password.as_str(), WRONG, TOKEN, key_line] {
        assert!(!seen.contains(secret), "secret {secret:?} printed:\n{seen}");
        assert!(
            !db.contains(secret),
            "secret {secret:?} stored in the database"
        );
    }
}
