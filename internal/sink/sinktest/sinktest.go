// Package sinktest is the conformance suite every sink passes: Run drives a
// sink through the cases its users rely on (a batch write, a partial failure
// isolated to the bad records, a transient failure and the recovery from it,
// shutdown during a write in flight, order per partition across many batches),
// partly by direct Write calls and partly through a real flow.Pipeline with a
// fake dead-letterer and committer, so that bisection and retries run end to
// end.
//
// A sink's test provides a Harness: how to build a fresh sink, how to read
// back what it stored, and how to make a record bad, the sink fail, or a
// write hang, for that sink. A case the harness cannot set up (a file sink
// refuses no record) is skipped with the reason.
//
// Concurrency: Run calls the harness from the test's goroutine, except that
// the sink's Map and Write run on the pipeline's goroutines. Run waits in real
// time (sinks do real I/O) with generous bounds, and asserts outcomes, never
// speed.
package sinktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// Topic is the topic of every record the suite builds.
const Topic = "sinktest"

// Delivery says what a sink promises about a write that returned an error and
// was then retried.
type Delivery int

const (
	// Once: a write that returned an error left nothing behind, so after the
	// retry every record is stored exactly once (a transaction, a file
	// truncated back to its last whole line).
	Once Delivery = iota
	// AtLeastOnce: a write that returned an error may have been stored anyway
	// (an HTTP endpoint that processed a request whose answer never came), so
	// a record may be stored more than once; the first time each record
	// appears still follows partition order, and nothing else appears.
	AtLeastOnce
)

// Harness adapts one sink to the suite. New is required; each of Bad, Fail and
// Hold may be nil, which skips the cases that need it.
type Harness struct {
	// New returns a fresh, empty sink. The suite calls it once per case; the
	// harness releases what it built with t.Cleanup.
	New func(t *testing.T) *Instance
	// Delivery is what the sink promises after a failed or cancelled write.
	Delivery Delivery
	// RejectCode, when set, is the Code the *flow.PoisonError of a bad record
	// must carry (an HTTP status, a SQLSTATE).
	RejectCode string
	// Secrets are strings that must never appear in an error the sink
	// returns, nor in a dead-letter cause (a password, a token).
	Secrets []string
}

// Instance is one sink built by Harness.New, with the test's handles on it.
type Instance struct {
	// Sink and Mapper are the sink under test; usually the same value.
	Sink   flow.Sink
	Mapper flow.Mapper
	// Stored returns what the sink stored so far, in the order it stored it
	// (per partition at least). It fails the test when what is stored cannot
	// be read back, such as a torn line.
	Stored func(t *testing.T) []Stored
	// Bad changes r, a record the suite built, so that Map still accepts it
	// and Write refuses it for its content. It must keep r's partition,
	// offset and ID readable. Nil: the sink refuses no record.
	Bad func(r *record.Record)
	// Fail makes every write fail for the sink's own reasons (unavailable,
	// overloaded, the connection lost) until the returned restore is called.
	// restore may be called more than once, and from a goroutine other than
	// the test's (so it must not call t.Fatal). Nil: the failure cannot be
	// injected from a test.
	Fail func(t *testing.T) (restore func())
	// Hold makes the writes that start from now on stay in flight until
	// release is called: wait returns once one is held (or ctx ends); release
	// lets held and later writes go on, and may be called more than once. A
	// held write must still end when its ctx does. Nil: a write cannot be held
	// from outside.
	Hold func(t *testing.T) (wait func(ctx context.Context) error, release func())
}

// Stored is one record as the sink stored it.
type Stored struct {
	Partition int32
	Offset    int64
	ID        int64 // the "id" field of the record's JSON value
}

func (s Stored) String() string { return fmt.Sprintf("%d@%d(id %d)", s.Partition, s.Offset, s.ID) }

