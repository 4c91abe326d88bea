//! The `vipd` binary: exit codes, signals, `check` output, `demo`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Backend;
use crate::support::backend::Behaviour;
use crate::support::http::post;
use crate::support::process::{VIPD, VipdProcess};
use crate::support::{echo_round_trip, free_port};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("vipd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[defaults]\ndrain_timeout = \"30s\"\n\n{}",
            service_toml("sig", port, backend.addr)
        ),
    );
    let mut vipd = VipdProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    vipd.wait_for("ready");
    let vip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut established = TcpStream::connect(vip).await.unwrap();
    echo_round_trip(&mut established, b"one").await;

    vipd.signal(Signal::TERM);
    vipd.wait_for("draining established connections");
    assert_eq!(
        TcpStream::connect(vip).await.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    echo_round_trip(&mut established, b"two").await;
    drop(established);
    let status = vipd.exit().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn second_signal_exits_at_once() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[defaults]\ndrain_timeout = \"1h\"\n\n{}",
            service_toml("sig2", port, backend.addr)
        ),
    );
    let mut vipd = VipdProcess::spawn(&[
        "run",
        "-c",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    vipd.wait_for("ready");
    let line = vipd.seen.last().unwrap();
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(record["fields"]["message"], "ready");
    let mut established = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_round_trip(&mut established, b"up").await;
    vipd.signal(Signal::INT);
    vipd.wait_for("draining established connections");
    vipd.signal(Signal::INT);
    let status = vipd.exit().await;
    assert_eq!(status.code(), Some(130));
}

#[test]
fn invalid_config_exits_78_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            "[[service]]\nname = \"bad\"\nvip = \"127.0.0.1\"\nports = [{{ port = {port} }}]\nendpoints = []\n"
        ),
    );
    for command in ["run", "check"] {
        let output = Command::new(VIPD)
            .args([command, "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(78), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{}: service \"bad\": endpoints", config.display())),
            "{command}: {stderr}"
        );
    }
    // Nothing was bound.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port still free");
}

