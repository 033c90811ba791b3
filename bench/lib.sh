# Shared by the bench scripts: the benchmark's Pinpoint config and its API key.
# shellcheck shell=bash

wait_port() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}

# bench_config WORK PROXY_PORT API_PORT ECHO_PORT: writes $WORK/pinpoint.toml with the two
# routes: "bare" (no access rules) and "chain" (key auth, RBAC permission, IP allow list,
# a rate limit sized not to trigger; a deny rule and a policy rule that never match).
bench_config() {
  local WORK=$1 PROXY_PORT=$2 API_PORT=$3 ECHO_PORT=$4
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
