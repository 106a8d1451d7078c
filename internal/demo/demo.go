// Package demo runs sluice's real pipeline against an in-process Kafka
// (franz-go's kfake) with a synthetic producer, so a newcomer sees it work with
// nothing installed: poison records go to the dead-letter queue, a slow-sink
// phase fills the buffer and pauses partitions, a failing-sink phase opens the
// circuit breaker (every partition paused) until the recovered phase closes it,
// and at the end every produced record is accounted for.
//
// Run owns every goroutine it starts and returns after all have stopped.
package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

const (
	topic      = "orders"
	partitions = 6
	group      = "sluice-demo"
	pgTable    = "public.sluice_demo_orders"
)

// Options configure a demo run.
type Options struct {
	Duration time.Duration // total run time (default 20s)
	Rate     int           // base records per second (default 2000)
	PGDSN    string        // write to PostgreSQL instead of a file
	OutPath  string        // the file sink's path (default: a new temp dir)
	Listen   string        // observability listener (default 127.0.0.1:9108)
	Out      io.Writer     // status lines and the summary
	Logger   *zap.Logger
}

// Summary is the demo's last line.
type Summary struct {
	Produced        int64  `json:"produced"`
	Consumed        int64  `json:"consumed"`
	Written         int64  `json:"written"`
	WrittenUnique   int64  `json:"written_unique"`
	DeadLettered    int64  `json:"dead_lettered"`
	PoisonInjected  int64  `json:"poison_injected"`
	Uncommitted     int64  `json:"uncommitted"`
	Pauses          int64  `json:"pauses"`
	BreakerOpens    int64  `json:"breaker_opens"`
	BreakerState    string `json:"breaker_state"` // at the end: closed unless the sink never recovered
	SinkRetries     int64  `json:"sink_retries"`
	PeakBufferBytes int64  `json:"peak_buffer_bytes"`
	BudgetBytes     int64  `json:"budget_bytes"`
	Lost            int64  `json:"lost"`
	Sink            string `json:"sink"`
	Output          string `json:"output"`
}

// phases of the sink over the run, as fractions of the duration.
const (
	phaseNormal int32 = iota
	phaseSlow
	phaseFailing
	phaseRecovered
)

var phaseNames = []string{"normal", "slow-sink", "failing-sink", "recovered"}

