//! `[daemon] database = "postgres://…"` on the real binary, against a
//! throw-away PostgreSQL (tests/common/pg.rs): the URL and password rules
//! at config load, the refusal of every command that does not run on
//! PostgreSQL yet (exit 2, nothing written), what `check` says about
//! the database (reachable, TLS verified, schema version, writable
//! primary), the read commands reading it, and `members import` writing
//! it exactly as it writes SQLite.

mod common;

use std::process::Output;

use common::pg::{self, PgCluster, TestDb};
use common::workspace::{local_partner, Workspace};
use milebatch::store::Database;

const PW_VAR: &str = "MB_TEST_DB_PASSWORD";

/// A workspace whose `partners.toml` points at `url`, with the password
/// from `$MB_TEST_DB_PASSWORD`.
fn workspace(url: &str) -> Workspace {
    let w = Workspace::new();
    std::fs::create_dir_all(w.path("inbox/shop")).unwrap();
    w.write(
        "partners.toml",
        format!(
            "[daemon]\ndatabase = \"{url}\"\ndatabase_password_env = \"{PW_VAR}\"\n\
             data_dir = \"var\"\ntimezone = \"Asia/Tokyo\"\n\n{}",
            local_partner("shop", "inbox/shop", "")
        ),
    );
    w
}

fn run(w: &Workspace, args: &[&str], password: &str) -> (i32, String, String) {
    let out: Output = w.run_env(args, &[(PW_VAR, password)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tables(db: &TestDb) -> String {
    pg::shared().psql(
        &db.name,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    )
}

#[test]
fn commands_not_on_postgres_yet_refuse_with_exit_2_and_write_nothing() {
    let db = pg::shared().fresh_db();
    let w = workspace(&db.url());
    w.write("inbox/shop/a.csv", "M000001,k1,100\n");
    for args in [vec!["run"], vec!["serve"], vec!["user", "list"]] {
        let (code, _, err) = run(&w, &args, pg::PASSWORD);
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        assert!(
            lines[0].contains(&format!(
                "`milebatch {}` is not available on PostgreSQL yet",
                args[0]
            )),
            "{args:?}: {err}"
        );
    }
    // backup and restore are SQLite's: a pointer to PostgreSQL's own tools.
    for args in [vec!["backup", "b.db"], vec!["restore", "b.db"]] {
        let (code, _, err) = run(&w, &args, pg::PASSWORD);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "`milebatch {}` copies an SQLite file and does not apply to PostgreSQL",
                args[0]
            )) && err.contains("pg_dump")
                && err.contains("pgBackRest")
                && err.contains("standby"),
            "{args:?}: {err}"
        );
    }
    assert!(!w.path("b.db").exists());
    assert!(!w.path("var").exists(), "no data_dir, no SQLite file made");
    assert!(
        w.path("inbox/shop/a.csv").exists(),
        "the inbox is untouched"
    );
    assert_eq!(tables(&db), "0", "nothing written to PostgreSQL");
}

#[test]
fn a_password_in_the_url_or_plain_text_to_a_remote_host_is_refused_at_load() {
    for (url, wanted) in [
        (
            "postgres://mb:hunter2@127.0.0.1:5432/mb",
            "must not contain a password",
        ),
        (
            "postgres://mb@db.example:5432/mb",
            "add `sslmode=verify-full&sslrootcert=",
        ),
        (
            "postgres://mb@db.example:5432/mb?sslmode=require",
            "does not check the server's name",
        ),
    ] {
        let w = workspace(url);
        for cmd in ["check", "once"] {
            let (code, _, err) = run(&w, &[cmd], "x");
            assert_eq!(code, 2, "{url} {cmd}: {err}");
            assert!(err.contains(wanted), "{url} {cmd}: {err}");
            assert!(
                !err.contains("hunter2"),
                "the password is not echoed: {err}"
            );
        }
        assert!(!w.path("var").exists());
    }
}

