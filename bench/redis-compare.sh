#!/bin/sh
# redis-compare.sh: the Strata Redis client vs redis-benchmark, same server,
# same command, same connection count and pipeline depth, in the same run,
# rounds interleaved (A B A B ...) so drift hits both alike.
#
#   bench/redis-compare.sh                       # GET and EVALSHA, 50 conns, -P 16
#   CONNS=1 PIPELINE=1 bench/redis-compare.sh    # latency-bound case
#
# Environment: STRATA_BIN (default ./build/release/strata), CONNS (50),
# PIPELINE (16), REQUESTS (2000000), ROUNDS (3), COMMANDS ("get evalsha").
# It starts its own redis-server (no persistence) on a free loopback port
# and stops it on exit.  Output: one line per round and a summary with the
# ratio strata/redis-benchmark of the median ops/s (target >= 0.90), and the
# median of the per-round ratios (each pair ran back to back, so it is the
# steadier figure on a shared machine).
set -eu

STRATA_BIN=${STRATA_BIN:-./build/release/strata}
CONNS=${CONNS:-50}
PIPELINE=${PIPELINE:-16}
REQUESTS=${REQUESTS:-2000000}
ROUNDS=${ROUNDS:-3}
COMMANDS=${COMMANDS:-"get evalsha"}
SCRIPT="return redis.call('GET', KEYS[1])"
KEY='key:__rand_int__'

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || { echo "redis-compare: $tool missing (scripts/setup-deps --bench)" >&2; exit 69; }
done
[ -x "$STRATA_BIN" ] || { echo "redis-compare: $STRATA_BIN not built" >&2; exit 69; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/strata-redis-compare.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() { [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null; sleep 0.2; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
i=0
until redis-cli -p "$port" ping >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 100 ] && exit 70; sleep 0.05; done
redis-cli -p "$port" set "$KEY" xxx >/dev/null
sha=$(redis-cli -p "$port" script load "$SCRIPT")

echo "# server: redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$port; conns=$CONNS pipeline=$PIPELINE requests=$REQUESTS rounds=$ROUNDS; $(nproc) cores"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for cmd in $COMMANDS; do
    case $cmd in
        get) rb_args="GET $KEY" ;;
        evalsha) rb_args="EVALSHA $sha 1 $KEY" ;;
        set) rb_args="SET $KEY xxx" ;;
        *) echo "unknown command $cmd" >&2; exit 64 ;;
    esac
    : > "$dir/s.txt"; : > "$dir/r.txt"; : > "$dir/q.txt"
    r=1
    while [ $r -le "$ROUNDS" ]; do
        s_ops=$("$STRATA_BIN" bench redis --url "redis://127.0.0.1:$port" --command "$cmd" \
            --conns "$CONNS" --pipeline "$PIPELINE" --requests "$REQUESTS" | sed -n 's/^ops_per_sec=//p')
        # shellcheck disable=SC2086
        r_ops=$(redis-benchmark -p "$port" -c "$CONNS" -P "$PIPELINE" -n "$REQUESTS" --csv $rb_args \
            | tail -1 | cut -d, -f2 | tr -d '"')
        echo "$s_ops" >> "$dir/s.txt"; echo "$r_ops" >> "$dir/r.txt"
        awk -v s="$s_ops" -v r="$r_ops" 'BEGIN { printf "%.4f\n", s / r }' >> "$dir/q.txt"
        echo "round=$r command=$cmd strata_ops=$s_ops redis_benchmark_ops=$r_ops"
        r=$((r+1))
    done
    s_med=$(median < "$dir/s.txt"); r_med=$(median < "$dir/r.txt")
    ratio=$(awk -v s="$s_med" -v r="$r_med" 'BEGIN { printf "%.3f", s / r }')
    q_med=$(median < "$dir/q.txt")
    echo "summary command=$cmd conns=$CONNS pipeline=$PIPELINE strata_median=$s_med redis_benchmark_median=$r_med ratio=$ratio round_ratio_median=$q_med"
done
