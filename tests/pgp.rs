//! OpenPGP-encrypted deliveries (`[partner.pgp]`) on the real binary, with
//! keys and files made by GnuPG at test time: RSA and Curve25519 keys,
//! compressed and not, armored and not, signed and not. A good file
//! credits exactly as its plain twin; a file that cannot be decrypted, or
//! whose signature is missing or bad, is refused whole (F008) with its
//! one-line report; the same content plain then encrypted is F001; a file
//! refused F008 for our wrong key is credited by `retry` once the key is
//! fixed; reports written back over SFTP are encrypted to the partner.

mod common;

use std::path::Path;

use common::gpg::{write_private, Algo, Enc, Gpg};
use common::servers::{put_owned, Sshd, SshdOpts};
use common::workspace::{local_partner, Workspace};

/// Rows over members M000000…M000009, with one unknown member (E003).
fn csv(tag: &str, rows: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..rows {
        s.push_str(&format!("M{:06},{tag}-{i},{}\r\n", i % 10, 10 + i));
    }
    s.push_str(&format!("NOBODY,{tag}-x,5\r\n"));
    s.into_bytes()
}

/// `(line, member, partner_key, miles)` of one file, in line order.
fn ledger_of(w: &Workspace, file_id: i64) -> Vec<(i64, i64, String, i64)> {
    let db = w.db();
    let mut st = db
        .prepare(
            "SELECT line, member, partner_key, miles FROM ledger WHERE file_id = ?1 ORDER BY line",
        )
        .unwrap();
    st.query_map([file_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn file_named<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no file {name} in {run:#}"))
}

/// A `[partner.pgp]` section; `extra` lines go into it.
fn pgp_section(key_file: &str, extra: &str) -> String {
    format!("[partner.pgp]\ndecrypt_key_file = \"{key_file}\"\n{extra}\n")
}

/// A local partner with a `[partner.pgp]` section.
fn pgp_partner(id: &str, pgp: &str) -> String {
    // `local_partner` ends with its [partner.source] table: pgp after it.
    format!("{}{pgp}\n", local_partner(id, &format!("inbox/{id}"), ""))
}

#[test]
fn encrypted_files_credit_exactly_as_their_plain_twins() {
    let ours = Gpg::new();
    let rsa = ours.gen_key(
        "Milebatch RSA <rsa@ops.example>",
        Algo::Rsa,
        Some("s3cret pass"),
    );
    let cv = ours.gen_key("Milebatch 25519 <cv@ops.example>", Algo::Curve25519, None);
    let partner = Gpg::new();
    let signer = partner.gen_key("Partner <it@acme.example>", Algo::Curve25519, Some("p"));
    partner.import(&ours.public(&rsa));
    partner.import(&ours.public(&cv));

    let w = Workspace::new();
    write_private(
        &w.path("keys/rsa.asc"),
        &ours.secret(&rsa, Some("s3cret pass")),
    );
    write_private(&w.path("keys/rsa.pass"), b"s3cret pass\n");
    write_private(&w.path("keys/cv.asc"), &ours.secret(&cv, None));
    w.write("keys/acme.pub.asc", partner.public(&signer));
    for id in ["plain", "rsa", "cv"] {
        std::fs::create_dir_all(w.inbox(id)).unwrap();
    }
    w.config(&format!(
        "{}{}{}",
        local_partner("plain", "inbox/plain", ""),
        pgp_partner(
            "rsa",
            &pgp_section(
                "keys/rsa.asc",
                "passphrase_file = \"keys/rsa.pass\"\nverify_key = \"keys/acme.pub.asc\""
            )
        ),
        pgp_partner("cv", &pgp_section("keys/cv.asc", "")),
    ));

    // (partner, name, content tag, how GnuPG made it)
    let signed = Some((signer.as_str(), Some("p")));
    let cases = [
        (
            "rsa",
            "a.csv.asc",
            "a",
            Enc {
                to: &rsa,
                sign: signed,
                compress: true,
                armor: true,
            },
        ),
        (
            "rsa",
            "b.csv.gpg",
            "b",
            Enc {
                to: &rsa,
                sign: signed,
                compress: false,
                armor: false,
            },
        ),
        (
            "cv",
            "c.csv.pgp",
            "c",
            Enc {
                to: &cv,
                sign: None,
                compress: true,
                armor: false,
            },
        ),
        (
            "cv",
            "d.csv.pgp",
            "d",
            Enc {
                to: &cv,
                sign: signed,
                compress: false,
                armor: true,
            },
        ),
    ];
    for (p, name, tag, how) in &cases {
        let content = csv(tag, 50);
        let enc = partner.encrypt(&content, how);
        assert_ne!(enc, content);
        std::fs::write(w.inbox(p).join(name), enc).unwrap();
        std::fs::write(w.inbox("plain").join(format!("{tag}.csv")), content).unwrap();
    }
    w.members(10);
    let (code, plain_run) = w.once_json("plain", &[]);
    assert_eq!(code, 0, "{plain_run:#}");
    for p in ["rsa", "cv"] {
        let (code, run) = w.once_json(p, &[]);
        assert_eq!(code, 0, "{run:#}");
        assert_eq!(run["files"].as_array().unwrap().len(), 2, "{run:#}");
    }
    let runs: std::collections::HashMap<&str, serde_json::Value> = ["rsa", "cv"]
        .iter()
        .map(|p| {
            (
                *p,
                serde_json::from_str(&w.ok(&["files", "--json", "--partner", p])).unwrap(),
            )
        })
        .collect();
    for (p, name, tag, _) in &cases {
        let twin = file_named(&plain_run, &format!("{tag}.csv"));
        let rows: Vec<serde_json::Value> = runs[p].as_array().unwrap().clone();
        let f = rows.iter().find(|f| f["name"] == *name).unwrap();
        assert_eq!(f["outcome"], "credited", "{f:#}");
        assert_eq!(
            f["sha256"], twin["sha256"],
            "the plaintext's hash is the file's"
        );
        for k in ["rows", "credited", "failed", "miles"] {
            assert_eq!(f[k], twin[k], "{k} of {name}");
        }
        assert_eq!(f["credited"], 50);
        let mine = ledger_of(&w, f["id"].as_i64().unwrap());
        assert_eq!(mine.len(), 50);
        assert_eq!(mine, ledger_of(&w, twin["id"].as_i64().unwrap()), "{name}");
        // The same error report, named after the plain stem.
        let report = w.report_of(f);
        assert_eq!(
            std::fs::read(&report).unwrap(),
            std::fs::read(w.report_of(twin)).unwrap()
        );
        assert_eq!(
            std::fs::read(&report).unwrap(),
            format!("NOBODY,{tag}-x,5,E003\r\n").into_bytes()
        );
        // The archive keeps the bytes as received and the plaintext.
        let archive = w.path(&format!("var/archive/{p}"));
        // Tidied into `processed/` (the local source's default `after`).
        let received = std::fs::read(w.inbox(p).join("processed").join(name)).unwrap();
        let kept: Vec<Vec<u8>> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(kept.contains(&received), "{name}: received bytes archived");
        assert!(kept.contains(&csv(tag, 50)), "{name}: plaintext archived");
        let decrypted = Path::new(f["archive_path"].as_str().unwrap());
        assert!(decrypted
            .to_str()
            .unwrap()
            .ends_with(&format!("{name}.decrypted")));
        assert_eq!(std::fs::read(decrypted).unwrap(), csv(tag, 50));
    }
    w.assert_balances_match_ledger();
    // Run again: the files are still in the inbox and credited: not read again.
    let (code, again) = w.once_json("rsa", &[]);
    assert_eq!(code, 0, "{again:#}");
    assert!(again["files"].as_array().unwrap().is_empty(), "{again:#}");
}

#[test]
fn undecryptable_unsigned_badly_signed_or_tampered_files_are_refused_f008() {
    let ours = Gpg::new();
    let key = ours.gen_key("Milebatch <ops@ops.example>", Algo::Curve25519, None);
    let partner = Gpg::new();
    let signer = partner.gen_key("Partner <it@acme.example>", Algo::Rsa, None);
    let stranger = partner.gen_key("Stranger <x@evil.example>", Algo::Curve25519, None);
    let other = Gpg::new();
    let wrong = other.gen_key("Someone else <y@other.example>", Algo::Rsa, None);
    partner.import(&ours.public(&key));
    partner.import(&other.public(&wrong));

    let w = Workspace::new();
    write_private(&w.path("keys/ours.asc"), &ours.secret(&key, None));
    w.write("keys/acme.asc", partner.public(&signer));
    std::fs::create_dir_all(w.inbox("acme")).unwrap();
    w.config(&pgp_partner(
        "acme",
        &pgp_section("keys/ours.asc", "verify_key = \"keys/acme.asc\""),
    ));
    let good_sig = Some((signer.as_str(), None));
    let enc = |tag: &str, e: Enc<'_>| partner.encrypt(&csv(tag, 2000), &e);
    let inbox = w.inbox("acme");
    let put = |name: &str, data: &[u8]| std::fs::write(inbox.join(name), data).unwrap();
    put(
        "wrong-key.csv.pgp",
        &enc(
            "w",
            Enc {
                to: &wrong,
                sign: good_sig,
                compress: true,
                armor: false,
            },
        ),
    );
    put(
        "unsigned.csv.pgp",
        &enc(
            "u",
            Enc {
                to: &key,
                sign: None,
                compress: true,
                armor: false,
            },
        ),
    );
    put(
        "bad-signer.csv.asc",
        &enc(
            "s",
            Enc {
                to: &key,
                sign: Some((&stranger, None)),
                compress: false,
                armor: true,
            },
        ),
    );
    let mut tampered = enc(
        "t",
        Enc {
            to: &key,
            sign: good_sig,
            compress: false,
            armor: false,
        },
    );
    let at = tampered.len() * 2 / 3;
    tampered[at] ^= 0x01;
    put("tampered.csv.gpg", &tampered);
    put("not-encrypted.csv.pgp", &csv("n", 3));
    // A good one beside them is credited.
    put(
        "good.csv.pgp",
        &enc(
            "g",
            Enc {
                to: &key,
                sign: good_sig,
                compress: true,
                armor: false,
            },
        ),
    );

    w.members(10);
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 1, "a refused file fails the run: {run:#}");
    assert_eq!(run["outcome"], "refused");
    let expect = [
        ("wrong-key.csv.pgp", "cannot be decrypted with our key"),
        ("unsigned.csv.pgp", "not signed"),
        ("bad-signer.csv.asc", "bad signature"),
        ("tampered.csv.gpg", "changed or cut short"),
        ("not-encrypted.csv.pgp", "not an OpenPGP message"),
    ];
    for (name, why) in expect {
        let f = file_named(&run, name);
        assert_eq!(f["outcome"], "refused", "{f:#}");
        assert_eq!(f["file_code"], "F008", "{f:#}");
        assert_eq!(f["credited"], 0);
        assert!(f["reason"].as_str().unwrap().contains(why), "{name}: {f:#}");
        let report = w.report_of(f);
        assert_eq!(std::fs::read(report).unwrap(), b",,,F008\n", "{name}");
        let (ledger, code): (i64, String) = w
            .db()
            .query_row(
                "SELECT (SELECT count(*) FROM ledger WHERE file_id = f.id), file_code FROM files f WHERE id = ?1",
                [f["id"].as_i64().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((ledger, code.as_str()), (0, "F008"), "{name}");
    }
    let wrong = file_named(&run, "wrong-key.csv.pgp")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        wrong.contains(&key[..]) || wrong.contains(&key[key.len() - 16..]),
        "names our key: {wrong}"
    );
    let good = file_named(&run, "good.csv.pgp");
    assert_eq!(good["outcome"], "credited", "{good:#}");
    assert_eq!(w.ledger_rows(), 2000);
    // No plaintext of a refused file is left in the archive.
    for e in std::fs::read_dir(w.path("var/archive/acme")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".part"), "{n}");
        if n.ends_with(".decrypted") {
            assert!(n.ends_with("good.csv.pgp.decrypted"), "{n}");
        }
    }
    // `files` shows the code with the reason, as for any refused file.
    let text = w.ok(&["files", "--partner", "acme"]);
    assert!(text.contains("F008 not signed"), "{text}");
    // The same bytes put back (from `failed/`, where the default
    // `move_failed` put them) are not judged again; the run says why.
    for (name, _) in expect {
        std::fs::rename(inbox.join("failed").join(name), inbox.join(name)).unwrap();
    }
    let (code, again) = w.once_json("acme", &[]);
    assert_eq!(code, 1);
    let skipped = again["skipped"].as_array().unwrap();
    assert_eq!(
        skipped
            .iter()
            .filter(|s| s["reason"] == "refused-content")
            .count(),
        5,
        "{again:#}"
    );
}

#[test]
fn the_same_content_plain_then_encrypted_is_a_duplicate() {
    let ours = Gpg::new();
    let key = ours.gen_key("Milebatch <ops@ops.example>", Algo::Rsa, None);
    let w = Workspace::new();
    write_private(&w.path("keys/ours.asc"), &ours.secret(&key, None));
    std::fs::create_dir_all(w.inbox("acme")).unwrap();
    w.config(&pgp_partner("acme", &pgp_section("keys/ours.asc", "")));
    let content = csv("same", 20);
    std::fs::write(w.inbox("acme").join("monday.csv"), &content).unwrap();
    w.members(10);
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 0, "{run:#}");
    let first = file_named(&run, "monday.csv")["id"].as_i64().unwrap();

    let enc = ours.encrypt(
        &content,
        &Enc {
            to: &key,
            compress: true,
            ..Default::default()
        },
    );
    std::fs::write(w.inbox("acme").join("tuesday.csv.gpg"), enc).unwrap();
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 1, "{run:#}");
    let f = file_named(&run, "tuesday.csv.gpg");
    assert_eq!(f["outcome"], "duplicate", "{f:#}");
    assert_eq!(f["file_code"], "F001");
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("file {first}")),
        "{f:#}"
    );
    assert_eq!(std::fs::read(w.report_of(f)).unwrap(), b",,,F001\r\n");
    assert_eq!(w.ledger_rows(), 20, "credited once");
}

