package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// switchSink fails every write while down, and counts the writes that reach it.
type switchSink struct {
	inner flow.Sink
	down  atomic.Bool
	calls atomic.Int64
}

var errOutage = errors.New("the test took the sink down")

func (s *switchSink) Write(ctx context.Context, b *record.Batch) error {
	s.calls.Add(1)
	if s.down.Load() {
		return &flow.TransientError{Err: errOutage}
	}
	return s.inner.Write(ctx, b)
}

type countingDLQ struct {
	mu sync.Mutex
	n  int
}

func (d *countingDLQ) DeadLetter(context.Context, *record.Record, *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	return nil
}

func (d *countingDLQ) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// eventually polls cond every 10 ms until it holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The daemon wires the breaker to the consumer and to readiness: an open
// breaker pauses every assigned partition and fails /readyz with its reason;
// a closed one resumes them, and nothing is dead-lettered for the outage.
func TestBreakerPausesEveryPartitionAndFailsReadinessUntilItCloses(t *testing.T) {
	const topic, parts = "orders", 4
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(parts, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()

	cfg := config.Default()
	cfg.Kafka.Brokers, cfg.Kafka.Group, cfg.Kafka.Topics = cluster.ListenAddrs(), "g", []string{topic}
	cfg.Kafka.FetchMaxWait = 100 * time.Millisecond
	cfg.Sink.Type = config.SinkFile
	cfg.Sink.File = config.File{Path: filepath.Join(t.TempDir(), "out.jsonl")}
	cfg.Sink.Concurrency = 2
	cfg.Sink.Batch = config.Batch{MaxRecords: 50, MaxBytes: config.MiB, Linger: 20 * time.Millisecond}
	cfg.Sink.Retry = config.Retry{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	cfg.Sink.Breaker = config.Breaker{FailureThreshold: 3, OpenFor: 500 * time.Millisecond, HalfOpenSuccesses: 2, HalfOpenShare: 0.5}
	cfg.Commit.Interval = 100 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Observability.Listen = "127.0.0.1:0"
	cfg.DLQ.Topic = topic + ".dlq"

	var sw *switchSink
	dlq := &countingDLQ{}
	d, err := daemon.New(t.Context(), cfg, daemon.Options{Logger: zaptest.NewLogger(t), DeadLetterer: dlq,
		WrapSink: func(s flow.Sink) flow.Sink { sw = &switchSink{inner: s}; return sw }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()

	prod, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	produced := 0
	produce := func(n int) {
		t.Helper()
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Key: fmt.Appendf(nil, "k%d", produced+i), Value: fmt.Appendf(nil, `{"id":%d}`, produced+i)}
		}
		if err := prod.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		produced += n
	}

	produce(200)
	eventually(t, 30*time.Second, "the first records were not written", func() bool { return d.Pipeline().Counts().Written == 200 })
	eventually(t, 10*time.Second, "not ready with a closed breaker", func() bool { return d.Ready() == nil })

	sw.down.Store(true)
	produce(500)
	eventually(t, 30*time.Second, "the breaker never opened", func() bool { return d.Breaker().Opens() > 0 })

	// Open: every assigned partition paused by the breaker, readiness says why.
	st := d.Stats()
	if st.Breaker.State != "open" && st.Breaker.State != "half-open" {
		t.Errorf("status breaker state %q, want open (or half-open)", st.Breaker.State)
	}
	if st.Breaker.OpenSince == nil || !strings.Contains(st.Breaker.LastError, errOutage.Error()) {
		t.Errorf("status breaker %+v, want open_since and the outage as last_error", st.Breaker)
	}
	if len(st.Partitions) != parts {
		t.Fatalf("%d partitions assigned, want %d", len(st.Partitions), parts)
	}
	for _, p := range st.Partitions {
		if !p.Paused || !strings.Contains(p.PausedBy, "breaker") {
			t.Errorf("partition %d: paused=%v by %q while the breaker is open, want paused by the breaker", p.Partition, p.Paused, p.PausedBy)
		}
	}
	err = d.Ready()
	if err == nil || !strings.Contains(err.Error(), "circuit breaker open since") || !strings.Contains(err.Error(), errOutage.Error()) {
		t.Errorf("Ready() = %v, want the open breaker and its reason", err)
	}
	if !strings.Contains(st.NotReady, "circuit breaker open since") {
		t.Errorf("status not_ready %q, want the open breaker", st.NotReady)
	}

	// A few open_for periods: the sink sees the probes only.
	before := sw.calls.Load()
	time.Sleep(4 * cfg.Sink.Breaker.OpenFor)
	if n := sw.calls.Load() - before; n > 4+2 {
		t.Errorf("the sink was called %d times in 4 open_for periods, want about one probe each", n)
	}

	sw.down.Store(false)
	eventually(t, 30*time.Second, "the breaker never closed", func() bool { return d.Breaker().State() == sink.StateClosed })
	for _, p := range d.Consumer().Stats() {
		if strings.Contains(p.PausedBy, "breaker") {
			t.Errorf("partition %d still paused by the breaker after it closed", p.Partition)
		}
	}
	eventually(t, 30*time.Second, "the records produced during the outage were not written", func() bool {
		return d.Pipeline().Counts().Written == int64(produced)
	})
	eventually(t, 10*time.Second, "not ready after the breaker closed", func() bool { return d.Ready() == nil })
	if n := dlq.count(); n != 0 {
		t.Errorf("%d records dead-lettered for the sink's outage, want 0", n)
	}
	if got := d.Stats().Breaker; got.State != "closed" || got.OpenSince != nil || got.Opens < 1 {
		t.Errorf("status breaker %+v after the outage, want closed with opens >= 1", got)
	}
}
