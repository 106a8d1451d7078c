//go:build integration

package integration

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// deadLetterCounter is a DLQ that only counts: the outage test expects none.
type deadLetterCounter struct {
	mu      sync.Mutex
	n       int
	reasons map[string]int
}

func (d *deadLetterCounter) DeadLetter(_ context.Context, _ *record.Record, cause *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	if d.reasons == nil {
		d.reasons = map[string]int{}
	}
	d.reasons[cause.Reason]++
	return nil
}

func (d *deadLetterCounter) count() (int, map[string]int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n, d.reasons
}

// callCounter counts the writes that reach the PostgreSQL sink, that is the
// writes the breaker let through.
type callCounter struct {
	inner  flow.Sink
	calls  atomic.Int64
	failed atomic.Int64
}

func (c *callCounter) Write(ctx context.Context, b *record.Batch) error {
	c.calls.Add(1)
	err := c.inner.Write(ctx, b)
	if err != nil {
		c.failed.Add(1)
	}
	return err
}

// PostgreSQL stopped mid-stream (pg_ctl stop -m fast) and started again 10 s
// later: the breaker opens, every partition is paused while it is open, /readyz
// says why, no record reaches the DLQ for the outage, memory stays within the
// budget, the breaker closes, lag drains and every record is in the table.
// The database is a private server of this test, so the shared one keeps
// serving the tests that run in parallel.
func TestOutagePostgresStoppedMidStream(t *testing.T) {
	brokers := testenv.Kafka(t)
	pg := testenv.NewPrivatePostgres(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	// The private server is thrown away with the test: no table to drop (and
	// NewTable's connection would not survive the outage to drop it).
	table := testenv.UniqueName(t, "sluice")
	if _, err := testenv.Postgres(t, pg.DSN).Exec(t.Context(), "CREATE TABLE public."+table+" "+ordersTable); err != nil {
		t.Fatalf("create table: %v", err)
	}
	const (
		n        = 40_000
		downFor  = 10 * time.Second
		openFor  = 2 * time.Second
		deadline = 3 * time.Minute
	)
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	produceOrders(t, brokers, topic, n, order)

	cfg := pgConfig(brokers, group, topic, pg.DSN, table, config.ModeInsert)
	cfg.Sink.Batch.MaxRecords = 500
	cfg.Sink.WriteTimeout = 5 * time.Second
	cfg.Flow.MaxBufferedRecords = 5000
	cfg.Flow.MaxBufferedBytes = 1 * config.MiB
	cfg.Flow.RateLimit = config.RateLimit{RecordsPerSecond: 4000, Burst: 500} // about 10 s of stream: the outage is mid-stream
	cfg.Sink.Breaker = config.Breaker{FailureThreshold: 3, OpenFor: openFor, HalfOpenSuccesses: 2, HalfOpenShare: 0.05}

	reg := prometheus.NewRegistry()
	dlq := &deadLetterCounter{}
	var pgCalls *callCounter
	d, err := daemon.New(ctx, cfg, daemon.Options{
		Logger:       zaptest.NewLogger(t).Named(group),
		Registry:     reg,
		DeadLetterer: dlq,
		WrapSink:     func(s flow.Sink) flow.Sink { pgCalls = &callCounter{inner: s}; return pgCalls },
	})
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	stopped := false
	stopDaemon := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stop()
		select {
		case err := <-done:
			return err
		case <-time.After(time.Minute):
			t.Fatal("sluice did not stop within a minute")
			return nil
		}
	}
	t.Cleanup(func() { _ = stopDaemon() })

	conn := testenv.Postgres(t, pg.DSN)
	waitFor := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		end := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(end) || ctx.Err() != nil {
				t.Fatalf("after %v: %s", limit, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("5,000 rows written before the outage", time.Minute, func() bool {
		return count(t, conn, "SELECT count(*) FROM "+table) >= 5000
	})
	// conn goes with the server: the checks at the end use a new one.

	// The outage. A sampler watches the daemon while it lasts and until the
	// breaker closes: every sample taken while the breaker stayed open must
	// find every assigned partition paused.
	var (
		smu                                   sync.Mutex
		openSamples, notPaused, notReadyWrong int
		readyMsg                              string
		peakBytes, budget                     int64
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			b1 := d.Breaker().Status()
			parts := d.Consumer().Stats()
			ready := d.Ready()
			b2 := d.Breaker().Status()
			gs := d.Gate().Stats()
			smu.Lock()
			peakBytes, budget = max(peakBytes, gs.Bytes, gs.PeakBytes), gs.MaxBytes
			if b1.State == sink.StateOpen && b2.State == sink.StateOpen && b1.Opens == b2.Opens {
				openSamples++
				for _, p := range parts {
					if !p.Paused || !strings.Contains(p.PausedBy, "breaker") {
						notPaused++
					}
				}
				if len(parts) == 0 {
					notPaused++
				}
				if ready == nil || !strings.Contains(ready.Error(), "circuit breaker open since") {
					notReadyWrong++
				} else {
					readyMsg = ready.Error()
				}
			}
			smu.Unlock()
		}
	})

	rowsBefore := count(t, conn, "SELECT count(*) FROM "+table)
	callsBefore := pgCalls.calls.Load()
	downAt := time.Now()
	pg.Stop()
	waitFor("the breaker opened after PostgreSQL stopped", 30*time.Second, func() bool { return d.Breaker().Opens() > 0 })
	openedAfter := time.Since(downAt)
	time.Sleep(time.Until(downAt.Add(downFor)))
	callsDuring := pgCalls.calls.Load() - callsBefore
	pg.Start()
	upAt := time.Now()
	waitFor("the breaker closed after PostgreSQL came back", time.Minute, func() bool {
		return d.Breaker().State() == sink.StateClosed
	})
	closedAfter := time.Since(upAt)
	stopSampling()
	sampler.Wait()

	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	st := d.Stats()
	if err := stopDaemon(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}

	opens := d.Breaker().Opens()
	if opens < 1 {
		t.Errorf("the breaker never opened")
	}
	if got := testutil.ToFloat64(d.Metrics().BreakerTransitions.WithLabelValues("open")); got != float64(opens) {
		t.Errorf("circuit_breaker_transitions_total{to=open} = %v, want %d", got, opens)
	}
	if got := testutil.ToFloat64(d.Metrics().BreakerState.WithLabelValues(config.SinkPostgres)); got != 0 {
		t.Errorf("circuit_breaker_state = %v at the end, want 0 (closed)", got)
	}
	smu.Lock()
	if openSamples == 0 {
		t.Errorf("no sample caught the breaker open")
	}
	if notPaused > 0 {
		t.Errorf("%d partition samples not paused by the breaker while it was open (%d samples)", notPaused, openSamples)
	}
	if notReadyWrong > 0 {
		t.Errorf("%d samples while open where /readyz did not report the open breaker", notReadyWrong)
	}
	if peakBytes > budget || st.Buffer.PeakBytes > st.Buffer.MaxBytes {
		t.Errorf("buffered bytes peaked at %d (gate peak %d), budget %d", peakBytes, st.Buffer.PeakBytes, budget)
	}
	smu.Unlock()
	if dl, reasons := dlq.count(); dl != 0 || st.DeadLettered != 0 {
		t.Errorf("%d records dead-lettered (%v; pipeline says %d), want 0: the outage is the sink's fault", dl, reasons, st.DeadLettered)
	}
	// While down, the sink saw the writes up to the threshold (each lane's
	// batch in flight) and about one probe per open_for; not a retry loop.
	if limit := int64(cfg.Sink.Concurrency*2 + int(downFor/openFor)*2 + 4); callsDuring > limit {
		t.Errorf("%d writes reached PostgreSQL during the %v outage, want at most %d", callsDuring, downFor, limit)
	}
	fails := testutil.ToFloat64(d.Metrics().SinkWriteErrors.WithLabelValues("transient"))
	if fails > 400 {
		t.Errorf("%v transient write errors seen by the lanes (refusals included), want a few per open_for per lane", fails)
	}

	check := testenv.Postgres(t, pg.DSN)
	distinct := count(t, check, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table)
	rows := count(t, check, "SELECT count(*) FROM "+table)
	if distinct != n {
		t.Errorf("%d distinct records in the table, produced %d", distinct, n)
	}
	t.Logf("rows before the outage %d; breaker opened %v after the stop, %d opens; %d writes reached PostgreSQL while down (%d failed in all), %v transient errors at the lanes; closed %v after the start; %d open samples; not ready: %q; peak buffer %d of %d bytes; %d rows for %d records",
		rowsBefore, openedAfter.Round(time.Millisecond), opens, callsDuring, pgCalls.failed.Load(), fails, closedAfter.Round(time.Millisecond),
		openSamples, readyMsg, max(peakBytes, st.Buffer.PeakBytes), budget, rows, distinct)
}
