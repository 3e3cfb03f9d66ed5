//! Schedules written in Japanese, as people write them, and the "closest
//! form" offered for a schedule nothing can read.
//!
//! | Japanese               | same as                              |
//! |------------------------|--------------------------------------|
//! | `毎日 03:00`           | `daily 03:00`                        |
//! | `毎週月曜 04:00` (`毎週月曜日`, `毎週月`) | `weekly mon 04:00` |
//! | `毎月1日 03:00`        | `monthly 1 03:00`                    |
//! | `毎月末日 03:00` (`毎月末`) | `monthly last 03:00`            |
//! | `毎月第3営業日 09:00`  | `monthly business-day 3 09:00`       |
//! | `毎月最終営業日 23:00` | `monthly last business-day 23:00`    |
//! | `毎営業日 03:00` (`営業日 毎日`) | `daily business-days 03:00` |
//!
//! Full-width digits and colon (`０３：００`) are read as ASCII; spaces
//! inside the day part are ignored. The parsed schedule is the English one:
//! `Display` prints the English form.

use chrono::Weekday;

use super::{
    parse_business_day, parse_hhmm, parse_month_day, BusinessDay, MonthDay, Schedule,
    ScheduleError, ACCEPTED,
};

/// Full-width digits, colon and space as ASCII.
fn normalise(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            '：' => ':',
            '\u{3000}' => ' ',
            c => c,
        })
        .collect()
}

/// Splits `"毎日 03:00"` / `"毎日03:00"` into the day part (spaces removed)
/// and the time part (`None` when the text does not end in `H:MM`).
fn split_time(text: &str) -> (String, Option<String>) {
    let t = text.trim_end();
    let tail_len = t
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ':')
        .count();
    let split = t.len() - tail_len; // digits and ':' are one byte each
    let (day, time) = t.split_at(split);
    let day: String = day.chars().filter(|c| !c.is_whitespace()).collect();
    if time.contains(':') {
        (day, Some(time.to_string()))
    } else {
        (day + time, None)
    }
}

fn weekday(kanji: &str) -> Option<Weekday> {
    let k = kanji
        .strip_suffix("曜日")
        .or_else(|| kanji.strip_suffix('曜'))
        .unwrap_or(kanji);
    Some(match k {
        "月" => Weekday::Mon,
        "火" => Weekday::Tue,
        "水" => Weekday::Wed,
        "木" => Weekday::Thu,
        "金" => Weekday::Fri,
        "土" => Weekday::Sat,
        "日" => Weekday::Sun,
        _ => return None,
    })
}

/// Parse a Japanese schedule (the table in the module docs). `text` has
/// its whitespace already collapsed.
pub(super) fn parse(text: &str) -> Result<Schedule, ScheduleError> {
    let norm = normalise(text);
    let (day, time) = split_time(&norm);
    let Some(time) = time else {
        return Err(unreadable(text));
    };
    let at = parse_hhmm(text, &time)?;
    if day == "毎日" {
        return Ok(Schedule::Daily { at });
    }
    if day == "毎営業日" || day == "営業日毎日" || day == "毎日営業日" {
        return Ok(Schedule::DailyBusinessDays { at });
    }
    if let Some(rest) = day.strip_prefix("毎週") {
        // 日曜 = Sunday: "日" alone only after the prefix ("毎週日").
        return match weekday(rest) {
            Some(weekday) => Ok(Schedule::Weekly { weekday, at }),
            None => Err(ScheduleError::BadWeekday {
                text: text.to_string(),
                weekday: rest.to_string(),
            }),
        };
    }
    if let Some(rest) = day.strip_prefix("毎月") {
        if matches!(rest, "末日" | "末" | "最終日" | "月末") {
            return Ok(Schedule::Monthly {
                day: MonthDay::Last,
                at,
            });
        }
        if rest == "最終営業日" {
            return Ok(Schedule::MonthlyBusinessDay {
                day: BusinessDay::Last,
                at,
            });
        }
        if let Some(n) = rest
            .strip_prefix('第')
            .and_then(|r| r.strip_suffix("営業日"))
        {
            return Ok(Schedule::MonthlyBusinessDay {
                day: parse_business_day(text, n)?,
                at,
            });
        }
        if let Some(d) = rest.strip_suffix('日') {
            return Ok(Schedule::Monthly {
                day: parse_month_day(text, d)?,
                at,
            });
        }
    }
    Err(unreadable(text))
}