#[test]
fn check_prints_one_line_per_service() {
    let output = Command::new(VIPD)
        .args(["check", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vipd.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.lines().any(|l| l.starts_with("service \"web\": ")),
        "{stdout}"
    );
}

#[test]
fn version_is_printed() {
    let output = Command::new(VIPD).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("vipd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn demo_serves_and_rotates_backends() {
    let (service, admin) = (free_port(), free_port());
    // Three consecutive free ports for the backends; free_port hands each out once.
    let first_backend = loop {
        let ports = [free_port(), free_port(), free_port()];
        if ports[1] == ports[0] + 1 && ports[2] == ports[0] + 2 {
            break ports[0];
        }
    };
    let mut demo = VipdProcess::spawn(&[
        "demo",
        "--port",
        &service.to_string(),
        "--admin-port",
        &admin.to_string(),
        "--backend-port",
        &first_backend.to_string(),
    ]);
    demo.wait_for("ready");
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", service)).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        answers.push(response.lines().last().unwrap_or_default().to_owned());
    }
    answers.sort();
    assert_eq!(
        answers,
        ["backend-1", "backend-2", "backend-3"]
            .map(|b| {
                let i: u16 = b[8..].parse().unwrap();
                format!("hello from {b} (127.0.0.1:{})", first_backend + i - 1)
            })
            .to_vec()
    );
    let status = crate::support::http::get(([127, 0, 0, 1], admin).into(), "/status").await;
    assert_eq!(status.status, 200);
    demo.signal(Signal::INT);
    let code = demo.exit().await;
    assert_eq!(code.code(), Some(0));
}

#[tokio::test]
async fn accept_survives_running_out_of_file_descriptors() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n{}",
            service_toml("fds", port, backend.addr)
        ),
    );
    // A low descriptor limit that a few dozen connections exhaust.
    const LIMIT: usize = 48;
    let mut vipd = VipdProcess::spawn_program(
        "sh",
        &[
            "-c",
            &format!(r#"ulimit -n {LIMIT} && exec "$0" "$@""#),
            VIPD,
            "run",
            "-c",
            config.to_str().unwrap(),
        ],
    );
    vipd.wait_for("ready");
    let pid = vipd.child.id();
    // The limit caps descriptor numbers, so only those below it count: one inherited above it
    // (a jobserver pipe of the test runner, say) takes no room.
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < LIMIT)
            .count()
    };
    // Each proxied connection holds two descriptors (client and endpoint). Make the number left
    // even, so the limit is reached by accept() itself rather than by the endpoint's socket():
    // an idle admin connection takes one.
    let mut clients = Vec::new();
    let before = open_fds();
    if (LIMIT - before) % 2 == 1 {
        clients.push(TcpStream::connect(("127.0.0.1", admin)).await.unwrap());
        // The external process gives no event for an accepted connection; watch its table.
        for _ in 0..1000 {
            if open_fds() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(open_fds(), before + 1);
    }
    let room = (LIMIT - open_fds()) / 2;
    for i in 0..room {
        let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut back = [0u8; 1];
        crate::support::within(&format!("client {i} served"), client.read_exact(&mut back))
            .await
            .unwrap();
        clients.push(client);
    }
    // No descriptor left: the kernel completes this handshake into the backlog, and vipd's
    // accept() fails.
    clients.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    vipd.wait_for("accept failed; pausing");
    drop(clients);
    // Wait until vipd has closed its side of every dropped connection: a client accepted while
    // the endpoint-side socket still cannot be created would be closed, not served.
    crate::support::poll_until("vipd to close the dropped connections", || async {
        let open = open_fds();
        if open <= before {
            Ok(())
        } else {
            Err(format!("vipd still holds {open} descriptors"))
        }
    })
    .await;
    // Descriptors are free again: a new client is served.
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    echo_round_trip(&mut fresh, b"alive").await;
    let page = crate::support::http::get(([127, 0, 0, 1], admin).into(), "/metrics")
        .await
        .body;
    let errors: f64 = page
        .lines()
        .find(|l| l.starts_with("vipd_accept_errors_total{service=\"fds\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(errors >= 1.0, "{errors}");
    vipd.signal(Signal::TERM);
}

fn service_toml(name: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"127.0.0.1\"\nports = [{{ port = {port} }}]\n\
         endpoints = [\"{endpoint}\"]\n\n[service.health]\ncheck = \"none\"\n\n"
    )
}

async fn name_at(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test]
async fn sighup_reloads_and_an_invalid_file_keeps_the_running_config() {
    let first = Backend::start("first", Behaviour::Name).await;
    let second = Backend::start("second", Behaviour::Name).await;
    let (port_a, port_b) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &service_toml("a", port_a, first.addr));
    let mut vipd = VipdProcess::spawn(&["run", "-c", config.to_str().unwrap()]);
    vipd.wait_for("ready");
    assert_eq!(name_at(port_a).await.unwrap(), "first");

    // A broken file: nothing changes, the error names file and line.
    std::fs::write(&config, "[[service]]\nname = \"a\"\nbogus = 1\n").unwrap();
    vipd.signal(Signal::HUP);
    vipd.wait_for("config reload failed");
    let failure = vipd.seen.last().unwrap().clone();
    assert!(
        failure.contains(&format!("{}:3:1", config.display())),
        "{failure}"
    );
    assert_eq!(name_at(port_a).await.unwrap(), "first");

    // A good file: service b appears, a follows its new endpoint.
    let text = service_toml("a", port_a, second.addr) + &service_toml("b", port_b, first.addr);
    std::fs::write(&config, text).unwrap();
    vipd.signal(Signal::HUP);
    vipd.wait_for("config reloaded");
    assert_eq!(name_at(port_a).await.unwrap(), "second");
    assert_eq!(name_at(port_b).await.unwrap(), "first");
    vipd.signal(Signal::TERM);
    let status = vipd.exit().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn watched_file_and_post_reload_apply_changes() {
    let backend = Backend::start("only", Behaviour::Name).await;
    let (port_a, port_b, admin) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    let admin_toml = format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"token\"\n\n");
    let config = write_config(
        dir.path(),
        &(admin_toml.clone() + &service_toml("a", port_a, backend.addr)),
    );
    let mut vipd = VipdProcess::spawn(&["run", "-c", config.to_str().unwrap(), "--watch"]);
    vipd.wait_for("ready");

    std::fs::write(
        &config,
        admin_toml.clone()
            + &service_toml("a", port_a, backend.addr)
            + &service_toml("b", port_b, backend.addr),
    )
    .unwrap();
    vipd.wait_for("config reloaded");
    assert_eq!(name_at(port_b).await.unwrap(), "only");

    // POST /reload with the token reads the file again; an invalid file answers 422.
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    assert_eq!(post(admin_addr, "/reload", None).await.status, 401);
    let ok = post(admin_addr, "/reload", Some("t0ken")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("reloaded: no changes"), "{}", ok.body);
    std::fs::write(&config, admin_toml + "[[service]]\nname = \"BAD\"\n").unwrap();
    vipd.wait_for("config reload failed");
    let refused = post(admin_addr, "/reload", Some("t0ken")).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(!refused.body.contains("t0ken"));
    assert!(refused.headers.iter().all(|(_, v)| !v.contains("t0ken")));
    assert_eq!(name_at(port_a).await.unwrap(), "only");
    assert_eq!(name_at(port_b).await.unwrap(), "only");
    let page = crate::support::http::get(admin_addr, "/metrics").await.body;
    assert!(
        page.contains("vipd_config_reloads_total{result=\"failure\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("vipd_config_reloads_total{result=\"success\"} 2"),
        "{page}"
    );
    vipd.signal(Signal::TERM);
}
