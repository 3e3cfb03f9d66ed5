//! Partner schedules: parsing, next-occurrence computation in a partner's
//! time zone, the catch-up decision at startup, and a clock abstraction for
//! the daemon loop.
//!
//! Everything except [`sleep_until`] is pure: no I/O, no global state; the
//! current time always comes in as an argument or through a [`Clock`].
//!
//! # Accepted schedule texts
//!
//! | text                   | meaning                                                    |
//! |------------------------|------------------------------------------------------------|
//! | `daily HH:MM`          | every day at HH:MM wall-clock time                          |
//! | `weekly DOW HH:MM`     | DOW = `mon`..`sun` or `monday`..`sunday`, any case          |
//! | `monthly D HH:MM`      | D = `1`..`31` or `last`; see month-end rule below           |
//! | `monthly business-day N HH:MM` | the Nth business day (営業日) of the month, N = 1..23 |
//! | `monthly last business-day HH:MM` | the last business day of the month              |
//! | `daily business-days HH:MM` | every business day                                    |
//! | cron expression        | 5 fields `min hour dom month dow`, or 6 with seconds first |
//!
//! The same forms in Japanese (see [`japanese`]): `毎日 03:00`,
//! `毎週月曜 04:00`, `毎月1日 03:00`, `毎月末日 03:00`, `毎月第3営業日 09:00`,
//! `毎月最終営業日 23:00`, `毎営業日 03:00`.
//!
//! Business days come from a [`Calendar`] (weekends, national holidays, the
//! operator's closed days). A month with fewer than N business days fires
//! on its last business day (as `monthly 31` fires on the last day).
//!
//! # Closed days: `on_holiday`
//!
//! [`Plan`] applies a partner's [`OnHoliday`] to any form: an occurrence on
//! a closed day runs as is (`run`, the default), moves to the next or the
//! previous business day at the same wall time (`next`, `previous`), or is
//! dropped (`skip`). Occurrences that land on the same instant after a move
//! fire **once** (daily + `next`: Saturday's, Sunday's and Monday's runs are
//! one Monday run), reported as moved only when no unmoved occurrence is
//! there, and then from the earliest original day.
//!
//! Keywords are case-insensitive; HH is `0`..`23` (one or two digits), MM is
//! exactly two digits `00`..`59`. Cron expressions are parsed by `croner` 3
//! with standard (Vixie) semantics: `dow` 0 and 7 are Sunday, and when both
//! `dom` and `dow` are restricted a day matches if **either** matches. The
//! croner extensions `L`, `W`, `#` and the `+` (dom AND dow) prefix are also
//! accepted; `@daily`-style nicknames and 7-field (year) patterns are not. A
//! cron expression that can never fire (e.g. `0 0 30 2 *`) is rejected.
//!
//! # Time rules (all computed in the wall-clock time of the partner's zone)
//!
//! * **Month end:** `monthly D` in a month that has no day D fires on the
//!   **last day of that month** (`monthly 31` → Feb 28/29, Apr 30, ...).
//!   A partner paid monthly must never be skipped in a short month.
//!   `monthly last` is always the last day of the month.
//! * **Spring-forward gap:** a wall time that does not exist that day (e.g.
//!   02:30 in America/New_York on 2026-03-08) fires **once, at the instant the
//!   clock jumps** (07:00 UTC = 03:00 EDT), i.e. at the first instant after the
//!   gap. The job is never skipped for the day.
//! * **Fall-back overlap:** a wall time that occurs twice fires **once, at its
//!   first occurrence** (the earlier UTC instant, still in summer time).
//!
//! Both rules are one rule: *an occurrence at wall time `t` fires at the first
//! instant at which the local clock reads `t` or later*. Consequently every
//! wall-clock occurrence fires at most once, and two occurrences that map to
//! the same instant (e.g. cron `0 2,3 * * *` on a spring-forward day) fire
//! once. This applies to cron expressions too: in the repeated hour of a
//! fall-back night, `*/15 * * * *` fires only during the first pass.
//!
//! # Catch-up
//!
//! See [`Schedule::due_at_startup`]: like systemd's `Persistent=true`, a job
//! whose occurrence(s) passed while the daemon was down runs **once** at
//! startup, never once per missed occurrence.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use thiserror::Error;
use tokio::sync::watch;

use crate::calendar::{Calendar, DayOff, MAX_SEARCH_DAYS};

pub mod japanese;

/// Human-readable list of accepted forms, quoted in parse errors.
const ACCEPTED: &str = "accepted forms: \"daily HH:MM\", \"weekly DOW HH:MM\" \
(DOW = mon..sun or monday..sunday), \"monthly D HH:MM\" (D = 1-31 or last), \
\"monthly business-day N HH:MM\" (N = 1-23), \"monthly last business-day HH:MM\", \
\"daily business-days HH:MM\", the Japanese forms \"毎日 HH:MM\", \"毎週月曜 HH:MM\", \
\"毎月1日 HH:MM\", \"毎月末日 HH:MM\", \"毎月第3営業日 HH:MM\", \"毎月最終営業日 HH:MM\", \
\"毎営業日 HH:MM\", or a cron expression with 5 fields \"min hour dom month dow\" \
or 6 fields \"sec min hour dom month dow\"";

/// Why a schedule text was rejected. Every message quotes the offending text
/// and says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// Empty or whitespace-only text.
    #[error("empty schedule; {}", ACCEPTED)]
    Empty,
    /// `HH:MM` part out of range or malformed.
    #[error(
        "invalid time {time:?} in schedule {text:?}: expected HH:MM with HH 00-23 and MM 00-59"
    )]
    BadTime { text: String, time: String },
    /// Unknown weekday in a `weekly` schedule.
    #[error(
        "invalid weekday {weekday:?} in schedule {text:?}: expected mon, tue, wed, thu, fri, \
         sat, sun or the full English name (any case)"
    )]
    BadWeekday { text: String, weekday: String },
    /// Day of month outside 1-31 and not `last`.
    #[error("invalid day of month {day:?} in schedule {text:?}: expected 1-31 or \"last\"")]
    BadDayOfMonth { text: String, day: String },
    /// `daily`/`weekly`/`monthly` with the wrong number of words.
    #[error("malformed schedule {text:?}; {}", ACCEPTED)]
    Malformed { text: String },
    /// Not one of the keywords and not a valid 5/6-field cron expression.
    #[error(
        "invalid cron expression {text:?}: {reason}; expected 5 fields \"min hour dom month dow\" \
         or 6 fields \"sec min hour dom month dow\" (or daily/weekly/monthly forms)"
    )]
    BadCron { text: String, reason: String },
    /// Nth business day outside 1-23.
    #[error(
        "invalid business day {nth:?} in schedule {text:?}: expected 1-23 (a month has at \
         most 23 business days) or \"monthly last business-day HH:MM\""
    )]
    BadBusinessDay { text: String, nth: String },
    /// None of the forms: not a keyword form and not shaped like cron.
    #[error("cannot read schedule {text:?}; {accepted}. Closest to what was written: {closest:?}")]
    Unreadable {
        text: String,
        accepted: &'static str,
        closest: String,
    },
    /// A syntactically valid cron expression that matches no date at all.
    #[error("cron expression {text:?} never fires (no date matches it, e.g. 30 February)")]
    NeverFires { text: String },
}

/// Day selector of a `monthly` schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MonthDay {
    /// Day 1..=31; in months without that day, the last day of the month.
    Day(u8),
    /// The last day of every month.
    Last,
}

