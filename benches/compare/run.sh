#!/usr/bin/env bash
# End-to-end comparison: direct vs vipd vs HAProxy (tcp, and tcp + splice-auto) vs nginx stream,
# each proxy with 2 worker threads, round robin over the same 3 loopback backends, health checks
# on where the proxy has them. Workloads: bulk (iperf3, 1 and 8 streams, through a one-backend
# service), rr and crr (wrk against nginx backends), idle (N idle connections, RSS per
# connection), udp (dnsperf through the proxy to three nsd servers), udp-bulk (iperf3 -u: 8 flows
# of 1,400-byte datagrams at full rate through a one-backend service, its control connection
# through the bulk service; datagrams received per second, lost, proxy CPU per datagram),
# redis (redis-benchmark SET and GET, 50 connections, pipelines of 1 and 16, through a service
# over three redis-servers), pgbench (pgbench -S, 16 clients, one connection each for the run
# and a new connection per transaction with -C, through a one-endpoint service to one
# PostgreSQL). HAProxy has no UDP, so only direct, vipd and nginx run udp and udp-bulk. Proxy CPU is
# utime+stime of the proxy's processes from /proc/PID/stat, before and after each workload.
# Every proxy runs throughout, and the timed workloads are interleaved in rounds whose target
# order rotates. Prints a markdown table of medians over RUNS rounds.
#
# Usage (as root, from anywhere): benches/compare/run.sh
# Environment: RUNS rounds (5), DURATION seconds per timed workload (3), IDLE_CONNS (5000),
#              TARGETS (subset of "direct vipd haproxy haproxy-splice nginx", or the variants
#              "vipd-no-half-close" and "nginx-half-close", not in the default set),
#              WORKLOADS (subset of "idle bulk rr crr udp udp-bulk redis pgbench"),
#              VIPD (path to a vipd binary; default: cargo build --release),
#              REDIS_N_P1, REDIS_N_P16 (requests per redis-benchmark test; default: calibrated
#              on direct so that SET and GET together take about DURATION seconds).
# Loopback only: backends on 127.0.0.71-73, proxies on 127.0.0.81-86. Every process it starts
# is stopped by its PID on exit. Takes about 13 minutes with the defaults (redis about 4.5 and
# pgbench about 3 of them; a vipd build not included).
set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-3}
IDLE_CONNS=${IDLE_CONNS:-5000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/vipd-compare.XXXXXX)
RESULTS=$WORK/results.tsv
: >"$RESULTS"

BACKENDS=(127.0.0.71 127.0.0.72 127.0.0.73)
HTTP_PORT=8080
BULK_PORT=5201
DNS_PORT=5353
REDIS_PORT=6379
PG_PORT=5432
# One PostgreSQL, on the first backend address.
PG_IP=${BACKENDS[0]}
declare -A PROXY_IP=([direct]=127.0.0.71 [vipd]=127.0.0.81 [haproxy]=127.0.0.82
  [haproxy-splice]=127.0.0.83 [nginx]=127.0.0.84 [nginx-half-close]=127.0.0.85
  [vipd-no-half-close]=127.0.0.86)
read -r -a TARGETS <<<"${TARGETS:-direct vipd haproxy haproxy-splice nginx}"
read -r -a WORKLOADS <<<"${WORKLOADS:-idle bulk rr crr udp udp-bulk redis pgbench}"
wants() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }

log() { echo "[$(date +%T)] $*" >&2; }

# --- tools -------------------------------------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v wrk >/dev/null || missing+=(wrk)
command -v python3 >/dev/null || missing+=(python3)
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v nsd >/dev/null || missing+=(nsd)
# redis and pgbench only when asked for: PostgreSQL is a large package.
if wants redis; then
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-benchmark >/dev/null || missing+=(redis-tools)
fi
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if wants pgbench; then
  PG_BIN=$(pg_bin)
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/pgbench" ] || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
wants pgbench && PG_BIN=$(pg_bin)
if [ -z "${VIPD:-}" ]; then
  log "building vipd (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin vipd)
  VIPD=${CARGO_TARGET_DIR:-$ROOT/target}/release/vipd
fi

