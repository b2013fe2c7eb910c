//! Object names: the Hive-style directory of a record and the file name of an offset range.
//!
//! ```text
//!   PREFIX/topic=T/date=YYYY-MM-DD/hour=HH/T-PPPPP-FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.parquet
//!                                          │   │     └ first offset       └ last offset (inclusive)
//!                                          │   │       of the range (one object per hour in it)
//!                                          │   └ partition (5 digits)     (20 digits each)
//!                                          └ topic
//! ```
//!
//! The directory comes from the record's Kafka timestamp, which every SensorFlow producer sets to
//! the event time (UTC); a record without a timestamp lands in `date=1970-01-01/hour=00`. The
//! three numbers are fixed-width and zero-padded, so names sort by offset and parse from the
//! right even when the topic contains `-`. Kafka topic names use only `[a-zA-Z0-9._-]`, so no
//! name needs escaping.

/// One UTC hour: the unit of the Hive directory layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HourBucket {
    /// Hours since the Unix epoch (may be negative for timestamps before 1970).
    pub hours: i64,
}

const MS_PER_HOUR: i64 = 3_600_000;

impl HourBucket {
    /// The hour holding `timestamp_ms` (Unix epoch milliseconds, UTC); `None` (no timestamp) maps
    /// to the epoch hour.
    pub fn of(timestamp_ms: Option<i64>) -> Self {
        Self {
            hours: timestamp_ms.unwrap_or(0).div_euclid(MS_PER_HOUR),
        }
    }

    /// `(year, month 1..=12, day 1..=31, hour 0..=23)` in UTC.
    pub fn civil(self) -> (i64, u32, u32, u32) {
        let days = self.hours.div_euclid(24);
        let hour = self.hours.rem_euclid(24) as u32;
        let (y, m, d) = civil_from_days(days);
        (y, m, d, hour)
    }

    /// The directory below the topic: `date=YYYY-MM-DD/hour=HH`.
    pub fn dir(self) -> String {
        let (y, m, d, h) = self.civil();
        format!("date={y:04}-{m:02}-{d:02}/hour={h:02}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

/// Where objects go: a prefix inside the bucket (or local directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// An object name parsed back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset the file covers (inclusive).
    pub first_offset: i64,
    /// Last offset the file covers (inclusive).
    pub last_offset: i64,
}

impl Layout {
    /// A layout under `prefix`; a `/` is appended when the prefix is not empty and lacks one,
    /// and leading slashes are dropped (object names never start with `/`).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    /// The normalised prefix (empty, or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory of `topic` for `bucket`, ending with `/`.
    pub fn dir(&self, topic: &str, bucket: HourBucket) -> String {
        format!("{}topic={topic}/{}/", self.prefix, bucket.dir())
    }

    /// The full object name of the file covering `first..=last` of `topic`/`partition`.
    pub fn object(
        &self,
        topic: &str,
        partition: i32,
        bucket: HourBucket,
        first: i64,
        last: i64,
    ) -> String {
        format!(
            "{}{}",
            self.dir(topic, bucket),
            file_name(topic, partition, first, last)
        )
    }
}

/// The file name (no directory) of the file covering `first..=last`.
pub fn file_name(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}-{partition:05}-{first:020}-{last:020}.parquet")
}

/// Parses an object name (with or without directories) written by [`Layout::object`];
/// `None` for anything else (temporary files, foreign objects).
pub fn parse_object(name: &str) -> Option<ObjectName> {
    let file = name.rsplit('/').next()?;
    let stem = file.strip_suffix(".parquet")?;
    // Parse from the right: fixed-width numbers, the topic may contain '-'.
    let (rest, last) = stem.rsplit_once('-')?;
    let (rest, first) = rest.rsplit_once('-')?;
    let (topic, partition) = rest.rsplit_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if topic.is_empty() || !digits(partition, 5) || !digits(first, 20) || !digits(last, 20) {
        return None;
    }
    Some(ObjectName {
        topic: topic.to_owned(),
        partition: partition.parse().ok()?,
        first_offset: first.parse().ok()?,
        last_offset: last.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_of_a_known_instant() {
        // 2024-02-29T13:45:00Z
        let b = HourBucket::of(Some(1_709_214_300_000));
        assert_eq!(b.dir(), "date=2024-02-29/hour=13");
        let l = Layout::new("pipe");
        assert_eq!(
            l.object("p.predictions", 7, b, 100, 199),
            "pipe/topic=p.predictions/date=2024-02-29/hour=13/\
             p.predictions-00007-00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(
            Layout::new("").dir("SZ", b),
            "topic=SZ/date=2024-02-29/hour=13/"
        );
        assert_eq!(Layout::new("/a/b/").prefix(), "a/b/");
    }

    #[test]
    fn missing_and_negative_timestamps() {
        assert_eq!(HourBucket::of(None).dir(), "date=1970-01-01/hour=00");
        assert_eq!(HourBucket::of(Some(-1)).dir(), "date=1969-12-31/hour=23");
    }

    #[test]
    fn foreign_names_do_not_parse() {
        assert_eq!(parse_object("x/.SZ-00001-tmp"), None);
        assert_eq!(parse_object("SZ-1-2-3.parquet"), None);
        assert_eq!(
            parse_object("-00001-00000000000000000001-00000000000000000002.parquet"),
            None
        );
    }

    /// Naive reference: walk day by day from the epoch.
    fn naive_civil(days: i64) -> (i64, u32, u32) {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let len = |y: i64, m: u32| match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ => {
                if leap(y) {
                    29
                } else {
                    28
                }
            }
        };
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        if days >= 0 {
            for _ in 0..days {
                d += 1;
                if d > len(y, m) {
                    d = 1;
                    m += 1;
                    if m > 12 {
                        m = 1;
                        y += 1;
                    }
                }
            }
        } else {
            for _ in 0..(-days) {
                if d > 1 {
                    d -= 1;
                } else {
                    if m > 1 {
                        m -= 1;
                    } else {
                        m = 12;
                        y -= 1;
                    }
                    d = len(y, m);
                }
            }
        }
        (y, m, d)
    }

    proptest! {
        #[test]
        fn civil_matches_the_naive_walk(days in -3000i64..30000) {
            prop_assert_eq!(civil_from_days(days), naive_civil(days));
        }

        #[test]
        fn names_round_trip_and_sort_by_offset(
            topic in "[a-zA-Z0-9._-]{1,40}",
            partition in 0i32..100_000,
            first in 0i64..i64::MAX / 2,
            len in 0i64..1_000_000,
            ts in any::<Option<i64>>(),
        ) {
            let l = Layout::new("pre/");
            let b = HourBucket::of(ts);
            let name = l.object(&topic, partition, b, first, first + len);
            let own = format!("{}{topic}-{partition:05}-", l.dir(&topic, b));
            prop_assert!(name.starts_with(&own));
            prop_assert_eq!(
                parse_object(&name),
                Some(ObjectName { topic: topic.clone(), partition, first_offset: first, last_offset: first + len })
            );
            let next = file_name(&topic, partition, first + len + 1, first + len + 1);
            prop_assert!(file_name(&topic, partition, first, first + len) < next);
        }

        #[test]
        fn every_instant_of_an_hour_shares_its_bucket(h in -100_000i64..1_000_000, ms in 0i64..MS_PER_HOUR) {
            prop_assert_eq!(HourBucket::of(Some(h * MS_PER_HOUR + ms)), HourBucket { hours: h });
        }
    }
}
