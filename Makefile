# sluice: build, test and lint. `make test` is what CI runs (.ci/run): it
# starts the real Kafka broker and PostgreSQL server of the test environment
# (test/env/up.sh, idempotent) and runs the unit tests and then the
# integration tests (build tag `integration`) against them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= go
GOTESTFLAGS ?= -race -shuffle=on
STATICCHECK_VERSION ?= v0.8.2

# Packages with at least one file built only under the integration tag.
INTEGRATION_PKGS = $(shell grep -rlE --include='*.go' --exclude-dir=.state \
	'^//go:build .*\<integration\>' . | xargs -r -n1 dirname | sort -u)

.PHONY: build env-up env-down env-logs test unit integration lint docker-build

build:
	$(GO) build -o bin/sluice ./cmd/sluice

env-up:
	bash test/env/up.sh

env-down:
	bash test/env/down.sh

env-logs:
	bash test/env/logs.sh

# Unit tests, then integration tests against the test environment; on a
# failure, the end of the Kafka and PostgreSQL logs follows the test output.
test: env-up
	@source test/env/.state/env.sh; \
	status=0; \
	echo "== unit tests"; \
	$(GO) test $(GOTESTFLAGS) -count=1 ./... || status=1; \
	pkgs="$(INTEGRATION_PKGS)"; \
	if [[ -z $$pkgs ]]; then echo "== no integration tests found"; status=1; else \
		echo "== integration tests: $$pkgs"; \
		$(GO) test $(GOTESTFLAGS) -count=1 -tags integration $$pkgs || status=1; \
	fi; \
	if [[ $$status -ne 0 ]]; then bash test/env/logs.sh; fi; \
	exit $$status

# Integration tests only (the environment must be up: make env-up).
integration: env-up
	@source test/env/.state/env.sh; \
	$(GO) test $(GOTESTFLAGS) -count=1 -tags integration $(INTEGRATION_PKGS) || { bash test/env/logs.sh; exit 1; }

unit:
	$(GO) test $(GOTESTFLAGS) ./...

lint:
	$(GO) vet ./...
	$(GO) vet -tags integration $(INTEGRATION_PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags integration $(INTEGRATION_PKGS)

docker-build:
	docker build -t sluice:dev .

# sluice's insert-mode throughput next to a raw pgx CopyFrom ceiling, measured
# in one run against the test environment; writes BENCHMARKS.md. Extra flags go
# in BENCHFLAGS, e.g. make bench BENCHFLAGS='-records 100000'.
.PHONY: bench
bench: env-up
	@source test/env/.state/env.sh; \
	$(GO) run ./test/bench -out BENCHMARKS.md $(BENCHFLAGS)
