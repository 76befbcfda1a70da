//! Cron expressions for ingestion schedules: the classic five fields (minute, hour, day of
//! month, month, day of week), evaluated in UTC, with `*`, lists, ranges, steps, month and day
//! names and the `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` shorthands. Small enough to
//! read, so the registry does not pull in a date-time crate for one function.
use anyhow::{bail, Context, Result};

/// A parsed cron expression. When both day fields are restricted, a day matches either (as in
/// Vixie cron); otherwise both must match.
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

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MINUTE_MS: i64 = 60_000;
/// How far ahead `next_after` searches before it calls an expression unsatisfiable (Feb 30th).
const SEARCH_DAYS: i64 = 366 * 5;

impl Cron {
    /// Parses `expr`; the error names the expression and the field at fault.
    pub fn parse(expr: &str) -> Result<Cron> {
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            bail!(
                "cron expression {expr:?} has {} fields; expected 5: minute hour day-of-month month day-of-week",
                fields.len()
            );
        }
        let field = |i: usize, name: &str, lo: u32, hi: u32, names: &[&str]| {
            parse_field(fields[i], lo, hi, names).with_context(|| {
                format!("cron expression {expr:?}: bad {name} field {:?}", fields[i])
            })
        };
        let mut weekdays = field(4, "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        let cron = Cron {
            minutes: field(0, "minute", 0, 59, &[])?,
            hours: field(1, "hour", 0, 23, &[])?,
            days: field(2, "day-of-month", 1, 31, &[])?,
            months: field(3, "month", 1, 12, &MONTHS)?,
            weekdays,
            days_any: fields[2] == "*",
            weekdays_any: fields[4] == "*",
        };
        if cron.next_after(0).is_none() {
            bail!("cron expression {expr:?} never fires (no such day)");
        }
        Ok(cron)
    }

    /// The first firing time strictly after `after_ms` (milliseconds since the epoch, UTC), on a
    /// whole minute; `None` when there is none within five years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut minute = after_ms.div_euclid(MINUTE_MS) + 1;
        let limit = minute + SEARCH_DAYS * 1440;
        while minute < limit {
            let day = minute.div_euclid(1440);
            let in_day = minute.rem_euclid(1440);
            let (y, m, d) = civil_from_days(day);
            if !bit(self.months, m) {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                minute = days_from_civil(ny, nm, 1) * 1440;
            } else if !self.day_matches(d, weekday(day)) {
                minute = (day + 1) * 1440;
            } else if !bit(self.hours, (in_day / 60) as u32) {
                minute = day * 1440 + (in_day / 60 + 1) * 60;
            } else if !bit(self.minutes, (in_day % 60) as u32) {
                minute += 1;
            } else {
                return Some(minute * MINUTE_MS);
            }
        }
        None
    }

    fn day_matches(&self, day_of_month: u32, weekday: u32) -> bool {
        let dom = bit(self.days, day_of_month);
        let dow = bit(self.weekdays, weekday);
        match (self.days_any, self.weekdays_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }
}

/// A registry time (milliseconds since the epoch) as `YYYY-MM-DD HH:MM:SSZ`, for listings.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn bit(set: u64, i: u32) -> bool {
    set & (1 << i) != 0
}

/// One field: a comma list of `*`, `N`, `A-B`, each optionally `/STEP`; names allowed.
fn parse_field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64> {
    let value = |s: &str| -> Result<u32> {
        let lower = s.to_ascii_lowercase();
        let v = match names.iter().position(|n| *n == lower) {
            Some(i) => i as u32 + if names.len() == 12 { 1 } else { 0 },
            None => s
                .parse::<u32>()
                .with_context(|| format!("{s:?} is not a number"))?,
        };
        if v < lo || v > hi {
            bail!("{v} is outside {lo}-{hi}");
        }
        Ok(v)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .with_context(|| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    bail!("step 0");
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `N/STEP` runs from N to the end of the range.
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            bail!("range {a}-{b} is backwards");
        }
        for v in (a..=b).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number: (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// 0 = Sunday; 1970-01-01 was a Thursday.
fn weekday(day: i64) -> u32 {
    (day + 4).rem_euclid(7) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        (days_from_civil(y, mo, d) * 1440 + h * 60 + mi) * MINUTE_MS
    }

    fn next(expr: &str, from: i64) -> i64 {
        Cron::parse(expr).unwrap().next_after(from).unwrap()
    }

    #[test]
    fn calendar_round_trips() {
        for day in [-800_000, -1, 0, 59, 365, 11_016, 19_782, 2_000_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(weekday(days_from_civil(2026, 11, 27)), 5); // a Friday
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(
            format_utc(at(2026, 11, 27, 21, 41) + 7_500),
            "2026-11-27 21:41:07Z"
        );
        assert_eq!(format_utc(0), "1970-01-01 00:00:00Z");
    }

    #[test]
    fn every_minute_fires_on_the_next_whole_minute() {
        let t = at(2026, 11, 27, 21, 40) + 1_500;
        assert_eq!(next("* * * * *", t), at(2026, 11, 27, 21, 41));
        // Strictly after: a time on the minute gives the following one.
        assert_eq!(
            next("* * * * *", at(2026, 11, 27, 21, 40)),
            at(2026, 11, 27, 21, 41)
        );
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        let t = at(2026, 11, 27, 21, 41);
        assert_eq!(next("*/15 * * * *", t), at(2026, 11, 27, 21, 45));
        assert_eq!(next("5,35 9-17 * * *", t), at(2026, 11, 28, 9, 5));
        assert_eq!(next("0 3 * * mon-fri", t), at(2026, 11, 30, 3, 0)); // Sat+Sun skipped
        assert_eq!(next("30 2 1 jan *", t), at(2027, 1, 1, 2, 30));
        assert_eq!(next("10/20 * * * *", t), at(2026, 11, 27, 21, 50));
        assert_eq!(next("@daily", t), at(2026, 11, 28, 0, 0));
        assert_eq!(next("@hourly", t), at(2026, 11, 27, 22, 0));
        assert_eq!(next("0 0 * * 7", t), at(2026, 11, 29, 0, 0)); // 7 is Sunday
    }

    #[test]
    fn leap_days_and_either_day_field() {
        assert_eq!(
            next("0 0 29 2 *", at(2026, 1, 1, 0, 0)),
            at(2028, 2, 29, 0, 0)
        );
        // Day of month 13 OR a Friday: the 27th of Nov 2026 is a Friday.
        assert_eq!(
            next("0 12 13 * fri", at(2026, 11, 20, 0, 0)),
            at(2026, 11, 20, 12, 0)
        );
        assert_eq!(
            next("0 12 13 * fri", at(2026, 11, 20, 13, 0)),
            at(2026, 11, 27, 12, 0)
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_the_field_named() {
        for (expr, needle) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "minute"),
            ("5-1 * * * *", "minute"),
            ("x * * * *", "minute"),
            ("0 0 30 2 *", "never fires"),
        ] {
            let err = format!("{:#}", Cron::parse(expr).unwrap_err());
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }
}
