#!/usr/bin/env bash
# Load benchmarks of mixpeek-gateway (default: a runtime per worker thread;
# gateway-ws: server.work_stealing) against a bare hyper server (the
# ceiling), nginx proxy_cache and Varnish on this machine, 127.0.0.1 only.
#
#   benches/load/run.sh [throughput|coalesce|memory|replicas|pinned|instructions|bound|logging|all]   (default: all)
#
# logging (not part of all): cache hits with the access log on (info, into
# a file, or LOG_FILE) and off (warn), in alternation; the on/off ratio per
# round. GW_LOG=info GW_STDERR=file with instructions mode gives the
# gateway's instructions per hit with the log on.
#
# pinned (not part of all): the gateway, bare hyper and nginx each on CPU 1
# with one serving thread, wrk -t1 on CPU 0, so nothing preempts the server
# and each is limited by its own cost per request.
# instructions (not part of all): user-space instructions per cache hit of
# the gateway and bare hyper under callgrind (needs valgrind), which do not
# depend on the VM's speed.
# bound (not part of all): bare hyper (the ceiling, on tokio's multi-threaded
# runtime, which balances connections over the cores: the per-thread
# build's uneven split at 64 connections moved it by 1.5 x between rounds)
# with N ns of busy work added to every request, for each N in BOUND_WORK,
# beside the gateway and nginx (workers=auto): how much work per request
# a hyper server can add and still be 1.4 x nginx, against what the
# gateway does.
#
# Environment: BIN (the gateway binary: another build to compare),
# SKIP_BUILD (1: use the binaries as they are), ROUNDS (3), DURATION (10s), IR_DURATION (10s, instructions
# mode), CONNS ("64 256"), BOUND_WORK ("0 500 1000 1500 2000", ns), INSTALL (1: may
# apt-get install wrk nginx varnish when missing and running as root),
# BASE_PORT (19000). Every process it starts is stopped on exit. Results are
# printed as tables; copy them into benches/RESULTS.md.
#
# Besides req/s and latency, the throughput tables give each server's CPU
# time per request (user + system of all its processes, from /proc, over
# the wrk run). The load generator shares the cores, so req/s also depends
# on how the scheduler splits them between wrk and the server; CPU per
# request is the server's own cost (it still moves with the VM's speed, so
# compare it within a round too).
set -euo pipefail

MODE=${1:-all}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
IR_DURATION=${IR_DURATION:-10s}
CONNS=${CONNS:-"64 256"}
BOUND_WORK=${BOUND_WORK:-"0 500 1000 1500 2000"}
INSTALL=${INSTALL:-1}
BASE_PORT=${BASE_PORT:-19000}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/mixpeek-bench.XXXXXX)
REAL_KEY=sk_bench_real_key
CLIENT_KEY=gw_bench_client_key
NS=ns_bench
BIN=${BIN:-"$ROOT/target/release/mixpeek-gateway"}
STATIC="$ROOT/target/release/examples/static_server"
LOADGEN="$ROOT/target/release/examples/loadgen"
PIDS=()

port() { echo $((BASE_PORT + $1)); }
SIM=$(port 1); GW=$(port 2); CEIL=$(port 3); NGX1=$(port 4); NGXA=$(port 5); VARN=$(port 6)
CEIL_PT=$(port 14); GW_WS=$(port 15); SIM_SLOW=$(port 7); GW_SLOW=$(port 8); NGX_SLOW=$(port 9); GW_MEM=$(port 10)
REDIS_PORT=$(port 11); GW_R1=$(port 12); GW_R2=$(port 13)
SIM_PIN=$(port 16); GW_PIN=$(port 17); CEIL_PIN=$(port 18); NGX_PIN=$(port 19)
SIM_IR=$(port 20); GW_IR=$(port 21); CEIL_IR=$(port 22); CEIL_MEM=$(port 23)
SIM_B=$(port 24); GW_B=$(port 25); NGX_B=$(port 26)  # bound mode; its bare servers from port 30 on
PIN=()      # a command prefix for the servers started next (pinned mode)
WRK_PIN=()  # and for wrk
WRK_THREADS=2

cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for conf in "$WORK"/nginx-*.conf; do
    [ -f "$conf" ] && nginx -c "$conf" -p "$WORK" -s quit 2>/dev/null || true
  done
  [ -f "$WORK/varnish.pid" ] && kill "$(cat "$WORK/varnish.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; return 1
}

ensure_tools() {
  local missing=()
  for tool in wrk nginx varnishd; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ] && [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ]; then
    say "installing wrk nginx varnish with apt-get (INSTALL=0 to skip)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx varnish >/dev/null
    # The packages start system services on their default ports: not ours.
    systemctl stop nginx varnish 2>/dev/null || pkill -x nginx 2>/dev/null || true
    pkill -x varnishd 2>/dev/null || true
  fi
  command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
  HAVE_NGINX=0; command -v nginx >/dev/null && HAVE_NGINX=1
  HAVE_VARNISH=0; command -v varnishd >/dev/null && HAVE_VARNISH=1
  # (without varnish the line above would end the function, and under
  # set -e the script, with its status)
  return 0
}

build() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  say "building (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin mixpeek-gateway --example static_server --example loadgen)
}

start_sim() { # port latency_ms
  MIXPEEK_API_KEY=$REAL_KEY "$BIN" sim --listen 127.0.0.1:"$1" --latency-ms "$2" >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$1"
}

# The detail every hit benchmark asks for, and its body (from the sim at
# port $1) for bare hyper to serve.
DETAIL="/v1/retrievers/executions/exec_bench"
detail_body() { # sim_port
  curl -sf -H "Authorization: Bearer $REAL_KEY" -H "X-Namespace: $NS" "http://127.0.0.1:$1$DETAIL" > "$WORK/body.json"
}

start_gateway() { # port upstream_port max_bytes [extra toml] [extra [server] toml] -> sets GW_PID
  local digest; digest=$(printf %s "$CLIENT_KEY" | sha256sum | cut -d' ' -f1)
  cat > "$WORK/gateway-$1.toml" <<EOF
[server]
listen = "127.0.0.1:$1"
${5:-}
[upstream]
base_url = "http://127.0.0.1:$2"
api_key_env = "BENCH_MIXPEEK_API_KEY"
timeout_ms = 30000
[[clients]]
name = "bench"
key_sha256 = "$digest"
namespace = "$NS"
[cache]
max_bytes = $3
${4:-}
EOF
  # Request logs off (warn), as nginx runs with access_log off, unless
  # GW_LOG says otherwise (logging mode: info, into GW_STDERR).
  BENCH_MIXPEEK_API_KEY=$REAL_KEY RUST_LOG=${GW_LOG:-warn} "${PIN[@]}" "$BIN" serve --config "$WORK/gateway-$1.toml" >/dev/null 2>"${GW_STDERR:-/dev/null}" &
  GW_PID=$!; PIDS+=($GW_PID); wait_port "$1"
}

