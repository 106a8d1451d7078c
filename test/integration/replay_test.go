//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// replayCLI runs `sluice dlq replay -c cfg args...` and returns its exit code
// and output.
func replayCLI(t *testing.T, bin, cfg string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append([]string{"dlq", "replay", "-c", cfg}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	case err != nil:
		t.Fatalf("sluice dlq replay: %v\n%s", err, out)
	}
	return 0, string(out)
}

// replayReadTopic reads topic from the start until it has n records, and
// checks that no more arrive within a short while.
func replayReadTopic(t *testing.T, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []*kgo.Record
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("read %s: %v (%d of %d records)", topic, err, len(got), n)
		}
		got = append(got, fs.Records()...)
	}
	extra, cancel2 := context.WithTimeout(t.Context(), time.Second)
	defer cancel2()
	got = append(got, cl.PollFetches(extra).Records()...)
	if len(got) != n {
		t.Fatalf("%s holds %d records, want %d", topic, len(got), n)
	}
	return got
}

func replayHeaders(r *kgo.Record) map[string][]string {
	h := map[string][]string{}
	for _, x := range r.Headers {
		h[x.Key] = append(h[x.Key], string(x.Value))
	}
	return h
}

// Records dead-lettered by sluice's DLQ producer go back to their topic with
// `sluice dlq replay`, filtered by reason, with their key, value, timestamp
// and own headers and a replay count; when they fail again and return to the
// DLQ, the count comes with them, and past --max-replays the replay skips
// them instead of looping.
func TestReplayDeadLettersHomeAndStopsALoop(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.NewTopic(t, brokers, 3)
	dlqTopic := testenv.NewTopic(t, brokers, 2)
	pipelineGroup := testenv.NewGroup(t, brokers)
	replayGroup := testenv.NewGroup(t, brokers)
	bin := buildSluice(t)
	cfg := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := fmt.Sprintf("kafka: {brokers: [%s], group: %s, topics: [%s]}\nsink: {type: file}\ndlq: {topic: %s}\n",
		strings.Join(brokers, ", "), pipelineGroup, topic, dlqTopic)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	dl, err := dlq.NewKafka(dlqTopic, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	ts := time.UnixMilli(1_750_000_000_000)
	originals := map[string]*record.Record{}
	for i := range 6 {
		r := &record.Record{Topic: topic, Partition: int32(i % 3), Offset: int64(i), Timestamp: ts.Add(time.Duration(i) * time.Second),
			Key: fmt.Appendf(nil, "order-%d", i), Value: fmt.Appendf(nil, `{"id":%d,"amount":"x"}`, i),
			Headers: []record.Header{{Key: "traceparent", Value: fmt.Appendf(nil, "trace-%d", i)}}}
		cause := flow.Decode(errors.New("amount: not a number"))
		if i >= 4 {
			cause = &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: "23502", Err: errors.New("null value")}
		}
		if err := dl.DeadLetter(t.Context(), r, cause); err != nil {
			t.Fatal(err)
		}
		originals[string(r.Key)] = r
	}

	// Replay the decode failures: four records go home, two are filtered.
	code, out := replayCLI(t, bin, cfg, "--group", replayGroup, "--reason", "decode", "--max-replays", "2", "--rate", "100")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("replayed:                      4  (%s: 4)", topic)) ||
		!strings.Contains(out, "skipped by filter:             2") || !strings.Contains(out, "errors:                        0") {
		t.Fatalf("first replay: exit %d\n%s", code, out)
	}
	t.Logf("first replay:\n%s", out)
	replayed := replayReadTopic(t, brokers, topic, 4)
	for _, r := range replayed {
		o := originals[string(r.Key)]
		if o == nil {
			t.Fatalf("replayed an unknown record %q", r.Key)
		}
		if string(r.Value) != string(o.Value) || !r.Timestamp.Equal(o.Timestamp) {
			t.Errorf("%s: value %q at %v, want the original %q at %v", r.Key, r.Value, r.Timestamp, o.Value, o.Timestamp)
		}
		h := replayHeaders(r)
		if !slices.Equal(h["traceparent"], []string{string(o.Headers[0].Value)}) || !slices.Equal(h[dlq.HeaderReplayCount], []string{"1"}) || len(h) != 2 {
			t.Errorf("%s: headers %v, want traceparent and %s=1 only", r.Key, h, dlq.HeaderReplayCount)
		}
	}

	// They fail again in the pipeline: back to the DLQ, through the DLQ
	// producer, with every header they came with. Replay, fail again, and
	// the third time the replay stops them.
	for round := 2; round <= 3; round++ {
		for _, r := range replayed {
			rec := &record.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp, Key: r.Key, Value: r.Value}
			for _, h := range r.Headers {
				rec.Headers = append(rec.Headers, record.Header{Key: h.Key, Value: h.Value})
			}
			if err := dl.DeadLetter(t.Context(), rec, flow.Decode(errors.New("amount: still not a number"))); err != nil {
				t.Fatal(err)
			}
		}
		code, out = replayCLI(t, bin, cfg, "--group", replayGroup, "--max-replays", "2")
		t.Logf("replay %d:\n%s", round, out)
		if round == 2 {
			if code != 0 || !strings.Contains(out, "scanned:                       4") || !strings.Contains(out, "replayed:                      4") {
				t.Fatalf("replay %d: exit %d\n%s", round, code, out)
			}
			all := replayReadTopic(t, brokers, topic, 8)
			replayed = replayed[:0]
			for _, r := range all {
				if h := replayHeaders(r); slices.Equal(h[dlq.HeaderReplayCount], []string{"2"}) {
					replayed = append(replayed, r)
				}
			}
			if len(replayed) != 4 {
				t.Fatalf("%d records replayed with %s=2, want 4", len(replayed), dlq.HeaderReplayCount)
			}
			continue
		}
		if code != 0 || !strings.Contains(out, "skipped for too many replays:  4") || !strings.Contains(out, "replayed:                      0") ||
			strings.Count(out, "replayed 2 time(s) already, the limit is 2") != 4 {
			t.Fatalf("replay %d: exit %d\n%s", round, code, out)
		}
	}
	replayReadTopic(t, brokers, topic, 8) // nothing more went home

	// The group committed past everything it decided on.
	code, out = replayCLI(t, bin, cfg, "--group", replayGroup, "--dry-run")
	if code != 0 || !strings.Contains(out, "scanned:                       0") {
		t.Errorf("a replay after the last: exit %d\n%s", code, out)
	}
}

