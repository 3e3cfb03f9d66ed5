//! SFTP download speed against the OpenSSH `sftp` client, same file, same
//! server, same run (issue: at least half the client's throughput).
//!
//! `cargo test --release --test sftp_throughput -- --ignored --nocapture`

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::servers::{ensure_test_user, Sshd, SshdOpts};
use milebatch::source::sftp::SftpSource;
use milebatch::source::{
    After, HostKeyCheck, HostKeyPin, Pickup, Ready, RemoteFile, SftpAuth, SftpConfig, Source,
};

const SIZE: u64 = 200 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a benchmark: see the module docs"]
fn sftp_fetch_is_at_least_half_the_openssh_client() {
    let sshd = Sshd::start(SshdOpts::default());
    let (u, g) = ensure_test_user();
    let src = sshd.root.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        for _ in 0..(SIZE >> 20) {
            f.write_all(&block).unwrap();
        }
    }
    std::os::unix::fs::chown(&src, Some(u), Some(g)).unwrap();
    let out = tempfile::tempdir().unwrap();

    let cli = |dest: &Path| {
        let t = Instant::now();
        let st = Command::new("sftp")
            .args(["-q", "-b", "-", "-P", &sshd.port.to_string(), "-i"])
            .arg(&sshd.client_key)
            .args([
                "-o",
                &format!("UserKnownHostsFile={}", sshd.known_hosts.display()),
            ])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("{}@127.0.0.1", sshd.user))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                writeln!(
                    c.stdin.take().unwrap(),
                    "get {} {}",
                    src.display(),
                    dest.display()
                )?;
                c.wait()
            })
            .expect("run sftp (openssh-client)");
        assert!(st.success());
        t.elapsed()
    };
    let ours = |dest: &Path| {
        let cfg = SftpConfig {
            host: "127.0.0.1".into(),
            port: sshd.port,
            user: sshd.user.clone(),
            dir: sshd.root.to_string_lossy().into_owned(),
            auth: SftpAuth::Key {
                key_file: sshd.client_key.clone(),
                passphrase: None,
            },
            host_key: HostKeyCheck::Pins(vec![
                HostKeyPin::parse(&sshd.host_key_fingerprint()).unwrap()
            ]),
            pickup: Pickup {
                pattern: glob::Pattern::new("*").unwrap(),
                pattern_case_sensitive: false,
                max_size: u64::MAX,
                trust_mtime: true,
                ready: Ready::Immediate,
                after: After::Keep,
                move_failed: None,
                errors_dir: None,
                ignore: vec![],
                timeout: Duration::from_secs(60),
                retries: 0,
            },
        };
        let t = Instant::now();
        let mut s = SftpSource::connect(&cfg).expect("connect");
        let file = RemoteFile {
            name: "big.bin".into(),
            size: SIZE,
            mtime: None,
        };
        s.fetch(&file, dest).expect("fetch");
        t.elapsed()
    };
    let (mut c, mut o) = (vec![], vec![]);
    for i in 0..3 {
        c.push(cli(&out.path().join(format!("cli{i}"))));
        o.push(ours(&out.path().join(format!("ours{i}"))));
    }
    for i in 0..3 {
        assert_eq!(
            std::fs::metadata(out.path().join(format!("ours{i}")))
                .unwrap()
                .len(),
            SIZE
        );
    }
    let (c, o) = (median(c), median(o));
    let mbps = |d: Duration| SIZE as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "sftp 200 MiB: openssh client {:.2}s ({:.0} MiB/s), milebatch {:.2}s ({:.0} MiB/s), ratio {:.2}",
        c.as_secs_f64(),
        mbps(c),
        o.as_secs_f64(),
        mbps(o),
        mbps(o) / mbps(c)
    );
    assert!(
        mbps(o) >= 0.5 * mbps(c),
        "below half the client's throughput"
    );
}