/// The time written in `text` (`03:00`, `3:00`, `3時`, `3時30分`) as
/// `HH:MM`, for the suggestion; `03:00` when there is none.
fn time_in(text: &str) -> String {
    let norm = normalise(text);
    for word in norm.split(|c: char| !(c.is_ascii_digit() || c == ':')) {
        if let Some((h, m)) = word.split_once(':') {
            if let (Ok(h @ 0..=23), Ok(m @ 0..=59)) = (h.parse::<u32>(), m.parse::<u32>()) {
                return format!("{h:02}:{m:02}");
            }
        }
    }
    if let Some((before, after)) = norm.split_once('時') {
        let h: String = before
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let m: String = after.chars().take_while(char::is_ascii_digit).collect();
        let m = if after[m.len()..].starts_with('分') {
            m.parse::<u32>().ok().filter(|m| *m < 60).unwrap_or(0)
        } else {
            0
        };
        if let Ok(h @ 0..=23) = h.parse::<u32>() {
            return format!("{h:02}:{m:02}");
        }
    }
    "03:00".to_string()
}

/// The first number 1..=31 written in `text` that is not part of a time.
fn number_in(text: &str) -> Option<u32> {
    let norm = normalise(text);
    norm.split(|c: char| !(c.is_ascii_digit() || c == ':'))
        .filter(|w| !w.contains(':'))
        .find_map(|w| w.parse::<u32>().ok().filter(|n| (1..=31).contains(n)))
}

/// The error for a schedule none of the forms reads: the accepted forms
/// first, then the one closest to what was written (same language, the
/// time and day written kept).
pub(super) fn unreadable(text: &str) -> ScheduleError {
    ScheduleError::Unreadable {
        text: text.to_string(),
        accepted: ACCEPTED,
        closest: closest(text),
    }
}

