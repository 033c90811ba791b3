#!/usr/bin/env bash
# HTTPS and HTTP/2: Pinpoint's bare route against nginx, both terminating TLS with the same
# certificate and key, both proxying to the same echo upstream, in the same run:
#   https   HTTP/1.1 over TLS, wrk (keep-alive, 64 connections)
#   h2      HTTP/2 over TLS, h2load (16 connections x 10 streams, BENCH_H2_REQUESTS each run)
# Pinpoint and nginx alternate in BENCH_ROUNDS short rounds (default 12 of 2 s); the script
# prints the median requests/s and the median p99 latency of each, and Pinpoint/nginx.
# Equal worker counts: nginx runs as many workers as Pinpoint has cores (2 here, or 1 with
# BENCH_PIN=1, which pins both proxies to CPU 0 and the clients and upstream to the rest).
# Usage: bench/tls.sh [seconds-per-run]. Needs nginx, wrk, h2load (nghttp2-client) and
# openssl; installs the first three from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION="${1:-2}"
ROUNDS="${BENCH_ROUNDS:-12}"
H2_REQUESTS="${BENCH_H2_REQUESTS:-30000}"
bench_placement
ECHO_PORT=19500 NGINX_PORT=19501 PROXY_PORT=19502 API_PORT=19503

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] || ! command -v wrk >/dev/null || ! command -v h2load >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx wrk nghttp2-client >/dev/null
fi

cargo build --release -q -p pinpoint
BIN=target/release/pinpoint
bench_workdir

# One certificate for both (ECDSA P-256, as most sites serve).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

$CLIENT_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT

bench_nginx tls "$NGINX_PORT" "$ECHO_PORT" "$NGINX_WORKERS" "ssl http2" \
  "ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"

bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
# TLS on the proxy listener, with nginx's certificate.
sed -i "s|^reload_poll_ms = 0|reload_poll_ms = 0\nproxy_tls = { certificates = [{ cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }] }|" "$WORK/pinpoint.toml"
$PROXY_PIN "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
wait_port $PROXY_PORT

declare -A RPS P99
run_https() { # name port
  local out
  out=$($CLIENT_PIN wrk -t2 -c64 -d"${DURATION}s" --latency "https://localhost:$2/bare/x")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 https: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
  RPS[$1-https]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  P99[$1-https]+="$(echo "$out" | awk '$1 == "99%" {v = $2; if (v ~ /ms$/) {sub("ms", "", v)} else if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /s$/) {sub("s", "", v); v *= 1000}; print v}') "
}
run_h2() { # name port
  local out
  # A request count, not a duration: a timed run counts the streams open at its end as failed.
  out=$($CLIENT_PIN h2load -n "$H2_REQUESTS" -c16 -m10 --log-file="$WORK/h2.log" "https://localhost:$2/bare/x" 2>&1)
  if ! echo "$out" | grep -q "requests:.* 0 failed, 0 errored"; then echo "$1 h2: failures" >&2; echo "$out" >&2; exit 1; fi
  if ! echo "$out" | grep -q "Application protocol: h2"; then echo "$1 h2: not HTTP/2" >&2; exit 1; fi
  RPS[$1-h2]+="$(echo "$out" | awk '/finished in/ {print $4}') "
  P99[$1-h2]+="$(python3 -c "
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
print(d[int(len(d) * 0.99)] / 1000)" "$WORK/h2.log") "
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 0 ]; then order=(pinpoint nginx); else order=(nginx pinpoint); fi
  for name in "${order[@]}"; do
    port=$PROXY_PORT
    [ "$name" = nginx ] && port=$NGINX_PORT
    run_https "$name" "$port"
    run_h2 "$name" "$port"
  done
done

median() { python3 -c "import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))" "$@"; }
printf '\n%-16s %12s %12s\n' target "req/s" "p99 (ms)"
for name in nginx-https pinpoint-https nginx-h2 pinpoint-h2; do
  # shellcheck disable=SC2086
  printf '%-16s %12.0f %12.2f\n' "$name" "$(median ${RPS[$name]})" "$(median ${P99[$name]})"
done
for proto in https h2; do
  # shellcheck disable=SC2086
  python3 -c "import sys; print('pinpoint/nginx %-5s throughput %.3f' % (sys.argv[1], float(sys.argv[2]) / float(sys.argv[3])))" \
    "$proto" "$(median ${RPS[pinpoint-$proto]})" "$(median ${RPS[nginx-$proto]})"
done
