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
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestGroupChurn runs three sluice processes in one consumer group while a
// producer writes a sequence of updates per key (key k gets seq 1, 2, ..., M,
// always to the same partition, by key). Under that load one member is killed
// (SIGKILL), one is added, and one is stopped gracefully (SIGTERM, exit 0).
// In upsert mode, per-partition order kept and nothing lost means every key
// ends at its last value, seq M, with the offset of its last record; and the
// group is committed to the end of every partition.
//
// A trigger counts the updates that moved a key backwards (a lower seq over
// a higher one). At-least-once redelivery after the kill and the rebalances
// re-applies older values for a moment, so they are reported, not failed on;
// only the final values are asserted.
func TestGroupChurn(t *testing.T) {
	t.Parallel()
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	keys, updates, rate := int64(1000), int64(100), 2500.0
	if testing.Short() {
		keys, updates, rate = 500, 50, 2000
	}
	n := keys * updates
	loadFor := time.Duration(float64(n) / rate * float64(time.Second))
	f := newFigures(t, "group churn", "3 processes, upsert")
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 12)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, upsertDDL)
	regressions := testenv.NewTable(t, dsn, "(id bigint, old_seq bigint, new_seq bigint, at timestamptz DEFAULT now())")
	conn := pgConn(t, dsn)
	fn := table + "_regress"
	for _, q := range []string{
		fmt.Sprintf(`CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.seq < OLD.seq THEN INSERT INTO %[2]s (id, old_seq, new_seq) VALUES (OLD.id, OLD.seq, NEW.seq); END IF;
  RETURN NEW;
END $$`, fn, regressions),
		fmt.Sprintf("CREATE TRIGGER %s BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s()", fn, table, fn),
	} {
		if _, err := conn.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = conn.Exec(ctx, "DROP TABLE IF EXISTS "+table)
		_, _ = conn.Exec(ctx, "DROP FUNCTION IF EXISTS "+fn+"()")
	})

	cfg := baseConfig(brokers, group, topic, dsn, table, config.ModeUpsert)
	cfg.BatchRecords = 200 // many batches per key: order across batches matters
	cfg.SessionTimeout = 6 * time.Second
	f.RSSBound, _ = memoryBound(t, cfg, 100)

	// Record i updates key i mod keys to seq i/keys + 1.
	update := func(i int64) *kgo.Record {
		id := i % keys
		return &kgo.Record{Topic: topic, Key: strconv.AppendInt([]byte("k"), id, 10),
			Value: fmt.Appendf(nil, `{"id":%d,"seq":%d,"amount":%d.00}`, id, i/keys+1, i%1000)}
	}

	a := startSluice(t, cfg, "a")
	b := startSluice(t, cfg, "b")
	c := startSluice(t, cfg, "c")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	prod := newProducer(t, brokers, topic)
	load := prod.paced(ctx, 0, rate, n, update)
	t.Cleanup(func() { load.stop(); <-load.done })
	start := time.Now()
	at := func(share float64) { time.Sleep(time.Until(start.Add(time.Duration(share * float64(loadFor))))) }

	at(0.25)
	lagA := lagOf(t, adm, group, topic)
	a.kill()
	t.Logf("a killed (SIGKILL) at %v, lag %d", time.Since(start).Round(time.Millisecond), lagA)
	at(0.45)
	d := startSluice(t, cfg, "d")
	t.Logf("d added at %v", time.Since(start).Round(time.Millisecond))
	at(0.65)
	code, took := c.terminate(cfg.ShutdownTimeout + 10*time.Second)
	t.Logf("c stopped (SIGTERM) at %v: exit %d after %v", time.Since(start).Round(time.Millisecond), code, took.Round(time.Millisecond))
	if code != 0 {
		f.errorf(t, "c exited with %d after SIGTERM, want 0", code)
	}
	<-load.done
	produced := load.finish(prod)
	loadEnd := time.Now()
	waitLagZero(t, adm, group, topic, 5*time.Minute, func() bool { return b.alive() || d.alive() })
	f.Drain = time.Since(loadEnd)
	var writes float64
	for _, p := range []*proc{a, b, c, d} {
		writes += p.mon.lastMetrics().Written
	}
	for _, p := range []*proc{b, d} {
		if code, took := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
			f.errorf(t, "%s exited with %d after SIGTERM (%v), want 0", p.name, code, took)
		}
	}
	for _, p := range []*proc{a, b, c, d} {
		f.PeakRSS = max(f.PeakRSS, p.mon.peakRSS())
	}

	// Every key at its last update, with the offset of its last record.
	last := lastOffsets(t, brokers, topic, keys)
	rows, err := conn.Query(t.Context(), "SELECT id, seq, kafka_partition, kafka_offset FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	var (
		id, seq, off int64
		part         int32
		wrong        []string
		seen         = map[int64]bool{}
	)
	for rows.Next() {
		if err := rows.Scan(&id, &seq, &part, &off); err != nil {
			t.Fatal(err)
		}
		seen[id] = true
		if want := last[id]; seq != updates || part != want.partition || off != want.offset {
			wrong = append(wrong, fmt.Sprintf("key %d: seq %d at %d@%d, want seq %d at %v", id, seq, part, off, updates, want))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	missing := keys - int64(len(seen))
	regressed := count(t, conn, "SELECT count(*) FROM "+regressions)
	regressedKeys := count(t, conn, "SELECT count(DISTINCT id) FROM "+regressions)
	dead := readDLQ(t, brokers, group+".dlq")

	f.Produced, f.Written, f.DeadLettered, f.Lost = produced, int64(len(seen)), int64(len(dead)), missing
	f.note("%d keys × %d updates over 12 partitions; a killed at 25%%, d added at 45%%, c stopped at 65%% of the load", keys, updates)
	f.note("written = keys in the table; %.0f row writes by the four processes (last /metrics of each)", writes)
	f.note("%d keys not at their last update; %d updates moved %d keys backwards for a while (redelivery)", len(wrong), regressed, regressedKeys)
	if produced != n {
		f.errorf(t, "produced %d records, want %d", produced, n)
	}
	if missing > 0 {
		f.errorf(t, "LOST: %d of %d keys are not in the table", missing, keys)
	}
	if len(wrong) > 0 {
		f.errorf(t, "%d keys do not end at their last update (per-partition order broken or updates lost), e.g. %v", len(wrong), wrong[:min(5, len(wrong))])
	}
	if len(dead) > 0 {
		f.errorf(t, "%d records in the DLQ topic, want none", len(dead))
	}
}

// lastOffsets reads topic to its end and returns where the last record of
// every key k<id> is.
func lastOffsets(t *testing.T, brokers []string, topic string, keys int64) map[int64]at {
	t.Helper()
	ends := endOffsets(t, testenv.Admin(t, brokers), topic)
	remaining := map[int32]int64{}
	for p, e := range ends {
		if e > 0 {
			remaining[p] = e
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out := make(map[int64]at, keys)
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: partitions %v not read to their end", topic, remaining)
		}
		fs.EachRecord(func(r *kgo.Record) {
			id, err := strconv.ParseInt(string(r.Key[1:]), 10, 64)
			if err == nil {
				out[id] = at{r.Partition, r.Offset}
			}
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
	return out
}
