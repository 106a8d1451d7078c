package flow

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// Config is the processing stage's settings.
type Config struct {
	Workers       int
	RecordTimeout time.Duration // 0 disables the per-record timeout
	Lanes         int
	Batch         BatchConfig
	WriteTimeout  time.Duration
	Retry         RetryConfig
	// RecordsPerSecond limits rows written per second across all lanes; 0 is off.
	RecordsPerSecond float64
	Burst            int
	// ExactlyOnce makes every batch carry its partitions' positions
	// (record.Batch.Positions) for a sink that stores them with the rows,
	// orders each write after the dead letters its positions pass, and makes
	// a dead-lettered record done only once a write stored a position past it.
	// The sink may answer with a *FencedError.
	ExactlyOnce bool
	// MaxRecordBytes bounds a record's key, value and headers together: a
	// larger record is dead-lettered with reason too_large and never reaches
	// the Mapper. 0 is no limit.
	MaxRecordBytes int
}

// BatchConfig bounds one sink write.
type BatchConfig struct {
	MaxRecords int
	MaxBytes   int
	Linger     time.Duration
}

// Pipeline maps admitted records to rows on a worker pool and writes them
// through lanes: a partition always goes to the same lane, a lane writes its
// batches one after another in admission order, and lanes write in parallel.
//
// Contract: Room, Admit and CloseInput are called from one goroutine (the
// consumer's poll loop). Run starts every goroutine of the pipeline and returns
// after all have stopped: when input is closed and everything admitted is done
// (nil), when ctx is cancelled (ctx's error), or when the sink reports a fatal
// error (that error).
type Pipeline struct {
	cfg       Config
	gate      *Gate
	mapper    Mapper
	sink      Sink
	dlq       DeadLetterer
	committer Committer
	fencer    Fencer // the committer, when it is one
	metrics   *metrics.Metrics
	log       *zap.Logger
	limiter   *rate.Limiter
	now       func() time.Time

	work      chan *item // to workers; capacity MaxRecords: the gate bounds what is queued
	lanes     []*lane    // each with its own queue, capacity MaxRecords for the same reason
	deadQueue chan *item // to the dead-letter goroutine; capacity MaxRecords, same reason
	laneOf    map[record.Partition]*lane
	closedCh  chan struct{} // closed by CloseInput
	drained   chan struct{}
	// unsettled counts admitted records whose mapping has no outcome yet;
	// the watchdog watches until input is closed and it is 0.
	unsettled atomic.Int64

	workers []*worker
	wmu     sync.Mutex

	itemSlab []item // Admit's, see newItem
	// epoch and customClock make mono: the watchdog's clock.
	epoch       time.Time
	customClock bool

	// Exactly-once only: per partition, the newest assignment generation
	// the sink fenced. The lanes drop records of it, and of older ones,
	// instead of batching or dead-lettering them.
	fencedMu  sync.Mutex
	fencedGen map[record.Partition]uint64
	anyFenced atomic.Bool

	// Counters for /status and the demo.
	consumed, written, deadLettered atomic.Int64
	fatal                           atomic.Pointer[error]
}

// Option sets an injected dependency of the Pipeline.
type Option func(*Pipeline)

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option { return func(p *Pipeline) { p.log = l } }

// WithClock sets the time source (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(p *Pipeline) { p.now, p.customClock = now, true }
}

// mono is the watchdog's clock in nanoseconds: with the default clock the
// monotonic reading alone (time.Since), which costs a third of time.Now and
// is read for every record a worker maps.
func (p *Pipeline) mono() int64 {
	if p.customClock {
		return p.now().UnixNano()
	}
	return int64(time.Since(p.epoch))
}

