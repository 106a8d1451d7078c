//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// poisonDDL has the CHECK the violating records break: PostgreSQL rejects
// them (SQLSTATE 23514), the records' fault.
const poisonDDL = "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"

// badKind says what is wrong with record i of the poison flood: 5% of the
// records, half of them malformed JSON (reason decode), half violating the
// table's CHECK (reason sink_rejected, code 23514). "" is a good record.
func badKind(i int64) string {
	switch i % 40 {
	case 7:
		return flow.ReasonDecode
	case 27:
		return flow.ReasonSinkRejected
	}
	return ""
}

// poisonRecord is record i of a run; with poison false every record is good.
func poisonRecord(topic string, poison bool) func(i int64) *kgo.Record {
	return func(i int64) *kgo.Record {
		v := order(i)
		if poison {
			switch badKind(i) {
			case flow.ReasonDecode:
				v = fmt.Appendf(nil, `{"id":%d,"amount":1.00,"seq":%d`, i, i) // unterminated
			case flow.ReasonSinkRejected:
				v = fmt.Appendf(nil, `{"id":%d,"amount":-%d.50,"seq":%d}`, i, i%1000+1, i)
			}
		}
		return &kgo.Record{Topic: topic, Partition: int32(i % 6), Key: strconv.AppendInt(nil, i, 10), Value: v}
	}
}

// TestPoisonFlood writes N records (1,000,000; 30,000 in -short) of which 5%
// are poison, half malformed JSON and half rows that violate a CHECK
// constraint, and the same number of good records to a clean topic, and runs
// a fresh sluice on each in turn (clean, then poison; in the full run twice
// over for insert mode), each timed from its first written row until its last
// good row is written (its /status count), then waited for until its group is
// committed to the end (reported: it adds up to a commit interval). Both runs
// use sluice's default batch and budget. It asserts: exactly the bad records
// are in the DLQ topic, each with its reason (decode, or sink_rejected with SQLSTATE
// 23514), none twice; every good record is in the table and no bad one;
// nothing lost.
//
// The sink finds a batch's CHECK violators with its screen (one query over the
// batch; in insert mode only over the rows its prescreen flags), and from the
// first violator on writes the rest of each batch in the same transaction
// (internal/sink/postgres/screen.go, prescreen.go). Upsert runs in the full
// run only.
//
// Throughput: the good records' rate of the poison runs against the clean
// runs' rate, measured in the same scenario; the aim is at least 0.8. A short
// run lasts a second or two on a shared machine, so there the ratio is only
// reported; the full run (make chaos) asserts it, where the runs are longer,
// alternate (insert mode) and run before the parallel scenarios start.
func TestPoisonFlood(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	n, rounds := int64(1_000_000), 2
	modes := []string{config.ModeInsert, config.ModeUpsert}
	if testing.Short() {
		n, rounds, modes = 30_000, 1, modes[:1]
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			if mode == config.ModeUpsert {
				rounds = 1
			}
			poisonFlood(t, brokers, dsn, mode, n, rounds)
		})
	}
}

