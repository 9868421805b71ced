/*
 * test_tier_bench.c: `strata bench tier` (bench/tier_bench.c) end to end on a
 * real redis-server, small: it runs, reports every figure, and its counts
 * show what the protections do — with them, each key is loaded at most once
 * per expiry (no duplicate loads) and the mass-expiry peak is lower; without
 * them, the same load makes duplicate loads.  Counts per simulated second
 * (manual clock), so nothing here depends on the machine's speed.
 */
/* ctest-labels: redis */
/* ctest-timeout: 120 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness/harness.h"
#include "strata/status.h"

static double kv(const char *out, const char *key) {
    char needle[96];
    snprintf(needle, sizeof needle, "\n%s=", key);
    const char *p = strstr(out, needle);
    if (!p)
        fail_msg("no %s in the output:\n%s", key, out);
    return strtod(p + strlen(needle), NULL);
}

static void protections_matter(void **state) {
    (void)state;
    sh_redis *r = NULL;
    assert_int_equal(sh_redis_start(&r, NULL), STRATA_OK);
    const char *bin = getenv("STRATA_BIN");
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s bench tier --redis %s --db-dir %s --keys 200 --ttl 20s --rate 800 2>&1",
             bin ? bin : "strata", sh_redis_url(r), sh_tmpdir());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    static char out[65536];
    size_t n = fread(out + 1, 1, sizeof out - 2, f);
    out[0] = '\n';
    out[n + 1] = '\0';
    int st = pclose(f);
    if (st != 0)
        fail_msg("%s: exit %d\n%s", cmd, st, out);
    assert_int_equal((int)kv(out, "errors"), 0);
    assert_int_equal((int)kv(out, "keys"), 200);
    double on_per_key = kv(out, "on_mass_loads_per_key");
    double off_per_key = kv(out, "off_mass_loads_per_key");
    double on_ratio = kv(out, "on_ratio_peak_to_steady");
    double off_ratio = kv(out, "off_ratio_peak_to_steady");
    double on_steady = kv(out, "on_steady_loads_per_s");
    print_message("on: %.3f loads/key ratio %.2f; off: %.3f loads/key ratio %.2f\n", on_per_key,
                  on_ratio, off_per_key, off_ratio);
    /* leases + SWR: one load per key per expiry, never more (about every key
     * is read after its expiry: 4 reads per key per second) */
    assert_true(on_per_key <= 1.0 && on_per_key >= 0.95);
    /* without leases, concurrent misses of one key load it more than once */
    assert_true(off_per_key > 1.0);
    /* jitter (+-10 %: over 4 s) spreads the expiry: a peak well below all-at-once
     * (measured 5.2-6.6 vs 12.8-14.8; 1-s buckets of ~50 loads are noisy) */
    assert_true(on_ratio * 1.5 < off_ratio);
    /* steady state is about keys / ttl = 10 loads per second */
    assert_true(on_steady > 6 && on_steady < 14);
    sh_redis_stop(&r);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {cmocka_unit_test(protections_matter)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