// Record returns the record the suite writes at partition p, offset off: a
// JSON value {"id", "amount", "note"} with id = ID(p, off) and a non-negative
// amount, key "k-<id>", one header.
func Record(p int32, off int64) *record.Record {
	id := ID(p, off)
	return &record.Record{
		Topic:     Topic,
		Partition: p,
		Offset:    off,
		Timestamp: time.UnixMilli(1_714_566_600_000 + off).UTC(),
		Key:       fmt.Appendf(nil, "k-%d", id),
		Value:     fmt.Appendf(nil, `{"id":%d,"amount":%d.%02d,"note":"sinktest record"}`, id, id%1000, id%100),
		Headers:   []record.Header{{Key: "sinktest", Value: []byte("1")}},
	}
}

// ID is the id of the record at partition p, offset off.
func ID(p int32, off int64) int64 { return int64(p)*1_000_000 + off }

// caseTimeout bounds every wait of a case: generous, as the suite measures
// outcomes, not speed.
const caseTimeout = 2 * time.Minute

// Run runs the conformance suite against the sink h builds.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("sinktest: Harness.New is required")
	}
	t.Run("BatchWrite", func(t *testing.T) { testBatchWrite(t, h) })
	t.Run("PartialFailure", func(t *testing.T) { testPartialFailure(t, h) })
	t.Run("TransientThenRecovery", func(t *testing.T) { testTransient(t, h) })
	t.Run("ShutdownDuringWrite", func(t *testing.T) { testShutdown(t, h) })
	t.Run("OrderAcrossBatches", func(t *testing.T) { testOrder(t, h) })
}

// testBatchWrite writes batches that interleave partitions straight to the
// sink: every row is stored once, in order per partition, as its own record.
func testBatchWrite(t *testing.T, h Harness) {
	in := h.New(t)
	ctx := t.Context()
	var want []*record.Record
	for round := range 2 {
		var recs []*record.Record
		for off := int64(round * 20); off < int64(round*20+20); off++ {
			for p := range int32(3) {
				recs = append(recs, Record(p, off))
			}
		}
		b := mapBatch(t, in.Mapper, recs)
		if err := in.Sink.Write(ctx, b); err != nil {
			t.Fatalf("Write of %d rows: %v", b.Len(), err)
		}
		want = append(want, recs...)
	}
	checkStored(t, h, in.Stored(t), want)
}

// testPartialFailure runs records, some bad, through a pipeline: exactly the
// bad ones are dead-lettered, as rejected by the sink, and every other one is
// stored once, in order. The batches are larger than the distance between bad
// records, so the lanes have to find them.
func testPartialFailure(t *testing.T, h Harness) {
	in := h.New(t)
	if in.Bad == nil {
		t.Skip("the sink refuses no record for its content (Instance.Bad is nil)")
	}
	const parts, perPart = 4, 60
	var recs, good []*record.Record
	bad := map[Stored]bool{}
	for off := range int64(perPart) {
		for p := range int32(parts) {
			r := Record(p, off)
			// Spread out, plus two bad records next to each other.
			if (int64(p)*perPart+off)%23 == 5 || (p == 1 && (off == 30 || off == 31)) {
				in.Bad(r)
				bad[Stored{p, off, ID(p, off)}] = true
			} else {
				good = append(good, r)
			}
			recs = append(recs, r)
		}
	}
	res := runPipeline(t, in, recs, flow.Config{Workers: 2, Lanes: 2,
		Batch: flow.BatchConfig{MaxRecords: 32, MaxBytes: 1 << 20, Linger: 5 * time.Millisecond}}, nil)
	if res.err != nil {
		t.Fatalf("pipeline: %v", res.err)
	}
	got := map[Stored]bool{}
	for _, d := range res.dlq.letters() {
		a := Stored{d.rec.Partition, d.rec.Offset, ID(d.rec.Partition, d.rec.Offset)}
		switch {
		case !bad[a]:
			t.Errorf("record %s was dead-lettered (%v), but it is not bad", a, d.cause)
		case got[a]:
			t.Errorf("record %s was dead-lettered twice", a)
		}
		got[a] = true
		if d.cause.Reason != flow.ReasonSinkRejected {
			t.Errorf("record %s dead-lettered with reason %q, want %q (%v)", a, d.cause.Reason, flow.ReasonSinkRejected, d.cause)
		}
		if h.RejectCode != "" && d.cause.Code != h.RejectCode {
			t.Errorf("record %s dead-lettered with code %q, want %q (%v)", a, d.cause.Code, h.RejectCode, d.cause)
		}
		checkSecrets(t, h, "dead-letter cause of "+a.String(), d.cause.Error())
	}
	for a := range bad {
		if !got[a] {
			t.Errorf("bad record %s was not dead-lettered", a)
		}
	}
	res.checkDoneOnce(t, recs)
	checkStored(t, h, in.Stored(t), good)
	if letters := res.dlq.letters(); len(letters) > 0 {
		t.Logf("%d records, %d bad: %d writes; a dead letter: %v", len(recs), len(bad), len(res.sink.writes()), letters[0].cause)
	}
	for _, w := range res.sink.failures() {
		if w.class == flow.ClassFatal {
			t.Errorf("a write failed with a fatal error: %v", w.err)
		}
	}
}

