//! The deployment files under deploy/ against the real vipd: every embedded config passes
//! `vipd check`, probes and scrape settings point at the admin port the config opens, the
//! Dockerfile's HEALTHCHECK command works against a live admin server, the systemd unit
//! verifies, and the binary speaks the systemd notify protocol on a real datagram socket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::backend::Behaviour;
use crate::support::free_port;
use crate::support::http::get;
use crate::support::process::{VIPD, VipdProcess, describe};
use crate::support::{Backend, GUARD, Running, service};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document of every manifest in deploy/kubernetes/, with its file name.
fn manifests() -> Vec<(String, Yaml)> {
    let dir = repo_file("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "manifests in {}: {files:?}",
        dir.display()
    );
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let loaded =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        docs.extend(loaded.into_iter().map(|doc| (name.clone(), doc)));
    }
    docs
}

/// Every string stored under a key ending in `.toml` (a ConfigMap's `vipd.toml`), anywhere.
fn embedded_tomls(doc: &Yaml, out: &mut Vec<String>) {
    match doc {
        Yaml::Hash(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    (Some(key), Some(text)) if key.ends_with(".toml") => out.push(text.to_owned()),
                    _ => embedded_tomls(value, out),
                }
            }
        }
        Yaml::Array(items) => items.iter().for_each(|item| embedded_tomls(item, out)),
        _ => {}
    }
}

/// Runs `vipd check` on `text`; panics with its output unless it exits 0.
fn vipd_check(what: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vipd.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(VIPD)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .expect("run vipd check");
    assert!(
        output.status.success(),
        "vipd check of {what} failed: {}\n--- config\n{text}",
        describe(&output)
    );
}

/// What the deploy files need to know about a config: its admin port, the longest drain, and
/// whether any service manages its VIP.
struct ConfigFacts {
    admin_port: u16,
    longest_drain: Duration,
    manages_vips: bool,
}

fn facts(text: &str) -> ConfigFacts {
    let table: toml::Table = text.parse().expect("config is TOML");
    let listen: SocketAddr = table["admin"]["listen"]
        .as_str()
        .expect("[admin] listen")
        .parse()
        .expect("admin listen is IP:PORT");
    let duration = |value: Option<&toml::Value>| {
        value.map(|v| humantime::parse_duration(v.as_str().expect("duration string")).unwrap())
    };
    let default_drain = duration(table.get("defaults").and_then(|d| d.get("drain_timeout")))
        .unwrap_or(Duration::from_secs(30));
    let services = table["service"].as_array().expect("[[service]]");
    let longest_drain = services
        .iter()
        .map(|s| duration(s.get("drain_timeout")).unwrap_or(default_drain))
        .max()
        .unwrap();
    let manages_vips = services
        .iter()
        .any(|s| s.get("manage_vip").and_then(toml::Value::as_bool) == Some(true));
    ConfigFacts {
        admin_port: listen.port(),
        longest_drain,
        manages_vips,
    }
}

#[test]
fn every_embedded_config_passes_vipd_check() {
    let mut checked = 0;
    for (file, doc) in manifests() {
        let mut tomls = Vec::new();
        embedded_tomls(&doc, &mut tomls);
        for text in tomls {
            vipd_check(&file, &text);
            checked += 1;
        }
    }
    // configmap.yaml (node daemon) and sidecar.yaml (sidecar) each carry one.
    assert!(checked >= 2, "only {checked} embedded configs found");
    vipd_check("deploy/docker/vipd.toml", &read("deploy/docker/vipd.toml"));
}

fn int(value: &Yaml) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

