//! The engine-neutral pieces of a statement: parameters ([`Value`]), result
//! rows ([`Row`]) and the one placeholder translation.
//!
//! What must stay true:
//! - SQL text in `src/store/` is written once, in SQLite's `?N` form, and
//!   [`to_postgres`] is the only place that rewrites it (to `$N`); text
//!   inside quotes is never touched.
//! - Integers are `i64` on both engines (PostgreSQL columns are `BIGINT`),
//!   so a value reads back as the same number from either.

use std::borrow::Cow;

use super::StoreError;

/// One statement parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `args![a, b, …]`: a statement's parameters, as `&[Value]`.
#[macro_export]
macro_rules! store_args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::Value::from($v)),*][..]
    };
}

/// One value of a result row, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One result row, read the same way from either engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0.get(i).ok_or_else(|| StoreError::Decode {
            column: i,
            wanted: "a column",
        })
    }

    /// Column `i` as an integer (NULL is an error).
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or(StoreError::Decode {
            column: i,
            wanted: "an integer, not NULL",
        })
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            _ => Err(StoreError::Decode {
                column: i,
                wanted: "an integer",
            }),
        }
    }

    /// Column `i` as a float (an integer is taken too: SQLite may hand a
    /// whole number of a REAL column back as one).
    pub fn opt_real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Real(v) => Ok(Some(*v)),
            Cell::Int(v) => Ok(Some(*v as f64)),
            _ => Err(StoreError::Decode {
                column: i,
                wanted: "a number",
            }),
        }
    }

    /// Column `i` as text (NULL is an error).
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or(StoreError::Decode {
            column: i,
            wanted: "text, not NULL",
        })
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            _ => Err(StoreError::Decode {
                column: i,
                wanted: "text",
            }),
        }
    }
}

/// The statement for PostgreSQL: `?N` → `$N`. Quoted text ('…', "…") is
/// copied as is. A bare `?` (SQLite's "next parameter") is refused by a
/// debug assertion: numbered placeholders only, so one text fits both.
pub fn to_postgres(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                debug_assert!(
                    chars.peek().is_some_and(char::is_ascii_digit),
                    "numbered placeholders only: {sql}"
                );
                out.push('$');
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_and_quotes_are_left_alone() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?\" = $12"
        );
        assert!(matches!(to_postgres("SELECT 1"), Cow::Borrowed(_)));
        // A doubled quote inside a literal closes and reopens it: still quoted.
        assert_eq!(
            to_postgres("SELECT 'it''s ?1', ?1"),
            "SELECT 'it''s ?1', $1"
        );
    }

    #[test]
    fn rows_read_what_they_hold_and_say_what_they_wanted() {
        let r = Row(vec![Cell::Int(7), Cell::Null, Cell::Text("x".into())]);
        assert_eq!(r.int(0).unwrap(), 7);
        assert_eq!(r.opt_int(1).unwrap(), None);
        assert_eq!(r.text(2).unwrap(), "x");
        let e = r.int(1).unwrap_err().to_string();
        assert!(e.contains("column 1") && e.contains("not NULL"), "{e}");
        assert!(r.text(0).is_err());
        assert!(r.int(9).is_err());
    }

    #[test]
    fn options_become_null() {
        let none: Option<&str> = None;
        assert_eq!(Value::from(none), Value::Null);
        assert_eq!(Value::from(Some(3i64)), Value::Int(3));
    }
}