// testTransient fails the sink: a write fails as transient; a pipeline
// started during the failure retries, dead-letters nothing, and once the sink
// recovers stores every record.
func testTransient(t *testing.T, h Harness) {
	in := h.New(t)
	if in.Fail == nil {
		t.Skip("a failure of the sink cannot be injected (Instance.Fail is nil)")
	}
	restore := in.Fail(t)
	defer restore()

	// A probe of a partition of its own, so that what it may leave behind
	// (AtLeastOnce) is told apart.
	const probePart = 9
	probe := []*record.Record{Record(probePart, 0), Record(probePart, 1)}
	err := in.Sink.Write(t.Context(), mapBatch(t, in.Mapper, probe))
	if err == nil {
		t.Fatal("Write succeeded while the sink was failing")
	}
	if c := flow.Classify(err); c != flow.ClassTransient {
		t.Fatalf("Write while failing = %v (class %v), want a transient error", err, c)
	}
	checkSecrets(t, h, "Write error", err.Error())
	if h.Delivery == Once {
		if got := in.Stored(t); len(got) > 0 {
			t.Fatalf("a failed write left %d record(s) behind: %v", len(got), got)
		}
	}

	var recs []*record.Record
	for off := range int64(40) {
		for p := range int32(3) {
			recs = append(recs, Record(p, off))
		}
	}
	res := runPipeline(t, in, recs, flow.Config{Workers: 2, Lanes: 2,
		Batch: flow.BatchConfig{MaxRecords: 16, MaxBytes: 1 << 20, Linger: 5 * time.Millisecond}},
		func(ctx context.Context, s *recordingSink) {
			// Let the lanes fail and retry a few times, then recover.
			deadline := time.Now().Add(caseTimeout)
			for len(s.failures()) < 3 && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			restore()
		})
	if res.err != nil {
		t.Fatalf("pipeline: %v", res.err)
	}
	fails := res.sink.failures()
	if len(fails) < 3 {
		t.Errorf("the pipeline's writes failed %d time(s) before the recovery, want at least 3", len(fails))
	} else {
		t.Logf("%d writes failed before the recovery; the first: %v; the last: %v", len(fails), fails[0].err, fails[len(fails)-1].err)
	}
	for _, w := range fails {
		if w.class != flow.ClassTransient {
			t.Errorf("a write during the failure = %v (class %v), want transient", w.err, w.class)
		}
		checkSecrets(t, h, "Write error", w.err.Error())
	}
	if n := len(res.dlq.letters()); n > 0 {
		t.Errorf("%d record(s) dead-lettered for the sink's own failure, want none", n)
	}
	res.checkDoneOnce(t, recs)
	stored := slices.DeleteFunc(in.Stored(t), func(s Stored) bool { return s.Partition == probePart })
	checkStored(t, h, stored, recs)
}

