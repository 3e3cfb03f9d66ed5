//! Checks the shipped systemd unit: hardening score and the essentials.
//!
//! Needs `systemd-analyze` (Debian/Ubuntu: `apt-get install -y systemd`);
//! without it this test fails rather than skipping, so CI cannot silently
//! stop checking the sandbox.

use std::path::PathBuf;
use std::process::Command;

/// Highest acceptable `systemd-analyze security` exposure (0.0 best, 10.0 worst).
const MAX_EXPOSURE: f64 = 2.0;

fn unit_path() -> PathBuf {
    named_unit("milebatch.service")
}

fn named_unit(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

fn unit_text() -> String {
    read_unit(&unit_path())
}

fn read_unit(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `Key=value` lines of the unit (comments and section headers dropped).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_exposure_is_at_most_2_0() {
    assert_exposure_at_most_2_0(&unit_path());
}

#[test]
fn web_unit_exposure_is_at_most_2_0() {
    assert_exposure_at_most_2_0(&named_unit("milebatch-web.service"));
}

/// The web process runs `milebatch serve` as the daemon's dynamic user (one
/// UID for the one database) and holds no partner transfer credentials.
#[test]
fn web_unit_runs_serve_without_partner_credentials() {
    let d = directives(&read_unit(&named_unit("milebatch-web.service")));
    let exec = values(&d, "ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert!(
        argv.first().is_some_and(|b| b.ends_with("/milebatch")) && argv.get(1) == Some(&"serve"),
        "{exec:?}"
    );
    assert!(exec[0].contains("--config /etc/milebatch/partners.toml"));
    assert_eq!(values(&d, "DynamicUser"), ["yes"]);
    assert_eq!(values(&d, "User"), ["milebatch"]);
    assert_eq!(values(&d, "StateDirectory"), ["milebatch"]);
    assert!(
        values(&d, "LoadCredential")
            .iter()
            .all(|c| c.starts_with("tls-")),
        "only TLS credentials in the web unit: {:?}",
        values(&d, "LoadCredential")
    );
    assert_eq!(values(&d, "CapabilityBoundingSet"), [""]);
}

fn assert_exposure_at_most_2_0(unit: &std::path::Path) {
    let output = match Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(unit)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze not found: install it (Debian/Ubuntu: `apt-get install -y systemd`) \
             to check the unit's hardening"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze security failed ({}; exposure above {MAX_EXPOSURE:.1}?)\n{stdout}\n{stderr}",
        output.status
    );
    // "→ Overall exposure level for milebatch.service: 1.1 OK 🙂"
    let line = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line in:\n{stdout}\n{stderr}"));
    let value: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse exposure from {line:?}"));
    assert!(
        value <= MAX_EXPOSURE,
        "exposure {value} > {MAX_EXPOSURE:.1}: {line}"
    );
}

#[test]
fn unit_is_type_notify_and_runs_milebatch_run() {
    let text = unit_text();
    let d = directives(&text);
    assert_eq!(values(&d, "Type"), ["notify"], "unit must be Type=notify");
    let exec = values(&d, "ExecStart");
    assert_eq!(exec.len(), 1, "exactly one ExecStart= expected: {exec:?}");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert!(
        argv.first().is_some_and(|b| b.ends_with("/milebatch")) && argv.get(1) == Some(&"run"),
        "ExecStart must run `milebatch run ...`: {:?}",
        exec[0]
    );
    assert!(
        exec[0].contains("--config /etc/milebatch/partners.toml"),
        "ExecStart must pass the config path: {:?}",
        exec[0]
    );
    assert_eq!(values(&d, "StateDirectory"), ["milebatch"]);
    assert_eq!(values(&d, "Restart"), ["on-failure"]);
    assert!(
        !values(&d, "WatchdogSec").is_empty(),
        "WatchdogSec= missing"
    );
    // The daemon must reach partner servers: no blanket IP deny without an allow list.
    if values(&d, "IPAddressDeny").contains(&"any") {
        assert!(
            !values(&d, "IPAddressAllow").is_empty(),
            "IPAddressDeny=any without IPAddressAllow= cuts off partner servers"
        );
    }
    assert!(
        !values(&d, "RestrictAddressFamilies").is_empty()
            && values(&d, "RestrictAddressFamilies")
                .iter()
                .any(|v| v.contains("AF_INET") && v.contains("AF_UNIX")),
        "daemon needs AF_INET/AF_INET6 (partners) and AF_UNIX (sd_notify)"
    );
}
