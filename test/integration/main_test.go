//go:build integration

// Package integration holds the tests that run sluice's parts against the
// real Kafka broker and the real PostgreSQL server of the test environment
// (test/env/up.sh; see package testenv). They build only with -tags
// integration; `make test` starts the environment and runs them.
package integration

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
