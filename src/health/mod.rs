//! Active health checking: a pure state machine ([`state`]) that flips only after a threshold
//! of consecutive results, and the probes ([`probe`]) that produce those results.

pub mod probe;
pub mod state;

pub use probe::{ProbeError, probe};
pub use state::HealthState;
