//! vipd against the real Prometheus tools: `promtool` lints a live scrape and the alert rules
//! (and runs their unit tests), a Prometheus server scrapes a running vipd and reports exactly
//! the connections made, and the dashboard and alerts name only metrics vipd exports.
//!
//! These need Debian's `prometheus` package (server and promtool) and are `#[ignore]`d in a
//! plain `cargo test`; `.ci/run` installs the package and runs them with `--ignored`.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use vipd::config::HealthCheck;
use yaml_rust2::YamlLoader;

use crate::support::backend::Behaviour;
use crate::support::harness::with_health;
use crate::support::http::get;
use crate::support::process::describe;
use crate::support::udp::{UdpEcho, udp_service};
use crate::support::{Backend, GUARD, Running, echo_round_trip, service, within};

/// A file of this repository.
fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `name` on PATH, or a failure that says which package provides it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH: apt-get install prometheus"))
}

/// Runs `promtool ARGS`, feeding `stdin`, and returns its output.
fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// One client connection through `vip`: a round trip through the echo backend, so the
/// connection to the endpoint is established (and counted) before this returns.
async fn round_trip(vip: SocketAddr) {
    let mut stream = TcpStream::connect(vip).await.expect("connect to the VIP");
    echo_round_trip(&mut stream, b"ping").await;
}

/// A vipd with an admin server and three services whose names start with `prefix`:
/// `PREFIX-live` (an echo backend, TCP health checks) carrying `connections` round trips,
/// `PREFIX-dead` (one endpoint with nothing listening, no checks) that one client tried, and
/// `PREFIX-udp` (a UDP echo) with one datagram round trip, so every kind of metric has a
/// series: connect failures, failed client connections, the connect-time histogram, health
/// checks, UDP flows, datagrams and drops. Also returns the backends, to keep them running.
async fn vipd_after_traffic(prefix: &str, connections: usize) -> (Running, (Backend, UdpEcho)) {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let udp_echo = UdpEcho::start().await;
    let dead = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let live = with_health(
        service(&format!("{prefix}-live"), &[echo.addr]),
        HealthCheck::tcp(),
        Duration::from_millis(200),
    );
    let vipd = Running::start(
        vec![
            live,
            service(&format!("{prefix}-dead"), &[dead]),
            udp_service(&format!("{prefix}-udp"), &[udp_echo.addr]),
        ],
        true,
    )
    .await;
    vipd.ready().await;
    for _ in 0..connections {
        round_trip(vipd.addr(&format!("{prefix}-live"))).await;
    }
    // No endpoint answers: vipd closes the client once its connect attempt failed.
    let mut refused = TcpStream::connect(vipd.addr(&format!("{prefix}-dead")))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within("vipd to close the client", refused.read_to_end(&mut rest)).await;
    // One UDP flow: the echo's reply has come back through vipd.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(b"ping", vipd.addr(&format!("{prefix}-udp")))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = within("the UDP echo through vipd", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
    (vipd, (echo, udp_echo))
}

async fn scrape(vipd: &Running) -> String {
    let response = get(vipd.admin.expect("admin server"), "/metrics").await;
    assert_eq!(response.status, 200);
    response.body
}

/// Metric names (sample names, e.g. `x_bucket` of a histogram) in a text-format page.
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `vipd_*` identifier in a PromQL expression.
fn vipd_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut start = 0;
    while start < bytes.len() {
        if ident(bytes[start]) {
            let mut end = start;
            while end < bytes.len() && ident(bytes[end]) {
                end += 1;
            }
            let word = &expr[start..end];
            if word.starts_with("vipd_") {
                names.insert(word.to_owned());
            }
            start = end;
        } else {
            start += 1;
        }
    }
    names
}

/// The PromQL of every alert rule in deploy/prometheus/alerts.yml, by alert name.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("alerts.yml is YAML");
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("expr");
            exprs.push((name.to_owned(), expr.to_owned()));
        }
    }
    exprs
}

/// The PromQL of every panel target and template variable of deploy/grafana/vipd.json.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "definition", serde_json::Value::String(expr)) => {
                            out.push(expr.clone())
                        }
                        ("query", serde_json::Value::String(expr)) if expr != "prometheus" => {
                            out.push(expr.clone())
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo_file("deploy/grafana/vipd.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("vipd.json is JSON");
    let mut exprs = Vec::new();
    walk(&dashboard, &mut exprs);
    exprs
}

#[tokio::test]
#[ignore = "needs prometheus (apt-get install prometheus)"]
async fn live_scrape_passes_promtool_check_metrics() {
    let (vipd, _echo) = vipd_after_traffic("promlint", 5).await;
    let page = scrape(&vipd).await;
    assert!(
        page.contains("vipd_connect_duration_seconds_bucket"),
        "{page}"
    );

    let output = promtool(&["check", "metrics"], &page);
    // promtool prints lint findings (e.g. a counter without _total) and still may exit 0 for
    // some of them: require silence as well as success.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics:\n{}\n--- page\n{page}",
        describe(&output)
    );
}

#[test]
#[ignore = "needs prometheus (apt-get install prometheus)"]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let check = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(check.status.success(), "{}", describe(&check));
    let stdout = String::from_utf8_lossy(&check.stdout);
    let count = alert_exprs().len();
    assert!(
        stdout.contains(&format!("SUCCESS: {count} rules found")) && check.stderr.is_empty(),
        "{}",
        describe(&check)
    );

    let tests = repo_file("deploy/prometheus/alerts_test.yml");
    let run = promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert!(run.status.success(), "{}", describe(&run));

    let scrape_config = repo_file("deploy/prometheus/scrape.yml");
    let config = promtool(&["check", "config", scrape_config.to_str().unwrap()], "");
    assert!(config.status.success(), "{}", describe(&config));
}

