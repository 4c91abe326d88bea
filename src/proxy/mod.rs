//! The data plane: accept client connections on a service's listeners, pick an endpoint from
//! the service snapshot, connect with failover, and copy bytes both ways.
//!
//! - [`listener`]: binding a service port.
//! - [`tcp`]: the accept loop and per-connection handling.
//! - [`copy`]: bidirectional forwarding with half-close and idle timeout.
//! - [`workers`]: the threads connections run on, one runtime and one listening socket each.
//! - `splice` and `pipe_pool` (Linux): zero-copy forwarding of bulk flows through pooled pipes.

pub mod copy;
pub mod listener;
#[cfg(target_os = "linux")]
pub mod pipe_pool;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod workers;
