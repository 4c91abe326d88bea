//! The signal that ends an endpoint's established connections: cancelled when the endpoint
//! leaves the service or the service stops (connections then get `drain_timeout`), or closed
//! at once when the probes mark the endpoint down and the service says
//! `on_marked_down = "close"`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// One generation of an endpoint's connections: each connection takes the current one when it
/// is established and watches it for its whole life.
#[derive(Debug)]
pub struct Drain {
    token: CancellationToken,
    /// Set before `token` is cancelled when the connections must end without a grace period.
    at_once: AtomicBool,
}

impl Drain {
    /// A signal that also fires when `parent` is cancelled (with the usual grace period).
    pub fn child_of(parent: &CancellationToken) -> Self {
        Drain {
            token: parent.child_token(),
            at_once: AtomicBool::new(false),
        }
    }

    /// A signal of its own, for connections outside any service (tests, benchmarks).
    pub fn standalone() -> Self {
        Drain::child_of(&CancellationToken::new())
    }

    /// Cancelled once the connections must end.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Connections may run on for their drain timeout.
    pub fn start(&self) {
        self.token.cancel();
        crate::proxy::event_loop::look_at_drains();
    }

    /// Connections end now.
    pub fn close_now(&self) {
        // Release/Acquire: a connection woken by the cancellation sees the flag.
        self.at_once.store(true, Ordering::Release);
        self.token.cancel();
        // The data plane's loops look at their drain signals at once, not at their next poll:
        // a connection to an endpoint marked down must not carry more requests there.
        crate::proxy::event_loop::look_at_drains();
    }

    /// How long a connection may still run once the signal fired: `drain_timeout`, or nothing
    /// after [`Drain::close_now`].
    pub fn grace(&self, drain_timeout: Duration) -> Duration {
        if self.at_once.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            drain_timeout
        }
    }

    /// Whether the signal fired.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}
