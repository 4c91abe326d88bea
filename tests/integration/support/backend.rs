//! Backends on 127.0.0.1:0 with the behaviours the tests need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a backend does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Writes its name and closes.
    Name,
    /// Echoes everything; on EOF shuts its write side down.
    Echo,
    /// Reads until EOF, then answers `got N bytes` and closes: needs half-close to work.
    CountThenAnswer,
    /// Writes its name, then holds the connection open until the client closes it.
    NameThenHold,
}

/// A running backend; [`Backend::stop`] closes its listener.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (written by [`Behaviour::Name`]).
    pub name: String,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1:0.
    pub async fn start(name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(listener, name, behaviour)
    }

    /// Starts a backend on 127.0.0.1:0 whose accept queue holds `backlog` connections, for
    /// bursts of connects (the queue of [`Backend::start`] holds std's 128: past that the kernel
    /// drops SYNs, and vipd's connect waits for the retransmission a second later).
    pub async fn start_with_backlog(name: &str, behaviour: Behaviour, backlog: u32) -> Backend {
        let socket = tokio::net::TcpSocket::new_v4().expect("backend socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind backend");
        let listener = socket.listen(backlog).expect("listen");
        Self::serve(listener, name, behaviour)
    }

    /// Starts a backend on `addr` (port 0 = any free port).
    pub async fn start_on(addr: SocketAddr, name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        Self::serve(listener, name, behaviour)
    }

    /// Starts a backend on `addr`, or `None` if the address is taken.
    pub async fn try_start_at(
        addr: SocketAddr,
        name: &str,
        behaviour: Behaviour,
    ) -> Option<Backend> {
        let listener = TcpListener::bind(addr).await.ok()?;
        Some(Self::serve(listener, name, behaviour))
    }

    /// Starts a backend on a given address (e.g. to bring a stopped one back).
    pub async fn start_at(addr: SocketAddr, name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("rebind backend");
        Self::serve(listener, name, behaviour)
    }

    fn serve(listener: TcpListener, name: &str, behaviour: Behaviour) -> Backend {
        let addr = listener.local_addr().expect("local addr");
        let own_name = name.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = own_name.clone();
                tokio::spawn(handle(stream, name, behaviour));
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            task: Some(task),
        }
    }

    /// Closes the listener (new connections are refused) and returns once it is closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The listener is dropped when the aborted task is; awaiting it makes that certain.
            let _ = task.await;
        }
    }
}

/// `n` backends named `backend-0`, `backend-1`, … (names of one length, so a reader of a
/// held connection knows how many bytes to expect).
pub async fn named_backends(n: usize, behaviour: Behaviour) -> Vec<Backend> {
    let mut backends = Vec::new();
    for i in 0..n {
        backends.push(Backend::start(&format!("backend-{i}"), behaviour).await);
    }
    backends
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn handle(mut stream: TcpStream, name: String, behaviour: Behaviour) {
    match behaviour {
        Behaviour::Name => {
            let _ = stream.write_all(name.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::NameThenHold => {
            let _ = stream.write_all(name.as_bytes()).await;
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
        Behaviour::Echo => {
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        }
        Behaviour::CountThenAnswer => {
            let mut total = 0usize;
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => return,
                }
            }
            let _ = stream
                .write_all(format!("got {total} bytes").as_bytes())
                .await;
            let _ = stream.shutdown().await;
        }
    }
}

/// An HTTP backend whose answer status can be changed while it runs; counts answers by status.
pub struct HttpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    status: Arc<std::sync::atomic::AtomicU16>,
    ok_answers: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Starts on 127.0.0.1:0 answering every request with `status`.
    pub async fn start(status: u16) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(status));
        let ok_answers = Arc::new(AtomicUsize::new(0));
        let (answer_status, answered_ok) = (Arc::clone(&status), Arc::clone(&ok_answers));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let status = answer_status.load(Ordering::SeqCst);
                let answered_ok = Arc::clone(&answered_ok);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    if status < 400 {
                        answered_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpBackend {
            addr,
            status,
            ok_answers,
            task,
        }
    }

    /// Changes the status of later answers.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Answers with a status below 400 so far.
    pub fn ok_answers(&self) -> usize {
        self.ok_answers.load(Ordering::SeqCst)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