# 5000 idle connections need ~10000 descriptors in a proxy and 5000 in the client.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((2 * IDLE_CONNS + 1000)) ] || {
  echo "ulimit -n $(ulimit -n) is too low for $IDLE_CONNS connections" >&2
  exit 1
}

# --- process bookkeeping: everything started is stopped by PID --------------------------
PIDS=()
PG_PID=
# Stops one process started here and forgets it, so a recycled PID is never signalled later.
# PostgreSQL's postmaster gets SIGINT (fast shutdown: it ends its backends itself; SIGTERM
# would wait for clients to leave, and a SIGKILL would leave its backends behind).
stop_pid() {
  local pid=$1 sig=TERM
  [ "$pid" = "$PG_PID" ] && sig=INT
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT

# Waits until something listens on IP:PORT (checked with ss: no connection is made).
wait_listening() {
  for _ in $(seq 100); do
    ss -Hltn "sport = :$2" | grep -q "$1:$2" && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2" >&2
  return 1
}

# Waits until a UDP socket is bound to IP:PORT.
wait_udp() {
  for _ in $(seq 100); do
    ss -Hlun "sport = :$2" | grep -q "$1:$2" && return 0
    sleep 0.1
  done
  echo "nothing receives on udp $1:$2" >&2
  return 1
}

# The proxy's processes: the PID and its children (nginx workers).
proxy_pids() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }
# utime+stime in clock ticks, summed over the proxy's processes (fields after the comm).
cpu_ticks() {
  local total=0 pid stat
  for pid in $(proxy_pids "$1"); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    set -- $stat
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
rss_kib() {
  local total=0 pid
  for pid in $(proxy_pids "$1"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
TICKS=$(getconf CLK_TCK)
record() { printf '%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" >>"$RESULTS"; }

# --- backends: one nginx serving 3 addresses, one iperf3 server --------------------------
for ip in "${BACKENDS[@]}"; do
  if ss -Hltn "sport = :$HTTP_PORT" | grep -q "$ip:$HTTP_PORT"; then
    echo "$ip:$HTTP_PORT is already in use by another process" >&2
    exit 1
  fi
done
mkdir -p "$WORK/backend"
{
  echo "worker_processes 1; worker_rlimit_nofile 20000; pid $WORK/backend/nginx.pid;"
  echo "events { worker_connections 19000; }"
  echo "http { access_log off; keepalive_requests 10000000;"
  echo "  client_body_temp_path $WORK/backend; proxy_temp_path $WORK/backend;"
  echo "  fastcgi_temp_path $WORK/backend; uwsgi_temp_path $WORK/backend; scgi_temp_path $WORK/backend;"
  echo "  server {"
  for ip in "${BACKENDS[@]}"; do echo "    listen $ip:$HTTP_PORT backlog=4096;"; done
  echo "    location / { return 200 \"hello\\n\"; } } }"
} >"$WORK/backend/nginx.conf"
nginx -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
iperf3 -s -B "${BACKENDS[0]}" -p "$BULK_PORT" >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
for ip in "${BACKENDS[@]}"; do wait_listening "$ip" "$HTTP_PORT"; done
wait_listening "${BACKENDS[0]}" "$BULK_PORT"

# Redis backends: one redis-server per backend address, no persistence.
if wants redis; then
  mkdir -p "$WORK/redis"
  for ip in "${BACKENDS[@]}"; do
    if ss -Hltn "sport = :$REDIS_PORT" | grep -q "$ip:$REDIS_PORT\|\*:$REDIS_PORT\|0.0.0.0:$REDIS_PORT"; then
      echo "$ip:$REDIS_PORT is already in use by another process" >&2
      exit 1
    fi
  done
  for ip in "${BACKENDS[@]}"; do
    n=${ip##*.}
    # Protected mode off: clients come from 127.0.0.x, not only 127.0.0.1 (all loopback).
    redis-server --bind "$ip" --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
      --protected-mode no --dir "$WORK/redis" --logfile "$WORK/redis/redis-$n.log" &
    PIDS+=($!)
  done
  for ip in "${BACKENDS[@]}"; do wait_listening "$ip" "$REDIS_PORT"; done
fi

# PostgreSQL backend: a throwaway cluster in $WORK, run as the postgres user (PostgreSQL
# refuses root), trust authentication for 127.0.0.0/8, pgbench's tables at scale 1.
if wants pgbench; then
  if ss -Hltn "sport = :$PG_PORT" | grep -q "$PG_IP:$PG_PORT\|\*:$PG_PORT\|0.0.0.0:$PG_PORT"; then
    echo "$PG_IP:$PG_PORT is already in use by another process" >&2
    exit 1
  fi
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups env -C "$WORK/pg" "$@"; }
  chmod o+x "$WORK"
  mkdir -p "$WORK/pg"
  chown postgres: "$WORK/pg"
  as_postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-locale \
    -E UTF8 >"$WORK/pg/initdb.log" 2>&1
  echo "host all all 127.0.0.0/8 trust" >>"$WORK/pg/data/pg_hba.conf"
  # fsync off: a throwaway cluster; the benchmark only reads. setpriv and env exec, so $! is
  # the postmaster itself (not a subshell, as a function run in the background would be).
  setpriv --reuid=postgres --regid=postgres --init-groups env -C "$WORK/pg" \
    "$PG_BIN/postgres" -D "$WORK/pg/data" -k "$WORK/pg" -p "$PG_PORT" \
    -c listen_addresses="$PG_IP" -c max_connections=200 -c fsync=off \
    >"$WORK/pg/postgres.log" 2>&1 &
  PG_PID=$!
  PIDS+=("$PG_PID")
  wait_listening "$PG_IP" "$PG_PORT"
  for _ in $(seq 100); do
    "$PG_BIN/pg_isready" -q -h "$PG_IP" -p "$PG_PORT" -U postgres && break
    sleep 0.1
  done
  "$PG_BIN/pgbench" -h "$PG_IP" -p "$PG_PORT" -U postgres -i -s 1 postgres \
    >"$WORK/pg/pgbench-init.log" 2>&1
fi

# DNS backends: one nsd per backend address (one server process each), an authoritative zone
# with the name dnsperf asks for.
if wants udp; then
  mkdir -p "$WORK/nsd"
  printf '%s\n' '$ORIGIN bench.test.' '$TTL 300' \
    '@ IN SOA ns hostmaster 1 3600 600 86400 300' '@ IN NS ns' 'ns IN A 127.0.0.71' \
    'www IN A 10.0.0.1' >"$WORK/nsd/bench.test.zone"
  for ip in "${BACKENDS[@]}"; do
    n=${ip##*.}
    cat >"$WORK/nsd/nsd-$n.conf" <<EOF
server:
  ip-address: $ip@$DNS_PORT
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$WORK/nsd"
  pidfile: "$WORK/nsd/nsd-$n.pid"
  database: ""
  zonelistfile: "$WORK/nsd/zone-$n.list"
  xfrdfile: "$WORK/nsd/xfrd-$n.state"
  xfrdir: "$WORK/nsd"
  verbosity: 0
  # Response rate limiting (on by default) would drop a benchmark's queries from one source.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: bench.test
  zonefile: bench.test.zone
EOF
    nsd -d -c "$WORK/nsd/nsd-$n.conf" >"$WORK/nsd/nsd-$n.log" 2>&1 &
    PIDS+=($!)
  done
  for ip in "${BACKENDS[@]}"; do wait_udp "$ip" "$DNS_PORT"; done
  for _ in $(seq 1000); do echo "www.bench.test A"; done >"$WORK/queries"
fi

# --- proxy configs -------------------------------------------------------------------------
write_configs() {
  local ip variant defaults
  # vipd as configured by default (half-close kept), and with half_close = false, which ends
  # a connection at its first end of stream as nginx stream does by default.
  for variant in vipd vipd-no-half-close; do
    ip=${PROXY_IP[$variant]}
    defaults=
    if [ "$variant" = vipd-no-half-close ]; then defaults=$'[defaults]\nhalf_close = false'; fi
    cat >"$WORK/$variant.toml" <<EOF
[runtime]
workers = 2

$defaults

[[service]]
name = "http"
vip = "$ip"
ports = [{ port = $HTTP_PORT }]
endpoints = [$(printf '"%s:'"$HTTP_PORT"'", ' "${BACKENDS[@]}" | sed 's/, $//')]
[service.health]
check = "tcp"
period = "1s"

[[service]]
name = "bulk"
vip = "$ip"
ports = [{ port = $BULK_PORT }]
endpoints = ["${BACKENDS[0]}:$BULK_PORT"]
[service.health]
check = "tcp"
port = $HTTP_PORT
period = "1s"

# iperf3 -u's datagrams; its TCP control connection goes through "bulk", to the same server.
# UDP ports are not probed, so no checks.
[[service]]
name = "bulk-udp"
vip = "$ip"
ports = [{ port = $BULK_PORT, protocol = "udp" }]
endpoints = ["${BACKENDS[0]}:$BULK_PORT"]

# No active checks, as nginx has none.
[[service]]
name = "dns"
vip = "$ip"
ports = [{ port = $DNS_PORT, protocol = "udp" }]
endpoints = [$(printf '"%s:'"$DNS_PORT"'", ' "${BACKENDS[@]}" | sed 's/, $//')]

[[service]]
name = "redis"
vip = "$ip"
ports = [{ port = $REDIS_PORT }]
endpoints = [$(printf '"%s:'"$REDIS_PORT"'", ' "${BACKENDS[@]}" | sed 's/, $//')]
[service.health]
check = "tcp"
period = "1s"

[[service]]
name = "postgres"
vip = "$ip"
ports = [{ port = $PG_PORT }]
endpoints = ["$PG_IP:$PG_PORT"]
[service.health]
check = "tcp"
period = "1s"
EOF
  done
  for variant in haproxy haproxy-splice; do
    ip=${PROXY_IP[$variant]}
    {
      echo "global"
      echo "  nbthread 2"
      # Two descriptors per connection plus pipes for splicing, within this shell's limit.
      echo "  maxconn $((($(ulimit -n) - 200) / 3))"
      echo "defaults"
      echo "  mode tcp"
      echo "  balance roundrobin"
      echo "  timeout connect 1s"
      echo "  timeout client 1h"
      echo "  timeout server 1h"
      [ "$variant" = haproxy-splice ] && echo "  option splice-auto"
      echo "frontend http_in"
      echo "  bind $ip:$HTTP_PORT"
      echo "  default_backend http"
      echo "backend http"
      local n=0
      for b in "${BACKENDS[@]}"; do
        n=$((n + 1))
        echo "  server b$n $b:$HTTP_PORT check inter 1s"
      done
      echo "frontend bulk_in"
      echo "  bind $ip:$BULK_PORT"
      echo "  default_backend bulk"
      echo "backend bulk"
      echo "  server b1 ${BACKENDS[0]}:$BULK_PORT check port $HTTP_PORT inter 1s"
      echo "frontend redis_in"
      echo "  bind $ip:$REDIS_PORT"
      echo "  default_backend redis"
      echo "backend redis"
      n=0
      for b in "${BACKENDS[@]}"; do
        n=$((n + 1))
        echo "  server r$n $b:$REDIS_PORT check inter 1s"
      done
      echo "frontend postgres_in"
      echo "  bind $ip:$PG_PORT"
      echo "  default_backend postgres"
      echo "backend postgres"
      echo "  server p1 $PG_IP:$PG_PORT check inter 1s"
    } >"$WORK/$variant.cfg"
  done
  # nginx stream as configured by default (a session ends at the first end of stream, either
  # way), and with proxy_half_close on, which keeps the other direction open as vipd does.
  for variant in nginx nginx-half-close; do
    ip=${PROXY_IP[$variant]}
    mkdir -p "$WORK/$variant"
    {
      echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
      echo "worker_processes 2; worker_rlimit_nofile 20000; pid $WORK/$variant/nginx.pid;"
      echo "events { worker_connections 19000; }"
      echo "stream {"
      [ "$variant" = nginx-half-close ] && echo "  proxy_half_close on;"
      echo "  upstream http {"
      for b in "${BACKENDS[@]}"; do echo "    server $b:$HTTP_PORT;"; done
      echo "  }"
      echo "  upstream bulk { server ${BACKENDS[0]}:$BULK_PORT; }"
      echo "  upstream redis {"
      for b in "${BACKENDS[@]}"; do echo "    server $b:$REDIS_PORT;"; done
      echo "  }"
      echo "  upstream postgres { server $PG_IP:$PG_PORT; }"
      echo "  server { listen $ip:$REDIS_PORT; proxy_pass redis; }"
      echo "  server { listen $ip:$PG_PORT; proxy_pass postgres; }"
      echo "  upstream dns {"
      for b in "${BACKENDS[@]}"; do echo "    server $b:$DNS_PORT;"; done
      echo "  }"
      echo "  server { listen $ip:$DNS_PORT udp reuseport; proxy_pass dns; proxy_responses 1; }"
      echo "  server { listen $ip:$HTTP_PORT backlog=4096; proxy_pass http; }"
      echo "  server { listen $ip:$BULK_PORT; proxy_pass bulk; }"
      # A one-way stream: proxy_responses left unset (no limit), so a session lasts until
      # proxy_timeout passes without a datagram (30 s, vipd's default udp_idle_timeout).
      # proxy_responses 0 would end the session after every datagram, each next one opening a
      # new upstream socket (and iperf3's server, connected to the first, would drop them).
      echo "  server { listen $ip:$BULK_PORT udp reuseport; proxy_pass bulk; proxy_timeout 30s; }"
      echo "}"
    } >"$WORK/$variant/nginx.conf"
  done
}
write_configs

# Starts the proxy for a target and sets PROXY_PID ("" for direct).
start_proxy() {
  PROXY_PID=
  case $1 in
    direct) return 0 ;;
    vipd | vipd-no-half-close) "$VIPD" run --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 & ;;
    haproxy | haproxy-splice) haproxy -db -f "$WORK/$1.cfg" >"$WORK/$1.log" 2>&1 & ;;
    nginx | nginx-half-close) nginx -p "$WORK/$1" -e "$WORK/$1/error.log" -c "$WORK/$1/nginx.conf" \
      -g 'daemon off;' >"$WORK/$1.log" 2>&1 & ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
}

# --- workloads -----------------------------------------------------------------------------
# bulk STREAMS: iperf3 client → proxy → iperf3 server.
bulk() {
  local target=$1 pid=$2 streams=$3 ip=${PROXY_IP[$1]} before after out
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(timeout $((DURATION + 20)) iperf3 -c "$ip" -p "$BULK_PORT" -t "$DURATION" -P "$streams" -J)
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  read -r bytes bps < <(python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum_received"]; print(int(s["bytes"]), s["bits_per_second"])' <<<"$out")
  record "$target" "bulk${streams}_gbps" "$(python3 -c "print($bps / 1e9)")"
  [ -n "$pid" ] && record "$target" "bulk${streams}_cpu_s_per_gb" \
    "$(python3 -c "print(($after - $before) / $TICKS / ($bytes / 1e9))")"
  return 0
}

# Latency in ms from a wrk figure such as 812.00us, 1.20ms, 1.01s.
to_ms() { python3 -c "
v='$1'
for unit, scale in (('us', 1e-3), ('ms', 1.0), ('s', 1e3)):
    if v.endswith(unit):
        print(float(v[:-len(unit)]) * scale); break"; }

# http NAME [wrk args]: wrk -t1 -c50 against the proxy's http port.
http() {
  local name=$1 target=$2 pid=$3; shift 3
  local ip=${PROXY_IP[$target]} before after out requests
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(timeout $((DURATION + 20)) wrk -t1 -c50 -d"${DURATION}s" --latency "$@" "http://$ip:$HTTP_PORT/")
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  record "$target" "${name}_rps" "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  record "$target" "${name}_p50_ms" "$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
  record "$target" "${name}_p99_ms" "$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  [ -n "$pid" ] && record "$target" "${name}_cpu_us_per_req" \
    "$(python3 -c "print(($after - $before) / $TICKS * 1e6 / $requests)")"
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    log "$target $name: $(grep "Non-2xx\|Socket errors" <<<"$out" | tr '\n' ' ')"
  fi
  return 0
}

# udp: dnsperf (16 client sockets, up to 200 queries in flight) through the proxy's DNS port.
# Queries still in flight when the time is up count as lost, so the in-flight cap is small.
udp() {
  local target=$1 pid=$2 ip=${PROXY_IP[$1]} before after out completed
  case $target in haproxy*) return 0 ;; esac
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(timeout $((DURATION + 20)) dnsperf -s "$ip" -p "$DNS_PORT" -d "$WORK/queries" \
    -l "$DURATION" -c 16 -q 200 -t 2 2>&1)
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
  record "$target" udp_qps "$(awk '/Queries per second:/ {print $4}' <<<"$out")"
  record "$target" udp_lost "$(awk '/Queries lost:/ {print $3}' <<<"$out")"
  [ -n "$pid" ] && [ "${completed:-0}" -gt 0 ] && record "$target" udp_cpu_us_per_query \
    "$(python3 -c "print(($after - $before) / $TICKS * 1e6 / $completed)")"
  return 0
}

# udp-bulk: iperf3 -u, 8 flows (client sockets) of 1,400-byte datagrams at full rate (-b 0)
# through the proxy to the iperf3 server. What counts is what reached the server: the datagrams
# it received per second, the ones sent but never received, and the proxy's CPU per datagram
# received.
udp_bulk() {
  local target=$1 pid=$2 ip=${PROXY_IP[$1]} before after out received lost rate
  case $target in haproxy*) return 0 ;; esac
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(timeout $((DURATION + 20)) iperf3 -c "$ip" -p "$BULK_PORT" -u -l 1400 -b 0 -P 8 \
    -t "$DURATION" -J)
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  read -r received lost rate < <(python3 -c '
import json, sys
end = json.load(sys.stdin)["end"]
got = end["sum_received"]["bytes"] // 1400
print(got, end["sum_sent"]["packets"] - got, got / end["sum_received"]["seconds"])' <<<"$out")
  record "$target" udp_bulk_dgrams_per_s "$rate"
  record "$target" udp_bulk_lost "$lost"
  [ -n "$pid" ] && [ "$received" -gt 0 ] && record "$target" udp_bulk_cpu_us_per_dgram \
    "$(python3 -c "print(($after - $before) / $TICKS * 1e6 / $received)")"
  return 0
}

# redis-benchmark -q against IP, PIPELINE, N requests per test: prints the requests/s of SET
# and of GET from its summary lines ("SET: 81234.56 requests per second, p50=…"), nothing when
# it failed or timed out. Bounded by a timeout of 10 × DURATION + 20 s.
redis_bench_rates() {
  local ip=$1 pipeline=$2 n=$3 out rc=0
  out=$(timeout $((10 * DURATION + 20)) redis-benchmark -h "$ip" -p "$REDIS_PORT" -c 50 -n "$n" \
    -t set,get -P "$pipeline" -q 2>&1) || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "redis-benchmark -h $ip -P $pipeline -n $n: exit $rc: $(tr '\r' '\n' <<<"$out" | tail -n 3 | tr '\n' ' ')"
    return 0
  fi
  tr '\r' '\n' <<<"$out" | awk '
    $1 == "SET:" && $3 == "requests" { set = $2 }
    $1 == "GET:" && $3 == "requests" { get = $2 }
    END { if (set != "" && get != "") print set, get }'
}

# Requests per redis-benchmark test for PIPELINE, so that SET and GET together take about
# DURATION seconds on direct (one redis-server): from a calibration run of CAL requests per test.
redis_calibrate() {
  local pipeline=$1 cal=$2 set get
  read -r set get < <(redis_bench_rates "${BACKENDS[0]}" "$pipeline" "$cal") || true
  [ -n "${set:-}" ] || { echo "redis-benchmark calibration (-P $pipeline) failed" >&2; exit 1; }
  # 2 N / (N / set + N / get) = DURATION; rounded to thousands.
  python3 -c "print(max(1000, round($DURATION / (1 / $set + 1 / $get) / 1000) * 1000))"
}

# redis_run TARGET PID PIPELINE N: redis-benchmark -c 50 -t set,get -P PIPELINE -n N through the proxy. The
# rate is over both tests: 2 N / (N / SET's rate + N / GET's rate), the harmonic mean of the two,
# and 2 N requests divide the proxy's CPU.
redis_run() {
  local target=$1 pid=$2 pipeline=$3 n=$4 ip=${PROXY_IP[$1]} before after set get
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  read -r set get < <(redis_bench_rates "$ip" "$pipeline" "$n") || true
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  [ -n "${set:-}" ] || return 0
  record "$target" "redis_p${pipeline}_rps" "$(python3 -c "print(2 / (1 / $set + 1 / $get))")"
  [ -n "$pid" ] && record "$target" "redis_p${pipeline}_cpu_us_per_req" \
    "$(python3 -c "print(($after - $before) / $TICKS * 1e6 / (2 * $n))")"
  return 0
}

# pgbench NAME [pgbench args]: pgbench -S (select only), 16 clients on 2 threads, DURATION
# seconds, through the proxy to the one PostgreSQL; -n: no vacuum before the run (the tables
# are only read). Figures: tps, proxy CPU-µs per transaction, and failed transactions plus
# aborted clients (each abort loses its transaction; must be 0).
pgbench_run() {
  local name=$1 target=$2 pid=$3; shift 3
  local ip=${PROXY_IP[$target]} before after out rc=0 tx tps failed aborted
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(timeout $((DURATION + 30)) "$PG_BIN/pgbench" -h "$ip" -p "$PG_PORT" -U postgres -n -S \
    -c 16 -j 2 -T "$DURATION" "$@" postgres 2>&1) || rc=$?
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  tx=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]}' <<<"$out")
  tps=$(awk '/^tps = / {print $3}' <<<"$out")
  failed=$(awk '/^number of failed transactions/ {print $5}' <<<"$out")
  aborted=$(grep -c "aborted in command\|aborted while establishing" <<<"$out" || true)
  if [ "$rc" -ne 0 ] || [ "${aborted:-0}" -gt 0 ] || [ -z "$tps" ]; then
    log "$target $name: pgbench exit $rc: $(grep -i 'error\|abort' <<<"$out" | head -n 3 | tr '\n' ' ')"
  fi
  [ -n "$tps" ] || return 0
  record "$target" "${name}_tps" "$tps"
  record "$target" "${name}_failed" "$((${failed:-0} + aborted))"
  [ -n "$pid" ] && [ "${tx:-0}" -gt 0 ] && record "$target" "${name}_cpu_us_per_tx" \
    "$(python3 -c "print(($after - $before) / $TICKS * 1e6 / $tx)")"
  return 0
}

