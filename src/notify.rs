//! systemd service notifications (`sd_notify(3)`): tells a `Type=notify` unit when vipd is
//! ready, reloading and stopping, and keeps its watchdog fed.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd), so the rest of
//! vipd calls these unconditionally. A failed send is logged and otherwise ignored: systemd
//! being unreachable must never stop the data plane.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// `READY=1`: listeners are bound and the first health round is done; also ends a reload
/// announced by [`reloading`].
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`: a config reload starts. Call [`ready`] once it is
/// applied (or rejected: the old config keeps serving).
///
/// systemd requires the monotonic timestamp with `RELOADING=1` so it can tell this reload
/// apart from an earlier one.
pub fn reloading() {
    match reloading_states() {
        Ok(states) => send("RELOADING=1", &states),
        Err(error) => tracing::warn!(%error, "systemd notify: cannot read the monotonic clock"),
    }
}

/// `STOPPING=1`: shutdown has started (listeners close, connections drain).
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sends `WATCHDOG=1` every half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)` recommends)
/// until `stop` is cancelled; returns at once when no watchdog is configured.
///
/// It runs as a task on the same runtime as everything else, so a wedged runtime stops the
/// pings and systemd restarts the service.
pub async fn run_watchdog(stop: CancellationToken) {
    let Some(timeout) = watchdog_interval() else {
        return;
    };
    let period = (timeout / 2).max(Duration::from_millis(1));
    tracing::debug!(?period, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => send("WATCHDOG=1", &[NotifyState::Watchdog]),
        }
    }
}

fn reloading_states() -> std::io::Result<[NotifyState<'static>; 2]> {
    Ok([NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
}

fn send(what: &str, states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, message = what, "systemd notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let states = reloading_states().expect("monotonic clock");
        let lines: Vec<String> = states.iter().map(ToString::to_string).collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("second line is MONOTONIC_USEC: {lines:?}"));
        assert!(usec.parse::<u64>().expect("decimal microseconds") > 0);
    }
}
