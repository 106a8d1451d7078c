//go:build chaos

package chaos

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestCrash kills sluice with SIGKILL at random moments while it writes N
// records (300,000; 30,000 in -short) and starts it again each time, then
// lets the last run finish. Nothing may be missing from the table, in upsert
// mode (exactly one row per record) and in at-least-once insert mode (every
// record at least once; the duplicates are counted and reported). After every
// kill, before the restart, the group's committed offsets are checked against
// the table: a commit ahead of the sink would lose the records between.
//
// A kill lands at a random moment after the process has written its first
// rows, so that each one interrupts writing rather than start-up. sluice is
// rate-limited (flow.rate_limit) so that the N records span all the kills.
//
// exactly-once: the same kills with delivery: exactly-once (and an offsets
// table of the test's own), demanding no duplicate at all. A sluice that
// refuses exactly-once at start (as it did before exactly-once was built) is
// reported and the case skipped with the reason.
func TestCrash(t *testing.T) {
	t.Parallel()
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	n, kills := int64(300_000), 8
	if testing.Short() {
		n, kills = 30_000, 3
	}
	for _, tc := range []struct {
		name, mode, ddl, delivery string
	}{
		{"upsert", config.ModeUpsert, upsertDDL, config.DeliveryAtLeastOnce},
		{"insert at-least-once", config.ModeInsert, ordersDDL, config.DeliveryAtLeastOnce},
		{"insert exactly-once", config.ModeInsert, ordersDDL, config.DeliveryExactlyOnce},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFigures(t, "crash", tc.name)
			adm := testenv.Admin(t, brokers)
			topic := testenv.NewTopic(t, brokers, 6)
			group := testenv.NewGroup(t, brokers)
			testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
			table := testenv.NewTable(t, dsn, tc.ddl)
			conn := pgConn(t, dsn)

			cfg := baseConfig(brokers, group, topic, dsn, table, tc.mode)
			cfg.Delivery = tc.delivery
			if tc.delivery == config.DeliveryExactlyOnce {
				cfg.OffsetsTable = "public." + testenv.UniqueName(t, "offsets")
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					_, _ = conn.Exec(ctx, "DROP TABLE IF EXISTS "+cfg.OffsetsTable)
				})
				f.note("no duplicate allowed")
			}
			cfg.SessionTimeout = 6 * time.Second // a killed member holds its partitions this long
			// About 4 s of writing per run: every kill lands mid-stream.
			cfg.RateLimit = float64(n) / (float64(kills) * 4.0)
			cfg.Burst = cfg.BatchRecords
			f.note("rate limit %.0f records/s", cfg.RateLimit)

			first, err := tryStart(t, cfg, "run-0")
			if err != nil {
				if tc.delivery == config.DeliveryExactlyOnce && strings.Contains(err.Error(), "exactly-once") {
					f.note("sluice refuses delivery: exactly-once at start")
					t.Skipf("sluice refuses delivery: exactly-once at start, so the exactly-once crash case is skipped (%s)",
						firstLineWith(err.Error(), "exactly-once"))
				}
				if tc.delivery == config.DeliveryExactlyOnce && strings.Contains(err.Error(), "offsets_table") {
					f.note("this sluice has no sink.postgres.offsets_table")
					t.Skipf("this sluice does not know sink.postgres.offsets_table (no exactly-once delivery), so the exactly-once crash case is skipped (%s)",
						firstLineWith(err.Error(), "offsets_table"))
				}
				t.Fatalf("sluice did not start: %v", err)
			}
			f.RSSBound, _ = memoryBound(t, cfg, 200)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			prod := newProducer(t, brokers, topic)
			prod.produceN(ctx, 0, n, keyed(topic))

			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
			var (
				p         = first
				midStream int
				peak      int64
			)
			for k := range kills {
				// Let it write, then kill it at a random moment.
				waitWritten(t, p, cfg.SessionTimeout+time.Minute)
				time.Sleep(time.Duration(200+rng.IntN(2800)) * time.Millisecond)
				lag := lagOf(t, adm, group, topic)
				p.kill()
				if lag > 0 {
					midStream++
				}
				peak = max(peak, p.mon.peakRSS())
				checkCommitsBehindTable(t, f, adm, conn, group, topic, table)
				t.Logf("kill %d: SIGKILL after %v, committed lag %d", k+1, time.Since(p.started).Round(time.Millisecond), lag)
				p = startSluice(t, cfg, "run")
			}
			// Drain: from the last restart until everything is committed.
			f.Drain = waitLagZero(t, adm, group, topic, 10*time.Minute, p.alive)
			code, _ := p.terminate(cfg.ShutdownTimeout + 10*time.Second)
			if code != 0 {
				f.errorf(t, "the last run exited with %d after SIGTERM, want 0", code)
			}
			peak = max(peak, p.mon.peakRSS())

			l := account(t, brokers, topic, group+".dlq", conn, table)
			f.fromLedger(l)
			f.PeakRSS = peak
			f.note("%d kills, %d of them with records still to write", kills, midStream)
			l.checkNoLoss(t, f)
			if l.produced != n {
				f.errorf(t, "the topic holds %d records, produced %d", l.produced, n)
			}
			if l.dead > 0 {
				f.errorf(t, "%d records in the DLQ topic, want none: every record is a good one", l.dead)
			}
			if tc.delivery == config.DeliveryExactlyOnce {
				checkOffsetsTable(t, f, conn, cfg.OffsetsTable, group, topic, endOffsets(t, adm, topic))
			}
			switch {
			case tc.mode == config.ModeUpsert && l.rows != n:
				f.errorf(t, "upsert: %d rows, want exactly %d (one per id)", l.rows, n)
			case tc.delivery == config.DeliveryExactlyOnce && l.duplicates != 0:
				f.errorf(t, "exactly-once: %d duplicate rows, want none", l.duplicates)
			}
			if midStream == 0 {
				f.errorf(t, "no kill landed while records were still to write: the scenario proved nothing")
			}
		})
	}
}

