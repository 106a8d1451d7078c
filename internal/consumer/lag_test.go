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
		// Records held are aged; a partition caught up is not.
		if (s.InFlight > 0 && s.LagSeconds <= 0) || (s.Lag == 0 && s.LagSeconds != 0) {
			t.Errorf("/status partition %d: lag_seconds %v with lag %d and %d in flight", s.Partition, s.LagSeconds, s.Lag, s.InFlight)
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

func TestLagSecondsOfAPausedPartitionGrowsWithNothingInFlight(t *testing.T) {
	brokers := cluster(t)
	produceTo(t, brokers, 20, 0, 1, 2, 3, 4, 5)
	sink := newHeldSink()
	close(sink.release) // every write goes through
	mb := newLagMember(t, brokers, "lag4", sink, 10000, nil)
	mb.run(t)
	waitFor(t, "everything written", func() bool {
		records, seconds := lagSeries(t, mb.reg)
		return equalLag(records, map[int32]int64{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}) && seconds[0] == 0
	})

	// The breaker opens: every partition is paused, nothing is in flight,
	// and what the producers write next stays in Kafka. Partition 5 gets one
	// record: after plain (not transactional) records, a lag of 1 is a record.
	mb.c.PauseAll()
	produceTo(t, brokers, 30, 0, 1, 2, 3, 4)
	produceTo(t, brokers, 1, 5)
	want := map[int32]int64{0: 30, 1: 30, 2: 30, 3: 30, 4: 30, 5: 1}
	var first map[int32]float64
	waitFor(t, "the lag of the paused partitions, and its age", func() bool {
		records, seconds := lagSeries(t, mb.reg)
		if !equalLag(records, want) {
			return false
		}
		for _, s := range seconds {
			if s <= 0 {
				return false
			}
		}
		first = seconds
		return true
	})
	for _, s := range mb.c.Stats() {
		if !s.Paused || s.InFlight != 0 || s.Lag != want[s.Partition] || s.LagSeconds < first[s.Partition] {
			t.Errorf("/status partition %d: paused %v, %d in flight, lag %d, lag_seconds %v; want paused, 0, %d and at least %v",
				s.Partition, s.Paused, s.InFlight, s.Lag, s.LagSeconds, want[s.Partition], first[s.Partition])
		}
	}
	waitFor(t, "the age of the paused partitions' records to grow", func() bool {
		_, seconds := lagSeries(t, mb.reg)
		for p, s := range seconds {
			if s < first[p]+0.3 {
				return false
			}
		}
		return len(seconds) == 6
	})

	mb.c.ResumeAll()
	waitFor(t, "lag and lag seconds 0 once the records are written", func() bool {
		records, seconds := lagSeries(t, mb.reg)
		for _, s := range seconds {
			if s != 0 {
				return false
			}
		}
		return equalLag(records, map[int32]int64{0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0})
	})
}

// A transactional topic read to its end lags 1 per partition: the commit
// marker takes the last offset and is no record. It must not age, paused or not.
func TestLagSecondsIgnoresACommitMarker(t *testing.T) {
	brokers := cluster(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("orders"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.TransactionalID("lag-tx"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for p := range int32(6) {
		for i := range 10 {
			recs = append(recs, &kgo.Record{Partition: p, Value: fmt.Appendf(nil, `{"i":%d}`, i)})
		}
	}
	if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := cl.EndTransaction(t.Context(), kgo.TryCommit); err != nil {
		t.Fatal(err)
	}

	sink := newHeldSink()
	close(sink.release)
	mb := newLagMember(t, brokers, "lag5", sink, 10000, nil)
	mb.run(t)
	markers := map[int32]int64{0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
	waitFor(t, "every record written, the markers left", func() bool {
		records, _ := lagSeries(t, mb.reg)
		return equalLag(records, markers)
	})
	mb.c.PauseAll()
	// Several lag refreshes (100ms) and scrapes, paused and not.
	for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		records, seconds := lagSeries(t, mb.reg)
		if !equalLag(records, markers) {
			t.Fatalf("lag %v, want the markers' %v", records, markers)
		}
		for p, s := range seconds {
			if s != 0 {
				t.Fatalf("partition %d: lag seconds %v for a commit marker, want 0", p, s)
			}
		}
	}
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

func TestLagSecondsBoundsTheAgeOfRecordsSluiceDoesNotHold(t *testing.T) {
	p := record.Partition{Topic: "orders", Partition: 0}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	pendingAt := func(off int64, ts time.Time) func(*Consumer, *partition) {
		return func(c *Consumer, _ *partition) {
			c.pending = append(c.pending,
				&record.Record{Topic: "orders", Partition: 1, Offset: 7, Timestamp: t0.Add(-time.Hour)}, // another partition's
				&record.Record{Topic: "orders", Partition: 0, Offset: off, Timestamp: ts})
		}
	}
	type step struct {
		at     time.Duration // after t0
		change func(c *Consumer, ps *partition)
		want   float64
	}
	cases := []struct {
		name  string
		start func(ps *partition) // the partition at t0, before the first reading
		steps []step
	}{
		{"paused, its records in Kafka: the age grows from the first reading behind",
			func(ps *partition) { ps.base, ps.baseKnown, ps.committed, ps.hwm = 100, true, true, 150 },
			[]step{{0, nil, 0}, {30 * time.Second, nil, 30}, {90 * time.Second, nil, 90}}},
		{"caught up",
			func(ps *partition) { ps.base, ps.baseKnown, ps.committed, ps.hwm = 100, true, true, 100 },
			[]step{{0, nil, 0}, {time.Minute, nil, 0}}},
		{"the position unknown",
			func(ps *partition) { ps.hwm = 150 },
			[]step{{0, nil, 0}, {time.Minute, nil, 0}}},
		{"the position moves: the stall starts again",
			func(ps *partition) { ps.base, ps.baseKnown, ps.committed, ps.hwm = 100, true, true, 150 },
			[]step{
				{0, nil, 0},
				{30 * time.Second, nil, 30},
				{40 * time.Second, func(_ *Consumer, ps *partition) { ps.t.seek(120) }, 0},
				{50 * time.Second, nil, 10},
				{60 * time.Second, func(_ *Consumer, ps *partition) { ps.t.seek(150) }, 0},
				{90 * time.Second, nil, 0},
			}},
		{"a commit marker alone is no record",
			func(ps *partition) { ps.t.seek(100); ps.hwm = 101 },
			[]step{
				{0, nil, 0},
				{time.Minute, nil, 0},
				{70 * time.Second, func(_ *Consumer, ps *partition) { ps.hwm = 103 }, 0}, // a new transaction's records
				{80 * time.Second, nil, 10},
			}},
		{"one record after a plain one",
			func(ps *partition) { ps.t.seek(100); ps.hwm, ps.stall.plainTail = 101, true },
			[]step{{0, nil, 0}, {time.Minute, nil, 60}}},
		{"an admitted record: its own age",
			func(ps *partition) {
				ps.t.add(100, 0, t0.Add(-5*time.Minute).UnixNano())
				ps.hwm = 150
			},
			[]step{{0, nil, 300}, {10 * time.Second, nil, 310}}},
		{"a polled record waiting for the gate: its own age",
			func(ps *partition) { ps.base, ps.baseKnown, ps.committed, ps.hwm = 100, true, true, 150 },
			[]step{
				{0, pendingAt(100, t0.Add(-2*time.Minute)), 120},
				{30 * time.Second, nil, 150},
			}},
		{"a stall older than the record polled since",
			func(ps *partition) { ps.base, ps.baseKnown, ps.committed, ps.hwm = 100, true, true, 150 },
			[]step{
				{0, nil, 0},
				{60 * time.Second, pendingAt(100, t0.Add(50*time.Second)), 60},
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps := &partition{gen: 1, hwm: -1, resume: -1}
			tc.start(ps)
			c := &Consumer{parts: map[record.Partition]*partition{p: ps}}
			for _, s := range tc.steps {
				if s.change != nil {
					s.change(c, ps)
				}
				got := c.lagSecondsLocked(t0.Add(s.at).UnixNano())
				if len(got) != 1 || got[p] != s.want {
					t.Errorf("at t0+%v: lag seconds %v, want %v", s.at, got, s.want)
				}
			}
		})
	}
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
