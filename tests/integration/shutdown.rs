//! Shutdown: listeners close at once, established connections drain within `drain_timeout`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipd::app::Phase;

use crate::support::backend::Behaviour;
use crate::support::echo_round_trip;
use crate::support::{Backend, Running, service, within};

#[tokio::test]
async fn established_connections_finish_while_new_ones_are_refused() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(vec![service("drain", &[backend.addr])], false).await;
    let vip = vipd.addr("drain");
    let mut established = TcpStream::connect(vip).await.unwrap();
    echo_round_trip(&mut established, b"before").await;

    vipd.shutdown.cancel();
    within("draining", vipd.state.reached(Phase::Draining)).await;
    let refused = TcpStream::connect(vip).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    echo_round_trip(&mut established, b"during the drain").await;
    assert_eq!(vipd.state.phase(), Phase::Draining);

    established.shutdown().await.unwrap();
    let mut rest = Vec::new();
    established.read_to_end(&mut rest).await.unwrap();
    vipd.finished().await.unwrap();
}

#[tokio::test]
async fn drain_deadline_closes_what_is_left() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let mut svc = service("drain-deadline", &[backend.addr]);
    svc.connection.drain_timeout = Duration::from_millis(200);
    let vipd = Running::start(vec![svc], false).await;
    let mut lingering = TcpStream::connect(vipd.addr("drain-deadline"))
        .await
        .unwrap();
    echo_round_trip(&mut lingering, b"hello").await;

    vipd.stop().await.unwrap();
    let mut rest = Vec::new();
    let n = within("close at the deadline", lingering.read_to_end(&mut rest))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
}