start_nginx() { # name port upstream_port workers
  local user=""; [ "$(id -u)" = 0 ] && user="user root;"
  mkdir -p "$WORK/cache-$1"
  cat > "$WORK/nginx-$1.conf" <<EOF
$user
worker_processes $4;
pid $WORK/nginx-$1.pid;
error_log $WORK/nginx-$1.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  proxy_cache_path $WORK/cache-$1 keys_zone=c_$1:64m max_size=2g inactive=1d use_temp_path=off;
  upstream sim_$1 { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://sim_$1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $REAL_KEY";
      proxy_set_header X-Namespace $NS;
      proxy_cache c_$1;
      proxy_cache_key "$NS|\$request_method|\$request_uri";
      proxy_cache_valid 200 1d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 30s;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
  "${PIN[@]}" nginx -c "$WORK/nginx-$1.conf" -p "$WORK" && wait_port "$2"
}

start_varnish() { # port upstream_port
  cat > "$WORK/default.vcl" <<EOF
vcl 4.1;
backend sim { .host = "127.0.0.1"; .port = "$2"; }
sub vcl_recv {
  set req.http.Authorization = "Bearer $REAL_KEY";
  set req.http.X-Namespace = "$NS";
  if (req.method != "GET" && req.method != "HEAD") { return (pass); }
  return (hash);
}
sub vcl_backend_response { set beresp.ttl = 1d; }
EOF
  varnishd -j none -a 127.0.0.1:"$1" -f "$WORK/default.vcl" -n "$WORK/varnish" \
    -s malloc,256m -P "$WORK/varnish.pid" >/dev/null 2>&1 && wait_port "$1"
}

# wrk: prints "rps p50_us p99_us requests"
run_wrk() { # conns url [extra wrk args...]
  local conns=$1 url=$2; shift 2
  local threads=$WRK_THREADS; [ "$conns" -lt 2 ] && threads=1
  "${WRK_PIN[@]}" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "$@" "$url" 2>/dev/null | awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v+0 }
    /Requests\/sec/ { rps=$2 }
    / requests in / { n=$1 }
    $1=="50%" { p50=us($2) }
    $1=="99%" { p99=us($2) }
    END { printf "%s %s %s %s\n", rps, p50, p99, n }'
}

# CPU time (user + system, clock ticks) of a server's processes: a pid, or
# nginx:NAME / varnish for a master and its workers.
cpu_ticks() { # spec
  local pids=() lead
  case "$1" in
    nginx:*) lead=$(cat "$WORK/nginx-${1#nginx:}.pid"); pids=("$lead" $(pgrep -P "$lead" || true)) ;;
    varnish) lead=$(cat "$WORK/varnish.pid"); pids=("$lead" $(pgrep -P "$lead" || true)) ;;
    *) pids=("$1") ;;
  esac
  # Fields after the command name: utime and stime are the 12th and 13th.
  for pid in "${pids[@]}"; do sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null || true; done |
    awk '{ t += $12 + $13 } END { print t + 0 }'
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# One wrk run, appended to a results file as
# "name conns rps p50_us p99_us cpu_us_per_request".
measure() { # name conns url cpu-spec file [extra wrk args...]
  local name=$1 conns=$2 url=$3 procs=$4 file=$5; shift 5
  local t0 t1 rps p50 p99 n cpu
  t0=$(cpu_ticks "$procs")
  read -r rps p50 p99 n < <(run_wrk "$conns" "$url" "$@")
  t1=$(cpu_ticks "$procs")
  cpu=$(awk -v t="$((t1 - t0))" -v n="${n:-0}" -v us="$TICK_US" 'BEGIN { printf "%.2f", (n > 0 ? t * us / n : 0) }')
  echo "$name $conns $rps $p50 $p99 $cpu" | tee -a "$file"
}

