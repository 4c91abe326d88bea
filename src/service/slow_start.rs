//! Slow start: an endpoint entering rotation after start-up gets a share that ramps linearly
//! from 10% to 100% of its weight over the window, in one-percent steps, so a cold cache or a
//! JIT warming up is not hit with a full share at once. Pure functions of the time since the
//! endpoint entered rotation; the owner task republishes the snapshot at each step.

use std::time::Duration;

/// The share an endpoint starts at, in percent.
pub const START_PERCENT: u32 = 10;
/// Full weight, in percent.
pub const FULL_PERCENT: u32 = crate::balance::FULL_WEIGHT_PERCENT;

/// Percent of its weight an endpoint gets `elapsed` after entering rotation.
pub fn percent(elapsed: Duration, window: Duration) -> u32 {
    if elapsed >= window {
        return FULL_PERCENT;
    }
    let ramp = u128::from(FULL_PERCENT - START_PERCENT);
    START_PERCENT + (ramp * elapsed.as_nanos() / window.as_nanos()) as u32
}

/// When (since entering rotation) the percent rises next; `None` once at full weight.
pub fn next_step(elapsed: Duration, window: Duration) -> Option<Duration> {
    let now = percent(elapsed, window);
    if now >= FULL_PERCENT {
        return None;
    }
    // The smallest time at which `ramp * t / window` reaches the next whole step.
    let ramp = u128::from(FULL_PERCENT - START_PERCENT);
    let step = u128::from(now - START_PERCENT + 1);
    let nanos = (step * window.as_nanos()).div_ceil(ramp);
    Some(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_from_ten_to_a_hundred_percent() {
        let w = Duration::from_secs(30);
        assert_eq!(percent(Duration::ZERO, w), 10);
        assert_eq!(percent(Duration::from_secs(10), w), 40);
        assert_eq!(percent(Duration::from_secs(15), w), 55);
        assert_eq!(percent(Duration::from_millis(29_999), w), 99);
        assert_eq!(percent(w, w), 100);
        assert_eq!(percent(Duration::from_secs(3600), w), 100);
    }

    #[test]
    fn next_step_is_where_the_percent_rises() {
        let w = Duration::from_secs(9);
        // 90 steps over 9 s: one every 100 ms.
        assert_eq!(
            next_step(Duration::ZERO, w),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            next_step(Duration::from_millis(150), w),
            Some(Duration::from_millis(200))
        );
        let mut t = Duration::ZERO;
        let mut seen = vec![percent(t, w)];
        while let Some(next) = next_step(t, w) {
            assert!(next > t);
            assert_eq!(percent(next, w), percent(t, w) + 1, "at {next:?}");
            t = next;
            seen.push(percent(t, w));
        }
        assert_eq!(seen, (10..=100).collect::<Vec<_>>());
        assert_eq!(t, w);
    }
}