// New returns a pipeline. It starts nothing; Run does.
func New(cfg Config, gate *Gate, mapper Mapper, sink Sink, dlq DeadLetterer, committer Committer, m *metrics.Metrics, opts ...Option) *Pipeline {
	p := &Pipeline{cfg: cfg, gate: gate, mapper: mapper, sink: sink, dlq: dlq, committer: committer, metrics: m,
		log: zap.NewNop(), now: time.Now, laneOf: map[record.Partition]*lane{}, drained: make(chan struct{}), closedCh: make(chan struct{})}
	for _, o := range opts {
		o(p)
	}
	p.epoch = time.Now()
	p.fencer, _ = committer.(Fencer)
	capacity := gate.cfg.MaxRecords + 1 // +1: an empty gate admits one record over budget
	p.work = make(chan *item, capacity)
	p.deadQueue = make(chan *item, capacity)
	for i := range max(1, cfg.Lanes) {
		p.lanes = append(p.lanes, &lane{p: p, id: i, queue: make(chan *item, capacity), wake: make(chan struct{}, 1), out: make(chan *laneBatch)})
	}
	if cfg.RecordsPerSecond > 0 {
		burst := max(cfg.Burst, 1)
		p.limiter = rate.NewLimiter(rate.Limit(cfg.RecordsPerSecond), burst)
	}
	return p
}

// item is one admitted record on its way through a worker and its lane.
type item struct {
	rec   *record.Record
	lane  *lane
	state atomic.Int32 // itemPending, itemClaimed, itemRow, itemPoison
	row   record.Row
	cause *PoisonError
	// stored is closed when the dead-letter queue acknowledged the record;
	// made in exactly-once delivery only, when the record is dead-lettered.
	stored chan struct{}
}

const (
	itemPending int32 = iota
	itemClaimed
	itemRow
	itemPoison
)

// settle records the outcome of mapping once; a late outcome (after the
// watchdog settled the item as timed out) is dropped.
func (it *item) settle(row record.Row, cause *PoisonError) bool {
	if !it.state.CompareAndSwap(itemPending, itemClaimed) {
		return false
	}
	it.lane.p.unsettled.Add(-1)
	it.row, it.cause = row, cause
	if cause != nil {
		it.state.Store(itemPoison)
	} else {
		it.state.Store(itemRow)
	}
	select {
	case it.lane.wake <- struct{}{}:
	default:
	}
	return true
}

// Room reports whether r may be admitted now (see Gate.Room).
func (p *Pipeline) Room(r *record.Record) bool { return p.gate.Room(r) }

// Fits returns how many of rs, in order, have room: Room for each as though
// the ones before it were admitted, without Room's pausing (see Gate.Fits).
func (p *Pipeline) Fits(rs []*record.Record) int { return p.gate.Fits(rs) }

// Admit hands r to the pipeline. Call only after Room(r) reported true; it
// never blocks.
func (p *Pipeline) Admit(r *record.Record) { p.AdmitAll([]*record.Record{r}) }

// AdmitAll hands rs to the pipeline in order, as Admit does each; the gate
// and the counters are updated once, and a run of one partition's records
// finds its lane once. Call only with records Fits counted; it never blocks.
func (p *Pipeline) AdmitAll(rs []*record.Record) {
	if len(rs) == 0 {
		return
	}
	p.gate.AdmitAll(rs)
	var (
		now  time.Time
		last record.Partition
		l    *lane
	)
	for i, r := range rs {
		if r.Admitted.IsZero() { // the consumer sets it once for the records it admits together
			if now.IsZero() {
				now = p.now()
			}
			r.Admitted = now
		}
		if part := r.Part(); i == 0 || part != last {
			last, l = part, p.laneFor(part)
		}
		it := p.newItem()
		it.rec, it.lane = r, l
		p.unsettled.Add(1)
		l.queue <- it
		p.work <- it
	}
	p.metrics.RecordsConsumed.Add(float64(len(rs)))
	p.consumed.Add(int64(len(rs)))
}

// laneFor returns the lane of a partition, choosing it the first time.
// Admit's goroutine only.
func (p *Pipeline) laneFor(part record.Partition) *lane {
	l := p.laneOf[part]
	if l == nil {
		h := fnv.New32a()
		h.Write([]byte(part.Topic))
		h.Write([]byte{byte(part.Partition >> 24), byte(part.Partition >> 16), byte(part.Partition >> 8), byte(part.Partition)})
		l = p.lanes[int(h.Sum32()%uint32(len(p.lanes)))]
		p.laneOf[part] = l
	}
	return l
}

