//! The CSV files people open in Excel (the history export and the monthly
//! statement): how their bytes are laid out so that a double-click in
//! Japanese Excel shows the Japanese text.
//!
//! What must stay true:
//! - Excel reads a file without a BOM as CP932: a UTF-8 file for people
//!   always starts with the BOM; a Shift_JIS partner gets CP932 (what
//!   Excel and its own POS read), and when a text cannot be written in
//!   CP932 the whole file is UTF-8 with the BOM instead (never a `?`);
//! - lines end with CRLF;
//! - `Lang::En` is the form for scripts: English headers and stored
//!   values, UTF-8 without a BOM, LF (as before issue 22).

use crate::config::Encoding;

/// Whose column headers and words a file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Japanese headers and words, in the partner's encoding, for Excel.
    Ja,
    /// English headers and stored values, plain UTF-8, for scripts.
    En,
}

impl Lang {
    /// `?lang=en` / `--header en`: English; anything else is Japanese.
    pub fn parse(v: Option<&str>) -> Lang {
        match v {
            Some(v) if v.eq_ignore_ascii_case("en") => Lang::En,
            _ => Lang::Ja,
        }
    }

    /// The CSV writer for this form (CRLF for Excel).
    pub fn writer(self) -> csv::Writer<Vec<u8>> {
        let mut b = csv::WriterBuilder::new();
        if self == Lang::Ja {
            b.terminator(csv::Terminator::CRLF);
        }
        b.from_writer(Vec::new())
    }
}

/// The bytes of `text` for a file of `lang` for a partner reading
/// `encoding`, and the charset to label them with.
pub fn encode(text: &str, lang: Lang, encoding: Encoding) -> (Vec<u8>, &'static str) {
    if lang == Lang::En {
        return (text.as_bytes().to_vec(), "UTF-8");
    }
    if encoding == Encoding::ShiftJis {
        // encoding_rs's Shift_JIS is the WHATWG one: Windows-31J (CP932).
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        if !unmappable {
            return (bytes.into_owned(), "Shift_JIS");
        }
    }
    let mut out = Vec::with_capacity(text.len() + 3);
    out.extend_from_slice(b"\xEF\xBB\xBF");
    out.extend_from_slice(text.as_bytes());
    (out, "UTF-8")
}

/// A time for these files: in the configured zone, with its offset
/// (`2026-11-30 10:00:00 +09:00`); `Lang::En` gives RFC 3339.
pub fn time(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz, lang: Lang) -> String {
    match lang {
        Lang::Ja => t
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        Lang::En => crate::timefmt::rfc3339(t, tz),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excel_gets_a_bom_or_cp932_and_scripts_get_plain_utf8() {
        let (b, cs) = encode("指定キー,マイル\r\n", Lang::Ja, Encoding::Utf8);
        assert_eq!(cs, "UTF-8");
        assert!(b.starts_with(b"\xEF\xBB\xBF"));
        let (b, cs) = encode("指定キー\r\n", Lang::Ja, Encoding::ShiftJis);
        assert_eq!(cs, "Shift_JIS");
        assert_eq!(encoding_rs::SHIFT_JIS.decode(&b).0, "指定キー\r\n");
        // Not in CP932: the whole file becomes UTF-8 with the BOM.
        let (b, cs) = encode("😀\r\n", Lang::Ja, Encoding::ShiftJis);
        assert_eq!(cs, "UTF-8");
        assert_eq!(&b[..3], b"\xEF\xBB\xBF");
        let (b, _) = encode("a,b\n", Lang::En, Encoding::ShiftJis);
        assert_eq!(b, b"a,b\n");
    }

    #[test]
    fn times_carry_the_zone_offset() {
        let t = crate::timefmt::parse_stored("2026-11-30T01:00:00Z").unwrap();
        let tz = chrono_tz::Asia::Tokyo;
        assert_eq!(time(t, tz, Lang::Ja), "2026-11-30 10:00:00 +09:00");
        assert_eq!(time(t, tz, Lang::En), "2026-11-30T10:00:00+09:00");
        assert_eq!(Lang::parse(Some("en")), Lang::En);
        assert_eq!(Lang::parse(None), Lang::Ja);
    }
}
