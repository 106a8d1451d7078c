package consumer

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memSink keeps every written row, per partition in write order, and can be
// slowed down.
type memSink struct {
	mu      sync.Mutex
	byPart  map[record.Partition][]int64
	delay   time.Duration
	written int
}

func (s *memSink) Map(_ context.Context, r *record.Record) (record.Row, error) {
	if string(r.Value) == "poison" {
		return nil, flow.Decode(fmt.Errorf("not JSON"))
	}
	return record.Row{r.Offset}, nil
}

func (s *memSink) Write(ctx context.Context, b *record.Batch) error {
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return &flow.TransientError{Err: ctx.Err()}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range b.Records {
		s.byPart[r.Part()] = append(s.byPart[r.Part()], r.Offset)
	}
	s.written += b.Len()
	return nil
}

type dlqSet struct {
	mu   sync.Mutex
	recs map[record.Partition][]int64
}

func (d *dlqSet) DeadLetter(_ context.Context, r *record.Record, _ *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recs[r.Part()] = append(d.recs[r.Part()], r.Offset)
	return nil
}

type member struct {
	c    *Consumer
	pipe *flow.Pipeline
	gate *flow.Gate
	m    *metrics.Metrics
}

type gatePauser struct{ c **Consumer }

func (g gatePauser) PauseForGate(ps []record.Partition)  { (*g.c).PauseForGate(ps) }
func (g gatePauser) ResumeForGate(ps []record.Partition) { (*g.c).ResumeForGate(ps) }

func newMember(t *testing.T, brokers []string, group string, sink *memSink, dl *dlqSet, gateRecords int, gateBytes int64) *member {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	mb := &member{m: m}
	mb.gate = flow.NewGate(flow.GateConfig{MaxRecords: gateRecords, MaxBytes: gateBytes, ResumeAt: 0.5}, gatePauser{&mb.c}, m)
	committer := committerFunc(func(rs ...*record.Record) { mb.c.Done(rs...) })
	mb.pipe = flow.New(flow.Config{Workers: 3, RecordTimeout: 5 * time.Second, Lanes: 4,
		Batch: flow.BatchConfig{MaxRecords: 300, MaxBytes: 1 << 20, Linger: 20 * time.Millisecond},
		Retry: flow.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}},
		mb.gate, sink, sink, dl, committer, m)
	k := config.Default().Kafka
	k.Brokers, k.Group, k.Topics = brokers, group, []string{"orders"}
	k.FetchMaxWait = 100 * time.Millisecond
	k.MaxPollRecords = 200
	k.SessionTimeout, k.RebalanceTimeout = 6*time.Second, 10*time.Second
	c, err := New(Options{Kafka: k, CommitInterval: 100 * time.Millisecond, ShutdownTimeout: 10 * time.Second, Metrics: m},
		mb.pipe, mb.gate)
	if err != nil {
		t.Fatal(err)
	}
	mb.c = c
	return mb
}

type committerFunc func(rs ...*record.Record)

func (f committerFunc) Done(rs ...*record.Record) { f(rs...) }

