//! Real Redis servers for the tests: `redis-server` children on 127.0.0.1 (a port from
//! [`free_port`], no persistence, a temporary directory each), replication switched with
//! `REPLICAOF`, and a small RESP client that talks to a server directly or through a proxy.
//!
//! Needs Debian's `redis-server` package (`.ci/run` installs it).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::Command;

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::server::ServerProcess;
use super::{free_port, poll_until, within};

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3 foo`; `None` for the null bulk string (`$-1`), e.g. `GET` of a missing key.
    Bulk(Option<Vec<u8>>),
    /// `*2 …`; `None` for the null array (`*-1`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a simple or (non-null, UTF-8) bulk string; panics on anything else.
    pub fn text(&self) -> &str {
        match self {
            Reply::Simple(text) => text,
            Reply::Bulk(Some(bytes)) => std::str::from_utf8(bytes).expect("UTF-8 bulk string"),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The items of a non-null array; panics on anything else.
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// The value of an integer reply; panics on anything else.
    pub fn integer(&self) -> i64 {
        match self {
            Reply::Integer(value) => *value,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
}

/// The value of `field` in an `INFO` reply (`field:value` lines).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim_end)
}

/// A connection speaking RESP: one command at a time, one reply each.
pub struct RespClient {
    stream: BufReader<TcpStream>,
}

impl RespClient {
    /// Connects to `addr`: a server, or a proxy in front of one.
    pub async fn connect(addr: SocketAddr) -> io::Result<RespClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `args` as a RESP array of bulk strings and reads the reply (an error reply is a
    /// [`Reply::Error`], not an `Err`: that is for the connection failing).
    pub async fn command(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&request).await?;
        read_reply(&mut self.stream).await
    }
}

/// Runs one command on a new connection to `addr`.
pub async fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Reply> {
    RespClient::connect(addr).await?.command(args).await
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one reply; boxed because arrays nest.
fn read_reply<'a>(
    stream: &'a mut BufReader<TcpStream>,
) -> Pin<Box<dyn Future<Output = io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let body = line
            .strip_suffix("\r\n")
            .ok_or_else(|| protocol_error(format!("unterminated line {line:?}")))?;
        let (kind, rest) = body.split_at_checked(1).unwrap_or(("", ""));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| protocol_error(format!("bad length or integer in {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Integer(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => {
                    let mut bytes = vec![0; len + 2];
                    stream.read_exact(&mut bytes).await?;
                    if !bytes.ends_with(b"\r\n") {
                        return Err(protocol_error("bulk string without CRLF".to_owned()));
                    }
                    bytes.truncate(len);
                    Reply::Bulk(Some(bytes))
                }
            },
            "*" => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(len) => {
                    // The length comes from the peer: do not reserve more than a reply needs.
                    let mut items = Vec::with_capacity(len.min(64));
                    for _ in 0..len {
                        items.push(read_reply(stream).await?);
                    }
                    Reply::Array(Some(items))
                }
            },
            _ => return Err(protocol_error(format!("unknown reply type in {line:?}"))),
        })
    })
}

/// A `redis-server` on 127.0.0.1, a primary until made a replica. Stopped by PID when dropped.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    process: ServerProcess,
    /// Its working directory (replication's RDB files); removed after the server stopped.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut server = Command::new("redis-server");
        server
            .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--daemonize", "no", "--logfile", ""])
            // A replica's first sync would otherwise wait 5 s for more replicas to join it.
            .args(["--repl-diskless-sync-delay", "0"])
            // SIGTERM stops at once instead of waiting for lagging replicas.
            .args(["--shutdown-timeout", "0"]);
        let mut process = ServerProcess::spawn(
            &format!("redis-server {addr}"),
            server,
            dir.path().join("redis.log"),
            Signal::TERM,
        );
        poll_until(&format!("redis-server {addr} to answer PING"), || {
            process.assert_running();
            async move {
                match command(addr, &["PING"]).await {
                    Ok(Reply::Simple(pong)) if pong == "PONG" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        RedisServer {
            addr,
            process,
            _dir: dir,
        }
    }

    /// Runs one command on a new connection, failing the test (with the server's log) when the
    /// connection fails.
    pub async fn command(&self, args: &[&str]) -> Reply {
        within(
            &format!("{args:?} on {}", self.addr),
            command(self.addr, args),
        )
        .await
        .unwrap_or_else(|e| panic!("{args:?} on {}: {e}\n{}", self.addr, self.log()))
    }

    /// Runs one command that must answer `+OK` (`REPLICAOF` may add why).
    async fn ok(&self, args: &[&str]) {
        let reply = self.command(args).await;
        assert!(
            matches!(&reply, Reply::Simple(text) if text.starts_with("OK")),
            "{args:?} on {}: {reply:?}",
            self.addr
        );
    }

    /// `INFO replication`, as text.
    pub async fn replication_info(&self) -> String {
        self.command(&["INFO", "replication"])
            .await
            .text()
            .to_owned()
    }

    /// Makes this server a replica of `primary` (demoting it, if it was a primary) and waits
    /// until its link to `primary` is up: the first sync is done and writes stream to it.
    pub async fn replicate_from(&self, primary: &RedisServer) {
        let port = &primary.addr.port().to_string();
        self.ok(&["REPLICAOF", &primary.addr.ip().to_string(), port])
            .await;
        poll_until(
            &format!("{} to replicate from {}", self.addr, primary.addr),
            || async move {
                let info = self.replication_info().await;
                let up = info_field(&info, "role") == Some("slave")
                    && info_field(&info, "master_port") == Some(port)
                    && info_field(&info, "master_link_status") == Some("up");
                if up { Ok(()) } else { Err(info) }
            },
        )
        .await;
    }

    /// Promotes this server to a primary (`REPLICAOF NO ONE`).
    pub async fn promote(&self) {
        self.ok(&["REPLICAOF", "NO", "ONE"]).await;
        assert_eq!(self.role().await, "master");
    }

    /// The first item of `ROLE`: `master` or `slave`.
    pub async fn role(&self) -> String {
        self.command(&["ROLE"]).await.items()[0].text().to_owned()
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server (SIGTERM by PID) and waits for its exit.
    pub async fn stop(mut self) {
        self.process.stop().await;
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
