package sink_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var _ flow.Sink = (*sink.Breaker)(nil)

var (
	errDown     = &flow.TransientError{Err: errors.New("dial tcp 127.0.0.1:5432: connection refused")}
	errRejected = &flow.RejectedError{Rows: []int{0}, Err: errors.New("23502: null value in column amount")}
	errFatal    = &flow.FatalError{Err: errors.New("42P01: relation orders does not exist")}
)

// fakeSink answers every Write with err, or, while holding, hands each Write
// to the test on held and returns what the test answers.
type fakeSink struct {
	held chan *heldWrite

	mu      sync.Mutex
	err     error
	holding bool
	calls   int
}

// heldWrite is one Write waiting for the test's answer.
type heldWrite struct{ result chan error }

func (w *heldWrite) answer(err error) { w.result <- err }

func newFakeSink() *fakeSink { return &fakeSink{held: make(chan *heldWrite)} }

func (s *fakeSink) Write(ctx context.Context, _ *record.Batch) error {
	s.mu.Lock()
	s.calls++
	err, holding := s.err, s.holding
	s.mu.Unlock()
	if !holding {
		return err
	}
	w := &heldWrite{result: make(chan error, 1)}
	select {
	case s.held <- w:
	case <-ctx.Done():
		return &flow.TransientError{Err: ctx.Err()}
	}
	select {
	case err = <-w.result:
		return err
	case <-ctx.Done():
		return &flow.TransientError{Err: ctx.Err()}
	}
}

func (s *fakeSink) set(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *fakeSink) hold(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holding = on
}

func (s *fakeSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

var cfg = config.Breaker{FailureThreshold: 5, OpenFor: 30 * time.Second, HalfOpenSuccesses: 3, HalfOpenShare: 0.05}

var batch = &record.Batch{Rows: []record.Row{{1}}, Records: []*record.Record{{Topic: "t"}}}

func write(t *testing.T, b *sink.Breaker) error {
	t.Helper()
	return b.Write(t.Context(), batch)
}

// failFast checks that err is the breaker's refusal with the given RetryAfter.
func failFast(t *testing.T, err error, retryAfter time.Duration) {
	t.Helper()
	var te *flow.TransientError
	if !errors.Is(err, sink.ErrBreakerOpen) || !errors.As(err, &te) {
		t.Fatalf("Write = %v, want a *flow.TransientError wrapping ErrBreakerOpen", err)
	}
	if te.RetryAfter != retryAfter {
		t.Errorf("RetryAfter = %v, want %v", te.RetryAfter, retryAfter)
	}
	if flow.Classify(err) != flow.ClassTransient {
		t.Errorf("the refusal classifies as %v, want transient (the lanes retry it)", flow.Classify(err))
	}
}

// probeWait is the RetryAfter of a write refused while half-open.
func probeWait(openFor time.Duration) time.Duration {
	return min(max(openFor/10, 10*time.Millisecond), time.Second)
}

// open drives a fresh breaker to open with threshold failures.
func open(t *testing.T, b *sink.Breaker, s *fakeSink, threshold int) {
	t.Helper()
	s.set(errDown)
	for range threshold {
		if err := write(t, b); !errors.Is(err, errDown) {
			t.Fatalf("Write = %v, want the sink's own error", err)
		}
	}
	if st := b.State(); st != sink.StateOpen {
		t.Fatalf("state %v after %d failures, want open", st, threshold)
	}
}

func TestBreakerOpensAfterThresholdConsecutiveTransientFailures(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []error // what the sink answers, in order
		want     sink.State
	}{
		{"threshold-1 failures stay closed", []error{errDown, errDown, errDown, errDown}, sink.StateClosed},
		{"threshold failures open", []error{errDown, errDown, errDown, errDown, errDown}, sink.StateOpen},
		{"a success resets the count", []error{errDown, errDown, errDown, errDown, nil, errDown, errDown, errDown, errDown}, sink.StateClosed},
		{"rejected rows prove the sink reachable", []error{errDown, errDown, errDown, errDown, errRejected, errDown, errDown, errDown, errDown}, sink.StateClosed},
		{"only rejected rows never open", []error{errRejected, errRejected, errRejected, errRejected, errRejected, errRejected}, sink.StateClosed},
		{"an unclassified error is transient", []error{errDown, errDown, errors.New("EOF"), errDown, errDown}, sink.StateOpen},
		{"a fatal error neither counts nor resets", []error{errDown, errDown, errFatal, errDown, errDown, errDown}, sink.StateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newFakeSink()
				b := sink.NewBreaker(s, cfg, 4)
				for i, e := range tt.outcomes {
					s.set(e)
					if err := write(t, b); err != e {
						t.Fatalf("write %d returned %v, want the sink's %v unchanged", i+1, err, e)
					}
				}
				if got := b.State(); got != tt.want {
					t.Errorf("state %v, want %v", got, tt.want)
				}
				wantOpens := int64(0)
				if tt.want == sink.StateOpen {
					wantOpens = 1
				}
				if got := b.Opens(); got != wantOpens {
					t.Errorf("Opens = %d, want %d", got, wantOpens)
				}
				if got := s.count(); got != len(tt.outcomes) {
					t.Errorf("the sink saw %d writes, want %d", got, len(tt.outcomes))
				}
			})
		})
	}
}

