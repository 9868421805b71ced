#!/usr/bin/env bash
# l1-compare.sh: L1 hit ratio and throughput, Strata vs Caffeine 2.6.2, in one run.
#
#   bench/l1-compare.sh [--quick] [--no-throughput | --only-throughput]
#
# Builds the Release `strata` (build/release) unless STRATA_BIN points at one,
# compiles bench/java/L1Compare.java against Debian's libcaffeine-java
# (scripts/setup-deps --bench installs it), then prints:
#   1. hit ratio per trace and size: strata (adaptive W-TinyLFU, the default),
#      fixed (1 % window), exact LRU, Belady's OPT (all from `strata bench
#      l1-replay --policy all`) and Caffeine 2.6.2 (the same key stream).
#      Both caches seed their sketch hash per cache (Caffeine 2.6.2's
#      randomSeed; strata's sketch_seed), so one replay is one draw: strata
#      and fixed1% are means over sketch seeds 1..N, caffeine the mean of N
#      runs (a new cache, i.e. a new random seed, each), with the same N per
#      row (column `n`; s_sd / c_sd = their standard deviations over the N).
#      N = L1_SEEDS (default 10) for P3 and the synthetic streams (sd <= 0.35
#      there: standard error of a difference <= 0.13), L1_SEEDS_SMALL (default
#      40) for OLTP, gli and loop (cheap: 0.9M / 6k / 0.5M requests; sd up to
#      2.6 points on OLTP @250 and gli @1000).
#      lru and opt do not depend on a seed.  docs/notes/l1.md D21.
#   2. throughput per mix and thread count: strata vs Caffeine, 5 interleaved
#      rounds (L1_ROUNDS), median per cell (Caffeine: a JIT warm-up of 3
#      rounds before each timed one) and the ratio.  Caffeine as built by
#      default runs its maintenance (draining the read and write buffers into
#      the policy, eviction) on ForkJoinPool.commonPool(), i.e. on the other
#      core; strata by default runs it on the calling threads.  So the 1-thread
#      rows also time both the other way: Caffeine with
#      executor(Runnable::run) (caller_ops/s; vs_caller = strata default /
#      it: one core of work on both sides), and strata with its maintenance on
#      an executor thread (`--maintenance thread`, strata_l1_config.executor;
#      thread_ops/s; thr_vs_cf = it / Caffeine default: the same design on
#      both sides).
# Traces come from ../shared/traces (or $STRATA_TRACES).  The synthetic rows:
# Zipf (with and without scans), and the recency-heavy streams of the
# adaptivity target (recency:D = half new keys, half re-reads of the last D new
# ones; reuse:STEP:3 = every key re-read STEP, 2 STEP, 3 STEP new keys later).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRACES=${STRATA_TRACES:-$ROOT/../shared/traces}
QUICK=0
TP=1
HR=1
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --no-throughput) TP=0 ;;
    --only-throughput) HR=0 ;;
    *) echo "usage: bench/l1-compare.sh [--quick] [--no-throughput | --only-throughput]" >&2; exit 64 ;;
  esac
done
JAR=/usr/share/java/caffeine.jar
[ -f "$JAR" ] || { echo "l1-compare: $JAR missing: run scripts/setup-deps --bench" >&2; exit 1; }
if [ -z "${STRATA_BIN:-}" ]; then
  cmake -S "$ROOT" -B "$ROOT/build/release" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$ROOT/build/release" --target strata -j2 >/dev/null
  STRATA_BIN=$ROOT/build/release/strata
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
javac -d "$WORK" -cp "$JAR" "$ROOT/bench/java/L1Compare.java"
JAVA="java -Xmx6g -cp $JAR:$WORK L1Compare"

SEEDS=${L1_SEEDS:-10}
SEEDS_SMALL=${L1_SEEDS_SMALL:-40}
# name|format|file-or-spec|sizes|seeds (runs per cell, both caches)
CASES=(
  "oltp|arc|$TRACES/arc-oltp.gz|250 500 1000 2000|$SEEDS_SMALL"
  "p3|arc|$TRACES/arc-p3.gz|25000 50000 100000 200000 400000|$SEEDS"
  "gli|lirs|$TRACES/lirs-gli.gz|250 500 1000 2000|$SEEDS_SMALL"
  "loop|lirs|$TRACES/lirs-loop.gz|250 500 1024|$SEEDS_SMALL"
  "zipf0.8|synth|zipf:0.8:100000:2000000|1000 10000|$SEEDS"
  "zipf0.99|synth|zipf:0.99:100000:2000000|1000 10000|$SEEDS"
  "zipf1.2|synth|zipf:1.2:100000:2000000|1000 10000|$SEEDS"
  "zipf0.99+scans|synth|zipf:0.99:100000:2000000:20|1000 10000|$SEEDS"
  "recency-d100|synth|recency:100:200000|200|$SEEDS"
  "recency-d1000|synth|recency:1000:2000000|2000|$SEEDS"
  "reuse-40x3|synth|reuse:40:3:200000|200|$SEEDS"
  "reuse-400x3|synth|reuse:400:3:2000000|2000|$SEEDS"
)
[ $QUICK = 1 ] && CASES=("${CASES[0]}" "${CASES[2]}" "${CASES[3]}")
[ $HR = 1 ] || CASES=()