// Run runs the demo and returns its summary. The error is non-nil when the
// demo could not run at all; a run that lost records returns a Summary with
// Lost > 0 and a nil error.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 2000
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:9108"
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return Summary{}, fmt.Errorf("start the in-process Kafka: %w", err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	cfg := config.Default()
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Group = group
	cfg.Kafka.Topics = []string{topic}
	cfg.Kafka.FetchMaxWait = 200 * time.Millisecond
	cfg.Kafka.FetchMaxBytes = 4 * config.MiB
	cfg.Kafka.PartitionFetchMaxBytes = 256 * config.KiB
	cfg.Flow.MaxBufferedRecords = 4000
	cfg.Flow.MaxBufferedBytes = 1 * config.MiB
	cfg.Flow.RecordTimeout = 2 * time.Second
	cfg.Sink.Concurrency = 3
	cfg.Sink.Batch = config.Batch{MaxRecords: 500, MaxBytes: 256 * config.KiB, Linger: 100 * time.Millisecond}
	cfg.Sink.WriteTimeout = 5 * time.Second
	cfg.Sink.Retry = config.Retry{InitialBackoff: 50 * time.Millisecond, MaxBackoff: 1 * time.Second}
	// Quick to open and to probe, so the failing phase (15% of the run) opens
	// it and the recovered phase closes it within a second or two.
	cfg.Sink.Breaker = config.Breaker{FailureThreshold: 3, OpenFor: time.Second, HalfOpenSuccesses: 2, HalfOpenShare: 0.05}
	cfg.Commit.Interval = 500 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Observability.Listen = o.Listen
	cfg.DLQ.Topic = topic + ".dlq"
	if o.PGDSN != "" {
		cfg.Sink.Type = config.SinkPostgres
		cfg.Sink.Postgres = config.Postgres{DSN: config.Secret(o.PGDSN), Table: pgTable, Mode: config.ModeUpsert,
			KeyColumns: []string{"kafka_partition", "kafka_offset"}, Delivery: config.DeliveryAtLeastOnce,
			Columns: map[string]string{"id": "value.id", "customer": "value.customer", "amount": "value.amount",
				"kafka_partition": "$partition", "kafka_offset": "$offset", "created_at": "$timestamp"}}
		if err := createTable(ctx, o.PGDSN); err != nil {
			return Summary{}, err
		}
	} else {
		if o.OutPath == "" {
			dir, err := os.MkdirTemp("", "sluice-demo-")
			if err != nil {
				return Summary{}, err
			}
			o.OutPath = filepath.Join(dir, "orders.jsonl")
		}
		cfg.Sink.Type = config.SinkFile
		cfg.Sink.File = config.File{Path: o.OutPath, Columns: map[string]string{
			"id": "value.id", "amount": "value.amount", "partition": "$partition", "offset": "$offset"}}
	}

	phase := &atomic.Int32{}
	dl := &recordingDLQ{seen: map[record.Partition]map[int64]bool{}}
	var wrapped *phasedSink
	d, err := daemon.New(ctx, cfg, daemon.Options{
		Logger:       o.Logger,
		DeadLetterer: dl,
		WrapSink: func(s flow.Sink) flow.Sink {
			wrapped = &phasedSink{inner: s, phase: phase}
			return wrapped
		},
	})
	if err != nil {
		return Summary{}, err
	}

	prod := &producer{brokers: brokers, rate: o.Rate, produced: map[int32][]int64{}}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	prodCtx, stopProd := context.WithTimeout(runCtx, o.Duration*3/4)
	defer stopProd()

	g, gctx := errgroup.WithContext(context.WithoutCancel(ctx))
	_ = gctx
	daemonErr := make(chan error, 1)
	g.Go(func() error { err := d.Run(runCtx); daemonErr <- err; return nil })
	g.Go(func() error { return prod.run(prodCtx) })
	g.Go(func() error {
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var lastC, lastW int64
		for {
			select {
			case <-runCtx.Done():
				return nil
			case <-tick.C:
			}
			el := time.Since(start)
			frac := float64(el) / float64(o.Duration)
			switch {
			case frac < 0.25:
				phase.Store(phaseNormal)
			case frac < 0.40:
				phase.Store(phaseSlow)
			case frac < 0.55:
				phase.Store(phaseFailing)
			default:
				phase.Store(phaseRecovered)
			}
			st := d.Stats()
			c := st.Consumed
			paused, lag := 0, int64(0)
			for _, p := range st.Partitions {
				if p.Paused {
					paused++
				}
				if p.Lag > 0 {
					lag += p.Lag
				}
			}
			fmt.Fprintf(o.Out, "t=%3.0fs phase=%-13s produced=%-7d consumed/s=%-6d written/s=%-6d buffer=%3.0f%% paused=%d/%d lag=%-6d dlq=%-4d retries=%-4d breaker=%s (opens %d)\n",
				el.Seconds(), phaseNames[phase.Load()], prod.count(), c-lastC, st.Written-lastW, st.Buffer.Utilization*100,
				paused, len(st.Partitions), lag, st.DeadLettered, wrapped.failures.Load(), st.Breaker.State, st.Breaker.Opens)
			lastC, lastW = c, st.Written
			if el >= o.Duration {
				stopRun()
				return nil
			}
		}
	})
	_ = g.Wait()
	if err := <-daemonErr; err != nil {
		return Summary{}, fmt.Errorf("sluice stopped on an error: %w", err)
	}

	sum := Summary{Produced: prod.count(), PoisonInjected: prod.poison.Load(), Sink: cfg.Sink.Type}
	st := d.Stats()
	sum.Consumed = st.Consumed
	sum.Written, sum.DeadLettered = st.Written, st.DeadLettered
	sum.Pauses = st.Buffer.Pauses
	sum.PeakBufferBytes, sum.BudgetBytes = st.Buffer.PeakBytes, st.Buffer.MaxBytes
	sum.SinkRetries = wrapped.failures.Load()
	sum.BreakerOpens, sum.BreakerState = st.Breaker.Opens, st.Breaker.State

	committed, err := committedOffsets(brokers)
	if err != nil {
		return sum, err
	}
	var written map[record.Partition]map[int64]bool
	if o.PGDSN != "" {
		written, err = readTable(context.WithoutCancel(ctx), o.PGDSN)
		sum.Output = pgTable
	} else {
		written, err = readFile(o.OutPath)
		sum.Output = o.OutPath
	}
	if err != nil {
		return sum, err
	}
	for p, offs := range prod.produced {
		rp := record.Partition{Topic: topic, Partition: p}
		for _, off := range offs {
			switch {
			case off >= committed[p]:
				sum.Uncommitted++
			case written[rp][off]:
				sum.WrittenUnique++
			case dl.has(rp, off):
			default:
				sum.Lost++
			}
		}
	}
	return sum, nil
}

// phasedSink slows or fails the real sink according to the demo's phase. The
// daemon's circuit breaker wraps it, so its failures open the breaker.
type phasedSink struct {
	inner    flow.Sink
	phase    *atomic.Int32
	failures atomic.Int64
}

var errDemoOutage = errors.New("demo: the sink is failing on purpose (failing-sink phase)")

