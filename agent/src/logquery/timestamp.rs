//! The timestamp a log line starts with, if any, and the zone of those that
//! carry no offset.
//!
//! Recognised at the very start of a line (optionally after one `[`):
//! - RFC 3339 / ISO 8601: `2026-11-21T10:00:00Z`, `2026-11-21T10:00:00.123+01:00`,
//!   `2026-11-21 10:00:00`, `2026-11-21 10:00:00,123` (log4j, Python);
//! - classic syslog: `Nov 21 10:00:00`, which has no year: the current year
//!   is assumed, or the previous one when that would put the line more than
//!   a day in the future (a December line read in January);
//! - the operation log's JSON lines, which start with `{"at":"<rfc3339>"`.
//!
//! A time without an offset (ISO without `Z`/`±hh:mm`, and every syslog
//! time) is read in the configured [`NaiveZone`]: UTC by default, because
//! most embedded devices run in UTC and a wrong guess of "local" would
//! shift every line silently; `local` for devices whose clock and logs use
//! the local zone (then DST changes are honoured per line); or a fixed
//! offset such as `+01:00` for an application that logs in one zone.
//!
//! The parser is hand-written on bytes rather than built on chrono's format
//! strings: it runs on every line of multi-gigabyte files, and a line that
//! does not start with a digit, `[`, `{` or an upper-case letter is turned
//! down after one byte.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use chrono::{DateTime, Datelike, FixedOffset, Local, Offset, TimeZone, Utc};

/// A point in time as seconds and nanoseconds since the Unix epoch: cheap to
/// compare, and exact (RFC 3339 allows nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    secs: i64,
    nanos: u32,
}

impl Stamp {
    pub fn of<Tz: TimeZone>(time: &DateTime<Tz>) -> Stamp {
        Stamp {
            secs: time.timestamp(),
            nanos: time.timestamp_subsec_nanos(),
        }
    }

    pub fn of_system_time(time: SystemTime) -> Stamp {
        Stamp::of(&DateTime::<Utc>::from(time))
    }
}

const DAY_S: i64 = 86_400;

/// The zone of timestamps written without an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NaiveZone {
    #[default]
    Utc,
    /// The device's local zone (`/etc/localtime` or `TZ`), with the offset
    /// valid at each line's time.
    Local,
    Fixed(FixedOffset),
}

impl FromStr for NaiveZone {
    type Err = String;

    fn from_str(s: &str) -> Result<NaiveZone, String> {
        match s.trim() {
            z if z.eq_ignore_ascii_case("utc") => Ok(NaiveZone::Utc),
            z if z.eq_ignore_ascii_case("local") => Ok(NaiveZone::Local),
            z => parse_offset(z.as_bytes())
                .filter(|(_, used)| *used == z.len())
                .and_then(|(seconds, _)| FixedOffset::east_opt(seconds))
                .map(NaiveZone::Fixed)
                .ok_or_else(|| {
                    format!("{s:?} is not \"utc\", \"local\" or an offset such as \"+01:00\"")
                }),
        }
    }
}

impl fmt::Display for NaiveZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NaiveZone::Utc => f.write_str("utc"),
            NaiveZone::Local => f.write_str("local"),
            NaiveZone::Fixed(offset) => write!(f, "{offset}"),
        }
    }
}

/// Reads line-start timestamps for one query.
#[derive(Debug)]
pub struct Parser {
    zone: NaiveZone,
    /// When the query started: the reference for syslog's missing year.
    now: Stamp,
    /// The current year in `zone`.
    this_year: i32,
    /// The local offset of the last hour converted, keyed by the hour
    /// (local seconds / 3600). Zone rules change offsets on hour
    /// boundaries, and consecutive lines nearly always share their hour, so
    /// this spares a zone lookup per line.
    local_offset: Option<(i64, i64)>,
}

impl Parser {
    pub fn new(zone: NaiveZone, now: DateTime<Utc>) -> Parser {
        let this_year = match zone {
            NaiveZone::Utc => now.year(),
            NaiveZone::Local => now.with_timezone(&Local).year(),
            NaiveZone::Fixed(offset) => now.with_timezone(&offset).year(),
        };
        Parser {
            zone,
            now: Stamp::of(&now),
            this_year,
            local_offset: None,
        }
    }

