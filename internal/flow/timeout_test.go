package flow_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// TestRecordTimeoutDeadLettersTheSlowRecordWithoutBlockingItsPartition: one
// record's mapping hangs. After record_timeout it is dead-lettered with reason
// timeout, and the records behind it in its partition are written without
// waiting for the hung mapper. When the mapper does return, nothing is written
// twice, and Run ends with every goroutine it started.
func TestRecordTimeoutDeadLettersTheSlowRecordWithoutBlockingItsPartition(t *testing.T) {
	const timeout = time.Second
	tests := []struct {
		name string
		// hang blocks the mapping of the slow record; release, when closed,
		// makes it return a row.
		hang func(ctx context.Context, release <-chan struct{}) error
		// honoursCtx: the hung mapper returns on its own once its ctx ends.
		honoursCtx bool
	}{
		{
			name: "mapper returns when its ctx ends",
			hang: func(ctx context.Context, release <-chan struct{}) error {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-release:
					return nil
				}
			},
			honoursCtx: true,
		},
		{
			name: "mapper ignores its ctx",
			hang: func(_ context.Context, release <-chan struct{}) error {
				<-release
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				var slowReturned atomic.Bool
				mapper := mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
					if r.Partition == 0 && r.Offset == 2 {
						defer slowReturned.Store(true)
						if err := tt.hang(ctx, release); err != nil {
							return nil, err
						}
					}
					return identity{}.Map(ctx, r)
				})
				const linger = 50 * time.Millisecond
				r := run(t, setup{
					cfg: flow.Config{Workers: 2, Lanes: 2, RecordTimeout: timeout,
						Batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: linger}},
					mapper: mapper,
				})
				start := time.Now()
				rs := interleaved(3, 10, 10)
				r.admit(t, rs...)

				// Within the timeout, the slow record holds up its partition.
				time.Sleep(timeout - time.Millisecond)
				synctest.Wait()
				if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, []int64{0, 1}) {
					t.Errorf("partition 0 wrote %v before the timeout, want [0 1]", got)
				}
				if n := len(r.dlq.letters()); n != 0 {
					t.Errorf("%d record(s) dead-lettered before the timeout", n)
				}

				// Past the timeout (the watchdog looks every quarter of it), the
				// slow record is dead-lettered and its partition moves on.
				time.Sleep(timeout/4 + linger + time.Millisecond)
				synctest.Wait()
				letters := r.dlq.letters()
				if len(letters) != 1 || letters[0].at != atOf(rs[2*3]) || letters[0].cause.Reason != flow.ReasonTimeout ||
					!errors.Is(letters[0].cause, flow.ErrRecordTimeout) {
					t.Fatalf("DLQ holds %+v, want %s alone with reason timeout wrapping ErrRecordTimeout", letters, atOf(rs[2*3]))
				}
				if d := letters[0].when.Sub(start); d < timeout {
					t.Errorf("dead-lettered after %v, before the record timeout %v", d, timeout)
				}
				want := []int64{0, 1, 3, 4, 5, 6, 7, 8, 9}
				if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, want) {
					t.Errorf("partition 0 wrote %v after the timeout, want %v", got, want)
				}
				if !tt.honoursCtx && slowReturned.Load() {
					t.Fatal("the hung mapper returned before it was released; the test proves nothing")
				}

				// The hung mapper returns late; its row is not written.
				close(release)
				time.Sleep(time.Minute)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				if !slowReturned.Load() {
					t.Error("Run returned while a mapper it called was still running")
				}
				if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, want) {
					t.Errorf("partition 0 wrote %v in the end, want %v: the timed-out record must not be written too", got, want)
				}
				for _, x := range rs {
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s reported done %d times, want once", atOf(x), n)
					}
				}
				if c := r.p.Counts(); c.Written != 29 || c.DeadLettered != 1 {
					t.Errorf("Counts() = %+v, want 29 written, 1 dead-lettered", c)
				}
			})
		})
	}
}

// A hung mapper that honours its ctx is not left running until shutdown: the
// watchdog cancels its ctx once the record timeout passed (within a quarter
// timeout, its tick), so once input is closed Run returns without being
// cancelled.
func TestRecordTimeoutEndsTheMappersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = time.Second
		var ended atomic.Pointer[time.Time]
		mapper := mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
			<-ctx.Done()
			now := time.Now()
			ended.Store(&now)
			return nil, ctx.Err()
		})
		r := run(t, setup{cfg: flow.Config{Workers: 1, Lanes: 1, RecordTimeout: timeout}, mapper: mapper})
		start := time.Now()
		r.admit(t, sized(0, 0, 10))
		r.p.CloseInput()
		if err := r.wait(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if e := ended.Load(); e == nil || e.Sub(start) < timeout || e.Sub(start) > timeout*5/4 {
			t.Errorf("mapper's ctx ended at %v after admission, want between the record timeout %v and a quarter more", e, timeout)
		}
		letters := r.dlq.letters()
		if len(letters) != 1 || letters[0].cause.Reason != flow.ReasonTimeout {
			t.Fatalf("DLQ holds %+v, want the record with reason timeout", letters)
		}
	})
}
