package flow_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

var errConnRefused = errors.New("dial tcp 127.0.0.1:5432: connection refused")

// failingFirst returns a sink rule that fails the first n writes with the
// error made by fail and accepts every write after them.
func failingFirst(n int, fail func() error) func(*record.Batch) error {
	var mu sync.Mutex
	calls := 0
	return func(*record.Batch) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= n {
			return fail()
		}
		return nil
	}
}

// A sink that is unavailable for a while gets the same batch again after a
// backoff, at least as long as any Retry-After it named; the batch is written
// once and nothing goes to the DLQ for the sink's own fault.
func TestTransientSinkErrorsAreRetriedAfterBackoff(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		retryAfter time.Duration
	}{
		{"transient, no Retry-After", &flow.TransientError{Err: errConnRefused}, 0},
		{"transient with Retry-After", &flow.TransientError{Err: errConnRefused, RetryAfter: 5 * time.Second}, 5 * time.Second},
		{"wrapped transient with Retry-After", fmt.Errorf("write orders: %w", &flow.TransientError{Err: errConnRefused, RetryAfter: 3 * time.Second}), 3 * time.Second},
		{"unclassified error", errConnRefused, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sink := &fakeSink{rule: failingFirst(2, func() error { return tt.err })}
				r := run(t, setup{
					cfg: flow.Config{Workers: 2, Lanes: 1, Retry: flow.RetryConfig{Initial: 100 * time.Millisecond, Max: time.Second},
						Batch: flow.BatchConfig{MaxRecords: 10, MaxBytes: 1 << 20, Linger: time.Second}},
					sink: sink,
				})
				rs := interleaved(1, 10, 10)
				r.admit(t, rs...)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				tries := sink.tries()
				if len(tries) != 3 {
					t.Fatalf("%d write attempts, want 3 (two failures, one success)", len(tries))
				}
				for i := 1; i < len(tries); i++ {
					if gap := tries[i].Sub(tries[i-1]); gap <= 0 || gap < tt.retryAfter {
						t.Errorf("attempt %d came %v after the one before, want a backoff of at least %v", i+1, gap, max(tt.retryAfter, time.Nanosecond))
					}
				}
				if got := batchSizes(sink); !slices.Equal(got, []int{10}) {
					t.Errorf("sink accepted batches %v, want the one batch of 10, once", got)
				}
				if got := sink.rows(t)[part(0)]; !slices.Equal(got, offsetsOf(rs)) {
					t.Errorf("sink wrote %v, want %v", got, offsetsOf(rs))
				}
				if l := r.dlq.letters(); len(l) != 0 {
					t.Errorf("DLQ stored %v for the sink's own fault", l)
				}
				for _, x := range rs {
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s done %d times, want once", atOf(x), n)
					}
				}
			})
		})
	}
}

// markedRule rejects any batch that holds a marked offset of partition 0.
// With name set it names the rejected rows (and explains them with the cause
// made by cause); otherwise it rejects the batch as a whole, as a sink that
// cannot tell which row failed does.
func markedRule(marked []int64, name bool, cause func(off int64) *flow.PoisonError) func(*record.Batch) error {
	return func(b *record.Batch) error {
		re := &flow.RejectedError{Err: errors.New(`ERROR: invalid input syntax for type numeric (SQLSTATE 22P02)`)}
		for i, r := range b.Records {
			if r.Partition == 0 && slices.Contains(marked, r.Offset) {
				if !name {
					return re
				}
				re.Rows = append(re.Rows, i)
				re.Causes = append(re.Causes, cause(r.Offset))
			}
		}
		if len(re.Rows) > 0 {
			return re
		}
		return nil
	}
}

func TestRejectedRowsAreDeadLetteredAndTheRestWritten(t *testing.T) {
	unique := &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: "23505", Err: errors.New("duplicate key value violates unique constraint")}
	tests := []struct {
		name   string
		marked []int64
		named  bool                              // the sink names the rejected rows
		cause  func(off int64) *flow.PoisonError // with named rows: the cause of each
		code   map[int64]string                  // the code each dead letter must carry
	}{
		{
			name:   "rows named, one with its own cause",
			marked: []int64{2, 5},
			named:  true,
			cause: func(off int64) *flow.PoisonError {
				if off == 5 {
					return unique
				}
				return nil
			},
			code: map[int64]string{2: "", 5: "23505"},
		},
		{name: "no rows named: bisect to one row in the middle", marked: []int64{13}},
		{name: "no rows named: bisect to the first and the last row", marked: []int64{0, 31}},
		{name: "no rows named: bisect to two neighbours", marked: []int64{20, 21}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sink := &fakeSink{rule: markedRule(tt.marked, tt.named, tt.cause)}
				dlq := &fakeDLQ{}
				r := run(t, setup{
					cfg: flow.Config{Workers: 4, Lanes: 1,
						Batch: flow.BatchConfig{MaxRecords: 32, MaxBytes: 1 << 20, Linger: time.Second}},
					sink:   sink,
					dlq:    dlq,
					commit: doneOnlyAfterDLQ(t, dlq, func(r *record.Record) bool { return slices.Contains(tt.marked, r.Offset) }),
				})
				rs := interleaved(1, 32, 10)
				r.admit(t, rs...)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				var want []int64
				for _, x := range rs {
					if !slices.Contains(tt.marked, x.Offset) {
						want = append(want, x.Offset)
					}
				}
				if got := sink.rows(t)[part(0)]; !slices.Equal(got, want) {
					t.Errorf("sink wrote %v, want every unmarked row once, in order: %v", got, want)
				}
				var dead []int64
				for _, l := range dlq.letters() {
					dead = append(dead, l.at.off)
					if l.cause.Reason != flow.ReasonSinkRejected {
						t.Errorf("%s dead-lettered with reason %q, want %q", l.at, l.cause.Reason, flow.ReasonSinkRejected)
					}
					if tt.code != nil && l.cause.Code != tt.code[l.at.off] {
						t.Errorf("%s dead-lettered with code %q, want %q", l.at, l.cause.Code, tt.code[l.at.off])
					}
				}
				slices.Sort(dead)
				if !slices.Equal(dead, tt.marked) {
					t.Errorf("DLQ holds offsets %v, want exactly the rejected %v", dead, tt.marked)
				}
				for _, x := range rs {
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s done %d times, want once", atOf(x), n)
					}
				}
			})
		})
	}
}

func TestFatalSinkErrorStopsThePipeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errPerm := errors.New(`permission denied for table orders (SQLSTATE 42501)`)
		sink := &fakeSink{rule: func(*record.Batch) error { return &flow.FatalError{Err: errPerm} }}
		r := run(t, setup{cfg: flow.Config{Workers: 2, Lanes: 2}, sink: sink})
		rs := interleaved(4, 5, 10)
		r.admit(t, rs...)
		// No CloseInput: a fatal error ends Run on its own.
		err := r.wait(t)
		var fe *flow.FatalError
		if !errors.As(err, &fe) || !errors.Is(err, errPerm) {
			t.Fatalf("Run = %v, want the sink's *flow.FatalError", err)
		}
		if got := r.p.Fatal(); got != err {
			t.Errorf("Fatal() = %v, want %v, the error Run returned", got, err)
		}
		if n := r.commit.total(); n != 0 {
			t.Errorf("%d record(s) done although nothing was written", n)
		}
		if l := r.dlq.letters(); len(l) != 0 {
			t.Errorf("DLQ stored %v for the sink's own fault", l)
		}
		if n := len(sink.tries()); n > 2 {
			t.Errorf("%d write attempts after a fatal error, want at most one per lane", n)
		}
	})
}

func TestFatalIsNilWhileTheSinkIsHealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := run(t, setup{cfg: flow.Config{Workers: 1, Lanes: 1}})
		r.admit(t, interleaved(1, 3, 10)...)
		if err := r.finish(t); err != nil || r.p.Fatal() != nil {
			t.Errorf("Run = %v, Fatal() = %v; want nil, nil", err, r.p.Fatal())
		}
	})
}

// A sink may write a batch without the rows it rejects (Written): the lane
// dead-letters those rows, reports the rest done, and writes nothing twice.
func TestRejectedRowsWithTheRestWrittenBySink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		marked := []int64{3, 4, 17, 30}
		var (
			mu      sync.Mutex
			written []int64
		)
		sink := &fakeSink{rule: func(b *record.Batch) error {
			re := &flow.RejectedError{Written: true, Err: errors.New("2 rows break a CHECK; the others are written")}
			mu.Lock()
			defer mu.Unlock()
			for i, r := range b.Records {
				if slices.Contains(marked, r.Offset) {
					re.Rows = append(re.Rows, i)
					re.Causes = append(re.Causes, &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: "23514", Err: errors.New("check")})
					continue
				}
				written = append(written, r.Offset)
			}
			if len(re.Rows) == 0 {
				return nil
			}
			return re
		}}
		dlq := &fakeDLQ{}
		r := run(t, setup{
			cfg:    flow.Config{Workers: 4, Lanes: 1, Batch: flow.BatchConfig{MaxRecords: 8, MaxBytes: 1 << 20, Linger: time.Second}},
			sink:   sink,
			dlq:    dlq,
			commit: doneOnlyAfterDLQ(t, dlq, func(r *record.Record) bool { return slices.Contains(marked, r.Offset) }),
		})
		rs := interleaved(1, 32, 10)
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		var want []int64
		for _, x := range rs {
			if !slices.Contains(marked, x.Offset) {
				want = append(want, x.Offset)
			}
		}
		if !slices.Equal(written, want) {
			t.Errorf("sink wrote %v, want every unmarked row once, in order: %v", written, want)
		}
		if n := len(sink.tries()); n != 4 {
			t.Errorf("%d writes for 4 batches of 8: a batch written without its rejected rows was written again", n)
		}
		var dead []int64
		for _, l := range dlq.letters() {
			dead = append(dead, l.at.off)
			if l.cause.Code != "23514" {
				t.Errorf("%s dead-lettered with code %q, want the sink's 23514", l.at, l.cause.Code)
			}
		}
		slices.Sort(dead)
		if !slices.Equal(dead, marked) {
			t.Errorf("DLQ holds offsets %v, want exactly the rejected %v", dead, marked)
		}
		for _, x := range rs {
			if n := r.commit.count(x); n != 1 {
				t.Errorf("%s done %d times, want once", atOf(x), n)
			}
		}
	})
}

// With exactly-once delivery a sink must not write part of a batch: its
// positions would pass rows the DLQ does not hold yet. The lane stops.
func TestRejectedRowsWithTheRestWrittenIsFatalWithPositions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{rule: func(b *record.Batch) error {
			return &flow.RejectedError{Written: true, Rows: []int{0}, Err: errors.New("written without row 0")}
		}}
		r := run(t, setup{cfg: eoConfig(4), sink: sink})
		rs := interleaved(1, 4, 10)
		for _, x := range rs {
			x.Ticket.Generation = 1
		}
		r.admit(t, rs...)
		err := r.wait(t)
		var fe *flow.FatalError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "wrote part of a batch") {
			t.Fatalf("Run = %v, want a *flow.FatalError for the partial write", err)
		}
		if n := r.commit.total(); n != 0 {
			t.Errorf("%d record(s) done", n)
		}
		if l := r.dlq.letters(); len(l) != 0 {
			t.Errorf("DLQ stored %v", l)
		}
	})
}
