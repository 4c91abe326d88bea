//! TCP keepalive (`tcp_keepalive`) on both sockets of a connection.
//!
//! The endpoint socket of each connect attempt is set when it is made ([`set_on_new`]): four
//! `setsockopt`s (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`), none for a
//! service without keepalive.
//!
//! The client socket gets the options from its listener instead. On Linux the kernel makes an
//! accepted socket by cloning the listener when the handshake completes, so it inherits the
//! four options as it inherits `TCP_NODELAY` (`tcp.rs`): with the listener set, the accept path
//! costs no system call for keepalive, with or without it. The listener outlives reloads, so
//! [`ListenerKeepalive`] keeps it in step with the service's current setting: at an accept
//! that finds the setting changed, it sets the listener again. Sockets already in the accept
//! queue then were cloned with the old options, so the accepts that may still take one set
//! the options on the socket itself: the queue is FIFO and holds at most the listen backlog,
//! so [`STALE_ACCEPTS`] accepts after a change every socket queued before it is out.
//! Connections accepted earlier keep what they got.
//!
//! (The per-socket alternative would cost four system calls on every accept of a service with
//! keepalive; this costs them only on the first accepts after the setting changes.)

use std::io;
use std::os::fd::AsFd;

use socket2::SockRef;

use crate::config::TcpKeepalive;
use crate::proxy::listener::BACKLOG;
use crate::service::ServiceState;

/// Accepts after a listener change that set keepalive on the accepted socket itself. The
/// accept queue holds at most `BACKLOG` sockets (the kernel caps it at `min(backlog,
/// net.core.somaxconn)`, plus one); twice that also covers sockets whose handshake completed
/// while the listener was being changed, which join the queue a few places behind.
const STALE_ACCEPTS: u32 = 2 * BACKLOG as u32;

/// What one worker's listener passes on to the sockets it accepts, as far as keepalive goes.
///
/// A port's listener is bound fresh when the port opens, so it starts with keepalive off, as
/// this state says.
#[derive(Debug)]
pub(super) struct ListenerKeepalive {
    /// What the listener carries.
    on_listener: Option<TcpKeepalive>,
    /// Accepts left that set the options on the accepted socket itself (after a change, or
    /// for good when the listener cannot be set).
    explicit_left: u32,
    /// Whether accepted sockets inherit the listener's options (Linux); else every socket of a
    /// service with keepalive is set itself.
    inherited: bool,
}

impl Default for ListenerKeepalive {
    fn default() -> Self {
        ListenerKeepalive {
            on_listener: None,
            explicit_left: 0,
            inherited: cfg!(target_os = "linux"),
        }
    }
}

impl ListenerKeepalive {
    /// Gives `client`, just accepted on `listener`, the keepalive of `service`'s current
    /// settings. No system call unless the setting changed lately (or not on Linux).
    pub(super) fn accepted(
        &mut self,
        listener: &impl AsFd,
        client: &impl AsFd,
        service: &ServiceState,
    ) {
        let wanted = service.load_snapshot().config.connection.tcp_keepalive;
        if !self.inherited {
            if let Some(keepalive) = &wanted
                && let Err(error) = set(client, Some(keepalive))
            {
                tracing::debug!(service = service.name(), %error, "cannot set TCP keepalive");
            }
            return;
        }
        if wanted != self.on_listener {
            self.change_listener(listener, wanted, service);
        }
        if self.explicit_left > 0 {
            if self.explicit_left != u32::MAX {
                self.explicit_left -= 1;
            }
            if let Err(error) = set(client, wanted.as_ref()) {
                tracing::debug!(service = service.name(), %error, "cannot set TCP keepalive");
            }
        }
    }

    /// Sets `wanted` on the listener; the next [`STALE_ACCEPTS`] accepts set it themselves.
    #[cold]
    fn change_listener(
        &mut self,
        listener: &impl AsFd,
        wanted: Option<TcpKeepalive>,
        service: &ServiceState,
    ) {
        self.on_listener = wanted;
        self.explicit_left = match set(listener, wanted.as_ref()) {
            Ok(()) => STALE_ACCEPTS,
            Err(error) => {
                // What the listener passes on is unknown now: every socket is set itself,
                // until a later change sets the listener.
                tracing::warn!(service = service.name(), %error, "cannot set TCP keepalive on the listener; setting it per connection");
                u32::MAX
            }
        };
    }
}

/// Sets `keepalive` on the endpoint socket of a connect attempt, just made (with keepalive
/// off): no system call when it is `None`.
pub(super) fn set_on_new(socket: &impl AsFd, keepalive: Option<&TcpKeepalive>) -> io::Result<()> {
    match keepalive {
        Some(keepalive) => set(socket, Some(keepalive)),
        None => Ok(()),
    }
}

