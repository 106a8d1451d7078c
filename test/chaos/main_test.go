//go:build chaos

// Package chaos is sluice's reliability suite: it runs the built sluice
// binary as separate processes (as it runs in production) against a real
// Kafka broker and a real PostgreSQL server, breaks things while records
// flow, and checks the table and the dead-letter topic at the end. Every
// scenario fails on any lost record: a record of the topic that is neither in
// the table nor in the DLQ topic.
//
//	make chaos   every scenario at full size; writes docs/reliability.md
//	make test    the short subset (go test -short), after the integration tests
//	make soak    the 10-minute soak only (not in CI)
//
// It is a Go test package (build tag chaos) rather than a program: the
// scenarios are independent, need clean-up on every failure path (t.Cleanup
// kills the processes and servers they started), run selectively (-run,
// -short) and in parallel where they do not measure each other, and reuse
// package testenv, which hands out topics, groups, tables and private
// PostgreSQL and Kafka servers to a testing.TB.
//
// Scenarios that stop a server (the sink outage, the broker restart, the
// soak's hiccups) stop a private one (testenv.NewPrivatePostgres,
// testenv.NewPrivateKafka), never the shared servers of test/env/up.sh that
// other test packages use in parallel. Everything listens on 127.0.0.1.
//
// The machines this runs on are small and shared: nothing is asserted on
// speed. Throughputs are compared as ratios measured in the same run, and
// where a ratio is too noisy to hold here the scenario reports it and fails
// only on lost records (see each scenario's comment).
//
// Variables:
//
//	SLUICE_TEST_KAFKA_BROKERS, SLUICE_TEST_PG_DSN  the shared servers (test/env/.state/env.sh)
//	SLUICE_CHAOS_REPORT                            write the figures as markdown to this file
//	SLUICE_CHAOS_SOAK=1                            run TestSoak (make soak)
//	SLUICE_CHAOS_SLUICE                            a built sluice binary to use instead of building ./cmd/sluice (-tags chaoshook, for TestSlowRecord)
package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Variables of the suite.
const (
	envReport = "SLUICE_CHAOS_REPORT"
	envSoak   = "SLUICE_CHAOS_SOAK"
	envSluice = "SLUICE_CHAOS_SLUICE"
)

// suite is what TestMain prepares for every scenario: the binary, and the
// figures the scenarios report. It is written before m.Run and only read
// after, except for the report, which has its own lock.
var suite struct {
	bin     string // the sluice binary under test
	build   string // how it was built, for the report
	started time.Time
	report  *report
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	suite.started = time.Now()
	suite.report = &report{}
	dir, err := os.MkdirTemp("", "sluice-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(dir)

	if bin := os.Getenv(envSluice); bin != "" {
		suite.bin, suite.build = bin, "given as "+envSluice
	} else {
		bin, build, err := buildSluice(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		suite.bin, suite.build = bin, build
	}

	code := m.Run()

	if path := os.Getenv(envReport); path != "" {
		if err := suite.report.write(path); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: writing the report:", err)
			code = 1
		} else {
			fmt.Fprintln(os.Stderr, "chaos: wrote", path)
		}
	}
	if code == 0 {
		// Every client, process and sampler a scenario started is gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: goroutines left after the scenarios: %v\n", err)
			code = 1
		}
	}
	return code
}

// buildSluice builds ./cmd/sluice of this module into dir, as a user would
// (no race detector: the scenarios measure the process's memory), and
// describes the tree it came from.
func buildSluice(dir string) (bin, build string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin = filepath.Join(dir, "sluice")
	// The chaoshook tag adds one test hook: records with the
	// sluice-chaos-hang header map slowly (TestSlowRecord).
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "chaoshook", "-o", bin, "./cmd/sluice")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build -tags chaoshook ./cmd/sluice: %w\n%s", err, out)
	}
	git := func(args ...string) string {
		c := exec.CommandContext(ctx, "git", args...)
		c.Dir = root
		o, _ := c.Output()
		return strings.TrimSpace(string(o))
	}
	build = "built with " + goVersion(ctx)
	if rev := git("rev-parse", "--short=12", "HEAD"); rev != "" {
		build += " from " + rev
		if git("status", "--porcelain", "--untracked-files=no") != "" {
			build += " plus uncommitted changes"
		}
	}
	return bin, build, nil
}

func goVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return "go (unknown version)"
	}
	return strings.TrimSpace(string(out))
}

// soakEnabled reports whether TestSoak should run (make soak).
func soakEnabled() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv(envSoak)))
	return v != "" && v != "0" && v != "false"
}
