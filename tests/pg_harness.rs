//! The PostgreSQL test harness proves itself (tests/common/pg.rs): a
//! throw-away cluster, a fresh database per test, and a synchronous
//! standby that has every committed write and takes writes once the
//! primary is killed and it is promoted.

mod common;

use common::pg::{self, PgCluster};

#[test]
fn a_fresh_database_per_test_with_its_own_login() {
    let c = pg::shared();
    let a = c.fresh_db();
    let b = c.fresh_db();
    assert_ne!(a.name, b.name);
    c.psql(&a.name, "CREATE TABLE t(x BIGINT)");
    assert_eq!(
        c.psql(
            &b.name,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0",
        "databases are separate"
    );
    // The login role reaches its database over TCP with its password only.
    let ok = postgres::Config::new()
        .host("127.0.0.1")
        .port(a.port)
        .user(&a.user)
        .dbname(&a.name)
        .password(pg::PASSWORD)
        .connect(postgres::NoTls);
    assert!(ok.is_ok(), "{:?}", ok.err());
    let wrong = postgres::Config::new()
        .host("127.0.0.1")
        .port(a.port)
        .user(&a.user)
        .dbname(&a.name)
        .password("wrong")
        .connect(postgres::NoTls);
    assert!(wrong.is_err(), "a wrong password is refused");
}

#[test]
fn a_synchronous_standby_has_every_commit_and_takes_over_after_sigkill_and_promote() {
    let primary = PgCluster::start();
    let standby = primary.add_sync_standby();
    primary.psql("postgres", "CREATE TABLE t(x BIGINT)");
    primary.psql("postgres", "INSERT INTO t VALUES (1), (2)");
    assert_eq!(
        primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication"),
        "sync"
    );
    // Synchronous: the commit above returned only once the standby had it
    // (remote_flush); it becomes visible there as soon as it is replayed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while standby.psql("postgres", "SELECT coalesce(sum(x), 0) FROM t") != "3" {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached the standby"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    primary.kill();
    assert!(
        std::process::Command::new(format!("{}/pg_isready", pg::BIN))
            .args(["-q", "-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .status()
            .is_ok_and(|s| !s.success()),
        "the primary is gone"
    );
    standby.promote();
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    standby.psql("postgres", "INSERT INTO t VALUES (4)");
    assert_eq!(standby.psql("postgres", "SELECT sum(x) FROM t"), "7");
}
