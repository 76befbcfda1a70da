//! Cron expressions of ingestion schedules, parsed and evaluated by the `croner` crate in the
//! schedule's IANA time zone (default UTC). Five fields (minute, hour, day of month, month, day
//! of week) with `*`, lists, ranges, steps, month and day names, `L` (last day of the month, or
//! with `#` the last such weekday), `W` (the weekday nearest a day of the month), `#` (the Nth
//! weekday of the month) and the `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` shorthands.
//!
//! Days: when both day fields are restricted (anything but a bare `*`, so `*/2` is restricted),
//! a day matches if EITHER matches; a `+` before the day of week (`0 0 */2 * +mon`) requires
//! both. Daylight saving time: a time that a spring-forward gap skips runs at the first instant
//! after the gap; a time that a fall-back repeats runs once, at the first of the two instants.
use anyhow::{bail, Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression and the time zone its fields are read in.
#[derive(Clone, Debug)]
pub struct Cron {
    cron: croner::Cron,
    tz: Tz,
}

impl Cron {
    /// Parses `expr` in time zone `tz` (an IANA name such as `UTC` or `Europe/Berlin`); the error
    /// names the expression or the zone at fault.
    pub fn parse(expr: &str, tz: &str) -> Result<Cron> {
        let zone: Tz = tz.parse().map_err(|_| {
            anyhow::anyhow!(
                "unknown time zone {tz:?}: expected an IANA name such as UTC or Europe/Berlin"
            )
        })?;
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expr).with_context(|| {
            format!(
                "cron expression {expr:?} is not valid; expected 5 fields: minute hour \
                 day-of-month month day-of-week (or @hourly, @daily, ...)"
            )
        })?;
        let cron = Cron { cron, tz: zone };
        if cron.next_after(0).is_none() {
            bail!("cron expression {expr:?} never fires (no such day)");
        }
        Ok(cron)
    }

    /// The first firing time strictly after `after_ms` (milliseconds since the epoch), on a whole
    /// minute; `None` when croner finds none.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let start = self.tz.timestamp_millis_opt(after_ms).single()?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp_millis())
    }
}

/// A registry time (milliseconds since the epoch) as `YYYY-MM-DD HH:MM:SSZ`, for listings.
pub fn format_utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .timestamp_millis()
    }

    fn next_in(expr: &str, tz: &str, from: i64) -> i64 {
        Cron::parse(expr, tz).unwrap().next_after(from).unwrap()
    }

    fn next(expr: &str, from: i64) -> i64 {
        next_in(expr, "UTC", from)
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
        assert_eq!(next("@daily", t), at(2026, 11, 28, 0, 0));
        assert_eq!(next("@hourly", t), at(2026, 11, 27, 22, 0));
        assert_eq!(next("0 0 * * 7", t), at(2026, 11, 29, 0, 0)); // 7 is Sunday
        assert_eq!(
            next("0 0 29 2 *", at(2026, 1, 1, 0, 0)),
            at(2028, 2, 29, 0, 0)
        );
    }

    #[test]
    fn a_restricted_day_of_month_and_a_day_of_week_match_either_unless_plus() {
        // 2026-11: the 2nd is a Monday. `*/2` is restricted: odd days OR Mondays.
        let t = at(2026, 11, 1, 12, 0); // a Sunday
        assert_eq!(next("0 0 */2 * mon", t), at(2026, 11, 2, 0, 0)); // Monday the 2nd
                                                                     // Then the 3rd, an odd day.
        assert_eq!(
            next("0 0 */2 * mon", at(2026, 11, 2, 12, 0)),
            at(2026, 11, 3, 0, 0)
        );
        // `+`: odd days that are Mondays: the 9th.
        assert_eq!(next("0 0 */2 * +mon", t), at(2026, 11, 9, 0, 0));
        // A bare `*` leaves the other field alone: every Monday.
        assert_eq!(
            next("0 0 * * mon", at(2026, 11, 3, 0, 0)),
            at(2026, 11, 9, 0, 0)
        );
    }

    #[test]
    fn last_nearest_weekday_and_nth_weekday() {
        let t = at(2026, 2, 1, 0, 0);
        assert_eq!(next("0 0 L * *", t), at(2026, 2, 28, 0, 0)); // last day of February
        assert_eq!(next("0 0 * * 5#L", t), at(2026, 2, 27, 0, 0)); // last Friday
        assert_eq!(next("0 0 * * mon#2", t), at(2026, 2, 9, 0, 0)); // second Monday
                                                                    // 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th.
        assert_eq!(next("0 0 15W * *", t), at(2026, 2, 16, 0, 0));
        // 2026-08-01 is a Saturday: 1W stays in the month, Monday the 3rd.
        assert_eq!(
            next("0 0 1W * *", at(2026, 7, 2, 0, 0)),
            at(2026, 8, 3, 0, 0)
        );
    }

    #[test]
    fn daylight_saving_changes_in_berlin() {
        let berlin = "Europe/Berlin";
        // 2026-03-29: clocks go from 02:00 CET to 03:00 CEST; 02:30 does not exist, so the job runs
        // at the first instant after the gap (03:00 CEST = 01:00 UTC), once.
        let spring = at(2026, 3, 28, 12, 0);
        let first = next_in("30 2 * * *", berlin, spring);
        assert_eq!(first, at(2026, 3, 29, 1, 0));
        assert_eq!(next_in("30 2 * * *", berlin, first), at(2026, 3, 30, 0, 30));
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice and the job runs at
        // the first (CEST, 00:30 UTC), not again an hour later.
        let autumn = at(2026, 10, 24, 12, 0);
        let first = next_in("30 2 * * *", berlin, autumn);
        assert_eq!(first, at(2026, 10, 25, 0, 30));
        assert_eq!(
            next_in("30 2 * * *", berlin, first),
            at(2026, 10, 26, 1, 30)
        );
        // In winter 03:00 Berlin is 02:00 UTC.
        assert_eq!(
            next_in("0 3 * * *", berlin, at(2026, 12, 1, 0, 0)),
            at(2026, 12, 1, 2, 0)
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_input_named() {
        for (expr, tz, needle) in [
            ("* * * *", "UTC", "\"* * * *\""),
            ("* * * * * *", "UTC", "5 fields"),
            ("60 * * * *", "UTC", "\"60 * * * *\""),
            ("* 24 * * *", "UTC", "not valid"),
            ("* * 0 * *", "UTC", "not valid"),
            ("* * * 13 *", "UTC", "not valid"),
            ("* * * * 8", "UTC", "not valid"),
            ("*/0 * * * *", "UTC", "not valid"),
            ("x * * * *", "UTC", "not valid"),
            ("0 0 30 2 *", "UTC", "never fires"),
            (
                "0 0 * * *",
                "Mars/Olympus",
                "unknown time zone \"Mars/Olympus\"",
            ),
        ] {
            let err = format!("{:#}", Cron::parse(expr, tz).unwrap_err());
            assert!(err.contains(needle), "{expr} {tz}: {err}");
        }
    }
}
