package flow

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/record"
)

// lane batches the rows of the partitions routed to it, in admission order, and
// writes the batches one after another: one batch open, one in flight.
type lane struct {
	p     *Pipeline
	id    int
	queue chan *item         // admission order; closed by CloseInput
	wake  chan struct{}      // size 1: a record of this lane was settled
	out   chan *record.Batch // unbuffered: the open batch waits for the writer
}

// batch takes settled items from the head of the queue, so rows keep their
// order, and hands batches to the lane's writer. A batch that reached
// max_records or max_bytes waits for the writer; one whose linger expired, or
// any open batch while the gate is full, goes as soon as the writer is free and
// keeps growing until then. (Waiting for linger while the gate is full would
// stall: the budget can be smaller than lanes x max_records.) Poison records go
// to the dead-letter stage without holding up the rows behind them.
func (l *lane) batch(ctx context.Context) error {
	defer close(l.out)
	cfg := l.p.cfg.Batch
	var (
		head      *item
		open      *record.Batch
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
	sent := func() {
		open, lingerC, expired = nil, nil, false
		if linger != nil {
			linger.Stop()
		}
	}
	send := func() error { // waits for the writer
		if open == nil {
			return nil
		}
		select {
		case l.out <- open:
			sent()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
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
		if head != nil {
			switch head.state.Load() {
			case itemRow:
				if open == nil {
					open = &record.Batch{Rows: make([]record.Row, 0, min(cfg.MaxRecords, 1024)), Records: make([]*record.Record, 0, min(cfg.MaxRecords, 1024))}
					if linger == nil {
						linger = time.NewTimer(cfg.Linger)
					} else {
						linger.Reset(cfg.Linger)
					}
					lingerC = linger.C
				}
				open.Rows = append(open.Rows, head.row)
				open.Records = append(open.Records, head.rec)
				open.Bytes += head.rec.Size()
				head = nil
				if len(open.Rows) >= cfg.MaxRecords || (cfg.MaxBytes > 0 && open.Bytes >= cfg.MaxBytes) {
					if err := send(); err != nil {
						return err
					}
				}
				continue
			case itemPoison:
				it := head
				head = nil
				if err := l.p.deadLetter(ctx, it); err != nil {
					return err
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
		var out chan<- *record.Batch
		var full <-chan struct{}
		if open != nil {
			if expired || l.p.gate.isFull() {
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
		var b *record.Batch
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
		err := l.p.writeBatch(ctx, b)
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
// sink error or when ctx ends.
func (p *Pipeline) writeBatch(ctx context.Context, b *record.Batch) error {
	bo := p.backoff()
	for {
		start := p.now()
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if p.cfg.WriteTimeout > 0 {
			wctx, cancel = context.WithTimeout(ctx, p.cfg.WriteTimeout)
		}
		err := p.sink.Write(wctx, b)
		cancel()
		p.metrics.SinkWriteDuration.Observe(p.now().Sub(start).Seconds())
		if err == nil {
			p.metrics.SinkBatchRecords.Observe(float64(b.Len()))
			p.metrics.RecordsWritten.Add(float64(b.Len()))
			p.written.Add(int64(b.Len()))
			p.finish(b.Records)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch Classify(err) {
		case ClassFatal:
			p.metrics.SinkWriteErrors.WithLabelValues("fatal").Inc()
			p.fatal.CompareAndSwap(nil, &err)
			p.log.Error("sink write failed with an error a retry cannot fix; stopping", zap.Error(err))
			return err
		case ClassRejected:
			p.metrics.SinkWriteErrors.WithLabelValues("rejected").Inc()
			var re *RejectedError
			errors.As(err, &re)
			return p.isolate(ctx, b, re)
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
// it splits the batch in halves and writes each half on its own.
func (p *Pipeline) isolate(ctx context.Context, b *record.Batch, re *RejectedError) error {
	if len(re.Rows) > 0 && !validRows(re.Rows, b.Len()) {
		p.log.Warn("the sink named rows outside the batch; bisecting instead", zap.Ints("rows", re.Rows), zap.Int("batch", b.Len()))
		re = &RejectedError{Err: re.Err}
	}
	if len(re.Rows) > 0 {
		bad := make(map[int]*PoisonError, len(re.Rows))
		for i, row := range re.Rows {
			var cause *PoisonError
			if i < len(re.Causes) {
				cause = re.Causes[i]
			}
			bad[row] = rejected(cause, re.Err)
		}
		good := &record.Batch{}
		for i := range b.Rows {
			if cause, ok := bad[i]; ok {
				if err := p.deadLetter(ctx, &item{rec: b.Records[i], cause: cause}); err != nil {
					return err
				}
				continue
			}
			good.Rows = append(good.Rows, b.Rows[i])
			good.Records = append(good.Records, b.Records[i])
			good.Bytes += b.Records[i].Size()
		}
		if good.Len() == 0 {
			return nil
		}
		return p.writeBatch(ctx, good)
	}
	if b.Len() == 1 {
		return p.deadLetter(ctx, &item{rec: b.Records[0], cause: rejected(nil, re.Err)})
	}
	mid := b.Len() / 2
	for _, half := range []*record.Batch{slice(b, 0, mid), slice(b, mid, b.Len())} {
		if err := p.writeBatch(ctx, half); err != nil {
			return err
		}
	}
	return nil
}

func validRows(rows []int, n int) bool {
	for _, r := range rows {
		if r < 0 || r >= n {
			return false
		}
	}
	return true
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
