package flow

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/record"
)

// lane batches the rows of the partitions routed to it, in admission order, and
// writes the batches one after another: one batch open, one in flight.
type lane struct {
	p     *Pipeline
	id    int
	queue chan *item      // admission order; closed by CloseInput
	wake  chan struct{}   // size 1: a record of this lane was settled
	out   chan *laneBatch // unbuffered: the open batch waits for the writer
}

// laneBatch is a batch on its way from a lane's batcher to its writer. In
// exactly-once delivery it also carries the poison records of its partitions
// that the batcher sent to the dead-letter stage while the batch was open:
// the batch's positions pass them, so the writer waits for their
// acknowledgement before it writes, and marks them done after.
type laneBatch struct {
	*record.Batch
	dead []*item
	pos  map[record.Partition]*record.Position // exactly-once: the positions, by partition
	last *record.Position                      // the position of the record added last
}

// position returns the position of r's partition in the batch, or nil.
func (b *laneBatch) position(r *record.Record) *record.Position {
	if b.last != nil && b.last.Partition.Partition == r.Partition && b.last.Topic == r.Topic {
		return b.last // runs of one partition are common: spare the map
	}
	return b.pos[r.Part()]
}

// cover moves the position of r's partition past r. exactly-once only.
func (b *laneBatch) cover(r *record.Record) {
	ps := b.position(r)
	if ps == nil {
		ps = &record.Position{Partition: r.Part(), Next: r.Offset + 1, Generation: r.Ticket.Generation}
		b.pos[r.Part()] = ps
	}
	ps.Next = max(ps.Next, r.Offset+1)
	b.last = ps
}

// stale reports whether the batch holds records of r's partition from an
// earlier assignment than r's (the consumer admitted r after a rebalance or a
// fence): one batch carries one assignment per partition.
func (b *laneBatch) stale(r *record.Record) bool {
	ps := b.position(r)
	return ps != nil && ps.Generation != r.Ticket.Generation
}

// seal fills Positions from pos, in (topic, partition) order, so that two
// writers of the same partitions take their rows' locks in one order.
func (b *laneBatch) seal() {
	if b.pos == nil {
		return
	}
	b.Positions = make([]record.Position, 0, len(b.pos))
	for _, ps := range b.pos {
		b.Positions = append(b.Positions, *ps)
	}
	slices.SortFunc(b.Positions, comparePosition)
}

func comparePosition(a, c record.Position) int {
	return cmp.Or(cmp.Compare(a.Topic, c.Topic), cmp.Compare(a.Partition.Partition, c.Partition.Partition))
}

