//! OpenPGP-encrypted deliveries (`[partner.pgp]`): decrypt a received file
//! into the archive before anything else reads it, check its signature, and
//! encrypt the reports written back to the partner.
//!
//! What must stay true:
//! - the archive keeps the bytes as received (`<sha16>-<name>`, hashed over
//!   the encrypted bytes) **and** the decrypted bytes
//!   (`<sha16>-<name>.decrypted`, hashed over the plaintext). The returned
//!   [`Fetched`] names the decrypted copy and its SHA-256, so every later
//!   stage, duplicate detection (F001) and `retry`'s integrity check see
//!   the plaintext, exactly as for a plain delivery;
//! - decryption streams: the plaintext goes to a temp file in the archive
//!   folder, hashed on the way, and becomes the archived copy only once the
//!   whole message decrypted, its integrity check (MDC) passed and, with
//!   `verify_key`, its signature verified. Plaintext of a refused file is
//!   deleted, never read by the credit stage;
//! - the partner's fault (not encrypted to our key, tampered, cut short,
//!   unsigned or badly signed) is a refusal (F008) with a reason that says
//!   what to fix; ours (a key that cannot be read, a wrong passphrase) is an
//!   error that fails the run, so the file is judged again once fixed.
//!
//! Why rPGP (`pgp`): pure Rust, so no C toolchain or nettle/clang at build
//! time and a moderate compile on two cores (Sequoia's build runs LALRPOP
//! and needs nettle or OpenSSL bindings); maintained; reads what GnuPG
//! writes (RSA and Curve25519 keys, ZIP/ZLIB/BZip2 compression, SEIPD v1
//! with MDC); and its `Message` is a streaming `Read`.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use pgp::composed::{
    DecryptionOptions, Deserializable, Esk, Message, MessageBuilder, SignedPublicKey,
    SignedSecretKey, TheRing, VerificationResult,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails, Password, Seipdv1ReadMode, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::source::SecretRef;

use super::{pickup, Fetched, PipelineError};

/// File name endings that mark an encrypted delivery (any case).
pub const SUFFIXES: [&str; 3] = [".pgp", ".gpg", ".asc"];

/// `[partner.pgp]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PgpConfig {
    /// Our secret key (armored), read through the secret keys.
    pub decrypt_key: SecretRef,
    /// Its passphrase; `None`: the key is not protected.
    pub passphrase: Option<SecretRef>,
    /// The partner's public key: when set, every file must be signed by it.
    pub verify_key: Option<PathBuf>,
    /// Every file is encrypted, whatever its name.
    pub required: bool,
    /// Encrypt the error CSV and the summary before they are written back.
    pub encrypt_reports: bool,
    /// The key reports are encrypted to: `report_key`, else `verify_key`.
    pub report_key: Option<PathBuf>,
}

/// `[partner.pgp]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPgp {
    decrypt_key_env: Option<String>,
    decrypt_key_file: Option<String>,
    decrypt_key_credential: Option<String>,
    passphrase_env: Option<String>,
    passphrase_file: Option<String>,
    passphrase_credential: Option<String>,
    verify_key: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    encrypt_reports: bool,
    report_key: Option<String>,
}

impl PgpConfig {
    pub fn from_raw(r: &RawPgp, resolve: &dyn Fn(&str) -> PathBuf) -> Result<PgpConfig, String> {
        let decrypt_key = SecretRef::from_keys(
            &r.decrypt_key_env,
            &r.decrypt_key_file,
            &r.decrypt_key_credential,
            "decrypt_key",
            resolve,
        )?
        .ok_or(
            "needs our secret key: one of `decrypt_key_file`, `decrypt_key_env`, \
             `decrypt_key_credential` (an armored key, `gpg --export-secret-keys --armor`)",
        )?;
        let passphrase = SecretRef::from_keys(
            &r.passphrase_env,
            &r.passphrase_file,
            &r.passphrase_credential,
            "passphrase",
            resolve,
        )?;
        let verify_key = r.verify_key.as_deref().map(resolve);
        let report_key = r
            .report_key
            .as_deref()
            .map(resolve)
            .or_else(|| verify_key.clone());
        if r.report_key.is_some() && !r.encrypt_reports {
            return Err("`report_key` is only used with encrypt_reports = true".into());
        }
        if r.encrypt_reports && report_key.is_none() {
            return Err(
                "encrypt_reports = true needs the partner's public key to encrypt to: \
                        set `report_key` (or `verify_key`, which is then used)"
                    .into(),
            );
        }
        Ok(PgpConfig {
            decrypt_key,
            passphrase,
            verify_key,
            required: r.required,
            encrypt_reports: r.encrypt_reports,
            report_key,
        })
    }

