#!/usr/bin/env bash
# What the WAF costs: the same 1 KiB JSON POST (bench/post.py's body) sent with wrk
#   waf-off        wrk -> pinpoint, a route without the WAF -> echo upstream
#   waf-on         wrk -> pinpoint, the same route with the built-in WAF -> echo upstream
#   nginx          wrk -> nginx, plain reverse proxy -> echo upstream
#   nginx-crs      wrk -> nginx with ModSecurity and the OWASP CRS at paranoia 1 (Debian's
#                  libnginx-mod-http-modsecurity and modsecurity-crs) -> echo upstream
# waf-on and waf-off alternate in BENCH_ROUNDS short rounds (default 24 of 1 s; the order
# rotates), and the script prints the median requests/s of each target, waf-on/waf-off as
# the median of the per-round ratios with a 95% bootstrap interval, and Pinpoint's CPU per
# request. Instructions per request (the deterministic figure) are bench/instructions.sh's
# `waf-off` and `waf-on` rows.
# Usage: bench/waf.sh [seconds-per-run]. Installs nginx, the ModSecurity module, the CRS
# and wrk from Debian's packages when missing (needs root or sudo). BENCH_PIN=1 as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION="${1:-1}"
ROUNDS="${BENCH_ROUNDS:-24}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
bench_placement
ECHO_PORT=19400 NGINX_PORT=19401 PROXY_PORT=19402 API_PORT=19403 NGINX_CRS_PORT=19404

if [ ! -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ] || [ ! -d /usr/share/modsecurity-crs/rules ] \
  || ! command -v wrk >/dev/null; then
  echo "installing nginx, its ModSecurity module, the CRS and wrk from Debian's packages"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx libnginx-mod-http-modsecurity modsecurity-crs wrk >/dev/null
fi

cargo build --release -q -p pinpoint
BIN=target/release/pinpoint
bench_workdir

$CLIENT_PIN "$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT

# The CRS as libmodsecurity runs it for Pinpoint's own CRS engine, but blocking.
cat > "$WORK/modsecurity.conf" <<MODSEC
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 10485760
SecRequestBodyLimitAction ProcessPartial
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.+-]+\+)?json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecAuditEngine Off
Include /etc/modsecurity/crs/crs-setup.conf
Include /usr/share/modsecurity-crs/rules/REQUEST-*.conf
MODSEC
for conf in plain crs; do
  port=$NGINX_PORT modsec=""
  if [ $conf = crs ]; then
    port=$NGINX_CRS_PORT
    modsec="modsecurity on; modsecurity_rules_file $WORK/modsecurity.conf;"
  fi
  bench_nginx "$conf" "$port" "$ECHO_PORT" "$NGINX_WORKERS" "" "$modsec" "client_body_buffer_size 64k;" \
    "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;"
done

bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
$PROXY_PIN "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
PINPOINT_PID=$!
wait_port $PROXY_PORT

bench_post_script "$WORK/post.lua"
declare -A RPS CPU
TICKS_PER_SECOND=$(getconf CLK_TCK)
run() { # name url -> appends req/s (and, for Pinpoint, CPU us/request)
  local out ticks_before ticks_after requests
  ticks_before=$(awk '{print $14 + $15}' "/proc/$PINPOINT_PID/stat")
  out=$($CLIENT_PIN wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/post.lua" "$2")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
  ticks_after=$(awk '{print $14 + $15}' "/proc/$PINPOINT_PID/stat")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  CPU[$1]+="$(awk -v hz="$TICKS_PER_SECOND" -v t0="$ticks_before" -v t1="$ticks_after" -v n="$requests" \
    'BEGIN { printf "%.2f", (t1 - t0) * 1e6 / hz / n }') "
}
run nginx "http://127.0.0.1:$NGINX_PORT/waf-off/x"
run nginx-crs "http://127.0.0.1:$NGINX_CRS_PORT/waf-off/x"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 0 ]; then order=(waf-off waf-on); else order=(waf-on waf-off); fi
  for name in "${order[@]}"; do run "$name" "http://127.0.0.1:$PROXY_PORT/$name/x"; done
done
run nginx "http://127.0.0.1:$NGINX_PORT/waf-off/x"
run nginx-crs "http://127.0.0.1:$NGINX_CRS_PORT/waf-off/x"

median() { python3 -c "import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))" "$@"; }
printf '\n%-10s %12s %16s\n' target "req/s" "Pinpoint CPU"
for name in nginx nginx-crs waf-off waf-on; do
  cpu="-"
  # shellcheck disable=SC2086
  [[ $name == waf-* ]] && cpu="$(printf '%.1f' "$(median ${CPU[$name]})") us/req"
  # shellcheck disable=SC2086
  printf '%-10s %12.0f %16s\n' "$name" "$(median ${RPS[$name]})" "$cpu"
done
python3 - "${RPS[waf-off]}" "${RPS[waf-on]}" "${CPU[waf-off]}" "${CPU[waf-on]}" "${RPS[nginx]}" "${RPS[nginx-crs]}" <<'PY'
import random, statistics, sys
def per_round(base, other, higher):
    pairs = list(zip(map(float, base.split()), map(float, other.split())))
    ratios = [o / b if higher else b / o for b, o in pairs]
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return "%.3f (95%% interval %.3f-%.3f, %d rounds)" % (statistics.median(ratios), meds[50], meds[1949], len(ratios))
off, on, cpu_off, cpu_on, nginx, crs = sys.argv[1:]
print("\nwaf-on/waf-off throughput     ", per_round(off, on, True))
print("waf-on/waf-off CPU capacity   ", per_round(cpu_off, cpu_on, False))
m = lambda s: statistics.median(map(float, s.split()))
print("nginx-crs/nginx throughput     %.3f" % (m(crs) / m(nginx)))
print("waf-on/nginx-crs throughput    %.3f" % (m(on) / m(crs)))
PY
