//! VIP ownership inside network namespaces the tests create (root only): the vipd binary runs
//! under `ip netns exec`, backends and clients run on threads that joined the namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use nix::ifaddrs::getifaddrs;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, bind, recv, setsockopt, socket,
    sockopt,
};
use rustix::process::Signal;

use crate::support::GUARD;
use crate::support::process::{VIPD, VipdProcess};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace with `lo` up, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "vipd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NS ARGS`, failing the test on error.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn addresses(&self, interface: &str) -> String {
        self.ip(&["-o", "addr", "show", "dev", interface])
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay in the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Starts `vipd run` with `config` inside the namespace and waits until it is ready.
    fn vipd(&self, dir: &std::path::Path, config: &str) -> VipdProcess {
        let path = dir.join("vipd.toml");
        std::fs::write(&path, config).unwrap();
        let mut vipd = VipdProcess::spawn_program(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                VIPD,
                "run",
                "--config",
                path.to_str().unwrap(),
            ],
        );
        // Not just "ready": "already on the interface" contains it too.
        vipd.wait_for("ready services=");
        vipd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stops vipd with SIGTERM and checks it exits 0. (`ip netns exec` execs vipd, so the child's
/// PID is vipd's.)
fn stop(mut vipd: VipdProcess) {
    vipd.signal(Signal::TERM);
    assert!(vipd.wait().success());
}

#[test]
#[ignore = "needs root: network namespaces"]
fn managed_vip_is_added_served_and_removed_leaving_others_alone() {
    let ns = Netns::new();
    // A veth pair rather than a dummy interface: it needs no extra kernel module.
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["link", "set", "veth0", "up"]);
    ns.ip(&["link", "set", "veth1", "up"]);
    // Someone else's address, which vipd also wants: it must survive vipd.
    ns.ip(&["addr", "add", "10.77.0.9/32", "dev", "veth0"]);

    // A backend inside the namespace that greets every connection.
    let backend = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in backend.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"hello");
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str, vip: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nports = [{{ port = 8000 }}]\n\
             endpoints = [\"{backend_addr}\"]\nmanage_vip = true\nvip_interface = \"veth0\"\n\
             [service.health]\ncheck = \"none\"\n"
        )
    };
    let config = format!(
        "{}{}{}",
        service("web", "10.77.0.1"),
        service("pre", "10.77.0.9"),
        service("web6", "fd00:77::1")
    );
    let vipd = ns.vipd(dir.path(), &config);

    let addrs = ns.addresses("veth0");
    assert!(addrs.contains("10.77.0.1/32"), "{addrs}");
    assert!(addrs.contains("fd00:77::1/128"), "{addrs}");
    for vip in ["10.77.0.1", "fd00:77::1"] {
        let vip: IpAddr = vip.parse().unwrap();
        let greeting = ns.run(move || {
            let mut stream =
                TcpStream::connect_timeout(&(vip, 8000).into(), GUARD).expect("connect to VIP");
            stream.set_read_timeout(Some(GUARD)).unwrap();
            let mut greeting = String::new();
            stream.read_to_string(&mut greeting).unwrap();
            greeting
        });
        assert_eq!(greeting, "hello", "through {vip}");
    }

    stop(vipd);
    let addrs = ns.addresses("veth0");
    assert!(!addrs.contains("10.77.0.1/"), "{addrs}");
    assert!(!addrs.contains("fd00:77::1/"), "{addrs}");
    assert!(
        addrs.contains("10.77.0.9/32"),
        "pre-existing address removed: {addrs}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_missing_interface_is_a_clear_error() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vipd.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"web\"\nvip = \"10.77.0.1\"\nports = [{ port = 8000 }]\n\
         endpoints = [\"127.0.0.1:9\"]\nmanage_vip = true\nvip_interface = \"nope0\"\n",
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, VIPD, "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vip_interface \"nope0\" does not exist"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn gratuitous_arp_is_seen_on_the_veth_peer() {
    let ns = Netns::new();
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["link", "set", "veth0", "up"]);
    ns.ip(&["link", "set", "veth1", "up"]);

    // Capture every frame arriving on veth1, opened before vipd starts.
    let capture = ns.run(|| {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .unwrap();
        let link = getifaddrs()
            .unwrap()
            .find_map(|a| {
                (a.interface_name == "veth1")
                    .then(|| a.address.and_then(|s| s.as_link_addr().copied()))
                    .flatten()
            })
            .expect("veth1 link address");
        bind(fd.as_raw_fd(), &link).unwrap();
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )
        .unwrap();
        fd
    });
    let seen = std::thread::spawn(move || {
        let deadline = Instant::now() + GUARD;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok(n) = recv(capture.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            // Ethertype ARP, sender and target protocol address both the VIP.
            if n >= 42
                && buf[12..14] == [0x08, 0x06]
                && buf[28..32] == [10, 77, 1, 1]
                && buf[38..42] == [10, 77, 1, 1]
            {
                return true;
            }
        }
        false
    });

    let dir = tempfile::tempdir().unwrap();
    let vipd = ns.vipd(
        dir.path(),
        "[[service]]\nname = \"web\"\nvip = \"10.77.1.1\"\nports = [{ port = 8000 }]\n\
         endpoints = [\"127.0.0.1:9\"]\nmanage_vip = true\nvip_interface = \"veth0\"\n\
         [service.health]\ncheck = \"none\"\n",
    );
    assert!(
        seen.join().unwrap(),
        "no gratuitous ARP for 10.77.1.1 on veth1"
    );
    stop(vipd);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn without_cap_net_admin_the_error_names_the_capability() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vipd.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"web\"\nvip = \"10.77.0.2\"\nports = [{ port = 8000 }]\n\
         endpoints = [\"127.0.0.1:9\"]\nmanage_vip = true\n",
    )
    .unwrap();
    // Root, but with CAP_NET_ADMIN dropped from every set before vipd starts.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
        ])
        .args([VIPD, "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert!(!ns.addresses("lo").contains("10.77.0.2"));
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_removed_service_keeps_its_vip_until_its_connections_end() {
    let ns = Netns::new();
    // An echo backend inside the namespace.
    let backend = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in backend.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let service = |name: &str, vip: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nports = [{{ port = 8000 }}]\n\
             endpoints = [\"{backend_addr}\"]\nmanage_vip = true\ndrain_timeout = \"1h\"\n\
             [service.health]\ncheck = \"none\"\n"
        )
    };
    let mut vipd = ns.vipd(
        dir.path(),
        &(service("stays", "10.77.0.3") + &service("goes", "10.77.0.4")),
    );
    // A connection through the VIP that outlives the service's removal.
    let echo = |stream: &mut TcpStream, text: &[u8]| {
        stream.write_all(text).unwrap();
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, text);
    };
    let mut established = ns.run(move || {
        let stream = TcpStream::connect_timeout(
            &("10.77.0.4".parse::<IpAddr>().unwrap(), 8000).into(),
            GUARD,
        )
        .expect("connect to VIP");
        stream.set_read_timeout(Some(GUARD)).unwrap();
        stream
    });
    echo(&mut established, b"before");

    std::fs::write(dir.path().join("vipd.toml"), service("stays", "10.77.0.3")).unwrap();
    vipd.signal(Signal::HUP);
    vipd.wait_for("config reloaded");
    // The removed service's VIP stays while its connection lives, and the connection works.
    assert!(ns.addresses("lo").contains("10.77.0.4/32"));
    echo(&mut established, b"after the reload");

    drop(established);
    // Once the connection is gone the VIP goes too: vipd logs the removal after the kernel
    // confirmed it.
    vipd.wait_for("vip: removed");
    let addresses = ns.addresses("lo");
    assert!(
        !addresses.contains("10.77.0.4/32"),
        "VIP of the removed service kept: {addresses}"
    );
    assert!(addresses.contains("10.77.0.3/32"));
    stop(vipd);
}
