//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// The exactly-once tests write into insert-mode tables without any key:
// nothing would hide a record written twice, so a count of rows equal to the
// count of distinct (partition, offset) is the proof.

// eoDeadline bounds each wait of the exactly-once tests.
const eoDeadline = 4 * time.Minute

// newOffsetsTable returns a fresh name for the offsets table, which sluice
// creates, and drops the table when the test ends.
func newOffsetsTable(t *testing.T, dsn string) string {
	t.Helper()
	name := "public." + testenv.UniqueName(t, "sluice_offsets")
	conn := testenv.Postgres(t, dsn)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
			t.Errorf("drop table %s: %v", name, err)
		}
	})
	return name
}

// storedOffsets reads the offsets table: next_offset by partition of topic.
func storedOffsets(t *testing.T, conn *pgx.Conn, offsets, group, topic string) map[int32]int64 {
	t.Helper()
	rows, err := conn.Query(t.Context(), `SELECT "partition", next_offset FROM `+offsets+` WHERE consumer_group = $1 AND topic = $2`, group, topic)
	if err != nil {
		t.Fatalf("read %s: %v", offsets, err)
	}
	out := map[int32]int64{}
	var p int32
	var next int64
	if _, err := pgx.ForEachRow(rows, []any{&p, &next}, func() error { out[p] = next; return nil }); err != nil {
		t.Fatalf("read %s: %v", offsets, err)
	}
	return out
}

