package flow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

var (
	errBadJSON = errors.New("value is not valid JSON")
	errNoField = errors.New("value has no field id")
)

// poisonMapper fails the records of partition 0 at the offsets in fail with the
// error given there, and maps every other record as identity does.
func poisonMapper(fail map[int64]error) flow.Mapper {
	return mapperFunc(func(ctx context.Context, r *record.Record) (record.Row, error) {
		if err, ok := fail[r.Offset]; ok && r.Partition == 0 {
			return nil, err
		}
		return identity{}.Map(ctx, r)
	})
}

// doneOnlyAfterDLQ returns a committer that flags, through t, any poison
// record reported done before the DLQ stored it.
func doneOnlyAfterDLQ(t *testing.T, dlq *fakeDLQ, poison func(r *record.Record) bool) *fakeCommitter {
	return &fakeCommitter{before: func(r *record.Record) {
		if poison(r) && !dlq.has(r) {
			t.Errorf("%s reported done before the DLQ stored it: its offset could be committed and the record lost", atOf(r))
		}
	}}
}

func TestPoisonRecordsGoToTheDLQAndThePartitionMovesOn(t *testing.T) {
	fail := map[int64]error{
		3: flow.Decode(errBadJSON),
		6: errNoField, // a plain mapper error is a mapping poison
		8: fmt.Errorf("map orders: %w", flow.Mapping(errNoField)),
	}
	wantReason := map[int64]string{3: flow.ReasonDecode, 6: flow.ReasonMapping, 8: flow.ReasonMapping}
	wantErr := map[int64]error{3: errBadJSON, 6: errNoField, 8: errNoField}
	for _, tc := range []struct {
		failFirst int
		async     bool
	}{{0, false}, {3, false}, {0, true}, {3, true}} {
		failFirst := tc.failFirst
		t.Run(fmt.Sprintf("dlq fails %d times, async %v", failFirst, tc.async), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dlq := &fakeDLQ{failFirst: failFirst}
				isPoison := func(r *record.Record) bool { _, ok := fail[r.Offset]; return ok && r.Partition == 0 }
				r := run(t, setup{
					cfg:      flow.Config{Workers: 4, Lanes: 2, Batch: flow.BatchConfig{MaxRecords: 5, MaxBytes: 1 << 20, Linger: 100 * time.Millisecond}},
					mapper:   poisonMapper(fail),
					dlq:      dlq,
					commit:   doneOnlyAfterDLQ(t, dlq, isPoison),
					asyncDLQ: tc.async,
				})
				rs := interleaved(2, 12, 10)
				r.admit(t, rs...)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}

				written := r.sink.rows(t)
				var want []int64
				for off := range int64(12) {
					if _, ok := fail[off]; !ok {
						want = append(want, off)
					}
				}
				if got := written[part(0)]; !slices.Equal(got, want) {
					t.Errorf("partition 0 wrote %v, want %v: the rest of a partition is written past its poison", got, want)
				}
				if got := written[part(1)]; len(got) != 12 {
					t.Errorf("partition 1 wrote %v, want all 12", got)
				}
				letters := r.dlq.letters()
				if len(letters) != len(fail) {
					t.Fatalf("DLQ stored %v, want the %d poison records", letters, len(fail))
				}
				for _, l := range letters {
					off := l.at.off
					if l.at.part != part(0) || l.cause.Reason != wantReason[off] || !errors.Is(l.cause, wantErr[off]) {
						t.Errorf("DLQ stored %s with %v (reason %q), want reason %q wrapping %v", l.at, l.cause, l.cause.Reason, wantReason[off], wantErr[off])
					}
				}
				if got, want := r.dlq.attempts(), len(fail)+failFirst; got != want {
					t.Errorf("the DLQ was asked %d times, want %d: a failed store is retried until it succeeds", got, want)
				}
				if got, want := r.dlq.asyncAttempts(), map[bool]int{false: 0, true: len(fail)}[tc.async]; got != want {
					t.Errorf("DeadLetterAsync called %d times, want %d: an asynchronous DLQ is first asked so, once a record", got, want)
				}
				for _, x := range rs {
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s reported done %d times, want once", atOf(x), n)
					}
				}
				if c := r.p.Counts(); c.Written != 21 || c.DeadLettered != 3 {
					t.Errorf("Counts() = %+v, want 21 written, 3 dead-lettered", c)
				}
				for reason, want := range map[string]float64{flow.ReasonDecode: 1, flow.ReasonMapping: 2} {
					if got := testutil.ToFloat64(r.m.RecordsDLQ.WithLabelValues(reason)); got != want {
						t.Errorf("sluice_records_dlq_total{reason=%q} = %v, want %v", reason, got, want)
					}
				}
			})
		})
	}
}

// While the DLQ cannot take a poison record, the record is not done; the store
// is retried with backoff, and the record is done once the DLQ has it.
func TestPoisonRecordIsNotDoneUntilTheDLQTakesIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dlq := &fakeDLQ{failFirst: 3}
		r := run(t, setup{
			cfg:    flow.Config{Workers: 1, Lanes: 1, Retry: flow.RetryConfig{Initial: time.Second, Max: 10 * time.Second}},
			mapper: poisonMapper(map[int64]error{0: flow.Decode(errBadJSON)}),
			dlq:    dlq,
		})
		start := time.Now()
		poison, next := sized(0, 0, 10), sized(0, 1, 10)
		r.admit(t, poison, next)
		synctest.Wait()
		for dlq.attempts() < 4 {
			if n := r.commit.count(poison); n != 0 {
				t.Fatalf("after %d failed DLQ attempt(s), the poison record is done (%d): its offset could be committed and the record lost", dlq.attempts(), n)
			}
			if time.Since(start) > time.Minute {
				t.Fatalf("%d DLQ attempts in a minute, want 4", dlq.attempts())
			}
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
		}
		if n := r.commit.count(poison); n != 1 || !dlq.has(poison) {
			t.Errorf("after the DLQ took it: done %d times, stored %v; want done once and stored", n, dlq.has(poison))
		}
		if time.Since(start) == 0 {
			t.Error("DLQ retried without backing off")
		}
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if got := r.sink.rows(t)[part(0)]; !slices.Equal(got, []int64{1}) {
			t.Errorf("sink wrote %v, want [1]", got)
		}
	})
}
