//! GnuPG (Debian's `gnupg`) as partners use it: keys and encrypted files
//! made at test time in a temp GNUPGHOME, never fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::servers::require_tool;

const GPG: &str = "/usr/bin/gpg";

/// Which key GnuPG makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// GnuPG 2.2's default: RSA-3072 primary (sign, certify) and an RSA-3072
    /// encryption subkey.
    Rsa,
    /// Ed25519 primary and a Cv25519 encryption subkey (`future-default`).
    Curve25519,
}

/// One GNUPGHOME, its agent stopped on drop.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

/// How to make an encrypted file.
#[derive(Debug, Clone, Default)]
pub struct Enc<'a> {
    /// Recipient key (fingerprint).
    pub to: &'a str,
    /// Sign with this key (fingerprint, passphrase).
    pub sign: Option<(&'a str, Option<&'a str>)>,
    /// `--compress-algo none` when false (GnuPG compresses by default).
    pub compress: bool,
    /// ASCII armor (`.asc`).
    pub armor: bool,
}

impl Default for Gpg {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpg {
    pub fn new() -> Gpg {
        require_tool(GPG, "gnupg");
        let home = tempfile::Builder::new()
            .prefix("mb-gnupg")
            .tempdir()
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { home }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(GPG);
        c.arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
            .args(["--trust-model", "always", "--no-tty", "--quiet"])
            .stdin(Stdio::null());
        c
    }

    /// Run gpg with `args`; panics with its stderr unless it exits 0.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("run gpg");
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Make a key for `uid`; returns its fingerprint.
    pub fn gen_key(&self, uid: &str, algo: Algo, passphrase: Option<&str>) -> String {
        let algo = match algo {
            Algo::Rsa => "default",
            Algo::Curve25519 => "future-default",
        };
        self.run(&[
            "--passphrase",
            passphrase.unwrap_or(""),
            "--quick-gen-key",
            uid,
            algo,
            "default",
            "never",
        ]);
        let out = self.run(&["--with-colons", "--list-keys", uid]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .map(|f| f.trim_end_matches(':').to_owned())
            .expect("a fingerprint")
    }

    /// `gpg --export --armor`.
    pub fn public(&self, fpr: &str) -> Vec<u8> {
        self.run(&["--armor", "--export", fpr]).stdout
    }

    /// `gpg --export-secret-keys --armor`.
    pub fn secret(&self, fpr: &str, passphrase: Option<&str>) -> Vec<u8> {
        self.run(&[
            "--passphrase",
            passphrase.unwrap_or(""),
            "--armor",
            "--export-secret-keys",
            fpr,
        ])
        .stdout
    }

    /// Import a key exported from another home.
    pub fn import(&self, key: &[u8]) {
        let f = self.home.path().join("import.asc");
        std::fs::write(&f, key).unwrap();
        self.run(&["--import", f.to_str().unwrap()]);
    }

    /// Encrypt `data` as `e` says.
    pub fn encrypt(&self, data: &[u8], e: &Enc<'_>) -> Vec<u8> {
        let input = self.scratch("plain", data);
        let output = self.home.path().join("out.gpg");
        let mut args: Vec<&str> = vec!["--recipient", e.to];
        if !e.compress {
            args.extend(["--compress-algo", "none"]);
        }
        if e.armor {
            args.push("--armor");
        }
        if let Some((signer, pass)) = e.sign {
            args.extend(["--local-user", signer, "--passphrase", pass.unwrap_or("")]);
            args.push("--sign");
        }
        args.extend(["--output", output.to_str().unwrap(), "--encrypt"]);
        args.push(input.to_str().unwrap());
        self.run(&args);
        std::fs::read(output).unwrap()
    }

    /// Decrypt `data` with a secret key in this home.
    pub fn decrypt(&self, data: &[u8], passphrase: Option<&str>) -> Vec<u8> {
        let input = self.scratch("enc", data);
        self.run(&[
            "--passphrase",
            passphrase.unwrap_or(""),
            "--decrypt",
            input.to_str().unwrap(),
        ])
        .stdout
    }

    fn scratch(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Write `data` as a secret key file (0600, as milebatch requires).
pub fn write_private(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