/// Day selector of a `monthly ... business-day` schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusinessDay {
    /// The Nth business day (1..=23); in a month with fewer, the last one.
    Nth(u8),
    /// The last business day of the month.
    Last,
}

/// A validated cron expression together with its (whitespace-normalised)
/// source text, which is what [`fmt::Display`] prints.
#[derive(Debug, Clone, PartialEq)]
pub struct CronExpr {
    text: String,
    // Boxed: a parsed croner pattern is ~300 bytes, the other variants ~16.
    cron: Box<Cron>,
}

impl CronExpr {
    /// The expression as written (fields joined by single spaces).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// When a partner's job fires. Parse with [`Schedule::parse`] (or `str::parse`);
/// `Display` gives back the canonical text, which parses to an equal value.
///
/// The `at` times of the keyword forms are whole minutes when parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `daily HH:MM`
    Daily { at: NaiveTime },
    /// `weekly DOW HH:MM`
    Weekly { weekday: Weekday, at: NaiveTime },
    /// `monthly D HH:MM` / `monthly last HH:MM`
    Monthly { day: MonthDay, at: NaiveTime },
    /// `daily business-days HH:MM`
    DailyBusinessDays { at: NaiveTime },
    /// `monthly business-day N HH:MM` / `monthly last business-day HH:MM`
    MonthlyBusinessDay { day: BusinessDay, at: NaiveTime },
    /// Raw 5- or 6-field cron expression.
    Cron(CronExpr),
}

/// Upper bound on candidates examined by [`Schedule::next_after`]; only the
/// occurrences inside one repeated (fall-back) hour are ever skipped, so this
/// is never reached by a real schedule.
const MAX_CANDIDATES: usize = 200_000;

impl Schedule {
    /// Parse a schedule text (see the module docs for the grammar).
    pub fn parse(s: &str) -> Result<Schedule, ScheduleError> {
        let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let tokens: Vec<&str> = text.split(' ').filter(|t| !t.is_empty()).collect();
        let Some(first) = tokens.first() else {
            return Err(ScheduleError::Empty);
        };
        let malformed = || ScheduleError::Malformed { text: text.clone() };
        if !first.is_ascii() {
            return japanese::parse(&text);
        }
        let lower: Vec<String> = tokens.iter().map(|t| t.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        match lower[..] {
            ["daily", "business-days", _] => {
                return Ok(Schedule::DailyBusinessDays {
                    at: parse_hhmm(&text, tokens[2])?,
                })
            }
            ["monthly", "last", "business-day", _] => {
                return Ok(Schedule::MonthlyBusinessDay {
                    day: BusinessDay::Last,
                    at: parse_hhmm(&text, tokens[3])?,
                })
            }
            ["monthly", "business-day", nth, _] => {
                return Ok(Schedule::MonthlyBusinessDay {
                    day: parse_business_day(&text, nth)?,
                    at: parse_hhmm(&text, tokens[3])?,
                })
            }
            _ => {}
        }
        match lower[0] {
            "daily" => match tokens[1..] {
                [time] => Ok(Schedule::Daily {
                    at: parse_hhmm(&text, time)?,
                }),
                _ => Err(malformed()),
            },
            "weekly" => match tokens[1..] {
                [weekday, time] => Ok(Schedule::Weekly {
                    weekday: parse_weekday(&text, weekday)?,
                    at: parse_hhmm(&text, time)?,
                }),
                _ => Err(malformed()),
            },
            "monthly" => match tokens[1..] {
                [day, time] => Ok(Schedule::Monthly {
                    day: parse_month_day(&text, day)?,
                    at: parse_hhmm(&text, time)?,
                }),
                _ => Err(malformed()),
            },
            _ if !looks_like_cron(&text) => Err(japanese::unreadable(&text)),
            _ => parse_cron(&text, tokens.len()).map(Schedule::Cron),
        }
    }

    /// [`Self::next_after_in`] on the national calendar alone (weekends and
    /// national holidays, no operator closed days). The daemon and `check`
    /// go through [`Plan`], which has the configured calendar.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.next_after_in(after, tz, &Calendar::default())
    }

    /// The first occurrence **strictly after** `after`, computed in the wall
    /// clock of `tz` (month-end and DST rules in the module docs); the
    /// business-day forms follow `cal`. `None` only if there is no further
    /// occurrence representable by chrono/croner.
    pub fn next_after_in(
        &self,
        after: DateTime<Utc>,
        tz: Tz,
        cal: &Calendar,
    ) -> Option<DateTime<Utc>> {
        // Occurrences are whole seconds, so searching from the floor of the
        // local reading loses nothing; candidates that resolve to <= `after`
        // (only possible inside a repeated fall-back hour) are skipped.
        let mut cursor = after.with_timezone(&tz).naive_local().with_nanosecond(0)?;
        for _ in 0..MAX_CANDIDATES {
            let candidate = self.next_local_after(cursor, cal)?;
            let instant = resolve_local(tz, candidate)?;
            if instant > after {
                return Some(instant);
            }
            cursor = candidate;
        }
        None
    }

    /// The next `n` occurrences strictly after `after`, strictly increasing.
    /// Shorter than `n` only if the schedule runs out (see [`Self::next_after`]).
    pub fn upcoming(&self, after: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor, tz) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }

    /// Catch-up decision at daemon start (systemd `Persistent=true` semantics):
    /// `true` iff at least one occurrence fell in `(last_run, now]`. However
    /// many occurrences were missed, the caller runs the job **once** and
    /// records the run time as the new `last_run`, after which this returns
    /// `false` until the next occurrence passes.
    ///
    /// `last_run` is the time of the last successful run (from the DB). A
    /// failed run should not update it, so it is retried at the next start.
    ///
    /// `last_run == None` (never run) returns **`false`**: a brand-new
    /// partner must not fire the moment the daemon first starts (its data may
    /// not be there yet, and operators add partners ahead of their first
    /// date); it waits for its first scheduled occurrence. If `last_run` is
    /// after `now` (the clock went backwards) this is `false` as well.
    pub fn due_at_startup(
        &self,
        last_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> bool {
        match last_run {
            None => false,
            Some(last) => self.next_after(last, tz).is_some_and(|t| t <= now),
        }
    }

    /// First occurrence in local wall-clock terms strictly after `t`
    /// (ignores DST; resolution to an instant is done by [`resolve_local`]).
    fn next_local_after(&self, t: NaiveDateTime, cal: &Calendar) -> Option<NaiveDateTime> {
        match self {
            Schedule::DailyBusinessDays { at } => t
                .date()
                .iter_days()
                .take(MAX_SEARCH_DAYS as usize + 1)
                .filter(|d| cal.is_business_day(*d))
                .map(|d| d.and_time(*at))
                .find(|c| *c > t),
            Schedule::MonthlyBusinessDay { day, at } => {
                let first_of_month = NaiveDate::from_ymd_opt(t.year(), t.month(), 1)?;
                // A month may have no business day at all (closed by the
                // operator): look up to a year ahead.
                (0..=13)
                    .filter_map(|k| first_of_month.checked_add_months(chrono::Months::new(k)))
                    .filter_map(|m| {
                        let days = cal.business_days_of_month(m.year(), m.month());
                        let d = match day {
                            BusinessDay::Last => days.last(),
                            BusinessDay::Nth(n) => days.get(usize::from(*n) - 1).or(days.last()),
                        };
                        d.map(|d| d.and_time(*at))
                    })
                    .find(|c| *c > t)
            }
            Schedule::Daily { at } => {
                let today = t.date().and_time(*at);
                if today > t {
                    Some(today)
                } else {
                    Some(t.date().succ_opt()?.and_time(*at))
                }
            }
            Schedule::Weekly { weekday, at } => (0..=7)
                .filter_map(|k| t.date().checked_add_signed(Duration::days(k)))
                .filter(|d| d.weekday() == *weekday)
                .map(|d| d.and_time(*at))
                .find(|c| *c > t),
            Schedule::Monthly { day, at } => {
                let first_of_month = NaiveDate::from_ymd_opt(t.year(), t.month(), 1)?;
                (0..=2)
                    .filter_map(|k| first_of_month.checked_add_months(chrono::Months::new(k)))
                    .map(|m| month_day(m.year(), m.month(), *day).map(|d| d.and_time(*at)))
                    .find(|c| c.is_none_or(|c| c > t))
                    .flatten()
            }
            Schedule::Cron(expr) => {
                // Run croner on the naive local time dressed up as UTC: UTC has
                // no DST, so croner does a pure wall-clock search and the DST
                // rules stay in one place (resolve_local).
                let start = Utc.from_utc_datetime(&t);
                expr.cron
                    .find_next_occurrence(&start, false)
                    .ok()
                    .map(|d| d.naive_utc())
            }
        }
    }
}

