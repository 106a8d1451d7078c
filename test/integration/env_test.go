//go:build integration

package integration

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/test/integration/testenv"
)

// TestEnvironment proves that the test environment is real and complete: a
// Kafka broker that serves a 6-partition topic, consumer groups and offset
// commits, and a PostgreSQL server that takes COPY. It moves 10,000 records
// from Kafka into a table in a consumer group, committing after each COPY,
// and then asks the broker for the group's lag: it must be 0, and the table
// must hold every record exactly once.
func TestEnvironment(t *testing.T) {
	brokers := testenv.Kafka(t)
	dsn := testenv.PostgresDSN(t)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	const (
		partitions = 6
		total      = 10_000
	)
	topic := testenv.NewTopic(t, brokers, partitions)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, `(
		topic           text   NOT NULL,
		kafka_partition int    NOT NULL,
		kafka_offset    bigint NOT NULL,
		record_key      text   NOT NULL,
		payload         bytea  NOT NULL,
		PRIMARY KEY (topic, kafka_partition, kafka_offset)
	)`)

	produce(ctx, t, brokers, topic, total)
	perPartition := consumeIntoTable(ctx, t, brokers, group, topic, dsn, table, total)

	if len(perPartition) != partitions {
		t.Errorf("records came from %d partitions, want all %d: %v", len(perPartition), partitions, perPartition)
	}

	// The broker's view of the group: committed offsets at the end of every
	// partition.
	lag := testenv.GroupLag(t, testenv.Admin(t, brokers), group)
	if got := lag.Lag.Total(); got != 0 {
		t.Errorf("group lag = %d, want 0", got)
	}
	var committed int64
	for _, l := range lag.Lag.Sorted() {
		if l.Err != nil {
			t.Errorf("lag of %s/%d: %v", l.Topic, l.Partition, l.Err)
			continue
		}
		if l.Lag != 0 {
			t.Errorf("lag of %s/%d = %d (commit %d, end %d), want 0", l.Topic, l.Partition, l.Lag, l.Commit.At, l.End.Offset)
		}
		committed += l.Commit.At
	}
	if n := len(lag.Lag[topic]); n != partitions {
		t.Errorf("lag lists %d partitions of %s, want %d", n, topic, partitions)
	}
	if committed != total {
		t.Errorf("committed offsets add up to %d, want %d", committed, total)
	}

	// The database's view: every record once.
	var rows, keys, parts int64
	err := testenv.Postgres(t, dsn).QueryRow(ctx,
		`SELECT count(*), count(DISTINCT record_key), count(DISTINCT kafka_partition) FROM public.`+table,
	).Scan(&rows, &keys, &parts)
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	if rows != total || keys != total || parts != partitions {
		t.Errorf("table has %d rows, %d distinct keys, %d partitions; want %d, %d, %d",
			rows, keys, parts, total, total, partitions)
	}
}

// produce writes n records with distinct keys, so that the default
// partitioner spreads them over every partition.
func produce(ctx context.Context, t *testing.T, brokers []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(5*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	defer cl.Close()

	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{
			Key:   []byte("key-" + strconv.Itoa(i)),
			Value: fmt.Appendf(nil, `{"id":%d,"amount":%d.%02d}`, i, i/100, i%100),
		}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce %d records to %s: %v", n, topic, err)
	}
}

// consumeIntoTable consumes the topic from the start in the group, COPYs every
// polled batch into the table and then commits the batch's offsets, until it
// has moved n records. It returns the number of records per partition.
func consumeIntoTable(ctx context.Context, t *testing.T, brokers []string, group, topic, dsn, table string, n int) map[int32]int {
	t.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer cl.Close()
	conn := testenv.Postgres(t, dsn)

	columns := []string{"topic", "kafka_partition", "kafka_offset", "record_key", "payload"}
	perPartition := make(map[int32]int)
	got := 0
	for got < n {
		fetches := cl.PollRecords(ctx, 2_000)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", got, n, err)
		}
		for _, fe := range fetches.Errors() {
			t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		recs := fetches.Records()
		if len(recs) == 0 {
			continue
		}

		rows := make([][]any, len(recs))
		for i, r := range recs {
			rows[i] = []any{r.Topic, r.Partition, r.Offset, string(r.Key), r.Value}
			perPartition[r.Partition]++
		}
		copied, err := conn.CopyFrom(ctx, pgx.Identifier{"public", table}, columns, pgx.CopyFromRows(rows))
		if err != nil {
			t.Fatalf("copy %d records into %s: %v", len(rows), table, err)
		}
		if copied != int64(len(rows)) {
			t.Fatalf("copy into %s: %d rows copied, want %d", table, copied, len(rows))
		}
		if err := cl.CommitRecords(ctx, recs...); err != nil {
			t.Fatalf("commit offsets of %d records: %v", len(recs), err)
		}
		got += len(recs)
	}
	if got != n {
		t.Fatalf("consumed %d records, want exactly %d", got, n)
	}
	return perPartition
}
