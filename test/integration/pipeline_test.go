//go:build integration

package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// pgConfig is a sluice configuration for the test environment, writing
// orders {id, amount, seq} from topic into table.
func pgConfig(brokers []string, group, topic, dsn, table, mode string) *config.Config {
	cfg := config.Default()
	cfg.Kafka.Brokers, cfg.Kafka.Group, cfg.Kafka.Topics = brokers, group, []string{topic}
	cfg.Kafka.FetchMaxWait = 200 * time.Millisecond
	cfg.Kafka.SessionTimeout, cfg.Kafka.RebalanceTimeout = 10*time.Second, 20*time.Second
	cfg.Flow.RecordTimeout = 10 * time.Second
	cfg.Sink.Type = config.SinkPostgres
	cfg.Sink.Concurrency = 4
	cfg.Sink.Batch.Linger = 50 * time.Millisecond
	cfg.Sink.Retry = config.Retry{InitialBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
	cfg.Commit.Interval = 200 * time.Millisecond
	cfg.ShutdownTimeout = 20 * time.Second
	cfg.Observability.Listen = "127.0.0.1:0"
	cfg.Sink.Postgres = config.Postgres{DSN: config.Secret(dsn), Table: "public." + table, Mode: mode,
		Delivery: config.DeliveryAtLeastOnce, Columns: map[string]string{
			"id": "value.id", "amount": "value.amount", "seq": "value.seq",
			"kafka_partition": "$partition", "kafka_offset": "$offset"}}
	if mode == config.ModeUpsert {
		cfg.Sink.Postgres.KeyColumns = []string{"id"}
	}
	return cfg
}

// running is a sluice started in-process for a test.
type running struct {
	d    *daemon.Daemon
	stop func() error
}

func start(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	d, err := daemon.New(t.Context(), cfg, daemon.Options{Logger: zaptest.NewLogger(t).Named(cfg.Kafka.Group)})
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var stopped bool
	var runErr error
	r := &running{d: d}
	r.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// produceOrders writes n records value(0..n-1), keyed by key(i) (by i when
// key is nil), so they spread over the topic's partitions by key.
func produceOrders(t *testing.T, brokers []string, topic string, n int, value func(i int) []byte) {
	produceKeyed(t, brokers, topic, n, nil, value)
}

func produceKeyed(t *testing.T, brokers []string, topic string, n int, key func(i int) []byte, value func(i int) []byte) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchMaxBytes(1<<20), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const chunk = 10000
	for from := 0; from < n; from += chunk {
		recs := make([]*kgo.Record, 0, chunk)
		for i := from; i < min(n, from+chunk); i++ {
			k := []byte(fmt.Sprint(i))
			if key != nil {
				k = key(i)
			}
			recs = append(recs, &kgo.Record{Key: k, Value: value(i)})
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

func order(i int) []byte {
	return fmt.Appendf(nil, `{"id":%d,"amount":%d.%02d,"seq":%d,"customer":"customer-%d","note":"an order of the integration suite"}`,
		i, i%1000, i%100, i, i%97)
}

// waitLagZero waits until the group has committed every partition of topic to
// its end, bounded by the test's deadline.
func waitLagZero(t *testing.T, adm *kadm.Client, group, topic string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var last int64 = -1
	for time.Now().Before(deadline) {
		lags, err := adm.Lag(t.Context(), group)
		if err == nil {
			if gl, ok := lags[group]; ok && gl.Error() == nil {
				tl := gl.Lag.TotalByTopic()[topic]
				if len(gl.Lag[topic]) > 0 && tl.Lag == 0 {
					return
				}
				last = tl.Lag
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("group %s still lags %d records on %s", group, last, topic)
}

func count(t *testing.T, conn *pgx.Conn, query string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// waitRows waits, at most a minute, until table holds at least min rows.
func waitRows(t *testing.T, conn *pgx.Conn, table string, min int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for count(t, conn, "SELECT count(*) FROM "+table) < min {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d rows in %s after a minute", min, table)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const ordersTable = "(id bigint NOT NULL, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"

func TestPipeline100kOverSixPartitions(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	for _, mode := range []string{config.ModeUpsert, config.ModeInsert} {
		t.Run(mode, func(t *testing.T) {
			topic := testenv.NewTopic(t, brokers, 6)
			group := testenv.NewGroup(t, brokers)
			ddl := ordersTable
			if mode == config.ModeUpsert {
				ddl = "(id bigint PRIMARY KEY, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"
			}
			table := testenv.NewTable(t, dsn, ddl)
			const n = 100_000
			produceOrders(t, brokers, topic, n, order)
			r := start(t, pgConfig(brokers, group, topic, dsn, table, mode))
			waitLagZero(t, testenv.Admin(t, brokers), group, topic)
			if err := r.stop(); err != nil {
				t.Fatalf("sluice stopped with %v", err)
			}
			conn := testenv.Postgres(t, dsn)
			distinct := count(t, conn, "SELECT count(DISTINCT id) FROM "+table)
			if distinct != n {
				t.Errorf("%d distinct ids in the table, produced %d", distinct, n)
			}
			rows := count(t, conn, "SELECT count(*) FROM "+table)
			if mode == config.ModeUpsert && rows != n {
				t.Errorf("upsert mode: %d rows, want exactly %d", rows, n)
			}
			if mode == config.ModeInsert && rows < n {
				t.Errorf("insert mode: %d rows, want at least %d", rows, n)
			}
			t.Logf("%s: %d rows, %d distinct ids", mode, rows, distinct)
		})
	}
}

func TestPipelineKeepsPerPartitionOrder(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, "(id bigint PRIMARY KEY, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	// Key 7 is updated 1,000 times (always the same partition, by key); 30,000
	// other orders keep all lanes busy around it.
	const updates = 1000
	keyed7 := func(i int) []byte {
		if i%31 == 0 {
			return []byte("7")
		}
		return []byte(fmt.Sprint(i))
	}
	produceKeyed(t, brokers, topic, 31000, keyed7, func(i int) []byte {
		if i%31 == 0 {
			return fmt.Appendf(nil, `{"id":7,"amount":1.00,"seq":%d}`, i/31+1)
		}
		return order(i + 1_000_000)
	})
	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeUpsert)
	cfg.Sink.Batch.MaxRecords = 100 // many batches, so order across batches matters
	r := start(t, cfg)
	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	conn := testenv.Postgres(t, dsn)
	if seq := count(t, conn, "SELECT seq FROM "+table+" WHERE id = 7"); seq != updates {
		t.Errorf("key 7 ends at update %d, want its last, %d", seq, updates)
	}
}

func TestPipelineSlowSinkPausesAndLosesNothing(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, ordersTable)
	const n = 30000
	produceOrders(t, brokers, topic, n, order)

	// The test holds an exclusive lock on the table: every COPY waits.
	lock := testenv.Postgres(t, dsn)
	tx, err := lock.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Flow.MaxBufferedRecords = 3000
	cfg.Flow.MaxBufferedBytes = 256 * config.KiB
	cfg.Sink.Batch.MaxRecords = 500
	r := start(t, cfg)
	gate := r.d.Gate()
	deadline := time.Now().Add(time.Minute)
	for !gate.Stats().Full {
		if time.Now().After(deadline) {
			t.Fatal("the gate never filled while the sink was blocked")
		}
		time.Sleep(20 * time.Millisecond)
	}
	paused := 0
	for range 50 { // the pause is applied right after the gate fills
		paused = 0
		for _, p := range r.d.Consumer().Stats() {
			if p.Paused {
				paused++
			}
		}
		if paused > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if paused == 0 {
		t.Error("no partition paused while the gate was full")
	}
	time.Sleep(time.Second) // the sink stays blocked a while: memory must stay flat
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	st := gate.Stats()
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	if st.PeakBytes > st.MaxBytes {
		t.Errorf("buffered bytes peaked at %d, budget %d", st.PeakBytes, st.MaxBytes)
	}
	conn := testenv.Postgres(t, dsn)
	if got := count(t, conn, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table); got != n {
		t.Errorf("%d distinct records in the table, produced %d", got, n)
	}
	t.Logf("peak buffer %d of %d bytes; %d partitions paused at the full gate", st.PeakBytes, st.MaxBytes, paused)
}

func TestPipelineMembersJoinAndLeaveUnderLoad(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, ordersTable)
	const n = 60000
	produceOrders(t, brokers, topic, n, order)
	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Sink.Batch.MaxRecords = 200
	cfg.Flow.RateLimit = config.RateLimit{RecordsPerSecond: 8000, Burst: 200} // keep it mid-stream when the group changes
	a := start(t, cfg)
	conn := testenv.Postgres(t, dsn)
	waitRows(t, conn, table, 5000)
	b := start(t, cfg) // joins: partitions move from a to b, a's revoked batches finish first
	waitRows(t, conn, table, 20000)
	if err := a.stop(); err != nil { // leaves mid-stream
		t.Fatalf("first member stopped with %v", err)
	}
	waitLagZero(t, testenv.Admin(t, brokers), group, topic)
	if err := b.stop(); err != nil {
		t.Fatalf("second member stopped with %v", err)
	}
	distinct := count(t, conn, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table)
	rows := count(t, conn, "SELECT count(*) FROM "+table)
	if distinct != n {
		t.Errorf("%d distinct records in the table, produced %d", distinct, n)
	}
	t.Logf("%d rows for %d records: %d redelivered around the rebalances (at-least-once)", rows, n, rows-distinct)
}
