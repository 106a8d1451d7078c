package flow_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// This file holds the fakes the flow tests share: a sink the test can answer
// by hand or by rule, a committer and a dead-letterer that record what they
// were told, a pauser that records pause and resume calls, and a harness that
// runs a Pipeline with them. Everything here is safe for concurrent use.

// at identifies a record in the fakes' bookkeeping.
type at struct {
	part record.Partition
	off  int64
}

func (a at) String() string { return fmt.Sprintf("%s@%d", a.part, a.off) }

func atOf(r *record.Record) at { return at{r.Part(), r.Offset} }

// sized returns a record of topic "t" whose Size (what the gate counts) is
// exactly size bytes.
func sized(p int32, off int64, size int) *record.Record {
	return &record.Record{Topic: "t", Partition: p, Offset: off, Value: make([]byte, size-1)}
}

func part(p int32) record.Partition { return record.Partition{Topic: "t", Partition: p} }

// identity maps a record to a row naming it: topic, partition, offset.
type identity struct{}

func (identity) Map(_ context.Context, r *record.Record) (record.Row, error) {
	return record.Row{r.Topic, r.Partition, r.Offset}, nil
}

// mapperFunc adapts a function to flow.Mapper.
type mapperFunc func(ctx context.Context, r *record.Record) (record.Row, error)

func (f mapperFunc) Map(ctx context.Context, r *record.Record) (record.Row, error) { return f(ctx, r) }

// written is one batch the sink accepted.
type written struct {
	rows []record.Row
	recs []*record.Record
	pos  []record.Position // exactly-once
	at   time.Time
}

// sinkCall is one Write the test answers by hand.
type sinkCall struct {
	batch  *record.Batch
	at     time.Time
	result chan error
}

func (c *sinkCall) answer(err error) { c.result <- err }

// offsets lists the offsets of the call's batch.
func (c *sinkCall) offsets() []int64 { return offsetsOf(c.batch.Records) }

// fakeSink is the Sink under the pipeline. With calls set, each Write is handed
// to the test on calls and waits for the test's answer (or ctx). Otherwise rule,
// when set, decides the outcome of each write; a nil outcome accepts the batch.
type fakeSink struct {
	calls chan *sinkCall
	rule  func(b *record.Batch) error

	mu       sync.Mutex
	attempts []time.Time
	accepted []written
}

func (s *fakeSink) Write(ctx context.Context, b *record.Batch) error {
	if len(b.Rows) != len(b.Records) {
		panic(fmt.Sprintf("batch with %d rows and %d records", len(b.Rows), len(b.Records)))
	}
	s.mu.Lock()
	s.attempts = append(s.attempts, time.Now())
	s.mu.Unlock()
	var err error
	switch {
	case s.calls != nil:
		c := &sinkCall{batch: b, at: time.Now(), result: make(chan error, 1)}
		select {
		case s.calls <- c:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err = <-c.result:
		case <-ctx.Done():
			return ctx.Err()
		}
	case s.rule != nil:
		err = s.rule(b)
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.accepted = append(s.accepted, written{rows: slices.Clone(b.Rows), recs: slices.Clone(b.Records), pos: slices.Clone(b.Positions), at: time.Now()})
	s.mu.Unlock()
	return nil
}

// batches returns the batches the sink accepted, in the order it accepted them.
func (s *fakeSink) batches() []written {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.accepted)
}

// tries returns the times Write was called, accepted or not.
func (s *fakeSink) tries() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.attempts)
}

// rows returns, per partition, the offsets of the rows the sink accepted, in
// the order it accepted them. It reads the offsets from the rows, which the
// identity mapper fills, and checks each row belongs to its record.
func (s *fakeSink) rows(t *testing.T) map[record.Partition][]int64 {
	t.Helper()
	out := map[record.Partition][]int64{}
	for _, b := range s.batches() {
		for i, row := range b.rows {
			r := b.recs[i]
			if len(row) != 3 || row[0] != r.Topic || row[1] != r.Partition || row[2] != r.Offset {
				t.Errorf("row %v was written as the row of %s", row, atOf(r))
			}
			out[r.Part()] = append(out[r.Part()], r.Offset)
		}
	}
	return out
}

