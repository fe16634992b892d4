//! Cron expressions for schedules: five fields, minute hour day-of-month
//! month day-of-week, each `*`, a number, a range `a-b`, a list `a,b`, a
//! step `*/n` or `a-b/n`; month and weekday names (`jan`, `mon`); and the
//! shorthands `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. As in
//! cron, when both day fields are restricted a day matching either runs.
//! Times are UTC.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], base: u32) -> Option<u32> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Some(i as u32 + base);
    }
    s.parse().ok()
}

/// One field as a bit set over `min..=max`.
fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("{what}: step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: a step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, min).ok_or_else(|| format!("{what}: {a:?} is not a value"))?;
            let b = value(b, names, min).ok_or_else(|| format!("{what}: {b:?} is not a value"))?;
            (a, b)
        } else {
            let v = value(range, names, min).ok_or_else(|| format!("{what}: {range:?} is not a value"))?;
            // `5/15`: from 5 on, every 15.
            (v, if step > 1 { max } else { v })
        };
        // Sunday may be 7 (also as the end of a range: `fri-7`).
        let (lo, hi) = if max == 6 && hi == 7 && lo <= 7 {
            bits |= 1;
            if lo == 7 {
                continue;
            }
            (lo, 6)
        } else {
            (lo, hi)
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what}: {part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        let expanded = match expr {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            e if e.starts_with('@') => {
                return Err(format!("{e:?} is not @hourly, @daily, @weekly, @monthly or @yearly"))
            }
            e => e,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "{expr:?} has {} fields; a cron expression has 5: minute hour day-of-month month day-of-week \
                 (for example \"0 2 * * *\": every day at 02:00 UTC)",
                f.len()
            ));
        }
        let month_names: Vec<&str> = MONTHS.to_vec();
        Ok(Cron {
            minutes: field(f[0], "minute", 0, 59, &[])?,
            hours: field(f[1], "hour", 0, 23, &[])?,
            days: field(f[2], "day of month", 1, 31, &[])?,
            months: field(f[3], "month", 1, 12, &month_names)?,
            weekdays: field(f[4], "day of week", 0, 6, &DAYS)?,
            days_any: f[2] == "*",
            weekdays_any: f[4] == "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first time after `t` (whole minutes) the schedule fires; None
    /// if it never does (for example 30 February) within 5 years.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut c = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let end = t + Duration::days(5 * 366);
        while c < end {
            if self.months & (1 << c.month()) == 0 {
                // First minute of the next month.
                let (y, m) = if c.month() == 12 { (c.year() + 1, 1) } else { (c.year(), c.month() + 1) };
                c = c.with_day(1)?.with_hour(0)?.with_minute(0)?.with_year(y)?.with_month(m)?;
                continue;
            }
            if !self.day_matches(&c) {
                c = (c + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if self.hours & (1 << c.hour()) == 0 {
                c = (c + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if self.minutes & (1 << c.minute()) == 0 {
                c += Duration::minutes(1);
                continue;
            }
            return Some(c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("time")
    }

    #[test]
    fn next_times() {
        let t = at(2026, 12, 1, 18, 13);
        assert_eq!(Cron::parse("*/5 * * * *").expect("ok").next_after(t), Some(at(2026, 12, 1, 18, 15)));
        assert_eq!(Cron::parse("0 2 * * *").expect("ok").next_after(t), Some(at(2026, 12, 2, 2, 0)));
        assert_eq!(Cron::parse("@hourly").expect("ok").next_after(t), Some(at(2026, 12, 1, 19, 0)));
        assert_eq!(Cron::parse("30 1 1 * *").expect("ok").next_after(t), Some(at(2027, 1, 1, 1, 30)));
        // 2026-12-06 is a Sunday.
        assert_eq!(Cron::parse("0 0 * * sun").expect("ok").next_after(t), Some(at(2026, 12, 6, 0, 0)));
        assert_eq!(Cron::parse("0 0 * * 7").expect("ok").next_after(t), Some(at(2026, 12, 6, 0, 0)));
        assert_eq!(Cron::parse("15 3 * feb mon-fri").expect("ok").next_after(t), Some(at(2027, 2, 1, 3, 15)));
        // Either day field, as in cron.
        assert_eq!(Cron::parse("0 0 25 * mon").expect("ok").next_after(t), Some(at(2026, 12, 7, 0, 0)));
        assert_eq!(Cron::parse("0 0 30 2 *").expect("ok").next_after(t), None);
        assert_eq!(
            Cron::parse("5,10 * * * *").expect("ok").next_after(at(2026, 1, 1, 0, 7)),
            Some(at(2026, 1, 1, 0, 10))
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (e, want) in [
            ("* * *", "has 3 fields"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("*/0 * * * *", "step"),
            ("* * * foo *", "month"),
            ("@often", "@hourly"),
            ("5-1 * * * *", "outside"),
        ] {
            let err = Cron::parse(e).expect_err(e);
            assert!(err.contains(want), "{e}: {err}");
        }
    }
}
