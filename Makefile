# Strata: the two README commands, and the rest.
#   make run    install missing packages, build (release), start `strata serve`
#   make test   install missing packages, build (ASan+UBSan, TSan twins), run every test via CTest
# Other targets: build, build-test, format, format-check, fuzz, bench-*, clean.
# Benchmarks (never part of `make test`; each installs what it compares against first):
#   make bench-http       strata GET /healthz vs nginx `return 200`      (wrk, interleaved rounds)
#   make bench-redis      Strata's Redis client vs redis-benchmark         (GET and EVALSHA)
#   make bench-l1         L1 hit ratio on the shared traces and throughput vs Caffeine 2.6.2
#   make bench-flashsale  Lua order path vs the seed's segment-lock strategy, 64/256/1024 buyers (invariants checked)
#   make bench-soldout    a sell-out burst (orders answered from the L1) vs nginx `return 200`
#   make bench-redpacket  HTTP grabs vs redis-benchmark running the same EVALSHA
SHELL := /bin/bash
JOBS ?= $(shell nproc)
BUILD_RELEASE := build/release
BUILD_TEST := build/test
BUILD_FUZZ := build/fuzz
# Ninja when installed, but never for a build directory already configured with another
# generator (CMake refuses to switch; a tree first built without ninja keeps Makefiles).
CMAKE_GEN = $(if $(wildcard $(1)/CMakeCache.txt),,$(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja"))
FUZZ_SECONDS ?= 600
ARGS ?=

.PHONY: run test deps build build-test format format-check fuzz clean \
        bench-deps bench-http bench-redis bench-l1 bench-flashsale bench-soldout bench-redpacket

deps:
	@scripts/setup-deps

build: deps
	@cmake -S . -B $(BUILD_RELEASE) $(call CMAKE_GEN,$(BUILD_RELEASE)) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_RELEASE) -j$(JOBS) --target strata

run: build
	exec $(BUILD_RELEASE)/strata serve $(ARGS)

build-test: deps
	@cmake -S . -B $(BUILD_TEST) $(call CMAKE_GEN,$(BUILD_TEST)) -DCMAKE_BUILD_TYPE=Test >/dev/null
	@cmake --build $(BUILD_TEST) -j$(JOBS)

test: build-test format-check
	@cd $(BUILD_TEST) && ctest --output-on-failure --no-label-summary --timeout 600 -j$(JOBS) $(CTEST_ARGS)

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

format-check:
	@scripts/format-check

fuzz: deps
	@cmake -S . -B $(BUILD_FUZZ) -DCMAKE_C_COMPILER=clang-14 -DCMAKE_BUILD_TYPE=Fuzz >/dev/null
	@cmake --build $(BUILD_FUZZ) -j$(JOBS)
	@scripts/run-fuzzers $(BUILD_FUZZ)/fuzz $(FUZZ_SECONDS)

bench-deps:
	@scripts/setup-deps --bench

bench-http: build bench-deps
	bench/http-compare.sh --rounds 5 --duration 8 --workers $(JOBS) \
	  --server-cmd "$(CURDIR)/$(BUILD_RELEASE)/strata serve --listen 127.0.0.1:{port} --workers {workers} --var-dir $(CURDIR)/build/bench-var --log-level warn"

bench-redis: build bench-deps
	STRATA_BIN=$(CURDIR)/$(BUILD_RELEASE)/strata REQUESTS=1000000 ROUNDS=5 bench/redis-compare.sh

bench-l1: build bench-deps
	STRATA_BIN=$(CURDIR)/$(BUILD_RELEASE)/strata bench/l1-compare.sh

bench-flashsale: build bench-deps
	STRATA_BIN=$(CURDIR)/$(BUILD_RELEASE)/strata bench/flashsale-compare.sh --rounds 3 --stock 20000 --connections "64 256 1024"

bench-soldout: build bench-deps
	STRATA_BIN=$(CURDIR)/$(BUILD_RELEASE)/strata bench/soldout-compare.sh --rounds 5 --duration 8 --workers $(JOBS)

bench-redpacket: build bench-deps
	STRATA_BIN=$(CURDIR)/$(BUILD_RELEASE)/strata bench/redpacket-compare.sh --rounds 5 --count 10000

clean:
	rm -rf build
