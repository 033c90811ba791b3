#!/usr/bin/env bash
# Drives one upstream four ways on loopback, in one run, with wrk. The upstream is
# `pinpoint echo --fixed`: the same small body for every request, so its work does not grow
# with the identity headers the chain adds and the differences measured are the proxies'.
#   direct    wrk -> echo upstream
#   haproxy   wrk -> HAProxy (one thread when pinned, http-reuse always) -> echo upstream
#   caddy     wrk -> Caddy (GOMAXPROCS=1 when pinned) -> echo upstream
#   nginx     wrk -> nginx (plain reverse proxy, keep-alive upstream pool) -> echo upstream
#   bare      wrk -> pinpoint, a route with no access rules (every layer "not mine";
#             decision log and access log on) -> echo upstream
#   chain     wrk -> pinpoint, a route with the full chain: API-key auth, RBAC permission,
#             IP allow list, a rate limit sized not to trigger, decision log -> echo upstream
#   key       (BENCH_BREAKDOWN=1 only) wrk -> pinpoint, a route with API-key auth alone
# for GET and for a 1 KiB JSON POST, and prints requests/s, p99 latency, x/nginx and
# chain/bare ratios. Every proxy (nginx, HAProxy, Caddy, bare, chain, and key) runs in
# BENCH_ROUNDS short rounds (default 36 of 1 s): the machine's speed drifts over seconds,
# so short alternating runs compare like with like; the order rotates from round to round
# so a drift favours none of them. For each run the script also reads the proxy's CPU time
# (/proc/<pid>/stat: nginx's workers, HAProxy's, Caddy's and Pinpoint's processes) and
# reports CPU per request, the second measure. Medians are reported; x/nginx and chain/bare
# are the medians of the per-round ratios with a 95% bootstrap interval. Last, it
# splits each target's CPU per request by thread (workers' user and kernel time, decision-log
# writer, access-log writer; /proc/<pid>/task/*/stat), summed over all rounds.
# Usage: bench/run.sh [seconds-per-run] (default 1). Needs root or sudo to install nginx/wrk.
# Environment: BENCH_ROUNDS, BENCH_PIN=1 (see below), BENCH_BREAKDOWN=1, BENCH_LATENCY_RPS,
# BENCH_LATENCY_SECONDS, BENCH_CONNECTIONS,
# BENCH_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION="${1:-${BENCH_DURATION:-1}}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
ROUNDS="${BENCH_ROUNDS:-36}"
# BENCH_PIN=1: see bench_placement in lib.sh.
bench_placement
ECHO_PORT=19000 NGINX_PORT=19001 PROXY_PORT=19002 API_PORT=19003 HAPROXY_PORT=19004 CADDY_PORT=19005

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need wrk || ! need haproxy || ! need caddy || ! need h2load; then
  echo "installing nginx, HAProxy, Caddy, wrk and h2load from Debian's packages"
  apt-get update -qq && apt-get install -y -qq nginx-light haproxy caddy wrk nghttp2-client >/dev/null
  # The packages start their services; the benchmark runs its own.
  systemctl stop nginx haproxy caddy 2>/dev/null || true
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release -q -p pinpoint
BIN=target/release/pinpoint
bench_workdir


$CLIENT_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT

bench_nginx proxy "$NGINX_PORT" "$ECHO_PORT" "$NGINX_WORKERS"

# HAProxy with one thread (like nginx's one worker when pinned), reusing upstream
# connections; Caddy with GOMAXPROCS=1 when pinned. Neither logs requests (HAProxy logs
# only to syslog, Caddy only when asked); nginx and Pinpoint write an access log.
cat > "$WORK/haproxy.cfg" <<HAPROXY
global
  nbthread $NGINX_WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend echo
backend echo
  server echo 127.0.0.1:$ECHO_PORT
HAPROXY
$PROXY_PIN "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)
HAPROXY_PID=$!
wait_port $HAPROXY_PORT
cat > "$WORK/Caddyfile" <<CADDY
{
  admin off
  auto_https off
}
http://127.0.0.1:$CADDY_PORT {
  reverse_proxy 127.0.0.1:$ECHO_PORT
}
CADDY
HOME="$WORK" XDG_DATA_HOME="$WORK" XDG_CONFIG_HOME="$WORK" GOMAXPROCS="$NGINX_WORKERS" \
  $PROXY_PIN caddy run --adapter caddyfile --config "$WORK/Caddyfile" >"$WORK/caddy.log" 2>&1 & PIDS+=($!)
