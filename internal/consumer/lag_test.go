package consumer

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// heldSink writes nothing until the test releases it.
type heldSink struct {
	release chan struct{}
	written chan int // size large enough: counts written records
}

func newHeldSink() *heldSink {
	return &heldSink{release: make(chan struct{}), written: make(chan int, 1<<16)}
}

func (s *heldSink) Map(_ context.Context, r *record.Record) (record.Row, error) {
	return record.Row{r.Offset}, nil
}

func (s *heldSink) Write(ctx context.Context, b *record.Batch) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return &flow.TransientError{Err: ctx.Err()}
	}
	s.written <- b.Len()
	return nil
}

// lagMember is a consumer with its pipeline, its lag metrics on reg.
type lagMember struct {
	member
	reg *prometheus.Registry
}

func newLagMember(t *testing.T, brokers []string, group string, sink *heldSink, gateRecords int, k func(*config.Kafka)) *lagMember {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	mb := &lagMember{member: member{m: m}, reg: reg}
	mb.gate = flow.NewGate(flow.GateConfig{MaxRecords: gateRecords, MaxBytes: 64 << 20, ResumeAt: 0.5}, gatePauser{&mb.c}, m)
	mb.pipe = flow.New(flow.Config{Workers: 2, RecordTimeout: time.Minute, Lanes: 2,
		Batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: 10 * time.Millisecond},
		Retry: flow.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}},
		mb.gate, sink, sink, &dlqSet{recs: map[record.Partition][]int64{}},
		committerFunc(func(rs ...*record.Record) { mb.c.Done(rs...) }), m)
	kc := config.Default().Kafka
	kc.Brokers, kc.Group, kc.Topics = brokers, group, []string{"orders"}
	kc.FetchMaxWait = 100 * time.Millisecond
	kc.SessionTimeout, kc.RebalanceTimeout = 6*time.Second, 10*time.Second
	if k != nil {
		k(&kc)
	}
	c, err := New(Options{Kafka: kc, CommitInterval: 100 * time.Millisecond, ShutdownTimeout: 10 * time.Second,
		LagRefreshInterval: 100 * time.Millisecond, Metrics: m, Registerer: reg}, mb.pipe, mb.gate)
	if err != nil {
		t.Fatal(err)
	}
	mb.c = c
	return mb
}

