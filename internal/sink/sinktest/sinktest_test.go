package sinktest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memSink is the reference sink the suite is checked against: it stores
// whole batches in memory, refuses a batch holding a record whose value says
// "bad" (naming the row when the batch is one record, as a sink that cannot
// tell which row failed does), fails while failing is set, and holds writes
// while hold is set.
type memSink struct {
	mu      sync.Mutex
	stored  []sinktest.Stored
	failing bool
	hold    chan struct{} // non-nil: writes wait for it to close
	held    chan struct{} // closed when a write is held
}

var errDown = errors.New("mem sink: injected outage")

func (s *memSink) Map(_ context.Context, r *record.Record) (record.Row, error) {
	var v struct{ ID int64 }
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return nil, flow.Decode(err)
	}
	return record.Row{r.Partition, r.Offset, v.ID, bytes.Contains(r.Value, []byte(`"bad"`))}, nil
}

func (s *memSink) Write(ctx context.Context, b *record.Batch) error {
	s.mu.Lock()
	failing, hold, held := s.failing, s.hold, s.held
	s.mu.Unlock()
	if failing {
		return &flow.TransientError{Err: errDown}
	}
	if hold != nil {
		select {
		case <-held:
		default:
			close(held)
		}
		select {
		case <-hold:
		case <-ctx.Done():
			return &flow.TransientError{Err: ctx.Err()}
		}
	}
	for _, row := range b.Rows {
		if row[3].(bool) {
			cause := errors.New("mem sink: a bad record")
			if b.Len() == 1 {
				return &flow.RejectedError{Rows: []int{0}, Causes: []*flow.PoisonError{{Reason: flow.ReasonSinkRejected, Code: "BAD", Err: cause}}, Err: cause}
			}
			return &flow.RejectedError{Err: cause}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, row := range b.Rows {
		s.stored = append(s.stored, sinktest.Stored{Partition: row[0].(int32), Offset: row[1].(int64), ID: row[2].(int64)})
	}
	return nil
}

func TestSuiteOnTheReferenceSink(t *testing.T) {
	sinktest.Run(t, sinktest.Harness{
		RejectCode: "BAD",
		New: func(t *testing.T) *sinktest.Instance {
			s := &memSink{}
			return &sinktest.Instance{
				Sink: s, Mapper: s,
				Stored: func(*testing.T) []sinktest.Stored {
					s.mu.Lock()
					defer s.mu.Unlock()
					return append([]sinktest.Stored(nil), s.stored...)
				},
				Bad: func(r *record.Record) {
					r.Value = bytes.Replace(r.Value, []byte(`"sinktest record"`), []byte(`"bad"`), 1)
				},
				Fail: func(*testing.T) func() {
					s.mu.Lock()
					s.failing = true
					s.mu.Unlock()
					return func() {
						s.mu.Lock()
						s.failing = false
						s.mu.Unlock()
					}
				},
				Hold: func(*testing.T) (func(context.Context) error, func()) {
					hold, held := make(chan struct{}), make(chan struct{})
					s.mu.Lock()
					s.hold, s.held = hold, held
					s.mu.Unlock()
					var once sync.Once
					return func(ctx context.Context) error {
							select {
							case <-held:
								return nil
							case <-ctx.Done():
								return ctx.Err()
							}
						}, func() {
							once.Do(func() {
								close(hold)
								s.mu.Lock()
								s.hold = nil
								s.mu.Unlock()
							})
						}
				},
			}
		},
	})
}
