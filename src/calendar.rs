//! The business-day (営業日) calendar that schedules follow.
//!
//! A day is a **business day** unless it is a Saturday or a Sunday, a
//! national holiday of Japan (国民の祝日, 振替休日 and 国民の休日, as the
//! Cabinet Office publishes them), or one of the operator's own closed days
//! (`[daemon] closed`: yearly `"12-29"` or dated `"2027-05-06"`).
//!
//! What must stay true:
//! - The holiday data comes from the `jpholiday` crate, which computes the
//!   holidays by the rules of the 祝日法 (equinoxes by the usual formula).
//!   The unit test `holiday_data_matches_the_cabinet_office_for_this_year_and_next`
//!   compares it with the Cabinet Office's published lists for the current
//!   year and the next (from the real clock): when a year is missing from
//!   that table the test fails, so stale data fails CI before it moves a
//!   partner's run to the wrong day.
//! - Pure: no I/O, no clock; a [`Calendar`] is built once at config load.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use chrono::{Datelike, NaiveDate, Weekday};
use thiserror::Error;

/// A `[daemon] closed` entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClosedDayError {
    #[error(
        "closed day {text:?} is not a date: write \"MM-DD\" for every year (e.g. \"12-31\") \
         or \"YYYY-MM-DD\" for one day (e.g. \"2027-05-06\")"
    )]
    Malformed { text: String },
    #[error("closed day {text:?} does not exist (month 01-12 and a day that month has)")]
    NoSuchDay { text: String },
}

/// One of the operator's own closed days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClosedDay {
    /// Every year on this month and day (`"12-31"`); `02-29` only in leap years.
    Yearly { month: u32, day: u32 },
    /// Once (`"2027-05-06"`).
    Dated(NaiveDate),
}

impl ClosedDay {
    /// `"MM-DD"` or `"YYYY-MM-DD"` (digits exactly as shown).
    pub fn parse(text: &str) -> Result<ClosedDay, ClosedDayError> {
        let t = text.trim();
        let malformed = || ClosedDayError::Malformed {
            text: text.to_string(),
        };
        let parts: Vec<&str> = t.split('-').collect();
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let missing = || ClosedDayError::NoSuchDay {
            text: text.to_string(),
        };
        match parts[..] {
            [m, d] if digits(m, 2) && digits(d, 2) => {
                let (month, day) = (
                    m.parse().map_err(|_| malformed())?,
                    d.parse().map_err(|_| malformed())?,
                );
                // 2000 is a leap year: 02-29 is a valid yearly day.
                NaiveDate::from_ymd_opt(2000, month, day).ok_or_else(missing)?;
                Ok(ClosedDay::Yearly { month, day })
            }
            [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2) => {
                NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .map(ClosedDay::Dated)
                    .map_err(|_| missing())
            }
            _ => Err(malformed()),
        }
    }

    fn matches(&self, date: NaiveDate) -> bool {
        match *self {
            ClosedDay::Yearly { month, day } => date.month() == month && date.day() == day,
            ClosedDay::Dated(d) => d == date,
        }
    }
}

impl fmt::Display for ClosedDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClosedDay::Yearly { month, day } => write!(f, "{month:02}-{day:02}"),
            ClosedDay::Dated(d) => write!(f, "{d}"),
        }
    }
}

/// Why a day is not a business day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayOff {
    Weekend(Weekday),
    /// A national holiday, by its Japanese name (`元日`, `憲法記念日 振替休日`).
    Holiday(String),
    /// One of `[daemon] closed`.
    Closed(ClosedDay),
}

impl fmt::Display for DayOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DayOff::Weekend(Weekday::Sat) => f.write_str("土曜日"),
            DayOff::Weekend(_) => f.write_str("日曜日"),
            DayOff::Holiday(name) => f.write_str(name),
            DayOff::Closed(c) => write!(f, "closed day {c}"),
        }
    }
}

/// One year's national holidays, in date order.
type YearHolidays = Vec<(NaiveDate, String)>;

/// National holidays by year, computed on first use of each year (the
/// crate's registry is neither `Send` nor cheap to query day by day).
fn with_year<T>(year: i32, f: impl FnOnce(&[(NaiveDate, String)]) -> T) -> T {
    static TABLE: OnceLock<Mutex<BTreeMap<i32, YearHolidays>>> = OnceLock::new();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let days = table.entry(year).or_insert_with(|| {
        // The crate's date arithmetic panics outside chrono's range.
        if (1949..=9999).contains(&year) {
            jpholiday::jpholiday::JPHoliday::new().year_holidays(year)
        } else {
            vec![]
        }
    });
    f(days)
}

