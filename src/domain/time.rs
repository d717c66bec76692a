//! Timestamps as the contract writes them: RFC 3339 UTC with milliseconds (`2026-11-25T19:37:22.123Z`).
//!
//! Stored times are milliseconds since the Unix epoch; formatting is pure arithmetic (Howard
//! Hinnant's days-to-civil algorithm), so no time zone database or clock is involved.

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(epoch_ms: u64) -> String {
    let days = epoch_ms / 86_400_000;
    let ms_of_day = epoch_ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Days since 1970-01-01 to (year, month 1–12, day 1–31) in the proleptic Gregorian calendar.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_635_442_123), "2026-11-25T19:37:22.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn every_day_boundary_is_consistent() {
        // Walk 3 centuries a day at a time: the date must advance by exactly one day each step.
        let mut previous = rfc3339_ms(0);
        for day in 1..(300 * 366) {
            let current = rfc3339_ms(day * 86_400_000);
            assert!(current > previous, "{current} after {previous}");
            assert!(current.ends_with("T00:00:00.000Z"));
            previous = current;
        }
    }
}