func poisonFlood(t *testing.T, brokers []string, dsn, mode string, n int64, rounds int) {
	f := newFigures(t, "poison flood", "5% malformed or violating, "+mode)
	adm := testenv.Admin(t, brokers)
	ddl := poisonDDL
	if mode == config.ModeUpsert {
		ddl = "(id bigint PRIMARY KEY, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"
	}

	type run struct {
		rate     float64 // good records per second
		rejected float64 // sink writes the database refused
		bound    int64
		took     time.Duration // from the first row written to the last good one
		drained  time.Duration // from the first row written to the group committed to the end
		l        *ledger
		peakRSS  int64
		poisoned bool
	}
	var runs []run
	oneRun := func(poison bool) run {
		topic := testenv.NewTopic(t, brokers, 6)
		group := testenv.NewGroup(t, brokers)
		testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
		table := testenv.NewTable(t, dsn, ddl)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		prod := newProducer(t, brokers, topic, kgo.RecordPartitioner(kgo.ManualPartitioner()))
		prod.produceN(ctx, 0, n, poisonRecord(topic, poison))

		cfg := baseConfig(brokers, group, topic, dsn, table, mode)
		def := config.Default() // sluice's batch and budget, as a user runs it
		cfg.BatchRecords = def.Sink.Batch.MaxRecords
		cfg.MaxBufferedRecords, cfg.MaxBufferedBytes = def.Flow.MaxBufferedRecords, int64(def.Flow.MaxBufferedBytes)
		p := startSluice(t, cfg, map[bool]string{false: "clean", true: "poison"}[poison])
		waitWritten(t, p, time.Minute)
		first := time.Now()
		good := n
		if poison {
			good = n - n/20
		}
		took := waitWrittenAll(t, p, int64(good), first, 15*time.Minute)
		waitLagZero(t, adm, group, topic, 15*time.Minute, p.alive)
		drained := time.Since(first)
		if code, d := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
			f.errorf(t, "sluice exited with %d after SIGTERM (%v), want 0", code, d)
		}
		l := account(t, brokers, topic, group+".dlq", pgConn(t, dsn), table)
		bound, _ := memoryBound(t, cfg, 200)
		return run{rate: float64(good) / took.Seconds(), took: took, drained: drained, l: l, peakRSS: p.mon.peakRSS(), poisoned: poison,
			rejected: p.mon.lastMetrics().RejectedErrors, bound: bound}
	}
	for range rounds {
		runs = append(runs, oneRun(false), oneRun(true))
	}

	var cleanRate, poisonRate float64
	for _, r := range runs {
		f.PeakRSS, f.RSSBound = max(f.PeakRSS, r.peakRSS), r.bound
		if !r.poisoned {
			cleanRate += r.rate / float64(rounds)
			r.l.checkNoLoss(t, f)
			if r.l.dead > 0 {
				f.errorf(t, "clean run: %d records in the DLQ topic, want none", r.l.dead)
			}
			continue
		}
		poisonRate += r.rate / float64(rounds)
		f.fromLedger(r.l) // the last poison run's
		r.l.checkNoLoss(t, f)
		checkPoisonLedger(t, f, r.l, n)
	}
	ratio := poisonRate / cleanRate
	for _, r := range runs {
		kind := map[bool]string{false: "clean", true: "poison"}[r.poisoned]
		f.note("%s run: %.0f good records/s (all written in %v, committed to the end in %v; %.0f writes refused by PostgreSQL, peak RSS %s)",
			kind, r.rate, r.took.Round(10*time.Millisecond), r.drained.Round(10*time.Millisecond), r.rejected, mib(r.peakRSS))
	}
	f.note("good-record throughput ratio poison/clean %.2f (aim ≥ 0.8)", ratio)
	switch {
	case testing.Short():
		f.note("ratio not asserted in the short run")
	case ratio < 0.8:
		f.errorf(t, "good-record throughput with 5%% poison is %.2f of the clean run's (%.0f/s against %.0f/s), want at least 0.8", ratio, poisonRate, cleanRate)
	}
}

// waitWrittenAll waits until p has written n rows and returns the time since
// first. It polls /status every 20 ms: the runs last a couple of seconds.
func waitWrittenAll(t *testing.T, p *proc, n int64, first time.Time, limit time.Duration) time.Duration {
	t.Helper()
	var last int64
	for time.Since(first) < limit {
		st, err := p.status()
		if err == nil {
			if last = st.Written; last >= n {
				return time.Since(first)
			}
		}
		if !p.alive() {
			t.Fatalf("sluice %s exited (%v) after writing %d of %d rows", p.name, p.state, last, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sluice %s wrote %d of %d rows in %v", p.name, last, n, limit)
	return 0
}

// checkPoisonLedger checks the DLQ against the records' kinds: exactly the bad
// ones, each once, with its reason; every good record in the table, no bad one.
func checkPoisonLedger(t *testing.T, f *figures, l *ledger, n int64) {
	t.Helper()
	var missing, wrongReason, twice, goodInDLQ, badInTable int64
	var example []string
	for a, ds := range l.inDLQ {
		i := a.offset*6 + int64(a.partition) // record i went to partition i mod 6, in order
		want := badKind(i)
		if want == "" {
			goodInDLQ++
			if len(example) < 5 {
				example = append(example, fmt.Sprintf("good record %v in the DLQ (%s: %s)", a, ds[0].reason, ds[0].msg))
			}
			continue
		}
		if len(ds) > 1 {
			twice++
		}
		d := ds[0]
		if d.reason != want || (want == flow.ReasonSinkRejected && d.code != "23514") {
			wrongReason++
			if len(example) < 5 {
				example = append(example, fmt.Sprintf("record %v: reason %q code %q, want %q", a, d.reason, d.code, want))
			}
		}
	}
	for i := range n {
		a := at{int32(i % 6), i / 6}
		bad := badKind(i) != ""
		_, inDLQ := l.inDLQ[a]
		_, inTable := l.inTable[a]
		if bad && !inDLQ {
			missing++
		}
		if bad && inTable {
			badInTable++
		}
	}
	if missing+wrongReason+goodInDLQ+badInTable > 0 {
		f.errorf(t, "DLQ: %d bad records missing, %d with the wrong reason, %d good records in it; %d bad records in the table; e.g. %v",
			missing, wrongReason, goodInDLQ, badInTable, example)
	}
	if twice > 0 {
		f.errorf(t, "DLQ: %d bad records dead-lettered more than once", twice)
	}
	if want := n / 20; l.deadDistinct != want {
		f.errorf(t, "DLQ holds %d distinct records, want the %d bad ones", l.deadDistinct, want)
	}
}
