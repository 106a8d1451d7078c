package flow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// ledgerSink is an exactly-once sink in memory: a table of rows and, per
// partition, the stored next offset, moved by every write as the PostgreSQL
// sink's offsets table is. It checks the contract of record.Position on every
// write, and the property exactly-once rests on: a stored position never
// passes a record that is neither in the table nor acknowledged by the DLQ.
type ledgerSink struct {
	t        *testing.T
	dlq      *fakeDLQ
	admitted []*record.Record // every record the test admits
	// rule, when set, may fail a write before the ledger looks at it.
	rule func(b *record.Batch) error

	mu     sync.Mutex
	next   map[record.Partition]int64
	table  map[at]int
	writes [][]record.Position
}

func newLedger(t *testing.T, dlq *fakeDLQ, admitted []*record.Record) *ledgerSink {
	return &ledgerSink{t: t, dlq: dlq, admitted: admitted, next: map[record.Partition]int64{}, table: map[at]int{}}
}

func (s *ledgerSink) Write(_ context.Context, b *record.Batch) error {
	if s.rule != nil {
		if err := s.rule(b); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.IsSortedFunc(b.Positions, func(a, c record.Position) int { return comparePart(a.Partition, c.Partition) }) {
		s.t.Errorf("positions %v are not in (topic, partition) order", b.Positions)
	}
	pos := map[record.Partition]int64{}
	for _, p := range b.Positions {
		if _, dup := pos[p.Partition]; dup {
			s.t.Errorf("partition %s has two positions in one write", p.Partition)
		}
		pos[p.Partition] = p.Next
		if p.Next < s.next[p.Partition] {
			s.t.Errorf("write moves %s back from %d to %d", p.Partition, s.next[p.Partition], p.Next)
		}
	}
	inBatch := map[at]bool{}
	for _, r := range b.Records {
		next, ok := pos[r.Part()]
		switch {
		case !ok:
			s.t.Errorf("row %s has no position", atOf(r))
		case r.Offset >= next:
			s.t.Errorf("row %s is not passed by its position %d", atOf(r), next)
		case r.Offset < s.next[r.Part()]:
			s.t.Errorf("row %s is behind the stored position %d: a duplicate", atOf(r), s.next[r.Part()])
		}
		inBatch[atOf(r)] = true
	}
	for _, x := range s.admitted {
		next, ok := pos[x.Part()]
		if !ok || x.Offset >= next || x.Offset < s.next[x.Part()] {
			continue
		}
		if !inBatch[atOf(x)] && s.table[atOf(x)] == 0 && !s.dlq.has(x) {
			s.t.Errorf("position %d of %s passes %s, which is neither written nor acknowledged by the DLQ: a crash would lose it",
				next, x.Part(), atOf(x))
		}
	}
	for _, r := range b.Records {
		s.table[atOf(r)]++
	}
	for p, n := range pos {
		s.next[p] = n
	}
	s.writes = append(s.writes, slices.Clone(b.Positions))
	return nil
}

func (s *ledgerSink) stored(p record.Partition) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next[p]
}

func (s *ledgerSink) times(r *record.Record) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table[atOf(r)]
}

// doneOnlyWhenStored returns a committer that flags any record reported done
// before the ledger's stored position passed it.
func doneOnlyWhenStored(t *testing.T, ledger func() *ledgerSink) *fakeCommitter {
	return &fakeCommitter{before: func(r *record.Record) {
		if n := ledger().stored(r.Part()); n <= r.Offset {
			t.Errorf("%s reported done while the stored position of its partition is %d", atOf(r), n)
		}
	}}
}

func eoConfig(maxRecords int) flow.Config {
	return flow.Config{Workers: 4, Lanes: 2, ExactlyOnce: true,
		Batch: flow.BatchConfig{MaxRecords: maxRecords, MaxBytes: 1 << 20, Linger: 100 * time.Millisecond}}
}

