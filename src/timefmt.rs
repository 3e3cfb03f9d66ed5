//! Times shown to people: the one place that turns a stored time into text
//! for ops, in the configured zone (`[daemon] timezone`).
//!
//! What must stay true:
//! - the database keeps UTC (RFC 3339 text, or unix seconds in the ledger);
//!   conversion happens only here, at the edge;
//! - every time printed for people names its zone, so a reader never has
//!   to guess (`2026-11-24 21:00:05 JST`);
//! - JSON keeps RFC 3339 with an offset ([`rfc3339`]), never this format.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// `2026-11-24 21:00:05 JST`: a time for people, in `tz`.
pub fn for_people(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// A stored RFC 3339 text (as `db::now_text` writes it) for people. Text
/// that does not parse is shown as it is, never dropped.
pub fn stored_for_people(stored: &str, tz: Tz) -> String {
    match parse_stored(stored) {
        Some(t) => for_people(t, tz),
        None => stored.to_owned(),
    }
}

/// Unix seconds (the ledger's `credited_at`) for people.
pub fn unix_for_people(secs: i64, tz: Tz) -> String {
    match Utc.timestamp_opt(secs, 0).single() {
        Some(t) => for_people(t, tz),
        None => secs.to_string(),
    }
}

/// RFC 3339 with the zone's offset, to the second: for JSON.
pub fn rfc3339(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A stored RFC 3339 text as a UTC instant.
pub fn parse_stored(stored: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(stored)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The calendar date of `t` in `tz` (`2026-11-24`), as `files` shows it.
pub fn local_date(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d").to_string()
}

/// The first instant of `date` in `tz` (its local midnight, or the first
/// time that exists that day when a clock change skips midnight).
pub fn start_of_day(date: chrono::NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    // A zone may skip midnight (DST at 00:00): the day starts at the first
    // minute that exists.
    for _ in 0..(24 * 60) {
        if let Some(z) = tz.from_local_datetime(&t).earliest() {
            return z.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(1);
    }
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// The timer of the human (text) log format: RFC 3339 to the millisecond in
/// the configured zone, offset included (`2026-11-24T21:00:05.123+09:00`).
#[derive(Debug, Clone, Copy)]
pub struct LogTimer(pub Tz);

impl tracing_subscriber::fmt::time::FormatTime for LogTimer {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{}",
            Utc::now()
                .with_timezone(&self.0)
                .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_utc_is_shown_in_the_zone_with_its_name() {
        let tz = chrono_tz::Asia::Tokyo;
        assert_eq!(
            stored_for_people("2026-11-24T12:00:05.123Z", tz),
            "2026-11-24 21:00:05 JST"
        );
        assert_eq!(unix_for_people(0, tz), "1970-01-01 09:00:00 JST");
        assert_eq!(stored_for_people("not a time", tz), "not a time");
        let t = parse_stored("2026-11-24T15:30:00Z").unwrap();
        assert_eq!(rfc3339(t, tz), "2026-11-25T00:30:00+09:00");
        assert_eq!(local_date(t, tz), "2026-11-25");
        assert_eq!(
            for_people(t, chrono_tz::Europe::Berlin),
            "2026-11-24 16:30:00 CET"
        );
    }

    #[test]
    fn a_day_starts_at_local_midnight_or_the_first_minute_that_exists() {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert_eq!(
            start_of_day(d, chrono_tz::Asia::Tokyo).to_rfc3339(),
            "2026-11-24T15:00:00+00:00"
        );
        // Santiago skips 00:00-00:59 on 2026-09-06.
        let d = chrono::NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let t = start_of_day(d, chrono_tz::America::Santiago);
        assert_eq!(
            t.with_timezone(&chrono_tz::America::Santiago)
                .format("%H:%M")
                .to_string(),
            "01:00"
        );
    }
}