func TestBreakerOpenFailsFastUntilExactlyOpenFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeSink()
		b := sink.NewBreaker(s, cfg, 4)
		open(t, b, s, cfg.FailureThreshold)
		s.set(nil)
		calls := s.count()

		failFast(t, write(t, b), cfg.OpenFor)
		time.Sleep(10 * time.Second)
		failFast(t, write(t, b), cfg.OpenFor-10*time.Second)
		time.Sleep(cfg.OpenFor - 10*time.Second - time.Nanosecond)
		failFast(t, write(t, b), time.Nanosecond)
		if got := b.State(); got != sink.StateOpen {
			t.Fatalf("state %v one nanosecond before open_for, want open", got)
		}
		if got := s.count(); got != calls {
			t.Fatalf("the sink was called %d times while open, want 0", got-calls)
		}
		st := b.Status()
		if !errors.Is(st.LastError, errDown) {
			t.Errorf("Status().LastError = %v, want the failure that opened it", st.LastError)
		}

		time.Sleep(time.Nanosecond)
		if got := b.State(); got != sink.StateHalfOpen {
			t.Fatalf("state %v at exactly open_for, want half-open", got)
		}
		if err := write(t, b); err != nil {
			t.Fatalf("the first write while half-open = %v, want it to reach the sink and succeed", err)
		}
		if got := s.count(); got != calls+1 {
			t.Errorf("the sink saw %d writes since it opened, want 1 (the probe)", got-calls)
		}
	})
}

func TestBreakerHalfOpenLimitsWritesInFlight(t *testing.T) {
	limits := []struct {
		share float64
		lanes int
		want  int
	}{
		{0.05, 4, 1}, {0.5, 3, 2}, {0.3, 10, 3}, {1, 4, 4}, {0.01, 1, 1}, {0.25, 8, 2},
	}
	for _, l := range limits {
		c := cfg
		c.HalfOpenShare = l.share
		if got := sink.NewBreaker(newFakeSink(), c, l.lanes).HalfOpenLimit(); got != l.want {
			t.Errorf("share %g of %d lanes: %d writes in flight while half-open, want %d", l.share, l.lanes, got, l.want)
		}
	}

	synctest.Test(t, func(t *testing.T) {
		c := cfg
		c.HalfOpenShare, c.HalfOpenSuccesses = 0.5, 10
		s := newFakeSink()
		b := sink.NewBreaker(s, c, 4) // two probes at once
		open(t, b, s, c.FailureThreshold)
		time.Sleep(c.OpenFor)
		s.set(nil)
		s.hold(true)
		calls := s.count()

		results := make(chan error, 4)
		for range 4 {
			go func() { results <- write(t, b) }()
		}
		synctest.Wait() // two writes wait in the sink, two were refused
		if got := s.count() - calls; got != 2 {
			t.Fatalf("%d writes reached the sink while half-open, want 2", got)
		}
		for range 2 {
			failFast(t, <-results, probeWait(c.OpenFor))
		}
		first, second := <-s.held, <-s.held
		first.answer(nil) // one probe ends: room for one more
		if err := <-results; err != nil {
			t.Fatalf("probe = %v", err)
		}
		go func() { results <- write(t, b) }()
		third := <-s.held
		if got := s.count() - calls; got != 3 {
			t.Fatalf("%d writes reached the sink, want 3: a finished probe frees its place", got)
		}
		failFast(t, write(t, b), probeWait(c.OpenFor))
		second.answer(nil)
		third.answer(nil)
		for range 2 {
			if err := <-results; err != nil {
				t.Fatalf("probe = %v", err)
			}
		}
		if got := b.State(); got != sink.StateHalfOpen {
			t.Errorf("state %v after 3 of 10 successes, want half-open", got)
		}
	})
}