    /// The time `line` starts with, or `None` for a line that does not
    /// start with a timestamp (a continuation line).
    pub fn parse(&mut self, line: &[u8]) -> Option<Stamp> {
        match *line.first()? {
            b'0'..=b'9' => self.iso(line),
            b'[' => self.iso(&line[1..]),
            b'{' => self.iso(line.strip_prefix(br#"{"at":""#)?),
            b'A'..=b'Z' => self.syslog(line),
            _ => None,
        }
    }

    fn iso(&mut self, b: &[u8]) -> Option<Stamp> {
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let year = digits(&b[0..4])? as i64;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let (clock, nanos, used) = clock(&b[11..])?;
        let offset = parse_offset(&b[11 + used..]).map(|(seconds, _)| seconds);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let local = days_from_civil(year, month, day) * DAY_S + clock;
        let secs = match offset {
            Some(offset) => local - i64::from(offset),
            None => self.naive_to_utc(local),
        };
        Some(Stamp { secs, nanos })
    }

    /// `Mmm dd HH:MM:SS`, the day space-padded (`Nov  1`) or not.
    fn syslog(&mut self, b: &[u8]) -> Option<Stamp> {
        let month = match b.get(0..4)? {
            b"Jan " => 1,
            b"Feb " => 2,
            b"Mar " => 3,
            b"Apr " => 4,
            b"May " => 5,
            b"Jun " => 6,
            b"Jul " => 7,
            b"Aug " => 8,
            b"Sep " => 9,
            b"Oct " => 10,
            b"Nov " => 11,
            b"Dec " => 12,
            _ => return None,
        };
        let rest = &b[4..];
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let day_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=2).contains(&day_len) || rest.get(day_len) != Some(&b' ') {
            return None;
        }
        let day = digits(&rest[..day_len])?;
        let (clock, nanos, _) = clock(&rest[day_len + 1..])?;
        let mut year = i64::from(self.this_year);
        // 29 February in a year that has none: the line is from the last
        // leap year, at most a few years back; taking the year before is
        // enough for the "newest logs" this is used on.
        if day == 0 || day > days_in_month(year, month) {
            year -= 1;
            if day == 0 || day > days_in_month(year, month) {
                return None;
            }
        }
        let at = |year: i64, parser: &mut Parser| {
            let local = days_from_civil(year, month, day) * DAY_S + clock;
            Stamp {
                secs: parser.naive_to_utc(local),
                nanos,
            }
        };
        let stamp = at(year, self);
        if stamp.secs > self.now.secs + DAY_S && day <= days_in_month(year - 1, month) {
            return Some(at(year - 1, self));
        }
        Some(stamp)
    }

    /// UTC seconds of a wall-clock time (`local`: seconds since the epoch
    /// as if that wall clock were UTC) read in the configured zone.
    fn naive_to_utc(&mut self, local: i64) -> i64 {
        match self.zone {
            NaiveZone::Utc => local,
            NaiveZone::Fixed(offset) => local - i64::from(offset.local_minus_utc()),
            NaiveZone::Local => {
                let hour = local.div_euclid(3600);
                let offset = match self.local_offset {
                    Some((cached, offset)) if cached == hour => offset,
                    _ => {
                        let offset = local_offset_at(hour * 3600);
                        self.local_offset = Some((hour, offset));
                        offset
                    }
                };
                local - offset
            }
        }
    }
}

/// The device's UTC offset, in seconds, at a wall-clock time. In the hour a
/// DST change repeats, the earlier (summer) reading wins; in the hour it
/// skips, which no correct clock shows, the offset in force just before.
fn local_offset_at(local: i64) -> i64 {
    let Some(naive) = DateTime::from_timestamp(local, 0).map(|t| t.naive_utc()) else {
        return 0;
    };
    let offset = match Local.offset_from_local_datetime(&naive).earliest() {
        Some(offset) => offset.fix(),
        None => Local.offset_from_utc_datetime(&naive).fix(),
    };
    i64::from(offset.local_minus_utc())
}

/// `HH:MM:SS` plus an optional `.fff` or `,fff` fraction: (seconds into the
/// day, nanoseconds, bytes used).
fn clock(b: &[u8]) -> Option<(i64, u32, usize)> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (hour, minute, second) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    // 60 is a leap second; it reads as the next minute's first second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut used = 8;
    let mut nanos = 0;
    if matches!(b.get(8), Some(b'.' | b',')) {
        let fraction = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
        if fraction > 0 {
            // Digits past nanoseconds are read over and ignored.
            for (i, c) in b[9..9 + fraction].iter().take(9).enumerate() {
                nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
            }
            used = 9 + fraction;
        }
    }
    let seconds = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Some((seconds, nanos, used))
}