# Established connections on the backends' http port (the backend side of each).
backend_conns() { ss -Htn state established "sport = :$HTTP_PORT" | grep -c "127.0.0.7[123]:$HTTP_PORT" || true; }

# idle: RSS growth of the proxy per idle proxied connection.
idle() {
  local target=$1 pid=$2 ip=${PROXY_IP[$1]} before after holder base
  base=$(backend_conns)
  before=$(rss_kib "$pid")
  rm -f "$WORK/idle.ready"
  python3 "$HERE/idle.py" "$ip" "$HTTP_PORT" "$IDLE_CONNS" "$WORK/idle.ready" 60 &
  holder=$!
  PIDS+=("$holder")
  for _ in $(seq 300); do
    [ -e "$WORK/idle.ready" ] && [ "$(backend_conns)" -ge $((base + IDLE_CONNS)) ] && break
    sleep 0.1
  done
  sleep 0.5 # let the proxy finish any per-connection setup work after the backend accepted
  after=$(rss_kib "$pid")
  stop_pid "$holder"
  record "$target" idle_kib_per_conn "$(python3 -c "print(($after - $before) / $IDLE_CONNS)")"
}

# --- runs ----------------------------------------------------------------------------------
# Every proxy runs for the whole comparison, each on its own address, and the timed workloads
# are interleaved: each round measures every target once, in an order that rotates from round
# to round. A slow spell of the shared machine then falls on all targets alike instead of on
# whichever happened to run at that moment.
declare -A PID_OF=([direct]=)
PROXIES=()
for target in "${TARGETS[@]}"; do
  [ "$target" = direct ] && continue
  for port in "$HTTP_PORT" "$BULK_PORT" "$REDIS_PORT" "$PG_PORT"; do
    if ss -Hltn "sport = :$port" | grep -q "${PROXY_IP[$target]}:$port"; then
      echo "${PROXY_IP[$target]}:$port is already in use by another process" >&2
      exit 1
    fi
  done
  # vipd and nginx bind their UDP ports (DNS, bulk) whatever the workloads.
  [[ $target == haproxy* ]] || for port in "$DNS_PORT" "$BULK_PORT"; do
    if ss -Hlun "sport = :$port" | grep -q "${PROXY_IP[$target]}:$port"; then
      echo "udp ${PROXY_IP[$target]}:$port is already in use by another process" >&2
      exit 1
    fi
  done
  start_proxy "$target"
  PID_OF[$target]=$PROXY_PID
  PROXIES+=("$target")
