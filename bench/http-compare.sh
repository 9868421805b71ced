#!/usr/bin/env bash
# bench/http-compare.sh: Strata's HTTP front door vs nginx, measured side by side.
#
# nginx `return 200 '{"status":"ok"}'` (application/json) against Strata's
# GET /healthz (the same 15-byte JSON body), both with the same number of
# workers, both run here as our own children on free loopback ports (never the
# system service).  wrk (keep-alive) drives each with every connection count,
# interleaved: round 1 nginx c64, strata c64, nginx c256, strata c256, round 2
# ...  so drifts of a shared machine hit both alike.  Per run: req/s, P99 (wrk
# --latency), and the server's CPU time per request from /proc/<pid>/stat
# (utime+stime of the server's processes; wrk saturates a core on a 2-core
# machine, so CPU per request is the fairer efficiency figure).
#
# usage: bench/http-compare.sh [--rounds N] [--duration SEC] [--workers N]
#                              [--conns "64 256"] [--threads N] [--server-cmd CMD]
#                              [--path PATH] [--body JSON] [--setup CMD]
#                              [--server-cmd-b CMD] [--setup-b CMD] [--wrk-script FILE]
#   --path        the path wrk requests from both servers (default /healthz)
#   --wrk-script  a wrk Lua script for both servers (e.g. POSTs with a body per request)
#   --body        the body nginx returns (default {"status":"ok"}, /healthz's);
#                 give Strata's exact answer for --path so both send the same bytes
#   --setup       command run once both servers answer, before measuring ("{port}"
#                 = Strata's port); e.g. writing the key a --path reads
#                 (bench/http-redis-compare.sh uses these three)
#   --server-cmd-b  a second Strata (another build, say) measured in the same
#                 rounds, right after the first ("strata_b" rows, ratio_b_* lines);
#                 --setup-b is run for it ("{port}" = its port)
#   --server-cmd  command that starts Strata in the foreground; "{port}" and
#                 "{workers}" are substituted.  Default: the HTTP layer alone
#                 (bench/http/bench_server.c, built here from src/server and
#                 src/lib/core with -O2).  To measure the whole binary:
#                 --server-cmd "build/release/strata serve --listen 127.0.0.1:{port} --workers {workers}"
# Output: a table, then key=value lines (medians over rounds; ratios strata/nginx).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=5
DURATION=10
WORKERS=1
CONNS="64 256"
THREADS=2
SERVER_CMD=""
URL_PATH=/healthz
WRK_SCRIPT=""
BODY='{"status":"ok"}'
SETUP_CMD=""
SERVER_CMD_B=""
SETUP_CMD_B=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --server-cmd) SERVER_CMD=$2; shift 2 ;;
    --path) URL_PATH=$2; shift 2 ;;
    --wrk-script) WRK_SCRIPT=$2; shift 2 ;;
    --body) BODY=$2; shift 2 ;;
    --setup) SETUP_CMD=$2; shift 2 ;;
    --server-cmd-b) SERVER_CMD_B=$2; shift 2 ;;
    --setup-b) SETUP_CMD_B=$2; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "http-compare: unknown argument $1" >&2; exit 64 ;;
  esac
done

if [ "$(id -u)" -eq 0 ]; then "$ROOT/scripts/setup-deps" --bench; fi
for b in wrk nginx cc; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || { echo "http-compare: $b not found (scripts/setup-deps --bench)" >&2; exit 69; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TMP=$(mktemp -d /tmp/strata-http-compare.XXXXXX)
NGINX_PID=""
STRATA_PID=""
STRATA_B_PID=""
cleanup() {
  [ -n "$STRATA_B_PID" ] && kill "$STRATA_B_PID" 2>/dev/null && wait "$STRATA_B_PID" 2>/dev/null || true
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null || true
  [ -n "$STRATA_PID" ] && kill "$STRATA_PID" 2>/dev/null && wait "$STRATA_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "http-compare: nothing answers on port $1" >&2
  exit 1
}

# ---- nginx ---------------------------------------------------------------------
NPORT=$(free_port)
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
cat > "$TMP/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$NPORT reuseport backlog=4096;
    location / {
      default_type application/json;
      return 200 '$BODY';
    }
  }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
wait_port "$NPORT"

