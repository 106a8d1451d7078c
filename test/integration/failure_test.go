//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// The failure tests run sluice in-process against the real broker and
// PostgreSQL and break one thing at a time: records that cannot be written
// (poison), a dead-letter topic that cannot be written, a table whose schema
// no longer fits the mapping. Each waits on what it needs with a generous
// deadline and asserts outcomes, never speed.

// failureDeadline bounds each wait of the failure tests.
const failureDeadline = 3 * time.Minute

// at is a record's position in its topic.
type at struct {
	partition int32
	offset    int64
}

func (a at) String() string { return fmt.Sprintf("%d@%d", a.partition, a.offset) }

// daemonRun is a sluice started in-process whose Run may end on its own (a
// fatal sink error), which the test can wait for.
type daemonRun struct {
	d      *daemon.Daemon
	done   chan struct{} // closed when Run returned; err is then set
	err    error
	cancel context.CancelFunc
}

// stop cancels Run and returns what it returned.
func (r *daemonRun) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// startDaemon builds sluice from cfg with opts and runs it until the test
// ends (or stop).
func startDaemon(t *testing.T, cfg *config.Config, opts daemon.Options) *daemonRun {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t).Named(cfg.Kafka.Group)
	}
	d, err := daemon.New(t.Context(), cfg, opts)
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &daemonRun{d: d, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(r.done)
		r.err = d.Run(ctx)
	}()
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// produceAt writes recs, each to the partition it names, in order, and
// waits for every acknowledgement. On return every record holds the offset
// and timestamp the broker stored.
func produceAt(t *testing.T, brokers []string, topic string, recs []*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), failureDeadline)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce %d records to %s: %v", len(recs), topic, err)
	}
}

// endOffsets returns the end offset of every partition of topic.
func endOffsets(t *testing.T, adm *kadm.Client, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// committedOffsets returns the group's committed offset of every partition of
// topic that has one.
func committedOffsets(t *testing.T, adm *kadm.Client, group, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var resp kadm.OffsetResponses
	err := consumer.AwaitCoordinator(ctx, func() (err error) {
		resp, err = adm.FetchOffsets(ctx, group)
		if err == nil {
			err = resp.Error()
		}
		return err
	})
	if err != nil {
		t.Fatalf("committed offsets of %s: %v", group, err)
	}
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			out[o.Partition] = o.At
		}
	})
	return out
}