// itemSlab is how many items admission allocates at once.
const itemSlab = 256

// newItem returns a zero item from a slab: admission allocates once per
// itemSlab records rather than once per record. Admit's goroutine only.
func (p *Pipeline) newItem() *item {
	if len(p.itemSlab) == 0 {
		p.itemSlab = make([]item, itemSlab)
	}
	it := &p.itemSlab[0]
	p.itemSlab = p.itemSlab[1:]
	return it
}

// inputClosed reports whether CloseInput was called.
func (p *Pipeline) inputClosed() bool {
	select {
	case <-p.closedCh:
		return true
	default:
		return false
	}
}

// CloseInput says no more records will be admitted; Run then drains what was
// admitted and returns.
func (p *Pipeline) CloseInput() {
	if p.inputClosed() {
		return
	}
	close(p.closedCh)
	close(p.work)
	for _, l := range p.lanes {
		close(l.queue)
	}
}

// Drained is closed when Run has finished after CloseInput.
func (p *Pipeline) Drained() <-chan struct{} { return p.drained }

// Counts are the pipeline's record counters since it was built.
type Counts struct {
	Consumed, Written, DeadLettered int64
}

// Counts returns the records admitted, written and dead-lettered so far.
func (p *Pipeline) Counts() Counts {
	return Counts{Consumed: p.consumed.Load(), Written: p.written.Load(), DeadLettered: p.deadLettered.Load()}
}

// Run runs the workers, the watchdog, the lanes and the dead-letter stage.
func (p *Pipeline) Run(ctx context.Context) error {
	defer close(p.drained)
	g, ctx := errgroup.WithContext(ctx)
	var workers sync.WaitGroup
	for range max(1, p.cfg.Workers) {
		p.startWorker(ctx, &workers)
	}
	if p.cfg.RecordTimeout > 0 {
		// The watchdog counts as a worker so that the replacements it starts are
		// never added to a WaitGroup whose count already reached zero.
		workers.Go(func() { p.watchdog(ctx, &workers) })
	}
	g.Go(func() error { workers.Wait(); return nil })
	var lanes sync.WaitGroup
	for _, l := range p.lanes {
		lanes.Add(2)
		g.Go(func() error { defer lanes.Done(); return l.batch(ctx) })
		g.Go(func() error { defer lanes.Done(); return l.write(ctx) })
	}
	lanesDone := make(chan struct{})
	g.Go(func() error { lanes.Wait(); close(lanesDone); return nil })
	g.Go(func() error { return p.deadLetterLoop(ctx, lanesDone) })
	err := g.Wait()
	if fatal := p.Fatal(); fatal != nil {
		// Two lanes may fail at once: Run returns the one Fatal reports.
		return fatal
	}
	return err
}

// worker maps records. A worker whose record exceeded the timeout is
// abandoned: the watchdog settles its record and starts a replacement, and the
// abandoned worker exits once its mapper returns.
type worker struct {
	current   atomic.Pointer[item]
	since     atomic.Int64 // mono() when current started
	abandoned atomic.Bool
	// ctx is the mapper's context: the pipeline's, cancelled as well when the
	// watchdog abandons the worker. One per worker, not per record: a timer per
	// record cost a tenth of the pipeline's CPU.
	ctx    context.Context
	cancel context.CancelFunc
}

func (p *Pipeline) startWorker(ctx context.Context, wg *sync.WaitGroup) {
	w := &worker{}
	w.ctx, w.cancel = context.WithCancel(ctx)
	p.wmu.Lock()
	p.workers = append(p.workers, w)
	p.wmu.Unlock()
	wg.Go(func() { p.runWorker(ctx, w) })
}

