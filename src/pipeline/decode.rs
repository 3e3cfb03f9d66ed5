//! Decode: a record's bytes into text, in the partner's declared encoding.
//!
//! A record that does not decode cleanly is E009 (no replacement characters:
//! a guessed character could credit the wrong member). Control characters
//! (NUL, tab, CR/LF inside quotes, ESC, DEL, C1: `validate::is_control`)
//! are not text in any encoding we accept, so they are E009 too, as they
//! are in an API exchange's `member` or `partner_key`.

use std::borrow::Cow;

use crate::config::Encoding;

use super::parse::Record;

/// Whether the whole record decodes. Checked on the raw bytes once: since
/// `,` `"` and line ends never sit inside a multi-byte character, every field
/// of a clean record decodes too.
pub fn record_decodes(raw: &[u8], enc: Encoding) -> bool {
    // The ASCII controls, on the bytes: they are the same bytes in both
    // encodings and never the trail byte of a Shift_JIS character.
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return false;
    }
    let no_c1 = |s: &str| !s.chars().any(super::validate::is_control);
    match enc {
        Encoding::Utf8 => std::str::from_utf8(raw).is_ok_and(no_c1),
        Encoding::ShiftJis => raw.is_ascii() || decode(raw, enc).is_some_and(|s| no_c1(&s)),
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
        // Control characters are not text in either encoding.
        for enc in [Encoding::Utf8, Encoding::ShiftJis] {
            for bad in [
                &b"a\tb,k,1"[..],
                b"a,k\x1b[31m,1",
                b"a,\"k\r\nx\",1",
                b"a,k\x7f,1",
            ] {
                assert!(!record_decodes(bad, enc), "{bad:?} {enc:?}");
            }
        }
        assert!(!record_decodes("a,k\u{85},1".as_bytes(), Encoding::Utf8));
        // CP932's 0x80 is U+0080, a C1 control.
        assert!(!record_decodes(b"a,k\x80,1", Encoding::ShiftJis));
    }
}
