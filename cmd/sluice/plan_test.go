package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

// planRow returns the cells of the plan's table row named name (cells are
// separated by two or more spaces), or fails the test.
func planRow(t *testing.T, out, name string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if cells[0] == name {
			return cells
		}
	}
	t.Fatalf("no row %q in:\n%s", name, out)
	return nil
}

// The README's example, worked out in internal/plan's tests and in
// docs/capacity.md: 3 replicas, 6 partitions, 3,000,000 records of lag
// budget, lagThreshold 500,000, a flow budget of 30,000 records and 8 MiB.
var readmeExample = []string{"plan", "--record-bytes", "200", "--rate", "50000", "--lag", "60s", "--replica-throughput", "30000"}

// pinnedYAML is docs/capacity.md's plan.yaml: the settings the plan depends
// on spelled out, so that the figures do not move with the defaults.
const pinnedYAML = `kafka:
  brokers: [kafka:9092]
  group: orders-sink
  topics: [orders]
  max_poll_records: 500
  fetch_max_bytes: 16MiB
  max_concurrent_fetches: 2
  fetch_max_wait: 500ms
flow:
  max_buffered_records: 40000
  max_buffered_bytes: 64MiB
  resume_at: 0.5
sink:
  type: file
  concurrency: 4
  batch: {max_records: 5000, max_bytes: 8MiB}
`

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPlanPrintsTheSizing(t *testing.T) {
	withConfig := append(append([]string{}, readmeExample...), "-c", writeConfig(t, pinnedYAML))
	code, out, errOut := sluice(t, withConfig...)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	for _, want := range []struct {
		row   string
		cells []string
	}{
		{"replicas", []string{"3", "ceil(50,000 × 1.5 / 30,000) = ceil(2.5) = 3"}},
		{"partitions", []string{"6"}},
		{"capacity", []string{"90,000/s"}},
		{"lag budget", []string{"3,000,000 records"}},
		{"catch-up of the budget", []string{"1m15s"}},
		{"minReplicaCount", []string{"3"}},
		{"maxReplicaCount", []string{"6"}},
		{"lagThreshold", []string{`"500000"`}},
		{"activationLagThreshold", []string{`"6"`}},
		{"flow.max_buffered_records", []string{"40,000", "30,000"}},
		// 30,000 × 200 B = 5.7 MiB, rounded up to 6, raised to sink.batch.max_bytes.
		{"flow.max_buffered_bytes", []string{"64MiB", "8MiB"}},
		// 64 + 2 × 16 + 2 × 64 MiB + 500 × 200 B, and with 2 × 8 MiB.
		{"memory per replica", []string{"224.1 MiB", "112.1 MiB"}},
	} {
		got := planRow(t, out, want.row)
		if len(got) < 1+len(want.cells) || strings.Join(got[1:1+len(want.cells)], "|") != strings.Join(want.cells, "|") {
			t.Errorf("row %q = %q, want it to start with %q", want.row, got, want.cells)
		}
	}
	for _, want := range []string{"572.2 MiB", "24s", "at 6 replicas (maxReplicaCount)", "current (" + withConfig[len(withConfig)-1] + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "warning:") {
		t.Errorf("a plan that fits warns:\n%s", out)
	}

	// --lag takes seconds as well as a duration.
	for _, lag := range []string{"60", "1m"} {
		args := append([]string{}, withConfig...)
		args[6] = lag
		if code, out2, _ := sluice(t, args...); code != 0 || out2 != out {
			t.Errorf("--lag %s: exit %d, output differs from --lag 60s:\n%s", lag, code, out2)
		}
	}
}

