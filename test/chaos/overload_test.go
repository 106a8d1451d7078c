//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestOverload produces uncompressed records of about 1 KiB ten times faster than sluice
// may write them (flow.rate_limit) for 60 s (15 s in -short), with small
// budgets so that the memory formula is tight. It asserts: the peak RSS of the
// process (VmHWM) stays within the README's formula for the configuration;
// sluice_buffer_utilization_ratio, scraped four times a second, never exceeds
// 1, and the gate's own peak (/status buffer.peak_bytes) never exceeds its
// budget; the lag grows in Kafka (at the end of the load the committed lag is
// larger than everything the gate may hold); nothing is lost.
//
// The drain: with the rate limit in place the backlog would take nine times
// the load's duration to drain, and sluice reads its configuration only at
// start, so when the load stops the rate-limited process is stopped with
// SIGTERM (it must exit 0 with a full gate) and a process without the limit
// drains the backlog; its peak RSS is held to the same bound.
func TestOverload(t *testing.T) {
	t.Parallel()
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	loadFor, limit := 60*time.Second, 2000.0
	if testing.Short() {
		loadFor, limit = 15*time.Second, 1500.0
	}
	rate := 10 * limit
	f := newFigures(t, "overload", fmt.Sprintf("%.0f/s into a %.0f/s sink for %v", rate, limit, loadFor))
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, ordersDDL)

	cfg := baseConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.FetchMaxBytes, cfg.PartitionFetchMaxBytes, cfg.MaxConcurrentFetches = 4<<20, 1<<20, 2
	cfg.MaxPollRecords = 500
	cfg.MaxBufferedRecords, cfg.MaxBufferedBytes = 20000, 4<<20
	cfg.BatchRecords, cfg.BatchBytes = 500, 1<<20
	cfg.RateLimit, cfg.Burst = limit, 500

	padding := strings.Repeat("x", 850)
	big := func(i int64) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: strconv.AppendInt(nil, i, 10),
			Value: fmt.Appendf(nil, `{"id":%d,"amount":%d.%02d,"seq":%d,"note":"%s"}`, i, i%1000, i%100, i, padding)}
	}
	largest := len(big(1<<40).Value) + 14
	bound, expr := memoryBound(t, cfg, largest)
	f.RSSBound = bound

	p1 := startSluice(t, cfg, "limited")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	prod := newProducer(t, brokers, topic) // uncompressed, as every producer here
	start := time.Now()
	load := prod.paced(ctx, 0, rate, 0, big)
	t.Cleanup(func() { load.stop(); <-load.done })

	// The committed lag, once a second while the load lasts.
	var (
		lmu    sync.Mutex
		maxLag int64
	)
	lagCtx, stopLag := context.WithCancel(ctx)
	var lagWatch sync.WaitGroup
	lagWatch.Go(func() {
		for lagCtx.Err() == nil {
			if l, err := tryLag(lagCtx, adm, group, topic); err == nil {
				lmu.Lock()
				maxLag = max(maxLag, l)
				lmu.Unlock()
			}
			select {
			case <-lagCtx.Done():
			case <-time.After(time.Second):
			}
		}
	})
	time.Sleep(time.Until(start.Add(loadFor)))
	produced := load.finish(prod)
	loadTook := time.Since(start)
	stopLag()
	lagWatch.Wait()
	loadEnd := time.Now()
	lagAtEnd := lagOf(t, adm, group, topic)
	if !p1.alive() {
		t.Fatalf("the rate-limited sluice exited under overload (%v)", p1.state)
	}
	code, took := p1.terminate(cfg.ShutdownTimeout + 10*time.Second)
	if code != 0 {
		f.errorf(t, "the rate-limited sluice exited with %d after SIGTERM with a full gate (%v), want 0", code, took)
	}

	drain := cfg
	drain.RateLimit, drain.Burst = 0, 0
	p2 := startSluice(t, drain, "drain")
	waitLagZero(t, adm, group, topic, 10*time.Minute, p2.alive)
	f.Drain = time.Since(loadEnd)
	m2 := p2.mon.lastMetrics()
	if code, took := p2.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
		f.errorf(t, "the draining sluice exited with %d after SIGTERM (%v), want 0", code, took)
	}

	// Buffer: the metric never above 1; the gate's peak within its budget.
	var maxUtil, pauses float64
	goMem := map[string]string{}
	for _, p := range []*proc{p1, p2} {
		var heap, sys float64
		for _, s := range p.mon.metricSamples() {
			maxUtil = max(maxUtil, s.m.Utilization)
			heap, sys = max(heap, s.m.HeapInuse), max(sys, s.m.GoSys)
		}
		goMem[p.name] = fmt.Sprintf("heap in use up to %s, Go runtime total up to %s", mib(int64(heap)), mib(int64(sys)))
		pauses += p.mon.lastMetrics().PausesGate + p.mon.lastMetrics().PausesBreaker
		for _, s := range p.mon.statusSamples() {
			if s.s.Buffer.PeakBytes > s.s.Buffer.MaxBytes {
				f.errorf(t, "%s: /status buffer.peak_bytes %d above max_bytes %d", p.name, s.s.Buffer.PeakBytes, s.s.Buffer.MaxBytes)
				break
			}
		}
	}
	if maxUtil > 1 {
		f.errorf(t, "sluice_buffer_utilization_ratio reached %.3f, above 1", maxUtil)
	}
	if len(p1.mon.metricSamples()) == 0 {
		f.errorf(t, "no /metrics sample of the rate-limited process")
	}
	peak1, peak2 := p1.mon.peakRSS(), p2.mon.peakRSS()
	f.PeakRSS = max(peak1, peak2)
	if peak1 > bound {
		f.errorf(t, "peak RSS under overload %s, above the README's bound %s = %s", mib(peak1), mib(bound), expr)
	}
	if peak2 > bound {
		f.errorf(t, "peak RSS while draining %s, above the README's bound %s = %s", mib(peak2), mib(bound), expr)
	}
	if lagAtEnd <= int64(cfg.MaxBufferedRecords) {
		f.errorf(t, "committed lag %d at the end of the load, not above the %d records the gate may hold: the backlog did not stay in Kafka (the producer managed %.0f records/s)",
			lagAtEnd, cfg.MaxBufferedRecords, float64(produced)/loadTook.Seconds())
	}

	l := account(t, brokers, topic, group+".dlq", pgConn(t, dsn), table)
	f.fromLedger(l)
	f.Pauses = int64(pauses)
	f.note("producer %.0f records/s for %v, sink limited to %.0f/s", float64(produced)/loadTook.Seconds(), loadTook.Round(time.Second), limit)
	f.note("records of %d B; bound %s = %s", largest, mib(bound), expr)
	f.note("peak RSS %s under overload (%s), %s while draining (%s)", mib(peak1), goMem[p1.name], mib(peak2), goMem[p2.name])
	f.note("max sluice_buffer_utilization_ratio %.3f", maxUtil)
	f.note("committed lag %d at the end of the load (max %d seen); the rate-limited process stopped in %v", lagAtEnd, maxLag, took.Round(100*time.Millisecond))
	f.note("drained by a process without the rate limit, %.0f rows written by it", m2.Written)
	l.checkNoLoss(t, f)
	if l.produced != produced {
		f.errorf(t, "the topic holds %d records, the producer had %d acknowledged", l.produced, produced)
	}
	if l.dead > 0 {
		f.errorf(t, "%d records in the DLQ topic, want none", l.dead)
	}
}
