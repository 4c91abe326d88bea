//! Active health checking: a pure state machine ([`state`]) that flips only after a threshold
//! of consecutive results, the probes ([`probe`](mod@probe)) that produce those results, and
//! when they run ([`schedule`]).
//!
//! A checker loop ties them together: about every `period` (see [`schedule::next_delay`]),
//! `probe(...)` one endpoint with the service's `timeout`, feed `is_ok()` to that endpoint's
//! [`HealthState::observe`], and act only when it returns `Some(verdict)`.

pub mod probe;
pub mod schedule;
pub mod state;

pub use probe::{MAX_EXEC_PROBES, ProbeError, ProbeTarget, probe};
pub use state::HealthState;
