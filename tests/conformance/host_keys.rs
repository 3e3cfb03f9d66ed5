//! Host-key checks against an SFTP server that has one host key of each
//! type (RSA, ECDSA, Ed25519), whichever server it is.

use std::path::Path;

use milebatch::source::{HostKeyCheck, HostKeyPin, Source, SourceError};

/// One host key the server has.
pub struct Key {
    /// `ssh-rsa`, `ecdsa-sha2-nistp256`, `ssh-ed25519`
    pub kind: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it
    pub fingerprint: String,
    /// `keytype base64`, as in known_hosts
    pub line: String,
}

fn pins(texts: &[String]) -> HostKeyCheck {
    HostKeyCheck::Pins(
        texts
            .iter()
            .map(|t| HostKeyPin::parse(t).expect("pin"))
            .collect(),
    )
}

fn refused(r: Result<Box<dyn Source>, SourceError>) -> String {
    match r {
        Err(SourceError::HostKey(m)) => m,
        Err(other) => panic!("expected a host key refusal, got {other:?}"),
        Ok(_) => panic!("connected although no pin matches"),
    }
}

/// A pin of any one type connects (typed or not), a rotated list connects
/// on its one current entry, a known_hosts file with one line of any type
/// connects, a typed pin binds its type, and a refusal names every key the
/// server has.
pub fn run(
    port: u16,
    keys: &[Key],
    tmp: &Path,
    connect: &dyn Fn(HostKeyCheck) -> Result<Box<dyn Source>, SourceError>,
) {
    assert!(keys.len() >= 3, "a server with one key of each type");
    let bogus = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string();
    for k in keys {
        let typed = format!("{} {}", k.kind, k.fingerprint);
        let mut s = connect(pins(std::slice::from_ref(&typed)))
            .unwrap_or_else(|e| panic!("pin {typed}: {e}"));
        s.list().expect("list after a typed pin");
        connect(pins(std::slice::from_ref(&k.fingerprint)))
            .unwrap_or_else(|e| panic!("untyped pin {}: {e}", k.fingerprint));

        // known_hosts holding only this key's line
        let kh = tmp.join(format!("known_hosts-{}", k.kind));
        std::fs::write(&kh, format!("[127.0.0.1]:{port} {}\n", k.line)).unwrap();
        connect(HostKeyCheck::KnownHosts(kh))
            .unwrap_or_else(|e| panic!("known_hosts with only the {} line: {e}", k.kind));
    }

    // Rotation: the old key is gone, the new one is listed too.
    let rotated = vec![
        format!("ssh-ed25519 {bogus}"),
        bogus.clone(),
        format!("{} {}", keys[0].kind, keys[0].fingerprint),
    ];
    connect(pins(&rotated)).expect("a rotated pin list with the current key");

    // A typed pin binds the type: an RSA pin with another key's fingerprint.
    let other = keys.iter().find(|k| k.kind != "ssh-rsa").unwrap();
    let m = refused(connect(pins(&[format!("ssh-rsa {}", other.fingerprint)])));
    assert!(m.contains("but host_key is ssh-rsa"), "{m}");

    // Refused: every type and fingerprint the server has is in the message.
    let m = refused(connect(pins(&[bogus.clone(), format!("ssh-rsa {bogus}")])));
    for k in keys {
        assert!(
            m.contains(&format!("{} {}", k.kind, k.fingerprint)),
            "the refusal should list {} {}: {m}",
            k.kind,
            k.fingerprint
        );
    }
    assert!(m.contains(&bogus), "and say what was pinned: {m}");

    // known_hosts with another key for this host: a mismatch, listing all.
    let kh = tmp.join("known_hosts-wrong");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILn60+Fe7Dc4wXdYDz/kPLbJsb1oF1+Nq6uhegrpa4L2\n"
        ),
    )
    .unwrap();
    let m = refused(connect(HostKeyCheck::KnownHosts(kh)));
    assert!(m.contains("does not match"), "{m}");
    for k in keys {
        assert!(m.contains(&k.fingerprint), "{m}");
    }
}
