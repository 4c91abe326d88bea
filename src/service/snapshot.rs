//! The immutable per-service view the data plane reads: the service's current settings, and for
//! each service port its endpoints, the subset in rotation, and the picker. Rebuilt whole by the
//! owner task and swapped in at once, so settings, endpoints, health and picker always agree.

use std::sync::Arc;

use super::Endpoint;
use crate::balance::Picker;
use crate::config;

/// Everything the data plane needs to route a new connection of one service.
#[derive(Debug)]
pub struct Snapshot {
    /// The service's settings as of this snapshot.
    pub config: Arc<config::Service>,
    /// One pool per service port, in config order.
    pub ports: Vec<PortPool>,
    /// Every endpoint the service knows, including removed ones still draining (for status).
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Snapshot {
    /// The pool behind the service port configured as `port`.
    pub fn pool(&self, port: u16) -> Option<&PortPool> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The endpoints behind one service port.
#[derive(Debug)]
pub struct PortPool {
    /// The service port as configured.
    pub port: u16,
    /// Every endpoint of the port that is not draining, in order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints in rotation: healthy, not draining, not ejected.
    pub healthy: Vec<Arc<Endpoint>>,
    /// Chooses where each new connection starts.
    pub picker: Arc<Picker>,
}

impl PortPool {
    /// Builds the pool of service port `port`, taking each endpoint's state as it is now.
    pub fn new(port: u16, endpoints: Vec<Arc<Endpoint>>, picker: Arc<Picker>) -> Self {
        let endpoints: Vec<Arc<Endpoint>> =
            endpoints.into_iter().filter(|e| !e.is_draining()).collect();
        let healthy = endpoints
            .iter()
            .filter(|e| e.in_rotation())
            .cloned()
            .collect();
        PortPool {
            port,
            endpoints,
            healthy,
            picker,
        }
    }

    /// The endpoints a new connection may use: those in rotation, or, when none is, every
    /// non-draining endpoint (fail open: a health check can be wrong, a closed door is certainly
    /// wrong). The flag says whether it failed open.
    pub fn candidates(&self) -> (&[Arc<Endpoint>], bool) {
        if self.healthy.is_empty() {
            (&self.endpoints, true)
        } else {
            (&self.healthy, false)
        }
    }
}