    /// Whether a file of this name is decrypted: `required`, or its name
    /// ends in `.pgp`, `.gpg` or `.asc`.
    pub fn applies(&self, name: &str) -> bool {
        self.required || has_suffix(name)
    }
}

/// Whether `name` ends in one of [`SUFFIXES`], in any case.
pub fn has_suffix(name: &str) -> bool {
    strip_suffix(name).is_some()
}

/// `name` without its [`SUFFIXES`] ending (`orders.csv.pgp` →
/// `orders.csv`), if it has one and something is left.
pub fn strip_suffix(name: &str) -> Option<&str> {
    let lower = name.to_ascii_lowercase();
    SUFFIXES
        .iter()
        .find(|s| lower.ends_with(*s) && name.len() > s.len())
        .map(|s| &name[..name.len() - s.len()])
}

/// Our side's problems: they fail the run, never refuse a file.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    #[error("[partner.pgp] {what}: {why}")]
    Key { what: String, why: String },
    #[error("encrypting {name} for the partner: {why}")]
    Encrypt { name: String, why: String },
}

fn key_error(what: impl std::fmt::Display, why: impl std::fmt::Display) -> PgpError {
    PgpError::Key {
        what: what.to_string(),
        why: why.to_string(),
    }
}

/// The keys of one partner, read once per run.
pub struct Keys {
    secret: SignedSecretKey,
    password: Password,
    verify: Option<SignedPublicKey>,
    /// Our key's fingerprint, for messages.
    ours: String,
}

impl Keys {
    /// Read and check the keys: the secret key must parse and the
    /// passphrase must unlock it, the partner's public key must parse.
    pub fn load(cfg: &PgpConfig) -> Result<Keys, PgpError> {
        let text = cfg
            .decrypt_key
            .read()
            .map_err(|e| key_error("decrypt_key", e))?;
        let (secret, _) = SignedSecretKey::from_reader_single(text.expose().as_bytes())
            .map_err(|e| {
                key_error(
                    format!("decrypt_key ({})", cfg.decrypt_key),
                    format!("not an OpenPGP secret key ({e}); export it with `gpg --export-secret-keys --armor KEYID`"),
                )
            })?;
        let password = match &cfg.passphrase {
            Some(p) => Password::from(p.read().map_err(|e| key_error("passphrase", e))?.expose()),
            None => Password::empty(),
        };
        // A wrong passphrase is ours to fix: found here, it never turns
        // into a refusal of the partner's file.
        let unlock = |r: pgp::errors::Result<pgp::errors::Result<()>>| {
            r.and_then(|inner| inner).map_err(|e| {
                key_error(
                    format!("decrypt_key ({})", cfg.decrypt_key),
                    format!(
                        "cannot be unlocked ({e}): set the passphrase_* key to its passphrase, \
                         or leave it out for a key without one"
                    ),
                )
            })
        };
        unlock(secret.primary_key.unlock(&password, |_, _| Ok(())))?;
        for sub in &secret.secret_subkeys {
            unlock(sub.key.unlock(&password, |_, _| Ok(())))?;
        }
        let verify = cfg
            .verify_key
            .as_deref()
            .map(|p| public_key(p, "verify_key"))
            .transpose()?;
        let ours = format!("{:X}", secret.primary_key.fingerprint());
        Ok(Keys {
            secret,
            password,
            verify,
            ours,
        })
    }
}