// testShutdown holds a write in flight and cancels its ctx: Write returns
// promptly with a transient error, and a retry of the same batch stores it
// whole. Then the same through a pipeline: cancelling Run while a write is
// held returns promptly, dead-letters nothing, reports done only records that
// are stored, and a new pipeline writes the others, as after a restart.
func testShutdown(t *testing.T, h Harness) {
	in := h.New(t)
	if in.Hold == nil {
		t.Skip("a write cannot be held in flight from outside (Instance.Hold is nil)")
	}
	const promptly = 30 * time.Second // generous: only a write that ignores its ctx takes this long

	// Directly.
	recs := []*record.Record{Record(0, 0), Record(1, 0), Record(0, 1), Record(1, 1)}
	b := mapBatch(t, in.Mapper, recs)
	wait, release := in.Hold(t)
	ctx, cancel := context.WithCancel(t.Context())
	result := make(chan error, 1)
	go func() { result <- in.Sink.Write(ctx, b) }()
	waitHeld(t, wait)
	cancel()
	select {
	case err := <-result:
		if err == nil {
			t.Fatal("a held Write whose ctx was cancelled returned nil")
		}
		if c := flow.Classify(err); c != flow.ClassTransient {
			t.Errorf("a cancelled Write = %v (class %v), want a transient error", err, c)
		}
		checkSecrets(t, h, "Write error", err.Error())
	case <-time.After(promptly):
		release()
		t.Fatalf("a held Write did not return within %v of its ctx being cancelled", promptly)
	}
	release()
	if err := in.Sink.Write(t.Context(), b); err != nil {
		t.Fatalf("the retry of the cancelled batch: %v", err)
	}
	checkStored(t, h, in.Stored(t), recs)

	// Through a pipeline, in a fresh sink.
	in = h.New(t)
	recs = nil
	for off := range int64(20) {
		for p := range int32(2) {
			recs = append(recs, Record(p, off))
		}
	}
	wait, release = in.Hold(t)
	defer release()
	p, dlq, done := newPipeline(in.Sink, in.Mapper, len(recs), flow.Config{Workers: 2, Lanes: 2,
		Batch: flow.BatchConfig{MaxRecords: 8, MaxBytes: 1 << 20, Linger: 5 * time.Millisecond}})
	runCtx, stop := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(runCtx) }()
	admit(t, p, recs)
	waitHeld(t, wait)
	stop()
	select {
	case err := <-ran:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run cancelled during a held write = %v, want context.Canceled", err)
		}
	case <-time.After(promptly):
		release()
		<-ran
		t.Fatalf("Run did not return within %v of its ctx being cancelled during a held write", promptly)
	}
	release()
	if n := len(dlq.letters()); n > 0 {
		t.Errorf("%d record(s) dead-lettered by a shutdown, want none", n)
	}
	// What was reported done must be stored; what was not is redelivered.
	stored := storedSet(in.Stored(t))
	var again []*record.Record
	for _, r := range recs {
		n := done.count(r)
		switch {
		case n == 0:
			again = append(again, Record(r.Partition, r.Offset))
		case stored[Stored{r.Partition, r.Offset, ID(r.Partition, r.Offset)}] == 0:
			t.Errorf("record %d@%d was reported done but is not stored", r.Partition, r.Offset)
		}
	}
	if len(again) == 0 {
		t.Fatal("every record was reported done although a write was held when Run was cancelled")
	}
	// The records not done are delivered again, as after a restart.
	res := runPipeline(t, in, again, flow.Config{Workers: 2, Lanes: 2,
		Batch: flow.BatchConfig{MaxRecords: 8, MaxBytes: 1 << 20, Linger: 5 * time.Millisecond}}, nil)
	if res.err != nil {
		t.Fatalf("the pipeline after the restart: %v", res.err)
	}
	res.checkDoneOnce(t, again)
	// Every record is stored, each in order; a record whose held write was
	// cancelled appears once (Once) or possibly twice (AtLeastOnce).
	checkStored(t, h, in.Stored(t), recs)
}