/// `Z`, `+hh:mm`, `+hhmm` or `+hh` (or `-`): (seconds east of UTC, bytes
/// used). Anything else means "no offset".
fn parse_offset(b: &[u8]) -> Option<(i32, usize)> {
    let sign = match *b.first()? {
        b'Z' | b'z' => return Some((0, 1)),
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours = digits(b.get(1..3)?)? as i32;
    let (minutes, used) = match (b.get(3), b.get(4..6)) {
        (Some(b':'), Some(mm)) => (digits(mm)?, 6),
        (Some(c), _) if c.is_ascii_digit() => (digits(b.get(3..5)?)?, 5),
        _ => (0, 3),
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((sign * (hours * 3600 + minutes as i32 * 60), used))
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`), without a table or a loop.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, NaiveDateTime};

    use super::*;

    fn utc(text: &str) -> Stamp {
        Stamp::of(&DateTime::parse_from_rfc3339(text).unwrap())
    }

    fn parser(zone: NaiveZone, now: &str) -> Parser {
        Parser::new(zone, DateTime::parse_from_rfc3339(now).unwrap().to_utc())
    }

    fn parse(zone: NaiveZone, line: &str) -> Option<Stamp> {
        parser(zone, "2026-11-21T12:00:00Z").parse(line.as_bytes())
    }

    #[test]
    fn iso_timestamps_are_read_with_their_offset_and_fraction() {
        let z = NaiveZone::Utc;
        assert_eq!(
            parse(z, "2026-11-21T10:00:00Z app started"),
            Some(utc("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse(z, "2026-11-21T10:00:00.123+01:00 x"),
            Some(utc("2026-11-21T09:00:00.123Z"))
        );
        assert_eq!(
            parse(z, "2026-11-21 10:00:00 INFO"),
            Some(utc("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse(z, "2026-11-21 10:00:00,123 WARN"),
            Some(utc("2026-11-21T10:00:00.123Z"))
        );
        assert_eq!(
            parse(z, "2026-11-21T10:00:00.123456789123-0530"),
            Some(utc("2026-11-21T15:30:00.123456789Z"))
        );
        assert_eq!(
            parse(z, "[2026-11-21T10:00:00Z] bracketed"),
            Some(utc("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse(z, r#"{"at":"2026-11-21T10:00:00.5Z","kind":"reboot"}"#),
            Some(utc("2026-11-21T10:00:00.5Z"))
        );
        assert_eq!(
            parse(z, "2026-11-21T10:00:00-worker-3 is not an offset"),
            Some(utc("2026-11-21T10:00:00Z"))
        );
    }

    #[test]
    fn lines_that_do_not_start_with_a_valid_timestamp_are_continuations() {
        for line in [
            "",
            "\tat com.example.Main.run(Main.java:42)",
            "Caused by: java.io.IOException",
            "2026-11-21",
            "2026-13-01 10:00:00 month 13",
            "2026-02-29 10:00:00 not a leap year",
            "2026-11-21 24:00:00",
            "2026-11-21x10:00:00",
            "12:00:00 time only",
            "Nov 32 10:00:00",
            "Nov 21 10:00",
            "November 21 10:00:00",
            r#"{"kind":"reboot","at":"2026-11-21T10:00:00Z"}"#,
            "\u{FFFD}2026-11-21 10:00:00",
        ] {
            assert_eq!(parse(NaiveZone::Utc, line), None, "{line:?}");
        }
        assert_eq!(
            parser(NaiveZone::Utc, "2026-01-01T00:00:00Z").parse(b"\xff\xfe\x00 binary"),
            None
        );
    }

    #[test]
    fn syslog_times_take_the_current_year_unless_that_is_more_than_a_day_ahead() {
        let mut p = parser(NaiveZone::Utc, "2026-11-21T12:00:00Z");
        assert_eq!(
            p.parse(b"Nov 21 10:00:00 host app[1]: x"),
            Some(utc("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            p.parse(b"Nov  1 09:08:07 host x"),
            Some(utc("2026-11-01T09:08:07Z"))
        );
        assert_eq!(
            p.parse(b"Nov 1 09:08:07 host x"),
            Some(utc("2026-11-01T09:08:07Z"))
        );
        assert_eq!(
            p.parse(b"Nov 22 11:00:00 tomorrow, a clock a little ahead"),
            Some(utc("2026-11-22T11:00:00Z"))
        );

        let mut january = parser(NaiveZone::Utc, "2027-01-02T08:00:00Z");
        assert_eq!(
            january.parse(b"Dec 31 23:59:59 host x"),
            Some(utc("2026-12-31T23:59:59Z")),
            "last year's December"
        );
        assert_eq!(
            january.parse(b"Jan  2 07:00:00 host x"),
            Some(utc("2027-01-02T07:00:00Z"))
        );
        assert_eq!(
            january.parse(b"Feb 29 10:00:00 host x"),
            None,
            "no 29 February in 2027 or 2026"
        );
        let mut after_leap_year = parser(NaiveZone::Utc, "2029-03-01T00:00:00Z");
        assert_eq!(
            after_leap_year.parse(b"Feb 29 10:00:00 x"),
            Some(utc("2028-02-29T10:00:00Z"))
        );
        let mut in_leap_year = parser(NaiveZone::Utc, "2028-03-01T00:00:00Z");
        assert_eq!(
            in_leap_year.parse(b"Feb 29 10:00:00 x"),
            Some(utc("2028-02-29T10:00:00Z"))
        );
    }

    #[test]
    fn naive_times_are_read_in_the_configured_zone_and_explicit_offsets_win() {
        let plus_one: NaiveZone = "+01:00".parse().unwrap();
        assert_eq!(
            parse(plus_one, "2026-11-21 10:00:00 naive"),
            Some(utc("2026-11-21T09:00:00Z"))
        );
        assert_eq!(
            parse(plus_one, "Nov 21 10:00:00 syslog"),
            Some(utc("2026-11-21T09:00:00Z"))
        );
        assert_eq!(
            parse(plus_one, "2026-11-21T10:00:00Z explicit"),
            Some(utc("2026-11-21T10:00:00Z"))
        );

        // Whatever zone the test machine is in, `local` must agree with
        // chrono's reading of the same wall-clock times, summer and winter.
        for wall in ["2026-07-01 12:00:00", "2026-12-01 12:00:00"] {
            let naive = NaiveDateTime::parse_from_str(wall, "%Y-%m-%d %H:%M:%S").unwrap();
            let expected = Local.from_local_datetime(&naive).earliest().unwrap();
            assert_eq!(
                parse(NaiveZone::Local, wall),
                Some(Stamp::of(&expected)),
                "{wall}"
            );
        }
    }

    #[test]
    fn zone_names_are_parsed_and_shown() {
        assert_eq!("utc".parse(), Ok(NaiveZone::Utc));
        assert_eq!("UTC".parse(), Ok(NaiveZone::Utc));
        assert_eq!("local".parse(), Ok(NaiveZone::Local));
        assert_eq!("-05:30".parse::<NaiveZone>().unwrap().to_string(), "-05:30");
        for bad in ["", "Europe/Paris", "+25:00", "+01:00x", "1"] {
            assert!(bad.parse::<NaiveZone>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_day_arithmetic_agrees_with_chrono() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 11, 21), (1969, 12, 31)] {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(
                days_from_civil(i64::from(y), m, d),
                (date - epoch).num_days(),
                "{date}"
            );
        }
    }
}
