//! Text the CLI prints in its tables: partner keys, member IDs, file
//! names, labels, e-mails and reasons came from partners, members or
//! people, and a terminal must show them, never obey them.
//!
//! What must stay true: every cell of every CLI table that holds text
//! from outside goes through [`cell`], so that one printed row is one line
//! with exactly its columns:
//! - control characters (C0 with tab, CR and LF; DEL; C1) and the Unicode
//!   bidirectional controls are written as `\t`, `\n`, `\r` or `\u{..}`: a
//!   CR/LF cannot forge a row, a tab a column, an escape sequence cannot
//!   colour or clear the operator's terminal, a bidi override cannot
//!   reorder what is shown;
//! - a backslash is written `\\`, so the escaped form is unambiguous;
//! - anything else (Japanese text included) is printed as it is.
//!
//! `--json` output needs none of this: JSON escapes control characters.

use std::borrow::Cow;

/// Whether `c` is printed escaped.
fn escaped(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` as one table cell: see the module's rules.
pub fn cell(s: &str) -> Cow<'_, str> {
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if escaped(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_not_obeyed() {
        assert_eq!(cell("K-1 髙橋①"), "K-1 髙橋①");
        assert!(matches!(cell("plain"), Cow::Borrowed(_)));
        assert_eq!(cell("a\tb\r\nc"), "a\\tb\\r\\nc");
        assert_eq!(cell("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(
            cell("a\0b\u{7f}\u{85}\u{9b}"),
            "a\\u{0}b\\u{7f}\\u{85}\\u{9b}"
        );
        assert_eq!(cell("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(cell("C:\\x"), "C:\\\\x");
        // The escaped form is one line with no tab, whatever came in.
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        let shown = cell(&all);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
    }
}
