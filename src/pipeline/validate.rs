//! Validate: the row rules E001–E007 of the domain brief, the error codes
//! themselves (row codes E…, file codes F…), and whether a first line is a
//! header.
//!
//! E008 (a repeat of an earlier row in the same file) and E010 (a partner
//! key credited before, `unique_partner_key`) are decided by the credit step
//! against the ledger; E009 by decode. A failed row gets exactly one code:
//! the first in table order that applies.
//!
//! What must stay true: codes are a contract with partners. Add, never
//! renumber or reuse.

use std::borrow::Cow;

use crate::db::DbError;
use crate::members::{Found, Lookup, Status};

/// The contract with partners: stable, documented, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Code {
    /// The row does not have exactly 3 columns.
    E001,
    /// Member is empty.
    E002,
    /// Member not found.
    E003,
    /// Member is not active.
    E004,
    /// Partner key empty or longer than 64 characters.
    E005,
    /// Miles not a positive whole number.
    E006,
    /// Miles above the partner's per-row maximum.
    E007,
    /// The same (member, key, miles) appeared earlier in this file.
    E008,
    /// Cannot be decoded in the declared encoding.
    E009,
    /// The partner key was credited before (`unique_partner_key`).
    E010,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::E001,
        Code::E002,
        Code::E003,
        Code::E004,
        Code::E005,
        Code::E006,
        Code::E007,
        Code::E008,
        Code::E009,
        Code::E010,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::E001 => "E001",
            Code::E002 => "E002",
            Code::E003 => "E003",
            Code::E004 => "E004",
            Code::E005 => "E005",
            Code::E006 => "E006",
            Code::E007 => "E007",
            Code::E008 => "E008",
            Code::E009 => "E009",
            Code::E010 => "E010",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a whole file was refused: the code every row of its report carries
/// unless it failed on its own (then it keeps its row code). A contract with
/// partners like [`Code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FileCode {
    /// The same content was credited before.
    F001,
    /// Cannot be read as CSV.
    F002,
    /// No data rows.
    F003,
    /// Its share of failed rows is above `max_error_ratio`.
    F004,
    /// Crediting it would overflow a balance.
    F005,
    /// A re-send: most rows were credited before (`resend_check`).
    F006,
    /// `header = true`, but the first line is a data row.
    F007,
    /// An encrypted file (`[partner.pgp]`) that cannot be decrypted, or
    /// whose signature is missing or bad while `verify_key` is set.
    F008,
}

impl FileCode {
    pub const ALL: [FileCode; 7] = [
        FileCode::F001,
        FileCode::F002,
        FileCode::F003,
        FileCode::F004,
        FileCode::F005,
        FileCode::F006,
        FileCode::F007,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileCode::F001 => "F001",
            FileCode::F002 => "F002",
            FileCode::F003 => "F003",
            FileCode::F004 => "F004",
            FileCode::F005 => "F005",
            FileCode::F006 => "F006",
            FileCode::F007 => "F007",
            FileCode::F008 => "F008",
        }
    }
}

/// Whether a first line's third field makes it a data row: it has a digit
/// in it (ASCII or full-width). Far broader than E006 on purpose: a data row
/// with badly written miles (`5.0`, `+5`, `１２`) must end up in the error
/// report, never be taken for a header and dropped. Header names (`miles`,
/// `マイル`) have no digits.
pub fn is_number(field: &str) -> bool {
    field
        .chars()
        .any(|c| c.is_ascii_digit() || ('０'..='９').contains(&c))
}

/// A partner's row rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_miles_per_row: u64,
    pub allow_duplicate_rows: bool,
}

/// The longest partner key, in characters.
pub const MAX_KEY_CHARS: usize = 64;

/// A row that passed E001–E007.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valid<'a> {
    pub member: i64,
    pub key: Cow<'a, str>,
    pub miles: u64,
}

/// Check one decoded three-column row.
pub fn check<'a>(
    [member, key, miles]: [Cow<'a, str>; 3],
    rules: &Rules,
    lookup: &mut Lookup<'_>,
) -> Result<Result<Valid<'a>, Code>, DbError> {
    if let Err(code) = member_present(&member) {
        return Ok(Err(code));
    }
    let found = lookup.find(&member)?;
    Ok(after_lookup(found, key, &miles, rules))
}

/// Whether `c` is a control character: C0 (U+0000–U+001F, tab, CR and LF
/// included), DEL (U+007F) or C1 (U+0080–U+009F). None is ever part of a
/// member ID, an e-mail or a partner key; each could forge a line of a
/// report or a table, or drive a terminal.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// E009 for text that holds a control character ([`is_control`]): not
/// text, like a byte the encoding does not have. The one rule for both
/// paths: a CSV record with one in any field (`decode::record_decodes`)
/// and an API exchange with one in `member` or `partner_key`.
pub fn text_clean(fields: &[&str]) -> Result<(), Code> {
    if fields.iter().any(|f| f.chars().any(is_control)) {
        Err(Code::E009)
    } else {
        Ok(())
    }
}

