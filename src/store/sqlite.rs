//! The SQLite engine behind [`Exec`]: an open `rusqlite::Connection` (a
//! `Transaction` derefs to one), so the code that still passes a
//! connection around calls moved concerns unchanged.
//!
//! What must stay true: statements go through the connection's prepared
//! statement cache (the API writes an audit row per call), and opening,
//! pragmas and migrations stay in `crate::db`.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::{Cell, Engine, Exec, Row, StoreError, Value};

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

fn cell(v: ValueRef<'_>) -> Cell {
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Real(f),
        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
    }
}

impl Exec for Connection {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(n as u64)
    }

    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.prepare_cached(sql)?;
        let width = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(cell(r.get_ref(i)?));
            }
            out.push(Row(cells));
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }

    fn for_each(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.prepare(sql)?;
        let width = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(cell(r.get_ref(i)?));
            }
            f(Row(cells))?;
        }
        Ok(())
    }

    fn insert_id(&self, sql: &str, args: &[Value<'_>]) -> Result<i64, StoreError> {
        self.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(self.last_insert_rowid())
    }

    fn lock(&self, _scope: &str) -> Result<(), StoreError> {
        // BEGIN IMMEDIATE (crate::store::write) holds the one write lock.
        Ok(())
    }
}