// The whole loop an operator runs: rows the table refuses go to the DLQ, the
// operator fixes the table, replays the DLQ to the source topic, and the
// records land in the table next to the others.
func TestReplayedDeadLettersLandInTheTableAfterTheFix(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, "(id bigint PRIMARY KEY, amount numeric(12,2) CONSTRAINT amount_positive CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	const n, bad = 3000, 60
	produceOrders(t, brokers, topic, n, func(i int) []byte {
		if i%(n/bad) == 0 {
			return fmt.Appendf(nil, `{"id":%d,"amount":-1.00,"seq":%d}`, i, i) // refused by the CHECK
		}
		return order(i)
	})
	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeUpsert)
	cfg.DLQ.Topic = topic + ".dlq"
	testenv.DeleteTopicAtEnd(t, testenv.Admin(t, brokers), cfg.DLQ.Topic)

	r := start(t, cfg)
	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	conn := testenv.Postgres(t, dsn)
	if got := count(t, conn, "SELECT count(*) FROM "+table); got != n-bad {
		t.Fatalf("%d rows before the fix, want %d (the %d refused ones in the DLQ)", got, n-bad, bad)
	}

	// The fix: negative amounts are refunds, the constraint goes.
	if _, err := conn.Exec(t.Context(), "ALTER TABLE "+table+" DROP CONSTRAINT amount_positive"); err != nil {
		t.Fatal(err)
	}
	rep, err := dlq.Replay(t.Context(), dlq.ReplayConfig{Topic: cfg.DLQ.Topic, Group: group + ".replay", MaxReplays: dlq.DefaultMaxReplays},
		[]kgo.Opt{kgo.SeedBrokers(brokers...)})
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if rep.Replayed[topic] != bad {
		t.Fatalf("replayed %v, want %d records to %s", rep.Replayed, bad, topic)
	}

	r = start(t, cfg)
	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	if got := count(t, conn, "SELECT count(*) FROM "+table); got != n {
		t.Errorf("%d rows after the replay, want all %d", got, n)
	}
	if got := count(t, conn, "SELECT count(*) FROM "+table+" WHERE amount < 0"); got != bad {
		t.Errorf("%d replayed rows in the table, want %d", got, bad)
	}
}