/// How far [`Plan::next_after`] looks: a schedule whose every run is
/// skipped (`weekly sat` with `skip`) has no next run rather than a long
/// search; eight years still find a `29 February` cron.
const PLAN_HORIZON_DAYS: i64 = 8 * 366 + MAX_SEARCH_DAYS;

/// What a partner's run does when it falls on a closed day
/// (`on_holiday` in `partners.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnHoliday {
    /// Run anyway (the behaviour before business days existed).
    #[default]
    Run,
    /// Move to the next business day, same wall time.
    Next,
    /// Move to the previous business day, same wall time.
    Previous,
    /// Do not run that time.
    Skip,
}

impl fmt::Display for OnHoliday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnHoliday::Run => "run",
            OnHoliday::Next => "next",
            OnHoliday::Previous => "previous",
            OnHoliday::Skip => "skip",
        })
    }
}

/// Where a moved occurrence was scheduled, and why it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub from: NaiveDate,
    pub why: DayOff,
}

/// One run of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub at: DateTime<Utc>,
    /// `Some` when `on_holiday` moved it off a closed day.
    pub moved: Option<Moved>,
}

impl Occurrence {
    /// `2027-01-04 09:00:00 JST (moved from 2027-01-01: 元日)`, for people.
    pub fn for_people(&self, tz: Tz) -> String {
        let at = crate::timefmt::for_people(self.at, tz);
        match &self.moved {
            None => at,
            Some(m) => format!("{at} (moved from {}: {})", m.from, m.why),
        }
    }
}

/// A schedule with its closed-day policy, on a calendar and in a zone:
/// what the daemon runs, `check` prints and the catch-up follows.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub schedule: &'a Schedule,
    pub on_holiday: OnHoliday,
    pub calendar: &'a Calendar,
    pub tz: Tz,
}

impl Plan<'_> {
    /// The first run strictly after `after` (see the module docs on
    /// `on_holiday`: moves, collisions, skips).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<Occurrence> {
        let (tz, cal) = (self.tz, self.calendar);
        let after_local = after.with_timezone(&tz).naive_local().with_nanosecond(0)?;
        // `next` can move an occurrence from before `after` to after it, but
        // never across a business day: start at the last business day
        // before `after`'s day.
        let mut cursor = match self.on_holiday {
            OnHoliday::Next => {
                let day_before = after_local.date().pred_opt()?;
                let start = cal
                    .business_day_on_or_before(day_before)
                    .unwrap_or(day_before - Duration::days(MAX_SEARCH_DAYS));
                start.and_hms_opt(0, 0, 0)? - Duration::seconds(1)
            }
            _ => after_local,
        };
        let mut best: Option<Occurrence> = None;
        let horizon = after_local.date() + Duration::days(PLAN_HORIZON_DAYS);
        for _ in 0..MAX_CANDIDATES {
            let Some(original) = self.schedule.next_local_after(cursor, cal) else {
                break;
            };
            if original.date() > horizon {
                break;
            }
            cursor = original;
            let day = original.date();
            let off = cal.day_off(day);
            let target = match (&off, self.on_holiday) {
                (None, _) | (Some(_), OnHoliday::Run) => Some(day),
                (Some(_), OnHoliday::Skip) => None,
                (Some(_), OnHoliday::Next) => cal.business_day_on_or_after(day),
                (Some(_), OnHoliday::Previous) => cal.business_day_on_or_before(day),
            };
            // Stop once no later original can beat `best`: with `next` a
            // move only goes later; with `previous` never before the
            // original's own business day.
            if let Some(b) = &best {
                let b_local = b.at.with_timezone(&tz).naive_local();
                let done = match self.on_holiday {
                    OnHoliday::Previous => off.is_none() && day > b_local.date(),
                    _ => resolve_local(tz, original).is_none_or(|o| o > b.at),
                };
                if done {
                    break;
                }
            }
            let Some(target) = target else { continue };
            let Some(at) = resolve_local(tz, target.and_time(original.time())) else {
                continue;
            };
            if at <= after {
                continue;
            }
            let moved = (target != day).then(|| Moved {
                from: day,
                why: off.clone().expect("moved only off a closed day"),
            });
            let better = match &best {
                None => true,
                Some(b) => at < b.at || (at == b.at && b.moved.is_some() && moved.is_none()),
            };
            if better {
                best = Some(Occurrence { at, moved });
            }
            if matches!(self.on_holiday, OnHoliday::Run | OnHoliday::Skip) {
                break;
            }
        }
        best
    }

    /// The next `n` runs strictly after `after`, strictly increasing.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<Occurrence> {
        let mut out: Vec<Occurrence> = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(o) => {
                    cursor = o.at;
                    out.push(o);
                }
                None => break,
            }
        }
        out
    }

    /// [`Schedule::due_at_startup`] under this plan: a run moved or
    /// skipped by `on_holiday` is caught up (or not) as it would have run.
    pub fn due_at_startup(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match last_run {
            None => false,
            Some(last) => self.next_after(last).is_some_and(|o| o.at <= now),
        }
    }

    /// Whether a run at `at` falls on a business day: an `expect_file`
    /// partner is expected to deliver only then.
    pub fn is_business_day(&self, at: DateTime<Utc>) -> bool {
        self.calendar
            .is_business_day(at.with_timezone(&self.tz).date_naive())
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hhmm = |t: &NaiveTime| format!("{:02}:{:02}", t.hour(), t.minute());
        match self {
            Schedule::Daily { at } => write!(f, "daily {}", hhmm(at)),
            Schedule::Weekly { weekday, at } => {
                let wd = weekday.to_string().to_ascii_lowercase();
                write!(f, "weekly {wd} {}", hhmm(at))
            }
            Schedule::Monthly { day, at } => match day {
                MonthDay::Day(d) => write!(f, "monthly {d} {}", hhmm(at)),
                MonthDay::Last => write!(f, "monthly last {}", hhmm(at)),
            },
            Schedule::DailyBusinessDays { at } => write!(f, "daily business-days {}", hhmm(at)),
            Schedule::MonthlyBusinessDay { day, at } => match day {
                BusinessDay::Nth(n) => write!(f, "monthly business-day {n} {}", hhmm(at)),
                BusinessDay::Last => write!(f, "monthly last business-day {}", hhmm(at)),
            },
            Schedule::Cron(expr) => f.write_str(&expr.text),
        }
    }
}

