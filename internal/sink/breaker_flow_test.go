package sink_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
)

// outageSink fails every write with a transient error until up, then writes.
// It records when it was called and what it wrote.
type outageSink struct {
	up time.Time

	mu      sync.Mutex
	calls   []time.Time
	written map[record.Partition][]int64
}

func (s *outageSink) Write(_ context.Context, b *record.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.calls = append(s.calls, now)
	if now.Before(s.up) {
		return errDown
	}
	for _, r := range b.Records {
		s.written[r.Part()] = append(s.written[r.Part()], r.Offset)
	}
	return nil
}

// countingSink counts the writes the lanes make, refused or not.
type countingSink struct {
	inner flow.Sink
	mu    sync.Mutex
	n     int
}

func (s *countingSink) Write(ctx context.Context, b *record.Batch) error {
	s.mu.Lock()
	s.n++
	s.mu.Unlock()
	return s.inner.Write(ctx, b)
}

type identity struct{}

func (identity) Map(_ context.Context, r *record.Record) (record.Row, error) {
	return record.Row{r.Offset}, nil
}

type doneCounter struct {
	mu sync.Mutex
	n  int
}

func (c *doneCounter) Done(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += len(rs)
}

type dlqCounter struct {
	mu sync.Mutex
	n  int
}

func (d *dlqCounter) DeadLetter(context.Context, *record.Record, *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	return nil
}

// The lanes retry a refused write after its RetryAfter, so while the breaker
// is open they wait for half-open instead of spinning, the sink sees only the
// probes, and after the outage every record is written once, in order, with
// nothing dead-lettered.
func TestBreakerUnderFlowLanesWaitForHalfOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			lanes   = 4
			parts   = 8
			perPart = 500
			outage  = 9 * time.Second
		)
		bcfg := config.Breaker{FailureThreshold: 5, OpenFor: 2 * time.Second, HalfOpenSuccesses: 3, HalfOpenShare: 0.05}
		start := time.Now()
		inner := &outageSink{up: start.Add(outage), written: map[record.Partition][]int64{}}
		m := metrics.New(prometheus.NewRegistry())
		var mu sync.Mutex
		var transitions []sink.Transition
		br := sink.NewBreaker(inner, bcfg, lanes, sink.WithMetrics(m, "fake"), sink.OnTransition(func(tr sink.Transition) {
			mu.Lock()
			defer mu.Unlock()
			transitions = append(transitions, tr)
		}))
		outer := &countingSink{inner: br}
		gate := flow.NewGate(flow.GateConfig{MaxRecords: 10_000, MaxBytes: 64 << 20, ResumeAt: 0.5}, nil, m)
		done, dlq := &doneCounter{}, &dlqCounter{}
		p := flow.New(flow.Config{Workers: 2, Lanes: lanes,
			Batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: 50 * time.Millisecond},
			Retry: flow.RetryConfig{Initial: 100 * time.Millisecond, Max: time.Second}},
			gate, identity{}, outer, dlq, done, m)
		result := make(chan error, 1)
		go func() { result <- p.Run(t.Context()) }()
		for off := range int64(perPart) {
			for part := range int32(parts) {
				p.Admit(&record.Record{Topic: "t", Partition: part, Offset: off, Value: []byte("x")})
			}
		}
		p.CloseInput()
		select {
		case err := <-result:
			if err != nil {
				t.Fatalf("Run = %v", err)
			}
		case <-time.After(time.Hour):
			t.Fatal("the pipeline did not drain within an hour of fake time")
		}
		end := time.Since(start)

		if got := br.State(); got != sink.StateClosed {
			t.Errorf("breaker %v after the outage, want closed", got)
		}
		if dlq.n != 0 {
			t.Errorf("%d records dead-lettered for the sink's own outage, want 0", dlq.n)
		}
		if done.n != parts*perPart {
			t.Errorf("%d records done, want %d", done.n, parts*perPart)
		}
		for part := range int32(parts) {
			got := inner.written[record.Partition{Topic: "t", Partition: part}]
			if len(got) != perPart {
				t.Errorf("partition %d: %d records written, want %d", part, len(got), perPart)
				continue
			}
			for i, off := range got {
				if off != int64(i) {
					t.Errorf("partition %d: offset %d written in place %d", part, off, i)
					break
				}
			}
		}

		var during int
		for _, c := range inner.calls {
			if c.Before(inner.up) {
				during++
			}
		}
		// The first failures up to the threshold (one per lane in flight,
		// retried a few times), then one probe per open_for.
		maxDuring := bcfg.FailureThreshold + lanes + int(outage/bcfg.OpenFor) + 1
		if during > maxDuring {
			t.Errorf("the sink was called %d times during the %v outage, want at most %d", during, outage, maxDuring)
		}
		// Each lane asks about once per open period, plus a few refusals
		// while a probe is in flight; a busy loop would be thousands.
		maxOuter := len(inner.calls) + lanes*4*int(outage/bcfg.OpenFor+1)
		if outer.n > maxOuter {
			t.Errorf("the lanes called the breaker %d times, want at most %d", outer.n, maxOuter)
		}
		// Recovery: the breaker is half-open at most open_for after the sink
		// came back, and then closes on the first probes.
		if limit := outage + bcfg.OpenFor + 2*time.Second; end > limit {
			t.Errorf("the pipeline drained %v after the start, want within %v", end, limit)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(transitions) < 3 || transitions[0].To != sink.StateOpen || transitions[len(transitions)-1].To != sink.StateClosed {
			t.Errorf("transitions %+v, want open ... closed", transitions)
		}
		t.Logf("outage %v: %d sink calls during it, %d lane writes in all, %d opens, drained at +%v",
			outage, during, outer.n, br.Opens(), end)
	})
}