/// A partner's public key from a file (armored or binary).
fn public_key(path: &Path, what: &str) -> Result<SignedPublicKey, PgpError> {
    let place = format!("{what} ({})", path.display());
    let file = File::open(path).map_err(|e| key_error(&place, format!("cannot read: {e}")))?;
    let (key, _) = SignedPublicKey::from_reader_single(BufReader::new(file)).map_err(|e| {
        key_error(
            &place,
            format!(
                "not an OpenPGP public key ({e}); ask the partner for `gpg --export --armor KEYID`"
            ),
        )
    })?;
    key.verify_bindings()
        .map_err(|e| key_error(&place, format!("its self-signatures do not verify ({e})")))?;
    Ok(key)
}

/// What became of an encrypted delivery.
#[derive(Debug)]
pub enum Opened {
    /// Decrypted (and verified): the archived plaintext.
    Decrypted(Fetched),
    /// Refused whole (F008): the bytes as received, and why.
    Refused { received: Fetched, reason: String },
}

/// Decrypt `received` (already archived as received) into the archive.
/// `max_size` bounds the plaintext too: a compressed message can expand
/// far beyond its own size.
pub fn open(
    keys: &Keys,
    received: &Fetched,
    archive_dir: &Path,
    max_size: u64,
) -> Result<Opened, PipelineError> {
    let tmp = archive_dir.join(format!(".{}.decrypting.part", received.name));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PipelineError::Io { path, source }
    };
    let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
    let result = decrypt_to(keys, &received.archive, &mut out, max_size);
    let result = result.and_then(|r| {
        out.flush()?;
        Ok(r)
    });
    drop(out);
    let done = match result {
        Ok(Ok(d)) => d,
        Ok(Err(reason)) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(file = %received.name, %reason, "encrypted file refused (F008)");
            return Ok(Opened::Refused {
                received: received.clone(),
                reason,
            });
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(PipelineError::Io {
                path: received.archive.clone(),
                source: e,
            });
        }
    };
    let mut plain = pickup::archive(
        &tmp,
        archive_dir,
        &format!("{}.decrypted", received.name),
        received.size,
        received.mtime,
        done.sha256,
    )?;
    // The delivery keeps its name, size and mtime (how the listing knows it
    // again); only the content (archive, hash) is the plaintext.
    plain.name = received.name.clone();
    tracing::info!(
        file = %received.name,
        received = %received.archive.display(),
        decrypted = %plain.archive.display(),
        plain_bytes = done.size,
        signed_by = done.signer.as_deref().unwrap_or("-"),
        "decrypted"
    );
    Ok(Opened::Decrypted(plain))
}

/// The one entry for every channel that archived a delivery: the file to
/// credit, and `Some(reason)` when it is refused whole (F008). A partner
/// without `[partner.pgp]`, or a name it does not cover, passes as is.
/// `keys` are read on the first encrypted file of a run and kept.
pub fn open_delivery(
    partner: &str,
    cfg: Option<&PgpConfig>,
    keys: &mut Option<Keys>,
    received: Fetched,
    archive_dir: &Path,
    max_size: u64,
) -> Result<(Fetched, Option<String>), PipelineError> {
    let Some(cfg) = cfg.filter(|c| c.applies(&received.name)) else {
        return Ok((received, None));
    };
    let keys = match keys {
        Some(k) => k,
        None => keys.insert(Keys::load(cfg).map_err(|source| PipelineError::Pgp {
            partner: partner.to_owned(),
            source,
        })?),
    };
    Ok(match open(keys, &received, archive_dir, max_size)? {
        Opened::Decrypted(plain) => (plain, None),
        Opened::Refused { received, reason } => (received, Some(reason)),
    })
}

struct Done {
    sha256: String,
    size: u64,
    signer: Option<String>,
}

