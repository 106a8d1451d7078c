package flow_test

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/internal/flow"
)

// The test holds each write of the sink until it answers it: a lane has one
// write in flight, its records are done only once the write returns, and the
// gate holds them until then.
func TestALaneWritesOneBatchAtATimeAndRecordsAreDoneAfterTheirWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{calls: make(chan *sinkCall)}
		r := run(t, setup{
			cfg:  flow.Config{Workers: 4, Lanes: 1, Batch: flow.BatchConfig{MaxRecords: 10, MaxBytes: 1 << 20, Linger: time.Second}},
			sink: sink,
		})
		rs := interleaved(1, 30, 10)
		r.admit(t, rs...)
		for i := range 3 {
			call := <-sink.calls
			synctest.Wait()
			select {
			case c := <-sink.calls:
				t.Fatalf("a second write (%v) while the lane's write %d is in flight", c.offsets(), i)
			default:
			}
			want := offsetsOf(rs[i*10 : (i+1)*10])
			if got := call.offsets(); !slices.Equal(got, want) {
				t.Errorf("write %d holds %v, want %v", i, got, want)
			}
			if n := r.commit.total(); n != i*10 {
				t.Errorf("with write %d in flight, %d records done, want %d", i, n, i*10)
			}
			if got := testutil.ToFloat64(r.m.InflightRecords); got != 10 {
				t.Errorf("sluice_inflight_records = %v with a batch of 10 in flight", got)
			}
			if s := r.gate.Stats(); s.Records != 30-i*10 {
				t.Errorf("gate holds %d records with write %d in flight, want %d", s.Records, i, 30-i*10)
			}
			call.answer(nil)
		}
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if n := r.commit.total(); n != 30 {
			t.Errorf("%d records done, want 30", n)
		}
		if got := testutil.ToFloat64(r.m.InflightRecords); got != 0 {
			t.Errorf("sluice_inflight_records = %v after the last write", got)
		}
		if got := testutil.ToFloat64(r.m.RecordsWritten); got != 30 {
			t.Errorf("sluice_records_written_total = %v, want 30", got)
		}
	})
}

// A write that hangs is cut off by write_timeout and retried: a sink that never
// answers cannot stall its lane forever.
func TestWriteTimeoutCutsOffAHungWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{calls: make(chan *sinkCall)}
		r := run(t, setup{
			cfg: flow.Config{Workers: 1, Lanes: 1, WriteTimeout: 5 * time.Second, Retry: flow.RetryConfig{Initial: 100 * time.Millisecond, Max: time.Second},
				Batch: flow.BatchConfig{MaxRecords: 3, MaxBytes: 1 << 20, Linger: time.Second}},
			sink: sink,
		})
		start := time.Now()
		r.admit(t, interleaved(1, 3, 10)...)
		<-sink.calls // never answered: the sink hangs
		retry := <-sink.calls
		if d := retry.at.Sub(start); d < 5*time.Second {
			t.Errorf("retried %v after the first write, want after the write timeout of 5s", d)
		}
		retry.answer(nil)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if got := batchSizes(sink); !slices.Equal(got, []int{3}) {
			t.Errorf("sink accepted %v, want one batch of 3", got)
		}
	})
}
