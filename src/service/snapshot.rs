//! The immutable per-service view the data plane reads: for each service port, its endpoints,
//! the healthy subset, and the picker. Rebuilt whole by the owner task and swapped in at once,
//! so endpoints, health and picker are always consistent with each other.

use std::sync::Arc;

use super::Endpoint;
use crate::balance::Picker;

/// Everything the data plane needs to route a new connection of one service.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// One pool per service port, in config order.
    pub ports: Vec<PortPool>,
}

/// The endpoints behind one service port.
#[derive(Debug)]
pub struct PortPool {
    /// Every endpoint, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The healthy, non-draining endpoints, in config order.
    pub healthy: Vec<Arc<Endpoint>>,
    /// Chooses where each new connection starts.
    pub picker: Arc<Picker>,
}

impl PortPool {
    /// Builds a pool, taking each endpoint's health as it is now.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, picker: Arc<Picker>) -> Self {
        let healthy = endpoints
            .iter()
            .filter(|e| e.is_healthy() && !e.is_draining())
            .cloned()
            .collect();
        PortPool {
            endpoints,
            healthy,
            picker,
        }
    }

    /// The endpoints a new connection may use: the healthy ones, or, when none is healthy,
    /// every non-draining endpoint (fail open: a health check can be wrong, a closed door is
    /// certainly wrong). The flag says whether it failed open.
    pub fn candidates(&self) -> (&[Arc<Endpoint>], bool) {
        if self.healthy.is_empty() {
            (&self.endpoints, true)
        } else {
            (&self.healthy, false)
        }
    }
}
