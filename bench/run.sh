#!/usr/bin/env bash
# Drives one upstream four ways on loopback, in one run, with wrk. The upstream is
# `pinpoint echo --fixed`: the same small body for every request, so its work does not grow
# with the identity headers the chain adds and the differences measured are the proxies'.
#   direct    wrk -> echo upstream
#   nginx     wrk -> nginx (plain reverse proxy, keep-alive upstream pool) -> echo upstream
#   bare      wrk -> pinpoint, a route with no access rules (every layer "not mine";
#             decision log and access log on) -> echo upstream
#   chain     wrk -> pinpoint, a route with the full chain: API-key auth, RBAC permission,
#             IP allow list, a rate limit sized not to trigger, decision log -> echo upstream
# for GET and for a 1 KiB JSON POST, and prints requests/s, p99 latency, Pinpoint/nginx and
# chain/bare ratios. bare and chain run in BENCH_ROUNDS rounds (default 12), in turns: bare
# first in odd rounds, chain first in even ones, so neither always runs on the later (and
# possibly differently loaded) machine. Medians are reported, and chain/bare is the median
# of the per-round ratios.
# Usage: bench/run.sh [seconds-per-run] (default 3). Needs root or sudo to install nginx/wrk.
# Environment: BENCH_ROUNDS, BENCH_PIN=1 (see below), BENCH_CONNECTIONS, BENCH_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION="${1:-${BENCH_DURATION:-3}}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
ROUNDS="${BENCH_ROUNDS:-12}"
# BENCH_PIN=1 gives the proxy under test (nginx or Pinpoint) CPU 0 to itself and puts wrk
# and the upstream on the other CPUs, so the figures measure the proxy, not what it
# shares a core with. Default: everything shares every core.
if [ "${BENCH_PIN:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PROXY_PIN="taskset -c 0" WRK_PIN="taskset -c 1-$(($(nproc) - 1))" NGINX_WORKERS=1
  PLACEMENT="proxy pinned to CPU 0, wrk and upstream on the rest"
else
  PROXY_PIN="" WRK_PIN="" NGINX_WORKERS=2
  PLACEMENT="all processes share all cores"
fi
ECHO_PORT=19000 NGINX_PORT=19001 PROXY_PORT=19002 API_PORT=19003

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need nginx || ! need wrk; then
  echo "installing nginx and wrk from Debian's packages"
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p pinpoint
BIN=target/release/pinpoint
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


$WRK_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT

cat > "$WORK/nginx.conf" <<NGINX
worker_processes $NGINX_WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx-access.log;
  upstream echo { server 127.0.0.1:$ECHO_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
$PROXY_PIN "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
wait_port $NGINX_PORT

bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
$PROXY_PIN "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
wait_port $PROXY_PORT
wait_port $API_PORT

KEY=$(bench_key "$BIN" "$WORK/pinpoint.toml")

python3 - "$WORK/post.lua" <<'PY'
import json, sys
body = json.dumps({"items": [{"sku": "x" * 40, "qty": i} for i in range(18)]})[:1024].ljust(1024)
open(sys.argv[1], "w").write(
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(body))
PY

declare -A RPS P99
run() { # name kind url [header] -> appends req/s and p99 to RPS/P99[name-kind]
  local out args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [ -n "${4:-}" ] && args+=(-H "$4")
  [ "$2" = post ] && args+=(-s "$WORK/post.lua")
  out=$($WRK_PIN wrk "${args[@]}" "$3")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 $2: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
  RPS[$1-$2]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  P99[$1-$2]+="$(echo "$out" | awk '$1 == "99%" {print $2}') "
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

# bare and chain alternate, ROUNDS times each, so both see the same machine: on a shared
# (noisy) machine one long run each would compare two different moments. Which goes first
# alternates too (bare-chain, chain-bare, ...), so a drift over the run favours neither.
bare() { run bare "$1" "http://127.0.0.1:$PROXY_PORT/bare/x"; }
chain() { run chain "$1" "http://127.0.0.1:$PROXY_PORT/chain/x" "Authorization: Bearer $KEY"; }
for kind in get post; do
  run direct "$kind" "http://127.0.0.1:$ECHO_PORT/bare/x"
  run nginx "$kind" "http://127.0.0.1:$NGINX_PORT/bare/x"
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then bare "$kind"; chain "$kind"; else chain "$kind"; bare "$kind"; fi
  done
done

printf '\n%-10s %-5s %12s %10s   %s\n' target kind "req/s" p99 "(medians; every run's req/s)"
for kind in get post; do
  for name in direct nginx bare chain; do
    # shellcheck disable=SC2086
    printf '%-10s %-5s %12.0f %10s   %s\n' "$name" "$kind" "$(median ${RPS[$name-$kind]})" \
      "$(median_ms ${P99[$name-$kind]})" "${RPS[$name-$kind]}"
  done
done
echo
ratio() { python3 -c "import sys; print('%-28s %.3f' % (sys.argv[1], float(sys.argv[2]) / float(sys.argv[3])))" "$@"; }
per_round() { # kind -> median of the per-round chain/bare ratios, then each round's
  python3 -c "
import statistics, sys
bare, chain = sys.argv[1].split(), sys.argv[2].split()
ratios = [float(c) / float(b) for b, c in zip(bare, chain)]
print('%.3f' % statistics.median(ratios), '  rounds:', ' '.join('%.3f' % r for r in ratios))" "${RPS[bare-$1]}" "${RPS[chain-$1]}"
}
for kind in get post; do
  # shellcheck disable=SC2086
  ratio "bare/nginx $kind throughput" "$(median ${RPS[bare-$kind]})" "$(median ${RPS[nginx-$kind]})"
  # shellcheck disable=SC2086
  ratio "chain/nginx $kind throughput" "$(median ${RPS[chain-$kind]})" "$(median ${RPS[nginx-$kind]})"
  printf '%-28s %s\n' "chain/bare $kind throughput" "$(per_round "$kind")"
done
echo "(chain/bare: the median of $ROUNDS rounds' ratios; $DURATION s per run, $CONNECTIONS connections, $THREADS wrk threads, $(nproc) cores, all on one machine; $PLACEMENT)"
