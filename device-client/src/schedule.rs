//! When to try again: exponential backoff with jitter, honouring Retry-After, and the duration
//! syntax of the configuration.

use std::time::Duration;

/// Exponential backoff after failed enrollment or renewal attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1-based), given a random `jitter`
    /// in `[0, 1)`, and the CA's Retry-After if it sent one.
    ///
    /// The base doubles from `min` up to `max`; the wait is drawn from the upper half of the
    /// base ("equal jitter"), so a fleet of devices that lost the CA together does not come
    /// back together, while each still waits at least half the base. A Retry-After longer than
    /// that wins: the CA said when it wants to hear from us again.
    pub fn delay(&self, failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let base = self
            .min
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let wait = base / 2 + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        match retry_after {
            Some(ra) if ra > wait => ra,
            _ => wait,
        }
    }
}

/// Shortest wait before asking for renewal information again, whatever Retry-After says.
pub const ARI_RECHECK_MIN: Duration = Duration::from_secs(60);
/// Longest wait before asking for renewal information again (RFC 9773 §4.3 asks clients to
/// poll at least daily; a window the operator pulls forward is seen within this).
pub const ARI_RECHECK_MAX: Duration = Duration::from_secs(6 * 3600);

/// When to ask for renewal information again: the CA's Retry-After, kept within
/// [`ARI_RECHECK_MIN`]..=[`ARI_RECHECK_MAX`]; `fallback` without one.
pub fn ari_recheck(retry_after: Option<Duration>, fallback: Duration) -> Duration {
    retry_after
        .unwrap_or(fallback)
        .clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX)
}

/// The renewal time in a suggested window (RFC 9773 §4.2): a uniformly random point of
/// `[start, end]` (`jitter` in `[0, 1)`), so that a fleet spreads its renewals; once the window
/// has started, now.
pub fn ari_renewal_time(
    start: time::OffsetDateTime,
    end: time::OffsetDateTime,
    now: time::OffsetDateTime,
    jitter: f64,
) -> time::OffsetDateTime {
    if start <= now {
        return now;
    }
    let span = (end - start).max(time::Duration::ZERO);
    let at = start + span * jitter.clamp(0.0, 1.0);
    at.replace_nanosecond(0).unwrap_or(at)
}

/// A number in `[0, 1)` from the system CSPRNG (the only randomness source linked in).
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Parses `90`, `90s`, `15m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 2h or 1d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let b = Backoff {
            min: Duration::from_secs(10),
            max: Duration::from_secs(100),
        };
        assert_eq!(b.delay(1, 0.0, None), Duration::from_secs(5));
        assert_eq!(b.delay(1, 0.999_999, None).as_secs(), 9);
        assert_eq!(b.delay(2, 0.0, None), Duration::from_secs(10));
        assert_eq!(b.delay(3, 0.5, None), Duration::from_secs(30));
        assert_eq!(b.delay(4, 0.0, None), Duration::from_secs(40));
        assert_eq!(b.delay(5, 0.0, None), Duration::from_secs(50), "capped");
        assert_eq!(b.delay(u32::MAX, 0.0, None), Duration::from_secs(50));
        // Retry-After wins when longer, not when shorter.
        assert_eq!(
            b.delay(1, 0.0, Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(
            b.delay(3, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn ari_times_and_rechecks() {
        use time::macros::datetime;
        let start = datetime!(2030-01-01 0:00 UTC);
        let end = datetime!(2030-01-01 10:00 UTC);
        let before = datetime!(2029-12-31 0:00 UTC);
        assert_eq!(ari_renewal_time(start, end, before, 0.0), start);
        assert_eq!(
            ari_renewal_time(start, end, before, 0.5),
            datetime!(2030-01-01 5:00 UTC)
        );
        assert!(ari_renewal_time(start, end, before, 0.999_999) <= end);
        // The window has started (or passed): renew now.
        let inside = datetime!(2030-01-01 3:00 UTC);
        assert_eq!(ari_renewal_time(start, end, inside, 0.9), inside);
        let after = datetime!(2030-01-02 0:00 UTC);
        assert_eq!(ari_renewal_time(start, end, after, 0.1), after);
        // Retry-After is bounded both ways.
        let h = Duration::from_secs(3600);
        assert_eq!(
            ari_recheck(Some(Duration::from_secs(1)), h),
            ARI_RECHECK_MIN
        );
        assert_eq!(ari_recheck(Some(h * 100), h), ARI_RECHECK_MAX);
        assert_eq!(ari_recheck(Some(h), h * 2), h);
        assert_eq!(ari_recheck(None, h * 2), h * 2);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
