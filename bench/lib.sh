# Shared by the bench scripts: the benchmark's Pinpoint config and its API key.
# shellcheck shell=bash

wait_port() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
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
