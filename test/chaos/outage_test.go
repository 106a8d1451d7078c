//go:build chaos

package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestSinkOutage stops PostgreSQL (pg_ctl stop -m fast) for 20 s (8 s in
// -short) while a producer keeps writing to the topic, then starts it again.
// The database is a private server of the test, so the shared one keeps
// serving the tests that run in parallel.
//
// It asserts, from the outside (the binary's /status and /metrics, its RSS in
// /proc): the breaker opens; while it is open every assigned partition is
// paused; memory is flat during the outage (no more than 16 MiB above its level
// when the breaker opened; the peak against the README's formula is reported,
// and asserted in TestOverload); nothing reaches
// the DLQ topic for the outage; no record is lost; the lag drains after the
// restart (its time is reported, not asserted).
func TestSinkOutage(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	downFor, rate := 20*time.Second, 3000.0
	if testing.Short() {
		downFor = 8 * time.Second
	}
	f := newFigures(t, "sink outage", "PostgreSQL down "+downFor.String())
	pg := testenv.NewPrivatePostgres(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.UniqueName(t, "chaos")
	setup := pgConn(t, pg.DSN)
	if _, err := setup.Exec(t.Context(), "CREATE TABLE public."+table+" "+ordersDDL); err != nil {
		t.Fatal(err)
	}

	cfg := baseConfig(brokers, group, topic, pg.DSN, table, config.ModeInsert)
	cfg.MaxBufferedRecords, cfg.MaxBufferedBytes = 5000, 2<<20
	cfg.BatchRecords = 500
	cfg.WriteTimeout = 5 * time.Second
	cfg.BreakerThreshold, cfg.BreakerOpenFor, cfg.BreakerHalfOpenSuccesses = 3, 2*time.Second, 2
	f.RSSBound, _ = memoryBound(t, cfg, 200)

	p := startSluice(t, cfg, "sluice")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	prod := newProducer(t, brokers, topic)
	load := prod.paced(ctx, 0, rate, 0, keyed(topic))
	t.Cleanup(func() { load.stop(); <-load.done })

	waitRowsIn(t, pg.DSN, table, 5000, time.Minute)

	downAt := time.Now()
	pg.Stop()
	openAt := waitStatus(t, p, 30*time.Second, "the breaker to open", func(s statusDoc) bool { return s.Breaker.State == "open" })
	t.Logf("breaker open %v after PostgreSQL stopped", openAt.Sub(downAt).Round(time.Millisecond))
	time.Sleep(time.Until(downAt.Add(downFor)))
	pg.Start()
	upAt := time.Now()
	closedAt := waitStatus(t, p, 2*time.Minute, "the breaker to close", func(s statusDoc) bool { return s.Breaker.State == "closed" })
	time.Sleep(3 * time.Second) // the producer goes on a little after the recovery
	produced := load.finish(prod)
	// Time to drain: from the restart of PostgreSQL until everything is committed.
	waitLagZero(t, adm, group, topic, 5*time.Minute, p.alive)
	f.Drain = time.Since(upAt)
	m := p.mon.lastMetrics()
	if code, took := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
		f.errorf(t, "sluice exited with %d after SIGTERM (%v), want 0", code, took)
	}

	// While the breaker was open, every partition was paused. A sample at the
	// edge of a transition may catch the breaker open and the pause not yet
	// applied (or lifted), so only samples between two open ones count.
	sts := p.mon.statusSamples()
	openSamples, notPaused := 0, 0
	for i := 1; i+1 < len(sts); i++ {
		if sts[i-1].s.Breaker.State != "open" || sts[i].s.Breaker.State != "open" || sts[i+1].s.Breaker.State != "open" {
			continue
		}
		openSamples++
		if len(sts[i].s.Partitions) == 0 {
			notPaused++
		}
		for _, pt := range sts[i].s.Partitions {
			if !pt.Paused {
				notPaused++
			}
		}
	}
	if openSamples == 0 {
		f.errorf(t, "no /status sample caught the breaker open")
	}
	if notPaused > 0 {
		f.errorf(t, "%d partition samples not paused while the breaker was open (%d samples)", notPaused, openSamples)
	}

	// Memory during the outage: flat from the moment the breaker opened.
	during := p.mon.rssBetween(openAt, upAt)
	atOpen := int64(0)
	if len(during) > 0 {
		atOpen = during[0].rss
	}
	growth := maxRSS(during) - atOpen
	f.PeakRSS = p.mon.peakRSS()
	if growth > 16<<20 {
		f.errorf(t, "RSS grew by %s during the outage (from %s when the breaker opened to %s): not flat", mib(growth), mib(atOpen), mib(maxRSS(during)))
	}

	l := account(t, brokers, topic, group+".dlq", pgConn(t, pg.DSN), table)
	f.fromLedger(l)
	f.BreakerOpens = int64(m.BreakerOpens)
	f.Pauses = int64(m.PausesBreaker + m.PausesGate)
	f.note("breaker open %v after the stop, closed %v after the start", openAt.Sub(downAt).Round(100*time.Millisecond), closedAt.Sub(upAt).Round(100*time.Millisecond))
	f.note("RSS %s when the breaker opened, at most %s during the outage", mib(atOpen), mib(maxRSS(during)))
	f.note("%d /status samples with the breaker open, all partitions paused in %d", openSamples, openSamples-min(openSamples, notPaused))
	f.note("%.0f transient write errors seen by the lanes", m.TransientErrors)
	l.checkNoLoss(t, f)
	if l.produced != produced {
		f.errorf(t, "the topic holds %d records, the producer had %d acknowledged", l.produced, produced)
	}
	if l.dead > 0 || m.DeadLettered > 0 {
		f.errorf(t, "%d records in the DLQ topic (metric: %.0f), want none: the outage is the sink's fault", l.dead, m.DeadLettered)
	}
	if m.BreakerOpens < 1 {
		f.errorf(t, "sluice_circuit_breaker_transitions_total{to=\"open\"} = %v, want at least 1", m.BreakerOpens)
	}
}

// waitStatus waits, at most limit, until a /status read satisfies cond, and
// returns when.
func waitStatus(t *testing.T, p *proc, limit time.Duration, what string, cond func(statusDoc) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if st, err := p.status(); err == nil && cond(st) {
			return time.Now()
		}
		if !p.alive() {
			t.Fatalf("sluice %s exited (%v) while waiting for %s", p.name, p.state, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("waited %v for %s", limit, what)
	return time.Time{}
}

// waitRowsIn waits, at most limit, until table holds at least n rows.
func waitRowsIn(t *testing.T, dsn, table string, n int64, limit time.Duration) {
	t.Helper()
	conn := pgConn(t, dsn)
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	for {
		var got int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&got); err == nil && got >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("fewer than %d rows in %s after %v", n, table, limit)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
