//! `.ci/install-deps.sh` never removes an installed package. The real
//! script runs with `apt-get` and `dpkg-query` shimmed on PATH (so nothing
//! is installed or removed on this machine): one library reads as missing,
//! and apt's simulation answers as Debian's apt does when a wanted package
//! conflicts with an installed one (`Remv …` lines).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-deps.sh");

/// Run the script with shims in `dir`: `dpkg-query` says `libsodium23` is
/// not installed (everything else goes to the real one), and `apt-get`
/// logs its arguments to `dir/apt.log` and, for `-s`, prints `simulation`.
fn run_with_shims(dir: &Path, simulation: &str) -> (Output, String) {
    let shim = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    std::fs::write(dir.join("simulation"), simulation).unwrap();
    shim(
        "dpkg-query",
        "for a in \"$@\"; do [ \"$a\" = libsodium23 ] && { echo -n 'deinstall ok config-files'; exit 0; }; done\nexec /usr/bin/dpkg-query \"$@\"",
    );
    shim(
        "apt-get",
        &format!(
            "echo \"apt-get $*\" >> {log}\nfor a in \"$@\"; do [ \"$a\" = -s ] && exec cat {sim}; done\nexit 0",
            log = dir.join("apt.log").display(),
            sim = dir.join("simulation").display()
        ),
    );
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg(SCRIPT)
        .env("PATH", path)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(dir.join("apt.log")).unwrap_or_default();
    (out, log)
}

#[test]
fn a_conflict_stops_the_install_naming_what_would_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, apt) = run_with_shims(
        dir.path(),
        "Reading package lists...\nThe following packages will be REMOVED:\n  proftpd-core\n\
         Remv proftpd-core [1.3.8+dfsg-4+deb12u4]\nInst libsodium23 (1.0.18-1 Debian:12.12/stable [amd64])\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{apt}");
    assert!(
        stdout.contains("would REMOVE installed package(s): proftpd-core")
            && stdout.contains("libsodium23"),
        "{stdout}"
    );
    // Simulated only: no real install was asked for.
    let installs: Vec<&str> = apt
        .lines()
        .filter(|l| l.contains(" install ") && !l.contains(" -s "))
        .collect();
    assert!(installs.is_empty(), "{apt}");
    assert!(apt.contains("install -s"), "the simulation ran: {apt}");
}

#[test]
fn an_install_that_removes_nothing_runs_with_no_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (out, apt) = run_with_shims(
        dir.path(),
        "Reading package lists...\nInst libsodium23 (1.0.18-1 Debian:12.12/stable [amd64])\n\
         Conf libsodium23 (1.0.18-1 Debian:12.12/stable [amd64])\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let install = apt
        .lines()
        .find(|l| l.contains(" install ") && !l.contains(" -s "))
        .unwrap_or_else(|| panic!("no install: {apt}\n{stdout}"));
    assert!(
        install.contains("--no-remove") && install.ends_with("libsodium23"),
        "{install}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
