//! Where a secret lives, and reading it without ever showing it.
//!
//! What must stay true: a [`Secret`]'s value is never formatted (`Debug`
//! prints `***`), and error messages name the place, never the content.
//! Secret files readable by group or others are refused, as OpenSSH refuses
//! such private keys.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place to read one secret from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable's value.
    Env(String),
    /// A file's content (one trailing newline dropped).
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/<name>`, as systemd's `LoadCredential=` provides.
    Credential(String),
}

/// A secret value. Deliberately neither `Display` nor a revealing `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "environment variable {v}"),
            SecretRef::File(p) => write!(f, "file {}", p.display()),
            SecretRef::Credential(n) => write!(f, "credential {n:?}"),
        }
    }
}

impl SecretRef {
    /// Build from the `<what>_env` / `<what>_file` / credential keys; at most
    /// one may be set.
    pub fn from_keys(
        env: &Option<String>,
        file: &Option<String>,
        credential: &Option<String>,
        what: &str,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Option<SecretRef>, String> {
        let given = [env.is_some(), file.is_some(), credential.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            return Err(format!(
                "give the {what} in one way only: `*_env`, `*_file` or `*credential`"
            ));
        }
        if let Some(c) = credential {
            if !crate::source::safe_name(c) {
                return Err(format!("credential name {c:?} is not a plain file name"));
            }
        }
        Ok(match (env, file, credential) {
            (Some(v), _, _) => Some(SecretRef::Env(v.clone())),
            (_, Some(f), _) => Some(SecretRef::File(resolve(f))),
            (_, _, Some(c)) => Some(SecretRef::Credential(c.clone())),
            _ => None,
        })
    }

    /// Read the secret now.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretRef::Env(v) => match std::env::var(v) {
                Ok(s) if !s.is_empty() => Ok(Secret(s)),
                _ => Err(format!("{self} is not set")),
            },
            SecretRef::File(p) => read_secret_file(p).map_err(|e| format!("{self}: {e}")),
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!("{self}: $CREDENTIALS_DIRECTORY is not set (systemd LoadCredential=)")
                })?;
                read_secret_file(&Path::new(&dir).join(name)).map_err(|e| format!("{self}: {e}"))
            }
        }
    }
}

/// Read a secret (or private key) file, refusing one that others can read.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    check_private(path)?;
    let mut s = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err("is empty".into());
    }
    Ok(Secret(s))
}

/// Refuse a secret or key file readable by group or others.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:04o}): chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_be_private_and_never_print() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretRef::File(p.clone()).read().unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("hunter2"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = SecretRef::File(p).read().unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn only_one_way_to_give_a_secret() {
        let r = |p: &str| PathBuf::from(p);
        assert!(
            SecretRef::from_keys(&Some("A".into()), &Some("f".into()), &None, "password", &r)
                .is_err()
        );
        assert_eq!(
            SecretRef::from_keys(&None, &None, &Some("partner-x".into()), "password", &r).unwrap(),
            Some(SecretRef::Credential("partner-x".into()))
        );
        assert!(SecretRef::from_keys(&None, &None, &Some("../x".into()), "password", &r).is_err());
    }
}
