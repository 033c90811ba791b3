#!/usr/bin/env bash
# Drives one upstream four ways on loopback, in one run, with wrk:
#   direct    wrk -> echo upstream
#   nginx     wrk -> nginx (plain reverse proxy, keep-alive upstream pool) -> echo upstream
#   bare      wrk -> pinpoint, a route with no access rules (every layer "not mine";
#             decision log and access log on) -> echo upstream
#   chain     wrk -> pinpoint, a route with the full chain: API-key auth, RBAC permission,
#             IP allow list, a rate limit sized not to trigger, decision log -> echo upstream
# for GET and for a 1 KiB JSON POST, and prints requests/s, p99 latency, Pinpoint/nginx and
# chain/bare ratios.
# Usage: bench/run.sh [seconds-per-run] (default 10). Needs root or sudo to install nginx/wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-${BENCH_DURATION:-10}}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
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

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}

"$BIN" echo --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 2;
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
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
wait_port $NGINX_PORT

cat > "$WORK/pinpoint.toml" <<TOML
[server]
proxy_listen = "127.0.0.1:$PROXY_PORT"
api_listen = "127.0.0.1:$API_PORT"
data_dir = "$WORK/data"
reload_poll_ms = 0

[upstreams.echo]
targets = ["127.0.0.1:$ECHO_PORT"]

[[routes]]
id = "bare"
path_prefix = "/bare"
upstream = "echo"

[[routes]]
id = "chain"
path_prefix = "/chain"
methods = ["GET", "POST"]
upstream = "echo"
permissions = { GET = "orders:read", POST = "orders:write" }
ip_allow = ["127.0.0.0/8"]

[[authz.deny]]
id = "never-matches"
roles = ["nobody"]

[[rate.limits]]
id = "generous"
by = "key"
requests = 100000000
per_seconds = 1
routes = ["chain"]

[[policy.rules]]
id = "no-deletes"
methods = ["DELETE"]
TOML
"$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & PIDS+=($!)
wait_port $PROXY_PORT
wait_port $API_PORT

# A user with a role granting exactly the chain route's permissions, and a key for it.
cli() { "$BIN" "$@" --config "$WORK/pinpoint.toml"; }
USER_ID=$(cli users create bench-user | awk '{print $1}')
ROLE_ID=$(cli roles create bench-orders --permission orders:read --permission orders:write | awk '{print $1}')
cli roles assign "$ROLE_ID" "$USER_ID" >/dev/null
KEY=$(cli keys create bench --owner "$USER_ID" | sed -n 's/^key (shown only now): //p')
[ -n "$KEY" ] || { echo "could not create the bench key" >&2; exit 1; }

python3 - "$WORK/post.lua" <<'PY'
import json, sys
body = json.dumps({"items": [{"sku": "x" * 40, "qty": i} for i in range(18)]})[:1024].ljust(1024)
open(sys.argv[1], "w").write(
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(body))
PY

declare -A RPS P99
run() { # name kind url [header]
  local out args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
  [ -n "${4:-}" ] && args+=(-H "$4")
  [ "$2" = post ] && args+=(-s "$WORK/post.lua")
  out=$(wrk "${args[@]}" "$3")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 $2: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
  RPS[$1-$2]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P99[$1-$2]=$(echo "$out" | awk '$1 == "99%" {print $2}')
}

for kind in get post; do
  run direct "$kind" "http://127.0.0.1:$ECHO_PORT/bare/x"
  run nginx "$kind" "http://127.0.0.1:$NGINX_PORT/bare/x"
  run bare "$kind" "http://127.0.0.1:$PROXY_PORT/bare/x"
  run chain "$kind" "http://127.0.0.1:$PROXY_PORT/chain/x" "Authorization: Bearer $KEY"
done

printf '\n%-10s %-5s %12s %10s\n' target kind "req/s" p99
for kind in get post; do
  for name in direct nginx bare chain; do
    printf '%-10s %-5s %12s %10s\n' "$name" "$kind" "${RPS[$name-$kind]}" "${P99[$name-$kind]}"
  done
done
echo
ratio() { python3 -c "import sys; print('%-28s %.3f' % (sys.argv[1], float(sys.argv[2]) / float(sys.argv[3])))" "$@"; }
for kind in get post; do
  ratio "bare/nginx $kind throughput" "${RPS[bare-$kind]}" "${RPS[nginx-$kind]}"
  ratio "chain/nginx $kind throughput" "${RPS[chain-$kind]}" "${RPS[nginx-$kind]}"
  ratio "chain/bare $kind throughput" "${RPS[chain-$kind]}" "${RPS[bare-$kind]}"
done
echo "($DURATION s per run, $CONNECTIONS connections, $THREADS wrk threads, $(nproc) cores, all on one machine)"
