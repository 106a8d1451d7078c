// Package sink guards the configured sink: Breaker is the circuit breaker that
// stops sluice from hammering a sink that is down. The sinks themselves live in
// the sub-packages (postgres, file); the Sink interface lives with its consumer,
// flow.
//
// Concurrency contract: Breaker.Write may be called by any number of goroutines
// at once (one per lane). State, Opens and Status may be called from any
// goroutine. The callbacks given with OnTransition and OnProbe are called with
// the breaker's lock held, one at a time and in the order the transitions
// happen, so that a pause can never overtake the resume before it: they must
// return quickly, must not block, and must not call the Breaker's methods
// (HalfOpenLimit, which reads only settings, excepted).
// The breaker starts no goroutine: time-driven transitions (open to
// half-open) happen on the first call at or after the moment they are due.
//
// Why not sony/gobreaker: its MaxRequests is both the number of requests let
// through while half-open and the number of consecutive successes that close
// the breaker, and it counts requests let through in the half-open period, not
// requests in flight. sluice needs the two apart (half_open_share of the lanes
// in flight at once, half_open_successes to close), an open breaker's
// remaining time as a Retry-After for the lanes (gobreaker keeps its expiry
// to itself), and outcomes that count as neither success nor failure (a fatal
// error, a cancelled write; gobreaker's IsSuccessful has only the two). Bending gobreaker to that would leave little of it in use;
// the state machine below is about 150 lines without its accessors.
package sink

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// ErrBreakerOpen is the cause of a write the breaker refused without calling
// the sink: it is open, or half-open with its share of writes in flight.
// Write returns it wrapped in a *flow.TransientError whose RetryAfter says
// when a retry may pass.
var ErrBreakerOpen = errors.New("circuit breaker open: the sink is not called until it recovers")

// State is the breaker's state; its value is the circuit_breaker_state metric.
type State int32

const (
	StateClosed   State = iota // every write goes to the sink
	StateHalfOpen              // a share of the writes probes the sink
	StateOpen                  // every write fails fast
)

func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Transition is one change of state, as OnTransition reports it.
type Transition struct {
	From, To State
	At       time.Time
	// OpenSince is when the breaker last opened from closed: the start of the
	// outage this transition belongs to (At itself when it starts one).
	OpenSince time.Time
	// Err is the last transient failure of the sink: the one that opened the
	// breaker when To is StateOpen. Nil if the sink never failed.
	Err error
}

// Status is the breaker as /status and readiness show it.
type Status struct {
	State State
	Opens int64     // times it opened since it was built
	Since time.Time // when it entered State
	// OpenSince is when the breaker opened from closed, while it is not
	// closed; zero while closed.
	OpenSince time.Time
	LastError error // the last transient failure of the sink; nil if none
}

// Option sets an injected dependency of a Breaker.
type Option func(*Breaker)

// WithClock sets the time source (default time.Now).
func WithClock(now func() time.Time) Option { return func(b *Breaker) { b.now = now } }

// WithMetrics exports the state as circuit_breaker_state{sink=name} and counts
// transitions in circuit_breaker_transitions_total{to}.
func WithMetrics(m *metrics.Metrics, name string) Option {
	return func(b *Breaker) { b.m, b.name = m, name }
}

// OnTransition calls f on every change of state (see the package comment for
// the rules f must keep).
func OnTransition(f func(Transition)) Option { return func(b *Breaker) { b.onChange = f } }

// OnProbe calls f after each write that succeeds while half-open without
// closing the breaker yet; successes counts them (see the package comment for
// the rules f must keep).
func OnProbe(f func(successes int)) Option { return func(b *Breaker) { b.onProbe = f } }

// Breaker is a flow.Sink that wraps another. Closed, it passes every write
// through and counts consecutive transient failures (flow.ClassTransient);
// failure_threshold of them open it. A write whose rows the sink rejected
// (flow.ClassRejected) proves the sink reachable and counts as a success; a
// fatal error, a fenced write (flow.ClassFenced), or a write cancelled by its
// caller, counts as neither. Open, it
// fails every write fast with ErrBreakerOpen and a RetryAfter of the time left
// until half-open. After open_for it is half-open: at most
// max(1, ceil(half_open_share x lanes)) writes are in flight at once, the others
// fail fast with a RetryAfter of open_for/10, at least 10 ms and at most 1 s (a
// probe in flight may close the breaker at any moment); half_open_successes consecutive successes
// close it and any transient failure opens it again for a full open_for, so it
// never flaps faster than that. The outcome of a write that began in an earlier
// state is ignored.
type Breaker struct {
	inner     flow.Sink
	threshold int           // consecutive failures that open it
	openFor   time.Duration // how long it stays open
	successes int           // consecutive successes that close it
	limit     int           // writes in flight while half-open
	now       func() time.Time
	m         *metrics.Metrics
	name      string
	onChange  func(Transition)
	onProbe   func(int)

	mu        sync.Mutex
	state     State
	gen       uint64 // advances on every transition
	failures  int    // consecutive transient failures, while closed
	succeeded int    // consecutive successes, while half-open
	inflight  int    // writes in flight, while half-open
	since     time.Time
	openSince time.Time
	lastErr   error
	opens     int64
}