// waitWritten waits, at most limit, until the process reports written rows
// in /status (it has joined the group and writes).
func waitWritten(t *testing.T, p *proc, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if st, err := p.status(); err == nil && st.Written > 0 {
			return
		}
		if !p.alive() {
			t.Fatalf("sluice %s exited (%v) before writing anything", p.name, p.state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("sluice %s wrote nothing within %v", p.name, limit)
}

// checkCommitsBehindTable checks that every record below the group's
// committed offset of each partition is in the table: sluice must never
// commit past a record it has not written.
func checkCommitsBehindTable(t *testing.T, f *figures, adm *kadm.Client, conn *pgx.Conn, group, topic, table string) {
	t.Helper()
	for p, c := range committed(t, adm, group, topic) {
		if c == 0 {
			continue
		}
		got := count(t, conn, "SELECT count(DISTINCT kafka_offset) FROM "+table+" WHERE kafka_partition = $1 AND kafka_offset < $2", p, c)
		if got != c {
			f.errorf(t, "partition %d is committed up to %d but the table holds only %d of the records below: a commit ran ahead of the sink", p, c, got)
		}
	}
}

// checkOffsetsTable checks, for exactly-once, that the offsets table sluice
// keeps in the sink's transactions holds each partition's end offset as its
// next offset. The table's layout is sluice's (internal/sink/postgres): when
// it cannot be read as expected, that is noted, not failed.
func checkOffsetsTable(t *testing.T, f *figures, conn *pgx.Conn, table, group, topic string, ends map[int32]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, "SELECT partition, next_offset FROM "+table+" WHERE consumer_group = $1 AND topic = $2", group, topic)
	if err != nil {
		f.note("offsets table not read: %v", err)
		return
	}
	stored := map[int32]int64{}
	var p int32
	var next int64
	if _, err := pgx.ForEachRow(rows, []any{&p, &next}, func() error { stored[p] = next; return nil }); err != nil {
		f.note("offsets table not read: %v", err)
		return
	}
	for p, end := range ends {
		if stored[p] != end {
			f.errorf(t, "offsets table %s: partition %d next offset %d, want the end offset %d", table, p, stored[p], end)
		}
	}
	f.note("offsets table holds the end offset of every partition")
}

// firstLineWith returns the first line of s that contains word, or s.
func firstLineWith(s, word string) string {
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, word) {
			return strings.TrimSpace(line)
		}
	}
	return s
}
