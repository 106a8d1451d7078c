// Package daemon assembles sluice from a Config: the sink, the flow pipeline,
// the consumer, the dead-letterer and the observability server, and runs them
// with an ordered shutdown (stop polling, drain, commit, leave the group, stop
// serving). cmd/sluice's run and demo commands both start sluice through it.
//
// The sink is wrapped in a circuit breaker (package sink): when it opens, every
// assigned partition is paused and readiness fails; when it closes, they
// resume.
//
// With sink.postgres.delivery exactly-once the PostgreSQL sink is also the
// consumer's offset store (the stored positions it seeks to) and the flow
// carries each batch's positions to it; a partition the sink fences is handed
// back to the consumer to seek again.
//
// Concurrency contract: Run returns only after every goroutine it started has
// stopped. Stats, Ready and Breaker may be called from any goroutine while Run
// runs.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/obs"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/file"
	httpsink "github.com/sluicehq/sluice/internal/sink/http"
	"github.com/sluicehq/sluice/internal/sink/postgres"
)

// Options are injected dependencies; the zero value runs sluice as configured.
type Options struct {
	Logger *zap.Logger
	// Registry receives every metric; nil creates one.
	Registry *prometheus.Registry
	// WrapSink wraps the configured sink (the demo slows and fails it). The
	// circuit breaker wraps the result, so the wrapper's failures open it.
	WrapSink func(flow.Sink) flow.Sink
	// WrapMapper wraps the sink's record mapping (a test binary's hook makes
	// chosen records slow).
	WrapMapper func(flow.Mapper) flow.Mapper
	// DeadLetterer replaces the configured dead-letterer.
	DeadLetterer flow.DeadLetterer
	// KafkaOpts are appended to the consumer's client options.
	KafkaOpts []kgo.Opt
	// Started is called once everything is built, before Run serves.
	Started func(*Daemon)
}

// Daemon is one running sluice.
type Daemon struct {
	cfg      *config.Config
	log      *zap.Logger
	reg      *prometheus.Registry
	metrics  *metrics.Metrics
	gate     *flow.Gate
	pipe     *flow.Pipeline
	breaker  *sink.Breaker
	consumer *consumer.Consumer
	server   *obs.Server
	ping     func(context.Context) error
	// dlqRefused says why the dead-letter topic refuses records (its ACLs),
	// or nil; nil itself with an injected dead-letterer.
	dlqRefused func() error
	offsets    consumer.OffsetStore // exactly-once only: the PostgreSQL sink
	closers    []func() error
	started    time.Time
	stopping   atomic.Bool
}

type mapSink interface {
	flow.Sink
	flow.Mapper
}

// pauser forwards the gate's pause decisions to the consumer, which is built
// after the gate.
type pauser struct{ c *consumer.Consumer }

func (p *pauser) PauseForGate(ps []record.Partition) {
	if p.c != nil {
		p.c.PauseForGate(ps)
	}
}

func (p *pauser) ResumeForGate(ps []record.Partition) {
	if p.c != nil {
		p.c.ResumeForGate(ps)
	}
}

