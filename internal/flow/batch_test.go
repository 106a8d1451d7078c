package flow_test

import (
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// batchSizes returns the number of rows of each batch the sink accepted.
func batchSizes(s *fakeSink) []int {
	var out []int
	for _, b := range s.batches() {
		out = append(out, len(b.rows))
	}
	return out
}

func TestBatchFlushesByRecordsBytesAndLinger(t *testing.T) {
	const linger = time.Second
	tests := []struct {
		name  string
		batch flow.BatchConfig
		recs  []*record.Record
		now   []int // batch sizes written with no time passing
		later []int // batch sizes written once linger has passed
	}{
		{
			name:  "max_records",
			batch: flow.BatchConfig{MaxRecords: 5, MaxBytes: 1 << 20, Linger: linger},
			recs:  interleaved(1, 12, 10),
			now:   []int{5, 5},
			later: []int{5, 5, 2},
		},
		{
			name:  "max_bytes",
			batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 100, Linger: linger},
			recs:  repeat(9, func(off int64) *record.Record { return sized(0, off, 25) }),
			now:   []int{4, 4},
			later: []int{4, 4, 1},
		},
		{
			name:  "linger",
			batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: linger},
			recs:  interleaved(1, 3, 10),
			now:   nil,
			later: []int{3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := run(t, setup{cfg: flow.Config{Workers: 2, Lanes: 1, Batch: tt.batch}})
				start := time.Now()
				r.admit(t, tt.recs...)
				synctest.Wait()
				if got := batchSizes(r.sink); !slices.Equal(got, tt.now) {
					t.Errorf("written at once: batches %v, want %v", got, tt.now)
				}
				time.Sleep(linger - time.Nanosecond)
				synctest.Wait()
				if got := batchSizes(r.sink); !slices.Equal(got, tt.now) {
					t.Errorf("written a nanosecond before linger: batches %v, want %v", got, tt.now)
				}
				time.Sleep(time.Nanosecond)
				synctest.Wait()
				if got := batchSizes(r.sink); !slices.Equal(got, tt.later) {
					t.Errorf("written after linger: batches %v, want %v", got, tt.later)
				}
				for _, b := range r.sink.batches() {
					var bytes int
					for _, x := range b.recs {
						bytes += x.Size()
					}
					if bytes > tt.batch.MaxBytes || len(b.rows) > tt.batch.MaxRecords {
						t.Errorf("a batch of %d rows, %d bytes over the bounds %+v", len(b.rows), bytes, tt.batch)
					}
				}
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
				if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, offsetsOf(tt.recs)) {
					t.Errorf("offsets written %v, want %v", got, offsetsOf(tt.recs))
				}
				if d := time.Since(start); d != linger {
					t.Errorf("finished after %v, want %v: closing input after the last batch needs no wait", d, linger)
				}
			})
		})
	}
}

// The linger of a batch counts from its first row: rows that keep trickling
// in do not hold the batch back.
func TestBatchLingerCountsFromTheFirstRow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const linger = 200 * time.Millisecond
		r := run(t, setup{cfg: flow.Config{Workers: 1, Lanes: 1, Batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: linger}}})
		start := time.Now()
		for off := range int64(4) {
			r.admit(t, sized(0, off, 10))
			time.Sleep(linger / 4)
		}
		synctest.Wait()
		b := r.sink.batches()
		if len(b) != 1 || len(b[0].rows) != 4 || b[0].at.Sub(start) != linger {
			t.Fatalf("batches %v; want one of 4 rows written %v after its first row", describe(b, start), linger)
		}
		if err := r.finish(t); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseInputFlushesAtOnceAndRunReturnsWhenAllIsDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := run(t, setup{cfg: flow.Config{Workers: 2, Lanes: 2, Batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: time.Hour}}})
		start := time.Now()
		rs := interleaved(4, 5, 10)
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Run returned after %v of linger; closing input must flush at once", d)
		}
		for _, x := range rs {
			if n := r.commit.count(x); n != 1 {
				t.Errorf("%s done %d times, want once", atOf(x), n)
			}
		}
		if c := r.p.Counts(); c.Consumed != int64(len(rs)) || c.Written != int64(len(rs)) || c.DeadLettered != 0 {
			t.Errorf("Counts() = %+v, want %d consumed and written, none dead-lettered", c, len(rs))
		}
		if s := r.gate.Stats(); s.Records != 0 || s.Bytes != 0 {
			t.Errorf("gate holds %d records, %d bytes after Run returned; want none", s.Records, s.Bytes)
		}
		select {
		case <-r.p.Drained():
		default:
			t.Error("Drained() not closed after Run returned")
		}
	})
}

func repeat(n int64, f func(off int64) *record.Record) []*record.Record {
	out := make([]*record.Record, n)
	for i := range n {
		out[i] = f(i)
	}
	return out
}

// describe renders batches as "rows@elapsed" for failure messages.
func describe(bs []written, start time.Time) []string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprintf("%d@%v", len(b.rows), b.at.Sub(start)))
	}
	return out
}
