//! [`Conn`]: a writer's connection to whichever engine `[daemon] database`
//! names, for the code paths that run on both (the pipeline first). It is
//! an [`Exec`] by delegation; code that must differ per engine (a file's
//! bulk credit) matches on it.
//!
//! What must stay true: [`open`] is the one place a writer opens the
//! database by its configured location: SQLite through `crate::db::open`
//! (created and migrated), PostgreSQL through [`super::connect_postgres`]
//! (the writable primary, migrated).

use super::{Database, Engine, Exec, PgConn, Row, StoreError, Value};

pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

/// Open the database `store` names for writing.
pub fn open(store: &Database) -> Result<Conn, crate::db::DbError> {
    Ok(match store {
        Database::Sqlite(path) => Conn::Sqlite(crate::db::open(path)?),
        Database::Postgres(t) => Conn::Postgres(Box::new(super::connect_postgres(t, true)?)),
    })
}

impl Conn {
    fn exec(&self) -> &dyn Exec {
        match self {
            Conn::Sqlite(c) => c,
            Conn::Postgres(c) => &**c,
        }
    }
}

impl Exec for Conn {
    fn engine(&self) -> Engine {
        self.exec().engine()
    }
    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        self.exec().execute(sql, args)
    }
    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        self.exec().query(sql, args)
    }
    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.exec().batch(sql)
    }
    fn for_each(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.exec().for_each(sql, args, f)
    }
    fn lock(&self, scope: &str) -> Result<(), StoreError> {
        self.exec().lock(scope)
    }
    fn insert_id(&self, sql: &str, args: &[Value<'_>]) -> Result<i64, StoreError> {
        self.exec().insert_id(sql, args)
    }
}
