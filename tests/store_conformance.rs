//! The store conformance suite: the SAME test code runs against SQLite (a
//! real file, opened as milebatch opens it) and against PostgreSQL (a fresh
//! database on the test process's throw-away cluster, migrated by
//! milebatch). What it covers grows as concerns move behind
//! `milebatch::store`; today: the schema (migrations, version, append-only
//! rules), "run now" requests, API keys, the audit rows they write, and the
//! notifications outbox.

mod common;

use chrono::Utc;
use milebatch::run_requests::{self, State};
use milebatch::store::{self, api_keys, Exec, StoreError};

/// One engine under test, with whatever keeps its database alive.
struct Under {
    name: &'static str,
    db: Box<dyn Exec>,
    /// A second, independent connection to the same database.
    second: Box<dyn Fn() -> Box<dyn Exec + Send> + Send + Sync>,
    _keep: Option<tempfile::TempDir>,
}

fn sqlite() -> Under {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let db = milebatch::db::open(&path).unwrap();
    Under {
        name: "sqlite",
        db: Box::new(db),
        second: Box::new(move || Box::new(milebatch::db::open(&path).unwrap())),
        _keep: Some(dir),
    }
}

fn postgres() -> Under {
    let t = common::pg::shared().fresh_db();
    let database = t.database("MB_CONFORMANCE_DB_PASSWORD");
    let store::Database::Postgres(target) = database else {
        unreachable!()
    };
    let db = store::connect_postgres(&target, true).unwrap();
    Under {
        name: "postgres",
        db: Box::new(db),
        second: Box::new(move || Box::new(store::connect_postgres(&target, true).unwrap())),
        _keep: None,
    }
}

/// Run `f` once per engine.
fn each_engine(f: impl Fn(&Under)) {
    for under in [sqlite(), postgres()] {
        f(&under);
    }
}

fn count(db: &dyn Exec, sql: &str) -> i64 {
    db.query(sql, &[]).unwrap()[0].int(0).unwrap()
}

