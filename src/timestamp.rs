//! UTC instants with microsecond precision, and UTC calendar days.
//!
//! The wire contract carries RFC 3339 timestamps with an explicit offset. We keep every instant
//! as microseconds since the Unix epoch in UTC, because that is what Parquet's
//! `TIMESTAMP(MICROS, UTC)` stores and what DuckDB, Athena and Spark read without surprises.
//! The one textual form we ever write is `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional
//! digits, always `Z`), so that the canonical bytes of an event do not depend on how the
//! upstream spelled its offset.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// Microseconds per second.
const MICROS: i64 = 1_000_000;
/// Microseconds per day.
const DAY_MICROS: i64 = 86_400 * MICROS;

/// An instant in UTC, in microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a timestamp string was refused. The messages are written for the upstream developer
/// who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("is not an RFC 3339 timestamp (expected YYYY-MM-DDTHH:MM:SS[.ffffff]Z or ±HH:MM): {0}")]
    Syntax(&'static str),
    #[error(
        "has no UTC offset; append `Z` or `±HH:MM` (a local time without an offset is ambiguous)"
    )]
    MissingOffset,
    #[error("names a date or time that does not exist ({0})")]
    OutOfRange(&'static str),
    #[error(
        "has {0} fractional digits with a non-zero part below one microsecond; at most microsecond precision is stored"
    )]
    SubMicrosecond(usize),
}

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whether the instant's RFC 3339 text has a four-digit year (0000-9999), as every
    /// parsed timestamp's has: outside, [`Timestamp::date_text`] wraps the year, and two
    /// instants 10,000 years apart would read the same.
    pub const fn has_four_digit_year(self) -> bool {
        // 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z.
        -62_167_219_200_000_000 <= self.0 && self.0 < 253_402_300_800_000_000
    }

    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Timestamp(t.timestamp_micros())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).expect("timestamps are validated to be in range")
    }

    /// The UTC day this instant falls on.
    pub fn day(self) -> Day {
        Day(self.0.div_euclid(DAY_MICROS) as i32)
    }

    pub fn plus_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }

    /// Rounds up to a whole second (S3 retain-until dates carry whole seconds).
    pub fn ceil_to_second(self) -> Self {
        let rem = self.0.rem_euclid(MICROS);
        if rem == 0 {
            self
        } else {
            Timestamp(self.0 - rem + MICROS)
        }
    }

    /// Parses an RFC 3339 timestamp with a mandatory offset.
    ///
    /// Accepted: `2026-11-20T14:03:11Z`, `2026-11-20T14:03:11.123456Z`,
    /// `2026-11-20T09:03:11.5-05:00`; a lower-case `t`/`z` as RFC 3339 allows. Refused: a
    /// missing offset, a space instead of `T`, leap seconds, more than nine fractional
    /// digits, and non-zero digits below one microsecond.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimestampError> {
        use TimestampError::*;
        let b = s.as_bytes();
        let digits = |range: std::ops::Range<usize>| -> Result<u32, TimestampError> {
            if b.len() < range.end {
                return Err(Syntax("too short"));
            }
            let mut v = 0u32;
            for &c in &b[range] {
                if !c.is_ascii_digit() {
                    return Err(Syntax("expected a digit"));
                }
                v = v * 10 + u32::from(c - b'0');
            }
            Ok(v)
        };
        let year = digits(0..4)?;
        if b.get(4) != Some(&b'-') {
            return Err(Syntax("expected `-` after the year"));
        }
        let month = digits(5..7)?;
        if b.get(7) != Some(&b'-') {
            return Err(Syntax("expected `-` after the month"));
        }
        let day = digits(8..10)?;
        match b.get(10) {
            Some(b'T' | b't') => {}
            None => {
                return Err(Syntax(
                    "a date alone is not an instant; add a time and offset",
                ));
            }
            Some(_) => return Err(Syntax("expected `T` between date and time")),
        }
        let hour = digits(11..13)?;
        if b.get(13) != Some(&b':') {
            return Err(Syntax("expected `:` after the hour"));
        }
        let minute = digits(14..16)?;
        if b.get(16) != Some(&b':') {
            return Err(Syntax(
                "expected `:` after the minutes (seconds are required)",
            ));
        }
        let second = digits(17..19)?;
        let mut i = 19;
        let mut micros: i64 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let frac = &b[start..i];
            if frac.is_empty() {
                return Err(Syntax("expected digits after `.`"));
            }
            if frac.len() > 9 {
                return Err(Syntax("more than nine fractional digits"));
            }
            if frac.len() > 6 && frac[6..].iter().any(|&c| c != b'0') {
                return Err(SubMicrosecond(frac.len()));
            }
            for k in 0..6 {
                micros = micros * 10 + frac.get(k).map_or(0, |&c| i64::from(c - b'0'));
            }
        }
        let offset_secs: i64 = match b.get(i) {
            None => return Err(MissingOffset),
            Some(b'Z' | b'z') => {
                i += 1;
                0
            }
            Some(&sign @ (b'+' | b'-')) => {
                let oh = digits(i + 1..i + 3)?;
                if b.get(i + 3) != Some(&b':') {
                    return Err(Syntax("expected `:` inside the offset (±HH:MM)"));
                }
                let om = digits(i + 4..i + 6)?;
                if oh > 23 || om > 59 {
                    return Err(OutOfRange("offset"));
                }
                i += 6;
                let v = i64::from(oh * 3600 + om * 60);
                if sign == b'-' { -v } else { v }
            }
            Some(_) => return Err(Syntax("unexpected character where the offset should be")),
        };
        if i != b.len() {
            return Err(Syntax("unexpected characters after the offset"));
        }
        if hour > 23 {
            return Err(OutOfRange("hour"));
        }
        if minute > 59 {
            return Err(OutOfRange("minute"));
        }
        if second > 59 {
            return Err(OutOfRange("second (leap seconds are not accepted)"));
        }
        let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or(OutOfRange("date"))?;
        let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
        let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
        Ok(Timestamp(secs * MICROS + micros))
    }
}

