//! Calendar arithmetic on Unix time (UTC), for timestamps and quota windows.

/// (year, month 1-12, day 1-31) of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Day number since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Start and end (Unix ms) of the UTC calendar month containing `ms`.
pub fn month_window(ms: i64) -> (i64, i64) {
    let (year, month, _) = civil_from_days(ms.div_euclid(86_400_000));
    let start = days_from_civil(year, month, 1) * 86_400_000;
    let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    (start, days_from_civil(ny, nm, 1) * 86_400_000)
}

/// Start and end (Unix ms) of the UTC day containing `ms`.
pub fn day_window(ms: i64) -> (i64, i64) {
    let start = ms.div_euclid(86_400_000) * 86_400_000;
    (start, start + 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_windows() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        for d in [-1000, 0, 59, 60, 10_957, 20_000, 40_000] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
        let (start, end) = month_window(1_795_000_000_123);
        assert_eq!(rfc3339(start), "2026-11-01T00:00:00.000Z");
        assert_eq!(rfc3339(end), "2026-12-01T00:00:00.000Z");
        let (start, end) = month_window(days_from_civil(2026, 12, 31) * 86_400_000);
        assert_eq!(rfc3339(end), "2027-01-01T00:00:00.000Z");
        assert_eq!(end - start, 31 * 86_400_000);
    }
}
