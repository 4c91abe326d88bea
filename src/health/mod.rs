//! Active health checking: a pure state machine ([`state`]) that flips only after a threshold
//! of consecutive results, and the probes ([`probe`](mod@probe)) that produce those results.
//!
//! A checker loop ties them together: every `period`, `probe(...)` one endpoint with the
//! service's `timeout`, feed `is_ok()` to that endpoint's [`HealthState::observe`], and act
//! only when it returns `Some(verdict)`.

pub mod probe;
pub mod state;

pub use probe::{MAX_EXEC_PROBES, ProbeError, ProbeTarget, probe};
pub use state::HealthState;
