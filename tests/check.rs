//! `milebatch check` on the real binary: every problem that would stop a
//! run is named in one go (exit 1); a runnable config exits 0; `--connect`
//! logs in to real sshd, vsftpd (FTP and FTPS) and HTTPS servers, counts
//! the matching files and changes nothing on them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::servers::{ensure_test_user, Ftpd, HttpAuth, HttpServer, Sshd, SshdOpts, TestCa};
use common::workspace::{local_partner, Workspace, FAKE_NOW};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fresh ed25519 key pair from ssh-keygen (`passphrase` "" for none).
fn keygen(w: &Workspace, name: &str, passphrase: &str) -> PathBuf {
    let p = w.path(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let st = Command::new("/usr/bin/ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-C",
            "check-test",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(&p)
        .status()
        .expect("ssh-keygen (apt-get install -y openssh-client)");
    assert!(st.success());
    chmod(&p, 0o600);
    p
}

/// `keytype base64` of a key's `.pub`, as a known_hosts line holds it.
fn public_key(private: &Path) -> String {
    let text = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn sftp_partner(id: &str, port: u16, keys: &str) -> String {
    format!(
        "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"mb\"\n\
         dir = \"/in\"\ntimeout = \"3s\"\nretries = 0\n{keys}\n\n"
    )
}

/// `chattr +i` on a path (stops even root from writing it, as a read-only
/// mount would), undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let st = Command::new("chattr").arg("+i").arg(p).status();
        assert!(
            st.expect("chattr (e2fsprogs)").success(),
            "chattr +i needs root and e2fsprogs"
        );
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// An SFTP partner logging in to `sshd` with its client key, reading
/// `dir`, with host key pin `pin`.
fn sftp_key_partner(sshd: &Sshd, id: &str, dir: &str, pin: &str) -> String {
    format!(
        "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
         dir = \"{dir}\"\nkey_file = \"{}\"\nhost_key = \"{pin}\"\ntimeout = \"5s\"\nretries = 0\n\n",
        sshd.port,
        sshd.user,
        sshd.client_key.display()
    )
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `problem:` lines of `check`'s output.
fn problems(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("problem: ")).collect()
}

#[test]
fn check_names_every_problem_of_a_config_that_cannot_run() {
    let w = Workspace::new();
    let good_key = keygen(&w, "keys/good", "");
    let loose_key = keygen(&w, "keys/loose", "");
    chmod(&loose_key, 0o644);
    keygen(&w, "keys/locked", "s3cret-passphrase");
    w.write("keys/garbage", "hunter2\n");
    chmod(&w.path("keys/garbage"), 0o600);
    w.write("known_hosts.bad", "this is not a known_hosts line\n");
    chmod(&w.path("keys/good.pub"), 0o600);
    w.write(
        "known_hosts.other",
        format!("[192.0.2.9]:2222 {}\n", public_key(&good_key)),
    );
    w.write(
        "ca.bad",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    w.write("secrets/loose-pw", "pw\n");
    chmod(&w.path("secrets/loose-pw"), 0o644);
    // data_dir below a plain file can never be created.
    w.write("not-a-folder", "x");
    std::fs::create_dir_all(w.path("inbox/sub-file")).unwrap();
    w.write("inbox/sub-file/processed", "a file where a folder goes");

    let fp = "host_key = \"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"";
    let mut cfg = String::new();
    cfg += &local_partner("no-inbox", "inbox/missing", "");
    cfg += &local_partner("sub-file", "inbox/sub-file", "");
    cfg += &sftp_partner("no-key", 2222, &format!("key_file = \"keys/absent\"\n{fp}"));
    cfg += &sftp_partner(
        "loose-key",
        2222,
        &format!("key_file = \"keys/loose\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "locked-key",
        2222,
        &format!("key_file = \"keys/locked\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "pub-key",
        2222,
        &format!("key_file = \"keys/good.pub\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "garbage-key",
        2222,
        &format!("key_file = \"keys/garbage\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "bad-kh",
        2222,
        "key_file = \"keys/good\"\nknown_hosts = \"known_hosts.bad\"",
    );
    cfg += &sftp_partner(
        "no-kh-entry",
        2222,
        "key_file = \"keys/good\"\nknown_hosts = \"known_hosts.other\"",
    );
    cfg += &sftp_partner(
        "missing-kh",
        2222,
        "key_file = \"keys/good\"\nknown_hosts = \"known_hosts.absent\"",
    );
    cfg += &sftp_partner(
        "unset-env",
        2222,
        &format!("password_env = \"MB_CHECK_UNSET\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "empty-env",
        2222,
        &format!("password_env = \"MB_CHECK_EMPTY\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "loose-pw",
        2222,
        &format!("password_file = \"secrets/loose-pw\"\n{fp}"),
    );
    cfg += &sftp_partner(
        "absent-pw",
        2222,
        &format!("password_file = \"secrets/absent\"\n{fp}"),
    );
    cfg += "[[partner]]\nid = \"bad-ca\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
            [partner.source]\nkind = \"ftps\"\nhost = \"127.0.0.1\"\nuser = \"mb\"\n\
            credential = \"bad-ca-pw\"\nca_file = \"ca.bad\"\n\n";
    cfg +=
        "[[partner]]\nid = \"absent-ca\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
            [partner.source]\nkind = \"https\"\nurl = \"https://127.0.0.1:1/x.csv\"\n\
            ca_file = \"ca.absent\"\n\n";
    w.config(&cfg);
    let text = std::fs::read_to_string(w.config_path())
        .unwrap()
        .replace(
            "data_dir = \"var\"",
            "data_dir = \"not-a-folder/var\"\nbackup = \"daily 04:00\"\nbackup_dir = \"not-a-folder/backups\"",
        );
    w.write("partners.toml", text);

    // An inbox milebatch moves files out of, but cannot write (the immutable
    // flag stops even root, as a read-only mount would).
    std::fs::create_dir_all(w.path("inbox/frozen")).unwrap();
    let _frozen = Immutable::set(&w.path("inbox/frozen"));
    let text = std::fs::read_to_string(w.config_path()).unwrap()
        + &local_partner("frozen", "inbox/frozen", "");
    w.write("partners.toml", text);
    let o = w.run_env(&["check"], &[("MB_CHECK_EMPTY", "")]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let expect = [
        ("[daemon]", "data_dir"),
        ("[daemon]", "backup_dir"),
        ("no-inbox", "does not exist: create it"),
        ("sub-file", "exists and is not a folder"),
        ("no-key", "keys/absent does not exist"),
        ("loose-key", "chmod 600"),
        ("locked-key", "is encrypted and no passphrase is configured"),
        ("pub-key", "is a public key"),
        ("garbage-key", "does not look like a private key"),
        ("bad-kh", "known_hosts"),
        ("no-kh-entry", "has no entry for [127.0.0.1]:2222"),
        ("missing-kh", "known_hosts.absent does not exist"),
        ("unset-env", "MB_CHECK_UNSET is not set"),
        ("empty-env", "MB_CHECK_EMPTY is set but empty"),
        ("loose-pw", "chmod 600"),
        ("absent-pw", "secrets/absent does not exist"),
        ("bad-ca", "ca.bad"),
        ("absent-ca", "ca.absent"),
        ("frozen", "is not writable by this user"),
    ];
    let lines = problems(&out);
    for (who, what) in expect {
        let prefix = format!("problem: {who}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "no problem line for {who} mentioning {what:?}:\n{out}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "one line per problem:\n{out}");
    assert!(
        out.contains(&format!("{} problem(s)", expect.len())),
        "{out}"
    );
    // A credential outside systemd is not a problem: it is said where it
    // will be read from.
    assert!(
        out.contains("credential \"bad-ca-pw\" will be read from $CREDENTIALS_DIRECTORY/bad-ca-pw at run time"),
        "{out}"
    );
    // --json: the same problems, machine-readable.
    let o = w.run_env(&["check", "--json"], &[("MB_CHECK_EMPTY", "")]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["problems"].as_array().unwrap().len(),
        expect.len(),
        "{v:#}"
    );
    assert!(!out.contains("s3cret-passphrase"));
}

#[test]
fn check_passes_a_config_that_can_run_and_checks_systemd_credentials() {
    let w = Workspace::new();
    let key = keygen(&w, "keys/id", "");
    let locked = keygen(&w, "keys/locked", "pass-phrase-1");
    w.write(
        "known_hosts",
        format!("# partner A\n[127.0.0.1]:2222 {}\n", public_key(&key)),
    );
    let ca = TestCa::new();
    let creds = w.path("creds");
    w.write("creds/ftp-pw", "pw\n");
    chmod(&creds.join("ftp-pw"), 0o400);
    w.write("pass", "pass-phrase-1\n");
    chmod(&w.path("pass"), 0o600);
    std::fs::create_dir_all(w.inbox("shop")).unwrap();
    let mut cfg = local_partner("shop", "inbox/shop", "");
    cfg += &sftp_partner(
        "sftp",
        2222,
        &format!(
            "key_file = \"{}\"\nknown_hosts = \"known_hosts\"",
            key.display()
        ),
    );
    cfg += &sftp_partner(
        "sftp-locked",
        2222,
        &format!(
            "key_file = \"{}\"\npassphrase_file = \"pass\"\nhost_key = \"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"",
            locked.display()
        ),
    );
    cfg += &sftp_partner(
        "sftp-env",
        2222,
        "password_env = \"MB_CHECK_PW\"\nhost_key = \"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"",
    );
    cfg += &format!(
        "[[partner]]\nid = \"ftps\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"ftps\"\nhost = \"127.0.0.1\"\nuser = \"mb\"\n\
         credential = \"ftp-pw\"\nca_file = \"{}\"\n\n",
        ca.ca_pem.display()
    );
    w.config(&cfg);
    let env = [
        ("MB_CHECK_PW", "pw"),
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
    ];
    let o = w.run_env(&["check"], &env);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(problems(&out).is_empty(), "{out}");
    assert!(out.contains(": OK, 5 partner(s)"), "{out}");
    assert!(out.contains("credential \"ftp-pw\" is readable"), "{out}");

    // The same credential missing from $CREDENTIALS_DIRECTORY is a problem
    // that says how to provide it.
    std::fs::remove_file(creds.join("ftp-pw")).unwrap();
    let o = w.run_env(&["check"], &env);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(
        problems(&out),
        [format!(
            "problem: ftps: password: credential \"ftp-pw\" is not in $CREDENTIALS_DIRECTORY ({}): add LoadCredential=ftp-pw:/path/to/secret to the unit",
            creds.display()
        )],
        "{out}"
    );
}

/// The example `partners.toml` (the README's first command) is runnable.
#[test]
fn the_example_config_passes_check() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("partners.toml");
    let o = Command::new(common::workspace::BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains(": OK, 2 partner(s)"), "{}", stdout(&o));
}

/// Every file under `dir` with its size and mtime: what `--connect` must
/// leave exactly as it was.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn check_connect_logs_in_counts_matching_files_and_changes_nothing() {
    let sshd = Sshd::start(SshdOpts::default());
    let ca = TestCa::new();
    let ftp = Ftpd::start_plain();
    let ftps = Ftpd::start_tls(&ca);
    let http = HttpServer::start(Some(&ca), HttpAuth::Bearer("tok-123".into()));
    let w = Workspace::new();

    for (root, files) in [
        (
            &sshd.root,
            &["a.csv", "b.csv", "notes.txt", ".hidden.csv"][..],
        ),
        (&ftp.root, &["x.csv", "readme.txt"][..]),
        (&ftps.root, &["1.csv", "2.csv", "3.csv"][..]),
    ] {
        std::fs::create_dir_all(root.join("in")).unwrap();
        for f in files {
            std::fs::write(root.join("in").join(f), "NM0000000001,k,1\n").unwrap();
        }
    }
    // Tokyo's date at the fake clock's instant is 2026-11-24.
    http.put_file("/out/ex-20261124.csv", "NM0000000001,k,1\n");
    w.write("token", "tok-123\n");
    chmod(&w.path("token"), 0o600);

    let fp = sshd.host_key_fingerprint();
    let sftp = |id: &str, auth: &str, host_key: &str| {
        format!(
            "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
             [partner.source]\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
             dir = \"{}/in\"\n{auth}\nhost_key = \"{host_key}\"\ntimeout = \"5s\"\nretries = 0\n\n",
            sshd.port,
            sshd.user,
            sshd.root.display()
        )
    };
    let ftp_partner = |id: &str, f: &Ftpd, extra: &str| {
        format!(
            "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
             [partner.source]\nkind = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
             dir = \"{}/in\"\npassword_env = \"MB_FTP_PW\"\ntimeout = \"5s\"\nretries = 0\n{extra}\n\n",
            if f.tls { "ftps" } else { "ftp" },
            f.port,
            f.user,
            f.ftp_dir
        )
    };
    let http_partner = |id: &str, path: &str| {
        format!(
            "[[partner]]\nid = \"{id}\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
             [partner.source]\nkind = \"https\"\nurl = \"{}\"\nauth = \"bearer\"\n\
             password_file = \"token\"\nca_file = \"{}\"\ntimeout = \"5s\"\nretries = 0\n\n",
            http.url(path),
            ca.ca_pem.display()
        )
    };
    let mut cfg = String::new();
    cfg += &sftp(
        "sftp-ok",
        &format!("key_file = \"{}\"", sshd.client_key.display()),
        &fp,
    );
    cfg += &sftp(
        "sftp-hostkey",
        &format!("key_file = \"{}\"", sshd.client_key.display()),
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    cfg += &sftp("sftp-badpw", "password_env = \"MB_WRONG_PW\"", &fp);
    cfg += &ftp_partner("ftp-ok", &ftp, "insecure_plaintext = true");
    cfg += &ftp_partner(
        "ftps-ok",
        &ftps,
        &format!("ca_file = \"{}\"", ca.ca_pem.display()),
    );
    cfg += &http_partner("https-today", "/out/ex-{date:%Y%m%d}.csv");
    cfg += &http_partner("https-none", "/out/none-{date:%Y%m%d}.csv");
    w.config(&cfg);

    let before = [
        snapshot(&sshd.root),
        snapshot(&ftp.root),
        snapshot(&ftps.root),
    ];
    let mut c = w.cmd(&["check", "--connect", "--no-write-probe"]);
    c.env(FAKE_NOW, "2026-11-24T03:00:00Z")
        .env("MB_FTP_PW", &ftp.password)
        .env("MB_WRONG_PW", "not-the-password");
    let o = c.output().unwrap();
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");

    let section = |id: &str| -> String {
        let start = out
            .find(&format!("\n  {id} ("))
            .unwrap_or_else(|| panic!("no {id}:\n{out}"));
        out[start + 1..]
            .lines()
            .take_while(|l| !l.starts_with("problem:"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        section("sftp-ok").contains("connect: ok, 2 file(s) matching \"*.csv\""),
        "{out}"
    );
    assert!(
        section("ftp-ok").contains("connect: ok, 1 file(s) matching \"*.csv\""),
        "{out}"
    );
    assert!(
        section("ftps-ok").contains("connect: ok, 3 file(s) matching \"*.csv\""),
        "{out}"
    );
    assert!(
        section("https-today").contains("connect: ok, 1 file(s)"),
        "{out}"
    );
    assert!(
        section("https-none").contains("connect: ok, no file today"),
        "{out}"
    );
    // The folders a run writes to are looked at, not written to.
    assert!(
        section("sftp-ok").contains(
            "folder processed/ (after): missing; the first run creates it (not written to: --no-write-probe)"
        ) && section("ftp-ok").contains("folder errors/ (errors_dir): missing")
            && section("https-today").contains("folders: none (HTTP; an errors_url is not probed"),
        "{out}"
    );
    let lines = problems(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("problem: sftp-hostkey: connecting to")
            && lines[0].contains("host key verification failed")
            && lines[0].contains(&fp),
        "{out}"
    );
    assert!(
        lines[1].starts_with("problem: sftp-badpw: connecting to")
            && lines[1].contains("authentication failed"),
        "{out}"
    );
    assert!(!out.contains("not-the-password") && !err.contains("not-the-password"));

    // Nothing moved, created, uploaded or deleted.
    let after = [
        snapshot(&sshd.root),
        snapshot(&ftp.root),
        snapshot(&ftps.root),
    ];
    assert_eq!(before, after);
    let methods: Vec<String> = http.requests().into_iter().map(|r| r.method).collect();
    assert!(
        methods.iter().all(|m| m == "GET" || m == "HEAD"),
        "{methods:?}"
    );
    assert_eq!(methods.len(), 2, "{methods:?}");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

/// The folders a run writes to, on real sshd and vsftpd: a plain file named
/// `errors` where the reports go, and a folder the login cannot write, are
/// problems before the first run (which would otherwise credit the file and
/// end `tidy-failed`); a good folder gets one probe file written and removed,
/// a missing one is created as the run would; `--no-write-probe` still finds
/// the file in the way and writes nothing.
#[test]
fn check_connect_probes_the_folders_a_run_writes_to() {
    let sshd = Sshd::start(SshdOpts::default());
    let ftp = Ftpd::start_plain();
    let w = Workspace::new();
    let inbox = |root: &Path, name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.csv"), "NM0000000001,k,1\n").unwrap();
        d
    };
    let good = inbox(&sshd.root, "good");
    std::fs::create_dir(good.join("processed")).unwrap();
    let bad = inbox(&sshd.root, "bad");
    std::fs::write(bad.join("errors"), "not a folder\n").unwrap();
    let ro = inbox(&ftp.root, "ro");
    std::fs::create_dir(ro.join("processed")).unwrap();
    // The servers' login user owns what it should be able to write, as a
    // partner's account would; `ro/processed` is frozen even for root.
    let (uid, gid) = ensure_test_user();
    for p in [
        &good,
        &good.join("processed"),
        &bad,
        &ro,
        &ro.join("processed"),
    ] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let _frozen = Immutable::set(&ro.join("processed"));

    let fp = sshd.host_key_fingerprint();
    let sftp = |id: &str, dir: &Path| sftp_key_partner(&sshd, id, &dir.display().to_string(), &fp);
    let mut cfg = sftp("good", &good) + &sftp("bad", &bad);
    cfg += &format!(
        "[[partner]]\nid = \"ftp-ro\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 1000\n\
         [partner.source]\nkind = \"ftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
         dir = \"{}/ro\"\npassword_env = \"MB_FTP_PW\"\ninsecure_plaintext = true\n\
         timeout = \"5s\"\nretries = 0\nmove_failed = \"keep\"\nerrors_dir = \"none\"\n\n",
        ftp.port, ftp.user, ftp.ftp_dir
    );
    w.config(&cfg);
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--connect"];
        args.extend(extra);
        let o = w
            .cmd(&args)
            .env(FAKE_NOW, "2026-11-24T03:00:00Z")
            .env("MB_FTP_PW", &ftp.password)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        stdout(&o)
    };

    // Without writing: the file in the way is found, nothing changes.
    let before = [snapshot(&sshd.root), snapshot(&ftp.root)];
    let out = check(&["--no-write-probe"]);
    let lines = problems(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("problem: bad: folder errors/ on sftp://")
            && lines[0].contains("it is a file, not a folder")
            && lines[0].contains("tidy-failed")
            && lines[0].contains("`errors_dir`"),
        "{out}"
    );
    assert_eq!(before, [snapshot(&sshd.root), snapshot(&ftp.root)]);

    // Writing: the read-only folder is found too; the good partner's
    // folders hold no probe file afterwards, the missing ones exist.
    let out = check(&[]);
    let lines = problems(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("problem: bad: folder errors/"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("problem: ftp-ro: folder processed/ on ftp://")
            && lines[1].contains("writing a probe file there failed")
            && lines[1].contains("`after`"),
        "{out}"
    );
    assert!(
        out.contains("    folder processed/ (after): ok, writable (probe file written and removed)")
            && out.contains("    folder errors/ (errors_dir): was missing, created (as the first run would); writable"),
        "{out}"
    );
    for d in ["processed", "failed", "errors"] {
        let names: Vec<_> = std::fs::read_dir(good.join(d))
            .unwrap_or_else(|e| panic!("{d}: {e}\n{out}"))
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{d}: {names:?}");
    }
    assert!(std::fs::read_dir(ro.join("processed"))
        .unwrap()
        .next()
        .is_none());
    assert!(ro.join("a.csv").exists() && good.join("a.csv").exists());
    assert!(std::fs::metadata(bad.join("errors")).unwrap().is_file());

    // --json says the same, with the probe file's name.
    let o = w
        .cmd(&["check", "--connect", "--json"])
        .env(FAKE_NOW, "2026-11-24T03:00:00Z")
        .env("MB_FTP_PW", &ftp.password)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["partners"][1]["connect"];
    assert!(
        c["probe_file"]
            .as_str()
            .unwrap()
            .starts_with(".milebatch-check-probe-"),
        "{c}"
    );
    let errors = c["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["dir"] == "errors")
        .unwrap();
    assert_eq!(errors["found"], "not-a-folder", "{c}");
    assert_eq!(errors["used_by"], serde_json::json!(["errors_dir"]), "{c}");
}

/// Host-key pins as people paste them: the whole line `ssh-keygen -lf`
/// prints for the server's key, and `TYPE SHA256:…` with ssh-keygen's type
/// word. `check --connect` logs in to real sshd with each; the same line
/// with another fingerprint is still refused by the server's key.
#[test]
fn check_connect_takes_host_key_pins_as_ssh_keygen_prints_them() {
    let sshd = Sshd::start(SshdOpts::default());
    std::fs::create_dir_all(sshd.root.join("in")).unwrap();
    let w = Workspace::new();
    let out = Command::new("/usr/bin/ssh-keygen")
        .arg("-lf")
        .arg(&sshd.host_key_pub)
        .output()
        .expect("ssh-keygen -lf");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // e.g. "256 SHA256:… milebatch-test-host (ED25519)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let kind_word = words.last().unwrap().trim_matches(|c| c == '(' || c == ')');
    let fp = sshd.host_key_fingerprint();
    assert_eq!(words[1], fp, "{line}");
    let wrong_line = line.replace(&fp, "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let inbox = format!("{}/in", sshd.root.display());
    let partner = |id: &str, pin: &str| sftp_key_partner(&sshd, id, &inbox, pin);
    w.config(&format!(
        "{}{}{}",
        partner("whole-line", &line),
        partner("type-word", &format!("{kind_word} {fp}")),
        partner("wrong-key", &wrong_line),
    ));
    // Host keys only: check_connect_probes_the_folders_a_run_writes_to
    // tests the folders.
    let o = w.run(&["check", "--connect", "--no-write-probe"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for id in ["whole-line", "type-word"] {
        let at = out
            .find(&format!("\n  {id} ("))
            .unwrap_or_else(|| panic!("{out}"));
        let section: String = out[at + 1..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect();
        assert!(section.contains("connect: ok"), "{id}: {out}");
    }
    let lines = problems(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("problem: wrong-key: connecting to")
            && lines[0].contains("host key verification failed"),
        "{out}"
    );
}