func TestBreakerClosesAfterExactlyHalfOpenSuccesses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var probes []int
		s := newFakeSink()
		b := sink.NewBreaker(s, cfg, 4, sink.OnProbe(func(n int) { probes = append(probes, n) }))
		open(t, b, s, cfg.FailureThreshold)
		time.Sleep(cfg.OpenFor)
		s.set(nil)
		for i := range cfg.HalfOpenSuccesses - 1 {
			if err := write(t, b); err != nil {
				t.Fatalf("probe %d = %v", i+1, err)
			}
			if got := b.State(); got != sink.StateHalfOpen {
				t.Fatalf("state %v after %d of %d successes, want half-open", got, i+1, cfg.HalfOpenSuccesses)
			}
		}
		s.set(errRejected) // rejected rows: the sink answered
		if err := write(t, b); err != errRejected {
			t.Fatalf("last probe = %v, want the rejection unchanged", err)
		}
		if got := b.State(); got != sink.StateClosed {
			t.Fatalf("state %v after %d successes, want closed", got, cfg.HalfOpenSuccesses)
		}
		if fmt.Sprint(probes) != "[1 2]" {
			t.Errorf("OnProbe saw %v, want [1 2]", probes)
		}
		// Closed again: a full threshold of new failures is needed.
		s.set(errDown)
		for range cfg.FailureThreshold - 1 {
			_ = write(t, b)
		}
		if got := b.State(); got != sink.StateClosed {
			t.Errorf("state %v after %d failures following the close, want closed", got, cfg.FailureThreshold-1)
		}
	})
}

func TestBreakerReopensOnAFailureWhileHalfOpenForAFullOpenFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeSink()
		b := sink.NewBreaker(s, cfg, 4)
		open(t, b, s, cfg.FailureThreshold)
		time.Sleep(cfg.OpenFor)
		s.set(nil)
		if err := write(t, b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		s.set(errDown)
		if err := write(t, b); !errors.Is(err, errDown) {
			t.Fatalf("Write = %v, want the sink's error", err)
		}
		if got := b.State(); got != sink.StateOpen {
			t.Fatalf("state %v after a failure while half-open, want open", got)
		}
		if got := b.Opens(); got != 2 {
			t.Errorf("Opens = %d, want 2", got)
		}
		calls := s.count()
		failFast(t, write(t, b), cfg.OpenFor)
		time.Sleep(cfg.OpenFor - time.Nanosecond)
		failFast(t, write(t, b), time.Nanosecond)
		if got := s.count(); got != calls {
			t.Errorf("the sink was called %d times while open again, want 0", got-calls)
		}
		time.Sleep(time.Nanosecond)
		if got := b.State(); got != sink.StateHalfOpen {
			t.Errorf("state %v a full open_for after re-opening, want half-open", got)
		}
	})
}

// A write's outcome counts only in the state it began in: slow writes begun
// while closed and ending after the breaker went half-open are no probes, and
// take no probe's place.
func TestBreakerIgnoresOutcomesOfWritesBegunInAnEarlierState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg
		c.HalfOpenSuccesses = 1
		s := newFakeSink()
		b := sink.NewBreaker(s, c, 4)
		s.hold(true)
		slow := make(chan error, 2)
		for range 2 {
			go func() { slow <- write(t, b) }() // begun while closed
		}
		w1, w2 := <-s.held, <-s.held
		s.hold(false)
		open(t, b, s, c.FailureThreshold)
		time.Sleep(c.OpenFor)
		if got := b.State(); got != sink.StateHalfOpen {
			t.Fatalf("state %v, want half-open", got)
		}
		w1.answer(nil)
		w2.answer(errDown)
		<-slow
		<-slow
		if got := b.State(); got != sink.StateHalfOpen {
			t.Fatalf("state %v after writes begun while closed ended, want still half-open", got)
		}
		// The one probe place is free, and one success closes it.
		s.hold(true)
		s.set(nil)
		probe := make(chan error, 1)
		go func() { probe <- write(t, b) }()
		w := <-s.held
		failFast(t, write(t, b), probeWait(c.OpenFor))
		w.answer(nil)
		if err := <-probe; err != nil {
			t.Fatal(err)
		}
		if got := b.State(); got != sink.StateClosed {
			t.Errorf("state %v after the probe succeeded, want closed", got)
		}
	})
}

