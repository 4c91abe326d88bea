#!/usr/bin/env python3
"""Turns run.sh's raw results (TSV: run, target, metric, value) into a markdown table of
medians, one column per target."""
import os
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "vipd", "vipd-no-half-close", "haproxy", "haproxy-splice", "nginx",
           "nginx-half-close"]
HEADERS = {
    "direct": "direct",
    "vipd": "vipd",
    "haproxy": "HAProxy tcp",
    "haproxy-splice": "HAProxy + splice-auto",
    "nginx": "nginx stream",
    "vipd-no-half-close": "vipd, half_close = false",
    "nginx-half-close": "nginx stream, proxy_half_close on",
}
# Requests per redis-benchmark test, when run.sh passes them.
REDIS_N = {p: (f", {int(os.environ[f'REDIS_N_P{p}']):,} each" if os.environ.get(f"REDIS_N_P{p}") else "")
           for p in ("1", "16")}
ROWS = [
    ("bulk1_gbps", "bulk, iperf3 1 stream, Gbit/s", 2),
    ("bulk1_cpu_s_per_gb", "bulk 1 stream, proxy CPU-s per GB", 3),
    ("bulk8_gbps", "bulk, iperf3 8 streams, Gbit/s", 2),
    ("bulk8_cpu_s_per_gb", "bulk 8 streams, proxy CPU-s per GB", 3),
    ("rr_rps", "rr (wrk, keep-alive, 50 conns), requests/s", 0),
    ("rr_p50_ms", "rr latency p50, ms", 3),
    ("rr_p99_ms", "rr latency p99, ms", 3),
    ("rr_cpu_us_per_req", "rr, proxy CPU-µs per request", 1),
    ("crr_rps", "crr (wrk, `Connection: close`), requests/s", 0),
    ("crr_p50_ms", "crr latency p50, ms", 3),
    ("crr_p99_ms", "crr latency p99, ms", 3),
    ("crr_cpu_us_per_req", "crr, proxy CPU-µs per request", 1),
    ("udp_qps", "udp (dnsperf → 3 nsd), queries/s", 0),
    ("udp_lost", "udp, queries lost", 0),
    ("udp_cpu_us_per_query", "udp, proxy CPU-µs per query", 2),
    ("udp_bulk_dgrams_per_s", "udp bulk (iperf3 -u, 8 flows, 1,400-byte datagrams), datagrams/s received", 0),
    ("udp_bulk_lost", "udp bulk, datagrams lost", 0),
    ("udp_bulk_cpu_us_per_dgram", "udp bulk, proxy CPU-µs per datagram received", 2),
    ("redis_p1_rps", f"redis (redis-benchmark -c 50 -P 1, SET and GET{REDIS_N['1']}), requests/s (harmonic mean of SET's and GET's)", 0),
    ("redis_p1_cpu_us_per_req", "redis -P 1, proxy CPU-µs per request", 2),
    ("redis_p16_rps", f"redis (redis-benchmark -c 50 -P 16, SET and GET{REDIS_N['16']}), requests/s (harmonic mean of SET's and GET's)", 0),
    ("redis_p16_cpu_us_per_req", "redis -P 16, proxy CPU-µs per request", 3),
    ("pgbench_tps", "pgbench -S (16 clients, 2 threads), transactions/s", 0),
    ("pgbench_cpu_us_per_tx", "pgbench -S, proxy CPU-µs per transaction", 1),
    ("pgbench_failed", "pgbench -S, failed transactions + aborted clients", 0),
    ("pgbench_c_tps", "pgbench -S -C (new connection per transaction), transactions/s", 0),
    ("pgbench_c_cpu_us_per_tx", "pgbench -S -C, proxy CPU-µs per transaction", 1),
    ("pgbench_c_failed", "pgbench -S -C, failed transactions + aborted clients", 0),
    ("idle_kib_per_conn", f"idle: RSS per connection, KiB ({os.environ.get('IDLE_CONNS', '5000')} idle connections)", 2),
]

values = defaultdict(list)
runs = set()
with open(sys.argv[1]) as f:
    for line in f:
        run, target, metric, value = line.split("\t")
        runs.add(run)
        values[(target, metric)].append(float(value))

# Only the targets that ran.
TARGETS = [t for t in TARGETS if any(target == t for target, _ in values)]

print(f"Medians of {len(runs)} rounds.\n")
print("| figure | " + " | ".join(HEADERS[t] for t in TARGETS) + " |")
print("|---|" + "---|" * len(TARGETS))
for metric, label, digits in ROWS:
    cells = []
    for target in TARGETS:
        got = values.get((target, metric))
        cells.append(f"{statistics.median(got):.{digits}f}" if got else "—")
    print(f"| {label} | " + " | ".join(cells) + " |")
