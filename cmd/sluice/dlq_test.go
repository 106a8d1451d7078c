package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// replayConfig writes a sluice configuration for brokers, group orders-sink
// and DLQ topic orders.dlq, and returns its path.
func replayConfig(t *testing.T, brokers ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := fmt.Sprintf("kafka: {brokers: [%s], group: orders-sink, topics: [orders]}\nsink: {type: file}\ndlq: {topic: orders.dlq}\n",
		strings.Join(brokers, ", "))
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestDLQReplayUsageErrorsExit2(t *testing.T) {
	cfg := replayConfig(t, "127.0.0.1:1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", nil, `required flag(s) "config"`},
		{"bad since", []string{"--since", "yesterday"}, `--since "yesterday"`},
		{"negative since", []string{"--since", "-2h"}, "positive duration"},
		{"unknown reason", []string{"--reason", "decode,sink-rejected"}, `--reason "sink-rejected": want one of decode, mapping, timeout, sink_rejected`},
		{"negative rate", []string{"--rate", "-1"}, "--rate -1"},
		{"zero max replays", []string{"--max-replays", "0"}, "--max-replays 0"},
		{"the pipeline's group", []string{"--group", "orders-sink"}, "pipeline's own group"},
		{"to the DLQ itself", []string{"--to", "orders.dlq"}, "is the dead-letter topic itself"},
		{"an argument", []string{"orders"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"dlq", "replay"}, tc.args...)
			if tc.name != "no config" {
				args = append(args, "-c", cfg)
			}
			code, _, errOut := sluice(t, args...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut, tc.want)
			}
		})
	}
	if code, _, _ := sluice(t, "dlq"); code != 2 {
		t.Errorf("dlq without a subcommand: exit %d, want 2", code)
	}
}

func TestDLQReplayFailuresExit1(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("kafka: {brokrs: [a:1]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := sluice(t, "dlq", "replay", "-c", bad); code != 1 || !strings.Contains(errOut, "kafka.brokrs") {
		t.Errorf("invalid config: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut := sluice(t, "dlq", "replay", "-c", replayConfig(t, "127.0.0.1:1"))
	if code != 1 || !strings.Contains(errOut, "cannot reach any Kafka broker") || !strings.Contains(errOut, "kafka.brokers: 127.0.0.1:1") {
		t.Errorf("unreachable broker: exit %d, stderr %q", code, errOut)
	}
}

func TestDLQReplayReplaysAndReports(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "orders"), kfake.SeedTopics(2, "orders.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := dlq.NewKafka("orders.dlq", kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	for i, reason := range []string{flow.ReasonDecode, flow.ReasonDecode, flow.ReasonTimeout} {
		r := &record.Record{Topic: "orders", Partition: 1, Offset: int64(i), Timestamp: time.Now(), Key: fmt.Appendf(nil, "k%d", i), Value: []byte("{")}
		if err := k.DeadLetter(t.Context(), r, &flow.PoisonError{Reason: reason, Err: errors.New("bad")}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := replayConfig(t, c.ListenAddrs()...)

	code, out, errOut := sluice(t, "dlq", "replay", "-c", cfg, "--dry-run", "--reason", "decode", "--since", "1h")
	if code != 0 || strings.Count(out, "would replay orders.dlq/") != 2 || !strings.Contains(out, "would replay:                  2  (orders: 2)") ||
		!strings.Contains(out, "skipped by filter:             1") || !strings.Contains(out, "dry run") {
		t.Errorf("dry run: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	code, out, errOut = sluice(t, "dlq", "replay", "-c", cfg, "--rate", "1000")
	if code != 0 || !strings.Contains(out, "scanned:                       3") || !strings.Contains(out, "replayed:                      3  (orders: 3)") ||
		!strings.Contains(out, "group orders-sink.dlq-replay") || !strings.Contains(out, "errors:                        0") {
		t.Errorf("replay: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// Everything is committed: the next run has nothing to do.
	code, out, _ = sluice(t, "dlq", "replay", "-c", cfg)
	if code != 0 || !strings.Contains(out, "scanned:                       0") {
		t.Errorf("second replay: exit %d\nstdout:\n%s", code, out)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2h", now.Add(-2 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"2025-05-31T08:00:00Z", time.Date(2025, 5, 31, 8, 0, 0, 0, time.UTC)},
		{"2025-05-31T10:00:00.5+02:00", time.Date(2025, 5, 31, 8, 0, 0, 5e8, time.UTC)},
	} {
		got, err := parseSince(tc.in, now)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "2 hours", "-1h", "2025-05-31"} {
		if _, err := parseSince(in, now); err == nil {
			t.Errorf("parseSince(%q) accepted", in)
		}
	}
}
