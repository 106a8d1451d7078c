package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// ledger is an exactly-once sink and offset store in memory, as the
// PostgreSQL sink is one: a table of rows, the stored next offset of every
// partition, and claims with a compare-and-set on what the claim last read or
// wrote. moveOn plays another writer of a partition.
type ledger struct {
	mu         sync.Mutex
	next       map[record.Partition]int64
	rows       map[record.Partition][]int64
	other      map[record.Partition][]int64 // offsets another writer wrote (moveOn)
	claims     map[record.Partition]*ledgerClaim
	failClaims int // the next failClaims Claims fail
	claimCalls int
	fences     int
	// beforeWrite, when set, runs (with mu held) before each write is
	// checked: a test moves the table on there.
	beforeWrite func(l *ledger, b *record.Batch)
}

type ledgerClaim struct {
	gen      uint64
	expected int64 // -1: no row
	fenced   bool
}

func newLedger() *ledger {
	return &ledger{next: map[record.Partition]int64{}, rows: map[record.Partition][]int64{},
		other: map[record.Partition][]int64{}, claims: map[record.Partition]*ledgerClaim{}}
}

func (l *ledger) Claim(_ context.Context, _ int32, ps map[record.Partition]uint64) (map[record.Partition]int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.claimCalls++
	if l.failClaims > 0 {
		l.failClaims--
		return nil, errors.New("database unavailable")
	}
	out := map[record.Partition]int64{}
	for p, gen := range ps {
		next, ok := l.next[p]
		if !ok {
			next = -1
		} else {
			out[p] = next
		}
		l.claims[p] = &ledgerClaim{gen: gen, expected: next}
	}
	return out, nil
}

func (l *ledger) Release(ps map[record.Partition]uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, gen := range ps {
		if c := l.claims[p]; c != nil && c.gen == gen {
			delete(l.claims, p)
		}
	}
}

func (l *ledger) Map(_ context.Context, r *record.Record) (record.Row, error) {
	if string(r.Value) == "poison" {
		return nil, flow.Decode(fmt.Errorf("not JSON"))
	}
	return record.Row{r.Offset}, nil
}

func (l *ledger) Write(_ context.Context, b *record.Batch) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.beforeWrite != nil {
		l.beforeWrite(l, b)
	}
	var fenced []record.Partition
	for _, ps := range b.Positions {
		c := l.claims[ps.Partition]
		stored, has := l.next[ps.Partition]
		if !has {
			stored = -1
		}
		if c == nil || c.gen != ps.Generation || c.fenced || c.expected != stored {
			if c != nil && c.gen == ps.Generation {
				c.fenced = true
			}
			fenced = append(fenced, ps.Partition)
		}
	}
	if len(fenced) > 0 {
		l.fences++
		return &flow.FencedError{Partitions: fenced, Err: errors.New("compare-and-set matched no row")}
	}
	for _, r := range b.Records {
		l.rows[r.Part()] = append(l.rows[r.Part()], r.Offset)
	}
	for _, ps := range b.Positions {
		l.next[ps.Partition] = ps.Next
		l.claims[ps.Partition].expected = ps.Next
	}
	return nil
}

// moveOn plays another writer that wrote p's records up to (not including)
// to, from where the table stands. l.mu held.
func (l *ledger) moveOn(p record.Partition, to int64) {
	for off := l.next[p]; off < to; off++ {
		l.other[p] = append(l.other[p], off)
	}
	l.next[p] = to
}

func (l *ledger) stored(p record.Partition) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.next[p]; ok {
		return n
	}
	return -1
}

func newEOMember(t *testing.T, brokers []string, group string, l *ledger, dl *dlqSet) *member {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	mb := &member{m: m}
	mb.gate = flow.NewGate(flow.GateConfig{MaxRecords: 2000, MaxBytes: 64 << 20, ResumeAt: 0.5}, gatePauser{&mb.c}, m)
	mb.pipe = flow.New(flow.Config{Workers: 3, RecordTimeout: 5 * time.Second, Lanes: 3, ExactlyOnce: true,
		Batch: flow.BatchConfig{MaxRecords: 50, MaxBytes: 1 << 20, Linger: 20 * time.Millisecond},
		Retry: flow.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}},
		mb.gate, l, l, dl, fencingCommitter{&mb.c}, m)
	k := config.Default().Kafka
	k.Brokers, k.Group, k.Topics = brokers, group, []string{"orders"}
	k.FetchMaxWait = 100 * time.Millisecond
	k.MaxPollRecords = 100
	k.SessionTimeout, k.RebalanceTimeout = 6*time.Second, 10*time.Second
	c, err := New(Options{Kafka: k, CommitInterval: 100 * time.Millisecond, ShutdownTimeout: 10 * time.Second, Metrics: m,
		Offsets: l, Logger: zaptest.NewLogger(t)}, mb.pipe, mb.gate)
	if err != nil {
		t.Fatal(err)
	}
	mb.c = c
	return mb
}

type fencingCommitter struct{ c **Consumer }

func (f fencingCommitter) Done(rs ...*record.Record)  { (*f.c).Done(rs...) }
func (f fencingCommitter) Fence(rs ...*record.Record) { (*f.c).Fence(rs...) }

