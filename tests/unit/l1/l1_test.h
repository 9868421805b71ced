/*
 * l1_test.h: what the L1 unit tests share.
 */
#ifndef STRATA_TEST_L1_H
#define STRATA_TEST_L1_H

/* A fixed sketch seed: every policy decision (admission, window) repeats exactly (the
 * default, 0, draws one per cache: docs/notes/l1.md D21). */
#define TEST_SKETCH_SEED 1

#endif
