//! The data plane: accept client connections on a service's listeners, pick an endpoint from
//! the service snapshot, connect with failover, and copy bytes both ways.
//!
//! - [`listener`]: binding a service port.
//! - [`tcp`]: the accept loop and per-connection handling.
//! - [`copy`]: bidirectional forwarding with half-close and idle timeout.

pub mod copy;
pub mod listener;
pub mod tcp;