// batch takes settled items from the head of the queue, so rows keep their
// order, and hands batches to the lane's writer. A batch that reached
// max_records or max_bytes waits for the writer; one whose linger expired, or
// any open batch while the gate is full, goes as soon as the writer is free and
// keeps growing until then. (Waiting for linger while the gate is full would
// stall: the budget can be smaller than lanes x max_records.) Poison records go
// to the dead-letter stage without holding up the rows behind them; in
// exactly-once delivery they also join the open batch (opening one if need
// be), whose positions then pass them.
func (l *lane) batch(ctx context.Context) error {
	defer close(l.out)
	cfg := l.p.cfg.Batch
	eo := l.p.cfg.ExactlyOnce
	var (
		head      *item
		open      *laneBatch
		linger    *time.Timer
		lingerC   <-chan time.Time
		expired   bool // the open batch's linger passed
		queueOpen = true
	)
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	lastSize := 0 // rows and dead letters of the last batch sent
	sent := func() {
		lastSize = len(open.Rows) + len(open.dead)
		open, lingerC, expired = nil, nil, false
		if linger != nil {
			linger.Stop()
		}
	}
	send := func() error { // waits for the writer
		if open == nil {
			return nil
		}
		open.seal()
		select {
		case l.out <- open:
			sent()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// take adds the settled head to the open batch, opening one if need be,
	// and sends the batch when it is full.
	take := func(it *item) error {
		if eo && open != nil && open.stale(it.rec) {
			if err := send(); err != nil {
				return err
			}
		}
		if open == nil {
			// Sized like the last batch, so that a busy lane's batches do
			// not grow their slices row by row from small.
			size := min(cfg.MaxRecords, max(lastSize, 1024))
			open = &laneBatch{Batch: &record.Batch{Rows: make([]record.Row, 0, size), Records: make([]*record.Record, 0, size)}}
			if eo {
				open.pos = map[record.Partition]*record.Position{}
			}
			if linger == nil {
				linger = time.NewTimer(cfg.Linger)
			} else {
				linger.Reset(cfg.Linger)
			}
			lingerC = linger.C
		}
		if it.cause == nil {
			open.Rows = append(open.Rows, it.row)
			open.Records = append(open.Records, it.rec)
			open.Bytes += it.rec.Size()
		} else {
			open.dead = append(open.dead, it)
		}
		if eo {
			open.cover(it.rec)
		}
		if len(open.Rows)+len(open.dead) >= cfg.MaxRecords || (cfg.MaxBytes > 0 && open.Bytes >= cfg.MaxBytes) {
			return send()
		}
		return nil
	}
	for {
		if head == nil && queueOpen {
			select {
			case it, ok := <-l.queue:
				if ok {
					head = it
				} else {
					queueOpen = false
				}
			default:
			}
		}
		if head != nil && eo && head.state.Load() >= itemRow && l.p.fenced(head.rec) {
			// Its assignment was fenced: the consumer reads the partition
			// again from the stored position.
			l.p.drop([]*record.Record{head.rec})
			head = nil
			continue
		}
		if head != nil {
			switch head.state.Load() {
			case itemRow:
				it := head
				head = nil
				if err := take(it); err != nil {
					return err
				}
				continue
			case itemPoison:
				it := head
				head = nil
				if err := l.p.deadLetter(ctx, it); err != nil {
					return err
				}
				if eo {
					if err := take(it); err != nil {
						return err
					}
				}
				continue
			}
		}
		if head == nil && !queueOpen {
			return send() // input closed and drained: no reason to linger
		}
		var q chan *item
		if head == nil {
			q = l.queue
		}
		var out chan<- *laneBatch
		var full <-chan struct{}
		if open != nil {
			if expired || l.p.gate.isFull() {
				open.seal()
				out = l.out
			} else {
				full = l.p.gate.fullSignal()
			}
		}
		select {
		case it, ok := <-q:
			if ok {
				head = it
			} else {
				queueOpen = false
			}
		case <-l.wake:
		case <-lingerC:
			lingerC, expired = nil, true
		case <-full:
		case out <- open:
			sent()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// write writes the lane's batches in order until the batcher closes out.
func (l *lane) write(ctx context.Context) error {
	for {
		var b *laneBatch
		var ok bool
		select {
		case b, ok = <-l.out:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return nil
		}
		if err := l.p.limit(ctx, b.Len()); err != nil {
			return err
		}
		l.p.metrics.InflightRecords.Add(float64(b.Len()))
		var err error
		if l.p.cfg.ExactlyOnce {
			run := &exactRun{dead: b.dead}
			if err = l.p.writeBatch(ctx, b.Batch, run); err == nil {
				run.finish(l.p)
			}
		} else {
			err = l.p.writeBatch(ctx, b.Batch, nil)
		}
		l.p.metrics.InflightRecords.Sub(float64(b.Len()))
		if err != nil {
			return err
		}
	}
}

// limit waits for the rate limiter's tokens for n rows, in chunks of its burst.
func (p *Pipeline) limit(ctx context.Context, n int) error {
	if p.limiter == nil {
		return nil
	}
	for n > 0 {
		k := min(n, p.limiter.Burst())
		if err := p.limiter.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// writeBatch writes b until it is written, retrying transient errors with
// backoff and isolating rejected rows; it returns an error only for a fatal
// sink error or when ctx ends. In exactly-once delivery run is the lane
// batch's bookkeeping (nil otherwise): each write first drops what the sink
// fenced and waits for the dead letters the positions pass.
func (p *Pipeline) writeBatch(ctx context.Context, b *record.Batch, run *exactRun) error {
	bo := p.backoff()
	for {
		if run != nil {
			b = run.without(p, b)
			if b.Len() == 0 && len(b.Positions) == 0 {
				return nil
			}
			if err := run.awaitDeadLetters(ctx); err != nil {
				return err
			}
		}
		start := p.now()
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if p.cfg.WriteTimeout > 0 {
			wctx, cancel = context.WithTimeout(ctx, p.cfg.WriteTimeout)
		}
		err := p.sink.Write(wctx, b)
		cancel()
		p.metrics.SinkWriteDuration.Observe(p.now().Sub(start).Seconds())
		if err == nil {
			if b.Len() > 0 {
				p.metrics.SinkBatchRecords.Observe(float64(b.Len()))
				p.metrics.RecordsWritten.Add(float64(b.Len()))
				p.written.Add(int64(b.Len()))
			}
			p.finish(b.Records)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		class := Classify(err)
		if class == ClassFenced && run == nil {
			class = ClassFatal // a sink that fences batches without positions is broken
			err = &FatalError{Err: fmt.Errorf("the sink fenced a batch that carries no positions: %w", err)}
		}
		switch class {
		case ClassFatal:
			p.metrics.SinkWriteErrors.WithLabelValues("fatal").Inc()
			p.fatal.CompareAndSwap(nil, &err)
			p.log.Error("sink write failed with an error a retry cannot fix; stopping", zap.Error(err))
			return err
		case ClassFenced:
			var fe *FencedError
			errors.As(err, &fe)
			if !slices.ContainsFunc(b.Positions, func(ps record.Position) bool { return slices.Contains(fe.Partitions, ps.Partition) }) {
				// Nothing to drop: the write would be refused again and again.
				err = &FatalError{Err: fmt.Errorf("the sink fenced partitions the write does not carry: %w", err)}
				p.metrics.SinkWriteErrors.WithLabelValues("fatal").Inc()
				p.fatal.CompareAndSwap(nil, &err)
				p.log.Error("sink write failed with an error a retry cannot fix; stopping", zap.Error(err))
				return err
			}
			p.metrics.SinkWriteErrors.WithLabelValues("fenced").Inc()
			p.log.Warn("the sink fenced partitions: another writer moved them on, or their assignment ended; dropping their records here, the consumer seeks them to the stored positions",
				zap.Stringers("partitions", fe.Partitions), zap.Error(err))
			run.fence(fe.Partitions)
			p.markFenced(fe.Partitions, b.Positions)
			continue // at once: the rest was not written, and nothing failed
		case ClassRejected:
			p.metrics.SinkWriteErrors.WithLabelValues("rejected").Inc()
			var re *RejectedError
			errors.As(err, &re)
			return p.isolate(ctx, b, re, run)
		default:
			p.metrics.SinkWriteErrors.WithLabelValues("transient").Inc()
			var te *TransientError
			var after time.Duration
			if errors.As(err, &te) {
				after = te.RetryAfter
			}
			d := bo.next(after)
			p.log.Warn("sink write failed; retrying the same batch", zap.Int("rows", b.Len()),
				zap.Duration("backoff", d), zap.Error(err))
			if err := sleep(ctx, d); err != nil {
				return err
			}
		}
	}
}

// isolate finds the rows of b the sink rejects, dead-letters them and writes
// the rest in order. With the rows named it takes them out at once; otherwise
// it splits the batch in halves and writes each half on its own. In
// exactly-once delivery each part is a transaction of its own: the first half
// moves its partitions to just past its own rows, the second half (and the
// rest, when rows are named) carries b's positions, which pass the rejected
// rows once the dead-letter queue has them; a part left without rows still
// writes its positions.
func (p *Pipeline) isolate(ctx context.Context, b *record.Batch, re *RejectedError, run *exactRun) error {
	if b.Len() == 0 {
		err := error(&FatalError{Err: fmt.Errorf("the sink rejected a write without rows: %w", re)})
		p.fatal.CompareAndSwap(nil, &err)
		p.log.Error("sink write failed with an error a retry cannot fix; stopping", zap.Error(err))
		return err
	}
	if re.Written {
		return p.writtenWithout(ctx, b, re, run)
	}
	if len(re.Rows) > 0 && !validRows(re.Rows, b.Len()) {
		p.log.Warn("the sink named rows outside the batch; bisecting instead", zap.Ints("rows", re.Rows), zap.Int("batch", b.Len()))
		re = &RejectedError{Err: re.Err}
	}
	if len(re.Rows) > 0 {
		bad := re.causes()
		good := &record.Batch{Positions: b.Positions}
		for i := range b.Rows {
			if cause, ok := bad[i]; ok {
				if err := p.deadLetterRejected(ctx, &item{rec: b.Records[i], cause: cause}, run); err != nil {
					return err
				}
				continue
			}
			good.Rows = append(good.Rows, b.Rows[i])
			good.Records = append(good.Records, b.Records[i])
			good.Bytes += b.Records[i].Size()
		}
		if good.Len() == 0 && len(good.Positions) == 0 {
			return nil
		}
		return p.writeBatch(ctx, good, run)
	}
	if b.Len() == 1 {
		if err := p.deadLetterRejected(ctx, &item{rec: b.Records[0], cause: rejected(nil, re.Err)}, run); err != nil {
			return err
		}
		if len(b.Positions) == 0 {
			return nil
		}
		return p.writeBatch(ctx, &record.Batch{Positions: b.Positions}, run)
	}
	mid := b.Len() / 2
	first, second := slice(b, 0, mid), slice(b, mid, b.Len())
	if len(b.Positions) > 0 {
		first.Positions = prefixPositions(first.Records, b.Positions)
		second.Positions = b.Positions
	}
	for _, half := range []*record.Batch{first, second} {
		if err := p.writeBatch(ctx, half, run); err != nil {
			return err
		}
	}
	return nil
}

// writtenWithout finishes a batch the sink wrote without the rows it names as
// rejected: those go to the dead-letter stage, the others are done.
func (p *Pipeline) writtenWithout(ctx context.Context, b *record.Batch, re *RejectedError, run *exactRun) error {
	if run != nil || len(b.Positions) > 0 || len(re.Rows) == 0 || !validRows(re.Rows, b.Len()) {
		err := error(&FatalError{Err: fmt.Errorf("the sink wrote part of a batch it should have written whole or not at all (rows %v of %d, positions %d): %w",
			re.Rows, b.Len(), len(b.Positions), re)})
		p.fatal.CompareAndSwap(nil, &err)
		p.log.Error("sink write failed with an error a retry cannot fix; stopping", zap.Error(err))
		return err
	}
	bad := re.causes()
	done := make([]*record.Record, 0, b.Len()-len(bad))
	for i, r := range b.Records {
		if cause, ok := bad[i]; ok {
			if err := p.deadLetter(ctx, &item{rec: r, cause: cause}); err != nil {
				return err
			}
			continue
		}
		done = append(done, r)
	}
	if len(done) > 0 {
		p.metrics.SinkBatchRecords.Observe(float64(len(done)))
		p.metrics.RecordsWritten.Add(float64(len(done)))
		p.written.Add(int64(len(done)))
	}
	p.finish(done)
	return nil
}

// deadLetterRejected sends a row the sink rejected to the dead-letter stage;
// in exactly-once delivery the lane batch's positions pass it, so it joins
// the batch's dead letters.
func (p *Pipeline) deadLetterRejected(ctx context.Context, it *item, run *exactRun) error {
	if err := p.deadLetter(ctx, it); err != nil {
		return err
	}
	if run != nil {
		run.dead = append(run.dead, it)
	}
	return nil
}

// prefixPositions returns the positions of a batch's first rows, rs: each
// partition of rs moves just past its last row there (offsets are not dense,
// so that is the row's offset + 1), with the generation of all's position.
func prefixPositions(rs []*record.Record, all []record.Position) []record.Position {
	next := map[record.Partition]int64{}
	for _, r := range rs {
		next[r.Part()] = max(next[r.Part()], r.Offset+1)
	}
	out := make([]record.Position, 0, len(next))
	for _, ps := range all {
		if n, ok := next[ps.Partition]; ok {
			out = append(out, record.Position{Partition: ps.Partition, Next: n, Generation: ps.Generation})
		}
	}
	return out
}

// exactRun is the exactly-once bookkeeping of one lane batch while the writer
// writes it, in one write or in bisected parts.
type exactRun struct {
	// dead are the batch's dead letters: acknowledged before any of its
	// writes, done after the last (the last write carries the batch's
	// positions, which pass them all).
	dead []*item
	// fenced are the partitions the sink fenced: nothing more of them is
	// written or done.
	fenced map[record.Partition]bool
}

func (r *exactRun) fence(ps []record.Partition) {
	if r.fenced == nil {
		r.fenced = map[record.Partition]bool{}
	}
	for _, p := range ps {
		r.fenced[p] = true
	}
}

// awaitDeadLetters waits until the dead-letter queue acknowledged every dead
// letter of the batch so far: a position may pass them only then.
func (r *exactRun) awaitDeadLetters(ctx context.Context) error {
	for _, it := range r.dead {
		select {
		case <-it.stored:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// without returns b without the rows and positions of fenced partitions, and
// drops those records: their budget is released and the Fencer told, and
// they are never done. b itself is left as it is.
func (r *exactRun) without(p *Pipeline, b *record.Batch) *record.Batch {
	if len(r.fenced) == 0 {
		return b
	}
	keep := &record.Batch{}
	var dropped []*record.Record
	for i, rec := range b.Records {
		if r.fenced[rec.Part()] {
			dropped = append(dropped, rec)
			continue
		}
		keep.Rows = append(keep.Rows, b.Rows[i])
		keep.Records = append(keep.Records, rec)
		keep.Bytes += rec.Size()
	}
	for _, ps := range b.Positions {
		if !r.fenced[ps.Partition] {
			keep.Positions = append(keep.Positions, ps)
		}
	}
	p.drop(dropped)
	return keep
}

// finish marks the batch's dead letters done once its writes are over; those
// of fenced partitions are dropped instead.
func (r *exactRun) finish(p *Pipeline) {
	done := make([]*record.Record, 0, len(r.dead))
	var dropped []*record.Record
	for _, it := range r.dead {
		if r.fenced[it.rec.Part()] {
			dropped = append(dropped, it.rec)
		} else {
			done = append(done, it.rec)
		}
	}
	p.finish(done)
	p.drop(dropped)
}

// drop releases the budget of records that will never be done (their
// partition was fenced) and tells the Fencer.
func (p *Pipeline) drop(rs []*record.Record) {
	if len(rs) == 0 {
		return
	}
	p.gate.Release(rs...)
	if p.fencer != nil {
		p.fencer.Fence(rs...)
	}
}

func validRows(rows []int, n int) bool {
	for _, r := range rows {
		if r < 0 || r >= n {
			return false
		}
	}
	return true
}

// causes returns the dead-letter cause of each row the sink named.
func (e *RejectedError) causes() map[int]*PoisonError {
	bad := make(map[int]*PoisonError, len(e.Rows))
	for i, row := range e.Rows {
		var cause *PoisonError
		if i < len(e.Causes) {
			cause = e.Causes[i]
		}
		bad[row] = rejected(cause, e.Err)
	}
	return bad
}

func rejected(cause *PoisonError, err error) *PoisonError {
	if cause != nil {
		return cause
	}
	var pe *PoisonError
	if errors.As(err, &pe) {
		return pe
	}
	return &PoisonError{Reason: ReasonSinkRejected, Err: err}
}

func slice(b *record.Batch, i, j int) *record.Batch {
	s := &record.Batch{Rows: b.Rows[i:j], Records: b.Records[i:j]}
	for _, r := range s.Records {
		s.Bytes += r.Size()
	}
	return s
}

// RetryConfig is the backoff for transient errors.
type RetryConfig struct {
	Initial time.Duration
	Max     time.Duration
}

// backoff is exponential backoff with full jitter, never shorter than a
// Retry-After the sink asked for.
type backoff struct {
	cfg     RetryConfig
	attempt int
}

func (p *Pipeline) backoff() *backoff {
	cfg := p.cfg.Retry
	if cfg.Initial <= 0 {
		cfg.Initial = 100 * time.Millisecond
	}
	if cfg.Max < cfg.Initial {
		cfg.Max = max(cfg.Initial, 30*time.Second)
	}
	return &backoff{cfg: cfg}
}

func (b *backoff) next(retryAfter time.Duration) time.Duration {
	ceiling := b.cfg.Max
	if b.attempt < 30 {
		ceiling = min(b.cfg.Max, b.cfg.Initial<<b.attempt)
	}
	b.attempt++
	d := time.Duration(rand.Int64N(int64(ceiling)) + 1)
	return max(d, retryAfter)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
