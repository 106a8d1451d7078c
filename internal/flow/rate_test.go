package flow_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
)

// With rate_limit 100 rows/s and a burst of 100, 1,000 rows take 9 s past the
// burst, across all lanes together; at no time has the sink taken more than
// the burst plus the rate times the time passed.
func TestRateLimitBoundsRowsWrittenPerSecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate, burst = 100, 100
		r := run(t, setup{cfg: flow.Config{Workers: 4, Lanes: 4, RecordsPerSecond: rate, Burst: burst,
			Batch: flow.BatchConfig{MaxRecords: 50, MaxBytes: 1 << 20, Linger: 10 * time.Millisecond}}})
		start := time.Now()
		rs := interleaved(8, 125, 10)
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		elapsed := time.Since(start)
		t.Logf("1,000 rows written in %v of fake time", elapsed)
		if elapsed < 9*time.Second {
			t.Errorf("1,000 rows written in %v, want at least 9s at %d rows/s after a burst of %d", elapsed, rate, burst)
		}
		if elapsed > 10*time.Second {
			t.Errorf("1,000 rows written in %v, want about 9s: the limit holds writes back more than it should", elapsed)
		}
		total := 0
		for _, b := range r.sink.batches() {
			total += len(b.rows)
			allowed := burst + int(rate*b.at.Sub(start).Seconds())
			if total > allowed {
				t.Errorf("%d rows written after %v, more than the %d the limit allows", total, b.at.Sub(start), allowed)
			}
		}
		if total != len(rs) {
			t.Errorf("%d rows written, want %d", total, len(rs))
		}
	})
}