[ $HR = 1 ] && printf '%-15s %8s %3s %9s %9s %9s %9s %9s %8s %5s %5s\n' trace size n strata fixed1% lru opt \
  caffeine "s-c(pt)" s_sd c_sd
for c in "${CASES[@]}"; do
  IFS='|' read -r name fmt src sizes n <<<"$c"
  jfmt=$fmt; jsrc=$src
  if [ "$fmt" = synth ]; then
    jsrc=$WORK/$name.keys; jfmt=keys
    "$STRATA_BIN" bench l1-replay --format synth --trace "$src" --size 10 --policy lru --dump "$jsrc" >/dev/null
  fi
  declare -A caf=() csd=()
  while read -r _ sz hr sd _; do caf[$sz]=$hr; csd[$sz]=$sd; done < <($JAVA replay "$jfmt" "$jsrc" --runs "$n" $sizes)
  for sz in $sizes; do
    out=$("$STRATA_BIN" bench l1-replay --format "$fmt" --trace "$src" --size "$sz" --policy all --seeds "$n")
    get() { grep "^$1=" <<<"$out" | sed 's/.*=//; s/%//'; }
    s=$(get wtinylfu); f=$(get fixed); l=$(get lru); o=$(get opt); k=${caf[$sz]}
    ssd=$(grep '^wtinylfu_seeds=' <<<"$out" | sed 's/.* sd=//; s/ .*//')
    printf '%-15s %8s %3s %9s %9s %9s %9s %9s %+8.2f %5s %5s\n' "$name" "$sz" "$n" "$s" "$f" "$l" "$o" "$k" \
      "$(echo "$s - $k" | bc -l)" "$ssd" "${csd[$sz]}"
  done
  unset caf csd
done
[ $HR = 1 ] && echo "published adaptive Caffeine (OLTP): 39.95 @1000, 46.07 @2000"
[ $HR = 1 ] && echo "strata, fixed1%: means over sketch seeds 1..n; caffeine: mean of n runs (new cache each)"

[ $TP = 1 ] || exit 0
echo
# Interleaved rounds: each round runs strata (all mixes, 1 and 2 threads, one
# timed round) and then Caffeine per cell (a fresh JVM: JIT warm-up of 3 rounds
# of the same size, then one timed round); the table shows each cell's median
# over the rounds.  The machine is shared: min/max are printed too.
ROUNDS=${L1_ROUNDS:-5}; OPS=4000000
declare -A S=() K=() KC=() ST=()
for r in $(seq "$ROUNDS"); do
  sout=$("$STRATA_BIN" bench l1-throughput --threads 1,2 --rounds 1 --ops $OPS)
  tout=$("$STRATA_BIN" bench l1-throughput --threads 1 --rounds 1 --ops $OPS --maintenance thread)
  for mix in read100 read90 read75; do
    for t in 1 2; do
      S[$mix.$t]+="$(grep "^strata_${mix}_${t}t=" <<<"$sout" | sed 's/.*=//') "
      K[$mix.$t]+="$($JAVA throughput $t $mix 1000000 0.99 1 $OPS 10 3 | awk '{print $2}') "
      if [ "$t" = 1 ]; then
        KC[$mix.$t]+="$($JAVA throughput $t $mix 1000000 0.99 1 $OPS 10 3 caller | awk '{print $2}') "
        ST[$mix.$t]+="$(grep "^strata_${mix}_${t}t=" <<<"$tout" | sed 's/.*=//') "
      fi
    done
  done
  [ "$r" = 1 ] && ovh=$(grep '^overhead_bytes_per_entry=' <<<"$sout")
done
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rng() { tr ' ' '\n' | grep . | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo/1e6, hi/1e6}'; }
printf '%-8s %7s %14s %14s %7s %13s %13s %14s %9s %14s %9s\n' mix threads strata_ops/s caffeine_ops/s \
  ratio strata_M_rng caffeine_M_rng caller_ops/s vs_caller thread_ops/s thr_vs_cf
for mix in read100 read90 read75; do
  for t in 1 2; do
    s=$(med <<<"${S[$mix.$t]}"); k=$(med <<<"${K[$mix.$t]}")
    kc=-; vc=-; st=-; vt=-
    if [ -n "${KC[$mix.$t]:-}" ]; then
      kc=$(med <<<"${KC[$mix.$t]}"); vc=$(printf '%.2f' "$(echo "$s / $kc" | bc -l)")
      st=$(med <<<"${ST[$mix.$t]}"); vt=$(printf '%.2f' "$(echo "$st / $k" | bc -l)")
    fi
    printf '%-8s %7s %14s %14s %7.2f %13s %13s %14s %9s %14s %9s\n' "$mix" "$t" "$s" "$k" \
      "$(echo "$s / $k" | bc -l)" "$(rng <<<"${S[$mix.$t]}")" "$(rng <<<"${K[$mix.$t]}")" \
      "$kc" "$vc" "$st" "$vt"
  done
done
echo "$ovh"
echo "rounds=$ROUNDS (interleaved), ops per thread per round=$OPS, Zipf 0.99 over 1M keys, cache 100k"
echo "strata read = copy-out strata_l1_get_copy into a 64-byte buffer; caffeine read = getIfPresent"
echo "caffeine: default executor (maintenance on ForkJoinPool.commonPool); caller: executor(Runnable::run)"
echo "strata: maintenance on the calling threads (default); thread: --maintenance thread (an executor thread)"