// New builds sluice from cfg: it connects to the sink (and checks the mapping
// against it) but starts no goroutine.
func New(ctx context.Context, cfg *config.Config, o Options) (*Daemon, error) {
	if cfg.DLQ.Topic == "" {
		c := *cfg
		c.DLQ.Topic = cfg.Kafka.Group + ".dlq" // as config.Load derives it
		cfg = &c
	}
	d := &Daemon{cfg: cfg, log: o.Logger, reg: o.Registry}
	if d.log == nil {
		d.log = zap.NewNop()
	}
	if d.reg == nil {
		d.reg = prometheus.NewRegistry()
		d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	d.metrics = metrics.New(d.reg)

	s, err := d.openSink(ctx)
	if err != nil {
		return nil, err
	}
	var inner flow.Sink = s
	if o.WrapSink != nil {
		inner = o.WrapSink(inner)
	}
	d.breaker = sink.NewBreaker(inner, cfg.Sink.Breaker, cfg.Sink.Concurrency,
		sink.WithMetrics(d.metrics, cfg.Sink.Type), sink.OnTransition(d.breakerChanged), sink.OnProbe(d.breakerProbed))
	dl := o.DeadLetterer
	if dl == nil {
		k, err := openDLQ(ctx, cfg, o.KafkaOpts)
		if err != nil {
			d.close()
			return nil, err
		}
		d.closers = append(d.closers, func() error { k.Close(); return nil })
		d.dlqRefused = k.Refused
		dl = k
	}

	pz := &pauser{}
	d.gate = flow.NewGate(flow.GateConfig{
		MaxRecords: cfg.Flow.MaxBufferedRecords,
		MaxBytes:   int64(cfg.Flow.MaxBufferedBytes),
		ResumeAt:   cfg.Flow.ResumeAt,
	}, pz, d.metrics)
	committer := &committerRef{}
	var mapper flow.Mapper = s
	if o.WrapMapper != nil {
		mapper = o.WrapMapper(mapper)
	}
	d.pipe = flow.New(flow.Config{
		Workers:        cfg.Flow.Workers,
		RecordTimeout:  cfg.Flow.RecordTimeout,
		MaxRecordBytes: int(cfg.Flow.MaxRecordBytes),
		Lanes:          cfg.Sink.Concurrency,
		Batch: flow.BatchConfig{
			MaxRecords: cfg.Sink.Batch.MaxRecords,
			MaxBytes:   int(cfg.Sink.Batch.MaxBytes),
			Linger:     cfg.Sink.Batch.Linger,
		},
		WriteTimeout:     cfg.Sink.WriteTimeout,
		Retry:            flow.RetryConfig{Initial: cfg.Sink.Retry.InitialBackoff, Max: cfg.Sink.Retry.MaxBackoff},
		RecordsPerSecond: cfg.Flow.RateLimit.RecordsPerSecond,
		Burst:            cfg.Flow.RateLimit.Burst,
		ExactlyOnce:      d.offsets != nil,
	}, d.gate, mapper, d.breaker, dl, committer, d.metrics, flow.WithLogger(d.log.Named("flow")))

	c, err := consumer.New(consumer.Options{
		Kafka:           cfg.Kafka,
		CommitInterval:  cfg.Commit.Interval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          d.log.Named("consumer"),
		Metrics:         d.metrics,
		Registerer:      d.reg,
		ExtraOpts:       o.KafkaOpts,
		Offsets:         d.offsets,
	}, d.pipe, d.gate)
	if err != nil {
		d.close()
		return nil, err
	}
	d.consumer, pz.c, committer.c = c, c, c
	d.server = obs.NewServer(cfg.Observability.Listen, d.reg, func() any { return d.Stats() }, d.Ready, d.log.Named("http"))
	if cfg.Observability.Pprof {
		d.server.ServePprof()
	}
	if o.Started != nil {
		o.Started(d)
	}
	return d, nil
}

// openDLQ returns the dead-letter producer for dlq.topic, creating the topic
// (with the broker's default partitions and replication) when it is missing.
func openDLQ(ctx context.Context, cfg *config.Config, extra []kgo.Opt) (*dlq.Kafka, error) {
	sec, err := consumer.Security(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	opts := append(append([]kgo.Opt{kgo.SeedBrokers(cfg.Kafka.Brokers...)}, sec...), extra...)
	k, err := dlq.NewKafka(cfg.DLQ.Topic, opts...)
	if err != nil {
		return nil, err
	}
	if err := k.Ensure(ctx); err != nil {
		k.Close()
		if errors.Is(err, dlq.ErrUnreachable) {
			// Not the topic's fault: the brokers, or how sluice logs in.
			if u := cfg.Kafka.SASL.Username; u != "" {
				return nil, fmt.Errorf("kafka (SASL user %q): %w", u, err)
			}
			return nil, fmt.Errorf("kafka.brokers: %w", err)
		}
		return nil, fmt.Errorf("dlq.topic: %w", err)
	}
	return k, nil
}

// committerRef forwards done and fenced records to the consumer, built after
// the pipeline.
type committerRef struct{ c *consumer.Consumer }

func (r *committerRef) Done(rs ...*record.Record)  { r.c.Done(rs...) }
func (r *committerRef) Fence(rs ...*record.Record) { r.c.Fence(rs...) }

func (d *Daemon) openSink(ctx context.Context) (mapSink, error) {
	switch d.cfg.Sink.Type {
	case "postgres":
		s, err := postgres.New(ctx, d.cfg.Sink.Postgres, postgres.Options{
			Lanes: d.cfg.Sink.Concurrency, WriteTimeout: d.cfg.Sink.WriteTimeout, Logger: d.log.Named("postgres"),
			Group: d.cfg.Kafka.Group})
		if err != nil {
			return nil, err
		}
		d.ping = s.Ping
		if d.cfg.Sink.Postgres.Delivery == config.DeliveryExactlyOnce {
			d.offsets = s
		}
		d.closers = append(d.closers, func() error { s.Close(); return nil })
		return s, nil
	case "file":
		s, err := file.New(d.cfg.Sink.File)
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, s.Close)
		return s, nil
	case "http":
		// No ping: readiness follows the breaker, which every write feeds.
		s, err := httpsink.New(d.cfg.Sink.HTTP, httpsink.Options{
			Lanes: d.cfg.Sink.Concurrency, WriteTimeout: d.cfg.Sink.WriteTimeout, Columns: d.cfg.Sink.HTTP.Columns,
			Logger: d.log.Named("sink.http")})
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, func() error { s.Close(); return nil })
		return s, nil
	default:
		return nil, fmt.Errorf("sink.type: %q is not available (postgres, http and file are)", d.cfg.Sink.Type)
	}
}

