#!/usr/bin/env bash
# How much of the gap to nginx is the HTTP stack under Pinpoint (#18): the benchmark's GET,
# pinned as `BENCH_PIN=1 bench/run.sh` pins (each proxy alone on CPU 0, wrk and the upstream
# on the rest), through nginx (one worker), through `hyper_floor` (crates/pinpoint-gateway/
# examples/hyper_floor.rs: a hyper HTTP/1 proxy doing nothing but forwarding; `floor-auto`
# serves with hyper-util's HTTP/1-or-2 builder as Pinpoint does) and through Pinpoint's
# bare route; in alternating rounds, medians reported. Then latency at one fixed load
# (60% of nginx's median, h2load open loop, 32 connections, 5 s runs alternating, p50/p99
# medians over the runs): whether a tail comes from the stack or from Pinpoint's work.
# Usage: bench/floor.sh [rounds] (default 8, of 2 s each; latency runs: rounds / 2).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS="${1:-8}"
BENCH_PIN=1 bench_placement
ECHO_PORT=19200 NGINX_PORT=19201 PROXY_PORT=19202 API_PORT=19203 FLOOR_PORT=19204 AUTO_PORT=19205
cargo build --release -q -p pinpoint
cargo build --release -q -p pinpoint-gateway --example hyper_floor
BIN=target/release/pinpoint FLOOR=target/release/examples/hyper_floor
bench_workdir

$CLIENT_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT
bench_nginx proxy "$NGINX_PORT" "$ECHO_PORT" 1
$PROXY_PIN "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$ECHO_PORT" & PIDS+=($!)
$PROXY_PIN "$FLOOR" "127.0.0.1:$AUTO_PORT" "127.0.0.1:$ECHO_PORT" auto & PIDS+=($!)
bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
$PROXY_PIN "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
wait_port $FLOOR_PORT
wait_port $AUTO_PORT
wait_port $PROXY_PORT

declare -A URL=([nginx]="http://127.0.0.1:$NGINX_PORT/bare/x" [floor]="http://127.0.0.1:$FLOOR_PORT/bare/x"
  [floor-auto]="http://127.0.0.1:$AUTO_PORT/bare/x" [bare]="http://127.0.0.1:$PROXY_PORT/bare/x")
TARGETS=(nginx floor floor-auto bare)
declare -A SAMPLES
for target in "${TARGETS[@]}"; do $CLIENT_PIN wrk -t2 -c64 -d1s "${URL[$target]}" >/dev/null; done
for round in $(seq "$ROUNDS"); do
  for i in "${!TARGETS[@]}"; do
    target=${TARGETS[$(( (i + round) % ${#TARGETS[@]} ))]}
    rps=$($CLIENT_PIN wrk -t2 -c64 -d2s "${URL[$target]}" | awk '/Requests\/sec/ {print $2}')
    SAMPLES[$target]+="$rps "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
NGINX_RPS=$(echo "${SAMPLES[nginx]}" | median)
printf '%-11s %10s %9s\n' target "GET req/s" "x nginx"
for target in "${TARGETS[@]}"; do
  rps=$(echo "${SAMPLES[$target]}" | median)
  printf '%-11s %10.0f %9.2f\n' "$target" "$rps" "$(echo "$rps / $NGINX_RPS" | bc -l)"
done

RATE=$(python3 -c "import sys; print(int(float(sys.argv[1]) * 0.6))" "$NGINX_RPS")
declare -A P50 P99
for round in $(seq $(( (ROUNDS + 1) / 2 ))); do
  for i in "${!TARGETS[@]}"; do
    target=${TARGETS[$(( (i + round) % ${#TARGETS[@]} ))]}
    rm -f "$WORK/latency.log"
    $CLIENT_PIN h2load --h1 -t1 -c32 --rps=$((RATE / 32)) -D 5 --log-file="$WORK/latency.log" "${URL[$target]}" >/dev/null 2>&1 || true
    read -r p50 p99 < <(python3 - "$WORK/latency.log" <<'PY'
import sys
ok = sorted(int(r.split()[2]) for r in open(sys.argv[1]) if r.split()[1].startswith("2"))
print(ok[len(ok) // 2] / 1000, ok[min(len(ok) - 1, int(len(ok) * 0.99))] / 1000)
PY
)
    P50[$target]+="$p50 " P99[$target]+="$p99 "
  done
done
printf '\n%-11s %10s %10s   (ms at %d req/s, medians of %d runs)\n' target p50 p99 "$RATE" $(( (ROUNDS + 1) / 2 ))
for target in "${TARGETS[@]}"; do
  printf '%-11s %10.2f %10.2f\n' "$target" "$(echo "${P50[$target]}" | median)" "$(echo "${P99[$target]}" | median)"
done