# ---- strata ----------------------------------------------------------------------
SPORT=$(free_port)
if [ -z "$SERVER_CMD" ]; then
  cc -O2 -g -std=c17 -D_GNU_SOURCE -DNDEBUG -DSTRATA_VERSION='"bench"' \
     -I"$ROOT/include" -I"$ROOT/src" \
     "$ROOT/bench/http/bench_server.c" "$ROOT"/src/server/*.c "$ROOT"/src/lib/core/*.c \
     -luv -lhttp_parser -lcjson -linih -lpthread -lm -o "$TMP/bench_server"
  SERVER_CMD="$TMP/bench_server --listen 127.0.0.1:{port} --workers {workers} --max-connections 20000"
fi
cmd=${SERVER_CMD//\{port\}/$SPORT}
cmd=${cmd//\{workers\}/$WORKERS}
STRATA_LOG_LEVEL=warn $cmd > "$TMP/strata.log" 2>&1 &
STRATA_PID=$!
wait_port "$SPORT"
if [ -n "$SETUP_CMD" ]; then
  setup=${SETUP_CMD//\{port\}/$SPORT}
  bash -c "$setup" >&2 || { echo "http-compare: --setup failed" >&2; exit 1; }
fi
SERVERS="nginx strata"
if [ -n "$SERVER_CMD_B" ]; then
  SPORT_B=$(free_port)
  cmd=${SERVER_CMD_B//\{port\}/$SPORT_B}
  cmd=${cmd//\{workers\}/$WORKERS}
  STRATA_LOG_LEVEL=warn $cmd > "$TMP/strata_b.log" 2>&1 &
  STRATA_B_PID=$!
  wait_port "$SPORT_B"
  if [ -n "$SETUP_CMD_B" ]; then
    setup=${SETUP_CMD_B//\{port\}/$SPORT_B}
    bash -c "$setup" >&2 || { echo "http-compare: --setup-b failed" >&2; exit 1; }
  fi
  SERVERS="nginx strata strata_b"
fi

# ---- measuring -------------------------------------------------------------------
TCK=$(getconf CLK_TCK)
# CPU ticks (utime+stime) of a process and its direct children (nginx workers).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    if [ -r "/proc/$p/stat" ]; then
      # fields 14, 15 after the ")" that ends the command name
      total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    fi
  done
  echo "$total"
}
to_us() { # wrk latency like 1.23ms / 850.00us / 1.01s
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

RESULTS="$TMP/results.txt"
: > "$RESULTS"
run_one() { # name pid port conns round
  local name=$1 pid=$2 port=$3 c=$4 r=$5 out before after reqs rps p99 cpu
  before=$(cpu_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$c" -d"${DURATION}s" --latency ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} \
        "http://127.0.0.1:$port$URL_PATH")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec:/ {print $2}')
  p99=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  cpu=$(awk -v t="$((after - before))" -v k="$TCK" -v n="$reqs" 'BEGIN{ printf "%.3f", t*1e6/k/n }')
  echo "$name $c $r $rps $p99 $cpu $reqs" >> "$RESULTS"
  printf '%-7s c=%-4s round %d: %10.0f req/s  p99 %8.0f us  cpu %6.2f us/req %s\n' \
    "$name" "$c" "$r" "$rps" "$p99" "$cpu" "$errs" >&2
}

echo "http-compare: nginx pid $NGINX_PID port $NPORT, strata pid $STRATA_PID port $SPORT," \
     "workers $WORKERS, wrk -t$THREADS, ${DURATION}s x $ROUNDS rounds" >&2
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    run_one nginx "$NGINX_PID" "$NPORT" "$c" "$r"
    run_one strata "$STRATA_PID" "$SPORT" "$c" "$r"
    [ -z "$STRATA_B_PID" ] || run_one strata_b "$STRATA_B_PID" "$SPORT_B" "$c" "$r"
  done
done

# ---- report: medians over rounds --------------------------------------------------------
median() { sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
printf '\n%-8s %6s %12s %10s %12s\n' server conns "req/s" "p99_us" "cpu_us/req"
for c in $CONNS; do
  for s in $SERVERS; do
    rps=$(awk -v s=$s -v c=$c '$1==s && $2==c {print $4}' "$RESULTS" | median)
    p99=$(awk -v s=$s -v c=$c '$1==s && $2==c {print $5}' "$RESULTS" | median)
    cpu=$(awk -v s=$s -v c=$c '$1==s && $2==c {print $6}' "$RESULTS" | median)
    printf '%-8s %6s %12.0f %10.0f %12.2f\n' "$s" "$c" "$rps" "$p99" "$cpu"
    eval "${s}_rps_$c=$rps ${s}_p99_$c=$p99 ${s}_cpu_$c=$cpu"
  done
done
echo
for c in $CONNS; do
  eval "nr=\$nginx_rps_$c sr=\$strata_rps_$c np=\$nginx_p99_$c sp=\$strata_p99_$c nc=\$nginx_cpu_$c sc=\$strata_cpu_$c"
  echo "nginx_rps_c$c=$nr"
  echo "strata_rps_c$c=$sr"
  echo "nginx_p99_us_c$c=$np"
  echo "strata_p99_us_c$c=$sp"
  echo "nginx_cpu_us_per_req_c$c=$nc"
  echo "strata_cpu_us_per_req_c$c=$sc"
  awk -v a="$sr" -v b="$nr" -v c="$c" 'BEGIN{ printf "ratio_rps_c%s=%.3f\n", c, a/b }'
  awk -v a="$sp" -v b="$np" -v c="$c" 'BEGIN{ printf "ratio_p99_c%s=%.3f\n", c, a/b }'
  awk -v a="$sc" -v b="$nc" -v c="$c" 'BEGIN{ printf "ratio_cpu_c%s=%.3f\n", c, a/b }'
  if [ -n "$STRATA_B_PID" ]; then
    eval "br=\$strata_b_rps_$c bp=\$strata_b_p99_$c bc=\$strata_b_cpu_$c"
    echo "strata_b_rps_c$c=$br"
    echo "strata_b_p99_us_c$c=$bp"
    echo "strata_b_cpu_us_per_req_c$c=$bc"
    awk -v a="$br" -v b="$nr" -v c="$c" 'BEGIN{ printf "ratio_b_rps_c%s=%.3f\n", c, a/b }'
    awk -v a="$bc" -v b="$nc" -v c="$c" 'BEGIN{ printf "ratio_b_cpu_c%s=%.3f\n", c, a/b }'
  fi
done
echo "nginx_requests_total=$(awk '$1=="nginx" {n+=$7} END{print n+0}' "$RESULTS")"
echo "strata_requests_total=$(awk '$1=="strata" {n+=$7} END{print n+0}' "$RESULTS")"
[ -z "$STRATA_B_PID" ] || echo "strata_b_requests_total=$(awk '$1=="strata_b" {n+=$7} END{print n+0}' "$RESULTS")"
echo "rounds=$ROUNDS duration_s=$DURATION workers=$WORKERS wrk_threads=$THREADS path=$URL_PATH"