throughput() {
  say "throughput: hits and pass-through misses, wrk ${DURATION} x ${ROUNDS} rounds, connections: ${CONNS}"
  start_sim "$SIM" 0; local sim_pid=${PIDS[-1]}
  start_gateway "$GW" "$SIM" 268435456; local gw_pid=$GW_PID
  # The same gateway on one work-stealing runtime (server.work_stealing).
  start_gateway "$GW_WS" "$SIM" 268435456 "" "work_stealing = true"; local gw_ws_pid=$GW_PID
  detail_body "$SIM"
  "$STATIC" 127.0.0.1:"$CEIL" "$WORK/body.json" >/dev/null & PIDS+=($!); local ceil_pid=$!; wait_port "$CEIL"
  "$STATIC" 127.0.0.1:"$CEIL_PT" "$WORK/body.json" per-thread >/dev/null & PIDS+=($!); local ceil_pt_pid=$!; wait_port "$CEIL_PT"
  # name|url|credentials|whose CPU time is counted
  local targets=("ceiling|http://127.0.0.1:$CEIL$DETAIL||$ceil_pid" "ceiling-per-thread|http://127.0.0.1:$CEIL_PT$DETAIL||$ceil_pt_pid" "gateway|http://127.0.0.1:$GW$DETAIL|auth|$gw_pid" "gateway-ws|http://127.0.0.1:$GW_WS$DETAIL|auth|$gw_ws_pid")
  if [ "$HAVE_NGINX" = 1 ]; then
    start_nginx w1 "$NGX1" "$SIM" 1; start_nginx auto "$NGXA" "$SIM" auto
    targets+=("nginx-1w|http://127.0.0.1:$NGX1$DETAIL||nginx:w1" "nginx-auto|http://127.0.0.1:$NGXA$DETAIL||nginx:auto")
  fi
  if [ "$HAVE_VARNISH" = 1 ]; then
    start_varnish "$VARN" "$SIM"; targets+=("varnish|http://127.0.0.1:$VARN$DETAIL||varnish")
  fi
  local miss="/v1/collections/col_bench/documents"
  # A pass-through miss counts the gateway's CPU only: the sim's is the
  # same as for the direct call.
  targets+=("sim-direct(miss)|http://127.0.0.1:$SIM$miss|real|$sim_pid" "gateway(miss)|http://127.0.0.1:$GW$miss|auth|$gw_pid")
  # Warm every cache.
  for t in "${targets[@]}"; do
    IFS='|' read -r _ url auth <<<"$t"
    for _ in 1 2; do curl -s -o /dev/null -H "Authorization: Bearer $CLIENT_KEY" "$url"; done
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CLIENT_KEY" "http://127.0.0.1:$GW$DETAIL")" = 200 ]
  : > "$WORK/throughput.txt"
  for round in $(seq 1 "$ROUNDS"); do
    for conns in $CONNS 1; do
      for t in "${targets[@]}"; do
        IFS='|' read -r name url auth procs <<<"$t"
        local header=()
        case "$auth" in
          auth) header=(-H "Authorization: Bearer $CLIENT_KEY") ;;
          real) header=(-H "Authorization: Bearer $REAL_KEY" -H "X-Namespace: $NS") ;;
        esac
        measure "$name" "$conns" "$url" "$procs" "$WORK/throughput.txt" "${header[@]}"
      done
    done
    echo "   (round $round done)"
  done
  say "pass-through: 20 000 alternating requests, direct to the sim and through the gateway, one at a time"
  "$LOADGEN" pair "http://127.0.0.1:$SIM$miss" "$REAL_KEY" "$NS" "http://127.0.0.1:$GW$miss" "$CLIENT_KEY" 20000
  python3 "$ROOT/benches/load/summary.py" throughput "$WORK/throughput.txt"
}

sim_count() { # port route-key
  curl -s "http://127.0.0.1:$1/_sim/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['counts']['$2'])"
}