done
for target in "${PROXIES[@]}"; do
  wait_listening "${PROXY_IP[$target]}" "$HTTP_PORT"
  wait_listening "${PROXY_IP[$target]}" "$BULK_PORT"
  wait_listening "${PROXY_IP[$target]}" "$REDIS_PORT"
  wait_listening "${PROXY_IP[$target]}" "$PG_PORT"
  if wants udp && [[ $target != haproxy* ]]; then wait_udp "${PROXY_IP[$target]}" "$DNS_PORT"; fi
  if wants udp-bulk && [[ $target != haproxy* ]]; then wait_udp "${PROXY_IP[$target]}" "$BULK_PORT"; fi
done
sleep 1.5 # first round of health checks
alive() {
  local target
  for target in "${PROXIES[@]}"; do
    kill -0 "${PID_OF[$target]}" 2>/dev/null || { echo "$target exited; see $WORK" >&2; exit 1; }
  done
}
alive

# Idle memory first, while every proxy is fresh, one proxy at a time.
if wants idle; then
  RUN=1
  for target in "${PROXIES[@]}"; do
    log "idle: $target"
    idle "$target" "${PID_OF[$target]}"
  done
  alive
fi

# The targets of round N, rotated by N.
round_order() {
  local n=${#TARGETS[@]} k=$(($1 % ${#TARGETS[@]}))
  echo "${TARGETS[@]:k:n-k}" "${TARGETS[@]:0:k}"
}
if wants redis; then
  REDIS_N_P1=${REDIS_N_P1:-$(redis_calibrate 1 50000)}
  REDIS_N_P16=${REDIS_N_P16:-$(redis_calibrate 16 500000)}
  [ -n "$REDIS_N_P1" ] && [ -n "$REDIS_N_P16" ] || exit 1
  log "redis: $REDIS_N_P1 requests per test with -P 1, $REDIS_N_P16 with -P 16"
fi

for workload in bulk rr crr udp udp-bulk redis pgbench; do
  wants "$workload" || continue
  for RUN in $(seq "$RUNS"); do
    log "$workload, round $RUN/$RUNS"
    for target in $(round_order "$RUN"); do
      pid=${PID_OF[$target]}
      case $workload in
        bulk)
          bulk "$target" "$pid" 1
          bulk "$target" "$pid" 8
          ;;
        rr) http rr "$target" "$pid" ;;
        crr) http crr "$target" "$pid" -H "Connection: close" ;;
        udp) udp "$target" "$pid" ;;
        udp-bulk) udp_bulk "$target" "$pid" ;;
        redis)
          redis_run "$target" "$pid" 1 "$REDIS_N_P1"
          redis_run "$target" "$pid" 16 "$REDIS_N_P16"
          ;;
        pgbench)
          pgbench_run pgbench "$target" "$pid"
          pgbench_run pgbench_c "$target" "$pid" -C
          ;;
      esac
    done
  done
  alive
done

IDLE_CONNS=$IDLE_CONNS REDIS_N_P1=${REDIS_N_P1:-} REDIS_N_P16=${REDIS_N_P16:-} \
  python3 "$HERE/report.py" "$RESULTS"
echo
echo "raw results: $RESULTS"