/// E002, the one rule checked before the member lookup.
pub fn member_present(member: &str) -> Result<(), Code> {
    if member.trim().is_empty() {
        Err(Code::E002)
    } else {
        Ok(())
    }
}

/// E003–E007, given the lookup of a present member: [`check`] split in two
/// so that a batch can do its lookups in index order.
pub fn after_lookup<'a>(
    found: Option<Found>,
    key: Cow<'a, str>,
    miles: &str,
    rules: &Rules,
) -> Result<Valid<'a>, Code> {
    let found = found.ok_or(Code::E003)?;
    if found.status != Status::Active {
        return Err(Code::E004);
    }
    let key = trim_cow(key);
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(Code::E005);
    }
    let miles = match parse_miles(miles) {
        Miles::Bad => return Err(Code::E006),
        Miles::TooBig => return Err(Code::E007),
        Miles::Ok(m) if m > rules.max_miles_per_row => return Err(Code::E007),
        Miles::Ok(m) => m,
    };
    Ok(Valid {
        member: found.id,
        key,
        miles,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Miles {
    Ok(u64),
    /// Not ASCII digits only, or zero.
    Bad,
    /// Digits only and positive, but beyond any integer: above every maximum.
    TooBig,
}

/// ASCII digits only: no sign, no decimal point, no spaces, no full-width
/// digits; and not zero.
fn parse_miles(s: &str) -> Miles {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Miles::Bad;
    }
    match s.parse::<u64>() {
        Ok(0) => Miles::Bad,
        Ok(m) => Miles::Ok(m),
        Err(_) if s.bytes().any(|b| b != b'0') => Miles::TooBig,
        Err(_) => Miles::Bad,
    }
}

fn trim_cow(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) if o.trim().len() == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_field_with_a_digit_is_data() {
        for data in [
            "5",
            " 5",
            "5.0",
            "+5",
            "-1",
            "１２",
            "0",
            "99999999999999999999",
        ] {
            assert!(is_number(data), "{data:?}");
        }
        for header in ["miles", "マイル", "", "points "] {
            assert!(!is_number(header), "{header:?}");
        }
    }

    #[test]
    fn control_characters_are_not_text() {
        for bad in [
            "a\0b", "a\tb", "a\r\nb", "\x1b[31m", "a\x7f", "a\u{85}", "a\u{9b}",
        ] {
            assert_eq!(text_clean(&["ok", bad]), Err(Code::E009), "{bad:?}");
        }
        for good in ["NM0000000001", "taro@example.jp", "鍵 1", "a\u{a0}b", "①㈱"] {
            assert_eq!(text_clean(&[good, good]), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn miles_rules() {
        assert_eq!(parse_miles("5"), Miles::Ok(5));
        assert_eq!(parse_miles("007"), Miles::Ok(7));
        for bad in [
            "", "0", "000", "+5", "-1", "5.0", " 5", "5 ", "１２", "1e3", "0x10",
        ] {
            assert_eq!(parse_miles(bad), Miles::Bad, "{bad:?}");
        }
        assert_eq!(parse_miles("99999999999999999999"), Miles::TooBig);
        assert_eq!(parse_miles("18446744073709551615"), Miles::Ok(u64::MAX));
    }

    #[test]
    fn one_code_in_table_order() {
        let d = tempfile::tempdir().unwrap();
        let mut c = crate::db::open(&d.path().join("m.db")).unwrap();
        crate::members::import_from(
            &mut c,
            "A1,a@x.jp,active\nS1,s@x.jp,suspended\n".as_bytes(),
            "m",
        )
        .unwrap();
        let mut l = Lookup::new(&c).unwrap();
        let rules = Rules {
            max_miles_per_row: 1000,
            allow_duplicate_rows: false,
        };
        let mut run = |m: &str, k: &str, n: &str| {
            check([m.into(), k.into(), n.into()], &rules, &mut l)
                .unwrap()
                .map(|v| (v.member, v.key.into_owned(), v.miles))
        };
        assert!(run("A1", " k1 ", "10").unwrap().1 == "k1");
        assert_eq!(run(" ", "k", "x").unwrap_err(), Code::E002);
        assert_eq!(run("nobody", "", "x").unwrap_err(), Code::E003);
        assert_eq!(run("S@X.JP", "", "x").unwrap_err(), Code::E004);
        assert_eq!(run("A1", "", "x").unwrap_err(), Code::E005);
        assert_eq!(run("A1", &"k".repeat(65), "1").unwrap_err(), Code::E005);
        assert!(
            run("A1", &"鍵".repeat(64), "1").is_ok(),
            "64 characters, not bytes"
        );
        assert_eq!(run("a@x.jp", "k", "5.0").unwrap_err(), Code::E006);
        assert_eq!(run("a@x.jp", "k", "1001").unwrap_err(), Code::E007);
        assert_eq!(run("a@x.jp", "k", "1000").unwrap().2, 1000);
    }
}