#[test]
fn check_says_the_database_is_fine_or_exactly_what_is_wrong() {
    let c = pg::shared();
    let db = c.fresh_db();

    // Reachable, plain to loopback: no problem (an empty database is
    // created by the first command that writes, as with SQLite).
    let w = workspace(&db.url());
    let (code, out, err) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("database {}", db.url())), "{out}");
    assert_eq!(tables(&db), "0", "check writes nothing");

    // Verified TLS by a name on the certificate.
    let w = workspace(&db.tls_url("localhost"));
    let (code, out, err) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 0, "{out}{err}");

    // Wrong password.
    let w = workspace(&db.url());
    let (code, out, _) = run(&w, &["check"], "not-the-password");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem: [daemon]: database")
            && out.contains("refused user")
            && out.contains("database_password_"),
        "{out}"
    );
    assert!(!out.contains("not-the-password"), "{out}");

    // TLS to a loopback address the certificate does not name.
    let w = workspace(&db.tls_url("127.0.0.2"));
    let (code, out, _) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("certificate does not name the host"), "{out}");

    // Nothing listening.
    let port = common::servers::free_port();
    let w = workspace(&format!("postgres://mb@127.0.0.1:{port}/mb"));
    let t0 = std::time::Instant::now();
    let (code, out, _) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot reach any host"), "{out}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));

    // A database at a newer schema than this milebatch.
    let newer = c.fresh_db();
    c.psql(
        &newer.name,
        &format!(
            "CREATE TABLE schema_version(one BOOLEAN PRIMARY KEY DEFAULT TRUE, version BIGINT NOT NULL);
             INSERT INTO schema_version VALUES (TRUE, 99);
             ALTER TABLE schema_version OWNER TO {}",
            newer.user
        ),
    );
    let w = workspace(&newer.url());
    let (code, out, _) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("schema version 99, newer than this milebatch")
            && out.contains("upgrade milebatch"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_read_only_standby_as_the_only_host() {
    let primary = PgCluster::start();
    primary.psql(
        "postgres",
        &format!("CREATE ROLE mb LOGIN PASSWORD '{}'", pg::PASSWORD),
    );
    primary.psql("postgres", "CREATE DATABASE mb OWNER mb");
    let standby = primary.add_sync_standby();
    let w = workspace(&format!("postgres://mb@127.0.0.1:{}/mb", standby.port));
    let (code, out, err) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("no host in `daemon.database` is a writable primary"),
        "{out}"
    );
    // Both hosts listed: the primary is found whichever comes first.
    let w = workspace(&format!(
        "postgres://mb@127.0.0.1:{},127.0.0.1:{}/mb?target_session_attrs=read-write",
        standby.port, primary.port
    ));
    let (code, out, err) = run(&w, &["check"], pg::PASSWORD);
    assert_eq!(code, 0, "{out}{err}");
}