// fakeCommitter records the records it was told are done, and those it was
// told were fenced (it is a flow.Fencer). before, when set, is called with
// each record as Done sees it, so a test can check what else is true at that
// moment.
type fakeCommitter struct {
	before func(r *record.Record)

	mu     sync.Mutex
	times  map[at]int
	order  []at
	fenced []at
}

func (c *fakeCommitter) Fence(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		c.fenced = append(c.fenced, atOf(r))
	}
}

// fencedRecords returns the records the committer was told were fenced.
func (c *fakeCommitter) fencedRecords() []at {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.fenced)
}

func (c *fakeCommitter) Done(rs ...*record.Record) {
	for _, r := range rs {
		if c.before != nil {
			c.before(r)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.times == nil {
		c.times = map[at]int{}
	}
	for _, r := range rs {
		c.times[atOf(r)]++
		c.order = append(c.order, atOf(r))
	}
}

// count returns how many times r was reported done.
func (c *fakeCommitter) count(r *record.Record) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.times[atOf(r)]
}

// total returns how many Done reports the committer received.
func (c *fakeCommitter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.order)
}

// deadLetter is one record the fake DLQ stored.
type deadLetter struct {
	at    at
	cause *flow.PoisonError
	when  time.Time
}

// fakeDLQ is the dead-letter queue. It fails the first failFirst calls with a
// transient-looking error, then stores every record it is given.
type fakeDLQ struct {
	failFirst int

	mu         sync.Mutex
	calls      int
	asyncCalls int
	stored     []deadLetter
}

// asyncDLQ is fakeDLQ storing asynchronously (flow.AsyncDeadLetterer): the
// store runs, and done is called, on a goroutine of its own.
type asyncDLQ struct{ *fakeDLQ }

func (d asyncDLQ) DeadLetterAsync(ctx context.Context, r *record.Record, cause *flow.PoisonError, done func(error)) {
	d.mu.Lock()
	d.asyncCalls++
	d.mu.Unlock()
	go func() { done(d.DeadLetter(ctx, r, cause)) }()
}

// asyncAttempts returns how many times DeadLetterAsync was called.
func (d *fakeDLQ) asyncAttempts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asyncCalls
}

func (d *fakeDLQ) DeadLetter(ctx context.Context, r *record.Record, cause *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	if d.calls <= d.failFirst {
		return fmt.Errorf("dlq topic not available (call %d)", d.calls)
	}
	d.stored = append(d.stored, deadLetter{at: atOf(r), cause: cause, when: time.Now()})
	return nil
}

// letters returns what the DLQ stored, in order.
func (d *fakeDLQ) letters() []deadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.stored)
}

// has reports whether r was stored.
func (d *fakeDLQ) has(r *record.Record) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.ContainsFunc(d.stored, func(l deadLetter) bool { return l.at == atOf(r) })
}

// attempts returns how many times DeadLetter was called.
func (d *fakeDLQ) attempts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// pauserCall is one call the gate made on the fake pauser.
type pauserCall struct {
	pause bool
	parts []record.Partition
}

// fakePauser records pause and resume calls and which partitions are paused.
type fakePauser struct {
	mu     sync.Mutex
	calls  []pauserCall
	paused map[record.Partition]bool
}

func (f *fakePauser) PauseForGate(ps []record.Partition) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, pauserCall{pause: true, parts: slices.Clone(ps)})
	if f.paused == nil {
		f.paused = map[record.Partition]bool{}
	}
	for _, p := range ps {
		f.paused[p] = true
	}
}

func (f *fakePauser) ResumeForGate(ps []record.Partition) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, pauserCall{pause: false, parts: slices.Clone(ps)})
	for _, p := range ps {
		delete(f.paused, p)
	}
}

func (f *fakePauser) history() []pauserCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakePauser) pausedNow() []record.Partition {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ps []record.Partition
	for p := range f.paused {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, comparePart)
	return ps
}

