# Shared by the bench scripts: the benchmark's Pinpoint config and its API key.
# shellcheck shell=bash

wait_port() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}

# bench_nginx NAME PORT ECHO_PORT WORKERS [LISTEN_OPTIONS] [SERVER_LINES] [HTTP_LINES]
# [MAIN_LINES]: writes $WORK/nginx-NAME.conf, nginx as a plain reverse proxy on
# 127.0.0.1:PORT to the echo upstream (a keep-alive pool, an access log, client connections
# kept open as Pinpoint keeps them: nginx closes one after 1000 requests by default, which
# an open-loop load generator does not recover from), with the extra lines given, and
# starts it with $PROXY_PIN; its pid file is $WORK/nginx-NAME.pid (stopped on exit).
bench_nginx() {
  local name=$1 port=$2 echo_port=$3 workers=$4 listen_options=${5:-} server_lines=${6:-} http_lines=${7:-}
  local main_lines=${8:-}
  cat > "$WORK/nginx-$name.conf" <<NGINX
$main_lines
worker_processes $workers;
pid $WORK/nginx-$name.pid;
error_log $WORK/nginx-$name-error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx-$name-access.log;
  keepalive_requests 1000000;
  $http_lines
  upstream echo { server 127.0.0.1:$echo_port; keepalive 128; }
  server {
    listen 127.0.0.1:$port $listen_options;
    $server_lines
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
  $PROXY_PIN "$(command -v nginx || echo /usr/sbin/nginx)" -c "$WORK/nginx-$name.conf" -p "$WORK"
  wait_port "$port"
}

# bench_config WORK PROXY_PORT API_PORT ECHO_PORT: writes $WORK/pinpoint.toml, the
# benchmark's routes (bench/routes.toml: "bare" and "chain") behind a [server] section.
bench_config() {
  local WORK=$1 PROXY_PORT=$2 API_PORT=$3 ECHO_PORT=$4
cat > "$WORK/pinpoint.toml" <<TOML
[server]
proxy_listen = "127.0.0.1:$PROXY_PORT"
api_listen = "127.0.0.1:$API_PORT"
data_dir = "$WORK/data"
reload_poll_ms = 0

TOML
  sed "s/@ECHO_ADDR@/127.0.0.1:$ECHO_PORT/" bench/routes.toml >>"$WORK/pinpoint.toml"
}

# bench_key BIN CONFIG: prints an API key of a user whose role grants exactly the chain
# route's permissions.
bench_key() {
  local BIN=$1 CONFIG=$2 USER_ID ROLE_ID KEY
  cli() { "$BIN" "$@" --config "$CONFIG"; }
  USER_ID=$(cli users create bench-user | awk '{print $1}')
  ROLE_ID=$(cli roles create bench-orders --permission orders:read --permission orders:write | awk '{print $1}')
  cli roles assign "$ROLE_ID" "$USER_ID" >/dev/null
  KEY=$(cli keys create bench --owner "$USER_ID" | sed -n 's/^key (shown only now): //p')
  [ -n "$KEY" ] || { echo "could not create the bench key" >&2; exit 1; }
  echo "$KEY"
}

# bench_post_script FILE.lua: writes a wrk script that sends the benchmarks' POST: a 1 KiB
# JSON body (an order's items and a note), valid JSON so the WAF inspects all of it; the
# body alone goes to FILE.json.
bench_post_script() {
  python3 - "$1" <<'PY'
import json, sys
items = []
while len(json.dumps({"items": items + [{"sku": "x" * 40, "qty": 0}], "note": ""})) < 1024:
    items.append({"sku": "x" * 40, "qty": len(items)})
body = json.dumps({"items": items, "note": ""})
body = json.dumps({"items": items, "note": "n" * (1024 - len(body))})
assert len(body) == 1024, len(body)
open(sys.argv[1].removesuffix(".lua") + ".json", "w").write(body)
open(sys.argv[1], "w").write(
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(body))
PY
}

# bench_placement: BENCH_PIN=1 (with two or more CPUs) gives the proxy under test CPU 0 to
# itself and puts the load generator and the upstream on the others, so the figures measure
# the proxy, not what it shares a core with; by default everything shares every core. Sets
# PROXY_PIN and CLIENT_PIN (taskset prefixes, or nothing), NGINX_WORKERS (one when pinned,
# else one per CPU) and PLACEMENT (said in the reports).
bench_placement() {
  if [ "${BENCH_PIN:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    PROXY_PIN="taskset -c 0" CLIENT_PIN="taskset -c 1-$(($(nproc) - 1))" NGINX_WORKERS=1
    PLACEMENT="proxy pinned to CPU 0, wrk and upstream on the rest"
  else
    PROXY_PIN="" CLIENT_PIN="" NGINX_WORKERS=$(nproc)
    PLACEMENT="all processes share all cores"
  fi
}

# bench_workdir: WORK (a fresh temporary directory) and PIDS (processes to stop), with an
# EXIT trap that stops them and every daemon whose pid file is in WORK (nginx), then
# removes WORK.
bench_workdir() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pidfile in "$WORK"/*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
