//! Endpoint discovery: follows a service's DNS records and hands each new whole endpoint set to
//! the service's owner task over a `watch` channel.
//!
//! [`run`] is the loop: look up ([`dns`]), send the set if it changed, wait for the answer's TTL
//! (kept between `min_refresh` and `max_refresh`), repeat. A failed lookup keeps the last set and
//! is retried with a backoff. The waiting rules are pure functions ([`refresh_delay`],
//! [`Backoff`]) so they are tested without a clock.

pub mod dns;
#[cfg(test)]
mod test_dns;

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Discovery, DiscoverySource, EndpointSpec};
use crate::metrics as names;

use self::dns::{Answer, DnsResolver};

/// Runs discovery for one service until `shutdown`: sends each new whole endpoint set on
/// `updates` (only when it changed). Empty answers / NXDOMAIN are applied (an empty set is sent:
/// scale to zero is real). Failures (timeout, SERVFAIL, REFUSED, network error) keep the last
/// good set, are counted (`vipd_discovery_refreshes_total{service,result="failure"}`; a
/// successful lookup counts as `result="success"`) and logged, and retried after `min_refresh`,
/// doubling per further failure up to `max_refresh`.
///
/// `None` in the channel means nothing was resolved yet. The loop also ends when every receiver
/// of `updates` is gone.
pub async fn run(
    service: String,
    discovery: Discovery,
    updates: watch::Sender<Option<Vec<EndpointSpec>>>,
    shutdown: CancellationToken,
) {
    let labels =
        |result: &'static str| [("service", service.clone()), ("result", result.to_owned())];
    let successes = metrics::counter!(names::DISCOVERY_REFRESHES_TOTAL, &labels("success"));
    let failures = metrics::counter!(names::DISCOVERY_REFRESHES_TOTAL, &labels("failure"));
    let name = match &discovery.source {
        DiscoverySource::Dns(name) | DiscoverySource::Srv(name) => name.as_str(),
    };
    let mut backoff = Backoff::new(discovery.min_refresh, discovery.max_refresh);
    // Built on first use, and again after a failure to build (e.g. resolv.conf not there yet).
    let mut resolver: Option<DnsResolver> = None;

    loop {
        let lookup = async {
            let resolver = match &resolver {
                Some(r) => r,
                None => resolver.insert(DnsResolver::new(&discovery.nameservers)?),
            };
            resolver.resolve(&discovery.source).await
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            () = updates.closed() => return,
            result = lookup => result,
        };
        let wait = match result {
            Ok(Answer { endpoints, ttl }) => {
                successes.increment(1);
                backoff.reset();
                let wait = refresh_delay(ttl, discovery.min_refresh, discovery.max_refresh);
                let count = endpoints.len();
                let mut change = None;
                updates.send_if_modified(|current| {
                    let previous = current.as_deref().unwrap_or_default();
                    if current.is_some() && previous == endpoints.as_slice() {
                        return false;
                    }
                    change = Some(Change::between(previous, &endpoints));
                    *current = Some(endpoints);
                    true
                });
                match change {
                    Some(Change { added, removed }) => tracing::info!(
                        service = %service,
                        name,
                        endpoints = count,
                        added = %added,
                        removed = %removed,
                        next_refresh = ?wait,
                        "discovery: endpoint set changed"
                    ),
                    None => tracing::debug!(
                        service = %service,
                        name,
                        endpoints = count,
                        next_refresh = ?wait,
                        "discovery: endpoint set unchanged"
                    ),
                }
                wait
            }
            Err(error) => {
                failures.increment(1);
                let wait = backoff.next_delay();
                tracing::warn!(
                    service = %service,
                    name,
                    %error,
                    retry_in = ?wait,
                    "discovery: lookup failed; keeping the last endpoint set"
                );
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = updates.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a new endpoint set adds and removes, as log text (`10.0.0.1, [::1]:9001`).
struct Change {
    added: String,
    removed: String,
}

impl Change {
    /// Only computed when the set changed, so the quadratic scan costs nothing per refresh.
    fn between(old: &[EndpointSpec], new: &[EndpointSpec]) -> Change {
        let list = |from: &[EndpointSpec], without: &[EndpointSpec]| {
            from.iter()
                .filter(|e| !without.contains(e))
                .map(|e| match e.port {
                    Some(port) => std::net::SocketAddr::new(e.ip, port).to_string(),
                    None => e.ip.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Change {
            added: list(new, old),
            removed: list(old, new),
        }
    }
}

/// How long an answer is kept: its TTL within `[min, max]`, or `min` when it carried none.
pub fn refresh_delay(ttl: Option<Duration>, min: Duration, max: Duration) -> Duration {
    ttl.unwrap_or(min).clamp(min, max.max(min))
}

/// Waits between retries of a failing lookup: `min`, doubling each time, never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next retry; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn refresh_delay_clamps_the_ttl() {
        // (ttl, min, max, want)
        let cases = [
            (Some(s(5)), s(1), s(30), s(5)),
            (Some(s(0)), s(1), s(30), s(1)),
            (Some(s(300)), s(1), s(30), s(30)),
            (Some(s(1)), s(1), s(30), s(1)),
            (Some(s(30)), s(1), s(30), s(30)),
            (None, s(2), s(30), s(2)),
            (Some(s(7)), s(7), s(7), s(7)),
        ];
        for (ttl, min, max, want) in cases {
            assert_eq!(
                refresh_delay(ttl, min, max),
                want,
                "{ttl:?} in [{min:?}, {max:?}]"
            );
        }
    }

    #[test]
    fn change_lists_added_and_removed_endpoints() {
        let ep = |ip: &str, port: Option<u16>| EndpointSpec::new(ip.parse().unwrap(), port);
        let old = [ep("10.0.0.1", None), ep("10.0.0.2", None)];
        let new = [ep("10.0.0.2", None), ep("::1", None)];
        let change = Change::between(&old, &new);
        assert_eq!(
            (change.added.as_str(), change.removed.as_str()),
            ("::1", "10.0.0.1")
        );
        let change = Change::between(&[], &[ep("::1", Some(9001)), ep("10.0.0.1", Some(80))]);
        assert_eq!(change.added, "[::1]:9001, 10.0.0.1:80");
        assert_eq!(change.removed, "");
    }

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut backoff = Backoff::new(s(1), s(10));
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(8), s(10), s(10)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), s(1));
        assert_eq!(backoff.next_delay(), s(2));
    }
}

/// [`run`] against a real DNS server on loopback whose records the tests change. Time is paused
/// (the server runs in the same runtime, and loopback datagrams are delivered before the
/// runtime idles, so the paused clock only jumps while everyone waits on a timer): TTLs and
/// backoff are checked to the second without waiting for them.
#[cfg(test)]
mod run_tests {
    use std::net::IpAddr;

    use hickory_resolver::proto::rr::RecordType;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::test_dns::{Mode, TestDns};
    use super::*;

    /// Failure guard for awaited events (virtual time, so it costs nothing when all is well).
    const GUARD: Duration = Duration::from_secs(600);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Endpoints without port, as `Dns` discovery sends them, sorted like `run` sorts them.
    fn plain(ips: &[&str]) -> Vec<EndpointSpec> {
        let mut v: Vec<EndpointSpec> = ips.iter().map(|t| EndpointSpec::new(ip(t), None)).collect();
        v.sort_by_key(|e| (e.ip, e.port));
        v
    }

    struct Discovering {
        updates: watch::Receiver<Option<Vec<EndpointSpec>>>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Discovering {
        fn start(
            service: &str,
            dns: &TestDns,
            source: DiscoverySource,
            min: u64,
            max: u64,
        ) -> Self {
            let discovery = Discovery {
                source,
                nameservers: vec![dns.addr()],
                min_refresh: s(min),
                max_refresh: s(max),
            };
            // Before `run` takes its counter handles, or they would go to the no-op recorder.
            crate::metrics::install();
            let (tx, updates) = watch::channel(None);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run(service.to_owned(), discovery, tx, shutdown.clone()));
            Discovering {
                updates,
                shutdown,
                task,
            }
        }

        /// The next endpoint set sent.
        async fn next(&mut self) -> Vec<EndpointSpec> {
            tokio::time::timeout(GUARD, self.updates.changed())
                .await
                .expect("an update within the guard time")
                .expect("discovery still running");
            self.updates
                .borrow_and_update()
                .clone()
                .expect("a sent set is never None")
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(GUARD, self.task)
                .await
                .expect("run returns once cancelled")
                .expect("run does not panic");
        }
    }

    /// `vipd_discovery_refreshes_total{service,result}` as rendered for `/metrics`.
    fn refreshes(service: &str, result: &str) -> u64 {
        let line = format!(
            "{}{{service=\"{service}\",result=\"{result}\"}} ",
            names::DISCOVERY_REFRESHES_TOTAL
        );
        crate::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |v| v.parse().expect("a counter value"))
    }

    /// The distinct times at which `name` was asked (a lookup asks A and AAAA at one instant).
    fn lookup_times(dns: &TestDns, name: &str) -> Vec<Instant> {
        let name = format!("{name}.");
        let mut times: Vec<Instant> = dns
            .queries()
            .iter()
            .filter(|q| q.name.to_string() == name)
            .map(|q| q.at)
            .collect();
        times.dedup();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn follows_scale_up_and_down() {
        let dns = TestDns::start().await;
        let name = "web.test";
        dns.set_addresses(name, 1, &[ip("10.0.0.1"), ip("10.0.0.2")]);
        let mut d =
            Discovering::start("disc-scale", &dns, DiscoverySource::Dns(name.into()), 1, 30);

        assert_eq!(d.next().await, plain(&["10.0.0.1", "10.0.0.2"]));
        let mut asked: Vec<RecordType> = dns.queries().iter().map(|q| q.record_type).collect();
        asked.sort();
        assert_eq!(
            asked,
            [RecordType::A, RecordType::AAAA],
            "one lookup asks A and AAAA"
        );
        dns.set_addresses(name, 1, &[ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::3")]);
        assert_eq!(d.next().await, plain(&["10.0.0.1", "10.0.0.2", "fd00::3"]));
        dns.set_addresses(name, 1, &[ip("10.0.0.2")]);
        assert_eq!(d.next().await, plain(&["10.0.0.2"]));
        d.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_answers_send_nothing() {
        let dns = TestDns::start().await;
        let name = "same.test";
        dns.set_addresses(name, 1, &[ip("10.0.0.1")]);
        let mut d = Discovering::start("disc-same", &dns, DiscoverySource::Dns(name.into()), 1, 30);
        assert_eq!(d.next().await, plain(&["10.0.0.1"]));
        let before = refreshes("disc-same", "success");
        // Ten more lookups of the same answer (TTL 1s)...
        tokio::time::sleep(s(10) + Duration::from_millis(500)).await;
        assert_eq!(refreshes("disc-same", "success"), before + 10);
        // ...and not one update.
        assert!(!d.updates.has_changed().unwrap());
        d.stop().await;
    }

    /// The TTL decides when the name is asked again: never earlier than the TTL (or the floor
    /// when the TTL is below it), never later than the ceiling, and a change is seen then.
    #[tokio::test(start_paused = true)]
    async fn ttl_sets_the_next_lookup_within_floor_and_ceiling() {
        // (record TTL, min_refresh, max_refresh, expected gap between lookups)
        let cases = [(5, 1, 30, 5), (0, 2, 30, 2), (1, 3, 30, 3), (3600, 1, 4, 4)];
        for (i, (ttl, min, max, gap)) in cases.into_iter().enumerate() {
            let dns = TestDns::start().await;
            let name = format!("ttl{i}.test");
            dns.set_addresses(&name, ttl, &[ip("10.0.0.1")]);
            let service = format!("disc-ttl{i}");
            let mut d =
                Discovering::start(&service, &dns, DiscoverySource::Dns(name.clone()), min, max);
            assert_eq!(d.next().await, plain(&["10.0.0.1"]));
            let first = Instant::now();
            assert_eq!(lookup_times(&dns, &name), [first], "one lookup so far");

            dns.set_addresses(&name, ttl, &[ip("10.0.0.2")]);
            assert_eq!(d.next().await, plain(&["10.0.0.2"]));
            let times = lookup_times(&dns, &name);
            assert_eq!(
                times.len(),
                2,
                "case {i}: exactly one more lookup: {times:?}"
            );
            assert_eq!(
                times[1] - first,
                s(gap),
                "case {i}: ttl {ttl} in [{min}, {max}]"
            );
            d.stop().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nxdomain_and_empty_answers_are_applied() {
        let dns = TestDns::start().await;
        let name = "empty.test";
        // Nothing there yet: NXDOMAIN is an answer, the empty set (not "unresolved").
        let mut d =
            Discovering::start("disc-empty", &dns, DiscoverySource::Dns(name.into()), 1, 30);
        assert_eq!(d.next().await, plain(&[]));

        dns.set_addresses(name, 1, &[ip("10.0.0.1")]);
        assert_eq!(d.next().await, plain(&["10.0.0.1"]));

        // Scaled to zero: NXDOMAIN with an SOA whose negative TTL is 3s.
        dns.set_negative_ttl(Some(3));
        dns.set_addresses(name, 1, &[]);
        assert_eq!(d.next().await, plain(&[]));
        let emptied = Instant::now();
        dns.set_addresses(name, 1, &[ip("10.0.0.2")]);
        assert_eq!(d.next().await, plain(&["10.0.0.2"]));
        assert_eq!(Instant::now() - emptied, s(3), "negative TTL from the SOA");

        // NODATA (the name has records, but no A/AAAA) without SOA: empty, asked again after
        // min_refresh.
        dns.set_negative_ttl(None);
        dns.set_addresses(name, 1, &[]);
        dns.set_srv(name, 1, &[(80, "other.test")]);
        assert_eq!(d.next().await, plain(&[]));
        let emptied = Instant::now();
        dns.set_addresses(name, 1, &[ip("10.0.0.3")]);
        assert_eq!(d.next().await, plain(&["10.0.0.3"]));
        assert_eq!(Instant::now() - emptied, s(1), "min_refresh without an SOA");
        d.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn outage_keeps_the_last_set_and_recovery_resumes() {
        let dns = TestDns::start().await;
        let name = "outage.test";
        let service = "disc-outage";
        dns.set_addresses(name, 1, &[ip("10.0.0.1"), ip("10.0.0.2")]);
        let mut d = Discovering::start(service, &dns, DiscoverySource::Dns(name.into()), 1, 4);
        assert_eq!(d.next().await, plain(&["10.0.0.1", "10.0.0.2"]));
        let last_success = Instant::now();

        // Records change while the server fails: the change must not leak through a failure.
        dns.set_addresses(name, 1, &[ip("10.0.0.3")]);
        dns.set_mode(Mode::ServFail);
        tokio::time::sleep(s(19)).await;
        // Retried after the TTL, then after min_refresh doubling up to max_refresh (4s).
        let retries: Vec<Duration> = lookup_times(&dns, name)
            .into_iter()
            .map(|t| t - last_success)
            .collect();
        assert_eq!(retries, [s(0), s(1), s(2), s(4), s(8), s(12), s(16)]);
        assert_eq!(refreshes(service, "failure"), 6);
        assert!(
            !d.updates.has_changed().unwrap(),
            "SERVFAIL kept the last set"
        );

        for mode in [Mode::Refused, Mode::Silent] {
            let failures = refreshes(service, "failure");
            dns.set_mode(mode);
            // Past the resolver's own timeouts and retries, and a few backoff steps.
            tokio::time::sleep(s(60)).await;
            assert!(
                refreshes(service, "failure") > failures,
                "{mode:?} counted as a failure"
            );
            assert!(
                !d.updates.has_changed().unwrap(),
                "{mode:?} kept the last set"
            );
        }
        assert_eq!(
            *d.updates.borrow(),
            Some(plain(&["10.0.0.1", "10.0.0.2"])),
            "the last good set is still current"
        );

        dns.set_mode(Mode::Answer);
        assert_eq!(d.next().await, plain(&["10.0.0.3"]));
        d.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn srv_records_give_ports_and_their_targets_are_resolved() {
        let dns = TestDns::start().await;
        let srv = "_http._tcp.web.test";
        dns.set_srv(
            srv,
            30,
            &[
                (9001, "a.web.test"),
                (9002, "b.web.test"),
                (9001, "b.web.test"),
                (9009, "gone.web.test"),
                // RFC 2782: "." = no service at this record.
                (9010, "."),
            ],
        );
        dns.set_addresses("a.web.test", 2, &[ip("127.0.0.1"), ip("::1")]);
        dns.set_addresses("b.web.test", 30, &[ip("127.0.0.2")]);
        let mut d = Discovering::start("disc-srv", &dns, DiscoverySource::Srv(srv.into()), 1, 30);

        // Each endpoint is named after the first label of its record's target.
        let with_port = |pairs: &[(&str, u16)]| -> Vec<EndpointSpec> {
            let mut v: Vec<EndpointSpec> = pairs
                .iter()
                .map(|&(t, port)| EndpointSpec {
                    name: Some(
                        if t == "127.0.0.1" || t == "::1" {
                            "a"
                        } else {
                            "b"
                        }
                        .to_owned(),
                    ),
                    ..EndpointSpec::new(ip(t), Some(port))
                })
                .collect();
            v.sort_by_key(|e| (e.ip, e.port));
            v
        };
        assert_eq!(
            d.next().await,
            with_port(&[
                ("127.0.0.1", 9001),
                ("127.0.0.2", 9001),
                ("127.0.0.2", 9002),
                ("::1", 9001),
            ])
        );
        let first = Instant::now();

        // A target's address changes; the shortest TTL (a.web.test's 2s) sets the next lookup.
        dns.set_addresses("b.web.test", 30, &[ip("127.0.0.3")]);
        assert_eq!(
            d.next().await,
            with_port(&[
                ("127.0.0.1", 9001),
                ("127.0.0.3", 9001),
                ("127.0.0.3", 9002),
                ("::1", 9001),
            ])
        );
        assert_eq!(Instant::now() - first, s(2));

        // The SRV set shrinks.
        dns.set_srv(srv, 30, &[(9002, "b.web.test")]);
        assert_eq!(d.next().await, with_port(&[("127.0.0.3", 9002)]));
        d.stop().await;
    }

    /// RFC 2782: the lowest priority present is the primary tier, the others are backups; the
    /// record's weight is the endpoint's (0 → 1, capped at 1000).
    #[tokio::test(start_paused = true)]
    async fn srv_priority_is_the_tier_and_weight_the_weight() {
        let dns = TestDns::start().await;
        let srv = "_pg._tcp.db.test";
        dns.set_srv_records(
            srv,
            30,
            &[
                (10, 3, 5432, "a.db.test"),
                (10, 0, 5432, "b.db.test"),
                (20, 60000, 5432, "c.db.test"),
                // Named twice: the primary record wins.
                (30, 5, 5432, "a.db.test"),
            ],
        );
        dns.set_addresses("a.db.test", 30, &[ip("127.0.0.1")]);
        dns.set_addresses("b.db.test", 30, &[ip("127.0.0.2")]);
        dns.set_addresses("c.db.test", 30, &[ip("127.0.0.3")]);
        let mut d = Discovering::start(
            "disc-srv-tiers",
            &dns,
            DiscoverySource::Srv(srv.into()),
            1,
            30,
        );
        let got: Vec<(String, u32, bool, Option<String>)> = d
            .next()
            .await
            .iter()
            .map(|e| (e.ip.to_string(), e.weight, e.backup, e.name.clone()))
            .collect();
        let name = |n: &str| Some(n.to_owned());
        assert_eq!(
            got,
            vec![
                ("127.0.0.1".to_owned(), 3, false, name("a")),
                ("127.0.0.2".to_owned(), 1, false, name("b")),
                ("127.0.0.3".to_owned(), 1000, true, name("c")),
            ]
        );
        d.stop().await;
    }

    /// A set too large for one UDP answer arrives whole: the truncated UDP answer is retried
    /// over TCP.
    #[tokio::test(start_paused = true)]
    async fn large_sets_fall_back_to_tcp() {
        let dns = TestDns::start().await;
        let name = "big.test";
        let ips: Vec<IpAddr> = (1..=200)
            .map(|n| IpAddr::from([10, 0, n / 100, n % 100 + 1]))
            .collect();
        dns.set_addresses(name, 30, &ips);
        let mut d = Discovering::start("disc-big", &dns, DiscoverySource::Dns(name.into()), 1, 30);
        let mut want: Vec<String> = ips.iter().map(ToString::to_string).collect();
        want.sort();
        let mut got: Vec<String> = d.next().await.iter().map(|e| e.ip.to_string()).collect();
        got.sort();
        assert_eq!(got, want);
        assert!(
            dns.queries().iter().any(|q| q.over_tcp),
            "the answer came over TCP: {:?}",
            dns.queries()
        );
        d.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_every_receiver_is_gone() {
        let dns = TestDns::start().await;
        dns.set_addresses("gone.test", 1, &[ip("10.0.0.1")]);
        let mut d = Discovering::start(
            "disc-gone",
            &dns,
            DiscoverySource::Dns("gone.test".into()),
            1,
            30,
        );
        assert_eq!(d.next().await, plain(&["10.0.0.1"]));
        drop(d.updates);
        tokio::time::timeout(GUARD, d.task)
            .await
            .expect("run returns once nobody listens")
            .expect("run does not panic");
    }
}