// checkExactlyOnce asserts that every produced record from start[p] on is
// either written once (by us or by another writer, never both) or
// dead-lettered; the DLQ is at-least-once, so a poison record may be there
// twice, and also among the records another writer moved over. And the stored
// positions are at the end of every partition.
func checkExactlyOnce(t *testing.T, produced map[record.Partition][]int64, start map[record.Partition]int64, l *ledger, dl *dlqSet) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for p, offs := range produced {
		if !slices.IsSorted(l.rows[p]) {
			t.Errorf("%s: rows written out of offset order", p)
		}
		written := map[int64]int{}
		for _, off := range slices.Concat(l.rows[p], l.other[p]) {
			written[off]++
		}
		dead := map[int64]int{}
		for _, off := range dl.recs[p] {
			dead[off]++
		}
		for _, off := range l.rows[p] {
			if dead[off] > 0 {
				t.Errorf("%s@%d written and dead-lettered", p, off)
			}
		}
		var missing, twice, dlqTwice int
		for _, off := range offs {
			if off < start[p] {
				if written[off] > 0 {
					t.Errorf("%s@%d is before the start %d, and written", p, off, start[p])
				}
				continue
			}
			switch {
			case written[off] == 0 && dead[off] == 0:
				missing++
			case written[off] > 1:
				twice++
			}
			if dead[off] > 1 {
				dlqTwice++
			}
		}
		if missing > 0 || twice > 0 {
			t.Errorf("%s: %d records missing, %d written twice (ours %d, another writer's %d, DLQ %d)",
				p, missing, twice, len(l.rows[p]), len(l.other[p]), len(dl.recs[p]))
		}
		if dlqTwice > 0 {
			t.Logf("%s: %d records dead-lettered twice (the DLQ is at-least-once)", p, dlqTwice)
		}
		if n := l.next[p]; n != offs[len(offs)-1]+1 {
			t.Errorf("%s: stored position %d, want %d", p, n, offs[len(offs)-1]+1)
		}
	}
}

func waitStoredAtEnd(t *testing.T, l *ledger, produced map[record.Partition][]int64) {
	t.Helper()
	waitFor(t, "every stored position at the end", func() bool {
		for p, offs := range produced {
			if l.stored(p) != offs[len(offs)-1]+1 {
				return false
			}
		}
		return true
	})
}

func TestExactlyOnceStartsAtTheStoredPositions(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 1200, 41)
	p := func(n int32) record.Partition { return record.Partition{Topic: "orders", Partition: n} }
	l := newLedger()
	l.next[p(0)] = 40  // stored: the table wins over the group's commit
	l.next[p(1)] = 200 // everything stored already
	commitAt(t, brokers, "eo1", 150, 0)
	commitAt(t, brokers, "eo1", 30, 2) // no row: the group's commit
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	mb := newEOMember(t, brokers, "eo1", l, dl)
	stop := mb.run(t)
	waitStoredAtEnd(t, l, produced)
	stop()
	start := map[record.Partition]int64{p(0): 40, p(1): 200, p(2): 30}
	checkExactlyOnce(t, produced, start, l, dl)
	got := committed(t, brokers, "eo1")
	for p, offs := range produced {
		if want := offs[len(offs)-1] + 1; got[p.Partition] != want {
			t.Errorf("%s: Kafka commit %d, want %d: commits go on for lag and KEDA", p, got[p.Partition], want)
		}
	}
}

// Another writer moves a partition on while this member writes it (a zombie
// that woke up, or the rightful owner while this member is the zombie): the
// member's write is fenced, and it continues from the stored position
// without writing a record twice or skipping one.
func TestExactlyOnceFencedPartitionIsSoughtToTheStoredPosition(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 6000, 53)
	target := record.Partition{Topic: "orders", Partition: 3}
	l := newLedger()
	var moved bool
	l.beforeWrite = func(l *ledger, b *record.Batch) {
		if moved || !slices.ContainsFunc(b.Positions, func(ps record.Position) bool { return ps.Partition == target }) || l.next[target] < 300 {
			return
		}
		moved = true
		l.moveOn(target, l.next[target]+250) // committed by the other writer just before this write
	}
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	mb := newEOMember(t, brokers, "eo2", l, dl)
	stop := mb.run(t)
	waitStoredAtEnd(t, l, produced)
	stop()
	checkExactlyOnce(t, produced, nil, l, dl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !moved || l.fences == 0 || len(l.other[target]) != 250 {
		t.Fatalf("the other writer moved the partition: %v, fences %d, its records %d; the test proves nothing", moved, l.fences, len(l.other[target]))
	}
	if l.claimCalls < 2 {
		t.Errorf("Claim called %d times: the fenced partition was not claimed again", l.claimCalls)
	}
}

// While the stored positions cannot be read, assigned partitions stay
// paused; their records are admitted once a retry reads them.
func TestExactlyOnceWaitsForTheStoredPositions(t *testing.T) {
	brokers := cluster(t)
	produced := produce(t, brokers, 1200, 0)
	l := newLedger()
	l.failClaims = 3
	l.next[record.Partition{Topic: "orders", Partition: 4}] = 100
	dl := &dlqSet{recs: map[record.Partition][]int64{}}
	mb := newEOMember(t, brokers, "eo3", l, dl)
	stop := mb.run(t)
	waitFor(t, "a paused partition", func() bool {
		for _, s := range mb.c.Stats() {
			if s.PausedBy == "seek" {
				return true
			}
		}
		return false
	})
	waitStoredAtEnd(t, l, produced)
	stop()
	checkExactlyOnce(t, produced, map[record.Partition]int64{{Topic: "orders", Partition: 4}: 100}, l, dl)
}