#[test]
fn workloads_probe_and_expose_the_admin_port_of_their_config() {
    let docs = manifests();
    let config_maps: BTreeMap<&str, &Yaml> = docs
        .iter()
        .filter(|(_, doc)| doc["kind"].as_str() == Some("ConfigMap"))
        .map(|(_, doc)| (doc["metadata"]["name"].as_str().unwrap(), doc))
        .collect();
    let mut workloads = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "DaemonSet" && kind != "Deployment" {
            continue;
        }
        let template = &doc["spec"]["template"];
        let pod = &template["spec"];
        let containers: Vec<&Yaml> = [&pod["containers"], &pod["initContainers"]]
            .into_iter()
            .filter_map(Yaml::as_vec)
            .flatten()
            .collect();
        let vipd = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("vipd"))
            .unwrap_or_else(|| panic!("{file}: {kind} without a vipd container"));
        let at = format!("{file}: {kind} container vipd");

        // Its config: the ConfigMap mounted at /etc/vipd, which `run --config` reads.
        let args: Vec<&str> = vipd["args"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--config", "/etc/vipd/vipd.toml"]),
            "{at}: args {args:?}"
        );
        let mount = vipd["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some("/etc/vipd"))
            .unwrap_or_else(|| panic!("{at}: nothing mounted at /etc/vipd"));
        let volume = pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{at}: no volume {:?}", mount["name"]));
        let map_name = volume["configMap"]["name"]
            .as_str()
            .expect("a ConfigMap volume");
        let text = config_maps
            .get(map_name)
            .unwrap_or_else(|| panic!("{at}: no ConfigMap {map_name} in deploy/kubernetes"))["data"]
            ["vipd.toml"]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {map_name} has no vipd.toml"));
        let config = facts(text);
        let admin = i64::from(config.admin_port);

        let probe = |name: &str| {
            (
                vipd[name]["httpGet"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: no {name}")),
                int(&vipd[name]["httpGet"]["port"]),
            )
        };
        assert_eq!(probe("livenessProbe"), ("/healthz", Some(admin)), "{at}");
        assert_eq!(probe("readinessProbe"), ("/readyz", Some(admin)), "{at}");
        let ports = vipd["ports"].as_vec().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"].as_str() == Some("admin")
                    && int(&p["containerPort"]) == Some(admin)),
            "{at}: no container port named admin = {admin}"
        );
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/scrape"].as_str(),
            Some("true"),
            "{at}"
        );
        assert_eq!(int(&annotations["prometheus.io/port"]), Some(admin), "{at}");
        assert_eq!(
            annotations["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{at}"
        );

        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !vipd["resources"][bound][resource].is_badvalue(),
                    "{at}: no resources.{bound}.{resource}"
                );
            }
        }
        let grace =
            int(&pod["terminationGracePeriodSeconds"]).expect("terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(grace as u64) > config.longest_drain,
            "{at}: terminationGracePeriodSeconds {grace} must outlast drain_timeout {:?}",
            config.longest_drain
        );
        let security = &vipd["securityContext"];
        let non_root = security["runAsNonRoot"]
            .as_bool()
            .or(pod["securityContext"]["runAsNonRoot"].as_bool());
        assert_eq!(non_root, Some(true), "{at}: not runAsNonRoot");
        let added: Vec<&str> = security["capabilities"]["add"]
            .as_vec()
            .map(|caps| caps.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            added.contains(&"NET_ADMIN"),
            config.manages_vips,
            "{at}: NET_ADMIN only (and always) when a service manages its VIP"
        );
        if kind == "DaemonSet" {
            assert_eq!(
                pod["hostNetwork"].as_bool(),
                Some(true),
                "{at}: node daemon on the host network"
            );
        }
        workloads.insert(kind.to_owned());
    }
    assert_eq!(
        workloads,
        BTreeSet::from(["DaemonSet".to_owned(), "Deployment".to_owned()])
    );
}

#[test]
fn service_monitor_scrapes_the_daemonsets_admin_port_as_job_vipd() {
    let docs = manifests();
    let find = |kind: &str| {
        docs.iter()
            .map(|(_, doc)| doc)
            .find(|doc| doc["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
    };
    let (daemonset, service, monitor) =
        (find("DaemonSet"), find("Service"), find("ServiceMonitor"));
    let labels = |yaml: &Yaml| -> BTreeMap<String, String> {
        yaml.as_hash()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let subset = |wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        !wanted.is_empty() && wanted.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    let pod_labels = labels(&daemonset["spec"]["template"]["metadata"]["labels"]);
    let service_labels = labels(&service["metadata"]["labels"]);
    assert!(
        subset(&labels(&service["spec"]["selector"]), &pod_labels),
        "the Service selects the vipd pods"
    );
    assert!(
        subset(
            &labels(&monitor["spec"]["selector"]["matchLabels"]),
            &service_labels
        ),
        "the ServiceMonitor selects the Service"
    );
    let service_port = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["targetPort"].as_str() == Some("admin"))
        .expect("a Service port targeting the container port named admin");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    // deploy/prometheus/alerts.yml selects job="vipd".
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        service_labels.get(job_label).map(String::as_str),
        Some("vipd")
    );
}

/// The Dockerfile's instructions with line continuations joined.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/docker/Dockerfile").lines() {
        if current.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_ships_a_checked_config_and_runs_as_non_root() {
    let instructions = dockerfile_instructions();
    let has = |text: &str| instructions.iter().any(|i| i == text);
    assert!(
        has("COPY deploy/docker/vipd.toml /etc/vipd/vipd.toml"),
        "{instructions:#?}"
    );
    assert!(
        has(r#"RUN ["vipd", "check", "--config", "/etc/vipd/vipd.toml"]"#),
        "{instructions:#?}"
    );
    // tini as PID 1 reaps the orphans of exec health checks and passes signals on.
    assert!(
        has(r#"ENTRYPOINT ["tini", "--", "vipd"]"#),
        "{instructions:#?}"
    );
    assert!(
        has(r#"CMD ["run", "--config", "/etc/vipd/vipd.toml"]"#),
        "{instructions:#?}"
    );
    let user = instructions
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    let admin = facts(&read("deploy/docker/vipd.toml")).admin_port;
    assert!(
        has(&format!("EXPOSE {admin}")),
        "EXPOSE {admin} (the admin port)"
    );
    // Every file the build copies from the context exists (the context is the repository root).
    for instruction in &instructions {
        let Some(args) = instruction.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                repo_file(source).exists(),
                "COPY source {source} is missing"
            );
            let ignore = read("deploy/docker/Dockerfile.dockerignore");
            let source = source.trim_end_matches('/').trim_start_matches("./");
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim_end_matches('/') == format!("!{source}")),
                "COPY source {source} is excluded by Dockerfile.dockerignore"
            );
        }
    }
}