func comparePart(a, b record.Partition) int {
	if a.Topic != b.Topic {
		if a.Topic < b.Topic {
			return -1
		}
		return 1
	}
	return int(a.Partition - b.Partition)
}

func offsetsOf(rs []*record.Record) []int64 {
	out := make([]int64, len(rs))
	for i, r := range rs {
		out[i] = r.Offset
	}
	return out
}

// rig is a running Pipeline with fakes around it. Build it with run inside a
// synctest bubble; the test owns the admitting goroutine (its own).
type rig struct {
	p      *flow.Pipeline
	gate   *flow.Gate
	sink   *fakeSink
	dlq    *fakeDLQ
	commit *fakeCommitter
	m      *metrics.Metrics
	cancel context.CancelFunc
	result chan error
}

// setup collects what run needs; zero fields get working defaults.
type setup struct {
	cfg    flow.Config
	gate   flow.GateConfig
	mapper flow.Mapper
	sink   *fakeSink
	dlq    *fakeDLQ
	commit *fakeCommitter
	// asyncDLQ passes the DLQ as an asyncDLQ.
	asyncDLQ bool
}

// run starts a pipeline's Run on its own goroutine. The test must end it,
// by closing input (then wait) or by stop.
func run(t *testing.T, s setup) *rig {
	t.Helper()
	if s.gate.MaxRecords == 0 {
		s.gate = flow.GateConfig{MaxRecords: 10_000, MaxBytes: 64 << 20, ResumeAt: 0.5}
	}
	if s.mapper == nil {
		s.mapper = identity{}
	}
	if s.sink == nil {
		s.sink = &fakeSink{}
	}
	if s.dlq == nil {
		s.dlq = &fakeDLQ{}
	}
	if s.commit == nil {
		s.commit = &fakeCommitter{}
	}
	if s.cfg.Batch.MaxRecords == 0 {
		s.cfg.Batch = flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: 200 * time.Millisecond}
	}
	m := metrics.New(prometheus.NewRegistry())
	g := flow.NewGate(s.gate, nil, m)
	var dl flow.DeadLetterer = s.dlq
	if s.asyncDLQ {
		dl = asyncDLQ{s.dlq}
	}
	p := flow.New(s.cfg, g, s.mapper, s.sink, dl, s.commit, m)
	ctx, cancel := context.WithCancel(t.Context())
	r := &rig{p: p, gate: g, sink: s.sink, dlq: s.dlq, commit: s.commit, m: m, cancel: cancel, result: make(chan error, 1)}
	go func() { r.result <- p.Run(ctx) }()
	t.Cleanup(cancel)
	return r
}

// admit admits rs in order, waiting for room the way the consumer does: when
// the gate has no room, it waits for usage to fall and asks again.
func (r *rig) admit(t *testing.T, rs ...*record.Record) {
	t.Helper()
	for _, x := range rs {
		for {
			changed := r.gate.Changed()
			if r.p.Room(x) {
				break
			}
			select {
			case <-changed:
			case <-time.After(time.Hour):
				t.Fatalf("no room for %s after an hour of fake time", atOf(x))
			}
		}
		r.p.Admit(x)
	}
}

// finish closes input and returns what Run returned.
func (r *rig) finish(t *testing.T) error {
	t.Helper()
	r.p.CloseInput()
	return r.wait(t)
}

// wait returns what Run returned, failing the test if Run does not return
// within an hour of fake time.
func (r *rig) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.result:
		return err
	case <-time.After(time.Hour):
		t.Fatal("Run did not return within an hour of fake time")
		return nil
	}
}

// stop cancels Run and waits for it.
func (r *rig) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// interleaved builds n records of size bytes for each of parts partitions of
// topic "t", in the order p0@0, p1@0, ..., p0@1, p1@1, ...
func interleaved(parts int32, n int64, size int) []*record.Record {
	var rs []*record.Record
	for off := range n {
		for p := range parts {
			rs = append(rs, sized(p, off, size))
		}
	}
	return rs
}