// readTopic returns every record of topic up to its end offsets at the call.
func readTopic(t *testing.T, brokers []string, topic string) []*kgo.Record {
	t.Helper()
	remaining := map[int32]int64{}
	for p, end := range endOffsets(t, testenv.Admin(t, brokers), topic) {
		if end > 0 {
			remaining[p] = end
		}
	}
	if len(remaining) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out []*kgo.Record
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d records, partitions %v not read to their end: %v", topic, len(out), remaining, ctx.Err())
		}
		fs.EachError(func(_ string, p int32, err error) { t.Logf("read %s/%d: %v (retried)", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
	return out
}

// headers returns a record's headers by key (the last of a key wins).
func headers(r *kgo.Record) map[string]string {
	hs := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		hs[h.Key] = string(h.Value)
	}
	return hs
}

// deadLetterOrigin reads where a DLQ record came from, from its headers.
func deadLetterOrigin(t *testing.T, r *kgo.Record) at {
	t.Helper()
	hs := headers(r)
	p, perr := strconv.ParseInt(hs[dlq.HeaderPartition], 10, 32)
	o, oerr := strconv.ParseInt(hs[dlq.HeaderOffset], 10, 64)
	if perr != nil || oerr != nil {
		t.Fatalf("DLQ record %d@%d: original partition %q, offset %q are not numbers", r.Partition, r.Offset,
			hs[dlq.HeaderPartition], hs[dlq.HeaderOffset])
	}
	return at{int32(p), o}
}

// checkDeadLetter checks a DLQ record against the original it stands for:
// the original key, value and coordinates, and the sluice.* headers.
func checkDeadLetter(t *testing.T, got, orig *kgo.Record, reason, code, dsn string) {
	t.Helper()
	where := fmt.Sprintf("DLQ record of %d@%d", orig.Partition, orig.Offset)
	hs := headers(got)
	want := map[string]string{
		dlq.HeaderTopic:     orig.Topic,
		dlq.HeaderPartition: strconv.Itoa(int(orig.Partition)),
		dlq.HeaderOffset:    strconv.FormatInt(orig.Offset, 10),
		dlq.HeaderTimestamp: strconv.FormatInt(orig.Timestamp.UnixMilli(), 10),
		dlq.HeaderReason:    reason,
		dlq.HeaderCode:      code,
	}
	for k, v := range want {
		if g, ok := hs[k]; !ok || g != v {
			t.Errorf("%s: header %s = %q (present %v), want %q", where, k, g, ok, v)
		}
	}
	if string(got.Key) != string(orig.Key) || string(got.Value) != string(orig.Value) {
		t.Errorf("%s: key/value %q/%q, want the original %q/%q", where, got.Key, got.Value, orig.Key, orig.Value)
	}
	msg := hs[dlq.HeaderMessage]
	if msg == "" {
		t.Errorf("%s: %s is empty", where, dlq.HeaderMessage)
	}
	for _, secret := range []string{dsn, "postgres://", "postgresql://", "sslmode", "127.0.0.1:", "password"} {
		if strings.Contains(msg, secret) {
			t.Errorf("%s: %s %q contains %q", where, dlq.HeaderMessage, msg, secret)
		}
	}
	if n, err := strconv.Atoi(hs[dlq.HeaderAttempts]); err != nil || n < 1 {
		t.Errorf("%s: %s = %q, want a count >= 1", where, dlq.HeaderAttempts, hs[dlq.HeaderAttempts])
	}
	if _, err := time.Parse(time.RFC3339Nano, hs[dlq.HeaderFailedAt]); err != nil {
		t.Errorf("%s: %s = %q: %v", where, dlq.HeaderFailedAt, hs[dlq.HeaderFailedAt], err)
	}
}

// tableRecords returns the (partition, offset) of every row of table, with the
// number of rows holding it.
func tableRecords(t *testing.T, conn *pgx.Conn, table string) map[at]int {
	t.Helper()
	rows, err := conn.Query(t.Context(), "SELECT kafka_partition, kafka_offset FROM "+table)
	if err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	out := map[at]int{}
	var a at
	if _, err := pgx.ForEachRow(rows, []any{&a.partition, &a.offset}, func() error { out[a]++; return nil }); err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	return out
}

// metricValue returns the value of the counter name{label=value} in reg, 0
// when it has none.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// poisonKind is what is wrong with a record of the poison mix.
type poisonKind struct {
	name   string
	reason string // sluice.error.reason
	code   string // sluice.error.code
	value  func(i int) []byte
}

var (
	malformed = poisonKind{"malformed JSON", flow.ReasonDecode, "", func(i int) []byte {
		return fmt.Appendf(nil, `{"id":%d,"amount":1.00,"seq":%d`, i, i) // unterminated
	}}
	wrongType = poisonKind{"object for a numeric column", flow.ReasonMapping, "", func(i int) []byte {
		return fmt.Appendf(nil, `{"id":%d,"amount":{"value":1},"seq":%d}`, i, i)
	}}
	checkViolation = poisonKind{"CHECK (amount >= 0) violated", flow.ReasonSinkRejected, "23514", func(i int) []byte {
		return fmt.Appendf(nil, `{"id":%d,"amount":-%d.50,"seq":%d}`, i, i%1000+1, i)
	}}
	notNullViolation = poisonKind{"NOT NULL seq missing", flow.ReasonSinkRejected, "23502", func(i int) []byte {
		return fmt.Appendf(nil, `{"id":%d,"amount":2.00}`, i) // no seq
	}}
)

// poisonOf says which records of the mix are bad, and how: 1% malformed JSON,
// 0.4% violating the CHECK, 0.4% violating NOT NULL, 0.2% with a wrong type.
func poisonOf(i int) *poisonKind {
	switch {
	case i%100 == 7:
		return &malformed
	case i%250 == 13:
		return &checkViolation
	case i%250 == 113:
		return &notNullViolation
	case i%500 == 42:
		return &wrongType
	}
	return nil
}

// TestPoisonMixGoesToTheDLQ sends 10,000 records over 6 partitions, 2% of
// them bad in the four ways sluice tells apart, and checks that exactly the
// bad ones reach the real DLQ topic with their headers, every good one
// reaches the table, and every partition is committed to its end.
//
// The rows that violate a constraint pass the mapping and are refused by
// PostgreSQL: in insert mode COPY names their line; in upsert mode the
// staging table has no constraints, the merge fails without a row number and
// the lane bisects. The NOT NULL constraint on seq is added after sluice read
// the catalog, so the mapper (which refuses a missing value for a NOT NULL
// column itself) lets the record through to the database.
//
// Slow records (flow.record_timeout) are not part of the mix: the mapper is
// the postgres sink's own, and daemon.Options can wrap the sink's Write but
// not its Map, so a slow mapping cannot be injected through the daemon. The
// flow unit tests (timeout_test.go) cover the timeout path.
func TestPoisonMixGoesToTheDLQ(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	for _, tc := range []struct {
		name, mode, ddl string
	}{
		{"insert isolates by COPY line", config.ModeInsert,
			"(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"},
		{"upsert isolates by bisection", config.ModeUpsert,
			"(id bigint PRIMARY KEY, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const (
				n          = 10_000
				partitions = 6
			)
			adm := testenv.Admin(t, brokers)
			topic := testenv.NewTopic(t, brokers, partitions)
			group := testenv.NewGroup(t, brokers)
			dlqTopic := group + ".dlq" // the daemon's default, created at start
			testenv.DeleteTopicAtEnd(t, adm, dlqTopic)
			table := testenv.NewTable(t, dsn, tc.ddl)
			conn := testenv.Postgres(t, dsn)

			cfg := pgConfig(brokers, group, topic, dsn, table, tc.mode)
			cfg.Sink.Batch.MaxRecords = 1000
			reg := prometheus.NewRegistry()
			r := startDaemon(t, cfg, daemon.Options{Registry: reg})
			if _, err := conn.Exec(t.Context(), "ALTER TABLE "+table+" ALTER COLUMN seq SET NOT NULL"); err != nil {
				t.Fatal(err)
			}

			recs := make([]*kgo.Record, n)
			kinds := make([]*poisonKind, n)
			for i := range recs {
				kinds[i] = poisonOf(i)
				v := order(i)
				if kinds[i] != nil {
					v = kinds[i].value(i)
				}
				recs[i] = &kgo.Record{Partition: int32(i % partitions), Key: fmt.Append(nil, i), Value: v}
			}
			produceAt(t, brokers, topic, recs)
			bad := map[at]int{} // -> index into recs
			good := map[at]bool{}
			perKind := map[string]int{}
			for i, rec := range recs {
				a := at{rec.Partition, rec.Offset}
				if kinds[i] != nil {
					bad[a] = i
					perKind[kinds[i].name]++
				} else {
					good[a] = true
				}
			}

			waitLagZero(t, adm, group, topic)
			// The end offsets and the commits, while sluice still runs.
			ends, commits := endOffsets(t, adm, topic), committedOffsets(t, adm, group, topic)
			counts := r.d.Pipeline().Counts()
			if err := r.stop(); err != nil {
				t.Fatalf("sluice stopped with %v", err)
			}

			if len(ends) != partitions {
				t.Errorf("%s has %d partitions, want %d", topic, len(ends), partitions)
			}
			for p, end := range ends {
				if c, ok := commits[p]; !ok || c != end {
					t.Errorf("partition %d: committed %d (present %v), end offset %d: the partition stalled", p, c, ok, end)
				}
			}
			if counts.DeadLettered != int64(len(bad)) {
				t.Errorf("the pipeline counted %d dead letters, want %d", counts.DeadLettered, len(bad))
			}

			// The table: every good record, and no bad one.
			inTable := tableRecords(t, conn, table)
			missing, extra := 0, 0
			for a := range good {
				if inTable[a] == 0 {
					missing++
				}
			}
			for a := range inTable {
				if !good[a] {
					extra++
					if extra <= 5 {
						t.Errorf("record %s is in the table but is not a good record", a)
					}
				}
			}
			if missing > 0 || extra > 0 || len(inTable) != len(good) {
				t.Errorf("table holds %d distinct records, want the %d good ones: %d good ones missing, %d others",
					len(inTable), len(good), missing, extra)
			}

			// The DLQ: exactly the bad records, each once, with its headers.
			dead := readTopic(t, brokers, dlqTopic)
			seen := map[at]int{}
			byReason := map[string]int{}
			for _, dr := range dead {
				a := deadLetterOrigin(t, dr)
				seen[a]++
				i, ok := bad[a]
				if !ok {
					t.Errorf("DLQ holds record %s (reason %q: %s), which is not a bad record", a,
						headers(dr)[dlq.HeaderReason], headers(dr)[dlq.HeaderMessage])
					continue
				}
				if seen[a] > 1 {
					t.Errorf("DLQ holds record %s %d times", a, seen[a])
					continue
				}
				byReason[kinds[i].reason]++
				checkDeadLetter(t, dr, recs[i], kinds[i].reason, kinds[i].code, dsn)
				if byReason[kinds[i].reason] == 1 {
					t.Logf("%s: %s", kinds[i].reason, headers(dr)[dlq.HeaderMessage])
				}
			}
			for a, i := range bad {
				if seen[a] == 0 {
					t.Errorf("bad record %s (%s) is not in the DLQ", a, kinds[i].name)
				}
			}

			// The metrics agree, and say how the rejected rows were found: in
			// insert mode each rejected write names at least one bad row (a
			// COPY's line, or the CHECK screen's rows), so there are no more
			// rejected writes than bad rows: no bisection.
			for reason, want := range byReason {
				if got := metricValue(t, reg, "sluice_records_dlq_total", "reason", reason); got != float64(want) {
					t.Errorf("sluice_records_dlq_total{reason=%q} = %v, want %d", reason, got, want)
				}
			}
			if opened := metricValue(t, reg, "sluice_circuit_breaker_transitions_total", "to", "open"); opened != 0 {
				t.Errorf("the circuit breaker opened %v times for rows the sink rejected: a record's fault is not the sink's", opened)
			}
			rejectedWrites := metricValue(t, reg, "sluice_sink_write_errors_total", "class", "rejected")
			if sinkRejected := byReason[flow.ReasonSinkRejected]; tc.mode == config.ModeInsert && (rejectedWrites > float64(sinkRejected) || rejectedWrites == 0) {
				t.Errorf("%v rejected writes for %d rejected rows: COPY line numbers and the CHECK screen should name at least one row per rejected write", rejectedWrites, sinkRejected)
			}
			t.Logf("%d records: %d good in the table, %d in the DLQ (%v by kind; %v by reason); %v rejected writes; ends %v",
				n, len(inTable), len(dead), perKind, byReason, rejectedWrites, ends)
		})
	}
}