func (p *Pipeline) runWorker(ctx context.Context, w *worker) {
	defer w.cancel()
	for {
		var it *item
		var ok bool
		select {
		case it, ok = <-p.work:
		case <-ctx.Done():
			return
		}
		if !ok {
			return
		}
		var (
			row record.Row
			err error
		)
		if cause := p.tooLarge(it.rec); cause != nil {
			err = cause // not decoded: a hostile size must not reach the mapper
		} else {
			w.since.Store(p.mono())
			w.current.Store(it)
			row, err = p.mapper.Map(w.ctx, it.rec)
			w.current.Store(nil)
		}
		if err != nil && ctx.Err() != nil {
			// The pipeline is stopping: the error is not the record's fault.
			// The record stays not done, to be consumed again.
			return
		}
		var settled bool
		if err != nil {
			settled = it.settle(nil, asPoison(err))
		} else {
			settled = it.settle(row, nil)
		}
		// A record the watchdog settled first means the watchdog abandons this
		// worker and starts a replacement, even if it has not marked it yet.
		if !settled || w.abandoned.Load() {
			return
		}
	}
}

// tooLarge returns the cause of r when its key, value and headers exceed
// Config.MaxRecordBytes, else nil.
func (p *Pipeline) tooLarge(r *record.Record) *PoisonError {
	limit := p.cfg.MaxRecordBytes
	if limit <= 0 {
		return nil
	}
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	if n <= limit {
		return nil
	}
	return &PoisonError{Reason: ReasonTooLarge,
		Err: fmt.Errorf("%w: %d bytes of key, value and headers, the limit is %d; not decoded", ErrRecordTooLarge, n, limit)}
}

// timedOut is the cause of a record that exceeded the record timeout.
func (p *Pipeline) timedOut() *PoisonError {
	return &PoisonError{Reason: ReasonTimeout, Err: fmt.Errorf("%w (%s)", ErrRecordTimeout, p.cfg.RecordTimeout)}
}

// watchdog settles records that exceeded the record timeout as poison and
// replaces their workers, so a slow record never blocks its partition.
func (p *Pipeline) watchdog(ctx context.Context, wg *sync.WaitGroup) {
	tick := time.NewTicker(max(p.cfg.RecordTimeout/4, time.Millisecond))
	defer tick.Stop()
	closed := p.closedCh
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-closed:
			// Input is closed: look often, so the watchdog's exit does not
			// hold up the shutdown by a quarter of the record timeout.
			closed = nil
			tick.Reset(min(max(p.cfg.RecordTimeout/4, time.Millisecond), 20*time.Millisecond))
		}
		deadline := p.mono() - int64(p.cfg.RecordTimeout)
		p.wmu.Lock()
		// Not "no worker holds a record": a worker that took a record from
		// work and has not yet marked it current would look idle, and its
		// record would never time out.
		if p.inputClosed() && p.unsettled.Load() == 0 {
			p.wmu.Unlock()
			return
		}
		stuck := 0
		live := p.workers[:0]
		for _, w := range p.workers {
			it := w.current.Load()
			if it != nil && w.since.Load() <= deadline && !w.abandoned.Load() {
				if it.settle(nil, p.timedOut()) {
					w.abandoned.Store(true)
					w.cancel() // a mapper that honours ctx returns now
					stuck++
					continue
				}
			}
			if !w.abandoned.Load() {
				live = append(live, w)
			}
		}
		p.workers = live
		p.wmu.Unlock()
		for range stuck {
			p.startWorker(ctx, wg)
		}
	}
}

// finish marks records done: committed past, and their budget released.
func (p *Pipeline) finish(rs []*record.Record) {
	if len(rs) == 0 {
		return
	}
	p.committer.Done(rs...)
	p.gate.Release(rs...)
	now := p.now()
	for _, r := range rs {
		p.metrics.ProcessingDuration.Observe(now.Sub(r.Admitted).Seconds())
	}
}