// produceTo writes n records to each of the given partitions of "orders".
func produceTo(t *testing.T, brokers []string, n int, partitions ...int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("orders"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for _, p := range partitions {
		for i := range n {
			recs = append(recs, &kgo.Record{Partition: p, Value: fmt.Appendf(nil, `{"i":%d}`, i)})
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// commitAt commits offset for the given partitions of "orders" in group, as
// an earlier member of the group would have.
func commitAt(t *testing.T, brokers []string, group string, offset int64, partitions ...int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var os kadm.Offsets
	for _, p := range partitions {
		os.Add(kadm.Offset{Topic: "orders", Partition: p, At: offset, LeaderEpoch: -1})
	}
	resp, err := kadm.NewClient(cl).CommitOffsets(t.Context(), group, os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
}

// lagSeries gathers reg and returns sluice_consumer_lag_records and
// sluice_consumer_lag_seconds by partition.
func lagSeries(t *testing.T, reg prometheus.Gatherer) (records, seconds map[int32]float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	records, seconds = map[int32]float64{}, map[int32]float64{}
	for _, mf := range mfs {
		var into map[int32]float64
		switch mf.GetName() {
		case "sluice_consumer_lag_records":
			into = records
		case "sluice_consumer_lag_seconds":
			into = seconds
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			var p int64 = -1
			for _, l := range m.GetLabel() {
				if l.GetName() == "partition" {
					p, _ = strconv.ParseInt(l.GetValue(), 10, 32)
				}
			}
			into[int32(p)] = m.GetGauge().GetValue()
		}
	}
	return records, seconds
}

func equalLag(got map[int32]float64, want map[int32]int64) bool {
	if len(got) != len(want) {
		return false
	}
	for p, w := range want {
		if g, ok := got[p]; !ok || g != float64(w) {
			return false
		}
	}
	return true
}

func TestLagCountsFromTheGroupsCommitUntilRecordsAreDone(t *testing.T) {
	brokers := cluster(t)
	produceTo(t, brokers, 100, 0, 1, 2, 3, 4) // partition 5 stays empty
	commitAt(t, brokers, "lag1", 40, 0, 1, 2)
	commitAt(t, brokers, "lag1", 100, 4) // partition 4 is fully read: nothing new for it
	sink := newHeldSink()
	mb := newLagMember(t, brokers, "lag1", sink, 10000, nil)
	stop := mb.run(t)
	t.Cleanup(func() {
		select {
		case <-sink.release:
		default:
			close(sink.release)
		}
	})

	// Nothing is done: the position is the group's commit, or the log start
	// (start_offset earliest) where there is none.
	want := map[int32]int64{0: 60, 1: 60, 2: 60, 3: 100, 4: 0, 5: 0}
	var records, seconds map[int32]float64
	waitFor(t, "lag from the group's commits", func() bool {
		records, seconds = lagSeries(t, mb.reg)
		return equalLag(records, want) && seconds[0] > 0 && seconds[3] > 0
	})
	if seconds[4] != 0 || seconds[5] != 0 {
		t.Errorf("lag seconds of partitions with nothing outstanding = %v, %v; want 0", seconds[4], seconds[5])
	}
	for _, s := range mb.c.Stats() {
		wantCommitted := map[int32]int64{0: 40, 1: 40, 2: 40, 3: -1, 4: 100, 5: -1}[s.Partition]
		if s.Committed != wantCommitted || s.Lag != want[s.Partition] {
			t.Errorf("/status partition %d: committed %d lag %d, want %d and %d", s.Partition, s.Committed, s.Lag, wantCommitted, want[s.Partition])
		}
		if (s.LagSeconds > 0) != (s.InFlight > 0) {
			t.Errorf("/status partition %d: lag_seconds %v with %d in flight", s.Partition, s.LagSeconds, s.InFlight)
		}
	}

	close(sink.release)
	waitFor(t, "lag zero once everything is done", func() bool {
		records, seconds = lagSeries(t, mb.reg)
		for _, s := range seconds {
			if s != 0 {
				return false
			}
		}
		return equalLag(records, map[int32]int64{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0})
	})
	stop()
	if n, err := testutil.GatherAndCount(mb.reg, "sluice_consumer_lag_records", "sluice_consumer_lag_seconds"); err != nil || n != 0 {
		t.Errorf("%d lag series after the member left the group (err %v), want none", n, err)
	}
}

func TestLagOfPausedPartitionsFollowsTheBroker(t *testing.T) {
	brokers := cluster(t)
	produceTo(t, brokers, 50, 0, 1, 2, 3, 4, 5)
	sink := newHeldSink()
	// A gate of 60 records fills at once: partitions pause, polls stop, and
	// no fetch reports the records produced below.
	mb := newLagMember(t, brokers, "lag2", sink, 60, nil)
	mb.run(t)
	t.Cleanup(func() { close(sink.release) })
	waitFor(t, "a paused partition", func() bool {
		for _, s := range mb.c.Stats() {
			if s.Paused {
				return true
			}
		}
		return false
	})
	produceTo(t, brokers, 25, 0, 1, 2, 3, 4, 5)
	want := map[int32]int64{0: 75, 1: 75, 2: 75, 3: 75, 4: 75, 5: 75}
	waitFor(t, "lag to include the records produced while paused", func() bool {
		records, _ := lagSeries(t, mb.reg)
		return equalLag(records, want)
	})
}

func TestLagLatestStartCountsFromTheEnd(t *testing.T) {
	brokers := cluster(t)
	produceTo(t, brokers, 30, 0, 1, 2, 3, 4, 5)
	sink := newHeldSink()
	mb := newLagMember(t, brokers, "lag3", sink, 10000, func(k *config.Kafka) { k.StartOffset = config.StartLatest })
	mb.run(t)
	t.Cleanup(func() { close(sink.release) })
	waitFor(t, "lag of a group that starts at the end", func() bool {
		records, _ := lagSeries(t, mb.reg)
		return equalLag(records, map[int32]int64{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0})
	})
}

func TestTrackerOldestIsTheHeadAndAddDoesNotAllocate(t *testing.T) {
	var tr tracker
	if _, ok := tr.oldest(); ok {
		t.Fatal("an empty tracker has an oldest record")
	}
	s0 := tr.add(10, 0, 1000)
	s1 := tr.add(11, 0, 2000)
	tr.add(13, 0, 3000)
	tr.done(s1)
	if ts, ok := tr.oldest(); !ok || ts != 1000 {
		t.Errorf("oldest = %d, %v; want the head's 1000", ts, ok)
	}
	tr.done(s0)
	if ts, ok := tr.oldest(); !ok || ts != 3000 {
		t.Errorf("oldest after the head is done = %d, %v; want 3000", ts, ok)
	}
	if tr.pos.Offset != 12 {
		t.Errorf("position %d, want 12", tr.pos.Offset)
	}

	var warm tracker
	for i := range 8192 {
		warm.done(warm.add(int64(i), 0, int64(i)))
	}
	var off int64 = 8192
	allocs := testing.AllocsPerRun(1000, func() {
		s := warm.add(off, 0, off)
		off++
		_, _ = warm.oldest()
		warm.done(s)
	})
	if allocs != 0 {
		t.Errorf("add+oldest+done allocate %v times per record, want 0", allocs)
	}
}

func TestLagTimestamp(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := now.UnixNano()
	cases := []struct {
		name string
		ts   time.Time
		want int64
	}{
		{"record timestamp", now.Add(-time.Minute), now.Add(-time.Minute).UnixNano()},
		{"producer clock ahead", now.Add(time.Minute), n},
		{"no timestamp", time.Time{}, n},
		{"kafka's -1", time.UnixMilli(-1), n},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := lagTimestamp(tc.ts, n); got != tc.want {
				t.Errorf("lagTimestamp = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestMetricsPassTheLinter(t *testing.T) {
	brokers := cluster(t)
	produceTo(t, brokers, 10, 0, 1)
	sink := newHeldSink()
	mb := newLagMember(t, brokers, "lint", sink, 10000, nil)
	mb.run(t)
	t.Cleanup(func() { close(sink.release) })
	waitFor(t, "lag series", func() bool {
		n, err := testutil.GatherAndCount(mb.reg, "sluice_consumer_lag_records")
		return err == nil && n == 6
	})
	problems, err := testutil.GatherAndLint(mb.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	for _, name := range []string{"sluice_kafka_buffered_fetch_records", "sluice_kafka_buffered_fetch_bytes", "sluice_consumer_lag_seconds"} {
		if n, err := testutil.GatherAndCount(mb.reg, name); err != nil || n == 0 {
			t.Errorf("%s is not exported (%d series, %v)", name, n, err)
		}
	}
}