/// `status`, `files`, `balance` and `exchanges` read PostgreSQL as they
/// read SQLite: nothing before the first migration, then what the tables
/// hold (a run, a credited and a refused file, a pending notification, a
/// member's balance, API exchanges), never migrating by themselves.
#[test]
fn the_read_commands_read_postgres_as_they_read_sqlite() {
    let db = pg::shared().fresh_db();
    let w = workspace(&db.url());
    let (code, out, err) = run(&w, &["status", "--json"], pg::PASSWORD);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["partners"][0]["last_run"].is_null(), "{v:#}");
    let (code, out, err) = run(&w, &["files", "--json"], pg::PASSWORD);
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
    let (code, out, err) = run(&w, &["exchanges", "--json"], pg::PASSWORD);
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
    let (code, _, err) = run(&w, &["balance", "M000001"], pg::PASSWORD);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no member \"M000001\""), "{err}");
    assert_eq!(tables(&db), "0", "the read commands migrate nothing");

    let database = db.database("MB_STATUS_DB_PASSWORD");
    let milebatch::store::Database::Postgres(target) = database else {
        unreachable!()
    };
    milebatch::store::connect_postgres(&target, true).unwrap();
    pg::shared().psql(
        &db.name,
        "INSERT INTO runs(partner, trigger, dry_run, started_at, finished_at, outcome, files, rows, credited, failed, miles) \
         VALUES ('shop', 'schedule', 0, '2026-12-04T01:00:00Z', '2026-12-04T01:00:05Z', 'refused', 2, 5, 3, 0, 300); \
         INSERT INTO files(partner, run_id, name, size, sha256, outcome, archive_path, started_at, finished_at, rows, credited, miles, tidy, channel) \
         VALUES ('shop', 1, 'a.csv', 10, 'aa', 'credited', 'x', '2026-12-04T01:00:01Z', '2026-12-04T01:00:02Z', 3, 3, 300, 'done', 'pull'); \
         INSERT INTO files(partner, run_id, name, size, sha256, outcome, reason, archive_path, started_at, finished_at, rows, tidy, channel, file_code) \
         VALUES ('shop', 1, 'b.csv', 10, 'bb', 'refused', 'no data rows', 'y', '2026-12-04T01:00:03Z', '2026-12-04T01:00:04Z', 0, 'done', 'pull', 'F003'); \
         INSERT INTO partner_state(partner, last_attempt, consecutive_failures, last_error, last_error_at, failing_since) \
         VALUES ('shop', '2026-12-04T01:00:00Z', 1, 'b.csv: no data rows', '2026-12-04T01:00:00Z', '2026-12-04T01:00:00Z'); \
         INSERT INTO outbox(event_id, kind, partner, created_at, data, routed) \
         VALUES ('evt_1', 'file.refused', 'shop', '2999-01-01T00:00:00Z', '{}', 1); \
         INSERT INTO deliveries(event_id, channel, target, state, next_at, give_up_at) \
         VALUES ('evt_1', 'email', 'a@shop.example', 'pending', 0, 0); \
         INSERT INTO members(id, member_id, email, status) VALUES (1, 'M000001', 'taro@example.jp', 0); \
         INSERT INTO balances(member, miles) VALUES (1, 300); \
         INSERT INTO api_exchanges(partner, idem_key, request_sha256, key_prefix, status, code, body, member, partner_key, miles, created_at) \
         VALUES ('shop', 'k1', 'h', 'mbk_1234abcd', 201, NULL, '{}', 1, 'POS-1', 50, '2026-12-04T02:00:00Z'), \
                ('shop', 'k2', 'h', 'mbk_1234abcd', 422, 'E003', '{}', NULL, 'POS-2', 5, '2026-12-04T02:00:01Z');",
    );
    let (code, out, err) = run(&w, &["status", "--json"], pg::PASSWORD);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["partners"][0];
    assert_eq!(p["last_run"]["outcome"], "refused", "{v:#}");
    assert_eq!(p["last_run"]["credited"], 3);
    assert_eq!(p["failing"], true);
    assert_eq!(p["consecutive_failures"], 1);
    assert_eq!(p["last_credited"]["name"], "a.csv");
    assert_eq!(p["last_refused"]["name"], "b.csv");
    assert_eq!(v["notifications"]["pending"], 1, "{v:#}");
    // The text form too.
    let (code, out, _) = run(&w, &["status"], pg::PASSWORD);
    assert_eq!(code, 0);
    assert!(
        out.contains("notify    1 pending") && out.contains("b.csv: no data rows"),
        "{out}"
    );

    // `files`: the same rows, filters and order as on SQLite.
    let files = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["files", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = run(&w, &all, pg::PASSWORD);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let all = files(&[]);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.csv", "a.csv"], "newest first");
    assert_eq!(all[0]["file_code"], "F003");
    assert_eq!(all[0]["date"], "2026-12-04");
    assert_eq!(all[1]["credited"], 3);
    assert_eq!(
        files(&["--outcome", "refused"]).as_array().unwrap().len(),
        1
    );
    assert_eq!(
        files(&["--since", "2026-12-05"]).as_array().unwrap().len(),
        0
    );
    assert_eq!(
        files(&["--oldest-first", "--limit", "1"])[0]["name"],
        "a.csv"
    );
    let (code, out, _) = run(&w, &["files", "--limit", "1"], pg::PASSWORD);
    assert_eq!(code, 0);
    assert!(
        out.contains("b.csv") && out.contains("1 more file(s) not shown"),
        "{out}"
    );

    // `balance` by member ID and by e-mail (any case), `exchanges`.
    for who in ["M000001", "TARO@example.jp"] {
        let (code, out, err) = run(&w, &["balance", "--json", who], pg::PASSWORD);
        assert_eq!(code, 0, "{err}");
        let b: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (
                b["member_id"].as_str(),
                b["miles"].as_i64(),
                b["status"].as_str()
            ),
            (Some("M000001"), Some(300), Some("active")),
            "{b:#}"
        );
    }
    let (code, out, _) = run(&w, &["exchanges", "--json"], pg::PASSWORD);
    assert_eq!(code, 0);
    let x: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(x[0]["code"], "E003", "newest first: {x:#}");
    assert_eq!(
        (x[1]["member_id"].as_str(), x[1]["miles"].as_i64()),
        (Some("M000001"), Some(50))
    );
    let (_, out, _) = run(&w, &["exchanges", "--limit", "1"], pg::PASSWORD);
    assert!(
        out.contains("rejected E003") && !out.contains("credited"),
        "{out}"
    );
}