#[test]
fn the_schema_is_the_same_version_and_append_only_on_both() {
    each_engine(|u| {
        let db = &*u.db;
        db.batch(
            "INSERT INTO members(id, member_id, status) VALUES (1, 'A', 0);
             INSERT INTO files(id, partner, name, size, sha256, outcome, started_at)
               VALUES (1, 'p', 'f', 1, 'h', 'credited', 'now');
             INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
               VALUES ('p', 'k', 1, 1, 5, 0, 1, 0);",
        )
        .unwrap();
        for (sql, why) in [
            ("UPDATE ledger SET miles = 6", "the ledger is append-only"),
            ("DELETE FROM ledger", "the ledger is append-only"),
            // Migration 18: what PostgreSQL's balances rely on instead of
            // a foreign key.
            ("DELETE FROM members", "members are never deleted"),
            (
                "UPDATE members SET id = 2",
                "a member keeps its internal id",
            ),
        ] {
            let e = db.execute(sql, &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{}: {sql}: {e}", u.name);
        }
        // A reversal row: negative miles are allowed, zero is not.
        db.execute(
            "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal)
             VALUES ('p', 'k', 1, 1, -5, 0, 1, 0, 1)",
            &[],
        )
        .unwrap();
        assert!(db
            .execute(
                "INSERT INTO ledger(partner, partner_key, file_id, member, miles, dup, line, credited_at)
                 VALUES ('p', 'k2', 1, 1, 0, 0, 2, 0)",
                &[],
            )
            .is_err());
        // Both engines refuse a negative balance.
        assert!(db
            .execute("INSERT INTO balances(member, miles) VALUES (1, -1)", &[])
            .is_err());
        // sum() of BIGINT is NUMERIC on PostgreSQL: the shared text casts.
        assert_eq!(
            count(db, "SELECT CAST(sum(miles) AS BIGINT) FROM ledger"),
            0,
            "{}",
            u.name
        );
    });
}

#[test]
fn a_run_request_goes_queued_running_done_once_and_is_audited() {
    each_engine(|u| {
        let db = &*u.db;
        let now = Utc::now();
        let (r, new) =
            run_requests::request(db, "shop", "user:o@x", Some("127.0.0.1"), now).unwrap();
        assert!(new, "{}", u.name);
        assert_eq!(r.state(), State::Queued);
        let (again, new) = run_requests::request(db, "shop", "user:o@x", None, now).unwrap();
        assert!(!new, "{}: one open request per partner", u.name);
        assert_eq!(again.id, r.id);
        assert_eq!(run_requests::queued(db).unwrap(), vec![r.clone()]);
        assert!(run_requests::claim(db, r.id, now).unwrap());
        assert!(
            !run_requests::claim(db, r.id, now).unwrap(),
            "{}: claimed once only",
            u.name
        );
        assert!(run_requests::queued(db).unwrap().is_empty());
        assert_eq!(
            run_requests::open_of(db, "shop").unwrap().unwrap().state(),
            State::Running
        );
        run_requests::finish(db, r.id, now, Some(7), "ok").unwrap();
        let done = run_requests::recent(db, "shop", 5).unwrap();
        assert_eq!(done[0].state(), State::Done);
        assert_eq!(
            (done[0].run_id, done[0].outcome.as_deref()),
            (Some(7), Some("ok"))
        );
        assert!(run_requests::open_of(db, "shop").unwrap().is_none());
        assert_eq!(
            count(
                db,
                "SELECT count(*) FROM audit WHERE action = 'run-now' AND partner = 'shop' AND client = '127.0.0.1'"
            ),
            1,
            "{}: one audit row per request, not per ask",
            u.name
        );
        let e = db
            .execute("UPDATE audit SET detail = 'x'", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("append-only"), "{}: {e}", u.name);
    });
}

#[test]
fn unclaimed_requests_queue_again_and_dead_runs_are_interrupted() {
    each_engine(|u| {
        let db = &*u.db;
        let now = Utc::now();
        let (a, _) = run_requests::request(db, "a", "x", None, now).unwrap();
        let (b, _) = run_requests::request(db, "b", "x", None, now).unwrap();
        assert!(run_requests::claim(db, a.id, now).unwrap());
        run_requests::unclaim(db, a.id).unwrap();
        assert_eq!(run_requests::queued(db).unwrap().len(), 2);
        assert!(run_requests::claim(db, b.id, now).unwrap());
        assert_eq!(run_requests::interrupt_running(db, now).unwrap(), 1);
        let b = run_requests::recent(db, "b", 1).unwrap().remove(0);
        assert_eq!(
            (b.state(), b.outcome.as_deref()),
            (State::Done, Some("interrupted")),
            "{}",
            u.name
        );
        assert_eq!(run_requests::queued(db).unwrap()[0].id, a.id);
    });
}

#[test]
fn two_connections_asking_at_once_make_one_request() {
    // Two writers (two hosts, on PostgreSQL) asking for the same partner at
    // the same moment: the check-then-insert holds under the store's lock.
    each_engine(|u| {
        let rounds = 20;
        let news: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let db = (u.second)();
                    s.spawn(move || {
                        let mut new = 0;
                        for i in 0..rounds {
                            let (_, fresh) = run_requests::request(
                                &*db,
                                &format!("p{i}"),
                                "x",
                                None,
                                Utc::now(),
                            )
                            .unwrap();
                            new += usize::from(fresh);
                        }
                        new
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(news.iter().sum::<usize>(), rounds, "{}: {news:?}", u.name);
        assert_eq!(
            count(&*u.db, "SELECT count(*) FROM run_requests"),
            rounds as i64,
            "{}",
            u.name
        );
    });
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    each_engine(|u| {
        let db = &*u.db;
        let r: Result<(), StoreError> = store::write(db, |tx| {
            tx.execute(
                "INSERT INTO run_requests(partner, requested_by, requested_at) VALUES ('p', 'x', 'now')",
                &[],
            )?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", &[])?;
            Ok(())
        });
        assert!(r.is_err(), "{}", u.name);
        assert_eq!(
            count(db, "SELECT count(*) FROM run_requests"),
            0,
            "{}",
            u.name
        );
        // And the connection is usable afterwards.
        run_requests::request(db, "p", "x", None, Utc::now()).unwrap();
    });
}

#[test]
fn postgres_refuses_a_newer_schema_and_migrates_once() {
    let t = common::pg::shared().fresh_db();
    let store::Database::Postgres(target) = t.database("MB_CONFORMANCE_DB_PASSWORD") else {
        unreachable!()
    };
    let db = store::connect_postgres(&target, true).unwrap();
    assert_eq!(
        db.schema_version().unwrap() as usize,
        milebatch::db::MIGRATIONS.len()
    );
    // Connecting again migrates nothing and keeps the data.
    run_requests::request(&db, "p", "x", None, Utc::now()).unwrap();
    let again = store::connect_postgres(&target, true).unwrap();
    assert_eq!(run_requests::recent(&again, "p", 5).unwrap().len(), 1);
    again
        .execute("UPDATE schema_version SET version = 99", &[])
        .unwrap();
    let e = store::connect_postgres(&target, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schema version 99, newer than this milebatch")
            && e.contains("upgrade milebatch"),
        "{e}"
    );
}

#[test]
fn api_keys_are_created_listed_authenticated_and_revoked_alike() {
    each_engine(|u| {
        let c = &*u.db;
        let a = api_keys::create(c, "shop", "web shop", "cli:ops", None).unwrap();
        let b = api_keys::create(c, "other", "", "cli:ops", None).unwrap();
        assert!(a.key.starts_with(api_keys::KEY_PREFIX));
        assert_eq!(a.key.len(), api_keys::KEY_PREFIX.len() + 40);
        assert_ne!(a.key, b.key);
        let shown = &a.key[..api_keys::KEY_PREFIX.len() + 8];
        assert_eq!(a.info.prefix, shown);
        // Only the hash is stored.
        let secret = &a.key[shown.len()..];
        for r in c
            .query("SELECT sha256, prefix, label FROM api_keys", &[])
            .unwrap()
        {
            for i in 0..3 {
                assert!(!r.text(i).unwrap().contains(secret), "{}", u.name);
            }
        }
        assert_eq!(api_keys::list(c, None).unwrap().len(), 2, "{}", u.name);
        assert_eq!(
            api_keys::list(c, Some("shop")).unwrap(),
            vec![a.info.clone()]
        );
        let who = api_keys::authenticate(c, &a.key).unwrap().unwrap();
        assert_eq!(who.partner, "shop");
        assert!(api_keys::authenticate(c, "mbk_0000").unwrap().is_none());
        assert!(api_keys::authenticate(c, &a.key[..a.key.len() - 1])
            .unwrap()
            .is_none());
        assert!(api_keys::is_live(c, who.key_id).unwrap());
        api_keys::touch(c, who.key_id, "2026-12-03T00:00:00.000Z").unwrap();

        // Another partner cannot revoke it; its own partner can.
        assert!(
            api_keys::revoke(c, &a.info.prefix, Some("other"), "x", None)
                .unwrap()
                .is_none()
        );
        let r = api_keys::revoke(c, &a.info.prefix, Some("shop"), "cli:ops", None)
            .unwrap()
            .unwrap();
        assert!(r.revoked_at.is_some());
        assert_eq!(r.last_used_at.as_deref(), Some("2026-12-03T00:00:00.000Z"));
        assert!(api_keys::authenticate(c, &a.key).unwrap().is_none());
        assert!(!api_keys::is_live(c, who.key_id).unwrap());
        assert!(
            api_keys::revoke(c, &a.info.prefix, None, "x", None)
                .unwrap()
                .is_none(),
            "{}: already revoked",
            u.name
        );
        assert!(api_keys::authenticate(c, &b.key).unwrap().is_some());
        let audited = c
            .query(
                "SELECT detail FROM audit WHERE action IN ('api-key-create', 'api-key-revoke')",
                &[],
            )
            .unwrap();
        assert_eq!(audited.len(), 3, "{}", u.name);
        for r in audited {
            assert!(!r.text(0).unwrap().contains(secret), "{}", u.name);
        }
    });
}

/// `insert_id` (the hot one-row insert: the audit row of every
/// `members/verify`) gives the new row's id on both engines, inside a
/// transaction and out of one, and stray files are remembered per partner
/// and name with their listing entry.
#[test]
fn insert_id_and_strays_behave_alike() {
    each_engine(|u| {
        let db = &*u.db;
        let e = milebatch::audit::Entry {
            actor: "cli:test",
            action: "api-key-create",
            partner: Some("shop"),
            detail: "x",
            client: None,
        };
        let now = Utc::now();
        let a = store::audit::append(db, &e, now).unwrap();
        let b = store::write(db, |d| store::audit::append(d, &e, now)).unwrap();
        assert!(b > a, "{}: {a} then {b}", u.name);
        assert_eq!(
            db.query(
                "SELECT count(*) FROM audit WHERE id IN (?1, ?2)",
                milebatch::store_args![a, b]
            )
            .unwrap()[0]
                .int(0)
                .unwrap(),
            2,
            "{}",
            u.name
        );

        use store::strays;
        let at = "2026-12-04T03:00:00Z";
        assert_eq!(
            strays::reported_at(db, "shop", "r.txt", 5, None).unwrap(),
            None
        );
        strays::record(db, "shop", "r.txt", 5, None, at).unwrap();
        strays::record(db, "shop", "n.txt", 7, Some(1700000000), at).unwrap();
        assert_eq!(
            strays::reported_at(db, "shop", "r.txt", 5, None)
                .unwrap()
                .as_deref(),
            Some(at),
            "{}: a NULL mtime matches a NULL mtime",
            u.name
        );
        assert!(
            strays::reported_at(db, "shop", "n.txt", 7, Some(1700000000))
                .unwrap()
                .is_some()
        );
        assert!(
            strays::reported_at(db, "shop", "n.txt", 8, Some(1700000000))
                .unwrap()
                .is_none()
        );
        assert!(strays::reported_at(db, "shop", "n.txt", 7, None)
            .unwrap()
            .is_none());
        assert!(strays::reported_at(db, "other", "r.txt", 5, None)
            .unwrap()
            .is_none());
        // Changed: recorded again over the old entry.
        strays::record(db, "shop", "r.txt", 6, None, "2026-12-05T03:00:00Z").unwrap();
        assert!(strays::reported_at(db, "shop", "r.txt", 5, None)
            .unwrap()
            .is_none());
        let mut names = strays::names(db, "shop").unwrap();
        names.sort();
        assert_eq!(names, ["n.txt", "r.txt"], "{}", u.name);
        strays::forget(db, "shop", "n.txt").unwrap();
        assert!(
            strays::reported_at(db, "shop", "n.txt", 7, Some(1700000000))
                .unwrap()
                .is_none()
        );
        assert!(strays::reported_at(db, "shop", "r.txt", 6, None)
            .unwrap()
            .is_some());
    });
}

#[test]
fn the_outbox_routes_leases_retries_and_gives_up_alike() {
    use milebatch::store::outbox;
    each_engine(|u| {
        let db = &*u.db;
        let now = Utc::now();
        let t = now.timestamp();
        // Written in a transaction that rolls back: no event.
        let _ = store::write(db, |tx| {
            outbox::enqueue(
                tx,
                "file.refused",
                Some("shop"),
                &serde_json::json!({}),
                now,
            )?;
            Err::<(), StoreError>(StoreError::Decode {
                column: 0,
                wanted: "rollback",
            })
        });
        assert_eq!(count(db, "SELECT count(*) FROM outbox"), 0, "{}", u.name);
        let id = store::write(db, |tx| {
            outbox::enqueue(
                tx,
                "file.refused",
                Some("shop"),
                &serde_json::json!({"file": {"id": 1}}),
                now,
            )
        })
        .unwrap();
        assert!(id.starts_with("evt_") && id.len() == 28, "{id}");
        let ops_only = store::write(db, |tx| {
            outbox::enqueue(tx, "api_key.created", None, &serde_json::json!({}), now)
        })
        .unwrap();
        let new = outbox::unrouted(db, 10).unwrap();
        assert_eq!(
            new.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            vec![id.as_str(), ops_only.as_str()],
            "{}",
            u.name
        );
        assert_eq!(new[0].partner.as_deref(), Some("shop"));
        assert_eq!(new[1].partner, None);
        let routes = [
            outbox::Route {
                channel: "email",
                target: "a@shop.example",
                next_at: t,
                give_up_at: t + 100,
            },
            outbox::Route {
                channel: "webhook",
                target: "https://h.example/",
                next_at: t + 50,
                give_up_at: t + 100,
            },
        ];
        store::write(db, |tx| outbox::route(tx, &id, &routes)).unwrap();
        // Routing twice adds nothing; an event with no route is routed too.
        store::write(db, |tx| outbox::route(tx, &id, &routes)).unwrap();
        store::write(db, |tx| outbox::route(tx, &ops_only, &[])).unwrap();
        assert!(outbox::unrouted(db, 10).unwrap().is_empty());
        assert_eq!(
            outbox::counts(db, now).unwrap(),
            outbox::Counts {
                pending: 2,
                failed: 0,
                unrouted: 0
            }
        );

        // Due now: only the e-mail; the webhook waits for its time.
        let due = outbox::due(db, t, 10).unwrap();
        assert_eq!(due.len(), 1, "{}", u.name);
        // One event's deliveries, whatever is due ahead of it.
        let of = outbox::due_of_event(db, &id, t + 50).unwrap();
        assert_eq!(of.len(), 2, "{}: email and webhook of one event", u.name);
        assert!(of.iter().all(|d| d.event.event_id == id));
        assert!(outbox::due_of_event(db, &ops_only, t + 50)
            .unwrap()
            .is_empty());
        let d = &due[0];
        assert_eq!(
            (d.channel.as_str(), d.event.event_id.as_str()),
            ("email", id.as_str())
        );
        // One lease at a time, from a second connection too.
        assert!(outbox::claim(db, d.id, t, t + 30).unwrap());
        let other = (u.second)();
        assert!(
            !outbox::claim(&*other, d.id, t + 1, t + 31).unwrap(),
            "{}",
            u.name
        );
        assert!(outbox::due(db, t + 1, 10).unwrap().is_empty());
        // The lease runs out: due again, same event id.
        let again = outbox::due(db, t + 31, 10).unwrap();
        assert_eq!(again[0].event.event_id, id);
        // A failed attempt with a retry time, then one with none: failed.
        outbox::attempt_failed(db, d.id, "refused", Some(t + 60)).unwrap();
        assert!(outbox::due(db, t + 59, 10)
            .unwrap()
            .iter()
            .all(|x| x.id != d.id));
        outbox::attempt_failed(db, d.id, "refused again", None).unwrap();
        assert_eq!(
            outbox::counts(db, now).unwrap(),
            outbox::Counts {
                pending: 1,
                failed: 1,
                unrouted: 0
            }
        );
        let unsent = outbox::unsent(db, 10).unwrap();
        let failed = unsent.iter().find(|x| x.state == "failed").unwrap();
        assert_eq!(
            (failed.attempts, failed.last_error.as_deref()),
            (2, Some("refused again"))
        );
        // The webhook is sent.
        let w = outbox::due(db, t + 50, 10).unwrap();
        assert_eq!(w[0].channel, "webhook");
        assert!(outbox::claim(db, w[0].id, t + 50, t + 80).unwrap());
        outbox::sent(db, w[0].id, "2026-12-04T00:00:00Z").unwrap();
        assert_eq!(
            outbox::counts(db, now).unwrap(),
            outbox::Counts {
                pending: 0,
                failed: 1,
                unrouted: 0
            }
        );
        assert!(
            !outbox::claim(db, w[0].id, t + 200, t + 230).unwrap(),
            "a sent delivery is never claimed"
        );
        // Not counted: a failed `notify test`, and a failure older than
        // FAILED_SHOWN (both still listed by `unsent`, the test aside).
        let fail_one = |kind: &str, at: chrono::DateTime<Utc>| {
            let id = store::write(db, |tx| {
                outbox::enqueue(tx, kind, Some("shop"), &serde_json::json!({}), at)
            })
            .unwrap();
            let route = outbox::Route {
                channel: "email",
                target: "a@shop.example",
                next_at: t,
                give_up_at: t,
            };
            store::write(db, |tx| outbox::route(tx, &id, &[route])).unwrap();
            let d = outbox::due_of_event(db, &id, t).unwrap().remove(0);
            outbox::attempt_failed(db, d.id, "gone", None).unwrap();
        };
        fail_one("test", now);
        fail_one("file.refused", now - chrono::TimeDelta::days(8));
        assert_eq!(
            outbox::counts(db, now).unwrap(),
            outbox::Counts {
                pending: 0,
                failed: 1,
                unrouted: 0
            },
            "{}",
            u.name
        );
        let unsent = outbox::unsent(db, 10).unwrap();
        assert_eq!(
            unsent.len(),
            2,
            "{}: the old failure listed, the test not",
            u.name
        );
        assert!(unsent.iter().all(|d| d.kind != "test"));
    });
}