/// `NaiveDate::from_ymd(1970, 1, 1).num_days_from_ce()`.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

impl Timestamp {
    /// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the same text as `Display`, without the
    /// formatting machinery: this runs for every event).
    pub fn write_to(self, out: &mut String) {
        out.push_str(std::str::from_utf8(&self.date_text()).expect("ASCII"));
        out.push_str(std::str::from_utf8(&self.time_of_day_text()).expect("ASCII"));
    }

    /// `YYYY-MM-DD`: the text of the UTC day. Accepted events lie in years 0001-9999; any
    /// other instant gets its year modulo 10000 rather than a panic, so text compared for
    /// equality must come from instants that [`Timestamp::has_four_digit_year`].
    pub fn date_text(self) -> [u8; 10] {
        let (y, m, d) = civil_from_days(self.0.div_euclid(DAY_MICROS));
        let y = y.rem_euclid(10_000) as u32;
        let mut b = *b"0000-00-00";
        put_pair(&mut b, 0, y / 100);
        put_pair(&mut b, 2, y % 100);
        put_pair(&mut b, 5, m);
        put_pair(&mut b, 8, d);
        b
    }

    /// `THH:MM:SS.ffffffZ`: the text after the date.
    pub fn time_of_day_text(self) -> [u8; 17] {
        let micros = self.0.rem_euclid(MICROS) as u32;
        let sod = self.0.div_euclid(MICROS).rem_euclid(86_400) as u32;
        let mut b = *b"T00:00:00.000000Z";
        put_pair(&mut b, 1, sod / 3600);
        put_pair(&mut b, 4, (sod / 60) % 60);
        put_pair(&mut b, 7, sod % 60);
        put_pair(&mut b, 10, micros / 10_000);
        put_pair(&mut b, 12, (micros / 100) % 100);
        put_pair(&mut b, 14, micros % 100);
        b
    }
}