/// Turns keepalive on with `keepalive`'s times and count, or off for `None`.
fn set(socket: &impl AsFd, keepalive: Option<&TcpKeepalive>) -> io::Result<()> {
    let socket = SockRef::from(socket);
    match keepalive {
        None => socket.set_keepalive(false),
        Some(keepalive) => socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(keepalive.idle)
                .with_interval(keepalive.interval)
                .with_retries(keepalive.count),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use socket2::SockRef;

    use super::*;

    fn keepalive(idle: u64, interval: u64, count: u32) -> TcpKeepalive {
        TcpKeepalive {
            idle: Duration::from_secs(idle),
            interval: Duration::from_secs(interval),
            count,
        }
    }

    /// What `socket` has: `None` when keepalive is off.
    fn read(socket: &impl AsFd) -> Option<TcpKeepalive> {
        let socket = SockRef::from(socket);
        socket.keepalive().unwrap().then(|| TcpKeepalive {
            idle: socket.tcp_keepalive_time().unwrap(),
            interval: socket.tcp_keepalive_interval().unwrap(),
            count: socket.tcp_keepalive_retries().unwrap(),
        })
    }

    /// A connection to `listener`, accepted; the client end is returned too, to keep it open.
    fn accept(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted)
    }

    #[test]
    fn set_turns_keepalive_on_and_off() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_client, socket) = accept(&listener);
        assert_eq!(read(&socket), None);
        set(&socket, Some(&keepalive(61, 11, 7))).unwrap();
        assert_eq!(read(&socket), Some(keepalive(61, 11, 7)));
        set(&socket, None).unwrap();
        assert_eq!(read(&socket), None);
        set_on_new(&socket, Some(&keepalive(62, 12, 8))).unwrap();
        assert_eq!(read(&socket), Some(keepalive(62, 12, 8)));
    }

    /// The kernel behaviour [`ListenerKeepalive`] relies on.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_the_listener_options() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Queued before the listener is set: cloned with keepalive off.
        let (_early_client, early) = {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            set(&listener, Some(&keepalive(61, 11, 7))).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            (client, accepted)
        };
        assert_eq!(read(&early), None, "queued before the change");
        let (_client, socket) = accept(&listener);
        assert_eq!(read(&socket), Some(keepalive(61, 11, 7)));
        set(&listener, None).unwrap();
        let (_client, socket) = accept(&listener);
        assert_eq!(read(&socket), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_change_reaches_sockets_queued_before_it_and_then_comes_from_the_listener() {
        let (service, _inbox) = ServiceState::new(
            crate::config::from_str(
                "[[service]]\nname = \"web\"\nvip = \"127.0.0.1\"\nports = [{ port = 80 }]\n\
                 endpoints = [\"10.0.0.1\"]\n",
                std::path::Path::new("t.toml"),
            )
            .unwrap()
            .services
            .remove(0),
            &tokio_util::sync::CancellationToken::new(),
        );
        // What a reload does, as far as the data plane's view of the setting goes.
        let publish = |tcp_keepalive| {
            let mut config = (*service.config()).clone();
            config.connection.tcp_keepalive = tcp_keepalive;
            service.publish(crate::service::Snapshot {
                config: std::sync::Arc::new(config),
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut state = ListenerKeepalive::default();

        // Off, as a new listener is: nothing to do.
        let (_c, socket) = accept(&listener);
        state.accepted(&listener, &socket, &service);
        assert_eq!(read(&socket), None);
        assert_eq!(state.explicit_left, 0);

        // Turned on while a connection waits in the queue.
        let _queued_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        publish(Some(keepalive(61, 11, 7)));
        let (queued, _) = listener.accept().unwrap();
        state.accepted(&listener, &queued, &service);
        assert_eq!(read(&queued), Some(keepalive(61, 11, 7)));
        assert_eq!(read(&listener), Some(keepalive(61, 11, 7)));
        assert_eq!(state.explicit_left, STALE_ACCEPTS - 1);

        // Once the queue is surely through, sockets get it from the listener alone.
        state.explicit_left = 0;
        let (_c, socket) = accept(&listener);
        state.accepted(&listener, &socket, &service);
        assert_eq!(read(&socket), Some(keepalive(61, 11, 7)));

        // Changed, then turned off: the same way.
        for wanted in [Some(keepalive(62, 12, 8)), None] {
            let _queued_client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            publish(wanted);
            let (queued, _) = listener.accept().unwrap();
            state.accepted(&listener, &queued, &service);
            assert_eq!(read(&queued), wanted);
            assert_eq!(read(&listener), wanted);
            state.explicit_left = 0;
            let (_c, socket) = accept(&listener);
            state.accepted(&listener, &socket, &service);
            assert_eq!(read(&socket), wanted);
        }
    }
}
