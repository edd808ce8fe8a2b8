# fleetshift: one entry point for build, run, test, lint and bench.
MODULES := shared streams migrations ingest planner dispatcher healthwatch stateapi fleetshift agent realtest
GO ?= go
BIN := $(CURDIR)/bin
# --version of both binaries; without it they report the VCS revision Go records (dev-<rev>).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: fuzz build run test test-short lint fmt tidy bench bench-quick clean images chaos chaos-short test-docker test-realtest test-realtest-if-docker

build:
	@mkdir -p $(BIN)
	cd fleetshift && $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/fleetshift ./cmd/fleetshift
	cd agent && $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/fleetshift-agent ./cmd/fleetshift-agent

# FROM scratch images from static host-built binaries (no base image is pulled): fleetshift/fleetshift:dev,
# fleetshift/agent:dev, fleetshift/nats-server:dev, fleetshift/registry:dev, fleetshift/demoapp:v1|v2|broken.
images:
	@scripts/build-images

# The whole system on the embedded default: local PostgreSQL (database fleetshift, created if missing),
# embedded NATS JetStream, every service behind one HTTP listener.
run: build
	$(BIN)/fleetshift serve

# Every module's tests against real PostgreSQL and embedded JetStream. scripts/with-postgres starts a
# throwaway cluster when none answers and initdb is installed. The console's browser test needs Chromium.
test:
	@FLEETSHIFT_REQUIRE_BROWSER=1 scripts/with-postgres $(MAKE) --no-print-directory test-modules

# Every module runs even when an earlier one fails; the last line names the failing modules. Then
# shared/pgtest/leftovers fails if tests left a database or a temp dir behind.
test-modules:
	@failed=""; for m in $(MODULES); do \
		echo "== $$m"; \
		if [ $$m = realtest ]; then $(MAKE) --no-print-directory test-realtest-if-docker || failed="$$failed $$m"; continue; fi; \
		(cd $$m && $(GO) test -count=1 -timeout 12m ./...) || failed="$$failed $$m"; \
	done; \
	echo "== leftovers (databases and temp dirs tests must not leave)"; \
	(cd shared && $(GO) run ./pgtest/leftovers) || failed="$$failed leftovers"; \
	if [ -n "$$failed" ]; then echo "FAIL: modules failing:$$failed"; exit 1; fi; \
	echo "ok: all modules passed ($(MODULES))"

# The Docker-backed tests (module realtest: real engine, registry container, compose): make images first,
# then every realtest package with FLEETSHIFT_REQUIRE_DOCKER=1 (a missing engine fails, never skips).
test-docker:
	@docker info >/dev/null 2>&1 || { echo "make test-docker: no Docker engine answers (docker info failed)" >&2; exit 1; }
	@scripts/with-postgres $(MAKE) --no-print-directory test-realtest

test-realtest:
	@scripts/build-images >/dev/null
	cd realtest && FLEETSHIFT_REQUIRE_DOCKER=1 FLEETSHIFT_IMAGES_PREBUILT=1 $(GO) test -count=1 -timeout 25m -parallel 8 ./...

# Under make test: required whenever `docker info` answers; without an engine they skip, and say so.
test-realtest-if-docker:
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory test-realtest; else \
		echo "no Docker engine answers: the Docker-backed tests skip (make test-docker fails instead)"; \
		cd realtest && $(GO) test -count=1 ./...; fi

# Every fuzz target for FUZZTIME each (default 10s); CI runs it with a shorter time.
fuzz:
	@scripts/with-postgres scripts/fuzz

lint:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt:
	gofmt -w $(MODULES)

tidy:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) mod tidy); done

bench:
	cd fleetshift && $(GO) run ./cmd/fleetshift-bench -set full -out ../docs/benchmarks.md

bench-quick:
	cd fleetshift && $(GO) run ./cmd/fleetshift-bench -set quick

# Fault injection (docs/reliability.md, "Chaos"): seeded runs of a staged rollout over 2,000 simulated
# devices with kill -9, PostgreSQL stops, devices cut off and poison messages, and in cluster mode a
# 3-node NATS cluster with a node killed or cut off; exits non-zero on any violated invariant. Needs
# initdb/pg_ctl (the harness owns its PostgreSQL); the cut uses `ip netns` as root (else SIGSTOP). MODE=
# forces serve, services or cluster. Not part of `make test`.
chaos:
	cd fleetshift && $(GO) run ./cmd/fleetshift-chaos -runs $(or $(RUNS),50) -seed $(or $(SEED),1) $(if $(MODE),-mode $(MODE))

# The short seeded set CI runs: the same seeds and faults over 500 devices, to stay within minutes.
chaos-short:
	cd fleetshift && $(GO) run ./cmd/fleetshift-chaos -runs 3 -seed 1 -devices 500

clean:
	rm -rf $(BIN)
