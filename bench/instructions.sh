#!/usr/bin/env bash
# Counts the user-space instructions Pinpoint executes per request, for the bare route and
# the full-chain route, under valgrind's callgrind. Instruction counts do not depend on
# what else the machine is doing, so this is the steady figure to compare changes by,
# where wrk's requests/s swing with the neighbours. Kernel work (sockets, file writes) is
# not counted. Background work (decision-log batches, the access-log writer) is included,
# amortised over the requests of the window.
#
# Note: under valgrind, sha2 takes its portable code path (no SHA-NI), which costs about
# 6,900 instructions per HMAC instead of a few hundred; the script prints that share so it
# can be subtracted.
#
# It also prints the share of the edge (`edge::canonical_request`: head limits, Host, the
# canonical method and path), inclusive of what it calls, for the bare and chain routes
# (canonical paths, the common case) and for `dirty`: the bare route asked for through a
# path that must be rewritten (`/bare/a/./b//../x%2Dy`).
#
# `headers` (only when BENCH_ROUTES names it): the bare route with a browser's dozen headers.
#
# And for a 1 KiB JSON POST (bench_post_script) through a route without the WAF (`waf-off`)
# and with the built-in WAF (`waf-on`): what the WAF costs.
#
# Usage: bench/instructions.sh [seconds-per-route] (default 10). Needs valgrind (apt-get
# install valgrind) and wrk. BENCH_KEEP=DIR keeps the callgrind dumps.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_ROUTE="${1:-10}"
ECHO_PORT=19100 PROXY_PORT=19102 API_PORT=19103
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)" >&2; exit 1; }
done

cargo build --release -q -p pinpoint
BIN=$PWD/target/release/pinpoint
bench_workdir

"$BIN" echo --fixed --listen "127.0.0.1:$ECHO_PORT" 2>/dev/null & PIDS+=($!)
wait_port $ECHO_PORT
bench_config "$WORK" "$PROXY_PORT" "$API_PORT" "$ECHO_PORT"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
  "$BIN" serve --config "$WORK/pinpoint.toml" >"$WORK/pinpoint.log" 2>&1 & VALGRIND=$!
PIDS+=("$VALGRIND")
wait_port $PROXY_PORT
wait_port $API_PORT
KEY=$(bench_key "$BIN" "$WORK/pinpoint.toml")

declare -A PER_REQUEST SHA EDGE
bench_post_script "$WORK/post.lua"
printf '%-8s %9s %14s %12s %12s\n' route requests "instr/request" "of which sha2" "of which edge"
# BENCH_ROUTES="waf-off waf-on" measures only those (the summaries need their pairs).
for route in ${BENCH_ROUTES:-bare chain dirty waf-off waf-on}; do
  header=()
  [ "$route" = chain ] && header=(-H "Authorization: Bearer $KEY")
  # headers: the bare route asked for with the dozen headers a browser sends.
  [ "$route" = headers ] && header=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0"
    -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" -H "Accept-Language: en-GB,en;q=0.9"
    -H "Accept-Encoding: gzip, deflate, br" -H "Referer: https://shop.example/orders" -H "Cookie: theme=dark; lang=en"
    -H "Sec-Fetch-Site: same-origin" -H "Sec-Fetch-Mode: navigate" -H "Sec-Fetch-Dest: document"
    -H "Upgrade-Insecure-Requests: 1" -H "Cache-Control: max-age=0" -H "DNT: 1")
  # waf-off and waf-on: the 1 KiB JSON POST through a route without and with the WAF.
  [[ $route == waf-* ]] && header=(-s "$WORK/post.lua")
  url="http://127.0.0.1:$PROXY_PORT/$route/x"
  [ "$route" = headers ] && url="http://127.0.0.1:$PROXY_PORT/bare/x"
  [ "$route" = dirty ] && url="http://127.0.0.1:$PROXY_PORT/bare/a/./b//../x%2Dy"
  wrk -t1 -c4 -d2s "${header[@]}" "$url" >/dev/null # warm up: connections, caches
  callgrind_control -z "$VALGRIND" >/dev/null 2>&1
  callgrind_control -i on "$VALGRIND" >/dev/null 2>&1
  requests=$(wrk -t1 -c8 -d"${SECONDS_PER_ROUTE}s" "${header[@]}" "$url" | awk '/requests in/ {print $1}')
  # Let the decision log write this window's batch (it flushes every 50 ms) before counting.
  sleep 1
  callgrind_control -i off "$VALGRIND" >/dev/null 2>&1
  callgrind_control -d "$route" "$VALGRIND" >/dev/null 2>&1
  dump=$(ls -t "$WORK"/callgrind.out.* | head -1)
  # BENCH_KEEP=DIR keeps each route's callgrind dump there (for callgrind_annotate).
  [ -n "${BENCH_KEEP:-}" ] && mkdir -p "$BENCH_KEEP" && cp "$dump" "$BENCH_KEEP/callgrind.$route"
  annotated=$(callgrind_annotate "$dump" 2>/dev/null)
  total=$(echo "$annotated" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  sha=$(echo "$annotated" | awk '/sha2::sha256::soft::compress/ {gsub(",", "", $1); print $1; exit}')
  # Every function, however small (the default threshold hides the last 1% of the cost).
  inclusive=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null)
  edge=$(echo "$inclusive" | awk '/edge::canonical_request/ && !done {gsub(",", "", $1); print $1; done = 1}')
  PER_REQUEST[$route]=$((total / requests))
  SHA[$route]=$(( ${sha:-0} / requests ))
  EDGE[$route]=$(( ${edge:-0} / requests ))
  printf '%-8s %9d %14d %12d %12d\n' "$route" "$requests" $((total / requests)) $(( ${sha:-0} / requests )) \
    "${EDGE[$route]}"
done
have() { for r in "$@"; do [ -n "${PER_REQUEST[$r]:-}" ] || return 1; done; }
have bare chain && python3 -c "
import sys
b, c, sha = (int(v) for v in sys.argv[1:])
print('chain/bare instructions %.3f: the chain costs %.1f%% more' % (c / b, (c - b) * 100 / b))
print('without the portable-sha2 share: %.1f%% more (with SHA-NI an HMAC is a few hundred)' % ((c - sha - b) * 100 / b))" \
  "${PER_REQUEST[bare]}" "${PER_REQUEST[chain]}" "${SHA[chain]}"
have bare chain dirty && python3 -c "
import sys
b, c, d, eb, ec, ed = (int(v) for v in sys.argv[1:])
print('edge (canonical request): %.2f%% of a bare request, %.2f%% of a chain request, %.2f%% of a request whose path is rewritten' % (eb * 100 / b, ec * 100 / c, ed * 100 / d))" \
  "${PER_REQUEST[bare]}" "${PER_REQUEST[chain]}" "${PER_REQUEST[dirty]}" "${EDGE[bare]}" "${EDGE[chain]}" "${EDGE[dirty]}"
have waf-off waf-on && python3 -c "
import sys
off, on = (int(v) for v in sys.argv[1:])
print('waf-on/waf-off instructions %.3f: the WAF costs %.1f%% of a 1 KiB JSON POST' % (on / off, (on - off) * 100 / off))" \
  "${PER_REQUEST[waf-off]}" "${PER_REQUEST[waf-on]}"
true