func (s *phasedSink) Write(ctx context.Context, b *record.Batch) error {
	switch s.phase.Load() {
	case phaseSlow:
		t := time.NewTimer(400 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &flow.TransientError{Err: ctx.Err()}
		}
	case phaseFailing:
		s.failures.Add(1)
		return &flow.TransientError{Err: errDemoOutage}
	}
	return s.inner.Write(ctx, b)
}

// recordingDLQ keeps the coordinates of dead-lettered records, for the final
// accounting. (A real deployment writes them to dlq.topic.)
type recordingDLQ struct {
	mu   sync.Mutex
	seen map[record.Partition]map[int64]bool
}

func (d *recordingDLQ) DeadLetter(_ context.Context, r *record.Record, _ *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := r.Part()
	if d.seen[p] == nil {
		d.seen[p] = map[int64]bool{}
	}
	d.seen[p][r.Offset] = true
	return nil
}

func (d *recordingDLQ) has(p record.Partition, off int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[p][off]
}

// producer writes JSON orders at a base rate with bursts of five times that
// rate, and about 2% poison records (broken JSON).
type producer struct {
	brokers []string
	rate    int

	mu       sync.Mutex
	produced map[int32][]int64
	n        atomic.Int64
	poison   atomic.Int64
}

func (p *producer) count() int64 { return p.n.Load() }

func (p *producer) run(ctx context.Context) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	const tick = 50 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	id := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n := p.rate * int(tick/time.Millisecond) / 1000
		if int(time.Since(start)/time.Second)%4 == 3 {
			n *= 5 // a burst
		}
		recs := make([]*kgo.Record, 0, n)
		for range n {
			id++
			var v []byte
			if rand.IntN(50) == 0 {
				v = []byte(fmt.Sprintf(`{"id": %d, "customer": "c-%d", "amount": `, id, id%97)) // truncated: poison
			} else {
				v = []byte(fmt.Sprintf(`{"id":%d,"customer":"c-%d","amount":%d.%02d,"currency":"EUR","items":[{"sku":"sku-%d","qty":%d}],"note":"synthetic order from sluice demo"}`,
					id, id%97, rand.IntN(500), rand.IntN(100), id%1000, 1+rand.IntN(5)))
			}
			recs = append(recs, &kgo.Record{Key: []byte(fmt.Sprintf("c-%d", id%97)), Value: v})
		}
		results := cl.ProduceSync(ctx, recs...)
		p.mu.Lock()
		for _, r := range results {
			if r.Err != nil {
				continue // not produced: not counted
			}
			p.produced[r.Record.Partition] = append(p.produced[r.Record.Partition], r.Record.Offset)
			p.n.Add(1)
			if len(r.Record.Value) > 0 && r.Record.Value[len(r.Record.Value)-1] == ' ' {
				p.poison.Add(1)
			}
		}
		p.mu.Unlock()
	}
}

func committedOffsets(brokers []string) (map[int32]int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("read the group's committed offsets: %w", err)
	}
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.Err == nil {
			out[o.Partition] = o.At
		}
	})
	return out, nil
}

func readFile(path string) (map[record.Partition]map[int64]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[record.Partition]map[int64]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Partition int32 `json:"partition"`
			Offset    int64 `json:"offset"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return nil, fmt.Errorf("%s: a line that is not JSON: %w", path, err)
		}
		p := record.Partition{Topic: topic, Partition: line.Partition}
		if out[p] == nil {
			out[p] = map[int64]bool{}
		}
		out[p][line.Offset] = true
	}
	return out, sc.Err()
}

func createTable(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("--pg-dsn: cannot connect to PostgreSQL (check host, port and credentials)")
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `DROP TABLE IF EXISTS `+pgTable+`;
CREATE TABLE `+pgTable+` (id bigint NOT NULL, customer text, amount numeric(12,2), kafka_partition int NOT NULL,
  kafka_offset bigint NOT NULL, created_at timestamptz, PRIMARY KEY (kafka_partition, kafka_offset))`)
	if err != nil {
		return fmt.Errorf("create %s: %w", pgTable, err)
	}
	return nil
}

func readTable(ctx context.Context, dsn string) (map[record.Partition]map[int64]bool, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("read back %s: cannot connect", pgTable)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT kafka_partition, kafka_offset FROM `+pgTable)
	if err != nil {
		return nil, err
	}
	out := map[record.Partition]map[int64]bool{}
	var part int32
	var off int64
	_, err = pgx.ForEachRow(rows, []any{&part, &off}, func() error {
		p := record.Partition{Topic: topic, Partition: part}
		if out[p] == nil {
			out[p] = map[int64]bool{}
		}
		out[p][off] = true
		return nil
	})
	return out, err
}
