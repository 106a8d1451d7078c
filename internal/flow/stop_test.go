package flow_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// When the pipeline is stopped (ctx cancelled, as after shutdown_timeout), a
// mapper that fails because its ctx ended has said nothing about the record:
// the record must be neither dead-lettered nor done, so it is not committed
// and is consumed again. The fake DLQ, like the logging dead-letterer, stores
// whatever it is given even with its ctx ended.
func TestStoppingLeavesInFlightRecordsNotDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 32
		mapper := mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
			<-ctx.Done()
			return nil, fmt.Errorf("look up customer: %w", ctx.Err())
		})
		r := run(t, setup{cfg: flow.Config{Workers: n, Lanes: 4}, mapper: mapper})
		r.admit(t, interleaved(8, n/8, 10)...)
		synctest.Wait()
		if err := r.stop(t); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
		if l := r.dlq.letters(); len(l) != 0 {
			t.Errorf("DLQ stored %d record(s) that failed only because the pipeline stopped, e.g. %s: %v", len(l), l[0].at, l[0].cause)
		}
		if n := r.commit.total(); n != 0 {
			t.Errorf("%d record(s) reported done that were never written: their offsets would be committed", n)
		}
	})
}
