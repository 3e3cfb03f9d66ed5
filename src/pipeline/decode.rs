//! Decode: a record's bytes into text, in the partner's declared encoding.
//!
//! A record that does not decode cleanly is E009 (no replacement characters:
//! a guessed character could credit the wrong member). NUL bytes are not text
//! in any encoding we accept, so they are E009 too.

use std::borrow::Cow;

use crate::config::Encoding;

use super::parse::Record;

/// Whether the whole record decodes. Checked on the raw bytes once: since
/// `,` `"` and line ends never sit inside a multi-byte character, every field
/// of a clean record decodes too.
pub fn record_decodes(raw: &[u8], enc: Encoding) -> bool {
    if raw.contains(&0) {
        return false;
    }
    match enc {
        Encoding::Utf8 => std::str::from_utf8(raw).is_ok(),
        Encoding::ShiftJis => raw.is_ascii() || decode(raw, enc).is_some(),
    }
}

/// One field as text (`None` if it does not decode).
pub fn decode(bytes: &[u8], enc: Encoding) -> Option<Cow<'_, str>> {
    match enc {
        Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
        Encoding::ShiftJis => {
            if bytes.is_ascii() {
                // ASCII is ASCII in CP932; skip the decoder for the common case.
                return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
            }
            encoding_rs::SHIFT_JIS.decode_without_bom_handling_and_without_replacement(bytes)
        }
    }
}

/// The three fields of a clean three-column record, as text.
pub fn three_fields<'a>(rec: &Record<'a>, enc: Encoding) -> Option<[Cow<'a, str>; 3]> {
    if rec.len() != 3 {
        return None;
    }
    Some([
        decode(rec.field(0), enc)?,
        decode(rec.field(1), enc)?,
        decode(rec.field(2), enc)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_jis_is_cp932() {
        // 髙 (IBM extension) and ① (NEC special) are CP932, not JIS X 0208.
        let (bytes, _, bad) = encoding_rs::SHIFT_JIS.encode("髙橋①㈱");
        assert!(!bad);
        assert_eq!(decode(&bytes, Encoding::ShiftJis).unwrap(), "髙橋①㈱");
    }

    #[test]
    fn bad_bytes_are_not_replaced() {
        assert!(
            decode(b"\x82", Encoding::ShiftJis).is_none(),
            "truncated lead byte"
        );
        assert!(decode(b"\xff\xfe", Encoding::Utf8).is_none());
        assert!(!record_decodes(b"a\0b,k,1", Encoding::Utf8));
        assert!(record_decodes("名前,k,1".as_bytes(), Encoding::Utf8));
        // A lead byte followed by a byte that cannot trail it.
        assert!(!record_decodes(b"\x81\x20,k,1", Encoding::ShiftJis));
        assert!(!record_decodes(b"\xa0x,k,1", Encoding::Utf8));
    }
}