/// Config files can hold a schedule as a plain string.
impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_hhmm(text: &str, time: &str) -> Result<NaiveTime, ScheduleError> {
    let bad = || ScheduleError::BadTime {
        text: text.to_string(),
        time: time.to_string(),
    };
    let (h, m) = time.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(h) && h.len() <= 2 && digits(m) && m.len() == 2) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    NaiveTime::from_hms_opt(h, m, 0).ok_or_else(bad)
}

fn parse_weekday(text: &str, weekday: &str) -> Result<Weekday, ScheduleError> {
    Ok(match weekday.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Mon,
        "tue" | "tuesday" => Weekday::Tue,
        "wed" | "wednesday" => Weekday::Wed,
        "thu" | "thursday" => Weekday::Thu,
        "fri" | "friday" => Weekday::Fri,
        "sat" | "saturday" => Weekday::Sat,
        "sun" | "sunday" => Weekday::Sun,
        _ => {
            return Err(ScheduleError::BadWeekday {
                text: text.to_string(),
                weekday: weekday.to_string(),
            })
        }
    })
}

fn parse_month_day(text: &str, day: &str) -> Result<MonthDay, ScheduleError> {
    if day.eq_ignore_ascii_case("last") {
        return Ok(MonthDay::Last);
    }
    let bad = || ScheduleError::BadDayOfMonth {
        text: text.to_string(),
        day: day.to_string(),
    };
    if day.is_empty() || day.len() > 2 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match day.parse::<u8>() {
        Ok(d @ 1..=31) => Ok(MonthDay::Day(d)),
        _ => Err(bad()),
    }
}

fn parse_business_day(text: &str, nth: &str) -> Result<BusinessDay, ScheduleError> {
    let bad = || ScheduleError::BadBusinessDay {
        text: text.to_string(),
        nth: nth.to_string(),
    };
    if nth.is_empty() || nth.len() > 2 || !nth.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match nth.parse::<u8>() {
        Ok(n @ 1..=23) => Ok(BusinessDay::Nth(n)),
        _ => Err(bad()),
    }
}

/// Whether a text is worth handing to the cron parser (its errors then say
/// which field is wrong); anything else gets the list of forms instead.
fn looks_like_cron(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" */,-?#".contains(&b))
        && text.split(' ').next().is_some_and(|f| {
            f.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_digit() || b"*?".contains(&b))
        })
}

fn parse_cron(text: &str, fields: usize) -> Result<CronExpr, ScheduleError> {
    if !(5..=6).contains(&fields) {
        return Err(ScheduleError::BadCron {
            text: text.to_string(),
            reason: format!("it has {fields} field(s)"),
        });
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false) // Vixie semantics: restricted dom OR restricted dow
        .build()
        .parse(text)
        .map_err(|e| ScheduleError::BadCron {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
    // Reject patterns such as `0 0 30 2 *` that can never fire: croner gives
    // up after searching a bounded range, which such patterns exhaust.
    let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
    if probe.is_some_and(|p| cron.find_next_occurrence(&p, false).is_err()) {
        return Err(ScheduleError::NeverFires {
            text: text.to_string(),
        });
    }
    Ok(CronExpr {
        text: text.to_string(),
        cron: Box::new(cron),
    })
}

fn last_day_of_month(year: i32, month: u32) -> Option<NaiveDate> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    first.checked_add_months(chrono::Months::new(1))?.pred_opt()
}

/// The calendar day a `monthly` schedule fires in the given month, applying
/// the "missing day → last day of the month" rule.
fn month_day(year: i32, month: u32, day: MonthDay) -> Option<NaiveDate> {
    let last = last_day_of_month(year, month)?;
    match day {
        MonthDay::Last => Some(last),
        MonthDay::Day(d) => {
            Some(NaiveDate::from_ymd_opt(year, month, u32::from(d)).unwrap_or(last))
        }
    }
}

/// The first instant at which the wall clock of `tz` reads `local` or later:
/// the instant itself if it exists once, the earlier one if it exists twice
/// (fall-back), and the end of the gap if it does not exist (spring-forward).
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(d) => Some(d.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// `local` lies in a spring-forward gap: find the transition instant, i.e. the
/// first instant whose local reading is >= `local`.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Bracket the gap with existing local times (15-minute steps; gaps are at
    // most a day long, e.g. Pacific/Apia skipped 2011-12-30).
    let step = Duration::minutes(15);
    let mut below = local;
    let mut above = local;
    let mut lo = None;
    let mut hi = None;
    for _ in 0..(4 * 24 * 3) {
        if lo.is_none() {
            below = below.checked_sub_signed(step)?;
            lo = tz.from_local_datetime(&below).latest();
        }
        if hi.is_none() {
            above = above.checked_add_signed(step)?;
            hi = tz.from_local_datetime(&above).earliest();
        }
        if lo.is_some() && hi.is_some() {
            break;
        }
    }
    // Invariant: local reading at `lo` < `local` <= local reading at `hi`.
    let (mut lo, mut hi) = (lo?.timestamp(), hi?.timestamp());
    let reads_at_least = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .is_some_and(|u| u.with_timezone(&tz).naive_local() >= local)
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if reads_at_least(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

// ---------------------------------------------------------------------------
// Clock abstraction
// ---------------------------------------------------------------------------

/// Source of "now" for the daemon, so scheduling can be tested without
/// waiting for real time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// For clocks that move by command (tests): a receiver that is notified
    /// whenever the time is set, so [`sleep_until`] wakes at once instead of
    /// at its next real-time chunk. Real clocks return `None` (the default).
    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        None
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        (**self).changes()
    }
}

/// The real wall clock (`Utc::now()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Cloning gives another handle to the
/// same clock, so a test keeps one handle and gives the daemon another (or an
/// `Arc<ManualClock>`). Every `set`/`advance` wakes pending [`sleep_until`]s.
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tx, _rx) = watch::channel(start);
        ManualClock { time: Arc::new(tx) }
    }

    /// Set the time (may go backwards, to simulate a wall-clock step).
    pub fn set(&self, t: DateTime<Utc>) {
        self.time.send_replace(t);
    }

    /// Move the time by `by` (negative moves it back).
    pub fn advance(&self, by: Duration) {
        self.time.send_modify(|t| *t += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.time.borrow()
    }
    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        Some(self.time.subscribe())
    }
}

/// Longest single real-time sleep in [`sleep_until`]. Tokio sleeps on the
/// monotonic clock, which does not follow wall-clock steps (NTP, manual
/// `date -s`) nor, on Linux, system suspend; re-reading the wall clock at
/// least this often bounds how late a job can fire after such a jump.
pub const MAX_SLEEP_CHUNK: StdDuration = StdDuration::from_secs(60);