/// `00` to `99`: the two digits of every number below 100 (two digits per table lookup; every
/// event's timestamps are formatted when it is sealed and again when a full sweep checks it).
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `v` (below 100) as two decimal digits at `b[at..]`.
fn put_pair(b: &mut [u8], at: usize, v: u32) {
    let i = v as usize * 2;
    b[at..at + 2].copy_from_slice(&DIGIT_PAIRS[i..i + 2]);
}

/// Days since 1970-01-01 to (year, month, day), for years 0..=9999 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the one form the archive writes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS);
        let micros = self.0.rem_euclid(MICROS);
        let day = Day(secs.div_euclid(86_400) as i32);
        let sod = secs.rem_euclid(86_400);
        write!(
            f,
            "{}T{:02}:{:02}:{:02}.{:06}Z",
            day,
            sod / 3600,
            (sod / 60) % 60,
            sod % 60,
            micros
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i32);

impl Day {
    pub const fn from_days_since_epoch(days: i32) -> Self {
        Day(days)
    }

    pub const fn days_since_epoch(self) -> i32 {
        self.0
    }

    pub fn date(self) -> NaiveDate {
        NaiveDate::from_num_days_from_ce_opt(self.0 + UNIX_EPOCH_DAYS_FROM_CE)
            .expect("days are in chrono's range")
    }

    pub fn from_date(date: NaiveDate) -> Self {
        Day(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
    }

    /// 00:00:00 UTC at the start of this day.
    pub fn start(self) -> Timestamp {
        Timestamp(i64::from(self.0) * DAY_MICROS)
    }

    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }

    pub fn prev(self) -> Day {
        Day(self.0 - 1)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Day> {
        if s.len() != 10 {
            return None;
        }
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(Day::from_date)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.start();
        if start.has_four_digit_year() {
            // Without `fmt`'s padded integers: the daemon formats a day for every event it
            // acknowledges.
            f.pad(std::str::from_utf8(&start.date_text()).expect("ASCII"))
        } else {
            let d = self.date();
            write!(f, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
        }
    }
}

impl serde::Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Day {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Day::parse(&s).ok_or_else(|| serde::de::Error::custom("expected a day as YYYY-MM-DD"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A day's text is chrono's `YYYY-MM-DD` (zero-padded, sign and all outside years
    /// 0001-9999), in `Display` (honouring a width within those years) and in JSON.
    #[test]
    fn days_format_as_chrono_dates() {
        let first = Day::parse("0001-01-01").unwrap();
        let last = Day::parse("9999-12-31").unwrap();
        let samples = (-2..3)
            .map(|k| Day(first.0 + k))
            .chain((-2..3).map(|k| Day(last.0 + k)))
            .chain((-800..800).map(|k| Day(k * 53 + k % 7)));
        for day in samples {
            let d = day.date();
            let want = format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
            assert_eq!(day.to_string(), want);
            if day.start().has_four_digit_year() {
                assert_eq!(format!("{day:>12}"), format!("{want:>12}"));
            }
            assert_eq!(serde_json::to_string(&day).unwrap(), format!("{want:?}"));
        }
    }

    /// Every instant formats without a panic, however far outside the accepted years: a full
    /// sweep formats timestamp columns read from segments that may have been tampered with.
    #[test]
    fn every_instant_formats() {
        for micros in [
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            253_402_300_800_000_000,
            i64::MAX,
        ] {
            let t = Timestamp::from_micros(micros);
            let text = format!(
                "{}{}",
                std::str::from_utf8(&t.date_text()).unwrap(),
                std::str::from_utf8(&t.time_of_day_text()).unwrap()
            );
            assert_eq!(text.len(), 27, "{micros}: {text}");
        }
        assert_eq!(&Timestamp::from_micros(0).date_text(), b"1970-01-01");
        let first = ts("0000-01-01T00:00:00Z");
        let last = ts("9999-12-31T23:59:59.999999Z");
        assert!(first.has_four_digit_year() && last.has_four_digit_year());
        assert!(!first.plus_micros(-1).has_four_digit_year());
        assert!(!last.plus_micros(1).has_four_digit_year());
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn parses_and_normalises_to_utc_micros() {
        assert_eq!(ts("1970-01-01T00:00:00Z").as_micros(), 0);
        assert_eq!(
            ts("2026-11-20T14:03:11.123456Z").to_string(),
            "2026-11-20T14:03:11.123456Z"
        );
        assert_eq!(
            ts("2026-11-20T09:03:11.5-05:00").to_string(),
            "2026-11-20T14:03:11.500000Z"
        );
        assert_eq!(
            ts("2026-11-21T00:30:00+01:00").day().to_string(),
            "2026-11-20"
        );
        assert_eq!(
            ts("2026-11-20t14:03:11.123456z").to_string(),
            "2026-11-20T14:03:11.123456Z"
        );
        assert_eq!(
            ts("2026-11-20T14:03:11.123456000Z"),
            ts("2026-11-20T14:03:11.123456Z")
        );
        assert_eq!(ts("1969-12-31T23:59:59.999999Z").as_micros(), -1);
        assert_eq!(
            ts("1969-12-31T23:59:59.999999Z").to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn refuses_what_is_not_an_instant() {
        use TimestampError::*;
        let err = |s: &str| Timestamp::parse_rfc3339(s).unwrap_err();
        assert_eq!(err("2026-11-20T14:03:11"), MissingOffset);
        assert_eq!(err("2026-11-20T14:03:11.123"), MissingOffset);
        assert!(matches!(err("2026-11-20 14:03:11Z"), Syntax(_)));
        assert!(matches!(err("2026-11-20"), Syntax(_)));
        assert!(matches!(err("2026-02-30T00:00:00Z"), OutOfRange("date")));
        assert!(matches!(err("2026-11-20T24:00:00Z"), OutOfRange("hour")));
        assert!(matches!(err("2026-12-31T23:59:60Z"), OutOfRange(_)));
        assert!(matches!(
            err("2026-11-20T14:03:11.1234567Z"),
            SubMicrosecond(7)
        ));
        assert!(matches!(err("2026-11-20T14:03:11Z "), Syntax(_)));
        assert!(matches!(err("2026-11-20T14:03:11+0100"), Syntax(_)));
        assert!(matches!(err("20261120T140311Z"), Syntax(_)));
        assert!(matches!(err(""), Syntax(_)));
    }

    #[test]
    fn fast_formatting_agrees_with_display() {
        let mut t = Timestamp::parse_rfc3339("1970-01-01T00:00:00Z")
            .unwrap()
            .as_micros();
        while t < Timestamp::parse_rfc3339("2400-03-01T00:00:00Z")
            .unwrap()
            .as_micros()
        {
            let ts = Timestamp::from_micros(t);
            let mut s = String::new();
            ts.write_to(&mut s);
            assert_eq!(s, ts.to_string());
            assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), ts);
            t += 86_400_000_000 * 13 + 3_600_000_123 * 7 + 1;
        }
    }

    #[test]
    fn days_and_rounding() {
        let d = Day::parse("2024-02-29").unwrap();
        assert_eq!(d.to_string(), "2024-02-29");
        assert_eq!(d.next().to_string(), "2024-03-01");
        assert_eq!(d.start(), ts("2024-02-29T00:00:00Z"));
        assert_eq!(Day::parse("2024-2-29"), None);
        assert_eq!(
            ts("2026-01-01T00:00:00.000001Z").ceil_to_second(),
            ts("2026-01-01T00:00:01Z")
        );
        assert_eq!(
            ts("2026-01-01T00:00:01Z").ceil_to_second(),
            ts("2026-01-01T00:00:01Z")
        );
    }
}