/// The exec-form command of the Dockerfile's HEALTHCHECK.
fn healthcheck_command() -> Vec<String> {
    let instruction = dockerfile_instructions()
        .into_iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    let json = instruction
        .split_once(" CMD ")
        .expect("HEALTHCHECK ... CMD [...]")
        .1;
    serde_json::from_str(json.trim()).expect("exec form: a JSON array")
}

/// Runs the HEALTHCHECK command against 127.0.0.1:`port` instead of the image's admin port.
fn run_healthcheck(port: u16) -> std::process::Output {
    let command = healthcheck_command();
    let configured = facts(&read("deploy/docker/vipd.toml")).admin_port;
    let (program, args) = command.split_first().unwrap();
    let retargeted: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace(
                &format!("/127.0.0.1/{configured}"),
                &format!("/127.0.0.1/{port}"),
            )
        })
        .collect();
    assert_ne!(retargeted, args, "the command names 127.0.0.1/{configured}");
    Command::new(program)
        .args(&retargeted)
        .output()
        .expect("run the health check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_healthcheck_passes_against_a_live_admin_server_and_fails_without() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let vipd = Running::start(vec![service("dockerhealth", &[backend.addr])], true).await;
    let port = vipd.admin.unwrap().port();
    let healthy = tokio::task::spawn_blocking(move || run_healthcheck(port))
        .await
        .unwrap();
    assert!(
        healthy.status.success(),
        "health check against a live vipd: {}\n{}",
        healthy.status,
        String::from_utf8_lossy(&healthy.stderr)
    );
    vipd.stop().await.unwrap();
    let down = tokio::task::spawn_blocking(move || run_healthcheck(port))
        .await
        .unwrap();
    assert!(
        !down.status.success(),
        "health check must fail once vipd is gone"
    );
}

/// `Key=value` settings of the unit's `[Service]` section (a key set twice keeps the last).
fn unit_service_section() -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut settings = BTreeMap::new();
    for line in read("deploy/systemd/vipd.service").lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.insert(key.to_owned(), value.to_owned());
        }
    }
    settings
}

