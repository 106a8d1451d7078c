//go:build chaos

package chaos

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// envSoakFor overrides the soak's duration (default 10m), e.g. to try it.
const envSoakFor = "SLUICE_CHAOS_SOAK_FOR"

// TestSoak (make soak only: it runs when SLUICE_CHAOS_SOAK is set) first
// measures sluice's maximum rate into a private PostgreSQL (1,000,000 records
// written as fast as it can), then produces at half that rate for 10 minutes
// while PostgreSQL hiccups every minute (stopped for 5 s, then started). It
// reports the RSS and the goroutine count of the first and of the last minute
// and asserts they are flat: the last minute's mean RSS at most 1.5 times the
// first minute's plus 16 MiB (the peak against the README's formula is
// reported); the last
// minute's most goroutines at most 1.25 times the first minute's plus 10. No
// record may be lost and none may reach the DLQ topic (a hiccup is the sink's
// fault).
func TestSoak(t *testing.T) {
	if !soakEnabled() {
		t.Skip("the soak runs with make soak (SLUICE_CHAOS_SOAK=1): 10 minutes, not part of make test or make chaos")
	}
	soakFor := 10 * time.Minute
	if v := os.Getenv(envSoakFor); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 2*time.Minute {
			t.Fatalf("%s=%q: want a duration of at least 2m", envSoakFor, v)
		}
		soakFor = d
	}
	const (
		hiccupEvery = time.Minute
		hiccupFor   = 5 * time.Second
		calibrate   = 1_000_000
	)
	brokers := testenv.Kafka(t)
	f := newFigures(t, "soak", soakFor.String()+", PostgreSQL down 5 s a minute")
	pg := testenv.NewPrivatePostgres(t)
	adm := testenv.Admin(t, brokers)
	setup := pgConn(t, pg.DSN)
	newTable := func() string {
		table := testenv.UniqueName(t, "chaos")
		if _, err := setup.Exec(t.Context(), "CREATE TABLE public."+table+" "+ordersDDL); err != nil {
			t.Fatal(err)
		}
		return table
	}

	// The maximum rate: a backlog written as fast as sluice can.
	calTopic, calGroup, calTable := testenv.NewTopic(t, brokers, 6), testenv.NewGroup(t, brokers), newTable()
	testenv.DeleteTopicAtEnd(t, adm, calGroup+".dlq")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	newProducer(t, brokers, calTopic).produceN(ctx, 0, calibrate, keyed(calTopic))
	calCfg := baseConfig(brokers, calGroup, calTopic, pg.DSN, calTable, config.ModeInsert)
	cal := startSluice(t, calCfg, "calibrate")
	waitWritten(t, cal, time.Minute)
	first := time.Now()
	waitLagZero(t, adm, calGroup, calTopic, 10*time.Minute, cal.alive)
	maxRate := calibrate / time.Since(first).Seconds()
	cal.terminate(calCfg.ShutdownTimeout + 10*time.Second)
	rate := maxRate / 2
	t.Logf("maximum rate %.0f records/s: soaking at %.0f records/s for %v", maxRate, rate, soakFor)

	// The soak.
	topic, group, table := testenv.NewTopic(t, brokers, 6), testenv.NewGroup(t, brokers), newTable()
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	cfg := baseConfig(brokers, group, topic, pg.DSN, table, config.ModeInsert)
	cfg.BreakerThreshold, cfg.BreakerOpenFor, cfg.BreakerHalfOpenSuccesses = 3, 2*time.Second, 2
	cfg.WriteTimeout = 5 * time.Second
	f.RSSBound, _ = memoryBound(t, cfg, 200)
	p := startSluice(t, cfg, "soak")
	prod := newProducer(t, brokers, topic)
	start := time.Now()
	load := prod.paced(ctx, 0, rate, 0, keyed(topic))
	t.Cleanup(func() { load.stop(); <-load.done })
	hiccups := 0
	for next := start.Add(hiccupEvery / 2); next.Add(hiccupFor).Before(start.Add(soakFor)); next = next.Add(hiccupEvery) {
		time.Sleep(time.Until(next))
		if !p.alive() {
			t.Fatalf("sluice exited during the soak (%v)", p.state)
		}
		pg.Stop()
		time.Sleep(hiccupFor)
		pg.Start()
		hiccups++
		t.Logf("hiccup %d at %v; lag %d", hiccups, time.Since(start).Round(time.Second), lagOf(t, adm, group, topic))
	}
	time.Sleep(time.Until(start.Add(soakFor)))
	produced := load.finish(prod)
	end := time.Now()
	waitLagZero(t, adm, group, topic, 10*time.Minute, p.alive)
	f.Drain = time.Since(end)
	m := p.mon.lastMetrics()
	if code, took := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
		f.errorf(t, "sluice exited with %d after SIGTERM (%v), want 0", code, took)
	}

	// First and last minute.
	firstRSS := p.mon.rssBetween(start, start.Add(time.Minute))
	lastRSS := p.mon.rssBetween(end.Add(-time.Minute), end)
	var firstG, lastG float64
	for _, s := range p.mon.metricSamples() {
		switch {
		case s.at.After(start) && s.at.Before(start.Add(time.Minute)):
			firstG = max(firstG, s.m.Goroutines)
		case s.at.After(end.Add(-time.Minute)) && s.at.Before(end):
			lastG = max(lastG, s.m.Goroutines)
		}
	}
	l := accountInSQL(t, brokers, topic, group+".dlq", pgConn(t, pg.DSN), table)
	f.fromLedger(l)
	f.PeakRSS = p.mon.peakRSS()
	f.BreakerOpens = int64(m.BreakerOpens)
	f.Pauses = int64(m.PausesGate + m.PausesBreaker)
	f.note("maximum rate %.0f records/s measured first; soak at %.0f records/s, %d hiccups", maxRate, rate, hiccups)
	f.note("RSS first minute mean %s (max %s), last minute mean %s (max %s)",
		mib(meanRSS(firstRSS)), mib(maxRSS(firstRSS)), mib(meanRSS(lastRSS)), mib(maxRSS(lastRSS)))
	f.note("goroutines first minute max %.0f, last minute max %.0f", firstG, lastG)
	l.checkNoLoss(t, f)
	if l.produced != produced {
		f.errorf(t, "the topic holds %d records, the producer had %d acknowledged", l.produced, produced)
	}
	if l.dead > 0 {
		f.errorf(t, "%d records in the DLQ topic, want none: the hiccups are the sink's fault", l.dead)
	}
	if len(firstRSS) == 0 || len(lastRSS) == 0 || firstG == 0 || lastG == 0 {
		t.Fatalf("too few samples: %d and %d RSS, goroutines %v and %v", len(firstRSS), len(lastRSS), firstG, lastG)
	}
	if a, b := meanRSS(firstRSS), meanRSS(lastRSS); float64(b) > 1.5*float64(a)+16<<20 {
		f.errorf(t, "RSS not flat: last minute's mean %s against the first minute's %s", mib(b), mib(a))
	}
	if lastG > 1.25*firstG+10 {
		f.errorf(t, "goroutines not flat: %.0f in the last minute against %.0f in the first", lastG, firstG)
	}
}