coalesce() {
  say "coalescing: 100 concurrent identical requests, upstream latency 200 ms"
  start_sim "$SIM_SLOW" 200
  start_gateway "$GW_SLOW" "$SIM_SLOW" 268435456
  local targets=("gateway|$GW_SLOW")
  [ "$HAVE_NGINX" = 1 ] && { start_nginx slow "$NGX_SLOW" "$SIM_SLOW" auto; targets+=("nginx-lock|$NGX_SLOW"); }
  echo "| target | request | upstream calls | statuses | waiter p50 ms | p99 ms | max ms |"
  echo "| --- | --- | ---: | --- | ---: | ---: | ---: |"
  # The upstream's own latency as this harness sees it: 100 concurrent
  # requests straight to the simulated API, each on a new connection.
  for trial in 1 2; do
    local out; out=$("$LOADGEN" burst "http://127.0.0.1:$SIM_SLOW/v1/retrievers/executions/exec_direct_$trial?namespace=$NS" 100 "$REAL_KEY")
    echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| upstream direct | detail #$trial | 100 | {d['statuses']} | {d['p50_ms']} | {d['p99_ms']} | {d['max_ms']} |\")"
  done
  for t in "${targets[@]}"; do
    IFS='|' read -r name port <<<"$t"
    for trial in 1 2 3; do
      local route="GET /v1/retrievers/executions/{id}"
      local before; before=$(sim_count "$SIM_SLOW" "$route")
      local out; out=$("$LOADGEN" burst "http://127.0.0.1:$port/v1/retrievers/executions/exec_${name}_$trial" 100 "$CLIENT_KEY")
      local after; after=$(sim_count "$SIM_SLOW" "$route")
      echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| $name | detail #$trial | $((after-before)) | {d['statuses']} | {d['p50_ms']} | {d['p99_ms']} | {d['max_ms']} |\")"
    done
    local route="POST /v1/retrievers/executions/list"
    local before; before=$(sim_count "$SIM_SLOW" "$route")
    local out; out=$("$LOADGEN" burst "http://127.0.0.1:$port/v1/retrievers/executions/list?limit=5" 100 "$CLIENT_KEY" '{"status":"completed"}')
    local after; after=$(sim_count "$SIM_SLOW" "$route")
    echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| $name | list | $((after-before)) | {d['statuses']} | {d['p50_ms']} | {d['p99_ms']} | {d['max_ms']} |\")"
  done
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

memory() {
  local count=${MEM_COUNT:-100000}
  say "memory: resident set after caching $count distinct execution details"
  start_sim "$SIM" 0
  start_gateway "$GW_MEM" "$SIM" 4294967295
  local idle; idle=$(rss_kb "$GW_PID")
  local fill; fill=$("$LOADGEN" fill "http://127.0.0.1:$GW_MEM" "$count" 64 "$CLIENT_KEY")
  local bytes; bytes=$(echo "$fill" | python3 -c "import json,sys; print(json.load(sys.stdin)['body_bytes'])")
  local full; full=$(rss_kb "$GW_PID")
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  local quarter=$((bytes / 4))
  start_gateway "$GW_MEM" "$SIM" "$quarter"
  "$LOADGEN" fill "http://127.0.0.1:$GW_MEM" "$count" 64 "$CLIENT_KEY" >/dev/null
  local bounded; bounded=$(rss_kb "$GW_PID")
  python3 - "$idle" "$full" "$bounded" "$bytes" "$quarter" "$count" <<'PY'
import sys
idle, full, bounded, stored, quarter, count = map(int, sys.argv[1:])
mb = lambda kb: kb / 1024
print(f"| measure | value |\n| --- | ---: |")
print(f"| details cached | {count:,} |")
print(f"| body bytes stored | {stored/1048576:.1f} MiB |")
print(f"| RSS idle | {mb(idle):.1f} MiB |")
print(f"| RSS after caching all | {mb(full):.1f} MiB |")
print(f"| target 1.5 × stored + 30 MB | {1.5*stored/1048576 + 30:.1f} MiB |")
print(f"| RSS with max_bytes = stored/4 ({quarter/1048576:.1f} MiB) after the same fill | {mb(bounded):.1f} MiB |")
PY
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  local conns=${MEM_CONNS:-5000}
  # Thousands of sockets on each side: the servers started next and the
  # client inherit the hard limit on open files as their soft one.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  say "memory per keep-alive connection: $conns connections, one cached detail each, then held open"
  start_gateway "$GW_MEM" "$SIM" 268435456
  detail_body "$SIM"
  "$STATIC" 127.0.0.1:"$CEIL_MEM" "$WORK/body.json" >/dev/null & PIDS+=($!); local ceil_pid=$!; wait_port "$CEIL_MEM"
  echo "| server | RSS before | RSS with the connections | per connection |"
  echo "| --- | ---: | ---: | ---: |"
  conn_memory gateway "$GW_PID" "$GW_MEM" "$conns" "$DETAIL"
  conn_memory "bare hyper" "$ceil_pid" "$CEIL_MEM" "$conns" "$DETAIL"
  kill "$GW_PID" "$ceil_pid" 2>/dev/null || true
  wait "$GW_PID" "$ceil_pid" 2>/dev/null || true
}

conn_memory() { # name pid port connections path: RSS growth per open keep-alive connection
  python3 - "$@" "$CLIENT_KEY" <<'PY'
import socket, sys, time
name, pid, port, n, path, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def rss_kb():
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    return s
def answered(s):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"{name}: connection closed before the response head")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200 "):
        status = head.split(b"\r\n")[0].decode(errors="replace")
        sys.exit(f"{name}: {status}")
# A warm-up request, so the cache entry and the first allocations are in place.
with connect() as s:
    answered(s)
time.sleep(0.5)
before = rss_kb()
socks = [connect() for _ in range(n)]
for s in socks:
    answered(s)
time.sleep(0.5)
after = rss_kb()
print(f"| {name} | {before/1024:.1f} MiB | {after/1024:.1f} MiB | {(after-before)*1024/n/1000:.1f} kB |")
for s in socks:
    s.close()
PY
}

