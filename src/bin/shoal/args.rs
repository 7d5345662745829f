//! Value parsers for the numeric flags: every number a user types is checked here, so a bad
//! one is a clear message and exit 2 (clap's usage error), never a panic deep in a run.

use clap::builder::RangedU64ValueParser;

/// A value the user gave that the command cannot use (found after parsing: a file's content,
/// a combination of flags); like a bad flag, it exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The longest duration a flag takes: ten years, far below what `Duration` holds.
pub const MAX_SECS: f64 = 315_360_000.0;

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok(v)
}

fn within(s: &str, lo: f64, lo_open: bool, hi: f64, what: &str) -> Result<f64, String> {
    let v = number(s)?;
    let low_ok = if lo_open { v > lo } else { v >= lo };
    if !low_ok || v > hi {
        let open = if lo_open { "(" } else { "[" };
        return Err(format!("{v} is out of range: {what} in {open}{lo}, {hi}]"));
    }
    Ok(v)
}

/// Seconds, 0 allowed (where the flag says 0 means "no limit" or "never").
pub fn secs_or_zero(s: &str) -> Result<f64, String> {
    within(s, 0.0, false, MAX_SECS, "seconds")
}

/// Seconds, more than 0.
pub fn secs(s: &str) -> Result<f64, String> {
    within(s, 0.0, true, MAX_SECS, "seconds")
}

/// Milliseconds, 0 allowed, at most an hour.
pub fn millis(s: &str) -> Result<f64, String> {
    within(s, 0.0, false, 3_600_000.0, "milliseconds")
}

/// Events per second, more than 0, at most a million.
pub fn per_sec(s: &str) -> Result<f64, String> {
    within(s, 0.0, true, 1_000_000.0, "a rate per second")
}

/// A count in `lo..=hi`, for a `usize` flag.
pub fn count(lo: u64, hi: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

/// A count in `lo..=hi`, for a `u32` flag.
pub fn count32(lo: u64, hi: u64) -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::<u32>::new().range(lo..=hi)
}

/// A count in `lo..=hi`, for a `u64` flag.
pub fn count64(lo: u64, hi: u64) -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::<u64>::new().range(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_that_no_duration_or_rate_can_hold_are_refused() {
        for bad in ["inf", "-inf", "NaN", "1e20", "-1", "", "ten"] {
            assert!(secs_or_zero(bad).is_err(), "{bad}");
            assert!(per_sec(bad).is_err(), "{bad}");
        }
        assert_eq!(secs_or_zero("0"), Ok(0.0));
        assert!(secs("0").is_err());
        assert_eq!(secs("2.5"), Ok(2.5));
        assert!(per_sec("0").is_err());
        assert!(millis("3600001").is_err());
        // The largest accepted value still makes a Duration.
        let _ = std::time::Duration::from_secs_f64(secs(&MAX_SECS.to_string()).unwrap());
    }
}
