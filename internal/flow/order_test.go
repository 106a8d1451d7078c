package flow_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// TestEveryRecordWrittenOnceInPartitionOrder runs 8 partitions through 4 lanes
// and 8 workers whose mapping takes a random time, so workers finish out of
// admission order and lanes write in parallel; the gate is small, so the
// admitter keeps waiting for room. Per partition, the sink must see every
// offset once and in order, and every record must be done once.
func TestEveryRecordWrittenOnceInPartitionOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var mapped []at // in the order mapping finished
		mapper := mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
			time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
			mu.Lock()
			mapped = append(mapped, atOf(r))
			mu.Unlock()
			return identity{}.Map(ctx, r)
		})
		var inflight, parallel int // writes in progress, and the most at once
		sink := &fakeSink{rule: func(*record.Batch) error {
			mu.Lock()
			inflight++
			parallel = max(parallel, inflight)
			mu.Unlock()
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			mu.Lock()
			inflight--
			mu.Unlock()
			return nil
		}}
		gate := flow.GateConfig{MaxRecords: 64, MaxBytes: 64 * 100, ResumeAt: 0.5}
		r := run(t, setup{
			cfg:    flow.Config{Workers: 8, Lanes: 4, Batch: flow.BatchConfig{MaxRecords: 16, MaxBytes: 1 << 20, Linger: 20 * time.Millisecond}},
			gate:   gate,
			mapper: mapper,
			sink:   sink,
		})
		const parts, perPart = 8, 100
		rs := interleaved(parts, perPart, 50)
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}

		admitted := make([]at, len(rs))
		for i, x := range rs {
			admitted[i] = atOf(x)
		}
		if slices.Equal(mapped, admitted) {
			t.Fatal("mapping finished in admission order; the test does not exercise reordering")
		}
		if parallel < 2 {
			t.Errorf("at most %d write(s) at a time; lanes must write in parallel", parallel)
		}
		written := sink.rows(t)
		want := make([]int64, perPart)
		for i := range want {
			want[i] = int64(i)
		}
		for p := range int32(parts) {
			if got := written[part(p)]; !slices.Equal(got, want) {
				t.Errorf("partition %d: sink saw offsets %v, want 0..%d once each, in order", p, got, perPart-1)
			}
		}
		for _, x := range rs {
			if n := r.commit.count(x); n != 1 {
				t.Errorf("%s reported done %d times, want once", atOf(x), n)
			}
		}
		if c := r.p.Counts(); c.Written != parts*perPart || c.DeadLettered != 0 {
			t.Errorf("Counts() = %+v, want %d written, none dead-lettered", c, parts*perPart)
		}
		if s := r.gate.Stats(); s.PeakBytes > gate.MaxBytes || s.Pauses == 0 {
			t.Errorf("gate peaked at %d bytes of %d, became full %d times; want within budget, and full at least once",
				s.PeakBytes, gate.MaxBytes, s.Pauses)
		}
		if n := len(r.dlq.letters()); n != 0 {
			t.Errorf("%d records dead-lettered, want none", n)
		}
	})
}
