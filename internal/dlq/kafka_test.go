package dlq

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	_ flow.DeadLetterer      = (*Kafka)(nil)
	_ flow.AsyncDeadLetterer = (*Kafka)(nil)
)

func TestKafkaDeadLetterKeepsTheRecordAndAddsHeaders(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := NewKafka("orders.dlq", kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if err := k.Ensure(t.Context()); err != nil {
		t.Fatalf("Ensure created no topic: %v", err)
	}
	ts := time.UnixMilli(1_700_000_000_123)
	r := &record.Record{Topic: "orders", Partition: 2, Offset: 41, Timestamp: ts, Key: []byte("k1"), Value: []byte(`{"id":`),
		Headers: []record.Header{{Key: "trace", Value: []byte("abc")}}}
	cause := &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: "23502",
		Err: errors.New(`insert via postgres://sluice:hunter2@db:5432/x failed; password=hunter2 null value in column "id"`)}
	if err := k.DeadLetter(t.Context(), r, cause); err != nil {
		t.Fatal(err)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("orders.dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 {
		t.Fatalf("%d records in the DLQ, want 1", len(recs))
	}
	got := recs[0]
	if string(got.Key) != "k1" || string(got.Value) != `{"id":` {
		t.Errorf("key/value changed: %q %q", got.Key, got.Value)
	}
	h := map[string]string{}
	for _, x := range got.Headers {
		h[x.Key] = string(x.Value)
	}
	want := map[string]string{
		"trace": "abc", HeaderTopic: "orders", HeaderPartition: "2", HeaderOffset: "41",
		HeaderTimestamp: "1700000000123", HeaderReason: "sink_rejected", HeaderCode: "23502", HeaderAttempts: "1",
	}
	for key, v := range want {
		if h[key] != v {
			t.Errorf("header %s = %q, want %q", key, h[key], v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, h[HeaderFailedAt]); err != nil {
		t.Errorf("%s = %q: %v", HeaderFailedAt, h[HeaderFailedAt], err)
	}
	if msg := h[HeaderMessage]; strings.Contains(msg, "hunter2") || !strings.Contains(msg, `null value in column "id"`) {
		t.Errorf("%s = %q: must keep the reason and drop the secret", HeaderMessage, msg)
	}
}

func TestScrub(t *testing.T) {
	for _, tc := range []struct{ in, out string }{
		{"dial postgres://u:pw@h:5432/db: refused", "dial postgres://[redacted]@h:5432/db: refused"},
		{"host=h user=u password=s3cret dbname=x", "host=h user=u password=[redacted] dbname=x"},
		{"plain message", "plain message"},
		{"amount=-5 breaks check (amount >= 0)", "amount=-5 breaks check (amount >= 0)"},
		{"see https://example.com/docs", "see https://example.com/docs"},
	} {
		if got := Scrub(tc.in); got != tc.out {
			t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.out)
		}
	}
	if got := Scrub(strings.Repeat("x", 5000)); len(got) > maxMessage+4 {
		t.Errorf("Scrub kept %d bytes, bound %d", len(got), maxMessage)
	}
}

// DeadLetterAsync produces what DeadLetter does and reports the broker's
// answer to done, an error included.
func TestKafkaDeadLetterAsync(t *testing.T) {
	e := newReplayEnv(t, 1)
	cause := &flow.PoisonError{Reason: flow.ReasonDecode, Err: errors.New("value is not JSON")}
	rs := []*record.Record{
		{Topic: "orders", Partition: 0, Offset: 3, Timestamp: time.UnixMilli(1_700_000_000_000), Key: []byte("k3"), Value: []byte("{")},
		{Topic: "orders", Partition: 1, Offset: 9, Timestamp: time.UnixMilli(1_700_000_000_000), Key: []byte("k9"), Value: []byte("[")},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, len(rs))
	for _, r := range rs {
		e.dl.DeadLetterAsync(ctx, r, cause, func(err error) { done <- err })
	}
	for range rs {
		if err := <-done; err != nil {
			t.Fatalf("DeadLetterAsync: %v", err)
		}
	}
	recs := e.records(t, dlqTopic)
	if len(recs) != 2 {
		t.Fatalf("%d records in the DLQ, want 2", len(recs))
	}
	for _, got := range recs {
		h := map[string]string{}
		for _, x := range got.Headers {
			h[x.Key] = string(x.Value)
		}
		if h[HeaderReason] != flow.ReasonDecode || (string(got.Key) == "k3") != (h[HeaderOffset] == "3") {
			t.Errorf("dead letter %q headers %v: want reason decode and the record's own offset", got.Key, h)
		}
	}

	e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: dlqTopic, Err: kerr.TopicAuthorizationFailed, Count: -1})
	e.dl.DeadLetterAsync(ctx, rs[0], cause, func(err error) { done <- err })
	if err := <-done; !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("DeadLetterAsync refused by the broker: done(%v), want TOPIC_AUTHORIZATION_FAILED", err)
	}
}

// A record too large for the dead-letter topic must not hold its partition
// for ever: it is dead-lettered without its value and headers, marked, and
// replay skips it.
func TestKafkaDeadLetterTooLargeGoesWithoutItsValue(t *testing.T) {
	e := newReplayEnv(t, 1)
	big := &record.Record{Topic: "orders", Partition: 0, Offset: 7, Timestamp: time.UnixMilli(1_700_000_000_000), Key: []byte("k7"),
		Value: make([]byte, 2<<20), Headers: []record.Header{{Key: "trace", Value: []byte("abc")}}}
	cause := &flow.PoisonError{Reason: flow.ReasonTooLarge, Err: errors.New("2 MiB, the limit is 1 MiB")}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := e.dl.DeadLetter(ctx, big, cause); err != nil {
		t.Fatalf("DeadLetter of a record larger than the producer takes: %v", err)
	}
	recs := e.records(t, dlqTopic)
	if len(recs) != 1 {
		t.Fatalf("%d records in the DLQ, want 1", len(recs))
	}
	got := recs[0]
	h := map[string]string{}
	for _, x := range got.Headers {
		h[x.Key] = string(x.Value)
	}
	if len(got.Value) != 0 || string(got.Key) != "k7" || h["trace"] != "" {
		t.Errorf("dead letter key %q, %d value bytes, trace %q: want the key only", got.Key, len(got.Value), h["trace"])
	}
	if h[HeaderValueOmitted] != strconv.Itoa(big.Size()) || h[HeaderReason] != flow.ReasonTooLarge || h[HeaderOffset] != "7" {
		t.Errorf("headers %v: want %s=%d and the sluice.* headers", h, HeaderValueOmitted, big.Size())
	}

	// Replay leaves it where it is.
	rep, out, err := e.replay(t, ctx, e.cfg())
	if err != nil {
		t.Fatal(err)
	}
	if rep.SkippedOmitted != 1 || rep.ReplayedTotal() != 0 || !strings.Contains(out, "too large for the dead-letter topic") {
		t.Errorf("replay report %+v, output:\n%s\nwant the omitted dead letter skipped and said why", rep, out)
	}
}