// testOrder writes many small batches through lanes in parallel: every
// partition's records are stored in their order.
func testOrder(t *testing.T, h Harness) {
	in := h.New(t)
	const parts, perPart = 6, 150
	var recs []*record.Record
	for off := range int64(perPart) {
		for p := range int32(parts) {
			recs = append(recs, Record(p, off))
		}
	}
	res := runPipeline(t, in, recs, flow.Config{Workers: 4, Lanes: 3,
		Batch: flow.BatchConfig{MaxRecords: 7, MaxBytes: 1 << 20, Linger: time.Millisecond}}, nil)
	if res.err != nil {
		t.Fatalf("pipeline: %v", res.err)
	}
	if n := len(res.dlq.letters()); n > 0 {
		t.Errorf("%d record(s) dead-lettered, want none", n)
	}
	res.checkDoneOnce(t, recs)
	checkStored(t, h, in.Stored(t), recs)
}

// mapBatch maps recs through m, as the pipeline's workers do.
func mapBatch(t *testing.T, m flow.Mapper, recs []*record.Record) *record.Batch {
	t.Helper()
	b := &record.Batch{}
	for _, r := range recs {
		row, err := m.Map(t.Context(), r)
		if err != nil {
			t.Fatalf("Map(%d@%d): %v", r.Partition, r.Offset, err)
		}
		b.Rows = append(b.Rows, row)
		b.Records = append(b.Records, r)
		b.Bytes += r.Size()
	}
	return b
}

func waitHeld(t *testing.T, wait func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), caseTimeout)
	defer cancel()
	if err := wait(ctx); err != nil {
		t.Fatalf("no write was held: %v", err)
	}
}

// checkStored compares what the sink stored with want, per partition and in
// order. Under AtLeastOnce a record may repeat, and only its first appearance
// counts for order.
func checkStored(t *testing.T, h Harness, stored []Stored, want []*record.Record) {
	t.Helper()
	wantBy := map[int32][]Stored{}
	known := map[Stored]bool{}
	for _, r := range want {
		s := Stored{r.Partition, r.Offset, ID(r.Partition, r.Offset)}
		wantBy[r.Partition] = append(wantBy[r.Partition], s)
		known[s] = true
	}
	gotBy := map[int32][]Stored{}
	seen := map[Stored]int{}
	extra := 0
	for _, s := range stored {
		if !known[s] {
			if extra++; extra <= 5 {
				t.Errorf("the sink stored %s, which is not a record it was meant to store (or with the wrong id)", s)
			}
			continue
		}
		seen[s]++
		if seen[s] > 1 {
			if h.Delivery == Once {
				t.Errorf("the sink stored %s %d times", s, seen[s])
			}
			continue
		}
		gotBy[s.Partition] = append(gotBy[s.Partition], s)
	}
	for p, w := range wantBy {
		g := gotBy[p]
		if slices.Equal(g, w) {
			continue
		}
		missing := 0
		for _, s := range w {
			if seen[s] == 0 {
				missing++
			}
		}
		t.Errorf("partition %d: %d of %d records stored (%d missing); stored order %s, want %s",
			p, len(g), len(w), missing, brief(g), brief(w))
	}
}

func storedSet(stored []Stored) map[Stored]int {
	m := map[Stored]int{}
	for _, s := range stored {
		m[s]++
	}
	return m
}

// brief lists the offsets of ss, shortened.
func brief(ss []Stored) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range ss {
		if i == 12 {
			fmt.Fprintf(&b, " ... (%d in all)", len(ss))
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, s.Offset)
	}
	b.WriteByte(']')
	return b.String()
}

func checkSecrets(t *testing.T, h Harness, what, msg string) {
	t.Helper()
	for _, s := range h.Secrets {
		if s != "" && strings.Contains(msg, s) {
			t.Errorf("%s shows a secret: %q", what, msg)
		}
	}
}

// pipelineResult is what a pipeline run left behind.
type pipelineResult struct {
	err  error
	sink *recordingSink
	dlq  *fakeDLQ
	done *fakeCommitter
}

// checkDoneOnce checks every record of recs was reported done exactly once.
func (r *pipelineResult) checkDoneOnce(t *testing.T, recs []*record.Record) {
	t.Helper()
	bad := 0
	for _, rec := range recs {
		if n := r.done.count(rec); n != 1 {
			if bad++; bad <= 5 {
				t.Errorf("record %d@%d reported done %d times, want once", rec.Partition, rec.Offset, n)
			}
		}
	}
	if total := r.done.total(); total != len(recs) {
		t.Errorf("%d done reports for %d records", total, len(recs))
	}
}

