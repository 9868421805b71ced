/*
 * L1Compare.java: the Caffeine side of `bench/l1-compare.sh` (Caffeine 2.6.2
 * from Debian's libcaffeine-java, run on the machine's Java 17).
 *
 *   java -cp caffeine.jar:. L1Compare replay FORMAT FILE [--runs R] SIZE...
 *       FORMAT arc|lirs|keys (the formats of bench/l1_replay.c); prints
 *       "caffeine SIZE MEAN SD MIN MAX RUNS" per size: R replays (default 1),
 *       each with a new cache.  The cache is driven exactly like the C
 *       replay: getIfPresent, and put on a miss; maintenance runs on the
 *       calling thread (executor Runnable::run).  A run is still a random
 *       draw: Caffeine 2.6.2 seeds every FrequencySketch from
 *       ThreadLocalRandom (its `randomSeed`, multiplied into spread()) and
 *       admits a warm candidate with probability 1/128, so R new caches are R
 *       independent draws, and MEAN is what l1-compare.sh compares with the
 *       strata mean over R sketch seeds (docs/notes/l1.md D21).
 *   java -cp caffeine.jar:. L1Compare throughput THREADS MIX KEYS ZIPF ROUNDS OPS CACHEPCT [WARMUP [pool|caller]]
 *       MIX read100|read90|read75; prints "caffeine_MIX_Nt OPS_PER_SEC" (the
 *       median of ROUNDS rounds after a JIT warm-up of WARMUP rounds, default
 *       ROUNDS; l1-compare.sh runs ROUNDS=1 WARMUP=3 once per interleaved round).
 *       pool (the default): Caffeine's default executor, so its maintenance
 *       (draining the read and write buffers into the policy, eviction) runs
 *       on ForkJoinPool.commonPool(), another core when there is one; caller:
 *       executor(Runnable::run), maintenance on the thread that triggers it,
 *       as strata's (prints "caffeine_caller_MIX_Nt ...").
 *
 * Key streams: Zipf(s) over KEYS keys, ranks scattered by a 64-bit mix,
 * pre-generated per thread (4M keys) before timing, as in l1_throughput.c.
 * Keys are boxed Longs created up front, so the timed loop allocates nothing.
 */
import com.github.benmanes.caffeine.cache.Cache;
import com.github.benmanes.caffeine.cache.Caffeine;
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.concurrent.CyclicBarrier;
import java.util.zip.GZIPInputStream;

public final class L1Compare {
  public static void main(String[] args) throws Exception {
    if (args.length < 1) usage();
    if (args[0].equals("replay") && args.length >= 4) replay(args);
    else if (args[0].equals("throughput") && args.length >= 8 && args.length <= 10) throughput(args);
    else usage();
  }

  static void usage() {
    System.err.println("usage: L1Compare replay FORMAT FILE [--runs R] SIZE... | throughput THREADS MIX KEYS ZIPF ROUNDS OPS CACHEPCT [WARMUP [pool|caller]]");
    System.exit(64);
  }

  static long[] readTrace(String format, String file) throws Exception {
    InputStream in = new FileInputStream(file);
    if (file.endsWith(".gz")) in = new GZIPInputStream(in, 1 << 16);
    long[] keys = new long[1 << 20];
    int n = 0;
    try (BufferedReader r = new BufferedReader(new InputStreamReader(in), 1 << 16)) {
      String line;
      while ((line = r.readLine()) != null) {
        line = line.trim();
        if (line.isEmpty()) continue;
        if (format.equals("arc")) {
          String[] f = line.split("\\s+");
          if (f.length < 2) continue;
          long start = Long.parseLong(f[0]), count = Long.parseLong(f[1]);
          for (long i = 0; i < count; i++) {
            if (n == keys.length) keys = Arrays.copyOf(keys, n * 2);
            keys[n++] = start + i;
          }
        } else if (format.equals("lirs")) {
          if (line.startsWith("*")) continue;
          if (n == keys.length) keys = Arrays.copyOf(keys, n * 2);
          keys[n++] = Long.parseLong(line);
        } else {
          if (n == keys.length) keys = Arrays.copyOf(keys, n * 2);
          keys[n++] = Long.parseUnsignedLong(line);
        }
      }
    }
    return Arrays.copyOf(keys, n);
  }