replicas() {
  say "replicas: cache-hit throughput of two gateways sharing Redis against one (wrk 64 connections in all)"
  command -v redis-server >/dev/null || { echo "redis-server not installed: skipped"; return; }
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$REDIS_PORT"
  start_sim "$SIM" 0
  local shared=$'[redis]\nurl = "redis://127.0.0.1:'"$REDIS_PORT"$'"'
  start_gateway "$GW_R1" "$SIM" 268435456 "$shared"
  start_gateway "$GW_R2" "$SIM" 268435456 "$shared"
  for p in "$GW_R1" "$GW_R2"; do curl -s -o /dev/null -H "Authorization: Bearer $CLIENT_KEY" "http://127.0.0.1:$p$DETAIL"; done
  echo "| setup | req/s (median of $ROUNDS) |"
  echo "| --- | ---: |"
  local one=() two=()
  for _ in $(seq 1 "$ROUNDS"); do
    one+=("$(run_wrk 64 "http://127.0.0.1:$GW_R1$DETAIL" -H "Authorization: Bearer $CLIENT_KEY" | cut -d' ' -f1)")
    run_wrk 32 "http://127.0.0.1:$GW_R1$DETAIL" -H "Authorization: Bearer $CLIENT_KEY" > "$WORK/r1" &
    local w=$!
    run_wrk 32 "http://127.0.0.1:$GW_R2$DETAIL" -H "Authorization: Bearer $CLIENT_KEY" > "$WORK/r2"
    wait "$w"
    two+=("$(python3 -c "print(float('$(cut -d' ' -f1 "$WORK/r1")') + float('$(cut -d' ' -f1 "$WORK/r2")'))")")
  done
  python3 - "${one[*]}" "${two[*]}" <<'PY'
import sys, statistics as st
one = st.median(map(float, sys.argv[1].split())); two = st.median(map(float, sys.argv[2].split()))
print(f"| one replica | {one:,.0f} |\n| two replicas (sum) | {two:,.0f} |\n| ratio | {two/one:.2f} |")
PY
}

# Interleaved wrk rounds of cache hits over targets "name|port|cpu-spec",
# appended to FILE (every target warmed and checked to answer 200 first).
# A different target goes first each round, so drift within a round does
# not line up with one target.
hit_rounds() { # file target...
  local file=$1; shift
  local targets=("$@") t name p procs k round conns
  for t in "${targets[@]}"; do
    IFS='|' read -r _ p _ <<<"$t"
    for _ in 1 2; do curl -s -o /dev/null -H "Authorization: Bearer $CLIENT_KEY" "http://127.0.0.1:$p$DETAIL"; done
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CLIENT_KEY" "http://127.0.0.1:$p$DETAIL")" = 200 ]
  done
  : > "$file"
  for round in $(seq 1 "$ROUNDS"); do
    for conns in $CONNS; do
      for k in "${!targets[@]}"; do
        IFS='|' read -r name p procs <<<"${targets[$(((k + round - 1) % ${#targets[@]}))]}"
        measure "$name" "$conns" "http://127.0.0.1:$p$DETAIL" "$procs" "$file" -H "Authorization: Bearer $CLIENT_KEY"
      done
    done
    echo "   (round $round done)"
  done
}

# Cache hits with the access log on (RUST_LOG=info, one line per request
# into a file) and off (warn), measured in alternation: what the log costs
# a hit now that it is formatted into per-thread buffers and written by a
# thread of its own.
logging() {
  say "logging: cache hits with the access log on and off, wrk ${DURATION} x ${ROUNDS} rounds, connections: ${CONNS}"
  start_sim "$SIM" 0
  local log=${LOG_FILE:-$WORK/access.log}
  GW_LOG=info GW_STDERR="$log" start_gateway "$GW" "$SIM" 268435456; local on=$GW_PID
  start_gateway "$GW_WS" "$SIM" 268435456; local off=$GW_PID
  hit_rounds "$WORK/logging.txt" "log-on|$GW|$on" "log-off|$GW_WS|$off"
  python3 - "$WORK/logging.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
for conns in sorted({int(r[1]) for r in rows}):
    on = [float(r[2]) for r in rows if r[0] == "log-on" and int(r[1]) == conns]
    off = [float(r[2]) for r in rows if r[0] == "log-off" and int(r[1]) == conns]
    ratios = [a / b for a, b in zip(on, off)]
    print(f"{conns} connections: log on {statistics.median(on):.0f} req/s, off {statistics.median(off):.0f} req/s, "
          f"on/off median {statistics.median(on) / statistics.median(off):.3f}, per round {' '.join(f'{r:.3f}' for r in ratios)}")
PY
  echo "access lines written: $([ -f "$log" ] && grep -c access "$log" || echo "-"); dropped: $(curl -s "http://127.0.0.1:$GW/_gateway/metrics" | awk '/^mixpeek_gateway_log_lines_dropped_total/ {print $2}')"
}

pinned() {
  say "pinned: each server on CPU 1 with one serving thread, wrk -t1 on CPU 0, wrk ${DURATION} x ${ROUNDS} rounds, connections: ${CONNS}"
  if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; then
    echo "needs 2 CPUs and taskset: skipped"; return
  fi
  start_sim "$SIM_PIN" 0
  detail_body "$SIM_PIN"
  PIN=(taskset -c 1)
  start_gateway "$GW_PIN" "$SIM_PIN" 268435456 "" "workers = 1"; local gw_pid=$GW_PID
  # Its work-stealing runtime sizes itself to the one CPU it may use.
  "${PIN[@]}" "$STATIC" 127.0.0.1:"$CEIL_PIN" "$WORK/body.json" >/dev/null & PIDS+=($!); local ceil_pid=$!; wait_port "$CEIL_PIN"
  local targets=("gateway|$GW_PIN|$gw_pid" "ceiling|$CEIL_PIN|$ceil_pid")
  [ "$HAVE_NGINX" = 1 ] && { start_nginx pin "$NGX_PIN" "$SIM_PIN" 1; targets+=("nginx-1w|$NGX_PIN|nginx:pin"); }
  PIN=()
  WRK_PIN=(taskset -c 0); WRK_THREADS=1
  hit_rounds "$WORK/pinned.txt" "${targets[@]}"
  WRK_PIN=(); WRK_THREADS=2
  python3 "$ROOT/benches/load/summary.py" pinned "$WORK/pinned.txt"
}

# Instructions per cache hit executed by the server itself (user space),
# counted by callgrind: repeatable whatever the VM's speed, so a change to
# the hot path can be judged on these noisy machines. The counters are
# zeroed after a warm-up and dumped after a wrk run of IR_DURATION; the
# measured run's own connection setup (one task per connection) is inside
# the window, a few hundred instructions per request at 256 connections.
instructions() {
  say "instructions per hit, server side (callgrind), wrk -t1 ${IR_DURATION}, connections: ${CONNS}"
  if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    echo "needs valgrind (apt-get install valgrind): skipped"; return
  fi
  start_sim "$SIM_IR" 0
  detail_body "$SIM_IR"
  : > "$WORK/instructions.txt"
  local conns target pid port out requests ir
  for conns in $CONNS; do
    for target in gateway ceiling; do
      out="$WORK/callgrind-$target-$conns.out"
      PIN=(valgrind -q --tool=callgrind --callgrind-out-file="$out")
      if [ "$target" = gateway ]; then
        port=$GW_IR; start_gateway "$port" "$SIM_IR" 268435456 "" "workers = 1"; pid=$GW_PID
      else
        # On one CPU, so its work-stealing runtime has one worker, like the gateway.
        port=$CEIL_IR; taskset -c 1 "${PIN[@]}" "$STATIC" 127.0.0.1:"$port" "$WORK/body.json" >/dev/null 2>&1 &
        pid=$!; PIDS+=("$pid"); wait_port "$port"
      fi
      PIN=()
      local url="http://127.0.0.1:$port$DETAIL"
      for _ in 1 2 3; do curl -s -o /dev/null -H "Authorization: Bearer $CLIENT_KEY" "$url"; done
      [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $CLIENT_KEY" "$url")" = 200 ]
      wrk -t1 -c"$conns" -d2s -H "Authorization: Bearer $CLIENT_KEY" "$url" >/dev/null
      callgrind_control -z "$pid" >"$WORK/callgrind_control.log" 2>&1 || { cat "$WORK/callgrind_control.log" >&2; return 1; }
      requests=$(wrk -t1 -c"$conns" -d"$IR_DURATION" -H "Authorization: Bearer $CLIENT_KEY" "$url" | awk '/requests in/ {print $1}')
      callgrind_control -d "$pid" >"$WORK/callgrind_control.log" 2>&1 || { cat "$WORK/callgrind_control.log" >&2; return 1; }
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      [ -s "$out.1" ] || { echo "no callgrind dump for $target" >&2; return 1; }
      ir=$(awk '/^summary:/ {print $2}' "$out".1)
      echo "$target $conns $requests $ir" | tee -a "$WORK/instructions.txt"
    done
  done
  python3 "$ROOT/benches/load/summary.py" instructions "$WORK/instructions.txt"
}

# Bare hyper with N ns of busy work per request (WORK_NS), interleaved with
# the gateway and nginx-auto: the req/s each amount of work leaves, so the
# gateway's own work per request can be read as "bare hyper + N ns" and
# set against the N that 1.4 x nginx allows.
bound() {
  say "bound: bare hyper + N ns of work per request (N in $BOUND_WORK), the gateway and nginx-auto, wrk ${DURATION} x ${ROUNDS} rounds, connections: ${CONNS}"
  [ "$HAVE_NGINX" = 1 ] || { echo "needs nginx: skipped"; return; }
  start_sim "$SIM_B" 0
  start_gateway "$GW_B" "$SIM_B" 268435456; local gw_pid=$GW_PID
  start_nginx bound "$NGX_B" "$SIM_B" auto
  detail_body "$SIM_B"
  # name|port|whose CPU time is counted
  local targets=("gateway|$GW_B|$gw_pid" "nginx-auto|$NGX_B|nginx:bound") next=30 work port seen=" "
  for work in $BOUND_WORK; do
    [[ $work =~ ^[0-9]+$ && $seen != *" $work "* ]] || { echo "BOUND_WORK: distinct whole numbers of ns, not $work" >&2; return 1; }
    seen+="$work "
    port=$(port "$next"); next=$((next + 1))
    WORK_NS=$work "$STATIC" 127.0.0.1:"$port" "$WORK/body.json" >/dev/null & PIDS+=($!)
    targets+=("hyper+${work}ns|$port|$!"); wait_port "$port"
  done
  hit_rounds "$WORK/bound.txt" "${targets[@]}"
  python3 "$ROOT/benches/load/summary.py" bound "$WORK/bound.txt"
}

ensure_tools
build
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%Y-%m-%d); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
case "$MODE" in
  throughput) throughput ;;
  coalesce) coalesce ;;
  memory) memory ;;
  replicas) replicas ;;
  pinned) pinned ;;
  instructions) instructions ;;
  bound) bound ;;
  logging) logging ;;
  all) throughput; coalesce; memory; replicas ;;
  *) echo "usage: $0 [throughput|coalesce|memory|replicas|pinned|instructions|bound|logging|all]" >&2; exit 2 ;;
esac