// switchDLQ is a dead-letterer that fails, as an unreachable DLQ topic does,
// until the test lets it through to the real DLQ topic.
type switchDLQ struct {
	k        *dlq.Kafka
	failing  atomic.Bool
	failures atomic.Int64
	stored   atomic.Int64
}

var errDLQDown = errors.New("injected: the dead-letter topic cannot be written")

func (s *switchDLQ) DeadLetter(ctx context.Context, r *record.Record, cause *flow.PoisonError) error {
	if s.failing.Load() {
		s.failures.Add(1)
		return errDLQDown
	}
	if err := s.k.DeadLetter(ctx, r, cause); err != nil {
		return err
	}
	s.stored.Add(1)
	return nil
}

// TestDLQUnavailableHoldsTheCommitNotTheSink makes the DLQ fail while the sink
// works: the poison record of partition 0 stays not done, so the partition's
// committed offset stops at it, while the records behind it are still
// written; the other partitions are committed to their end. When the DLQ
// comes back, the record lands in it with its original offset and the commit
// moves past it.
func TestDLQUnavailableHoldsTheCommitNotTheSink(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 3)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, ordersTable)
	conn := testenv.Postgres(t, dsn)

	dlqTopic := testenv.NewTopic(t, brokers, 1)
	k, err := dlq.NewKafka(dlqTopic, kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close) // after sluice stopped
	dl := &switchDLQ{k: k}
	dl.failing.Store(true)

	// Partition 0: 200 good, the poison record, 1,000 good. Partitions 1 and
	// 2: 500 good each.
	const before, after, others = 200, 1000, 500
	var recs []*kgo.Record
	id := 0
	add := func(p int32, v []byte) *kgo.Record {
		rec := &kgo.Record{Partition: p, Key: fmt.Append(nil, id), Value: v}
		recs = append(recs, rec)
		id++
		return rec
	}
	for range before {
		add(0, order(id))
	}
	poison := add(0, []byte(`{"id":"this is not JSON`))
	for range after {
		add(0, order(id))
	}
	for p := int32(1); p <= 2; p++ {
		for range others {
			add(p, order(id))
		}
	}
	produceAt(t, brokers, topic, recs)
	if poison.Offset != before {
		t.Fatalf("the poison record is at offset %d, want %d", poison.Offset, before)
	}
	ends := endOffsets(t, adm, topic)

	r := startDaemon(t, pgConfig(brokers, group, topic, dsn, table, config.ModeInsert), daemon.Options{DeadLetterer: dl})
	t.Cleanup(func() { dl.failing.Store(false) }) // runs before the stop: a failing DLQ would hold the drain

	// While the DLQ fails: sample the commits until the table holds every
	// record behind the poison one, the other partitions are committed to their
	// end and the DLQ was tried a few times; then keep sampling a while.
	var samples, peak0 int64 = 0, -1
	behind := func() int64 {
		return count(t, conn, fmt.Sprintf("SELECT count(DISTINCT kafka_offset) FROM %s WHERE kafka_partition = 0 AND kafka_offset > %d", table, poison.Offset))
	}
	settled := func(c map[int32]int64) bool {
		return c[0] == poison.Offset && c[1] == ends[1] && c[2] == ends[2] && dl.failures.Load() >= 5 && behind() == after
	}
	deadline := time.Now().Add(failureDeadline)
	var c map[int32]int64
	var failuresAtSettle int64
	for extra := 0; extra < 10; {
		if time.Now().After(deadline) {
			t.Fatalf("after %s with the DLQ failing: commits %v (ends %v), %d of %d records behind the poison one written, %d DLQ attempts",
				failureDeadline, c, ends, behind(), after, dl.failures.Load())
		}
		c = committedOffsets(t, adm, group, topic)
		samples++
		peak0 = max(peak0, c[0])
		if c[0] > poison.Offset {
			t.Fatalf("partition 0 committed at %d while the poison record at %d is not in the DLQ: it would be lost on a restart", c[0], poison.Offset)
		}
		if failuresAtSettle == 0 && settled(c) {
			failuresAtSettle = dl.failures.Load() // >= 5: settled asks for it
		}
		if failuresAtSettle > 0 {
			extra++
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := dl.stored.Load(); n != 0 {
		t.Fatalf("%d records reached the DLQ while it was failing", n)
	}
	if got := r.d.Pipeline().Counts().DeadLettered; got != 0 {
		t.Errorf("the pipeline counts %d dead letters while the DLQ fails", got)
	}
	failures := dl.failures.Load()
	if failures <= failuresAtSettle {
		t.Errorf("the DLQ was tried %d times by the start of the observation window and still %d by its end: sluice stopped retrying", failuresAtSettle, failures)
	}

	// The DLQ comes back.
	dl.failing.Store(false)
	waitLagZero(t, adm, group, topic)
	c = committedOffsets(t, adm, group, topic)
	for p, end := range ends {
		if c[p] != end {
			t.Errorf("partition %d committed at %d after the DLQ came back, want its end %d", p, c[p], end)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}

	dead := readTopic(t, brokers, dlqTopic)
	if len(dead) == 0 {
		t.Fatal("the poison record never reached the DLQ")
	}
	for _, dr := range dead {
		if a := deadLetterOrigin(t, dr); a != (at{0, poison.Offset}) {
			t.Errorf("DLQ holds %s, want only the poison record 0@%d", a, poison.Offset)
			continue
		}
		checkDeadLetter(t, dr, poison, flow.ReasonDecode, "", dsn)
	}
	inTable := tableRecords(t, conn, table)
	if inTable[at{0, poison.Offset}] != 0 {
		t.Errorf("the poison record is in the table")
	}
	if want := len(recs) - 1; len(inTable) != want {
		t.Errorf("table holds %d distinct records, want %d", len(inTable), want)
	}
	t.Logf("DLQ failed %d times over %d commit samples; partition 0 held at %d (poison at %d); %d copies in the DLQ after it came back",
		failures, samples, peak0, poison.Offset, len(dead))
}

// TestSchemaMismatchStopsTheSink drops a mapped column while sluice runs: the
// next write fails with SQLSTATE 42703, which no retry and no DLQ can fix.
// Sluice stops with the error, readiness says why, nothing goes to the DLQ,
// and nothing is committed past what was written.
func TestSchemaMismatchStopsTheSink(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	const (
		partitions = 6
		n          = 3000 // before the drop, and again after it
	)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, partitions)
	group := testenv.NewGroup(t, brokers)
	dlqTopic := group + ".dlq"
	testenv.DeleteTopicAtEnd(t, adm, dlqTopic)
	table := testenv.NewTable(t, dsn, ordersTable)
	conn := testenv.Postgres(t, dsn)
	batch := func(from int) []*kgo.Record {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Partition: int32(i % partitions), Key: fmt.Append(nil, from+i), Value: order(from + i)}
		}
		return recs
	}

	r := startDaemon(t, pgConfig(brokers, group, topic, dsn, table, config.ModeInsert), daemon.Options{})
	produceAt(t, brokers, topic, batch(0))
	waitLagZero(t, adm, group, topic)
	written := endOffsets(t, adm, topic)
	if err := r.d.Ready(); err != nil {
		t.Fatalf("not ready before the schema change: %v", err)
	}

	if _, err := conn.Exec(t.Context(), "ALTER TABLE "+table+" DROP COLUMN seq"); err != nil {
		t.Fatal(err)
	}
	produceAt(t, brokers, topic, batch(n))

	select {
	case <-r.done:
	case <-time.After(failureDeadline):
		t.Fatalf("sluice still runs %s after a mapped column was dropped (ready: %v)", failureDeadline, r.d.Ready())
	}
	runErr := r.err
	if runErr == nil {
		t.Fatal("Run returned nil after the sink failed for good")
	}
	t.Logf("Run returned: %v", runErr)
	var fatal *flow.FatalError
	var pgErr *pgconn.PgError
	if !errors.As(runErr, &fatal) {
		t.Errorf("Run's error is not a *flow.FatalError: %v", runErr)
	}
	if !errors.As(runErr, &pgErr) || pgErr.Code != "42703" {
		t.Errorf("Run's error does not carry SQLSTATE 42703 (undefined column): %v", runErr)
	}
	if !strings.Contains(runErr.Error(), `"seq"`) {
		t.Errorf("Run's error does not name the dropped column seq: %v", runErr)
	}
	if strings.Contains(runErr.Error(), dsn) {
		t.Errorf("Run's error shows the DSN: %v", runErr)
	}
	if err := r.d.Pipeline().Fatal(); err == nil {
		t.Error("the pipeline reports no fatal error")
	}
	// Readiness must fail, and say why: an operator reading /readyz or
	// /status needs the schema error, not only that sluice stops.
	ready := r.d.Ready()
	if ready == nil {
		t.Error("Ready() = nil after the sink stopped for good")
	} else if !strings.Contains(ready.Error(), "42703") && !strings.Contains(ready.Error(), `"seq"`) {
		t.Errorf("Ready() = %q: it does not say why sluice is not ready (the sink stopped on SQLSTATE 42703, column \"seq\")", ready)
	}
	if st := r.d.Stats(); st.Ready || !strings.Contains(st.NotReady, "42703") {
		t.Errorf("/status: ready %v, not_ready %q; want not ready with the sink's error", st.Ready, st.NotReady)
	}

	if got := r.d.Pipeline().Counts().DeadLettered; got != 0 {
		t.Errorf("%d records dead-lettered for the sink's schema error", got)
	}
	if dead := readTopic(t, brokers, dlqTopic); len(dead) != 0 {
		t.Errorf("the DLQ holds %d records for the sink's schema error; the first: %q", len(dead), headers(dead[0])[dlq.HeaderMessage])
	}

	// Nothing committed past what is in the table.
	commits := committedOffsets(t, adm, group, topic)
	ends := endOffsets(t, adm, topic)
	inTable := tableRecords(t, conn, table)
	if len(inTable) != n {
		t.Errorf("table holds %d distinct records, want the %d written before the drop", len(inTable), n)
	}
	for p := range int32(partitions) {
		c := commits[p]
		if c != written[p] {
			t.Errorf("partition %d committed at %d, want %d: the end before the drop (now %d)", p, c, written[p], ends[p])
		}
		for o := range c {
			if inTable[at{p, o}] == 0 {
				t.Errorf("partition %d committed at %d but offset %d is not in the table", p, c, o)
				break
			}
		}
	}
	t.Logf("committed %v, ends %v, ready: %v", commits, ends, ready)
}