// waitStoredAtEnd waits until the offsets table holds the end offset of
// every partition of topic.
func waitStoredAtEnd(t *testing.T, conn *pgx.Conn, adm *kadm.Client, offsets, group, topic string) map[int32]int64 {
	t.Helper()
	ends := endOffsets(t, adm, topic)
	deadline := time.Now().Add(eoDeadline)
	for {
		stored := storedOffsets(t, conn, offsets, group, topic)
		done := true
		for p, end := range ends {
			if end > 0 && stored[p] != end {
				done = false
			}
		}
		if done {
			return ends
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored offsets %v, end offsets %v after %v", stored, ends, eoDeadline)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkTableExactlyOnce checks that table holds want rows, each record once.
func checkTableExactlyOnce(t *testing.T, conn *pgx.Conn, table string, want int64) {
	t.Helper()
	rows := count(t, conn, "SELECT count(*) FROM "+table+" WHERE kafka_partition >= 0")
	distinct := count(t, conn, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table+" WHERE kafka_partition >= 0")
	if rows != want || distinct != want {
		t.Errorf("table holds %d rows, %d distinct records; want exactly %d of each (duplicates: %d)", rows, distinct, want, rows-distinct)
	}
}

// deadLetters reads the DLQ topic and returns, per original record, how many
// times it was dead-lettered.
func deadLetters(t *testing.T, brokers []string, topic string) map[at]int {
	t.Helper()
	out := map[at]int{}
	for _, r := range readTopic(t, brokers, topic) {
		out[deadLetterOrigin(t, r)]++
	}
	return out
}

// eoOrder is order(i), or for the poison records a value that fails to
// decode (i%1000 == 17) or that the table's CHECK refuses (i%1000 == 523).
func eoOrder(i int) []byte {
	switch i % 1000 {
	case 17:
		return fmt.Appendf(nil, `{"id":%d,"amount":`, i)
	case 523:
		return fmt.Appendf(nil, `{"id":%d,"amount":-1.00,"seq":%d}`, i, i)
	}
	return order(i)
}

func eoPoison(i int) bool { return i%1000 == 17 || i%1000 == 523 }

// produceEO produces records from..to-1 with eoOrder, keyed by index, and
// returns where each poison record landed.
func produceEO(t *testing.T, brokers []string, topic string, from, to int) map[at]bool {
	t.Helper()
	var recs []*kgo.Record
	var poison []*kgo.Record
	for i := from; i < to; i++ {
		r := &kgo.Record{Key: []byte(fmt.Sprint(i)), Value: eoOrder(i)}
		recs = append(recs, r)
		if eoPoison(i) {
			poison = append(poison, r)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchMaxBytes(1<<20), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for start := 0; start < len(recs); start += 10000 {
		if err := cl.ProduceSync(t.Context(), recs[start:min(start+10000, len(recs))]...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
	out := map[at]bool{}
	for _, r := range poison {
		out[at{r.Partition, r.Offset}] = true
	}
	return out
}

// eoBinaryConfig writes a configuration for the sluice binary, exactly-once
// into table, and returns its path.
func eoBinaryConfig(t *testing.T, brokers []string, group, topic, table, offsets string, rate int) string {
	t.Helper()
	return binaryConfig(t, brokers, group, topic, "", fmt.Sprintf(`flow:
  rate_limit: {records_per_second: %d, burst: 1000}
sink:
  type: postgres
  concurrency: 4
  batch: {max_records: 1000, linger: 50ms}
  write_timeout: 5s
  retry: {initial_backoff: 20ms, max_backoff: 500ms}
  postgres:
    dsn: ${TEST_PG_DSN}
    table: public.%s
    mode: insert
    delivery: exactly-once
    offsets_table: %s
    columns: %s
`, rate, table, offsets, ordersColumns), "info")
}

// sigterm stops a sluice binary with SIGTERM and expects exit status 0.
func sigterm(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("sluice exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not exit within 30s of SIGTERM")
	}
}

// TestExactlyOnceSurvivesSIGKILL produces 200,000 records over 6 partitions,
// 400 of them poison, and kills sluice with SIGKILL at three random moments
// mid-stream, restarting it each time. The table (insert mode, no key) holds
// every good record exactly once, no poison record, and the offsets table the
// end offset of every partition; every poison record is in the DLQ. A last
// restart after a clean stop, with more records, writes only the new ones
// and dead-letters none of the old poison again.
func TestExactlyOnceSurvivesSIGKILL(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	dlqTopic := group + ".dlq"
	testenv.DeleteTopicAtEnd(t, adm, dlqTopic)
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	offsets := newOffsetsTable(t, dsn)
	conn := testenv.Postgres(t, dsn)
	t.Setenv("TEST_PG_DSN", dsn)

	const n = 200_000
	poison := produceEO(t, brokers, topic, 0, n)
	bin := buildSluice(t)
	cfg := eoBinaryConfig(t, brokers, group, topic, table, offsets, 30000)

	var kills []int64
	for k, at := range []float64{0.15, 0.45, 0.75} {
		cmd, _ := startBinary(t, bin, cfg)
		// A random moment in a window around at: rows written so far.
		target := int64((at + rand.Float64()*0.1) * n)
		waitRows(t, conn, table, target)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		written := count(t, conn, "SELECT count(*) FROM "+table)
		kills = append(kills, written)
		if written >= n-int64(len(poison)) {
			t.Fatalf("kill %d came after everything was written (%d rows); the test proves nothing", k+1, written)
		}
	}
	cmd, _ := startBinary(t, bin, cfg)
	ends := waitStoredAtEnd(t, conn, adm, offsets, group, topic)
	sigterm(t, cmd)

	checkTableExactlyOnce(t, conn, "public."+table, n-int64(len(poison)))
	if got := count(t, conn, "SELECT count(*) FROM public."+table+" WHERE amount < 0"); got != 0 {
		t.Errorf("%d rejected rows in the table", got)
	}
	stored := storedOffsets(t, conn, offsets, group, topic)
	for p, end := range ends {
		if stored[p] != end {
			t.Errorf("partition %d: stored offset %d, end offset %d", p, stored[p], end)
		}
	}
	dead := deadLetters(t, brokers, dlqTopic)
	twice := 0
	for a, times := range dead {
		if !poison[a] {
			t.Errorf("%s is in the DLQ and is not poison", a)
		}
		if times > 1 {
			twice++
		}
	}
	for a := range poison {
		if dead[a] == 0 {
			t.Errorf("poison record %s is not in the DLQ", a)
		}
	}
	t.Logf("SIGKILL at %v rows of %d; %d poison records dead-lettered, %d of them more than once (the DLQ is at-least-once)",
		kills, n, len(dead), twice)

	// After a clean stop, a restart reads the stored positions: with more
	// records produced, it writes those and dead-letters only their poison.
	const more = 3000
	newPoison := produceEO(t, brokers, topic, n, n+more)
	cmd, _ = startBinary(t, bin, cfg)
	waitStoredAtEnd(t, conn, adm, offsets, group, topic)
	sigterm(t, cmd)
	checkTableExactlyOnce(t, conn, "public."+table, n+more-int64(len(poison)+len(newPoison)))
	after := deadLetters(t, brokers, dlqTopic)
	for a, times := range after {
		if poison[a] && times != dead[a] {
			t.Errorf("old poison record %s dead-lettered again after a clean restart (%d times, was %d)", a, times, dead[a])
		}
		if newPoison[a] && times != 1 {
			t.Errorf("new poison record %s dead-lettered %d times, want once", a, times)
		}
	}
	if len(after) != len(dead)+len(newPoison) {
		t.Errorf("DLQ holds %d records after the restart, want %d", len(after), len(dead)+len(newPoison))
	}
}

// TestExactlyOnceFencesAZombieMember stops one sluice with SIGSTOP while its
// lanes hold records, lets a second member take every partition after the
// session timeout and write on, then wakes the first (SIGCONT): its late
// writes are refused by the compare-and-set (or its claims are released
// first), it rejoins, and the table still holds every record once.
func TestExactlyOnceFencesAZombieMember(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	offsets := newOffsetsTable(t, dsn)
	conn := testenv.Postgres(t, dsn)
	t.Setenv("TEST_PG_DSN", dsn)

	const n = 80_000
	poison := produceEO(t, brokers, topic, 0, n)
	bin := buildSluice(t)
	cfg := eoBinaryConfig(t, brokers, group, topic, table, offsets, 6000)

	zombie, zombieLog := startBinary(t, bin, cfg)
	waitRows(t, conn, table, 8000)
	if err := zombie.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := count(t, conn, "SELECT count(*) FROM "+table)
	owner, _ := startBinary(t, bin, cfg)
	waitRows(t, conn, table, stoppedAt+15000) // the owner took every partition and wrote on
	if err := zombie.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitStoredAtEnd(t, conn, adm, offsets, group, topic)
	sigterm(t, owner)
	sigterm(t, zombie)

	checkTableExactlyOnce(t, conn, "public."+table, n-int64(len(poison)))
	log := zombieLog.String() // the process has exited: the buffer is complete
	fenced := strings.Count(log, "the sink fenced partitions")
	lost := strings.Count(log, "partitions lost")
	t.Logf("stopped at %d rows; the zombie logged %d fenced writes and %d lost assignments", stoppedAt, fenced, lost)
	if fenced == 0 && lost == 0 {
		t.Errorf("the zombie neither was fenced nor lost its partitions: the test proves nothing\n%s", lastLines(log, 30))
	}
}

func lastLines(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], []byte("\n")))
}

// TestExactlyOnceBisectsToTheBadRow makes PostgreSQL refuse rows only at
// COMMIT (a deferred unique constraint), where no row number says which: the
// lane bisects, each part a transaction of its own that moves the stored
// offsets over its prefix. The good rows land once, the bad ones in the DLQ,
// and the stored offsets pass them.
func TestExactlyOnceBisectsToTheBadRow(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 3)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, seq bigint, tag text UNIQUE DEFERRABLE INITIALLY DEFERRED, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	offsets := newOffsetsTable(t, dsn)
	conn := testenv.Postgres(t, dsn)
	if _, err := conn.Exec(t.Context(), "INSERT INTO public."+table+" VALUES (-1, -1, 'taken', -1, -1)"); err != nil {
		t.Fatal(err)
	}
	const n = 6000
	bad := func(i int) bool { return i%997 == 500 }
	var recs []*kgo.Record
	for i := range n {
		v := fmt.Appendf(nil, `{"id":%d,"seq":%d}`, i, i)
		if bad(i) {
			v = fmt.Appendf(nil, `{"id":%d,"seq":%d,"tag":"taken"}`, i, i)
		}
		recs = append(recs, &kgo.Record{Partition: int32(i % 3), Value: v})
	}
	produceAt(t, brokers, topic, recs)
	badAt := map[at]bool{}
	for i, r := range recs {
		if bad(i) {
			badAt[at{r.Partition, r.Offset}] = true
		}
	}

	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Sink.Postgres.Delivery, cfg.Sink.Postgres.OffsetsTable = config.DeliveryExactlyOnce, offsets
	cfg.Sink.Postgres.Columns = map[string]string{"id": "value.id", "seq": "value.seq", "tag": "value.tag",
		"kafka_partition": "$partition", "kafka_offset": "$offset"}
	cfg.Sink.Batch.MaxRecords = 500
	r := startDaemon(t, cfg, daemon.Options{})
	ends := waitStoredAtEnd(t, conn, adm, offsets, group, topic)
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	checkTableExactlyOnce(t, conn, "public."+table, n-int64(len(badAt)))
	stored := storedOffsets(t, conn, offsets, group, topic)
	for p, end := range ends {
		if stored[p] != end {
			t.Errorf("partition %d: stored offset %d, end offset %d", p, stored[p], end)
		}
	}
	dead := deadLetters(t, brokers, group+".dlq")
	for a := range badAt {
		if dead[a] != 1 {
			t.Errorf("bad row %s dead-lettered %d times, want once", a, dead[a])
		}
	}
	if len(dead) != len(badAt) {
		t.Errorf("DLQ holds %d records, want the %d bad rows", len(dead), len(badAt))
	}
	if rejected := testutil.ToFloat64(r.d.Metrics().SinkWriteErrors.WithLabelValues("rejected")); rejected < float64(len(badAt)) {
		t.Errorf("%v rejected writes for %d bad rows: the lane did not bisect", rejected, len(badAt))
	}
	if got := testutil.ToFloat64(r.d.Metrics().RecordsDLQ.WithLabelValues(flow.ReasonSinkRejected)); got != float64(len(badAt)) {
		t.Errorf("sluice_records_dlq_total{reason=sink_rejected} = %v, want %d", got, len(badAt))
	}
}

// TestExactlyOnceRebalanceUnderLoad runs three members in one group while
// members join and leave mid-stream: every revoke hands partitions over
// through the offsets table, and the table holds every record once.
func TestExactlyOnceRebalanceUnderLoad(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	offsets := newOffsetsTable(t, dsn)
	conn := testenv.Postgres(t, dsn)
	const n = 90_000
	poison := produceEO(t, brokers, topic, 0, n)

	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Sink.Postgres.Delivery, cfg.Sink.Postgres.OffsetsTable = config.DeliveryExactlyOnce, offsets
	cfg.Sink.Batch.MaxRecords = 300
	cfg.Flow.RateLimit = config.RateLimit{RecordsPerSecond: 5000, Burst: 300} // keep each member mid-stream when the group changes
	a := startDaemon(t, cfg, daemon.Options{})
	waitRows(t, conn, table, 8000)
	b := startDaemon(t, cfg, daemon.Options{})
	c := startDaemon(t, cfg, daemon.Options{})
	waitRows(t, conn, table, 30000)
	if err := a.stop(); err != nil { // leaves mid-stream
		t.Fatalf("first member stopped with %v", err)
	}
	waitRows(t, conn, table, 50000)
	d := startDaemon(t, cfg, daemon.Options{}) // joins again
	waitRows(t, conn, table, 65000)
	if err := b.stop(); err != nil {
		t.Fatalf("second member stopped with %v", err)
	}
	waitStoredAtEnd(t, conn, adm, offsets, group, topic)
	for _, r := range []*daemonRun{c, d} {
		if err := r.stop(); err != nil {
			t.Fatalf("member stopped with %v", err)
		}
	}
	checkTableExactlyOnce(t, conn, "public."+table, n-int64(len(poison)))
	dead := deadLetters(t, brokers, group+".dlq")
	for a := range poison {
		if dead[a] == 0 {
			t.Errorf("poison record %s is not in the DLQ", a)
		}
	}
	if len(dead) != len(poison) {
		t.Errorf("DLQ holds %d distinct records, want the %d poison ones", len(dead), len(poison))
	}
}
