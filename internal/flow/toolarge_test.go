package flow_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// TestTooLargeRecordsAreDeadLetteredUnmapped mixes records at, just over and
// far over flow.max_record_bytes (counting key, value and every header) into
// two partitions: the large ones go to the DLQ with reason too_large and never
// reach the mapper, every other record is written in order, and each record is
// done once.
func TestTooLargeRecordsAreDeadLetteredUnmapped(t *testing.T) {
	const limit = 1000
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			mapped []int64
		)
		mapper := mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
			mu.Lock()
			mapped = append(mapped, r.Offset)
			mu.Unlock()
			return identity{}.Map(ctx, r)
		})
		r := run(t, setup{
			cfg:    flow.Config{Workers: 2, Lanes: 2, MaxRecordBytes: limit, Batch: flow.BatchConfig{MaxRecords: 10, MaxBytes: 1 << 20, Linger: 50 * time.Millisecond}},
			mapper: mapper,
		})
		rec := func(p int32, off int64, key, value int, headers ...record.Header) *record.Record {
			return &record.Record{Topic: "t", Partition: p, Offset: off, Key: make([]byte, key), Value: make([]byte, value), Headers: headers}
		}
		hdr := func(k string, v int) record.Header { return record.Header{Key: k, Value: make([]byte, v)} }
		rs := []*record.Record{
			rec(0, 0, 10, 100),
			rec(0, 1, 0, limit),             // exactly the limit: mapped
			rec(0, 2, 0, limit+1),           // one byte over, in the value
			rec(0, 3, 600, 401),             // over by key and value together
			rec(0, 4, 0, 900, hdr("h", 99)), // 1 + 99 + 900 = limit: mapped
			rec(0, 5, 0, 900, hdr("h", 100)),
			rec(1, 0, 0, 4<<20), // far over: never decoded
			rec(1, 1, 1, 1),
			rec(0, 6, 0, 0),
		}
		tooLarge := map[at]bool{atOf(rs[2]): true, atOf(rs[3]): true, atOf(rs[5]): true, atOf(rs[6]): true}
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}

		for _, l := range r.dlq.letters() {
			if !tooLarge[l.at] {
				t.Errorf("DLQ stored %s (%v), which is within the limit", l.at, l.cause)
				continue
			}
			delete(tooLarge, l.at)
			if l.cause.Reason != flow.ReasonTooLarge || !errors.Is(l.cause, flow.ErrRecordTooLarge) ||
				!strings.Contains(l.cause.Error(), "limit is 1000") {
				t.Errorf("DLQ stored %s with %v (reason %q), want reason too_large naming the limit", l.at, l.cause, l.cause.Reason)
			}
		}
		for a := range tooLarge {
			t.Errorf("%s is over the limit but is not in the DLQ", a)
		}
		written := r.sink.rows(t)
		if got, want := written[part(0)], []int64{0, 1, 4, 6}; !slices.Equal(got, want) {
			t.Errorf("partition 0 wrote %v, want %v", got, want)
		}
		if got, want := written[part(1)], []int64{1}; !slices.Equal(got, want) {
			t.Errorf("partition 1 wrote %v, want %v", got, want)
		}
		mu.Lock()
		slices.Sort(mapped)
		got := slices.Clone(mapped)
		mu.Unlock()
		if want := []int64{0, 1, 1, 4, 6}; !slices.Equal(got, want) {
			t.Errorf("the mapper saw offsets %v, want %v: a record over the limit must not be decoded", got, want)
		}
		for _, x := range rs {
			if n := r.commit.count(x); n != 1 {
				t.Errorf("%s reported done %d times, want once", atOf(x), n)
			}
		}
		if got := testutil.ToFloat64(r.m.RecordsDLQ.WithLabelValues(flow.ReasonTooLarge)); got != 4 {
			t.Errorf("sluice_records_dlq_total{reason=too_large} = %v, want 4", got)
		}
	})
}

// TestMaxRecordBytesZeroIsNoLimit: without a limit every record is mapped.
func TestMaxRecordBytesZeroIsNoLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := run(t, setup{cfg: flow.Config{Workers: 1, Lanes: 1}})
		r.admit(t, sized(0, 0, 8<<20), sized(0, 1, 10))
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if l := r.dlq.letters(); len(l) != 0 {
			t.Errorf("DLQ stored %v, want nothing", l)
		}
		if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, []int64{0, 1}) {
			t.Errorf("wrote %v, want [0 1]", got)
		}
	})
}
