//go:build chaos

package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestBrokerRestart stops the Kafka broker (SIGTERM: a controlled shutdown)
// mid-stream, keeps it down for 15 s (6 s in -short) and starts it again on
// the same ports and data, while a producer keeps producing (its records wait
// in the producer, which retries). The broker is a private one of the test
// (testenv.NewPrivateKafka), so the shared broker keeps serving the tests
// that run in parallel; PostgreSQL is the shared one.
//
// It asserts: the same sluice process carries on (it reconnects; it is not
// restarted and does not exit); no record is lost; in at-least-once insert
// mode the duplicates (rows written twice, because the commits failed while
// the broker was down, or a rejoin re-delivered from the last commit) stay
// within the in-flight window: what sluice may have fetched beyond its last
// commit, flow.max_buffered_records plus what the client's fetch buffers
// (max_concurrent_fetches × fetch_max_bytes) hold of these records. The
// duplicates are counted and reported.
func TestBrokerRestart(t *testing.T) {
	t.Parallel()
	dsn := testenv.PostgresDSN(t)
	downFor, rate := 15*time.Second, 3000.0
	if testing.Short() {
		downFor = 6 * time.Second
	}
	f := newFigures(t, "broker restart", "Kafka down "+downFor.String()+", insert at-least-once")
	k := testenv.NewPrivateKafka(t)
	brokers := k.Brokers
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.UniqueName(t, "chaos") // the private broker goes with the test: no group to delete
	table := testenv.NewTable(t, dsn, ordersDDL)

	cfg := baseConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.FetchMaxBytes, cfg.PartitionFetchMaxBytes = 1<<20, 256<<10
	cfg.MaxBufferedRecords = 5000
	const recordSize = 150 // an order's key and value, about
	window := int64(cfg.MaxBufferedRecords) + int64(cfg.MaxConcurrentFetches)*cfg.FetchMaxBytes/recordSize
	f.RSSBound, _ = memoryBound(t, cfg, 200)

	p := startSluice(t, cfg, "sluice")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	prod := newProducer(t, brokers, topic)
	load := prod.paced(ctx, 0, rate, 0, keyed(topic))
	t.Cleanup(func() { load.stop(); <-load.done })

	waitRowsIn(t, dsn, table, 5000, time.Minute)
	rowsBefore := count(t, pgConn(t, dsn), "SELECT count(*) FROM "+table)
	downAt := time.Now()
	k.Stop()
	t.Logf("broker stopped in %v with %d rows written", time.Since(downAt).Round(time.Millisecond), rowsBefore)
	time.Sleep(time.Until(downAt.Add(downFor)))
	if !p.alive() {
		t.Fatalf("sluice exited while the broker was down (%v)", p.state)
	}
	k.Start()
	upAt := time.Now()
	t.Logf("broker up again %v after the stop", upAt.Sub(downAt).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // the producer goes on a little after the restart
	produced := load.finish(prod)
	waitLagZero(t, adm, group, topic, 5*time.Minute, p.alive)
	f.Drain = time.Since(upAt)
	m := p.mon.lastMetrics()
	if !p.alive() {
		t.Fatalf("sluice exited (%v): it should have reconnected on its own", p.state)
	}
	pid := p.pid
	if code, took := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
		f.errorf(t, "sluice exited with %d after SIGTERM (%v), want 0", code, took)
	}

	l := account(t, brokers, topic, group+".dlq", pgConn(t, dsn), table)
	f.fromLedger(l)
	f.PeakRSS = p.mon.peakRSS()
	f.Pauses = int64(m.PausesGate + m.PausesBreaker)
	f.BreakerOpens = int64(m.BreakerOpens)
	f.note("one sluice process (pid %d) throughout, %.0f rebalances, %.0f failed commits", pid, m.Rebalances, m.CommitErrors)
	f.note("%d duplicates, in-flight window %d records", l.duplicates, window)
	l.checkNoLoss(t, f)
	if l.produced != produced {
		f.errorf(t, "the topic holds %d records, the producer had %d acknowledged", l.produced, produced)
	}
	if l.dead > 0 {
		f.errorf(t, "%d records in the DLQ topic, want none", l.dead)
	}
	if l.duplicates > window {
		f.errorf(t, "%d duplicate rows, more than the in-flight window of %d records", l.duplicates, window)
	}
}