// run starts the member; the returned stop function shuts it down cleanly and
// reports its errors.
func (mb *member) run(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	pipeCtx, cancelPipe := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return mb.pipe.Run(pipeCtx) })
	g.Go(func() error { defer cancelPipe(); return mb.c.Run(ctx) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := g.Wait(); err != nil {
				t.Errorf("member stopped with %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// produce writes n records round-robin over the topic's partitions; every
// poisonEvery-th one (if > 0) is poison. It returns the produced offsets.
func produce(t *testing.T, brokers []string, n, poisonEvery int) map[record.Partition][]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("orders"),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := map[record.Partition][]int64{}
	recs := make([]*kgo.Record, 0, n)
	for i := range n {
		v := []byte(fmt.Sprintf(`{"i":%d}`, i))
		if poisonEvery > 0 && i%poisonEvery == poisonEvery-1 {
			v = []byte("poison")
		}
		recs = append(recs, &kgo.Record{Value: v})
	}
	for _, r := range cl.ProduceSync(t.Context(), recs...) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		p := record.Partition{Topic: "orders", Partition: r.Record.Partition}
		out[p] = append(out[p], r.Record.Offset)
	}
	return out
}

func committed(t *testing.T, brokers []string, group string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).FetchOffsets(t.Context(), group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) { out[o.Partition] = o.At })
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cluster(t *testing.T) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// checkAllOnce asserts every produced record was written or dead-lettered,
// none twice, and each partition's rows arrived in offset order.
func checkAllOnce(t *testing.T, produced map[record.Partition][]int64, sink *memSink, dl *dlqSet) {
	t.Helper()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for p, offs := range produced {
		got := append(slices.Clone(sink.byPart[p]), dl.recs[p]...)
		if !slices.IsSorted(sink.byPart[p]) {
			t.Errorf("%s: rows written out of offset order", p)
		}
		slices.Sort(got)
		if !slices.Equal(got, offs) {
			t.Errorf("%s: written+dead-lettered %d records, produced %d (missing or duplicated)", p, len(got), len(offs))
		}
	}
}

func TestConsumerDeliversEveryRecordOnceInOrderAndCommits(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 20000, 97)
	sink := &memSink{byPart: map[record.Partition][]int64{}}
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	mb := newMember(t, brokers, "g1", sink, dl, 5000, 64<<20)
	stop := mb.run(t)
	waitFor(t, "all records", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		dl.mu.Lock()
		defer dl.mu.Unlock()
		n := sink.written
		for _, o := range dl.recs {
			n += len(o)
		}
		return n >= 20000
	})
	stop()
	checkAllOnce(t, produced, sink, dl)
	got := committed(t, brokers, "g1")
	for p, offs := range produced {
		if want := offs[len(offs)-1] + 1; got[p.Partition] != want {
			t.Errorf("%s: committed %d, want %d", p, got[p.Partition], want)
		}
	}
	if n := testutil.ToFloat64(mb.m.RecordsDLQ.WithLabelValues("decode")); n != float64(20000/97) {
		t.Errorf("dead-lettered %v records as decode, want %d", n, 20000/97)
	}
}

func TestConsumerPausesWhenTheGateIsFullAndLosesNothing(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 6000, 0)
	sink := &memSink{byPart: map[record.Partition][]int64{}, delay: 30 * time.Millisecond}
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	mb := newMember(t, brokers, "g2", sink, dl, 400, 1<<20)
	stop := mb.run(t)
	var peak int
	waitFor(t, "all records", func() bool {
		peak = max(peak, mb.gate.Stats().Records)
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return sink.written >= 6000
	})
	stop()
	checkAllOnce(t, produced, sink, dl)
	if peak > 400 {
		t.Errorf("gate held %d records, budget 400", peak)
	}
	if n := testutil.ToFloat64(mb.m.PartitionPauses.WithLabelValues("gate")); n == 0 {
		t.Error("the gate never paused a partition although the sink was slower than the topic")
	}
	if mb.gate.Stats().Pauses == 0 {
		t.Error("the gate never became full")
	}
	if n := testutil.ToFloat64(mb.m.PartitionsPaused); n != 0 {
		t.Errorf("%v partitions still paused after the stream drained", n)
	}
}

func TestConsumerRebalanceLosesNothing(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 12000, 0)
	sink := &memSink{byPart: map[record.Partition][]int64{}, delay: 5 * time.Millisecond}
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	a := newMember(t, brokers, "g3", sink, dl, 1000, 1<<20)
	stopA := a.run(t)
	waitFor(t, "first records", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.written > 1000 })
	b := newMember(t, brokers, "g3", sink, dl, 1000, 1<<20)
	stopB := b.run(t)
	waitFor(t, "a second member's assignment", func() bool { return len(b.c.Stats()) > 0 })
	stopA() // a leaves mid-stream: its partitions' in-flight batches finish, then commit
	waitFor(t, "all records", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		seen := 0
		for p := range produced {
			seen += len(slices.Compact(slices.Sorted(slices.Values(sink.byPart[p]))))
		}
		return seen >= 12000
	})
	stopB()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for p, offs := range produced {
		got := slices.Compact(slices.Sorted(slices.Values(sink.byPart[p])))
		if !slices.Equal(got, offs) {
			t.Errorf("%s: %d distinct records written, produced %d", p, len(got), len(offs))
		}
	}
	got := committed(t, brokers, "g3")
	for p, offs := range produced {
		if want := offs[len(offs)-1] + 1; got[p.Partition] != want {
			t.Errorf("%s: committed %d, want %d", p, got[p.Partition], want)
		}
	}
}