func (d *Daemon) close() {
	for _, c := range d.closers {
		if err := c(); err != nil {
			d.log.Warn("closing the sink", zap.Error(err))
		}
	}
}

// breakerChanged pauses every assigned partition when the breaker opens and
// resumes them when it closes. It runs with the breaker's lock held (see
// package sink): it only logs and flips the consumer's pause set.
func (d *Daemon) breakerChanged(t sink.Transition) {
	br, log := d.cfg.Sink.Breaker, d.log.Named("breaker")
	switch t.To {
	case sink.StateOpen:
		if d.consumer != nil {
			d.consumer.PauseAll()
		}
		log.Error("circuit breaker open: sink writes fail fast and every assigned partition is paused",
			zap.Stringer("from", t.From), zap.Duration("open_for", br.OpenFor), zap.Time("open_since", t.OpenSince), zap.Error(t.Err))
	case sink.StateHalfOpen:
		log.Warn("circuit breaker half-open: probing the sink with the batches in flight; partitions stay paused until a probe succeeds",
			zap.Int("probes_in_flight", d.breaker.HalfOpenLimit()), zap.Int("successes_to_close", br.HalfOpenSuccesses))
	case sink.StateClosed:
		if d.consumer != nil {
			d.consumer.ResumeAll()
		}
		log.Info("circuit breaker closed: the sink recovered; partitions resume",
			zap.Duration("outage", t.At.Sub(t.OpenSince)))
	}
}

// breakerProbed resumes the partitions once a half-open probe succeeded: the
// sink answers again, and the batches in flight alone may be too few to reach
// half_open_successes. The breaker still lets only its share of writes
// through, and the gate bounds what is buffered.
func (d *Daemon) breakerProbed(int) {
	if d.consumer != nil {
		d.consumer.ResumeAll()
	}
}

// Metrics returns sluice's metrics (tests read them).
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// Breaker returns the sink's circuit breaker.
func (d *Daemon) Breaker() *sink.Breaker { return d.breaker }

// Addr returns the observability server's bound address once it listens.
func (d *Daemon) Addr() string { return d.server.Addr() }

// Pipeline returns the flow pipeline (the demo reads its counters).
func (d *Daemon) Pipeline() *flow.Pipeline { return d.pipe }

// Consumer returns the consumer.
func (d *Daemon) Consumer() *consumer.Consumer { return d.consumer }

// Gate returns the flow gate.
func (d *Daemon) Gate() *flow.Gate { return d.gate }