// A write its caller cancelled (shutdown) says nothing about the sink.
func TestBreakerIgnoresCancelledWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newFakeSink()
		b := sink.NewBreaker(s, cfg, 4)
		s.hold(true)
		for range cfg.FailureThreshold * 2 {
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- b.Write(ctx, batch) }()
			<-s.held
			cancel()
			if err := <-done; flow.Classify(err) != flow.ClassTransient {
				t.Fatalf("cancelled write = %v", err)
			}
		}
		if got := b.State(); got != sink.StateClosed {
			t.Errorf("state %v after cancelled writes, want closed", got)
		}
	})
}

func TestBreakerMetricsAndTransitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := metrics.New(prometheus.NewRegistry())
		var seen []sink.Transition
		s := newFakeSink()
		start := time.Now()
		b := sink.NewBreaker(s, cfg, 4, sink.WithMetrics(m, "postgres"),
			sink.OnTransition(func(tr sink.Transition) { seen = append(seen, tr) }))
		gauge := func() float64 { return testutil.ToFloat64(m.BreakerState.WithLabelValues("postgres")) }
		transitions := func(to string) float64 { return testutil.ToFloat64(m.BreakerTransitions.WithLabelValues(to)) }
		if gauge() != 0 {
			t.Errorf("circuit_breaker_state = %v when built, want 0 (closed)", gauge())
		}

		open(t, b, s, cfg.FailureThreshold) // +0s: open
		if gauge() != 2 {
			t.Errorf("circuit_breaker_state = %v while open, want 2", gauge())
		}
		time.Sleep(cfg.OpenFor) // +30s: half-open
		if got := b.State(); got != sink.StateHalfOpen || gauge() != 1 {
			t.Errorf("state %v, circuit_breaker_state = %v; want half-open, 1", got, gauge())
		}
		_ = write(t, b) // fails: open again at +30s
		time.Sleep(cfg.OpenFor)
		s.set(nil)
		for range cfg.HalfOpenSuccesses { // +60s: half-open, then closed
			if err := write(t, b); err != nil {
				t.Fatal(err)
			}
		}
		if gauge() != 0 {
			t.Errorf("circuit_breaker_state = %v after closing, want 0", gauge())
		}
		for to, want := range map[string]float64{"open": 2, "half-open": 2, "closed": 1} {
			if got := transitions(to); got != want {
				t.Errorf(`circuit_breaker_transitions_total{to=%q} = %v, want %v`, to, got, want)
			}
		}

		want := []struct {
			from, to sink.State
			at       time.Duration
		}{
			{sink.StateClosed, sink.StateOpen, 0},
			{sink.StateOpen, sink.StateHalfOpen, 30 * time.Second},
			{sink.StateHalfOpen, sink.StateOpen, 30 * time.Second},
			{sink.StateOpen, sink.StateHalfOpen, 60 * time.Second},
			{sink.StateHalfOpen, sink.StateClosed, 60 * time.Second},
		}
		if len(seen) != len(want) {
			t.Fatalf("OnTransition saw %d transitions, want %d: %+v", len(seen), len(want), seen)
		}
		for i, w := range want {
			tr := seen[i]
			if tr.From != w.from || tr.To != w.to || tr.At.Sub(start) != w.at {
				t.Errorf("transition %d: %v -> %v at +%v, want %v -> %v at +%v", i, tr.From, tr.To, tr.At.Sub(start), w.from, w.to, w.at)
			}
			if !tr.OpenSince.Equal(start) {
				t.Errorf("transition %d: OpenSince +%v, want the outage's start, +0s", i, tr.OpenSince.Sub(start))
			}
			if !errors.Is(tr.Err, errDown) {
				t.Errorf("transition %d: Err = %v, want the sink's failure", i, tr.Err)
			}
		}
		st := b.Status()
		if st.State != sink.StateClosed || st.Opens != 2 || !st.OpenSince.IsZero() || st.Since.Sub(start) != 60*time.Second {
			t.Errorf("Status() = %+v, want closed since +60s, 2 opens, no OpenSince", st)
		}
	})
}
