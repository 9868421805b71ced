# Strata: the two README commands, and the rest.
#   make run    install missing packages, build (release), start `strata serve`
#   make test   install missing packages, build (ASan+UBSan, TSan twins), run every test via CTest
# Other targets: build, build-test, format, format-check, fuzz, bench-*, clean.
SHELL := /bin/bash
JOBS ?= $(shell nproc)
BUILD_RELEASE := build/release
BUILD_TEST := build/test
BUILD_FUZZ := build/fuzz
CMAKE_GEN := $(shell command -v ninja >/dev/null 2>&1 && echo "-G Ninja")
FUZZ_SECONDS ?= 600
ARGS ?=

.PHONY: run test deps build build-test format format-check fuzz fuzz-smoke clean

deps:
	@scripts/setup-deps

build: deps
	@cmake -S . -B $(BUILD_RELEASE) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_RELEASE) -j$(JOBS) --target strata

run: build
	exec $(BUILD_RELEASE)/strata serve $(ARGS)

build-test: deps
	@cmake -S . -B $(BUILD_TEST) $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Test >/dev/null
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

clean:
	rm -rf build