CADDY_PID=$!
wait_port $CADDY_PORT

bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
$PROXY_PIN "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
PINPOINT_PID=$!
wait_port $PROXY_PORT
wait_port $API_PORT

KEY=$(bench_key "$BIN" "$WORK/pinpoint.toml")

bench_post_script "$WORK/post.lua"

declare -A RPS P99 CPU
TICKS_PER_SECOND=$(getconf CLK_TCK)
run() { # name kind url [header] -> appends req/s and p99 to RPS/P99[name-kind]; sets REQUESTS
  local out args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [ -n "${4:-}" ] && args+=(-H "$4")
  [ "$2" = post ] && args+=(-s "$WORK/post.lua")
  out=$($CLIENT_PIN wrk "${args[@]}" "$3")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 $2: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
  REQUESTS=$(echo "$out" | awk '/requests in/ {print $1}')
  RPS[$1-$2]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  P99[$1-$2]+="$(echo "$out" | awk '$1 == "99%" {print $2}') "
}
# A target's CPU ticks (utime + stime): Pinpoint's process, nginx's workers, HAProxy's and
# Caddy's processes.
pids_of() {
  case $1 in
    nginx) pgrep -P "$(cat "$WORK/nginx-proxy.pid")" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    caddy) echo "$CADDY_PID" ;;
    *) echo "$PINPOINT_PID" ;;
  esac
}
ticks_of() { for pid in $(pids_of "$1"); do cat "/proc/$pid/stat"; done | awk '{ t += $14 + $15 } END { print t + 0 }'; }
# Pinpoint's CPU ticks by thread: the proxy workers' user and kernel time (pinpoint-w0..,
# and the main thread, which serves the api and background work: next to nothing here),
# the decision log's writer (pinpoint-decisions, which encodes records, and sqlx's SQLite
# thread) and the access-log writer, as "w_user w_kernel decisions access_log".
thread_ticks() {
  cat /proc/"$PINPOINT_PID"/task/*/stat 2>/dev/null | awk '
    $2 == "(pinpoint)" || $2 ~ /^\(pinpoint-w[0-9]+\)$/ { wu += $14; wk += $15 }
    $2 ~ /^\(sqlx-sqlite/ || $2 == "(pinpoint-decisi)" { d += $14 + $15 }
    $2 == "(pinpoint-log)" { l += $14 + $15 }
    END { print wu + 0, wk + 0, d + 0, l + 0 }'
}
declare -A THREAD_TICKS REQUESTS_TOTAL
run_measured() { # as run, and appends the target's CPU microseconds per request to CPU[name-kind]
  local ticks_before ticks_after threads_before threads_after
  ticks_before=$(ticks_of "$1")
  threads_before=$(thread_ticks)
  run "$@"
  ticks_after=$(ticks_of "$1")
  threads_after=$(thread_ticks)
  CPU[$1-$2]+="$(awk -v hz="$TICKS_PER_SECOND" -v t0="$ticks_before" -v t1="$ticks_after" -v n="$REQUESTS" \
    'BEGIN { printf "%.2f", (t1 - t0) * 1e6 / hz / n }') "
  THREAD_TICKS[$1-$2]=$(echo "${THREAD_TICKS[$1-$2]:-0 0 0 0} $threads_before $threads_after" | awk \
    '{ for (i = 1; i <= 4; i++) printf "%d ", $i + $(i + 8) - $(i + 4) }')
  REQUESTS_TOTAL[$1-$2]=$((${REQUESTS_TOTAL[$1-$2]:-0} + REQUESTS))
}
median() { python3 -c "import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))" "$@"; }
median_ms() { # wrk latencies (us/ms/s) -> median in ms
  python3 -c "
import statistics, sys
unit = {'us': 0.001, 'ms': 1.0, 's': 1000.0}
def ms(v):
    for u in ('us', 'ms', 's'):
        if v.endswith(u): return float(v[:-len(u)]) * unit[u]
print('%.2fms' % statistics.median(ms(v) for v in sys.argv[1:]))" "$@"
}

# Every proxy (nginx, HAProxy, Caddy, bare, chain, and key) runs ROUNDS times, in short
# runs that alternate, so each round's runs see the same machine: on a shared (noisy)
# machine long runs compare two different moments (nginx alone, measured once, moved
# between 31,800 and 57,600 GET/s from one run to the next here). The order rotates every
# round, so a drift over the run favours none.
nginx() { run_measured nginx "$1" "http://127.0.0.1:$NGINX_PORT/bare/x"; }
haproxy() { run_measured haproxy "$1" "http://127.0.0.1:$HAPROXY_PORT/bare/x"; }
caddy() { run_measured caddy "$1" "http://127.0.0.1:$CADDY_PORT/bare/x"; }
bare() { run_measured bare "$1" "http://127.0.0.1:$PROXY_PORT/bare/x"; }
chain() { run_measured chain "$1" "http://127.0.0.1:$PROXY_PORT/chain/x" "Authorization: Bearer $KEY"; }
key() { run_measured key "$1" "http://127.0.0.1:$PROXY_PORT/key/x" "Authorization: Bearer $KEY"; }
PINPOINT_TARGETS=(bare chain)
[ "${BENCH_BREAKDOWN:-0}" = 1 ] && PINPOINT_TARGETS+=(key)
TARGETS=(nginx haproxy caddy "${PINPOINT_TARGETS[@]}")
for kind in get post; do
  run direct "$kind" "http://127.0.0.1:$ECHO_PORT/bare/x"
  for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((${#TARGETS[@]} - 1))); do
      "${TARGETS[$(((i + round) % ${#TARGETS[@]}))]}" "$kind"
    done
  done
done

printf '\n%-10s %-5s %12s %10s %14s   %s\n' target kind "req/s" p99 "CPU" "(medians; every run's req/s)"
for kind in get post; do
  for name in direct nginx haproxy caddy "${PINPOINT_TARGETS[@]}"; do
    cpu="-"
    # shellcheck disable=SC2086
    [ -n "${CPU[$name-$kind]:-}" ] && cpu="$(printf '%.1f' "$(median ${CPU[$name-$kind]})") us/req"
    # shellcheck disable=SC2086
    printf '%-10s %-5s %12.0f %10s %14s   %s\n' "$name" "$kind" "$(median ${RPS[$name-$kind]})" \
      "$(median_ms ${P99[$name-$kind]})" "$cpu" "$(echo ${RPS[$name-$kind]} | cut -c1-60)..."
  done
done
echo
per_round() { # "higher|lower" base-values other-values -> median of the per-round ratios
  # other/base (req/s, higher is better) or base/other (CPU per request), with a 95%
  # bootstrap interval of that median
  python3 -c "
import random, statistics, sys
base, other = sys.argv[2].split(), sys.argv[3].split()
pairs = [(float(b), float(o)) for b, o in zip(base, other)]
ratios = [o / b if sys.argv[1] == 'higher' else b / o for b, o in pairs]
rng = random.Random(1)
medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
print('%.3f  (95%% interval %.3f-%.3f, %d rounds)' % (statistics.median(ratios), medians[50], medians[1949], len(ratios)))" "$@"
}
for kind in get post; do
  for name in haproxy caddy "${PINPOINT_TARGETS[@]}"; do
    printf '%-30s %s\n' "$name/nginx $kind throughput" "$(per_round higher "${RPS[nginx-$kind]}" "${RPS[$name-$kind]}")"
    printf '%-30s %s\n' "$name/nginx $kind CPU capacity" "$(per_round lower "${CPU[nginx-$kind]}" "${CPU[$name-$kind]}")"
  done
  for name in "${PINPOINT_TARGETS[@]:1}"; do
    printf '%-30s %s\n' "$name/bare $kind throughput" "$(per_round higher "${RPS[bare-$kind]}" "${RPS[$name-$kind]}")"
    printf '%-30s %s\n' "$name/bare $kind CPU capacity" "$(per_round lower "${CPU[bare-$kind]}" "${CPU[$name-$kind]}")"
  done
done
echo "(x/nginx and x/bare: the median of the rounds' ratios; throughput is req/s, CPU capacity is the base's CPU time per request over x's (nginx's workers, HAProxy's and Caddy's processes, Pinpoint's process), the throughput ratio when the proxy alone limits it; $DURATION s per run, $CONNECTIONS connections, $THREADS wrk threads, $(nproc) cores, all on one machine; $PLACEMENT)"
echo
# Where Pinpoint's CPU goes, over all rounds: the chain's extra time by thread (the kernel
# time of the workers is mostly socket I/O, the decision writer's mostly file writes).
printf '%-10s %-5s %14s %14s %14s %14s   %s\n' target kind "workers user" "workers kernel" \
  "decision log" "access log" "(Pinpoint CPU us/request, all rounds)"
for kind in get post; do
  for name in "${PINPOINT_TARGETS[@]}"; do
    # shellcheck disable=SC2086
    echo ${THREAD_TICKS[$name-$kind]} | awk -v hz="$TICKS_PER_SECOND" -v n="${REQUESTS_TOTAL[$name-$kind]}" \
      -v name="$name" -v kind="$kind" \
      '{ printf "%-10s %-5s %14.2f %14.2f %14.2f %14.2f\n", name, kind, $1 * 1e6 / hz / n, $2 * 1e6 / hz / n, $3 * 1e6 / hz / n, $4 * 1e6 / hz / n }'
  done
done

# Latency at the same load: wrk drives each proxy as hard as it goes, so its p99 compares
# different loads. Here each of nginx, bare and chain gets the same fixed rate, open loop,
# from h2load (HTTP/1.1, 32 connections, for BENCH_LATENCY_SECONDS, default 5): by default
# 60% of bare's median throughput above (BENCH_LATENCY_RPS sets it). Percentiles come from
# h2load's per-request log.
LATENCY_SECONDS="${BENCH_LATENCY_SECONDS:-5}"
latency() { # name kind url [header] -> one table row
  local rate=$5 args=(--h1 -t1 -c32 --rps=$(($5 / 32)) -D "$LATENCY_SECONDS" --log-file="$WORK/latency.log")
  [ -n "${4:-}" ] && args+=(-H "$4")
  [ "$2" = post ] && args+=(-d "$WORK/post.json" -H "Content-Type: application/json")
  rm -f "$WORK/latency.log"
  $CLIENT_PIN h2load "${args[@]}" "$3" >/dev/null 2>&1 || true
  python3 - "$WORK/latency.log" "$1" "$2" "$rate" "$LATENCY_SECONDS" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1])] if sys.argv[1] else []
ok = sorted(int(r[2]) for r in rows if r[1].startswith("2"))
failed = len(rows) - len(ok)
if not ok:
    print("%-10s %-5s  no successful requests" % (sys.argv[2], sys.argv[3]))
    sys.exit()
pick = lambda q: ok[min(len(ok) - 1, int(len(ok) * q))] / 1000
print("%-10s %-5s %10d %10.0f %8.2fms %8.2fms %8.2fms %8d" % (sys.argv[2], sys.argv[3], int(sys.argv[4]),
      len(ok) / float(sys.argv[5]), pick(0.5), pick(0.99), pick(0.999), failed))
PY
}
echo
printf '%-10s %-5s %10s %10s %10s %10s %10s %8s   %s\n' target kind "asked/s" "served/s" p50 p99 p99.9 "non-2xx" \
  "(latency at the same fixed load, h2load open loop)"
for kind in get post; do
  # shellcheck disable=SC2086
  rate="${BENCH_LATENCY_RPS:-$(python3 -c "import sys; print(int(float(sys.argv[1]) * 0.6))" "$(median ${RPS[bare-$kind]})")}"
  latency nginx "$kind" "http://127.0.0.1:$NGINX_PORT/bare/x" "" "$rate"
  latency bare "$kind" "http://127.0.0.1:$PROXY_PORT/bare/x" "" "$rate"
  latency chain "$kind" "http://127.0.0.1:$PROXY_PORT/chain/x" "Authorization: Bearer $KEY" "$rate"
done
