#!/usr/bin/env bash
# bench/http-redis-compare.sh: an HTTP endpoint doing exactly one Redis read per
# request vs nginx `return 200` (issue 5), measured side by side.
#
# Strata: `strata serve --kv-l1=false` answering GET /v1/kv/bench/k.  With the
# L1 off every GET is one EVALSHA of tier_get.lua on the worker's pipelined
# Redis connection (the read script of the tiered path: value, version and
# lease state in one round trip); the Bloom filter is a local bit test.  The
# value was written once through PUT and is a Redis hit from then on (TTL 1 h,
# so no refresh load falls inside the run).  nginx returns the byte-identical
# JSON body with `return 200`.  Both get the same worker count; wrk drives both
# with 64 and 256 connections, rounds interleaved (bench/http-compare.sh does
# the measuring; every option of it can be passed through).
#
# After the run, Redis' INFO commandstats (reset just before measuring) shows
# how many EVALSHA and HMGET calls the measured requests made: with the current
# tier, redis_evalsha_per_request must be 1.0 (each script runs one HMGET,
# which Redis 7 counts too, so redis_hmget_per_request is 1.0 as well); with an
# HMGET-first read (docs/notes/kv-tier-hmget-fastpath.diff) a hit is one HMGET
# and no EVALSHA.
#
# usage: STRATA_BIN=build/kv-rel/strata [STRATA_BIN_B=other/strata] \
#        bench/http-redis-compare.sh [--rounds 5] [--duration 10] [--workers 1]
#        [--conns "64 256"] [--threads 2]
# STRATA_BIN_B: a second build measured in the same rounds (A/B of a change),
# same flags, same Redis and database (the key is written once, through A).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STRATA_BIN=${STRATA_BIN:-$ROOT/build/release/strata}
[ -x "$STRATA_BIN" ] || { echo "http-redis-compare: set STRATA_BIN to a Release strata binary" >&2; exit 69; }
command -v redis-server >/dev/null || { echo "http-redis-compare: redis-server not found" >&2; exit 69; }

TMP=$(mktemp -d /tmp/strata-http-redis.XXXXXX)
RPID=""
cleanup() {
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" \
  --logfile "$TMP/redis.log" &
RPID=$!
for _ in $(seq 1 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

BODY='{"ns":"bench","key":"k","value":"v","version":1}'
FLAGS="--listen 127.0.0.1:{port} --workers {workers} --db sqlite://$TMP/kv.db \
--redis redis://127.0.0.1:$RPORT --admin-token bench --kv-namespaces bench --kv-l1=false \
--kv-ttl 1h --max-connections 20000 --log-level warn"
SERVER_CMD="$STRATA_BIN serve --var-dir $TMP/var $FLAGS"
AWAIT_HIT="for i in \$(seq 1 200); do \
  [ \"\$(curl -s -D - -o /dev/null http://127.0.0.1:{port}/v1/kv/bench/k | tr -d '\r' | \
     awk -F': ' '/^X-Strata-Tier/ {print \$2}')\" = redis ] && break; sleep 0.05; done && \
test \"\$(curl -s http://127.0.0.1:{port}/v1/kv/bench/k)\" = '$BODY' && \
redis-cli -p $RPORT CONFIG RESETSTAT >/dev/null"
SETUP="curl -sf -X PUT -H 'Authorization: Bearer bench' -d '{\"value\":\"v\"}' \
http://127.0.0.1:{port}/v1/kv/bench/k >/dev/null && $AWAIT_HIT"
B=()
if [ -n "${STRATA_BIN_B:-}" ]; then
  B=(--server-cmd-b "$STRATA_BIN_B serve --var-dir $TMP/var_b $FLAGS" --setup-b "$AWAIT_HIT")
fi

OUT="$TMP/compare.out"
"$ROOT/bench/http-compare.sh" --path /v1/kv/bench/k --body "$BODY" --server-cmd "$SERVER_CMD" \
  --setup "$SETUP" "${B[@]}" "$@" | tee "$OUT"
STATS=$(redis-cli -p "$RPORT" INFO commandstats | tr -d '\r')
EVALSHA=$(echo "$STATS" | awk -F'[=,:]' '/^cmdstat_evalsha:/ {print $3}')
HMGET=$(echo "$STATS" | awk -F'[=,:]' '/^cmdstat_hmget:/ {print $3}')
REQS=$(awk -F= '/^strata(_b)?_requests_total=/ {n += $2} END {print n+0}' "$OUT")
echo "redis_evalsha_calls=${EVALSHA:-0}"
echo "redis_hmget_calls=${HMGET:-0}"
# Redis 7 counts the commands a script runs in commandstats too: tier_get.lua runs one HMGET.
awk -v e="${EVALSHA:-0}" -v h="${HMGET:-0}" -v r="$REQS" 'BEGIN{ if (r > 0) {
  printf "redis_evalsha_per_request=%.3f\n", e/r; printf "redis_hmget_per_request=%.3f\n", h/r } }'