#[test]
fn every_alert_has_a_unit_test() {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/alerts_test.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("alerts_test.yml is YAML");
    let tested: BTreeSet<&str> = docs[0]["tests"]
        .as_vec()
        .expect("tests")
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_vec().into_iter().flatten())
        // A test that expects the alert to fire, not only to stay quiet.
        .filter(|case| case["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    for (alert, _) in alert_exprs() {
        assert!(
            tested.contains(alert.as_str()),
            "alert {alert} has no firing case in alerts_test.yml"
        );
    }
}

#[test]
fn dashboard_and_alerts_cover_what_operators_watch() {
    let mut named = BTreeSet::new();
    for expr in dashboard_exprs() {
        named.extend(vipd_names(&expr));
    }
    for wanted in [
        "vipd_connections_total",
        "vipd_active_connections",
        "vipd_bytes_total",
        "vipd_endpoint_healthy",
        "vipd_connect_duration_seconds_bucket",
        "vipd_connect_failures_total",
        "vipd_connections_failed_total",
        "vipd_udp_flows",
        "vipd_datagrams_total",
        "vipd_udp_flows_dropped_total",
    ] {
        assert!(named.contains(wanted), "the dashboard shows no {wanted}");
    }
    let alerts: Vec<String> = alert_exprs().into_iter().map(|(name, _)| name).collect();
    for wanted in [
        "VipdDown",
        "VipdEndpointDown",
        "VipdServiceNoHealthyEndpoint",
        "VipdConnectFailures",
        "VipdConfigReloadFailed",
        "VipdUdpFlowLimit",
        "VipdUdpNoEndpoint",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no alert {wanted}");
    }
}

#[tokio::test]
#[ignore = "needs prometheus (apt-get install prometheus)"]
async fn dashboard_and_alert_metrics_exist_in_a_live_scrape() {
    let (vipd, _echo) = vipd_after_traffic("promnames", 3).await;
    let exported = sample_names(&scrape(&vipd).await);

    let mut used = BTreeSet::new();
    for expr in dashboard_exprs() {
        used.extend(vipd_names(&expr));
    }
    for (_, expr) in alert_exprs() {
        // `up` is Prometheus's own series about the scrape, not vipd's; only vipd_* names
        // must come from vipd.
        used.extend(vipd_names(&expr));
    }
    assert!(used.len() >= 8, "too few metric names found: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in the dashboard or alerts but not exported: {missing:?}\nexported: {exported:?}"
    );
}

/// A Prometheus server on 127.0.0.1 with its own storage directory, scraping one target every
/// second. Killed (by PID) and reaped on drop.
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    fn start(target: SocketAddr) -> PrometheusServer {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vipd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // The kernel picks a free port; it is released just before Prometheus binds it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        PrometheusServer { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API, as JSON; `None` while the server does not accept
    /// connections or is not ready yet.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        TcpStream::connect(self.addr).await.ok()?;
        let response = get(self.addr, path).await;
        // 503 while the storage is still opening: the web server starts first.
        if response.status == 503 {
            return None;
        }
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        Some(serde_json::from_str(&response.body).expect("API answers JSON"))
    }

    /// Polls `check` on the HTTP API (about ten times a second) until it returns a value;
    /// bounded by [`GUARD`]. Prometheus is another process: there is no event to await.
    async fn poll<T>(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> Option<T>,
        path: &str,
    ) -> T {
        let deadline = Instant::now() + GUARD;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(body) = self.api(path).await {
                if let Some(value) = check(&body) {
                    return value;
                }
                last = Some(body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; last answer: {last:?}\n--- prometheus log\n{}",
            self.log()
        );
    }

    async fn wait_target_up(&self) {
        self.poll(
            "the vipd target to be up",
            |body| {
                let targets = body["data"]["activeTargets"].as_array()?;
                targets.iter().any(|t| t["health"] == "up").then_some(())
            },
            "/api/v1/targets",
        )
        .await;
    }

    /// Polls the instant query `promql` until it has one sample that `accept`s; returns it.
    async fn query_until(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        self.poll(
            promql,
            |body| {
                let result = body["data"]["result"].as_array()?;
                let value: f64 = result.first()?["value"][1].as_str()?.parse().ok()?;
                accept(value).then_some(value)
            },
            &path,
        )
        .await
    }

    /// Evaluates `promql` once; the API's status and error, if any.
    async fn evaluate(&self, promql: &str) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let response = get(self.addr, &path).await;
        serde_json::from_str(&response.body).expect("API answers JSON")
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus (apt-get install prometheus)"]
async fn prometheus_server_scrapes_exact_connection_count() {
    let echo = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(vec![service("promserver", &[echo.addr])], true).await;
    vipd.ready().await;
    let vip = vipd.addr("promserver");
    for _ in 0..7 {
        round_trip(vip).await;
    }

    let prometheus = PrometheusServer::start(vipd.admin.expect("admin server"));
    prometheus.wait_target_up().await;
    let total = r#"sum(vipd_connections_total{job="vipd", service="promserver"})"#;
    // Every connection was made before Prometheus started, so any scrape it has holds all 7.
    let first = prometheus.query_until(total, |_| true).await;
    assert_eq!(first, 7.0);

    for _ in 0..3 {
        round_trip(vip).await;
    }
    let next = prometheus.query_until(total, |v| v != first).await;
    assert_eq!(next, 10.0);

    // Every dashboard query is valid PromQL against this server (Grafana variables filled in).
    for expr in dashboard_exprs() {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$service", ".*");
        if promql.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        let answer = prometheus.evaluate(&promql).await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
    }
}
