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

.PHONY: build env-up env-down env-logs test unit integration deploy-check lint docker-build

build:
	$(GO) build -o bin/sluice ./cmd/sluice

env-up:
	bash test/env/up.sh

env-down:
	bash test/env/down.sh

env-logs:
	bash test/env/logs.sh

# Unit tests, the deploy/ checks, then integration tests against the test
# environment, then the short subset of the reliability suite (test/chaos,
# see `chaos` below); on a failure, the end of the Kafka and PostgreSQL logs
# follows the test output.
test: env-up
	@source test/env/.state/env.sh; \
	status=0; \
	echo "== unit tests"; \
	$(GO) test $(GOTESTFLAGS) -count=1 ./... || status=1; \
	echo "== Go benchmarks, once each (they must keep compiling and running; figures: make bench, go test -bench)"; \
	$(GO) test -count=1 -run='^$$' -bench=. -benchtime=1x ./... >/dev/null || status=1; \
	echo "== deploy checks"; \
	$(MAKE) --no-print-directory deploy-check || status=1; \
	pkgs="$(INTEGRATION_PKGS)"; \
	if [[ -z $$pkgs ]]; then echo "== no integration tests found"; status=1; else \
		echo "== integration tests: $$pkgs"; \
		$(GO) test $(GOTESTFLAGS) -count=1 -tags integration $$pkgs || status=1; \
	fi; \
	echo "== reliability suite, short subset: $(CHAOS_PKG)"; \
	$(GO) test $(CHAOSFLAGS) -short $(CHAOS_PKG) || status=1; \
	if [[ $$status -ne 0 ]]; then bash test/env/logs.sh; fi; \
	exit $$status

# Integration tests only (the environment must be up: make env-up).
integration: env-up
	@source test/env/.state/env.sh; \
	$(GO) test $(GOTESTFLAGS) -count=1 -tags integration $(INTEGRATION_PKGS) || { bash test/env/logs.sh; exit 1; }

unit:
	$(GO) test $(GOTESTFLAGS) ./...

# deploy/: promtool checks the alert rules and runs their unit tests; sluice
# validates the configuration of the base's ConfigMap; the nested module
# deploy/check builds the kustomizations and decodes every manifest strictly
# into the Kubernetes, Prometheus Operator and KEDA API types (its own go.mod
# keeps those out of sluice's). promtool comes with `make env-up`.
DEPLOY_ENV = PG_DSN=postgres://sluice:secret@db/orders KAFKA_USERNAME=sluice KAFKA_PASSWORD=secret

deploy-check:
	@command -v promtool >/dev/null || { echo "deploy-check: promtool is missing; make env-up installs it (Debian's prometheus package)" >&2; exit 1; }
	promtool check rules deploy/prometheus/sluice-alerts.yaml
	promtool test rules deploy/prometheus/sluice-alerts_test.yaml
	$(DEPLOY_ENV) $(GO) run ./cmd/sluice validate -c deploy/base/sluice.yaml >/dev/null
	cd deploy/check && $(GO) test -shuffle=on -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration $(INTEGRATION_PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) -tags integration $(INTEGRATION_PKGS)

docker-build:
	docker build -t sluice:dev .

# The reliability suite (test/chaos, build tag chaos): the built sluice binary,
# run as separate processes against the real broker and database, is killed,
# has its database or its broker stopped (private servers, never the shared
# ones), has its group churned, is overloaded and flooded with poison; every
# scenario fails on any lost record. `make chaos` runs every scenario at full
# size (bounded by -timeout) and writes its section of docs/reliability.md;
# `make test` runs the short subset (-short); `make soak` runs only the
# 10-minute soak (not in CI) and writes the soak's section. No -race and no
# -shuffle: the binary under test is built as users build it (its RSS is
# measured), and the poison scenario, which compares two runs' throughput,
# runs before the parallel ones. Extra flags go in CHAOSFLAGS_EXTRA, e.g.
# make chaos CHAOSFLAGS_EXTRA='-run TestOverload'.
CHAOS_PKG = ./test/chaos
CHAOSFLAGS = -tags chaos -count=1 -v -timeout 30m $(CHAOSFLAGS_EXTRA)

.PHONY: chaos soak
chaos: env-up
	@source test/env/.state/env.sh; \
	SLUICE_CHAOS_REPORT=$(CURDIR)/docs/reliability.md $(GO) test $(CHAOSFLAGS) $(CHAOS_PKG) || { bash test/env/logs.sh; exit 1; }

soak: env-up
	@source test/env/.state/env.sh; \
	SLUICE_CHAOS_SOAK=1 SLUICE_CHAOS_REPORT=$(CURDIR)/docs/reliability.md \
		$(GO) test $(CHAOSFLAGS) -run '^TestSoak$$' $(CHAOS_PKG) || { bash test/env/logs.sh; exit 1; }

# sluice (insert, upsert, exactly-once; end-to-end latency at half load) next
# to baselines measured in the same run against the test environment (a raw
# pgx CopyFrom ceiling, a naive poll-COPY-commit loop, a hand-written staged
# upsert); writes BENCHMARKS.md and the plot docs/bench-insert.png. Extra flags
# go in BENCHFLAGS, e.g. make bench BENCHFLAGS='-records 200000', or
# BENCHFLAGS='-profile /tmp/prof' for pprof CPU and allocation profiles of
# every sluice run (go run ./test/bench -h lists them all).
.PHONY: bench
bench: env-up
	@source test/env/.state/env.sh; \
	$(GO) run ./test/bench -out BENCHMARKS.md -plot docs/bench-insert.png $(BENCHFLAGS)