// NewBreaker returns a closed breaker around inner, for a pipeline of lanes
// lanes. cfg is assumed valid (config.Validate); values below 1 count as 1.
func NewBreaker(inner flow.Sink, cfg config.Breaker, lanes int, opts ...Option) *Breaker {
	b := &Breaker{inner: inner, threshold: max(1, cfg.FailureThreshold), openFor: cfg.OpenFor,
		successes: max(1, cfg.HalfOpenSuccesses), limit: max(1, int(math.Ceil(cfg.HalfOpenShare*float64(max(1, lanes))))),
		now: time.Now}
	for _, o := range opts {
		o(b)
	}
	b.since = b.now()
	if b.m != nil {
		b.m.BreakerState.WithLabelValues(b.name).Set(float64(StateClosed))
		for _, s := range []State{StateClosed, StateHalfOpen, StateOpen} {
			b.m.BreakerTransitions.WithLabelValues(s.String())
		}
	}
	return b
}

// HalfOpenLimit returns how many writes may be in flight while half-open. It
// takes no lock: the callbacks may call it.
func (b *Breaker) HalfOpenLimit() int { return b.limit }

// Write writes batch through the inner sink, unless the breaker refuses it
// (see Breaker). It returns the inner sink's error unchanged.
func (b *Breaker) Write(ctx context.Context, batch *record.Batch) error {
	gen, err := b.admit()
	if err != nil {
		return err
	}
	err = b.inner.Write(ctx, batch)
	b.settle(ctx, gen, err)
	return err
}

// admit lets a write through, returning the generation it belongs to, or
// refuses it.
func (b *Breaker) admit() (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.advance(now)
	switch b.state {
	case StateOpen:
		return 0, &flow.TransientError{Err: fmt.Errorf("%w (last failure: %v)", ErrBreakerOpen, b.lastErr),
			RetryAfter: b.since.Add(b.openFor).Sub(now)}
	case StateHalfOpen:
		if b.inflight >= b.limit {
			return 0, &flow.TransientError{Err: fmt.Errorf("%w (half-open: %d probe write(s) in flight)", ErrBreakerOpen, b.inflight),
				RetryAfter: b.probeWait()}
		}
		b.inflight++
	}
	return b.gen, nil
}

// probeWait is the RetryAfter of a write refused while half-open: short, as
// the probe in flight may close the breaker at any moment.
func (b *Breaker) probeWait() time.Duration {
	return min(max(b.openFor/10, 10*time.Millisecond), time.Second)
}

// settle feeds a write's outcome to the state machine.
func (b *Breaker) settle(ctx context.Context, gen uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen {
		return // began in an earlier state: says nothing of this one
	}
	if b.state == StateHalfOpen {
		b.inflight--
	}
	now := b.now()
	switch {
	case err == nil || flow.Classify(err) == flow.ClassRejected:
		switch b.state {
		case StateClosed:
			b.failures = 0
		case StateHalfOpen:
			b.succeeded++
			if b.succeeded >= b.successes {
				b.to(StateClosed, now)
			} else if b.onProbe != nil {
				b.onProbe(b.succeeded)
			}
		}
	case flow.Classify(err) == flow.ClassFatal, flow.Classify(err) == flow.ClassFenced, errors.Is(ctx.Err(), context.Canceled):
		// Not the sink's availability: a configuration the breaker cannot
		// fix, a write another writer fenced out (exactly-once; often
		// refused before the sink is asked), or a caller that gave up
		// (shutdown).
	default:
		b.lastErr = err
		switch b.state {
		case StateClosed:
			b.failures++
			if b.failures >= b.threshold {
				b.to(StateOpen, now)
			}
		case StateHalfOpen:
			b.to(StateOpen, now)
		}
	}
}

// advance moves an open breaker whose open_for has passed to half-open, as of
// the moment it was due. b.mu held.
func (b *Breaker) advance(now time.Time) {
	if due := b.since.Add(b.openFor); b.state == StateOpen && !now.Before(due) {
		b.to(StateHalfOpen, due)
	}
}

// to enters state s at time at. b.mu held.
func (b *Breaker) to(s State, at time.Time) {
	from, outage := b.state, b.openSince
	if from == StateClosed {
		outage = at // only a transition to open leaves closed
	}
	b.state, b.since, b.gen = s, at, b.gen+1
	b.failures, b.succeeded, b.inflight = 0, 0, 0
	b.openSince = outage
	switch s {
	case StateOpen:
		b.opens++
	case StateClosed:
		b.openSince = time.Time{}
	}
	if b.m != nil {
		b.m.BreakerState.WithLabelValues(b.name).Set(float64(s))
		b.m.BreakerTransitions.WithLabelValues(s.String()).Inc()
	}
	if b.onChange != nil {
		b.onChange(Transition{From: from, To: s, At: at, OpenSince: outage, Err: b.lastErr})
	}
}

// State returns the current state.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(b.now())
	return b.state
}

// Opens returns how many times the breaker opened since it was built.
func (b *Breaker) Opens() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.opens
}

// Status returns the breaker's state and history.
func (b *Breaker) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(b.now())
	return Status{State: b.state, Opens: b.opens, Since: b.since, OpenSince: b.openSince, LastError: b.lastErr}
}
