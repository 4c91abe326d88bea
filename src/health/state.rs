//! The health state machine: consecutive successes/failures against thresholds.
//! Pure (no I/O, no clock) so it is tested from a table.

use std::num::NonZeroU32;

/// Health of one endpoint as judged by consecutive probe results.
#[derive(Debug, Clone)]
pub struct HealthState {
    healthy: bool,
}

impl HealthState {
    /// A new endpoint: counts as healthy until probes say otherwise.
    pub fn new(_success_threshold: NonZeroU32, _failure_threshold: NonZeroU32) -> Self {
        HealthState { healthy: true }
    }

    /// Current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns `Some(new_verdict)` only when the verdict flips.
    pub fn observe(&mut self, _success: bool) -> Option<bool> {
        None
    }
}