fn closest(text: &str) -> String {
    let t = time_in(text);
    let lower = text.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let ja = !text.is_ascii();
    let n = number_in(text);
    let business = has(&["営業日", "business", "workday", "working day", "weekday"]);
    let last = has(&["last", "末", "最終", "end"]);
    // "第3営業日" is an Nth business day of a month even without 毎月.
    let monthly = has(&["毎月", "month", "月次", "第"]);
    let weekly = has(&["毎週", "week", "週"]) && !business;
    let day_of_week = [
        ("月曜", "mon", "月"),
        ("火曜", "tue", "火"),
        ("水曜", "wed", "水"),
        ("木曜", "thu", "木"),
        ("金曜", "fri", "金"),
        ("土曜", "sat", "土"),
        ("日曜", "sun", "日"),
    ]
    .into_iter()
    .find(|(k, e, _)| lower.contains(k) || lower.contains(e));
    match (
        ja,
        business,
        monthly || last,
        weekly || day_of_week.is_some(),
    ) {
        (true, true, true, _) if last => format!("毎月最終営業日 {t}"),
        (true, true, true, _) => format!("毎月第{}営業日 {t}", n.unwrap_or(1).min(23)),
        (true, true, false, _) => format!("毎営業日 {t}"),
        (true, false, true, _) if last => format!("毎月末日 {t}"),
        (true, false, true, _) => format!("毎月{}日 {t}", n.unwrap_or(1)),
        (true, false, false, true) => {
            format!("毎週{}曜 {t}", day_of_week.map_or("月", |d| d.2))
        }
        (true, ..) => format!("毎日 {t}"),
        (false, true, true, _) if last => format!("monthly last business-day {t}"),
        (false, true, true, _) => {
            format!("monthly business-day {} {t}", n.unwrap_or(1).min(23))
        }
        (false, true, false, _) => format!("daily business-days {t}"),
        (false, false, true, _) if last => format!("monthly last {t}"),
        (false, false, true, _) => format!("monthly {} {t}", n.unwrap_or(1)),
        (false, false, false, true) => {
            format!("weekly {} {t}", day_of_week.map_or("mon", |d| d.1))
        }
        (false, ..) => format!("daily {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn japanese_forms_are_the_english_ones() {
        for (ja, en) in [
            ("毎日 03:00", "daily 03:00"),
            ("毎日03:00", "daily 03:00"),
            ("毎日　０３：００", "daily 03:00"),
            ("毎週月曜 04:00", "weekly mon 04:00"),
            ("毎週月曜日 4:00", "weekly mon 04:00"),
            ("毎週 金曜 18:30", "weekly fri 18:30"),
            ("毎週日曜 05:00", "weekly sun 05:00"),
            ("毎週日 05:00", "weekly sun 05:00"),
            ("毎週水 05:00", "weekly wed 05:00"),
            ("毎月1日 03:00", "monthly 1 03:00"),
            ("毎月 25日 03:00", "monthly 25 03:00"),
            ("毎月末日 03:00", "monthly last 03:00"),
            ("毎月末 03:00", "monthly last 03:00"),
            ("毎月第3営業日 09:00", "monthly business-day 3 09:00"),
            ("毎月最終営業日 23:00", "monthly last business-day 23:00"),
            ("毎営業日 03:00", "daily business-days 03:00"),
            ("営業日 毎日 03:00", "daily business-days 03:00"),
        ] {
            assert_eq!(s(ja), s(en), "{ja}");
            assert_eq!(s(ja).to_string(), en);
        }
    }

    #[test]
    fn japanese_errors_say_what_is_wrong() {
        let e = Schedule::parse("毎月32日 03:00").unwrap_err();
        assert!(matches!(e, ScheduleError::BadDayOfMonth { .. }), "{e}");
        let e = Schedule::parse("毎週月曜 25:00").unwrap_err();
        assert!(matches!(e, ScheduleError::BadTime { .. }), "{e}");
        let e = Schedule::parse("毎週祝 04:00").unwrap_err();
        assert!(matches!(e, ScheduleError::BadWeekday { .. }), "{e}");
        let e = Schedule::parse("毎月第24営業日 09:00").unwrap_err();
        assert!(matches!(e, ScheduleError::BadBusinessDay { .. }), "{e}");
    }

    #[test]
    fn unreadable_leads_with_the_forms_and_offers_the_closest() {
        for (text, want) in [
            ("毎日3時", "毎日 03:00"),
            ("毎朝 03:00", "毎日 03:00"),
            ("月末 23:00", "毎月末日 23:00"),
            ("毎月5日", "毎月5日 03:00"),
            ("第3営業日 9時30分", "毎月第3営業日 09:30"),
            ("every day at 03:00", "daily 03:00"),
            ("every monday 04:00", "weekly mon 04:00"),
            ("end of month 23:00", "monthly last 23:00"),
            (
                "3rd business day of the month 09:00",
                "monthly business-day 3 09:00",
            ),
            ("@daily", "daily 03:00"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            let ScheduleError::Unreadable { closest, .. } = &e else {
                panic!("{text}: {e:?}");
            };
            assert_eq!(closest, want, "{text}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "cannot read schedule {text:?}; accepted forms: \"daily HH:MM\""
                )),
                "{msg}"
            );
            assert!(
                msg.ends_with(&format!("Closest to what was written: {want:?}")),
                "{msg}"
            );
            // The suggestion itself is accepted.
            Schedule::parse(want).unwrap();
        }
    }
}