// runPipeline writes recs through a pipeline over the instance's sink until
// they are all done. during, when set, runs alongside the pipeline.
func runPipeline(t *testing.T, in *Instance, recs []*record.Record, cfg flow.Config,
	during func(ctx context.Context, s *recordingSink)) *pipelineResult {
	t.Helper()
	rs := &recordingSink{inner: in.Sink}
	cfg.Retry = flow.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	p, dlq, done := newPipeline(rs, in.Mapper, len(recs), cfg)
	ctx, cancel := context.WithTimeout(t.Context(), caseTimeout)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx) }()
	var wg sync.WaitGroup
	if during != nil {
		wg.Go(func() { during(ctx, rs) })
	}
	admit(t, p, recs)
	p.CloseInput()
	err := <-ran
	wg.Wait()
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("the pipeline did not finish within %v (%d writes, %d failed): %w", caseTimeout, len(rs.writes()), len(rs.failures()), err)
	}
	return &pipelineResult{err: err, sink: rs, dlq: dlq, done: done}
}

func newPipeline(s flow.Sink, m flow.Mapper, n int, cfg flow.Config) (*flow.Pipeline, *fakeDLQ, *fakeCommitter) {
	mt := metrics.New(prometheus.NewRegistry())
	gate := flow.NewGate(flow.GateConfig{MaxRecords: n + 1, MaxBytes: 1 << 30, ResumeAt: 0.5}, nil, mt)
	if cfg.Retry.Initial == 0 {
		cfg.Retry = flow.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	dlq, done := &fakeDLQ{}, &fakeCommitter{times: map[Stored]int{}}
	return flow.New(cfg, gate, m, s, dlq, done, mt), dlq, done
}

// admit admits recs in order; the gate is sized to hold them all.
func admit(t *testing.T, p *flow.Pipeline, recs []*record.Record) {
	t.Helper()
	for _, r := range recs {
		if !p.Room(r) {
			t.Fatalf("the gate has no room for record %d@%d", r.Partition, r.Offset)
		}
		p.Admit(r)
	}
}

// recordingSink passes writes through and remembers their outcomes.
type recordingSink struct {
	inner flow.Sink
	mu    sync.Mutex
	log   []write
}

type write struct {
	rows  int
	err   error
	class flow.Class
}

func (s *recordingSink) Write(ctx context.Context, b *record.Batch) error {
	err := s.inner.Write(ctx, b)
	w := write{rows: b.Len(), err: err}
	if err != nil {
		w.class = flow.Classify(err)
	}
	s.mu.Lock()
	s.log = append(s.log, w)
	s.mu.Unlock()
	return err
}

func (s *recordingSink) writes() []write {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// failures returns the writes that failed other than by rejecting rows.
func (s *recordingSink) failures() []write {
	return slices.DeleteFunc(s.writes(), func(w write) bool { return w.err == nil || w.class == flow.ClassRejected })
}

type deadLetter struct {
	rec   *record.Record
	cause *flow.PoisonError
}

// fakeDLQ stores every dead letter it is given.
type fakeDLQ struct {
	mu     sync.Mutex
	stored []deadLetter
}

func (d *fakeDLQ) DeadLetter(_ context.Context, r *record.Record, cause *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stored = append(d.stored, deadLetter{r, cause})
	return nil
}

func (d *fakeDLQ) letters() []deadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.stored)
}

// fakeCommitter counts the done reports of each record.
type fakeCommitter struct {
	mu    sync.Mutex
	times map[Stored]int
	n     int
}

func (c *fakeCommitter) Done(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		c.times[Stored{r.Partition, r.Offset, ID(r.Partition, r.Offset)}]++
		c.n++
	}
}

func (c *fakeCommitter) count(r *record.Record) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.times[Stored{r.Partition, r.Offset, ID(r.Partition, r.Offset)}]
}

func (c *fakeCommitter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