// Offsets are not dense (transaction markers, compaction): a position is the
// last covered offset + 1, never a count.
func TestExactlyOncePositionsAreLastOffsetPlusOneAcrossGaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rs []*record.Record
		for _, off := range []int64{0, 1, 5, 9, 10, 14} {
			rs = append(rs, sized(0, off, 10))
		}
		for _, off := range []int64{3, 4, 100} {
			rs = append(rs, sized(1, off, 10))
		}
		for _, r := range rs {
			r.Ticket.Generation = 7
		}
		dlq := &fakeDLQ{}
		ledger := newLedger(t, dlq, rs)
		r := run(t, setup{cfg: eoConfig(2), sink: &fakeSink{rule: func(b *record.Batch) error { return ledger.Write(t.Context(), b) }},
			dlq: dlq, commit: doneOnlyWhenStored(t, func() *ledgerSink { return ledger })})
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		for _, b := range r.sink.batches() {
			last := map[record.Partition]int64{}
			for _, x := range b.recs {
				last[x.Part()] = x.Offset
			}
			for _, p := range b.pos {
				if p.Generation != 7 {
					t.Errorf("position %+v carries generation %d, want the records' 7", p, p.Generation)
				}
				if want := last[p.Partition] + 1; p.Next != want {
					t.Errorf("batch %v: position of %s is %d, want its last offset + 1 = %d", offsetsOf(b.recs), p.Partition, p.Next, want)
				}
			}
		}
		if got := ledger.stored(part(0)); got != 15 {
			t.Errorf("stored position of t/0 = %d, want 15", got)
		}
		if got := ledger.stored(part(1)); got != 101 {
			t.Errorf("stored position of t/1 = %d, want 101", got)
		}
		for _, x := range rs {
			if n := ledger.times(x); n != 1 {
				t.Errorf("%s written %d times", atOf(x), n)
			}
			if n := r.commit.count(x); n != 1 {
				t.Errorf("%s done %d times", atOf(x), n)
			}
		}
	})
}

// A poison record's position moves only once the DLQ acknowledged it, the
// rows behind it wait for that, a partition whose last records are poison
// gets a write of positions alone, and a dead letter is done only once a
// stored position passed it.
func TestExactlyOncePoisonIsPassedOnlyAfterTheDLQAcknowledgedIt(t *testing.T) {
	fail := map[int64]error{3: flow.Decode(errBadJSON), 10: errNoField, 11: errNoField}
	for _, failFirst := range []int{0, 4} {
		t.Run(fmt.Sprintf("dlq fails %d times", failFirst), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dlq := &fakeDLQ{failFirst: failFirst}
				rs := interleaved(2, 12, 10) // offsets 0..11: the last two of t/0 are poison
				ledger := newLedger(t, dlq, rs)
				cfg := eoConfig(4)
				cfg.Retry = flow.RetryConfig{Initial: time.Second, Max: 2 * time.Second}
				r := run(t, setup{cfg: cfg, mapper: poisonMapper(fail), sink: &fakeSink{rule: func(b *record.Batch) error { return ledger.Write(t.Context(), b) }},
					dlq: dlq, commit: doneOnlyWhenStored(t, func() *ledgerSink { return ledger })})
				r.admit(t, rs...)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v", err)
				}
				for _, x := range rs {
					_, poison := fail[x.Offset]
					poison = poison && x.Partition == 0
					if got, want := ledger.times(x), map[bool]int{true: 0, false: 1}[poison]; got != want {
						t.Errorf("%s written %d times, want %d", atOf(x), got, want)
					}
					if poison != dlq.has(x) {
						t.Errorf("%s in the DLQ: %v, want %v", atOf(x), dlq.has(x), poison)
					}
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s done %d times, want once", atOf(x), n)
					}
				}
				if got := ledger.stored(part(0)); got != 12 {
					t.Errorf("stored position of t/0 = %d, want 12: past the poison records at its end", got)
				}
				if got := r.gate.Stats().Records; got != 0 {
					t.Errorf("gate holds %d records after the drain", got)
				}
			})
		})
	}
}

// Bisection in exactly-once delivery: every part is a write of its own, the
// first half moves its partitions just past its own rows, and the stored
// position ends past the rejected row, which is in the DLQ and nowhere else.
func TestExactlyOnceBisectionMovesPositionsOverPrefixes(t *testing.T) {
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("rows named %v", named), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dlq := &fakeDLQ{}
				rs := interleaved(2, 16, 10)
				ledger := newLedger(t, dlq, rs)
				ledger.rule = markedRule([]int64{9}, named, func(int64) *flow.PoisonError { return nil })
				cfg := eoConfig(32)
				cfg.Lanes = 1
				cfg.Batch.Linger = time.Second
				r := run(t, setup{cfg: cfg, sink: &fakeSink{rule: func(b *record.Batch) error { return ledger.Write(t.Context(), b) }},
					dlq: dlq, commit: doneOnlyWhenStored(t, func() *ledgerSink { return ledger })})
				r.admit(t, rs...)
				if err := r.finish(t); err != nil {
					t.Fatalf("Run = %v", err)
				}
				bad := func(x *record.Record) bool { return x.Partition == 0 && x.Offset == 9 }
				for _, x := range rs {
					if got, want := ledger.times(x), map[bool]int{true: 0, false: 1}[bad(x)]; got != want {
						t.Errorf("%s written %d times, want %d", atOf(x), got, want)
					}
					if bad(x) != dlq.has(x) {
						t.Errorf("%s in the DLQ: %v", atOf(x), dlq.has(x))
					}
					if n := r.commit.count(x); n != 1 {
						t.Errorf("%s done %d times, want once", atOf(x), n)
					}
				}
				for _, p := range []int32{0, 1} {
					if got := ledger.stored(part(p)); got != 16 {
						t.Errorf("stored position of t/%d = %d, want 16", p, got)
					}
				}
				if !named && len(ledger.writes) < 4 {
					t.Errorf("bisection made %d writes, want the halves written one by one: %v", len(ledger.writes), ledger.writes)
				}
			})
		})
	}
}