// Run runs sluice until ctx is done, then shuts down in order: stop polling,
// drain within shutdown_timeout, commit, leave the group, stop serving. It
// returns nil after a clean shutdown, or the error that stopped it (a fatal
// sink error, a listener that cannot bind).
func (d *Daemon) Run(ctx context.Context) error {
	defer d.close()
	d.started = time.Now()
	if err := d.server.Listen(); err != nil {
		return err
	}
	pipeCtx, cancelPipe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelPipe()
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServer()

	g, gctx := errgroup.WithContext(ctx)
	var srvErr error
	srvDone := make(chan struct{})
	go func() { defer close(srvDone); srvErr = d.server.Run(srvCtx) }()
	g.Go(func() error {
		err := d.pipe.Run(pipeCtx)
		if err != nil && pipeCtx.Err() == nil {
			return fmt.Errorf("pipeline: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		// Readiness turns false as soon as shutdown starts; the pipeline keeps
		// running so the consumer can drain it within shutdown_timeout.
		<-gctx.Done()
		d.stopping.Store(true)
		return nil
	})
	g.Go(func() error {
		defer cancelPipe() // after the drain: whatever is left is abandoned, uncommitted
		return d.consumer.Run(gctx)
	})
	err := g.Wait()
	stopServer()
	<-srvDone
	if err == nil && srvErr != nil && !errors.Is(srvErr, context.Canceled) {
		err = srvErr
	}
	return err
}

// Ready reports why sluice is not ready, or nil: the group is joined, the sink
// answers, its circuit breaker is closed, and no fatal error stopped the
// pipeline.
func (d *Daemon) Ready() error {
	// The fatal error first: it is why sluice is shutting down.
	if err := d.pipe.Fatal(); err != nil {
		return fmt.Errorf("sink stopped: %w", err)
	}
	if d.stopping.Load() {
		return errors.New("shutting down")
	}
	if st := d.breaker.Status(); st.State != sink.StateClosed {
		what := "circuit breaker open since " + st.OpenSince.UTC().Format(time.RFC3339)
		if st.State == sink.StateHalfOpen {
			what += " (half-open since " + st.Since.UTC().Format(time.RFC3339) + ", probing)"
		}
		return fmt.Errorf("%s: %v", what, st.LastError)
	}
	if d.dlqRefused != nil {
		if err := d.dlqRefused(); err != nil {
			return err
		}
	}
	select {
	case <-d.consumer.Joined():
	default:
		return errors.New("not yet a member of the consumer group")
	}
	if d.ping != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := d.ping(ctx); err != nil {
			return fmt.Errorf("sink unreachable: %w", err)
		}
	}
	return nil
}

// Status is what /status serves.
type Status struct {
	Group         string                    `json:"group"`
	Sink          string                    `json:"sink"`
	Ready         bool                      `json:"ready"`
	NotReady      string                    `json:"not_ready,omitempty"`
	UptimeSeconds float64                   `json:"uptime_seconds"`
	Buffer        BufferStatus              `json:"buffer"`
	Consumed      int64                     `json:"records_consumed"`
	Written       int64                     `json:"records_written"`
	DeadLettered  int64                     `json:"records_dead_lettered"`
	Breaker       BreakerStatus             `json:"breaker"`
	Partitions    []consumer.PartitionStats `json:"partitions"`
}

// BreakerStatus is the sink's circuit breaker.
type BreakerStatus struct {
	State string    `json:"state"` // closed | half-open | open
	Opens int64     `json:"opens"` // since start
	Since time.Time `json:"since"` // when it entered State
	// OpenSince is when the current outage began (the breaker opened from
	// closed); absent while closed.
	OpenSince *time.Time `json:"open_since,omitempty"`
	LastError string     `json:"last_error,omitempty"` // the sink's last transient failure
}

// BufferStatus is the gate's use.
type BufferStatus struct {
	Records     int     `json:"records"`
	MaxRecords  int     `json:"max_records"`
	Bytes       int64   `json:"bytes"`
	MaxBytes    int64   `json:"max_bytes"`
	PeakBytes   int64   `json:"peak_bytes"`
	Utilization float64 `json:"utilization"`
	Full        bool    `json:"full"`
	Pauses      int64   `json:"pauses"`
}

// Stats returns the current status.
func (d *Daemon) Stats() Status {
	gs := d.gate.Stats()
	n := d.pipe.Counts()
	s := Status{
		Group: d.cfg.Kafka.Group, Sink: d.cfg.Sink.Type, UptimeSeconds: time.Since(d.started).Seconds(),
		Buffer: BufferStatus{Records: gs.Records, MaxRecords: gs.MaxRecords, Bytes: gs.Bytes, MaxBytes: gs.MaxBytes,
			PeakBytes: gs.PeakBytes, Full: gs.Full, Pauses: gs.Pauses,
			Utilization: max(float64(gs.Records)/float64(max(gs.MaxRecords, 1)), float64(gs.Bytes)/float64(max(gs.MaxBytes, 1)))},
		Consumed: n.Consumed, Written: n.Written, DeadLettered: n.DeadLettered, Partitions: d.consumer.Stats(),
	}
	bs := d.breaker.Status()
	s.Breaker = BreakerStatus{State: bs.State.String(), Opens: bs.Opens, Since: bs.Since.UTC()}
	if !bs.OpenSince.IsZero() {
		at := bs.OpenSince.UTC()
		s.Breaker.OpenSince = &at
	}
	if bs.LastError != nil {
		s.Breaker.LastError = bs.LastError.Error()
	}
	if err := d.Ready(); err != nil {
		s.NotReady = err.Error()
	} else {
		s.Ready = true
	}
	return s
}