/// Stream the plaintext of `raw` into `out`. `Ok(Err(reason))` is the
/// partner's fault (F008); `Err` is ours (reading the archive, writing).
fn decrypt_to(
    keys: &Keys,
    raw: &Path,
    out: &mut dyn Write,
    max_size: u64,
) -> std::io::Result<Result<Done, String>> {
    let input = BufReader::new(File::open(raw)?);
    let msg = match Message::from_reader(input) {
        Ok((m, _)) => m,
        Err(e) => {
            return Ok(Err(format!(
                "not an OpenPGP message ({e}): a file named *.pgp, *.gpg or *.asc (or every \
                 file, with required = true) must be encrypted to our key"
            )))
        }
    };
    let recipients: Vec<String> = match &msg {
        Message::Encrypted { esk, .. } => esk
            .iter()
            .filter_map(|e| match e {
                Esk::PublicKeyEncryptedSessionKey(p) => {
                    p.id().ok().map(|id| id.to_string().to_uppercase())
                }
                Esk::SymKeyEncryptedSessionKey(_) => Some("a passphrase".into()),
            })
            .collect(),
        _ => {
            return Ok(Err(
                "an OpenPGP message, but not encrypted: it must be encrypted to our key".into(),
            ))
        }
    };
    let ring = TheRing {
        secret_keys: vec![&keys.secret],
        key_passwords: vec![&keys.password],
        // Streaming: SEIPD v1's integrity check comes at the end, so the
        // plaintext goes to a temp file that is used only once it passed.
        decrypt_options: DecryptionOptions::new().set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
        ..Default::default()
    };
    let mut msg = match msg.decrypt_the_ring(ring, true) {
        Ok((m, _)) => m,
        Err(e) => {
            return Ok(Err(format!(
                "cannot be decrypted with our key {} ({e}): it is encrypted to {}; the partner \
                 must encrypt to our public key",
                keys.ours,
                if recipients.is_empty() {
                    "no recipient".to_owned()
                } else {
                    recipients.join(", ")
                }
            )))
        }
    };
    let broken = |e: &dyn std::fmt::Display| {
        format!(
            "decryption failed ({e}): the file was changed or cut short after it was \
             encrypted; the partner must send it again"
        )
    };
    while msg.is_compressed() {
        msg = match msg.decompress() {
            Ok(m) => m,
            Err(e) => return Ok(Err(broken(&e))),
        };
    }
    if msg.is_signed() {
        // A signed message's inner layer may itself be compressed.
        msg = match msg.decompress() {
            Ok(m) => m,
            Err(e) => return Ok(Err(broken(&e))),
        };
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match msg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Ok(Err(broken(&e))),
        };
        size += n as u64;
        if size > max_size {
            return Ok(Err(format!(
                "its decrypted content is over max_size ({max_size} bytes): ask the partner to \
                 split the file, or raise `max_size`"
            )));
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let signer = match &keys.verify {
        None => None,
        Some(v) => {
            let fpr = format!("{:X}", v.primary_key.fingerprint());
            if !msg.is_signed() {
                return Ok(Err(format!(
                    "not signed: verify_key is set, so every file must be signed by the \
                     partner's key {fpr} (gpg --sign --encrypt)"
                )));
            }
            let mut candidates: Vec<&dyn VerifyingKey> = vec![v];
            candidates.extend(v.public_subkeys.iter().map(|s| s as &dyn VerifyingKey));
            let good = msg
                .verify_nested(&candidates)
                .is_ok_and(|r| r.iter().any(|x| matches!(x, VerificationResult::Valid(_))));
            if !good {
                return Ok(Err(format!(
                    "bad signature: it is not a valid signature by the partner's key {fpr} \
                     (signed by another key, or changed after signing)"
                )));
            }
            Some(fpr)
        }
    };
    Ok(Ok(Done {
        sha256: format!("{:x}", hash.finalize()),
        size,
        signer,
    }))
}

/// Encrypts reports to the partner's public key.
pub struct Sealer {
    key: SignedPublicKey,
}

impl Sealer {
    pub fn load(cfg: &PgpConfig) -> Result<Option<Sealer>, PgpError> {
        let Some(path) = cfg.report_key.as_deref().filter(|_| cfg.encrypt_reports) else {
            return Ok(None);
        };
        let key = public_key(path, "report_key")?;
        if encryption_keys(&key).is_empty() {
            return Err(key_error(
                format!("report_key ({})", path.display()),
                "has no key that can encrypt: ask the partner for its encryption (sub)key",
            ));
        }
        Ok(Some(Sealer { key }))
    }

    /// `data` as a binary OpenPGP message (SEIPD v1, AES-256, the way
    /// GnuPG 2.2 reads everything) to every encryption key of the
    /// partner's key. `name` is the literal data's file name.
    pub fn seal(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, PgpError> {
        let err = |e: pgp::errors::Error| PgpError::Encrypt {
            name: name.to_owned(),
            why: e.to_string(),
        };
        let mut rng = rand::thread_rng();
        let mut builder = MessageBuilder::from_bytes(name.to_owned(), data.to_vec())
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        for k in encryption_keys(&self.key) {
            match k {
                EncKey::Primary(p) => builder.encrypt_to_key(&mut rng, p).map_err(err)?,
                EncKey::Sub(s) => builder.encrypt_to_key(&mut rng, s).map_err(err)?,
            };
        }
        builder.to_vec(&mut rng).map_err(err)
    }
}

enum EncKey<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Sub(&'a pgp::composed::SignedPublicSubKey),
}

/// The keys of `key` that can encrypt: its encryption subkeys, else the
/// primary key if it can.
fn encryption_keys(key: &SignedPublicKey) -> Vec<EncKey<'_>> {
    let subs: Vec<EncKey<'_>> = key
        .public_subkeys
        .iter()
        .filter(|s| s.key.algorithm().can_encrypt())
        .map(EncKey::Sub)
        .collect();
    if subs.is_empty() && key.primary_key.algorithm().can_encrypt() {
        vec![EncKey::Primary(&key.primary_key)]
    } else {
        subs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> Result<PgpConfig, String> {
        let r: RawPgp = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        PgpConfig::from_raw(&r, &|p| PathBuf::from("/etc/mb").join(p))
    }

    #[test]
    fn suffixes_and_required() {
        let c = raw("decrypt_key_file = \"k.asc\"").unwrap();
        for n in ["a.csv.pgp", "A.CSV.GPG", "a.asc", "x.Pgp"] {
            assert!(c.applies(n), "{n}");
        }
        for n in ["a.csv", "a.pgp.csv", "pgp"] {
            assert!(!c.applies(n), "{n}");
        }
        let c = raw("decrypt_key_file = \"k.asc\"\nrequired = true").unwrap();
        assert!(c.applies("a.csv"));
        // Reports are named after the plain name.
        assert_eq!(strip_suffix("a.csv.PGP"), Some("a.csv"));
        assert_eq!(strip_suffix(".pgp"), None);
        assert_eq!(
            super::super::report::upload_name("ORD.csv.gpg"),
            "ORD.errors.csv"
        );
        assert_eq!(
            super::super::report::upload_name("ORD.csv"),
            "ORD.errors.csv"
        );
    }

    #[test]
    fn keys_and_their_defaults() {
        let c = raw("decrypt_key_env = \"K\"\npassphrase_file = \"p\"\nverify_key = \"v.asc\"\nencrypt_reports = true").unwrap();
        assert_eq!(c.decrypt_key, SecretRef::Env("K".into()));
        assert_eq!(c.passphrase, Some(SecretRef::File("/etc/mb/p".into())));
        assert_eq!(c.report_key, Some(PathBuf::from("/etc/mb/v.asc")));
        assert!(!c.required);
        let c = raw("decrypt_key_env = \"K\"\nverify_key = \"v.asc\"\nreport_key = \"r.asc\"\nencrypt_reports = true").unwrap();
        assert_eq!(c.report_key, Some(PathBuf::from("/etc/mb/r.asc")));

        let e = raw("passphrase_env = \"P\"").unwrap_err();
        assert!(e.contains("decrypt_key_file"), "{e}");
        let e = raw("decrypt_key_env = \"K\"\ndecrypt_key_file = \"k\"").unwrap_err();
        assert!(e.contains("one way only"), "{e}");
        let e = raw("decrypt_key_env = \"K\"\nencrypt_reports = true").unwrap_err();
        assert!(e.contains("report_key") && e.contains("verify_key"), "{e}");
        let e = raw("decrypt_key_env = \"K\"\nreport_key = \"r\"").unwrap_err();
        assert!(e.contains("encrypt_reports"), "{e}");
        let e = raw("decrypt_key_env = \"K\"\nverify = \"r\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
