//! The data plane: accept client connections and datagrams on a service's sockets, pick an
//! endpoint from the service snapshot, and forward both ways.
//!
//! - [`listener`]: binding a TCP service port.
//! - [`group`]: the sockets of one service address (TCP or UDP, one per worker), bound and
//!   handed to the workers.
//! - [`workers`]: the data-plane threads, one event loop and one socket of every service
//!   address each.
//! - [`event_loop`]: a worker's loop: TCP connections from accept to close, UDP ports.
//! - [`udp`]: UDP flows: the port's path, the flow table, the sockets, batched I/O.
//! - [`pipe_pool`]: the pipes bulk TCP directions splice through.
//! - [`admission`]: connection limits and the queue for endpoints at their limit, shared by
//!   every worker's loop.

pub mod admission;
pub mod event_loop;
pub mod group;
pub mod listener;
pub mod pipe_pool;
pub mod udp;
pub mod workers;
