package flow_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
)

// A budget smaller than lanes x max_records must not stall until linger: when
// the gate is full the lanes hand their open batches to the writers at once.
// (The benchmark found the default budget, 10,000 records for 4 lanes of 5,000,
// writing only when linger fired.)
func TestFullGateFlushesOpenBatchesWithoutWaitingForLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := run(t, setup{
			cfg:  flow.Config{Workers: 2, Lanes: 4, Batch: flow.BatchConfig{MaxRecords: 5000, MaxBytes: 1 << 30, Linger: time.Hour}},
			gate: flow.GateConfig{MaxRecords: 100, MaxBytes: 1 << 30, ResumeAt: 0.5},
		})
		start := time.Now()
		r.admit(t, interleaved(8, 50, 10)...) // 400 records through a 100-record gate
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		if el := time.Since(start); el >= time.Hour {
			t.Errorf("400 records through a full gate took %v of fake time: the lanes waited for linger", el)
		}
		if n := r.commit.total(); n != 400 {
			t.Errorf("%d records done, want 400", n)
		}
	})
}
