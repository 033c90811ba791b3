#!/usr/bin/env bash
# Rate limits counted in Redis against rate limits counted in the process, in one run: two
# Pinpoint processes with the benchmark's routes, one with `[cluster] redis` (a Redis server
# this script starts on loopback), one without. The chain route's rate limit ("generous",
# by key, sized not to trigger) then costs one Lua script round trip per request. Reports,
# for GET on the chain route, requests/s (median of BENCH_ROUNDS alternating wrk rounds of
# DURATION seconds) and p50/p99 at the same fixed load (h2load open loop, 60% of the local
# median) for both.
# Usage: bench/cluster.sh [seconds-per-run] (default 1). Environment: BENCH_ROUNDS (default
# 12), BENCH_PIN=1 (see bench_placement in lib.sh), BENCH_LATENCY_SECONDS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION="${1:-1}"
ROUNDS="${BENCH_ROUNDS:-12}"
LATENCY_SECONDS="${BENCH_LATENCY_SECONDS:-5}"
bench_placement
ECHO_PORT=19010 LOCAL_PORT=19011 LOCAL_API=19012 REDIS_PROXY=19013 REDIS_API=19014 REDIS_PORT=19015

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need h2load || ! need redis-server; then
  apt-get update -qq && apt-get install -y -qq wrk nghttp2-client redis-server >/dev/null
fi

cargo build --release -q -p pinpoint
BIN=target/release/pinpoint
bench_workdir

$CLIENT_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT
$CLIENT_PIN redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!)
wait_port $REDIS_PORT

mkdir -p "$WORK/local" "$WORK/redis"
bench_config "$WORK/local" "$LOCAL_PORT" "$LOCAL_API" "$ECHO_PORT"
bench_config "$WORK/redis" "$REDIS_PROXY" "$REDIS_API" "$ECHO_PORT"
printf '\n[cluster]\nredis = "redis://127.0.0.1:%s"\n' "$REDIS_PORT" >>"$WORK/redis/pinpoint.toml"
for target in local redis; do
  $PROXY_PIN "$BIN" serve --config "$WORK/$target/pinpoint.toml" >"$WORK/$target.log" 2>&1 & PIDS+=($!)
done
wait_port $LOCAL_PORT; wait_port $REDIS_PROXY
LOCAL_KEY=$(bench_key "$BIN" "$WORK/local/pinpoint.toml")
REDIS_KEY=$(bench_key "$BIN" "$WORK/redis/pinpoint.toml")

declare -A RUNS
run() { # target port key -> requests/s of one wrk run
  $CLIENT_PIN wrk -t2 -c64 -d"${DURATION}s" -H "Authorization: Bearer $3" "http://127.0.0.1:$2/chain/x" \
    | awk '/Requests\/sec/ {print $2}'
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 0 ]; then order="local redis"; else order="redis local"; fi
  for target in $order; do
    if [ "$target" = local ]; then r=$(run local $LOCAL_PORT "$LOCAL_KEY"); else r=$(run redis $REDIS_PROXY "$REDIS_KEY"); fi
    RUNS[$target]="${RUNS[$target]:-} $r"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
LOCAL_RPS=$(echo "${RUNS[local]}" | median)
REDIS_RPS=$(echo "${RUNS[redis]}" | median)
RATE=$(python3 -c "print(int($LOCAL_RPS * 0.6))")

latency() { # target port key -> "p50 p99" in ms at $RATE requests/s
  rm -f "$WORK/latency.log"
  $CLIENT_PIN h2load --h1 -t1 -c32 --rps=$((RATE / 32)) -D "$LATENCY_SECONDS" --log-file="$WORK/latency.log" \
    -H "Authorization: Bearer $3" "http://127.0.0.1:$2/chain/x" >/dev/null 2>&1 || true
  python3 - "$WORK/latency.log" <<'PY'
import sys
us = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
pick = lambda q: us[min(len(us) - 1, int(q * len(us)))] / 1000
print(f"{pick(0.5):.2f} {pick(0.99):.2f}")
PY
}
read -r LOCAL_P50 LOCAL_P99 <<<"$(latency local $LOCAL_PORT "$LOCAL_KEY")"
read -r REDIS_P50 REDIS_P99 <<<"$(latency redis $REDIS_PROXY "$REDIS_KEY")"

echo "bench/cluster.sh: chain GET, $PLACEMENT, $ROUNDS rounds of ${DURATION}s; latency at $RATE req/s for ${LATENCY_SECONDS}s"
printf '%-22s %12s %10s %10s\n' "rate limits" "requests/s" "p50 ms" "p99 ms"
printf '%-22s %12.0f %10s %10s\n' "in the process" "$LOCAL_RPS" "$LOCAL_P50" "$LOCAL_P99"
printf '%-22s %12.0f %10s %10s\n' "in Redis" "$REDIS_RPS" "$REDIS_P50" "$REDIS_P99"
python3 -c "print(f'Redis/process throughput {$REDIS_RPS / $LOCAL_RPS:.2f}, added p99 {$REDIS_P99 - $LOCAL_P99:+.2f} ms')"