/// The national holiday on `date`, by name, if any.
pub fn holiday_name(date: NaiveDate) -> Option<String> {
    with_year(date.year(), |days| {
        days.iter()
            .find(|(d, _)| *d == date)
            .map(|(_, n)| n.clone())
    })
}

/// The national holidays of one year, in date order.
pub fn year_holidays(year: i32) -> Vec<(NaiveDate, String)> {
    with_year(year, <[_]>::to_vec)
}

/// Longest run of closed days searched for a business day. Generous: even
/// 年末年始 with Golden-Week-like closures is under three weeks; an operator
/// who closes more than this has no business day to move a run to.
pub const MAX_SEARCH_DAYS: i64 = 366;

/// Weekends, national holidays and the operator's closed days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    closed: Vec<ClosedDay>,
}

impl Calendar {
    pub fn new(closed: Vec<ClosedDay>) -> Self {
        Calendar { closed }
    }

    /// The operator's closed days, as configured.
    pub fn closed(&self) -> &[ClosedDay] {
        &self.closed
    }

    /// `None` on a business day; otherwise why not (a holiday before the
    /// weekend, so a Sunday holiday is named).
    pub fn day_off(&self, date: NaiveDate) -> Option<DayOff> {
        if let Some(name) = holiday_name(date) {
            return Some(DayOff::Holiday(name));
        }
        if let Some(c) = self.closed.iter().find(|c| c.matches(date)) {
            return Some(DayOff::Closed(*c));
        }
        match date.weekday() {
            w @ (Weekday::Sat | Weekday::Sun) => Some(DayOff::Weekend(w)),
            _ => None,
        }
    }

    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        self.day_off(date).is_none()
    }

    /// The first business day on or after `date`.
    pub fn business_day_on_or_after(&self, date: NaiveDate) -> Option<NaiveDate> {
        date.iter_days()
            .take(MAX_SEARCH_DAYS as usize)
            .find(|d| self.is_business_day(*d))
    }

    /// The last business day on or before `date`.
    pub fn business_day_on_or_before(&self, date: NaiveDate) -> Option<NaiveDate> {
        date.iter_days()
            .rev()
            .take(MAX_SEARCH_DAYS as usize)
            .find(|d| self.is_business_day(*d))
    }

    /// The business days of a month, in order.
    pub fn business_days_of_month(&self, year: i32, month: u32) -> Vec<NaiveDate> {
        let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
            return vec![];
        };
        first
            .iter_days()
            .take_while(|d| d.month() == month)
            .filter(|d| self.is_business_day(*d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    /// The Cabinet Office's lists (内閣府「国民の祝日について」), date and
    /// name; 振替休日 and 国民の休日 are published as "休日". Add next
    /// year's list when the Cabinet Office publishes it (February, with the
    /// equinoxes in the 官報): the test below fails until it is here.
    /// (month, day, name) of one holiday.
    type Published = (u32, u32, &'static str);

    const CABINET_OFFICE: &[(i32, &[Published])] = &[
        (
            2026,
            &[
                (1, 1, "元日"),
                (1, 12, "成人の日"),
                (2, 11, "建国記念の日"),
                (2, 23, "天皇誕生日"),
                (3, 20, "春分の日"),
                (4, 29, "昭和の日"),
                (5, 3, "憲法記念日"),
                (5, 4, "みどりの日"),
                (5, 5, "こどもの日"),
                (5, 6, "休日"),
                (7, 20, "海の日"),
                (8, 11, "山の日"),
                (9, 21, "敬老の日"),
                (9, 22, "休日"),
                (9, 23, "秋分の日"),
                (10, 12, "スポーツの日"),
                (11, 3, "文化の日"),
                (11, 23, "勤労感謝の日"),
            ],
        ),
        (
            2027,
            &[
                (1, 1, "元日"),
                (1, 11, "成人の日"),
                (2, 11, "建国記念の日"),
                (2, 23, "天皇誕生日"),
                (3, 21, "春分の日"),
                (3, 22, "休日"),
                (4, 29, "昭和の日"),
                (5, 3, "憲法記念日"),
                (5, 4, "みどりの日"),
                (5, 5, "こどもの日"),
                (7, 19, "海の日"),
                (8, 11, "山の日"),
                (9, 20, "敬老の日"),
                (9, 23, "秋分の日"),
                (10, 11, "スポーツの日"),
                (11, 3, "文化の日"),
                (11, 23, "勤労感謝の日"),
            ],
        ),
    ];

    fn check_year(year: i32) {
        let Some((_, published)) = CABINET_OFFICE.iter().find(|(y, _)| *y == year) else {
            panic!(
                "no Cabinet Office holiday list for {year} in calendar.rs: check that the \
                 jpholiday crate's {year} agrees with https://www8.cao.go.jp/chosei/shukujitsu/gaiyou.html \
                 (update the crate if not) and add the list to CABINET_OFFICE"
            )
        };
        let want: Vec<(NaiveDate, String)> = published
            .iter()
            .map(|(m, day, n)| (d(year, *m, *day), n.to_string()))
            .collect();
        // The crate names a substitute day "<holiday> 振替休日" and the
        // Cabinet Office "休日"; 国民の休日 likewise.
        let got: Vec<(NaiveDate, String)> = year_holidays(year)
            .into_iter()
            .map(|(date, n)| {
                let n = if n.ends_with("振替休日") || n == "国民の休日" {
                    "休日".to_string()
                } else {
                    n
                };
                (date, n)
            })
            .collect();
        assert_eq!(got, want, "national holidays of {year}");
    }

    #[test]
    fn holiday_data_matches_the_cabinet_office_for_this_year_and_next() {
        let today = chrono::Utc::now()
            .with_timezone(&chrono_tz::Asia::Tokyo)
            .date_naive();
        check_year(today.year());
        // Next year's equinoxes are fixed in the 官報 on February 1st.
        if today.month() >= 2 {
            check_year(today.year() + 1);
        }
        for (year, _) in CABINET_OFFICE {
            check_year(*year);
        }
    }

    #[test]
    fn business_days_around_golden_week_and_new_year() {
        let cal = Calendar::new(
            ["12-29", "12-30", "12-31", "01-02", "01-03", "2027-05-06"]
                .iter()
                .map(|t| ClosedDay::parse(t).unwrap())
                .collect(),
        );
        // 2026: 5/3 Sunday, 5/6 振替休日.
        assert_eq!(
            cal.day_off(d(2026, 5, 6)).unwrap().to_string(),
            "憲法記念日 振替休日"
        );
        assert_eq!(
            cal.business_day_on_or_after(d(2026, 5, 2)),
            Some(d(2026, 5, 7))
        );
        // 2027: Golden Week 4/29 (Thu), 5/3-5/5 and the operator's 5/6.
        assert_eq!(
            cal.business_day_on_or_after(d(2027, 5, 1)),
            Some(d(2027, 5, 7))
        );
        assert_eq!(
            cal.day_off(d(2027, 5, 6)),
            Some(DayOff::Closed(ClosedDay::Dated(d(2027, 5, 6))))
        );
        // 年末年始: 2026-12-29 .. 2027-01-03 and the weekend.
        assert_eq!(
            cal.business_day_on_or_after(d(2026, 12, 29)),
            Some(d(2027, 1, 4))
        );
        assert_eq!(
            cal.business_day_on_or_before(d(2027, 1, 3)),
            Some(d(2026, 12, 28))
        );
        assert_eq!(cal.day_off(d(2027, 1, 1)).unwrap().to_string(), "元日");
        assert_eq!(
            cal.day_off(d(2026, 12, 30)).unwrap().to_string(),
            "closed day 12-30"
        );
        assert_eq!(cal.day_off(d(2027, 1, 9)).unwrap().to_string(), "土曜日");
        // January 2027: 4, 5, 6 are the first three business days.
        assert_eq!(
            cal.business_days_of_month(2027, 1)[..3],
            [d(2027, 1, 4), d(2027, 1, 5), d(2027, 1, 6)]
        );
        // Without closed days, Jan 2027 starts on the 4th too (1st 元日, 2-3 weekend).
        assert_eq!(
            Calendar::default().business_days_of_month(2027, 1)[0],
            d(2027, 1, 4)
        );
    }

    #[test]
    fn closed_day_parsing() {
        assert_eq!(
            ClosedDay::parse("12-31"),
            Ok(ClosedDay::Yearly { month: 12, day: 31 })
        );
        assert_eq!(
            ClosedDay::parse(" 2027-05-06 "),
            Ok(ClosedDay::Dated(d(2027, 5, 6)))
        );
        assert!(ClosedDay::parse("02-29").is_ok());
        for bad in ["12/31", "1-3", "2027-5-6", "", "31-12-2027", "xx-yy"] {
            let e = ClosedDay::parse(bad).unwrap_err();
            assert!(matches!(e, ClosedDayError::Malformed { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("MM-DD"), "{e}");
        }
        for bad in ["13-01", "02-30", "2026-02-29", "00-10"] {
            let e = ClosedDay::parse(bad).unwrap_err();
            assert!(matches!(e, ClosedDayError::NoSuchDay { .. }), "{bad}: {e}");
        }
        assert_eq!(
            ClosedDay::parse("2027-05-06").unwrap().to_string(),
            "2027-05-06"
        );
        assert_eq!(ClosedDay::parse("01-03").unwrap().to_string(), "01-03");
    }
}