  static void replay(String[] args) throws Exception {
    long[] keys = readTrace(args[1], args[2]);
    Long[] boxed = new Long[keys.length];
    for (int i = 0; i < keys.length; i++) boxed[i] = keys[i];
    int a = 3, runs = 1;
    if (args[a].equals("--runs") && args.length >= a + 3) {
      runs = Integer.parseInt(args[a + 1]);
      a += 2;
    }
    if (runs < 1) usage();
    for (; a < args.length; a++) {
      long size = Long.parseLong(args[a]);
      double sum = 0, sumsq = 0, lo = 101, hi = -1;
      for (int r = 0; r < runs; r++) {
        Cache<Long, Long> cache = Caffeine.newBuilder().maximumSize(size).executor(Runnable::run).build();
        long hits = 0;
        for (Long k : boxed) {
          if (cache.getIfPresent(k) != null) hits++;
          else cache.put(k, k);
        }
        double ratio = 100.0 * hits / keys.length;
        sum += ratio;
        sumsq += ratio * ratio;
        lo = Math.min(lo, ratio);
        hi = Math.max(hi, ratio);
      }
      double mean = sum / runs;
      double var = runs > 1 ? (sumsq - sum * sum / runs) / (runs - 1) : 0;
      System.out.printf("caffeine %d %.2f %.2f %.2f %.2f %d%n", size, mean, Math.sqrt(Math.max(var, 0)), lo, hi, runs);
    }
  }

  static long mix64(long z) {
    z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
    z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
    return z ^ (z >>> 31);
  }

  static Long[] stream(int n, int nkeys, double s, long seed) {
    double[] cdf = new double[nkeys];
    double sum = 0;
    for (int i = 0; i < nkeys; i++) cdf[i] = (sum += 1.0 / Math.pow(i + 1, s));
    Long[] out = new Long[n];
    Long[] box = new Long[nkeys];
    long r = seed;
    for (int i = 0; i < n; i++) {
      r ^= r << 13; r ^= r >>> 7; r ^= r << 17;
      double u = (double) (r >>> 11) / 9007199254740992.0 * sum;
      int idx = Arrays.binarySearch(cdf, u);
      if (idx < 0) idx = -idx - 1;
      if (idx >= nkeys) idx = nkeys - 1;
      if (box[idx] == null) box[idx] = mix64(idx);
      out[i] = box[idx];
    }
    return out;
  }

  static void throughput(String[] args) throws Exception {
    int threads = Integer.parseInt(args[1]);
    String mix = args[2];
    int nkeys = Integer.parseInt(args[3]);
    double s = Double.parseDouble(args[4]);
    int rounds = Integer.parseInt(args[5]);
    long ops = Long.parseLong(args[6]);
    int pct = Integer.parseInt(args[7]);
    int warmup = args.length >= 9 ? Integer.parseInt(args[8]) : rounds;
    boolean caller = args.length == 10 && args[9].equals("caller");
    if (args.length == 10 && !caller && !args[9].equals("pool")) usage();
    int writePct = mix.equals("read100") ? 0 : mix.equals("read90") ? 10 : 25;
    final int STREAM = 1 << 22;
    Long[][] streams = new Long[threads][];
    for (int t = 0; t < threads; t++) streams[t] = stream(STREAM, nkeys, s, 0x9E3779B97F4A7C15L + t * 7919L);
    Caffeine<Object, Object> b = Caffeine.newBuilder().maximumSize((long) nkeys * pct / 100);
    if (caller) b = b.executor(Runnable::run); /* maintenance on the calling thread, as strata's */
    Cache<Long, Long> cache = b.build();
    for (Long k : streams[0]) if (cache.getIfPresent(k) == null) cache.put(k, k);
    double[] res = new double[rounds];
    for (int r = -warmup; r < rounds; r++) { /* the first `warmup` rounds warm the JIT */
      CyclicBarrier bar = new CyclicBarrier(threads);
      double[] secs = new double[threads];
      ArrayList<Thread> ts = new ArrayList<>();
      for (int t = 0; t < threads; t++) {
        final int id = t;
        Thread th = new Thread(() -> {
          Long[] st = streams[id];
          Long val = 7L;
          int x = 2463534242L > 0 ? (int) 2463534242L : 1;
          long sink = 0;
          try { bar.await(); } catch (Exception e) { throw new RuntimeException(e); }
          long t0 = System.nanoTime();
          for (long i = 0; i < ops; i++) {
            Long k = st[(int) (i & (STREAM - 1))];
            x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
            if (writePct != 0 && Integer.remainderUnsigned(x, 100) < writePct) cache.put(k, val);
            else if (cache.getIfPresent(k) != null) sink++;
          }
          secs[id] = (System.nanoTime() - t0) / 1e9;
          if (sink == -1) System.out.print("");
        });
        ts.add(th);
        th.start();
      }
      double slowest = 0;
      for (int t = 0; t < threads; t++) { ts.get(t).join(); slowest = Math.max(slowest, secs[t]); }
      if (r >= 0) res[r] = (double) ops * threads / slowest;
    }
    Arrays.sort(res);
    System.out.printf("caffeine%s_%s_%dt %.0f%n", caller ? "_caller" : "", mix, threads, res[rounds / 2]);
  }
}