/// A workspace like [`workspace`] on SQLite (`var/milebatch.db`).
fn sqlite_workspace() -> Workspace {
    let w = Workspace::new();
    std::fs::create_dir_all(w.path("inbox/shop")).unwrap();
    w.config(&local_partner("shop", "inbox/shop", ""));
    w
}

/// Every member as (member_id, e-mail, status), sorted; and each member
/// ID's internal id.
type Members = Vec<(String, Option<String>, i64)>;
fn members_of(db: &dyn milebatch::store::Exec) -> (Members, Vec<(String, i64)>) {
    let rows = db
        .query("SELECT member_id, email, status, id FROM members", &[])
        .unwrap();
    let mut members: Members = rows
        .iter()
        .map(|r| {
            (
                r.text(0).unwrap(),
                r.opt_text(1).unwrap(),
                r.int(2).unwrap(),
            )
        })
        .collect();
    members.sort();
    let mut ids: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.text(0).unwrap(), r.int(3).unwrap()))
        .collect();
    ids.sort();
    (members, ids)
}

/// `members import` on PostgreSQL is `members import` on SQLite: the same
/// files give the same stdout, stderr and exit code on both, and leave the
/// same members: a first import, a re-import that changes e-mails and
/// statuses (a member keeps its internal id), a bad line, a repeated
/// member ID, an e-mail another member holds (stored, or given by an
/// earlier line; one freed by an earlier line is not), a Shift_JIS file,
/// and member IDs that COPY's text format would misread (tab, backslash,
/// `\N`). A failed import writes nothing on either. Then `balance` reads
/// an imported member on PostgreSQL as on SQLite.
#[test]
fn members_import_on_postgres_answers_and_writes_as_on_sqlite() {
    let db = pg::shared().fresh_db();
    let pgw = workspace(&db.url());
    let sqw = sqlite_workspace();
    let Database::Postgres(target) = db.database("MB_MEMBERS_DB_PASSWORD") else {
        unreachable!()
    };
    let members = || {
        let pgc = milebatch::store::connect_postgres(&target, false).unwrap();
        let sqc = rusqlite::Connection::open(sqw.path("var/milebatch.db")).unwrap();
        let (p, pids) = members_of(&pgc);
        let (s, sids) = members_of(&sqc);
        assert_eq!(p, s, "the same members on both");
        (p, pids, sids)
    };
    // Run on both; the same answer or a panic. Aside: the time taken, and
    // log lines (PostgreSQL logs each migration the first import applies).
    let same = |name: &str, bytes: &[u8], extra: &[&str]| -> (i32, String, String) {
        pgw.write(name, bytes);
        sqw.write(name, bytes);
        let mut args = vec!["members", "import", name];
        args.extend_from_slice(extra);
        let p = run(&pgw, &args, pg::PASSWORD);
        let s = run(&sqw, &args, pg::PASSWORD);
        let untimed = |(code, out, err): (i32, String, String)| {
            let out = match out.rsplit_once(" in ") {
                Some((head, _)) if !extra.contains(&"--json") => format!("{head} in …s"),
                _ => out,
            };
            let err: String = err
                .lines()
                .filter(|l| !(l.starts_with("20") && l.contains("  INFO ")))
                .map(|l| format!("{l}\n"))
                .collect();
            (code, out, err)
        };
        let (p, s) = (untimed(p), untimed(s));
        assert_eq!(p, s, "{args:?}: PostgreSQL, then SQLite");
        p
    };

    // A first import (the first command ever: it migrates), with a header.
    let (code, out, err) = same(
        "m1.csv",
        b"member_id,email,status\nA1,Taro@Example.JP,active\nA2,,suspended\n\
          A3, a3@x.jp ,withdrawn\n\"tab\tid\",tab@x.jp,active\nback\\slash,\"b\\s@x.jp\",active\n\
          \\N,null@x.jp,suspended\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "imported 6 members from m1.csv in …s");
    let (first, pg_ids, sq_ids) = members();
    assert_eq!(first.len(), 6);
    assert!(
        first.contains(&("tab\tid".into(), Some("tab@x.jp".into()), 0))
            && first.contains(&("back\\slash".into(), Some("b\\s@x.jp".into()), 0))
            && first.contains(&("\\N".into(), Some("null@x.jp".into()), 1))
            && first.contains(&("A1".into(), Some("taro@example.jp".into()), 0))
            && first.contains(&("A2".into(), None, 1)),
        "{first:?}"
    );

    // A re-import: e-mails and statuses follow the file (no e-mail: none
    // kept); A1's old e-mail, freed on line 1, is A4's on line 2; the
    // internal ids stay.
    let (code, out, err) = same(
        "m2.csv",
        b"A1,new@x.jp,suspended\nA4,taro@example.jp,active\nA2,a2@x.jp,active\nA3,,active\n",
        &["--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], 4, "{out}");
    let (second, pg_ids2, sq_ids2) = members();
    assert!(
        second.contains(&("A1".into(), Some("new@x.jp".into()), 1))
            && second.contains(&("A4".into(), Some("taro@example.jp".into()), 0))
            && second.contains(&("A2".into(), Some("a2@x.jp".into()), 0))
            && second.contains(&("A3".into(), None, 0)),
        "{second:?}"
    );
    for (before, after) in [(&pg_ids, &pg_ids2), (&sq_ids, &sq_ids2)] {
        for (id, n) in before {
            assert!(after.contains(&(id.clone(), *n)), "{id} keeps its id");
        }
    }

    // Refused files: the same error and exit code, nothing written.
    for (name, bytes, wanted) in [
        (
            "bad.csv",
            &b"N1,n1@x.jp,active\nN2,n2@x.jp,sleeping\n"[..],
            "bad.csv:2: status \"sleeping\"",
        ),
        (
            "repeat.csv",
            b"N1,n1@x.jp,active\nN2,n2@x.jp,active\n N1 ,n3@x.jp,active\n",
            "repeat.csv:3: member_id is the same as on line 1",
        ),
        // Held by a stored member (A4 since m2.csv), in any case.
        (
            "taken.csv",
            b"N1,n1@x.jp,active\nN2,TARO@example.jp,active\n",
            "taken.csv:2: email \"taro@example.jp\" is already registered to another member",
        ),
        // Given by an earlier line to another member.
        (
            "twice.csv",
            b"N1,same@x.jp,active\nN2,n2@x.jp,active\nN3,same@x.jp,active\n",
            "twice.csv:3: email \"same@x.jp\" is already registered",
        ),
        // Freed only later in the file: taken when its line comes.
        (
            "swap.csv",
            b"N1,a2@x.jp,active\nA2,n1@x.jp,active\n",
            "swap.csv:1: email \"a2@x.jp\" is already registered",
        ),
        // The first bad line is named: a repeat before a taken e-mail,
        // a taken e-mail before a bad status.
        (
            "first.csv",
            b"N1,n1@x.jp,active\nN1,n2@x.jp,active\nN3,new@x.jp,active\n",
            "first.csv:2: member_id is the same as on line 1",
        ),
        (
            "first2.csv",
            b"N1,new@x.jp,active\nN2,n2@x.jp,sleeping\n",
            "first2.csv:1: email \"new@x.jp\" is already registered",
        ),
        (
            "nul.csv",
            b"N1,n1@x.jp,active\nN\0,n2@x.jp,active\n",
            "nul.csv:2: column 1 has a NUL character",
        ),
        (
            "sjis-as-utf8.csv",
            &encoding_rs::SHIFT_JIS.encode("髙橋01,t@x.jp,active\r\n").0[..],
            "sjis-as-utf8.csv:1: column 1 is not UTF-8",
        ),
    ] {
        let (code, out, err) = same(name, bytes, &[]);
        assert_eq!((code, out.as_str()), (2, ""), "{name}: {err}");
        assert!(err.contains(wanted), "{name}: {err}");
        assert_eq!(members().0, second, "{name}: nothing written");
    }

    // Shift_JIS with --encoding shift_jis.
    let sjis = encoding_rs::SHIFT_JIS
        .encode("会員ID,メール,状態\r\n髙橋01,T@X.jp,active\r\n")
        .0;
    let (code, out, err) = same("sjis.csv", &sjis, &["--encoding", "shift_jis"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "imported 1 members from sjis.csv in …s");
    assert!(
        members()
            .0
            .contains(&("髙橋01".into(), Some("t@x.jp".into()), 0)),
        "{:?}",
        members().0
    );

    // `balance` finds an imported member on PostgreSQL as on SQLite.
    for who in ["髙橋01", "T@x.jp", "tab\tid", "A1"] {
        let p = run(&pgw, &["balance", "--json", who], pg::PASSWORD);
        let s = run(&sqw, &["balance", "--json", who], pg::PASSWORD);
        assert_eq!(p, s, "balance {who:?}");
        assert_eq!(p.0, 0, "{who}: {}", p.2);
        let b: serde_json::Value = serde_json::from_str(&p.1).unwrap();
        assert_eq!(b["miles"], 0, "{b:#}");
    }
}
