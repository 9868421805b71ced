#!/usr/bin/env bash
# bench/redpacket-compare.sh: red-packet grabs over HTTP through Strata vs
# redis-benchmark running the same EVALSHA (the composed grab script: per-user
# GCRA + LPOP + grabber record + event XADD) against the same Redis, in one
# run, interleaved rounds.
#
# Each round, for each side, a fresh packet of COUNT shares is created through
# the API and grabbed COUNT times by distinct users, 64 connections, so every
# call is a successful grab (the path that matters).  Strata's side is
# `strata bench redpacket` (which also verifies sums and that every grab was
# persisted); redis-benchmark calls the script directly on the packet's keys
# with a random user per call (-r), so a few calls may repeat a user ('already').
#
# usage: bench/redpacket-compare.sh [--rounds N] [--count N] [--connections N]
# Output: per-round lines, then key=value medians and the ratio strata/redis-benchmark.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=5
COUNT=10000
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "redpacket-compare: unknown argument $1" >&2; exit 64 ;;
  esac
done
BIN=${STRATA_BIN:-$ROOT/build/release/strata}
[ -x "$BIN" ] || { echo "redpacket-compare: build first (make build) or set STRATA_BIN" >&2; exit 69; }
command -v redis-benchmark >/dev/null || { echo "redpacket-compare: redis-benchmark missing (scripts/setup-deps --bench)" >&2; exit 69; }
TMP=$(mktemp -d /tmp/strata-rp-compare.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM

"$BIN" serve --var-dir "$TMP/var" --listen 127.0.0.1:0 --admin-token bench --user-burst 100 \
  --log-level info >"$TMP/serve.log" 2>&1 &
PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT=$(sed -n 's/.*event=ready.*listen=127.0.0.1:\([0-9]*\).*/\1/p' "$TMP/serve.log" | tail -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { cat "$TMP/serve.log" >&2; exit 1; }
RPORT=$(sed -n 's/^port //p' "$TMP/var/redis/redis.conf")
# The script as the server runs it: gcra.lua up to its call line, then the grab script.
SRC="$TMP/grab.lua"
sed '/-- STRATA_GCRA_CALL/,$d' "$ROOT/src/lib/protect/gcra.lua" > "$SRC"
cat "$ROOT/src/scenarios/redpacket/redpacket_grab.lua" >> "$SRC"
SHA=$(redis-cli -p "$RPORT" SCRIPT LOAD "$(cat "$SRC")")
echo "redpacket-compare: strata port $PORT, redis port $RPORT, $COUNT grabs per round, $CONNS connections, $ROUNDS rounds"

create() { # -> packet id
  curl -s -X POST "127.0.0.1:$PORT/v1/redpackets" -H 'Authorization: Bearer bench' \
    -d "{\"total_cents\":$((COUNT * 100)),\"count\":$COUNT,\"expires_in\":3600}" |
    sed 's/.*"id":"\([0-9a-f]*\)".*/\1/'
}
for r in $(seq 1 "$ROUNDS"); do
  out=$("$BIN" bench redpacket --url "http://127.0.0.1:$PORT" --admin-token bench --var-dir "$TMP/var" \
        --packets 1 --count "$COUNT" --total-cents $((COUNT * 100)) --grabbers "$COUNT" \
        --connections "$CONNS" --user-prefix "r$r-" 2>/dev/null) || { echo "$out" >&2; exit 1; }
  sq=$(echo "$out" | sed -n 's/^qps=//p'); viol=$(echo "$out" | sed -n 's/^violations=//p')
  [ "$viol" = "0" ] || { echo "$out" >&2; echo "redpacket-compare: invariant violated" >&2; exit 1; }
  id=$(create)
  now=$(($(date +%s) * 1000))
  rq=$(redis-benchmark -p "$RPORT" -c "$CONNS" -n "$COUNT" -r 100000000 -q \
       EVALSHA "$SHA" 6 "rp:{$id}:shares" "rp:{$id}:meta" "rp:{$id}:grabs" "rp:{$id}:events" \
       "rpflag:{$id}" "rl:rp:{$id}:b__rand_int__" "$id" "b__rand_int__" "$now" 1000000 50000 950000 |
       tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
  left=$(redis-cli -p "$RPORT" LLEN "rp:{$id}:shares")
  printf 'round %d: strata %8s grabs/s   redis-benchmark %8s EVALSHA/s   (shares left on the redis-benchmark packet: %s)\n' \
    "$r" "$sq" "$rq" "$left"
  echo "$sq" >> "$TMP/s"; echo "$rq" >> "$TMP/r"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
s=$(median < "$TMP/s"); q=$(median < "$TMP/r")
echo "strata_grabs_per_s=$s"
echo "redis_benchmark_evalsha_per_s=$q"
echo "ratio=$(awk -v a="$s" -v b="$q" 'BEGIN {printf "%.2f", a / b}')"
