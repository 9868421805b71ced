#!/usr/bin/env bash
# bench/flashsale-compare.sh: the flash sale's Lua strategy vs the seed's
# segment-lock strategy, measured in one run, interleaved rounds.
#
# Two `strata serve` processes (each with its own managed Redis and SQLite),
# one per strategy.  Every round creates a fresh sale on each and sells it
# with `strata bench flashsale` (closed loop): stock == users, so every
# request is a purchase that must succeed, which is the phase the strategies
# differ in.  The bench verifies the invariants at the end of every run (no
# oversell, one order per user, every 201 persisted exactly once); a
# violation fails the script.
#
# usage: bench/flashsale-compare.sh [--rounds N] [--stock N] [--connections "N [N ...]"]
# Several connection counts measure how the ratio grows with contention (each level its
# own interleaved rounds; key=value lines then carry a _c<N> suffix).
# Output: per-round lines, then key=value medians and the ratio lua/segment-lock.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
STOCK=20000
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --stock) STOCK=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "flashsale-compare: unknown argument $1" >&2; exit 64 ;;
  esac
done
BIN=${STRATA_BIN:-$ROOT/build/release/strata}
[ -x "$BIN" ] || { echo "flashsale-compare: build first (make build) or set STRATA_BIN" >&2; exit 69; }
TMP=$(mktemp -d /tmp/strata-fs-compare.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM

start() { # name strategy -> sets PORT (not in a $(...) subshell: PIDS must reach cleanup)
  local name=$1 strategy=$2
  "$BIN" serve --var-dir "$TMP/$name" --listen 127.0.0.1:0 --admin-token bench \
    --flashsale-strategy "$strategy" --user-burst 100 --log-level info >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  PORT=""
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's/.*event=ready.*listen=127.0.0.1:\([0-9]*\).*/\1/p' "$TMP/$name.log" | tail -1)
    [ -n "$PORT" ] && return
    sleep 0.1
  done
  echo "flashsale-compare: $name did not start" >&2; cat "$TMP/$name.log" >&2; exit 1
}
start lua lua; LUA_PORT=$PORT
start seg segment-lock; SEG_PORT=$PORT
echo "flashsale-compare: lua port $LUA_PORT, segment-lock port $SEG_PORT, stock=users=$STOCK, connections: $CONNS, $ROUNDS rounds"

run() { # name port round conns
  local out
  out=$("$BIN" bench flashsale --url "http://127.0.0.1:$2" --admin-token bench \
        --var-dir "$TMP/$1" --sku "r$3c$4-$1" --stock "$STOCK" --users "$STOCK" --attempts 1 \
        --connections "$4" 2>/dev/null) || true
  local qps p99 ok viol
  local dur
  p99=$(echo "$out" | sed -n 's/^p99_us=//p'); dur=$(echo "$out" | sed -n 's/^duration_s=//p')
  ok=$(echo "$out" | sed -n 's/^success=//p'); viol=$(echo "$out" | sed -n 's/^violations=//p')
  qps=""; [ -n "$ok" ] && [ -n "$dur" ] && qps=$(awk -v o="$ok" -v d="$dur" 'BEGIN {printf "%.0f", o / d}')
  printf '%-13s c%-5s round %d: %8s orders/s  p99 %9s us  success %s/%s  violations %s\n' \
    "$1" "$4" "$3" "$qps" "$p99" "$ok" "$STOCK" "$viol"
  # Invariants must hold in both strategies.  Every order must succeed on the Lua path; the
  # segment-lock path may time requests out under contention (reported as its success rate:
  # only successful orders count in its orders/s).
  if [ -z "$qps" ] || [ "$viol" != "0" ] || { [ "$1" = lua ] && [ "$ok" != "$STOCK" ]; }; then
    echo "$out" >&2; echo "flashsale-compare: invariant or success count wrong for $1" >&2; exit 1
  fi
  echo "$qps $p99 $ok" >> "$TMP/$1.c$4.results"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for c in $CONNS; do
  for r in $(seq 1 "$ROUNDS"); do
    run lua "$LUA_PORT" "$r" "$c"
    run seg "$SEG_PORT" "$r" "$c"
  done
done
for c in $CONNS; do
  sfx=""; [ "$(echo $CONNS | wc -w)" -gt 1 ] && sfx="_c$c"
  lq=$(cut -d' ' -f1 "$TMP/lua.c$c.results" | median); sq=$(cut -d' ' -f1 "$TMP/seg.c$c.results" | median)
  lp=$(cut -d' ' -f2 "$TMP/lua.c$c.results" | median); sp=$(cut -d' ' -f2 "$TMP/seg.c$c.results" | median)
  so=$(cut -d' ' -f3 "$TMP/seg.c$c.results" | median)
  echo "lua_qps$sfx=$lq"
  echo "segment_lock_qps$sfx=$sq"
  echo "lua_p99_us$sfx=$lp"
  echo "segment_lock_p99_us$sfx=$sp"
  echo "segment_lock_success$sfx=$(awk -v a="$so" -v b="$STOCK" 'BEGIN {printf "%.4f", a / b}')"
  echo "ratio$sfx=$(awk -v a="$lq" -v b="$sq" 'BEGIN {printf "%.2f", a / b}')"
done
