//! When the next probe of an endpoint starts: `period` after the previous start, stretched or
//! shrunk by up to `jitter` of it at random, so that endpoints that started together (a
//! reload, a discovery update, a restart of vipd) do not stay in step and probe a shared
//! backend in bursts.

use std::time::Duration;

use crate::config::Health;

/// The time from one probe's start to the next: `period × (1 ± u)` with `u` uniform in
/// `[0, jitter]`, drawn from `r` uniform in `[0, 1)` (`r = 0.5` is exactly `period`).
///
/// A `jitter` outside `0.0..=`[`Health::MAX_JITTER`] (validation rules that out; a config built in code
/// might not) means no jitter, rather than a panic or a negative delay.
pub fn next_delay(period: Duration, jitter: f64, r: f64) -> Duration {
    let jitter = if (0.0..=Health::MAX_JITTER).contains(&jitter) {
        jitter
    } else {
        0.0
    };
    // `2r - 1` is uniform in [-1, 1): the sign and the size of the stretch in one draw.
    let factor = 1.0 + jitter * (2.0 * r.clamp(0.0, 1.0) - 1.0);
    Duration::try_from_secs_f64(period.as_secs_f64() * factor).unwrap_or(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_draw_maps_onto_period_plus_or_minus_jitter() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(next_delay(SECOND, 0.1, 0.0), ms(900));
        assert_eq!(next_delay(SECOND, 0.1, 0.25), ms(950));
        assert_eq!(next_delay(SECOND, 0.1, 0.5), SECOND);
        assert_eq!(next_delay(SECOND, 0.1, 0.75), ms(1050));
        assert_eq!(next_delay(SECOND, 0.5, 0.0), ms(500));
        assert!(next_delay(SECOND, 0.5, 0.999_999) < ms(1500));
        assert!(next_delay(SECOND, 0.5, 0.999_999) > ms(1499));
    }

    #[test]
    fn no_jitter_is_exactly_the_period() {
        for r in [0.0, 0.3, 0.5, 0.999] {
            assert_eq!(next_delay(SECOND, 0.0, r), SECOND);
        }
    }

    #[test]
    fn random_draws_stay_within_bounds() {
        let period = Duration::from_secs(2);
        for _ in 0..10_000 {
            let delay = next_delay(period, 0.1, fastrand::f64());
            assert!(
                (Duration::from_millis(1800)..=Duration::from_millis(2200)).contains(&delay),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn bad_values_never_panic() {
        for jitter in [f64::NAN, -0.1, 0.51, f64::INFINITY] {
            assert_eq!(next_delay(SECOND, jitter, 0.0), SECOND, "{jitter}");
        }
        assert_eq!(next_delay(SECOND, 0.1, f64::NAN), SECOND);
        // Out-of-range draws are clamped to the ends.
        assert_eq!(next_delay(SECOND, 0.1, 7.0), Duration::from_millis(1100));
        assert_eq!(next_delay(Duration::MAX, 0.5, 0.99), Duration::MAX);
        assert_eq!(next_delay(Duration::ZERO, 0.5, 0.2), Duration::ZERO);
    }
}