/// Sleep until `clock` reads `when` or later. Returns `true` when that time is
/// reached, `false` as soon as `shutdown` holds `true` (also if it already
/// does on entry, or if its sender is dropped, which is treated as shutdown).
///
/// Sleeps in real-time chunks of at most [`MAX_SLEEP_CHUNK`], re-reading the
/// clock after each, and wakes immediately when a [`ManualClock`] is moved.
pub async fn sleep_until(
    clock: &dyn Clock,
    when: DateTime<Utc>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    // Subscribe before the first read so no `set`/`advance` can be missed.
    let mut changes = clock.changes();
    loop {
        if *shutdown.borrow_and_update() {
            return false;
        }
        let now = clock.now();
        if now >= when {
            return true;
        }
        let chunk = (when - now)
            .to_std()
            .map_or(MAX_SLEEP_CHUNK, |d| d.min(MAX_SLEEP_CHUNK));
        let clock_moved = async {
            match changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let clock_gone = tokio::select! {
            _ = tokio::time::sleep(chunk) => false,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return false;
                }
                false
            }
            alive = clock_moved => !alive,
        };
        if clock_gone {
            // The manual clock's sender is gone; fall back to chunked sleeps.
            changes = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;
    use chrono_tz::Asia::Tokyo;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn tokyo(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Tokyo
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn s(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn tokyo_daily_0300_is_1800_utc_previous_day() {
        let sch = s("daily 03:00");
        // 2026-05-10 09:00 JST
        let next = sch.next_after(utc(2026, 5, 10, 0, 0), Tokyo).unwrap();
        assert_eq!(next, utc(2026, 5, 10, 18, 0)); // = 2026-05-11 03:00 JST
        assert_eq!(next, tokyo(2026, 5, 11, 3, 0));
        // strictly after: exactly at an occurrence gives the next day's
        assert_eq!(
            sch.next_after(next, Tokyo).unwrap(),
            utc(2026, 5, 11, 18, 0)
        );
        // one second before gives the occurrence itself
        assert_eq!(
            sch.next_after(next - Duration::seconds(1), Tokyo).unwrap(),
            next
        );
        // sub-second offsets do not confuse the search
        assert_eq!(
            sch.next_after(next - Duration::milliseconds(1), Tokyo)
                .unwrap(),
            next
        );
        assert_eq!(
            sch.next_after(next + Duration::milliseconds(1), Tokyo)
                .unwrap(),
            utc(2026, 5, 11, 18, 0)
        );
    }

    #[test]
    fn weekly() {
        let sch = s("weekly mon 09:00");
        assert_eq!(sch, s("WEEKLY Monday 9:00"));
        assert_eq!(sch, s("weekly MON 09:00"));
        // From Wednesday 2026-05-13 → Monday 2026-05-18 09:00 JST.
        let from = tokyo(2026, 5, 13, 12, 0);
        assert_eq!(
            sch.next_after(from, Tokyo).unwrap(),
            tokyo(2026, 5, 18, 9, 0)
        );
        // Monday morning before 09:00 → same day; after → next week.
        assert_eq!(
            sch.next_after(tokyo(2026, 5, 18, 8, 59), Tokyo).unwrap(),
            tokyo(2026, 5, 18, 9, 0)
        );
        assert_eq!(
            sch.next_after(tokyo(2026, 5, 18, 9, 0), Tokyo).unwrap(),
            tokyo(2026, 5, 25, 9, 0)
        );
        // Monday 09:00 JST is Sunday 00:00 UTC: the weekday is the local one.
        assert_eq!(tokyo(2026, 5, 18, 9, 0), utc(2026, 5, 18, 0, 0));
        let sun = s("weekly sunday 23:30");
        assert_eq!(
            sun.next_after(tokyo(2026, 5, 13, 0, 0), Tokyo).unwrap(),
            tokyo(2026, 5, 17, 23, 30)
        );
    }

    #[test]
    fn monthly_31_clamps_to_last_day_of_short_months() {
        let sch = s("monthly 31 10:00");
        let got = sch.upcoming(tokyo(2026, 1, 15, 0, 0), Tokyo, 5);
        assert_eq!(
            got,
            vec![
                tokyo(2026, 1, 31, 10, 0),
                tokyo(2026, 2, 28, 10, 0),
                tokyo(2026, 3, 31, 10, 0),
                tokyo(2026, 4, 30, 10, 0),
                tokyo(2026, 5, 31, 10, 0),
            ]
        );
        // Directly: from inside February / April.
        assert_eq!(
            sch.next_after(tokyo(2026, 2, 1, 0, 0), Tokyo).unwrap(),
            tokyo(2026, 2, 28, 10, 0)
        );
        assert_eq!(
            sch.next_after(tokyo(2026, 4, 1, 0, 0), Tokyo).unwrap(),
            tokyo(2026, 4, 30, 10, 0)
        );
        // monthly 30 in February 2026 → Feb 28, then Mar 30.
        assert_eq!(
            s("monthly 30 10:00").upcoming(tokyo(2026, 2, 1, 0, 0), Tokyo, 2),
            vec![tokyo(2026, 2, 28, 10, 0), tokyo(2026, 3, 30, 10, 0)]
        );
        // A normal day in the middle.
        assert_eq!(
            s("monthly 15 00:00")
                .next_after(tokyo(2026, 2, 15, 0, 0), Tokyo)
                .unwrap(),
            tokyo(2026, 3, 15, 0, 0)
        );
    }

    #[test]
    fn monthly_last_in_leap_february() {
        let sch = s("monthly last 23:59");
        assert_eq!(
            sch.next_after(tokyo(2028, 2, 1, 0, 0), Tokyo).unwrap(),
            tokyo(2028, 2, 29, 23, 59)
        );
        assert_eq!(
            sch.upcoming(tokyo(2027, 1, 31, 23, 59), Tokyo, 3),
            vec![
                tokyo(2027, 2, 28, 23, 59),
                tokyo(2027, 3, 31, 23, 59),
                tokyo(2027, 4, 30, 23, 59),
            ]
        );
        // monthly 31 and monthly 29 also land on Feb 29 in a leap year.
        assert_eq!(
            s("monthly 31 23:59")
                .next_after(tokyo(2028, 2, 1, 0, 0), Tokyo)
                .unwrap(),
            tokyo(2028, 2, 29, 23, 59)
        );
    }

    #[test]
    fn new_york_spring_forward_gap_fires_once_when_clock_jumps() {
        let sch = s("daily 02:30");
        let got = sch.upcoming(utc(2026, 3, 7, 0, 0), New_York, 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 3, 7, 7, 30), // 02:30 EST
                utc(2026, 3, 8, 7, 0),  // 02:30 does not exist → 03:00 EDT
                utc(2026, 3, 9, 6, 30), // 02:30 EDT
            ]
        );
        // Exactly at the jump: the next one is the following day.
        assert_eq!(
            sch.next_after(utc(2026, 3, 8, 7, 0), New_York).unwrap(),
            utc(2026, 3, 9, 6, 30)
        );
        // 03:00 that day is the same instant; fires once.
        assert_eq!(
            s("daily 03:00")
                .next_after(utc(2026, 3, 8, 0, 0), New_York)
                .unwrap(),
            utc(2026, 3, 8, 7, 0)
        );
    }

    #[test]
    fn new_york_fall_back_fires_once_at_first_occurrence() {
        let sch = s("daily 01:30");
        let got = sch.upcoming(utc(2026, 10, 31, 0, 0), New_York, 3);
        assert_eq!(
            got,
            vec![
                utc(2026, 10, 31, 5, 30), // 01:30 EDT
                utc(2026, 11, 1, 5, 30),  // first 01:30 (EDT), not 06:30 (EST)
                utc(2026, 11, 2, 6, 30),  // 01:30 EST
            ]
        );
        // Between the two 01:30s (01:00 EST): not again that night.
        assert_eq!(
            sch.next_after(utc(2026, 11, 1, 6, 0), New_York).unwrap(),
            utc(2026, 11, 2, 6, 30)
        );
        // Cron fixed time follows the same rule.
        assert_eq!(
            s("30 1 * * *").upcoming(utc(2026, 10, 31, 12, 0), New_York, 2),
            vec![utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
        );
    }

    #[test]
    fn cron_expressions() {
        // Weekdays at 09:00 Tokyo; from Saturday 2026-05-16 → Monday 05-18.
        let sch = s("0 9 * * 1-5");
        assert_eq!(
            sch.next_after(tokyo(2026, 5, 16, 12, 0), Tokyo).unwrap(),
            tokyo(2026, 5, 18, 9, 0)
        );
        assert_eq!(sch, s("0 9 * * mon-fri").clone_with_text("0 9 * * 1-5"));
        // Six fields: seconds first.
        let secs = s("30 0 9 * * *");
        assert_eq!(
            secs.next_after(tokyo(2026, 5, 16, 9, 0), Tokyo).unwrap(),
            tokyo(2026, 5, 16, 9, 0) + Duration::seconds(30)
        );
        // Standard cron dom/dow semantics: "13th OR Friday".
        // 2026-01-10 is a Saturday; Tue 13th comes before Fri 16th.
        let either = s("0 0 13 * 5");
        assert_eq!(
            either.upcoming(tokyo(2026, 1, 10, 0, 0), Tokyo, 3),
            vec![
                tokyo(2026, 1, 13, 0, 0),
                tokyo(2026, 1, 16, 0, 0),
                tokyo(2026, 1, 23, 0, 0),
            ]
        );
        // Sunday as 0 and 7.
        assert_eq!(
            s("0 0 * * 0").upcoming(utc(2026, 5, 1, 0, 0), Tokyo, 2),
            s("0 0 * * 7").upcoming(utc(2026, 5, 1, 0, 0), Tokyo, 2)
        );
        // Interval cron across spring-forward: 02:00/02:15/02:30/02:45 all map
        // to the jump instant and fire once.
        let q = s("*/15 * * * *");
        assert_eq!(
            q.upcoming(utc(2026, 3, 8, 6, 40), New_York, 3),
            vec![
                utc(2026, 3, 8, 6, 45), // 01:45 EST
                utc(2026, 3, 8, 7, 0),  // jump (03:00 EDT)
                utc(2026, 3, 8, 7, 15), // 03:15 EDT
            ]
        );
    }

    impl Schedule {
        /// Test helper: same cron, different source text (texts differ when
        /// names are used instead of numbers).
        fn clone_with_text(&self, text: &str) -> Schedule {
            match self {
                Schedule::Cron(c) => Schedule::Cron(CronExpr {
                    text: text.to_string(),
                    cron: c.cron.clone(),
                }),
                other => other.clone(),
            }
        }
    }

    #[test]
    fn parse_errors() {
        type Check = fn(&ScheduleError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, ScheduleError::Empty)),
            ("   ", |e| matches!(e, ScheduleError::Empty)),
            ("daily 24:00", |e| {
                matches!(e, ScheduleError::BadTime { .. })
            }),
            ("daily 12:60", |e| {
                matches!(e, ScheduleError::BadTime { .. })
            }),
            ("daily 12:5", |e| matches!(e, ScheduleError::BadTime { .. })),
            ("daily noon", |e| matches!(e, ScheduleError::BadTime { .. })),
            ("daily -1:00", |e| {
                matches!(e, ScheduleError::BadTime { .. })
            }),
            ("daily 123:00", |e| {
                matches!(e, ScheduleError::BadTime { .. })
            }),
            ("daily", |e| matches!(e, ScheduleError::Malformed { .. })),
            ("daily 03:00 extra", |e| {
                matches!(e, ScheduleError::Malformed { .. })
            }),
            ("weekly xyz 09:00", |e| {
                matches!(e, ScheduleError::BadWeekday { .. })
            }),
            ("weekly mo 09:00", |e| {
                matches!(e, ScheduleError::BadWeekday { .. })
            }),
            ("weekly 09:00", |e| {
                matches!(e, ScheduleError::Malformed { .. })
            }),
            ("monthly 32 09:00", |e| {
                matches!(e, ScheduleError::BadDayOfMonth { .. })
            }),
            ("monthly 0 09:00", |e| {
                matches!(e, ScheduleError::BadDayOfMonth { .. })
            }),
            ("monthly first 09:00", |e| {
                matches!(e, ScheduleError::BadDayOfMonth { .. })
            }),
            ("monthly 31 25:00", |e| {
                matches!(e, ScheduleError::BadTime { .. })
            }),
            ("every day", |e| {
                matches!(e, ScheduleError::Unreadable { .. })
            }),
            ("* * *", |e| matches!(e, ScheduleError::BadCron { .. })),
            ("0 0 0 1 1 * 2030", |e| {
                matches!(e, ScheduleError::BadCron { .. })
            }),
            ("61 * * * *", |e| matches!(e, ScheduleError::BadCron { .. })),
            ("0 24 * * *", |e| matches!(e, ScheduleError::BadCron { .. })),
            ("@daily", |e| matches!(e, ScheduleError::Unreadable { .. })),
            ("0 0 30 2 *", |e| {
                matches!(e, ScheduleError::NeverFires { .. })
            }),
        ];
        for (text, check) in cases {
            let err = Schedule::parse(text).expect_err(text);
            assert!(check(&err), "{text:?} gave {err:?}");
            let msg = err.to_string();
            if !text.trim().is_empty() {
                assert!(
                    msg.contains(&format!("{:?}", text.trim())),
                    "message does not quote the text: {msg}"
                );
            }
            assert!(
                msg.contains("expected") || msg.contains("accepted") || msg.contains("never"),
                "message does not say what is accepted: {msg}"
            );
        }
        let msg = Schedule::parse("monthly 32 09:00").unwrap_err().to_string();
        assert!(msg.contains("1-31") && msg.contains("last"), "{msg}");
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, canonical) in [
            ("daily 3:00", "daily 03:00"),
            ("  Daily   23:59 ", "daily 23:59"),
            ("WEEKLY Monday 9:05", "weekly mon 09:05"),
            ("weekly SUN 00:00", "weekly sun 00:00"),
            ("monthly 31 10:00", "monthly 31 10:00"),
            ("Monthly LAST 7:00", "monthly last 07:00"),
            ("0  9 * *   1-5", "0 9 * * 1-5"),
            ("30 0 9 * * *", "30 0 9 * * *"),
        ] {
            let sch = s(input);
            assert_eq!(sch.to_string(), canonical);
            assert_eq!(s(canonical), sch, "{canonical} does not round-trip");
        }
        let parsed: Schedule = "daily 03:00".parse().unwrap();
        assert_eq!(parsed, s("daily 03:00"));
    }

    #[test]
    fn due_at_startup_runs_once_for_missed_occurrences() {
        let sch = s("daily 03:00");
        // Last successful run: 2026-05-10 03:05 JST. Daemon down until
        // 2026-05-13 19:00 JST: three occurrences missed.
        let last = tokyo(2026, 5, 10, 3, 5);
        let now = tokyo(2026, 5, 13, 19, 0);
        assert!(sch.due_at_startup(Some(last), now, Tokyo));
        // After the catch-up run the caller records last_run = now: not due.
        assert!(!sch.due_at_startup(Some(now), now, Tokyo));
        // ...and not due again later the same day, only after the next 03:00.
        assert!(!sch.due_at_startup(Some(now), tokyo(2026, 5, 14, 2, 59), Tokyo));
        assert!(sch.due_at_startup(Some(now), tokyo(2026, 5, 14, 3, 0), Tokyo));
        // Restart before the next occurrence: not due.
        assert!(!sch.due_at_startup(Some(last), tokyo(2026, 5, 11, 2, 59), Tokyo));
        // Interval is (last_run, now]: an occurrence exactly at now counts,
        // one exactly at last_run does not.
        let occ = tokyo(2026, 5, 11, 3, 0);
        assert!(sch.due_at_startup(Some(last), occ, Tokyo));
        assert!(!sch.due_at_startup(Some(occ), occ + Duration::hours(1), Tokyo));
        // Never run: a brand-new partner does not fire at first start.
        assert!(!sch.due_at_startup(None, now, Tokyo));
        // Clock went backwards (last_run in the future): not due.
        assert!(!sch.due_at_startup(Some(now), last, Tokyo));
    }

    #[test]
    fn upcoming_is_strictly_increasing() {
        let from = utc(2026, 1, 1, 0, 0);
        for text in [
            "daily 02:30",
            "daily 01:30",
            "weekly sun 02:00",
            "monthly 31 02:30",
            "monthly last 00:00",
            "*/20 1-3 * * *",
            "0 0 13 * 5",
        ] {
            for tz in [Tokyo, New_York, chrono_tz::Europe::London] {
                let got = s(text).upcoming(from, tz, 400);
                assert_eq!(got.len(), 400, "{text} in {tz}");
                assert!(got[0] > from);
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "{text} in {tz} not strictly increasing"
                );
            }
        }
        assert!(s("daily 00:00").upcoming(from, Tokyo, 0).is_empty());
    }

    #[test]
    fn serde_as_string() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Partner {
            schedule: Schedule,
        }
        let p: Partner = serde_json::from_str(r#"{"schedule":"Weekly FRI 9:00"}"#).unwrap();
        assert_eq!(p.schedule, s("weekly fri 09:00"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"schedule":"weekly fri 09:00"}"#
        );
        let err = serde_json::from_str::<Partner>(r#"{"schedule":"monthly 32 09:00"}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("1-31"), "{err}");
    }

    // --- business days and on_holiday -----------------------------------

    fn nenmatsu() -> Calendar {
        Calendar::new(
            ["12-29", "12-30", "12-31", "01-02", "01-03"]
                .iter()
                .map(|t| crate::calendar::ClosedDay::parse(t).unwrap())
                .collect(),
        )
    }

    fn plan<'a>(sch: &'a Schedule, on: OnHoliday, cal: &'a Calendar) -> Plan<'a> {
        Plan {
            schedule: sch,
            on_holiday: on,
            calendar: cal,
            tz: Tokyo,
        }
    }

    fn runs(p: &Plan<'_>, from: DateTime<Utc>, n: usize) -> Vec<String> {
        p.upcoming(from, n)
            .iter()
            .map(|o| o.for_people(Tokyo))
            .collect()
    }

    #[test]
    fn business_day_forms_across_new_year_and_golden_week() {
        let cal = nenmatsu();
        // The 3rd 営業日 of January 2027 comes after 元日, the operator's
        // 01-02/01-03 and the weekend: 4, 5, 6.
        let third = s("monthly business-day 3 09:00");
        let p = plan(&third, OnHoliday::Run, &cal);
        assert_eq!(
            runs(&p, tokyo(2026, 12, 15, 0, 0), 2),
            ["2027-01-06 09:00:00 JST", "2027-02-03 09:00:00 JST"]
        );
        // May 2027: 5/3-5/5 holidays, 5/1-2 weekend; with 2027-05-06 closed
        // the business days are 7, 10, 11.
        let mut closed = cal.closed().to_vec();
        closed.push(crate::calendar::ClosedDay::parse("2027-05-06").unwrap());
        let gw = Calendar::new(closed);
        let p = plan(&third, OnHoliday::Run, &gw);
        assert_eq!(
            p.next_after(tokyo(2027, 4, 30, 0, 0)).unwrap().at,
            tokyo(2027, 5, 11, 9, 0)
        );
        // Last business day of December 2026 with 12-29..31 closed: Mon 28.
        let last = s("monthly last business-day 23:00");
        assert_eq!(
            plan(&last, OnHoliday::Run, &cal)
                .next_after(tokyo(2026, 12, 1, 0, 0))
                .unwrap()
                .at,
            tokyo(2026, 12, 28, 23, 0)
        );
        // Every business day: from the 28th straight to January 4th.
        let daily = s("daily business-days 03:00");
        assert_eq!(
            runs(
                &plan(&daily, OnHoliday::Run, &cal),
                tokyo(2026, 12, 28, 4, 0),
                2
            ),
            ["2027-01-04 03:00:00 JST", "2027-01-05 03:00:00 JST"]
        );
        // A month with fewer business days than N fires on its last one.
        let many = s("monthly business-day 23 09:00");
        assert_eq!(
            plan(&many, OnHoliday::Run, &cal)
                .next_after(tokyo(2027, 1, 1, 0, 0))
                .unwrap()
                .at,
            tokyo(2027, 1, 29, 9, 0)
        );
        // Business-day runs are never "moved".
        assert!(plan(&third, OnHoliday::Next, &cal)
            .upcoming(tokyo(2026, 12, 1, 0, 0), 12)
            .iter()
            .all(|o| o.moved.is_none()));
    }

    #[test]
    fn on_holiday_moves_names_the_holiday_and_never_runs_twice() {
        let cal = nenmatsu();
        // 元日 → the next business day, named.
        let first = s("monthly 1 09:00");
        assert_eq!(
            runs(
                &plan(&first, OnHoliday::Next, &cal),
                tokyo(2026, 12, 15, 0, 0),
                2
            ),
            [
                "2027-01-04 09:00:00 JST (moved from 2027-01-01: 元日)",
                "2027-02-01 09:00:00 JST"
            ]
        );
        // ...or the previous one, before the closed 12-29..31.
        assert_eq!(
            runs(
                &plan(&first, OnHoliday::Previous, &cal),
                tokyo(2026, 12, 15, 0, 0),
                1
            ),
            ["2026-12-28 09:00:00 JST (moved from 2027-01-01: 元日)"]
        );
        // ...or skipped.
        assert_eq!(
            runs(
                &plan(&first, OnHoliday::Skip, &cal),
                tokyo(2026, 12, 15, 0, 0),
                1
            ),
            ["2027-02-01 09:00:00 JST"]
        );
        // 振替休日: 春分の日 2027-03-21 is a Sunday, Monday 22nd is off.
        let monday = s("weekly mon 04:00");
        assert_eq!(
            runs(
                &plan(&monday, OnHoliday::Next, &cal),
                tokyo(2027, 3, 16, 0, 0),
                2
            ),
            [
                "2027-03-23 04:00:00 JST (moved from 2027-03-22: 春分の日 振替休日)",
                "2027-03-29 04:00:00 JST"
            ]
        );
        // Golden Week, daily + next: 4/29 lands on 4/30's own run, 5/1-5/5
        // on 5/6's: one run each, the unmoved one.
        let daily = s("daily 03:00");
        let p = plan(&daily, OnHoliday::Next, &cal);
        assert_eq!(
            runs(&p, tokyo(2027, 4, 28, 12, 0), 4),
            [
                "2027-04-30 03:00:00 JST",
                "2027-05-06 03:00:00 JST",
                "2027-05-07 03:00:00 JST",
                "2027-05-10 03:00:00 JST"
            ]
        );
        // Asked from inside the holidays, the earliest original is named.
        assert_eq!(
            runs(&p, tokyo(2027, 5, 2, 12, 0), 1),
            ["2027-05-06 03:00:00 JST"]
        );
        assert_eq!(
            runs(&p, tokyo(2027, 1, 1, 12, 0), 1),
            ["2027-01-04 03:00:00 JST"]
        );
        let weekly_sat = s("weekly sat 10:00");
        assert_eq!(
            runs(
                &plan(&weekly_sat, OnHoliday::Next, &cal),
                tokyo(2027, 1, 1, 0, 0),
                1
            ),
            ["2027-01-04 10:00:00 JST (moved from 2027-01-02: closed day 01-02)"]
        );
        // Golden Week + previous: 5/1..5/5 fold into 4/30, already past.
        let p = plan(&daily, OnHoliday::Previous, &cal);
        assert_eq!(
            runs(&p, tokyo(2027, 4, 30, 4, 0), 1),
            ["2027-05-06 03:00:00 JST"]
        );
        // Every day runs at most once, under every policy.
        for on in [
            OnHoliday::Run,
            OnHoliday::Next,
            OnHoliday::Previous,
            OnHoliday::Skip,
        ] {
            let got = plan(&daily, on, &cal).upcoming(tokyo(2026, 12, 1, 0, 0), 60);
            assert!(got.windows(2).all(|w| w[0].at < w[1].at), "{on}");
        }
        // A schedule all of whose runs are skipped has no next run.
        assert_eq!(
            plan(&weekly_sat, OnHoliday::Skip, &cal).next_after(tokyo(2027, 1, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn on_holiday_at_month_ends() {
        let cal = Calendar::default();
        let m31 = s("monthly 31 10:00");
        // Jan 31 2027 and Feb 28 2027 are Sundays.
        assert_eq!(
            runs(
                &plan(&m31, OnHoliday::Next, &cal),
                tokyo(2027, 1, 15, 0, 0),
                3
            ),
            [
                "2027-02-01 10:00:00 JST (moved from 2027-01-31: 日曜日)",
                "2027-03-01 10:00:00 JST (moved from 2027-02-28: 日曜日)",
                "2027-03-31 10:00:00 JST"
            ]
        );
        assert_eq!(
            runs(
                &plan(&m31, OnHoliday::Previous, &cal),
                tokyo(2027, 1, 15, 0, 0),
                3
            ),
            [
                "2027-01-29 10:00:00 JST (moved from 2027-01-31: 日曜日)",
                "2027-02-26 10:00:00 JST (moved from 2027-02-28: 日曜日)",
                "2027-03-31 10:00:00 JST"
            ]
        );
    }

    #[test]
    fn catch_up_follows_the_calendar() {
        let cal = nenmatsu();
        let daily = s("daily 03:00");
        // Last run 12-28 03:00, down until 01-02 noon: every missed run
        // fell on a closed day.
        let last = Some(tokyo(2026, 12, 28, 3, 0));
        let now = tokyo(2027, 1, 2, 12, 0);
        assert!(plan(&daily, OnHoliday::Run, &cal).due_at_startup(last, now));
        assert!(!plan(&daily, OnHoliday::Skip, &cal).due_at_startup(last, now));
        assert!(!plan(&daily, OnHoliday::Next, &cal).due_at_startup(last, now));
        // Moved back into the downtime: due.
        assert!(plan(&daily, OnHoliday::Next, &cal).due_at_startup(last, tokyo(2027, 1, 4, 3, 0)));
        let p = plan(&daily, OnHoliday::Previous, &cal);
        assert!(!p.due_at_startup(Some(tokyo(2026, 12, 28, 3, 0)), now));
        assert!(!p.due_at_startup(None, now));
    }

    #[tokio::test]
    async fn sleep_until_wakes_when_manual_clock_advances() {
        let clock = ManualClock::new(utc(2026, 5, 10, 0, 0));
        let (_tx, mut shutdown) = watch::channel(false);
        let handle = {
            let clock = clock.clone();
            tokio::spawn(
                async move { sleep_until(&clock, utc(2026, 5, 10, 1, 0), &mut shutdown).await },
            )
        };
        tokio::time::sleep(StdDuration::from_millis(20)).await;
        clock.advance(Duration::minutes(30));
        tokio::time::sleep(StdDuration::from_millis(20)).await;
        assert!(!handle.is_finished(), "woke 30 minutes early");
        let started = std::time::Instant::now();
        clock.advance(Duration::minutes(30));
        let done = tokio::time::timeout(StdDuration::from_secs(2), handle)
            .await
            .expect("sleep_until did not wake")
            .unwrap();
        assert!(done);
        assert!(started.elapsed() < StdDuration::from_millis(500));
    }

    #[tokio::test]
    async fn sleep_until_returns_false_on_shutdown() {
        let clock = Arc::new(ManualClock::new(utc(2026, 5, 10, 0, 0)));
        let (tx, mut shutdown) = watch::channel(false);
        let handle = {
            let clock = Arc::clone(&clock);
            tokio::spawn(async move {
                sleep_until(clock.as_ref(), utc(2026, 5, 11, 0, 0), &mut shutdown).await
            })
        };
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        tx.send(true).unwrap();
        let woke = tokio::time::timeout(StdDuration::from_secs(2), handle)
            .await
            .expect("shutdown ignored")
            .unwrap();
        assert!(!woke);

        // Already shut down on entry / sender dropped: false at once.
        let (tx, mut shutdown) = watch::channel(true);
        assert!(!sleep_until(&SystemClock, Utc::now() + Duration::hours(1), &mut shutdown).await);
        drop(tx);
        let (tx, mut shutdown) = watch::channel(false);
        drop(tx);
        let r = tokio::time::timeout(
            StdDuration::from_secs(2),
            sleep_until(&SystemClock, Utc::now() + Duration::hours(1), &mut shutdown),
        )
        .await;
        assert_eq!(r, Ok(false));
    }

    #[tokio::test]
    async fn sleep_until_past_and_real_clock() {
        let (_tx, mut shutdown) = watch::channel(false);
        let clock = ManualClock::new(utc(2026, 5, 10, 0, 0));
        // Already due.
        assert!(sleep_until(&clock, utc(2026, 5, 9, 0, 0), &mut shutdown).await);
        // Clock set backwards then forwards past the target.
        clock.set(utc(2026, 1, 1, 0, 0));
        assert_eq!(clock.now(), utc(2026, 1, 1, 0, 0));
        let c2 = clock.clone();
        let h = tokio::spawn(async move {
            let (_tx, mut sd) = watch::channel(false);
            sleep_until(&c2, utc(2026, 5, 10, 0, 0), &mut sd).await
        });
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        clock.set(utc(2026, 6, 1, 0, 0));
        assert!(tokio::time::timeout(StdDuration::from_secs(2), h)
            .await
            .unwrap()
            .unwrap());
        // Real clock: a short real sleep.
        let start = std::time::Instant::now();
        assert!(
            sleep_until(
                &SystemClock,
                Utc::now() + Duration::milliseconds(30),
                &mut shutdown
            )
            .await
        );
        assert!(start.elapsed() >= StdDuration::from_millis(25));
    }
}
