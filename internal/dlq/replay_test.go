package dlq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

const (
	dlqTopic = "orders.dlq"
	group    = "orders-sink.dlq-replay"
)

// replayEnv is a kfake cluster with the topics orders (3 partitions),
// payments (1) and orders.dlq, and a dead-letterer writing to orders.dlq.
type replayEnv struct {
	c     *kfake.Cluster
	addrs []string
	dl    *Kafka
	adm   *kadm.Client
}

func newReplayEnv(t *testing.T, dlqPartitions int32) *replayEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "orders"), kfake.SeedTopics(1, "payments"),
		kfake.SeedTopics(dlqPartitions, dlqTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e := &replayEnv{c: c, addrs: c.ListenAddrs()}
	if e.dl, err = NewKafka(dlqTopic, kgo.SeedBrokers(e.addrs...)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.dl.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e.adm = kadm.NewClient(cl)
	return e
}

// failed describes one dead letter: the original record's number i, the
// reason, when it failed and the replay count its headers already carry
// ("" for none).
type failed struct {
	i        int
	topic    string
	reason   string
	at       time.Time
	replayed string
}

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func original(f failed) *record.Record {
	topic := f.topic
	if topic == "" {
		topic = "orders"
	}
	r := &record.Record{Topic: topic, Partition: int32(f.i % 3), Offset: int64(100 + f.i),
		Timestamp: time.UnixMilli(1_700_000_000_000 + int64(f.i)), Key: fmt.Appendf(nil, "k%d", f.i),
		Value: fmt.Appendf(nil, `{"id":%d}`, f.i), Headers: []record.Header{{Key: "trace", Value: fmt.Appendf(nil, "t%d", f.i)}}}
	if f.replayed != "" {
		r.Headers = append(r.Headers, record.Header{Key: HeaderReplayCount, Value: []byte(f.replayed)})
	}
	return r
}

// deadLetter writes the records to the DLQ topic, in order, through the DLQ
// producer.
func (e *replayEnv) deadLetter(t *testing.T, fs ...failed) {
	t.Helper()
	for _, f := range fs {
		reason := f.reason
		if reason == "" {
			reason = flow.ReasonDecode
		}
		at := f.at
		if at.IsZero() {
			at = t0
		}
		e.dl.now = func() time.Time { return at }
		if err := e.dl.DeadLetter(t.Context(), original(f), &flow.PoisonError{Reason: reason, Err: errors.New("bad")}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *replayEnv) cfg() ReplayConfig {
	return ReplayConfig{Topic: dlqTopic, Group: group, MaxReplays: DefaultMaxReplays}
}

func (e *replayEnv) replay(t *testing.T, ctx context.Context, cfg ReplayConfig, extra ...kgo.Opt) (*ReplayReport, string, error) {
	t.Helper()
	var out bytes.Buffer
	rep, err := Replay(ctx, cfg, append([]kgo.Opt{kgo.SeedBrokers(e.addrs...)}, extra...), WithOutput(&out))
	if rep == nil {
		t.Fatal("Replay returned no report")
	}
	return rep, out.String(), err
}

// records reads every record of topic.
func (e *replayEnv) records(t *testing.T, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ends, err := e.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	want := int64(0)
	ends.Each(func(o kadm.ListedOffset) { want += o.Offset })
	if want == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for int64(len(out)) < want {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("read %s: %v (%d of %d records)", topic, err, len(out), want)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// committed returns the replay group's committed offsets of the DLQ topic.
func (e *replayEnv) committed(t *testing.T) map[int32]int64 {
	t.Helper()
	os, err := e.adm.FetchOffsets(t.Context(), group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		t.Fatal(err)
	}
	m := map[int32]int64{}
	os.Each(func(o kadm.OffsetResponse) {
		if o.Topic == dlqTopic && o.At >= 0 {
			m[o.Partition] = o.At
		}
	})
	return m
}

func headers(r *kgo.Record) map[string][]string {
	h := map[string][]string{}
	for _, x := range r.Headers {
		h[x.Key] = append(h[x.Key], string(x.Value))
	}
	return h
}

func values(rs []*kgo.Record) []string {
	var vs []string
	for _, r := range rs {
		vs = append(vs, string(r.Value))
	}
	slices.Sort(vs)
	return vs
}

func ids(is ...int) []string {
	var vs []string
	for _, i := range is {
		vs = append(vs, fmt.Sprintf(`{"id":%d}`, i))
	}
	slices.Sort(vs)
	return vs
}

func TestReplaySendsRecordsHomeWithSluiceHeadersStrippedAndTheCountRaised(t *testing.T) {
	e := newReplayEnv(t, 2)
	e.deadLetter(t, failed{i: 0}, failed{i: 1, replayed: "1"}, failed{i: 2, topic: "payments", reason: flow.ReasonSinkRejected})

	rep, _, err := e.replay(t, t.Context(), e.cfg())
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if rep.Scanned != 3 || rep.Replayed["orders"] != 2 || rep.Replayed["payments"] != 1 || rep.Errors != 0 ||
		rep.SkippedByFilter != 0 || rep.SkippedMaxReplays != 0 || rep.Backlog != 3 {
		t.Errorf("report %+v, want 3 scanned, 2 to orders and 1 to payments", rep)
	}
	got := append(e.records(t, "orders"), e.records(t, "payments")...)
	if len(got) != 3 {
		t.Fatalf("%d records replayed, want 3", len(got))
	}
	for _, r := range got {
		var i int
		if _, err := fmt.Sscanf(string(r.Value), `{"id":%d}`, &i); err != nil {
			t.Fatal(err)
		}
		want := original(failed{i: i})
		if string(r.Key) != string(want.Key) || !r.Timestamp.Equal(want.Timestamp) {
			t.Errorf("record %d: key %q timestamp %v, want the original's %q %v", i, r.Key, r.Timestamp, want.Key, want.Timestamp)
		}
		h := headers(r)
		wantCount := "1"
		if i == 1 {
			wantCount = "2"
		}
		if !slices.Equal(h["trace"], []string{fmt.Sprintf("t%d", i)}) || !slices.Equal(h[HeaderReplayCount], []string{wantCount}) || len(h) != 2 {
			t.Errorf("record %d headers %v, want trace=t%d and %s=%s only", i, h, i, HeaderReplayCount, wantCount)
		}
	}
	if got := e.committed(t); got[0]+got[1] != 3 {
		t.Errorf("committed %v, want the end of every partition (3 records in all)", got)
	}

	// A second run starts from the commits and finds nothing to do.
	rep, _, err = e.replay(t, t.Context(), e.cfg())
	if err != nil || rep.Scanned != 0 || rep.ReplayedTotal() != 0 {
		t.Errorf("second run: %+v, %v; want nothing scanned", rep, err)
	}
}

func TestReplayFilters(t *testing.T) {
	dead := []failed{
		{i: 0, reason: flow.ReasonDecode, at: t0.Add(-3 * time.Hour)},
		{i: 1, reason: flow.ReasonDecode, at: t0},
		{i: 2, reason: flow.ReasonSinkRejected, at: t0.Add(-3 * time.Hour)},
		{i: 3, reason: flow.ReasonSinkRejected, at: t0.Add(time.Minute)},
		{i: 4, reason: flow.ReasonTimeout, at: t0.Add(time.Hour)},
	}
	for _, tc := range []struct {
		name     string
		reasons  []string
		since    time.Time
		to       string
		want     []int
		filtered int
	}{
		{"everything", nil, time.Time{}, "", []int{0, 1, 2, 3, 4}, 0},
		{"one reason", []string{flow.ReasonDecode}, time.Time{}, "", []int{0, 1}, 3},
		{"two reasons", []string{flow.ReasonSinkRejected, flow.ReasonTimeout}, time.Time{}, "", []int{2, 3, 4}, 2},
		{"since, inclusive", nil, t0, "", []int{1, 3, 4}, 2},
		{"reason and since", []string{flow.ReasonSinkRejected}, t0, "", []int{3}, 4},
		{"to another topic", []string{flow.ReasonTimeout}, time.Time{}, "payments", []int{4}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newReplayEnv(t, 2)
			e.deadLetter(t, dead...)
			cfg := e.cfg()
			cfg.Reasons, cfg.Since, cfg.To = tc.reasons, tc.since, tc.to
			rep, _, err := e.replay(t, t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			target, other := "orders", "payments"
			if tc.to != "" {
				target, other = tc.to, "orders"
			}
			if got := values(e.records(t, target)); !slices.Equal(got, ids(tc.want...)) {
				t.Errorf("%s holds %v, want %v", target, got, ids(tc.want...))
			}
			if n := len(e.records(t, other)); n != 0 {
				t.Errorf("%s holds %d records, want none", other, n)
			}
			if rep.Scanned != len(dead) || rep.SkippedByFilter != tc.filtered || rep.Replayed[target] != len(tc.want) {
				t.Errorf("report %+v, want %d scanned, %d filtered, %d replayed to %s", rep, len(dead), tc.filtered, len(tc.want), target)
			}
			// Filtered records are passed over for good: the group's offsets
			// reach the end.
			if got := e.committed(t); got[0]+got[1] != int64(len(dead)) {
				t.Errorf("committed %v, want every partition's end", got)
			}
		})
	}
}

func TestReplayStopsARecordThatKeepsFailing(t *testing.T) {
	e := newReplayEnv(t, 1)
	// Dead-letter, replay, dead-letter the replayed record again (as the
	// pipeline would: the DLQ producer keeps its headers), and so on.
	e.deadLetter(t, failed{i: 7})
	for round := 1; round <= DefaultMaxReplays; round++ {
		rep, _, err := e.replay(t, t.Context(), e.cfg())
		if err != nil || rep.ReplayedTotal() != 1 {
			t.Fatalf("round %d: %+v, %v; want one record replayed", round, rep, err)
		}
		rs := e.records(t, "orders")
		last := rs[len(rs)-1]
		if h := headers(last); !slices.Equal(h[HeaderReplayCount], []string{fmt.Sprint(round)}) {
			t.Fatalf("round %d: replayed with %s=%v, want %d", round, HeaderReplayCount, h[HeaderReplayCount], round)
		}
		r := &record.Record{Topic: last.Topic, Partition: last.Partition, Offset: last.Offset, Timestamp: last.Timestamp,
			Key: last.Key, Value: last.Value}
		for _, h := range last.Headers {
			r.Headers = append(r.Headers, record.Header{Key: h.Key, Value: h.Value})
		}
		if err := e.dl.DeadLetter(t.Context(), r, flow.Decode(errors.New("still bad"))); err != nil {
			t.Fatal(err)
		}
	}
	before := len(e.records(t, "orders"))
	rep, out, err := e.replay(t, t.Context(), e.cfg())
	if err != nil {
		t.Fatal(err)
	}
	if rep.SkippedMaxReplays != 1 || rep.ReplayedTotal() != 0 {
		t.Errorf("report %+v, want the record skipped for too many replays", rep)
	}
	if !strings.Contains(out, "skip orders.dlq/0@3") || !strings.Contains(out, "replayed 3 time(s) already, the limit is 3") {
		t.Errorf("output does not report the skipped record:\n%s", out)
	}
	if after := len(e.records(t, "orders")); after != before {
		t.Errorf("orders grew from %d to %d records: the record was replayed again", before, after)
	}
	if got := e.committed(t); got[0] != 4 {
		t.Errorf("committed %v, want the skipped record passed over (offset 4)", got)
	}
}

func TestReplayMaxReplaysAndUnreadableCounts(t *testing.T) {
	e := newReplayEnv(t, 1)
	e.deadLetter(t, failed{i: 0, replayed: "1"}, failed{i: 1, replayed: "2"}, failed{i: 2, replayed: "x"}, failed{i: 3})
	cfg := e.cfg()
	cfg.MaxReplays = 2
	rep, out, err := e.replay(t, t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(e.records(t, "orders")); !slices.Equal(got, ids(0, 3)) {
		t.Errorf("replayed %v, want %v", got, ids(0, 3))
	}
	if rep.SkippedMaxReplays != 2 || strings.Count(out, "skip ") != 2 || !strings.Contains(out, "unreadable sluice.replay.count") {
		t.Errorf("report %+v, output:\n%s\nwant 2 skipped and reported", rep, out)
	}
}

func TestReplayDryRunProducesAndCommitsNothing(t *testing.T) {
	e := newReplayEnv(t, 2)
	e.deadLetter(t, failed{i: 0}, failed{i: 1, reason: flow.ReasonTimeout}, failed{i: 2, replayed: "3"})
	cfg := e.cfg()
	cfg.DryRun = true
	cfg.Reasons = []string{flow.ReasonDecode}
	rep, out, err := e.replay(t, t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scanned != 3 || rep.Replayed["orders"] != 1 || rep.SkippedByFilter != 1 || rep.SkippedMaxReplays != 1 || !rep.DryRun {
		t.Errorf("report %+v, want 1 would-be replay, 1 filtered, 1 over the limit", rep)
	}
	if n := strings.Count(out, "would replay "); n != 1 || !strings.Contains(out, "-> orders (from orders/0@100, reason decode") {
		t.Errorf("output lists %d records, want 1:\n%s", n, out)
	}
	if n := len(e.records(t, "orders")); n != 0 {
		t.Errorf("a dry run produced %d records", n)
	}
	if got := e.committed(t); len(got) != 0 {
		t.Errorf("a dry run committed %v", got)
	}
}

// A produce that fails stops the partition at that record: the group's
// offset never passes a record that was not acknowledged, and the next run
// replays the rest; nothing is lost.
func TestReplayCommitsOnlyAcknowledgedRecordsAndResumes(t *testing.T) {
	e := newReplayEnv(t, 1)
	var dead []failed
	for i := range 8 {
		dead = append(dead, failed{i: i})
	}
	e.deadLetter(t, dead...)

	// The first produce request to orders goes through, the others fail.
	// (When may be asked more than once about one request.)
	var mu sync.Mutex
	var firstReq kmsg.Request
	fault := e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "orders", Err: kerr.TopicAuthorizationFailed, Count: -1,
		When: func(req kmsg.Request) bool {
			mu.Lock()
			defer mu.Unlock()
			if firstReq == nil {
				firstReq = req
			}
			return req != firstReq
		}})
	// One record buffered at a time: one record per produce request.
	rep, out, err := e.replay(t, t.Context(), e.cfg(), kgo.MaxBufferedRecords(1))
	if !errors.Is(err, ErrReplayIncomplete) {
		t.Fatalf("Replay = %v, want ErrReplayIncomplete", err)
	}
	if rep.Errors == 0 || !strings.Contains(out, "error orders.dlq/0@") {
		t.Errorf("report %+v, output:\n%s\nwant the failures counted and listed", rep, out)
	}
	first := e.records(t, "orders")
	if len(first) == 0 || len(first) == len(dead) {
		t.Fatalf("%d records got through, want some but not all", len(first))
	}
	if c := e.committed(t)[0]; c != int64(len(first)) || c != int64(rep.ReplayedTotal()) {
		t.Errorf("committed offset %d, %d records acknowledged (report: %d): the commit must stop at the first unacknowledged record",
			c, len(first), rep.ReplayedTotal())
	}

	fault.Remove()
	rep, _, err = e.replay(t, t.Context(), e.cfg())
	if err != nil {
		t.Fatalf("resumed replay: %v", err)
	}
	if rep.Scanned != len(dead)-len(first) {
		t.Errorf("resumed replay scanned %d, want the %d not committed", rep.Scanned, len(dead)-len(first))
	}
	if got := values(e.records(t, "orders")); !slices.Equal(got, ids(0, 1, 2, 3, 4, 5, 6, 7)) {
		t.Errorf("orders holds %v after the resumed replay, want every record once", got)
	}
}

// Cancelled mid-run (SIGINT), the replay waits for what it handed to the
// producer, commits it, and stops; the next run does the rest.
func TestReplayInterruptedCommitsWhatWasAcknowledged(t *testing.T) {
	e := newReplayEnv(t, 1)
	var dead []failed
	for i := range 5 {
		dead = append(dead, failed{i: i})
	}
	e.deadLetter(t, dead...)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "orders", Observe: true, Count: -1,
		When: func(kmsg.Request) bool { cancel(); return true }})
	cfg := e.cfg()
	cfg.Rate = 1 // the second record waits for the limiter, where the cancel finds it
	rep, _, err := e.replay(t, ctx, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Replay = %v, want context.Canceled", err)
	}
	got := e.records(t, "orders")
	if len(got) != 1 || rep.ReplayedTotal() != 1 {
		t.Fatalf("%d records replayed (report %d), want the one before the interruption", len(got), rep.ReplayedTotal())
	}
	if c := e.committed(t)[0]; c != 1 {
		t.Errorf("committed %d, want 1: the acknowledged record", c)
	}
	rep, _, err = e.replay(t, t.Context(), e.cfg())
	if err != nil || rep.ReplayedTotal() != 4 {
		t.Fatalf("resumed: %+v, %v; want the other 4", rep, err)
	}
	if got := values(e.records(t, "orders")); !slices.Equal(got, ids(0, 1, 2, 3, 4)) {
		t.Errorf("orders holds %v, want every record once", got)
	}
}

func TestReplayStopsAPartitionAtARecordWithNowhereToGo(t *testing.T) {
	e := newReplayEnv(t, 1)
	e.deadLetter(t, failed{i: 0})
	// A record someone wrote into the DLQ by hand: no sluice headers.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: dlqTopic, Value: []byte("stray")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	e.deadLetter(t, failed{i: 2})

	rep, out, err := e.replay(t, t.Context(), e.cfg())
	if !errors.Is(err, ErrReplayIncomplete) || rep.Errors != 1 || !strings.Contains(out, "error orders.dlq/0@1: no sluice.original.topic header") {
		t.Fatalf("Replay = %v, report %+v, output:\n%s\nwant one error at orders.dlq/0@1", err, rep, out)
	}
	if got := values(e.records(t, "orders")); !slices.Equal(got, ids(0)) {
		t.Errorf("orders holds %v, want only the record before the stray one", got)
	}
	if c := e.committed(t)[0]; c != 1 {
		t.Errorf("committed %d, want 1: not past the record that was not replayed", c)
	}

	// With a target topic, a new run gets past it.
	cfg := e.cfg()
	cfg.To = "payments"
	if rep, _, err := e.replay(t, t.Context(), cfg); err != nil || rep.Replayed["payments"] != 2 {
		t.Errorf("with a target: %+v, %v; want 2 replayed to payments", rep, err)
	}
}

func TestReplayMissingTopicOrBroker(t *testing.T) {
	e := newReplayEnv(t, 1)
	cfg := e.cfg()
	cfg.Topic = "nope.dlq"
	if _, _, err := e.replay(t, t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "dead-letter topic nope.dlq does not exist") {
		t.Errorf("missing topic: %v", err)
	}
	_, err := Replay(t.Context(), e.cfg(), []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")})
	if err == nil || !strings.Contains(err.Error(), "cannot reach any Kafka broker") {
		t.Errorf("unreachable broker: %v", err)
	}
}

func TestReplayConfiguresTheRateLimiter(t *testing.T) {
	e := newReplayEnv(t, 1)
	e.deadLetter(t, failed{i: 0}, failed{i: 1})
	for _, tc := range []struct {
		rate  float64
		limit rate.Limit
		burst int
	}{{0, 0, 0}, {0.5, 0.5, 1}, {1000, 1000, 1000}} {
		var seen *rate.Limiter
		cfg := e.cfg()
		cfg.Rate, cfg.DryRun = tc.rate, true
		if _, err := Replay(t.Context(), cfg, []kgo.Opt{kgo.SeedBrokers(e.addrs...)}, withLimiter(func(l *rate.Limiter) { seen = l })); err != nil {
			t.Fatal(err)
		}
		switch {
		case tc.rate == 0 && seen != nil:
			t.Errorf("rate 0: a limiter %v, want none", seen.Limit())
		case tc.rate > 0 && (seen == nil || seen.Limit() != tc.limit || seen.Burst() != tc.burst):
			t.Errorf("rate %v: limiter %v, want limit %v burst %d", tc.rate, seen, tc.limit, tc.burst)
		}
	}
}

// The limiter lets through a second's worth at once, then the rate.
func TestReplayLimiterPaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(100)
		start := time.Now()
		for range 1000 {
			if err := l.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		if d := time.Since(start); d < 9*time.Second || d > 9*time.Second+100*time.Millisecond {
			t.Errorf("1000 records at 100/s after a burst of 100 took %v, want 9s", d)
		}
	})
}

// A replayed record that fails again keeps its replay count in the DLQ:
// Build copies the original's headers, sluice.replay.count included.
func TestBuildKeepsTheReplayCount(t *testing.T) {
	r := original(failed{i: 1, replayed: "2"})
	h := headers(Build(r, flow.Decode(errors.New("bad")), t0))
	if !slices.Equal(h[HeaderReplayCount], []string{"2"}) || !slices.Equal(h["trace"], []string{"t1"}) {
		t.Errorf("DLQ record headers %v, want %s=2 and trace kept", h, HeaderReplayCount)
	}
	if m := readMeta(&kgo.Record{Headers: Build(r, flow.Decode(errors.New("bad")), t0).Headers}); m.count != 2 || m.topic != "orders" {
		t.Errorf("read back %+v", m)
	}
}

func TestReplayConfigValidate(t *testing.T) {
	ok := ReplayConfig{Topic: dlqTopic, Group: group, MaxReplays: 3}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*ReplayConfig)
		want string
	}{
		{"no topic", func(c *ReplayConfig) { c.Topic = "" }, "no dead-letter topic"},
		{"no group", func(c *ReplayConfig) { c.Group = "" }, "no consumer group"},
		{"to the DLQ", func(c *ReplayConfig) { c.To = dlqTopic }, "is the dead-letter topic itself"},
		{"negative rate", func(c *ReplayConfig) { c.Rate = -1 }, "rate -1"},
		{"zero max", func(c *ReplayConfig) { c.MaxReplays = 0 }, "max replays 0"},
		{"unknown reason", func(c *ReplayConfig) { c.Reasons = []string{"sink-rejected"} }, `reason "sink-rejected": want one of decode, mapping, timeout, sink_rejected`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// A replay whose records stop coming (the broker answers fetches with
// errors) gives up after the idle timeout with a clear error instead of
// waiting forever.
func TestReplayGivesUpWhenRecordsStopComing(t *testing.T) {
	e := newReplayEnv(t, 1)
	e.deadLetter(t, failed{i: 0}, failed{i: 1})
	e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: dlqTopic, Err: kerr.NotLeaderForPartition, Count: -1})
	rep, err := Replay(t.Context(), e.cfg(), []kgo.Opt{kgo.SeedBrokers(e.addrs...)}, withIdleTimeout(300*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "no record came from orders.dlq for 300ms though 2 offset(s) remain") {
		t.Errorf("Replay = %v, want the idle error", err)
	}
	if rep.Scanned != 0 || len(e.committed(t)) != 0 {
		t.Errorf("report %+v, committed %v; want nothing done", rep, e.committed(t))
	}
}

// A group coordinator that is briefly unavailable (loading, moving after a
// broker restart, or slow to write its log) is waited for: the replay's
// start-up look-up and its commit retry until it answers instead of failing
// the run. franz-go does not retry a FindCoordinator answering
// COORDINATOR_NOT_AVAILABLE, which is what a real broker said in CI.
func TestReplayWaitsForABusyCoordinator(t *testing.T) {
	e := newReplayEnv(t, 1)
	e.deadLetter(t, failed{i: 0}, failed{i: 1})
	// The first four look-ups of the coordinator fail (the plan's offset
	// fetch), then two more after the commit is told to look again.
	var finds, faulted atomic.Int32
	e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.FindCoordinator}, Group: group, Err: kerr.CoordinatorNotAvailable, Count: -1,
		When: func(kmsg.Request) bool {
			n := finds.Add(1)
			hit := n <= 4 || n >= 6 && n <= 7
			if hit {
				faulted.Add(1)
			}
			return hit
		}})
	e.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Err: kerr.NotCoordinator})

	rep, _, err := e.replay(t, t.Context(), e.cfg())
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if rep.ReplayedTotal() != 2 || len(e.records(t, "orders")) != 2 {
		t.Errorf("report %+v, want both records replayed", rep)
	}
	if got := e.committed(t); got[0] != 2 {
		t.Errorf("committed %v, want partition 0 at 2", got)
	}
	if faulted.Load() != 6 {
		t.Errorf("%d look-ups of the coordinator failed, want 6 (the fault did not act as planned)", faulted.Load())
	}
}