func TestPlanStartsFromTheConfigsSettings(t *testing.T) {
	yaml := "kafka: {brokers: [a:9092], group: g, topics: [t], max_poll_records: 1000, fetch_max_bytes: 8MiB,\n" +
		"  max_concurrent_fetches: 1, fetch_max_wait: 200ms}\n" +
		"flow: {max_buffered_records: 20000, max_buffered_bytes: 32MiB, resume_at: 0.25}\n" +
		"sink: {type: file, concurrency: 8, batch: {max_records: 2000, max_bytes: 4MiB}}\n"
	f := writeConfig(t, yaml)
	code, out, errOut := sluice(t, append(readmeExample, "-c", f)...)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	// Current: 64 + 1 × 8 + 2 × 32 MiB + 1,000 × 200 B = 136 MiB + 200,000 B.
	// Planned: max(ceil(30,000 × 0.2 / 0.25), 8 × 2,000 + 1,000) = max(24,000,
	// 17,000) = 24,000 records; × 200 B = 4.6 → 5 MiB (above the batch's 4):
	// 64 + 8 + 10 MiB + 200,000 B = 82 MiB + 200,000 B.
	for _, want := range []struct {
		row   string
		cells []string
	}{
		{"flow.max_buffered_records", []string{"20,000", "24,000"}},
		{"flow.max_buffered_bytes", []string{"32MiB", "5MiB"}},
		{"memory per replica", []string{"136.2 MiB", "82.2 MiB"}},
	} {
		got := planRow(t, out, want.row)
		if len(got) < 1+len(want.cells) || strings.Join(got[1:1+len(want.cells)], "|") != strings.Join(want.cells, "|") {
			t.Errorf("row %q = %q, want it to start with %q", want.row, got, want.cells)
		}
	}
	if !strings.Contains(out, "current ("+f+")") {
		t.Errorf("the current column does not name %s:\n%s", f, out)
	}
}

func TestPlanStartsFromTheDefaultsWithoutAConfig(t *testing.T) {
	code, out, errOut := sluice(t, readmeExample...)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if got, want := planRow(t, out, "flow.max_buffered_records")[1], thousands(int64(config.Default().Flow.MaxBufferedRecords)); got != want {
		t.Errorf("current flow.max_buffered_records %s, want the default %s", got, want)
	}
	if !strings.Contains(out, "current (defaults)") {
		t.Errorf("the current column does not say it holds the defaults:\n%s", out)
	}
}

func TestPlanWarnsWhenTheTopicHasTooFewPartitions(t *testing.T) {
	code, out, errOut := sluice(t, append(readmeExample, "--partitions", "2")...)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if !strings.Contains(out, "warning: the topic's 2 partitions cannot carry 75,000 records/s") {
		t.Errorf("no warning about the partitions:\n%s", out)
	}
	if got := planRow(t, out, "maxReplicaCount"); got[1] != "6" {
		t.Errorf("maxReplicaCount %q, want the planned 6 partitions", got[1])
	}
}

func TestPlanRejectsBadInputNamingTheFlag(t *testing.T) {
	with := func(flag, value string) []string {
		args := append([]string{}, readmeExample...)
		for i, a := range args {
			if a == flag {
				args[i+1] = value
				return args
			}
		}
		return append(args, flag, value)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing rate", []string{"plan", "--record-bytes", "200", "--lag", "60s", "--replica-throughput", "30000"}, 2, `"rate"`},
		{"zero rate", with("--rate", "0"), 2, "--rate: is 0"},
		{"rate not a number", with("--rate", "fast"), 2, "--rate"},
		{"bad lag", with("--lag", "a minute"), 2, "--lag"},
		{"negative lag", with("--lag", "-5s"), 2, "--lag"},
		{"bad size", with("--record-bytes", "12XB"), 2, "--record-bytes"},
		{"zero size", with("--record-bytes", "0"), 2, "--record-bytes"},
		{"max below average", with("--max-record-bytes", "100"), 2, "--max-record-bytes"},
		{"throughput", with("--replica-throughput", "-1"), 2, "--replica-throughput"},
		{"headroom below 1", with("--headroom", "0.5"), 2, "--headroom"},
		{"negative partitions", with("--partitions", "-1"), 2, "--partitions"},
		{"zero scale-out", with("--scale-out", "0"), 2, "--scale-out"},
		{"an argument", append(append([]string{}, readmeExample...), "extra"), 2, "extra"},
		{"missing config", with("--config", "/nonexistent/sluice.yaml"), 1, "/nonexistent/sluice.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := sluice(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d naming %s", code, errOut, tc.code, tc.want)
			}
			if out != "" {
				t.Errorf("printed a plan for bad input:\n%s", out)
			}
		})
	}
}
