//! Integration tests: a real vipd (in process, or the binary) between real clients and real
//! backends on 127.0.0.1, ports chosen by the kernel.

mod support;

mod accounting;
mod admin;
mod balance;
mod cli;
mod deploy;
mod discovery;
mod dns;
mod failover;
mod health;
mod keepalive;
mod limits;
mod prometheus;
mod proxy;
mod proxy_protocol;
mod proxy_protocol_peers;
mod reload;
mod shutdown;
mod stateful;
mod udp;
mod udp_proxy_protocol;
mod vip;