// A fenced partition's records are dropped: not written, not done, their
// budget released, the Fencer told; the other partitions of the batch are
// written at once.
func TestExactlyOnceFencedPartitionIsDroppedAndTheRestWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dlq := &fakeDLQ{}
		rs := interleaved(2, 20, 10)
		ledger := newLedger(t, dlq, rs)
		fenced := part(1)
		ledger.rule = func(b *record.Batch) error {
			if slices.ContainsFunc(b.Positions, func(p record.Position) bool { return p.Partition == fenced }) {
				return &flow.FencedError{Partitions: []record.Partition{fenced}, Err: errors.New("next_offset is not 0")}
			}
			return nil
		}
		cfg := eoConfig(8)
		cfg.Lanes = 1
		r := run(t, setup{cfg: cfg, sink: &fakeSink{rule: func(b *record.Batch) error { return ledger.Write(t.Context(), b) }},
			dlq: dlq, commit: doneOnlyWhenStored(t, func() *ledgerSink { return ledger })})
		start := time.Now()
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		if time.Since(start) > 2*time.Second {
			t.Errorf("took %v: a fence is not a failure to back off from", time.Since(start))
		}
		fencedSet := map[at]bool{}
		for _, a := range r.commit.fencedRecords() {
			fencedSet[a] = true
		}
		for _, x := range rs {
			switch x.Part() {
			case fenced:
				if ledger.times(x) != 0 || r.commit.count(x) != 0 {
					t.Errorf("%s of the fenced partition: written %d, done %d; want neither", atOf(x), ledger.times(x), r.commit.count(x))
				}
				if !fencedSet[atOf(x)] {
					t.Errorf("%s was not reported to the Fencer", atOf(x))
				}
			default:
				if ledger.times(x) != 1 || r.commit.count(x) != 1 {
					t.Errorf("%s: written %d, done %d; want once each", atOf(x), ledger.times(x), r.commit.count(x))
				}
			}
		}
		if got := r.gate.Stats().Records; got != 0 {
			t.Errorf("gate holds %d records: the fenced ones' budget was not released", got)
		}
	})
}

// One batch carries one assignment of a partition: records admitted under a
// new generation (after a fence or a rebalance) start a new batch.
func TestExactlyOnceNewGenerationStartsANewBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{}
		r := run(t, setup{cfg: eoConfig(100), sink: sink})
		var rs []*record.Record
		for gen, offs := range [][]int64{{0, 1, 2}, {1, 2, 3, 4}} {
			for _, off := range offs {
				x := sized(0, off, 10)
				x.Ticket.Generation = uint64(gen + 1)
				rs = append(rs, x)
			}
		}
		r.admit(t, rs...)
		if err := r.finish(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		var got [][]record.Position
		for _, b := range sink.batches() {
			gens := map[uint64]bool{}
			for _, x := range b.recs {
				gens[x.Ticket.Generation] = true
			}
			if len(gens) != 1 {
				t.Errorf("batch %v mixes generations %v", offsetsOf(b.recs), gens)
			}
			got = append(got, b.pos)
		}
		want := [][]record.Position{{{Partition: part(0), Next: 3, Generation: 1}}, {{Partition: part(0), Next: 5, Generation: 2}}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("positions written %v, want %v", got, want)
		}
	})
}

// A sink that fences a write carrying no positions is broken: the pipeline
// stops rather than loop.
func TestFencedWithoutExactlyOnceIsFatal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &fakeSink{rule: func(*record.Batch) error {
			return &flow.FencedError{Partitions: []record.Partition{part(0)}, Err: errors.New("fenced")}
		}}
		r := run(t, setup{sink: sink})
		r.admit(t, sized(0, 0, 10))
		if err := r.wait(t); flow.Classify(err) != flow.ClassFatal {
			t.Fatalf("Run = %v, want a fatal error", err)
		}
	})
}
