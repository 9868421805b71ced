/*
 * test_tier_bench.c: `strata bench tier` (bench/tier_bench.c) end to end on a
 * real redis-server, small: it runs, reports every figure, and its counts
 * show what the protections do — with them, each key is loaded at most once
 * per expiry (no duplicate loads) and the mass-expiry peak is lower, near the
 * steady rate with the refresh cap; without them, the same load makes
 * duplicate loads.  Counts per simulated second
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
    double on_dup = kv(out, "on_mass_duplicate_loads");
    double nocap_dup = kv(out, "nocap_mass_duplicate_loads");
    double off_dup = kv(out, "off_mass_duplicate_loads");
    double on_missed = kv(out, "on_mass_keys_not_refreshed");
    double on_ratio = kv(out, "on_ratio_peak_to_steady");
    double nocap_ratio = kv(out, "nocap_ratio_peak_to_steady");
    double off_ratio = kv(out, "off_ratio_peak_to_steady");
    double on_steady = kv(out, "on_steady_loads_per_s");
    double on_deferred = kv(out, "on_mass_refreshes_deferred");
    print_message("duplicate loads on/nocap/off %.0f/%.0f/%.0f; ratio on %.2f nocap %.2f off %.2f; "
                  "on: %.0f keys not refreshed, %.0f refreshes deferred\n",
                  on_dup, nocap_dup, off_dup, on_ratio, nocap_ratio, off_ratio, on_missed,
                  on_deferred);
    /* leases + SWR: never a second load of a key within one TTL */
    assert_true(on_dup == 0 && nocap_dup == 0);
    /* without leases, concurrent misses of one key load it more than once */
    assert_true(off_dup > 0);
    /* jitter (+-10 %: over 4 s) spreads the expiry: a peak well below all-at-once
     * (measured 5.2-6.6 vs 12.8-14.8; 1-s buckets of ~50 loads are noisy) */
    assert_true(nocap_ratio * 1.5 < off_ratio);
    /* the refresh cap (1.1 x keys / ttl = 11/s, the floor is 10/s) holds the peak near the
     * steady rate and drains the backlog (4 reads per key per second) */
    assert_true(on_deferred > 0);
    assert_true(on_ratio < 1.5 && on_ratio * 2 < nocap_ratio);
    assert_true(on_missed <= 4);
    /* steady state is about keys / ttl = 10 loads per second */
    assert_true(on_steady > 6 && on_steady < 14);
    sh_redis_stop(&r);
}

int main(void) {
    sh_init(110);
    const struct CMUnitTest tests[] = {cmocka_unit_test(protections_matter)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