// deadLetterLoop stores poison records, retrying each until the DLQ takes it:
// a record that cannot be dead-lettered is never done. Up to
// deadLetterInFlight records are stored concurrently and each is done as soon
// as the DLQ acknowledges it, so a DLQ with a network round trip (and a
// producer linger) per record keeps up with a poison flood: the producer
// batches what is in flight, and no record waits for a slower one. A DLQ that
// stores asynchronously (AsyncDeadLetterer) is driven from this goroutine;
// a goroutine per dead letter, each growing its stack through the record's
// encoding, cost a quarter of sluice's CPU in a 5% poison flood.
func (p *Pipeline) deadLetterLoop(ctx context.Context, lanesDone <-chan struct{}) error {
	var (
		slots    = make(chan struct{}, deadLetterInFlight)
		inFlight sync.WaitGroup
	)
	stored := func(it *item) {
		p.metrics.RecordsDLQ.WithLabelValues(it.cause.Reason).Inc()
		p.deadLettered.Add(1)
		if it.stored != nil {
			close(it.stored) // its lane's writer may go on; done once a write stored a position past it
			return
		}
		p.finish([]*record.Record{it.rec})
	}
	// store retries it until the DLQ takes it or ctx ends, on its own
	// goroutine, and frees its slot.
	store := func(it *item) {
		go func() {
			defer inFlight.Done()
			defer func() { <-slots }()
			if p.storeDeadLetter(ctx, it) == nil {
				stored(it)
			}
		}()
	}
	async, _ := p.dlq.(AsyncDeadLetterer)
	for {
		var it *item
		select {
		case it = <-p.deadQueue:
		case <-lanesDone:
			select {
			case it = <-p.deadQueue:
			default:
				inFlight.Wait()
				return nil
			}
		case <-ctx.Done():
			inFlight.Wait()
			return ctx.Err()
		}
		select {
		case slots <- struct{}{}: // waits while deadLetterInFlight are stored
		case <-ctx.Done():
			inFlight.Wait()
			return ctx.Err()
		}
		inFlight.Add(1)
		if async == nil {
			store(it)
			continue
		}
		async.DeadLetterAsync(ctx, it.rec, it.cause, func(err error) {
			if err != nil {
				store(it) // keeps the slot
				return
			}
			stored(it)
			<-slots
			inFlight.Done()
		})
	}
}

// deadLetterInFlight bounds the dead letters stored concurrently.
const deadLetterInFlight = 1024

func (p *Pipeline) storeDeadLetter(ctx context.Context, it *item) error {
	b := p.backoff()
	for {
		err := p.dlq.DeadLetter(ctx, it.rec, it.cause)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := b.next(0)
		p.log.Warn("dead-letter write failed; retrying, the record stays uncommitted",
			zap.Stringer("partition", it.rec.Part()), zap.Int64("offset", it.rec.Offset), zap.Duration("backoff", d), zap.Error(err))
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// deadLetter hands it to the dead-letter stage. In exactly-once delivery it
// also makes it.stored, which the stage closes on the acknowledgement.
func (p *Pipeline) deadLetter(ctx context.Context, it *item) error {
	if p.cfg.ExactlyOnce {
		it.stored = make(chan struct{})
	}
	select {
	case p.deadQueue <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// markFenced records that the sink fenced ps in the generations their
// positions carry.
func (p *Pipeline) markFenced(ps []record.Partition, positions []record.Position) {
	p.fencedMu.Lock()
	defer p.fencedMu.Unlock()
	if p.fencedGen == nil {
		p.fencedGen = map[record.Partition]uint64{}
	}
	for _, pos := range positions {
		if slices.Contains(ps, pos.Partition) {
			p.fencedGen[pos.Partition] = max(p.fencedGen[pos.Partition], pos.Generation)
		}
	}
	p.anyFenced.Store(true)
}

// fenced reports whether r's assignment was fenced: r is to be dropped.
func (p *Pipeline) fenced(r *record.Record) bool {
	if !p.anyFenced.Load() {
		return false
	}
	p.fencedMu.Lock()
	defer p.fencedMu.Unlock()
	g, ok := p.fencedGen[r.Part()]
	return ok && r.Ticket.Generation <= g
}

// Fatal returns the fatal sink error that stopped the pipeline, if any.
func (p *Pipeline) Fatal() error {
	if e := p.fatal.Load(); e != nil {
		return *e
	}
	return nil
}