#[test]
fn our_key_problems_fail_the_run_and_a_file_refused_for_our_wrong_key_is_retried() {
    let ours = Gpg::new();
    let key = ours.gen_key("Milebatch <ops@ops.example>", Algo::Rsa, Some("right"));
    let old = ours.gen_key("Milebatch old <old@ops.example>", Algo::Curve25519, None);
    let w = Workspace::new();
    write_private(&w.path("keys/ours.asc"), &ours.secret(&key, Some("right")));
    write_private(&w.path("keys/old.asc"), &ours.secret(&old, None));
    write_private(&w.path("keys/pass"), b"wrong\n");
    std::fs::create_dir_all(w.inbox("acme")).unwrap();
    let config = |file: &str| {
        w.config(&pgp_partner(
            "acme",
            &pgp_section(file, "passphrase_file = \"keys/pass\""),
        ))
    };
    config("keys/ours.asc");
    let enc = ours.encrypt(
        &csv("r", 30),
        &Enc {
            to: &key,
            compress: true,
            ..Default::default()
        },
    );
    std::fs::write(w.inbox("acme").join("x.csv.pgp"), enc).unwrap();

    // A wrong passphrase is ours to fix: the run fails, the file is not judged.
    w.members(10);
    let out = w.run(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot be unlocked"), "{text}");
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cannot be unlocked"),
        "{run:#}"
    );
    assert_eq!(w.int("SELECT count(*) FROM files"), 0);

    // The wrong key configured: the file is refused F008, naming both keys.
    config("keys/old.asc");
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 1, "{run:#}");
    let f = file_named(&run, "x.csv.pgp");
    assert_eq!(f["file_code"], "F008", "{f:#}");
    let id = f["id"].as_i64().unwrap();

    // Fixed: retry decrypts the archived bytes as received and credits them.
    write_private(&w.path("keys/pass"), b"right\n");
    config("keys/ours.asc");
    let out = w.ok(&["retry", "--file", &id.to_string(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "credited", "{v:#}");
    assert_eq!(v["credited"], 30, "{v:#}");
    assert_eq!(w.ledger_rows(), 30);
    let new_id = v["file_id"].as_i64().unwrap();
    let (archive, retry_of): (String, i64) = w
        .db()
        .query_row(
            "SELECT archive_path, retry_of FROM files WHERE id = ?1",
            [new_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(retry_of, id);
    assert_eq!(std::fs::read(archive).unwrap(), csv("r", 30));
    w.assert_balances_match_ledger();
}

#[test]
fn reports_written_back_over_sftp_are_encrypted_to_the_partner() {
    let ours = Gpg::new();
    let key = ours.gen_key("Milebatch <ops@ops.example>", Algo::Curve25519, None);
    let partner = Gpg::new();
    let pkey = partner.gen_key("Partner <it@acme.example>", Algo::Rsa, Some("pp"));
    partner.import(&ours.public(&key));

    let sshd = Sshd::start(SshdOpts::default());
    let inbox = sshd.owned_dir("inbox");
    let put = |name: &str, data: &[u8]| put_owned(&inbox.join(name), data);

    let w = Workspace::new();
    write_private(&w.path("keys/ours.asc"), &ours.secret(&key, None));
    w.write("keys/acme.asc", partner.public(&pkey));
    w.config(&format!(
        "[[partner]]\nid = \"acme\"\nschedule = \"daily 03:00\"\nmax_miles_per_row = 100000\n\
         summary = true\n{}{}",
        sshd.source_section(&inbox),
        pgp_section(
            "keys/ours.asc",
            "verify_key = \"keys/acme.asc\"\nencrypt_reports = true"
        )
    ));
    let signed = Some((pkey.as_str(), Some("pp")));
    put(
        "EXCHANGE.csv.pgp",
        &partner.encrypt(
            &csv("e", 40),
            &Enc {
                to: &key,
                sign: signed,
                compress: true,
                armor: false,
            },
        ),
    );
    put(
        "UNSIGNED.csv.pgp",
        &partner.encrypt(
            &csv("u", 5),
            &Enc {
                to: &key,
                compress: true,
                ..Default::default()
            },
        ),
    );
    w.members(10);
    let (code, run) = w.once_json("acme", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["error"], serde_json::Value::Null, "{run:#}");
    assert!(run["tidy_failed"].as_array().unwrap().is_empty(), "{run:#}");
    let credited = file_named(&run, "EXCHANGE.csv.pgp");
    assert_eq!(credited["outcome"], "credited");
    let refused = file_named(&run, "UNSIGNED.csv.pgp");
    assert_eq!(refused["file_code"], "F008");

    let errors = inbox.join("errors");
    let mut names: Vec<String> = std::fs::read_dir(&errors)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "EXCHANGE.errors.csv.pgp",
            "EXCHANGE.summary.csv.pgp",
            "UNSIGNED.errors.csv.pgp",
            "UNSIGNED.summary.csv.pgp"
        ],
        "only encrypted reports are written back"
    );
    for (f, stem) in [(credited, "EXCHANGE"), (refused, "UNSIGNED")] {
        let local = std::fs::read(w.report_of(f)).unwrap();
        let sent = std::fs::read(errors.join(format!("{stem}.errors.csv.pgp"))).unwrap();
        assert!(!sent
            .windows(local.len().min(8))
            .any(|x| x == &local[..local.len().min(8)]));
        assert_eq!(
            partner.decrypt(&sent, Some("pp")),
            local,
            "{stem}: the local copy stays plain"
        );
        let summary = std::fs::read(errors.join(format!("{stem}.summary.csv.pgp"))).unwrap();
        let local_summary = std::fs::read(
            w.report_of(f)
                .with_file_name(format!("{}-{stem}.summary.csv", f["id"])),
        )
        .unwrap();
        assert_eq!(partner.decrypt(&summary, Some("pp")), local_summary);
    }
    assert_eq!(
        std::fs::read(w.report_of(credited)).unwrap(),
        b"NOBODY,e-x,5,E003\r\n"
    );
    assert_eq!(std::fs::read(w.report_of(refused)).unwrap(), b",,,F008\n");
}