#[test]
fn systemd_unit_is_notify_hardened_and_checks_its_config_first() {
    let unit = unit_service_section();
    let get = |key: &str| {
        unit.get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}="))
    };
    assert_eq!(get("Type"), "notify");
    let start: Vec<&str> = get("ExecStart").split_whitespace().collect();
    let pre: Vec<&str> = get("ExecStartPre").split_whitespace().collect();
    assert_eq!(&start[1..3], ["run", "--config"]);
    assert_eq!(
        pre,
        [start[0], "check", "--config", start[3]],
        "checks the file it runs"
    );
    assert!(get("ExecReload").ends_with("kill -HUP $MAINPID"));
    let caps: BTreeSet<&str> = get("CapabilityBoundingSet").split_whitespace().collect();
    assert_eq!(
        caps,
        BTreeSet::from(["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert!(get("DynamicUser") == "yes" || unit.get("User").is_some_and(|u| u != "root"));
    assert_eq!(
        get("RestartPreventExitStatus"),
        "78",
        "a bad config is not retried"
    );
    assert!(unit.contains_key("WatchdogSec"));
    let stop = humantime::parse_duration(get("TimeoutStopSec")).unwrap();
    assert!(
        stop > Duration::from_secs(30),
        "TimeoutStopSec outlasts the default drain"
    );
}

#[test]
#[ignore = "needs systemd-analyze (apt-get install systemd)"]
fn systemd_unit_passes_systemd_analyze_verify() {
    // verify requires ExecStart's binary to exist: point the unit at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("vipd.service");
    std::fs::write(
        &unit,
        read("deploy/systemd/vipd.service").replace("/usr/local/bin/vipd", VIPD),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no", unit.to_str().unwrap()])
        .output()
        .expect("systemd-analyze not found: apt-get install systemd");
    // verify exits 0 even for unknown keys and bad values, only warning: require silence too.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify: {}",
        describe(&output)
    );
}

/// A `vipd run` child process with `NOTIFY_SOCKET` pointing at a datagram socket this test
/// owns.
struct Notified {
    process: VipdProcess,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Notified {
    fn start(config: &str, env: &[(&str, &str)]) -> Notified {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vipd.toml");
        std::fs::write(&path, config).unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(GUARD)).unwrap();
        let mut command = Command::new(VIPD);
        command
            .args(["run", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied());
        Notified {
            process: VipdProcess::start(command),
            socket,
            _dir: dir,
        }
    }

    /// The next notification (one datagram, its lines), waiting at most [`GUARD`].
    fn next(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(len) => String::from_utf8_lossy(&buf[..len])
                .lines()
                .map(str::to_owned)
                .collect(),
            Err(e) => panic!(
                "no notification ({e}); vipd log:\n{}",
                self.process.output()
            ),
        }
    }
}

fn notify_config(backend: SocketAddr, admin: u16) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[service]]\nname = \"notify\"\nvip = \"127.0.0.1\"\n\
         ports = [{{ port = {} }}]\nendpoints = [\"{backend}\"]\n\n[service.health]\ncheck = \"tcp\"\n\
         period = \"200ms\"\ntimeout = \"100ms\"\n",
        free_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_notifies_ready_reloading_and_stopping() {
    let backend = Backend::start("echo", Behaviour::Echo).await;
    let admin_port = free_port();
    let mut vipd = Notified::start(&notify_config(backend.addr, admin_port), &[]);

    let mut vipd = tokio::task::spawn_blocking(move || {
        let ready = vipd.next();
        assert_eq!(ready, ["READY=1"], "first notification");
        vipd
    })
    .await
    .unwrap();
    // READY=1 means what /readyz means: listeners bound, first health round done.
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert_eq!(get(admin, "/readyz").await.status, 200);

    // SIGHUP: RELOADING=1 with the monotonic timestamp systemd requires, then READY=1 again.
    vipd.process.signal(Signal::HUP);
    let mut vipd = tokio::task::spawn_blocking(move || {
        let reloading = vipd.next();
        assert_eq!(reloading.len(), 2, "{reloading:?}");
        assert_eq!(reloading[0], "RELOADING=1");
        let usec = reloading[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"));
        assert!(usec.parse::<u64>().is_ok(), "{reloading:?}");
        assert_eq!(vipd.next(), ["READY=1"], "after the reload");
        vipd
    })
    .await
    .unwrap();

    vipd.process.signal(Signal::TERM);
    let stopping = tokio::task::spawn_blocking(move || {
        let stopping = vipd.next();
        let status = vipd.process.wait();
        (stopping, status)
    })
    .await
    .unwrap();
    assert_eq!(
        stopping.0,
        ["STOPPING=1"],
        "no watchdog pings without WATCHDOG_USEC"
    );
    assert_eq!(stopping.1.code(), Some(0));
}

#[test]
fn binary_pings_the_watchdog_at_half_its_interval() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(Backend::start("echo", Behaviour::Echo));
    // 400ms: pings every 200ms.
    let mut vipd = Notified::start(
        &notify_config(backend.addr, free_port()),
        &[("WATCHDOG_USEC", "400000")],
    );
    let mut watchdog = 0;
    let mut ready = false;
    let started = std::time::Instant::now();
    while watchdog < 3 || !ready {
        for line in vipd.next() {
            match line.as_str() {
                "WATCHDOG=1" => watchdog += 1,
                "READY=1" => ready = true,
                other => panic!("unexpected notification {other}"),
            }
        }
    }
    // Three pings take at least two periods (the first is sent at once).
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}
