//! The data plane: accept client connections and datagrams on a service's sockets, pick an
//! endpoint from the service snapshot, and forward both ways.
//!
//! - [`listener`]: binding a TCP service port.
//! - [`group`]: the sockets of one service address (TCP or UDP, one per worker), bound and
//!   served on the workers.
//! - [`tcp`]: the accept loop and per-connection handling.
//! - [`copy`]: bidirectional forwarding with half-close and idle timeout.
//! - [`udp`]: UDP flows: the serve loop, the flow table, the sockets.
//! - [`workers`]: the threads connections run on, one runtime and one listening socket each.
//! - `splice` and `pipe_pool` (Linux): zero-copy forwarding of bulk flows through pooled pipes.
//! - [`spike`]: alternative TCP data-plane loops under evaluation (`VIPD_DATA_PLANE`).

pub mod copy;
pub mod group;
pub mod listener;
#[cfg(target_os = "linux")]
pub mod pipe_pool;
pub mod spike;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod udp;
pub mod workers;
