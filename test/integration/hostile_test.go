//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
	"github.com/sluicehq/sluice/test/proc"
)

// hostileKind is one class of record built to hurt a sink: too large, nested
// too deep, not storable as text or jsonb, a number too large to convert, or
// ambiguous. Each must end in the DLQ with its reason, never stall the stream
// or crash it, and never cost memory beyond the configured bounds.
type hostileKind struct {
	name    string
	reason  string // sluice.error.reason
	message string // in sluice.error.message
	key     []byte
	value   func(id int) []byte
}

const (
	hostileMaxRecord = 1 * config.MiB // flow.max_record_bytes
	hostileTopicMax  = 8 << 20        // max.message.bytes of the test's topics
)

func hostileKinds() []hostileKind {
	v := func(format string, args ...any) func(int) []byte {
		return func(id int) []byte { return fmt.Appendf(nil, format, append([]any{id}, args...)...) }
	}
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	return []hostileKind{
		{"2 MiB record", flow.ReasonTooLarge, "the limit is 1048576", nil,
			v(`{"id":%d,"name":"%s"}`, strings.Repeat("x", 2<<20))},
		{"nested 65 deep", flow.ReasonDecode, "more than 64 levels deep", nil, v(`{"id":%d,"doc":%s}`, deep(65))},
		{"nested 500k deep", flow.ReasonDecode, "more than 64 levels deep", nil, v(`{"id":%d,"doc":%s}`, deep(500_000))},
		{"invalid UTF-8 in text", flow.ReasonMapping, `column "name" (text) from value.name`, nil, v("{\"id\":%d,\"name\":\"Ada \xff\xfe\"}")},
		{"invalid UTF-8 in jsonb", flow.ReasonMapping, `column "doc" (jsonb) from value.doc`, nil, v("{\"id\":%d,\"doc\":{\"a\":\"\xc3\x28\"}}")},
		{"invalid UTF-8 in the key", flow.ReasonMapping, `column "k" (text) from $key`, []byte{'k', 0xff}, v(`{"id":%d}`)},
		{"NUL escape in text", flow.ReasonMapping, "contains a NUL character", nil, v(`{"id":%d,"name":"a\u0000b"}`)},
		{"NUL escape in jsonb", flow.ReasonMapping, `contains a \u0000 escape`, nil, v(`{"id":%d,"doc":{"a":["\u0000"]}}`)},
		{"NUL byte in the key", flow.ReasonMapping, "contains a NUL character", []byte("k\x00"), v(`{"id":%d}`)},
		{"raw NUL in a JSON string", flow.ReasonDecode, "not valid JSON", nil, v("{\"id\":%d,\"name\":\"a\x00b\"}")},
		{"lone surrogate in jsonb", flow.ReasonMapping, "surrogate", nil, v(`{"id":%d,"doc":"\ud800"}`)},
		{"100k digits into numeric", flow.ReasonMapping, "has 100000 significant digits", nil, v(`{"id":%d,"amount":%s}`, strings.Repeat("9", 100_000))},
		{"1e999999 into numeric", flow.ReasonMapping, "out of range for numeric", nil, v(`{"id":%d,"amount":1e999999}`)},
		{"1e-999999 into numeric", flow.ReasonMapping, "digits after the point", nil, v(`{"id":%d,"amount":1e-999999}`)},
		{"1e999999 into bigint", flow.ReasonMapping, "out of range for bigint", nil, func(int) []byte { return []byte(`{"id":1e999999}`) }},
		{"100k digits into bigint", flow.ReasonMapping, "out of range for bigint", nil,
			func(int) []byte { return []byte(`{"id":` + strings.Repeat("9", 100_000) + `}`) }},
		{"duplicate mapped key", flow.ReasonDecode, `the key "name" twice`, nil, v(`{"id":%d,"name":"a","name":"b"}`)},
		{"duplicate key in jsonb", flow.ReasonDecode, `the key "q" twice`, nil, v(`{"id":%d,"doc":{"items":[{"q":1,"q":2}]}}`)},
		{"malformed JSON", flow.ReasonDecode, "not valid JSON", nil, v(`{"id":%d,"name":"unterminated`)},
	}
}

// hostileGood is good record i; some of them sit right at the bounds.
func hostileGood(i int) []byte {
	switch i % 500 {
	case 11: // just under max_record_bytes
		return fmt.Appendf(nil, `{"id":%d,"name":"%s"}`, i, strings.Repeat("y", int(hostileMaxRecord)-64))
	case 23: // at the nesting bound, and 1000 significant digits
		return fmt.Appendf(nil, `{"id":%d,"doc":%s,"amount":%s.5}`, i, strings.Repeat("[", 63)+strings.Repeat("]", 63), strings.Repeat("4", 999))
	case 37: // a key given twice where the mapping does not read
		return fmt.Appendf(nil, `{"id":%d,"name":"twice elsewhere","other":1,"other":2}`, i)
	}
	return fmt.Appendf(nil, `{"id":%d,"name":"customer \u00e9 %d","doc":{"items":[{"sku":"A-%d","qty":%d}],"gift":false},"amount":%d.%02d}`,
		i, i%97, i%13, i%5+1, i%1000, i%100)
}

// newBigTopic creates a topic whose records may be up to hostileTopicMax
// bytes, deleted when the test ends.
func newBigTopic(t *testing.T, adm *kadm.Client, name string, partitions int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	maxBytes := strconv.Itoa(hostileTopicMax)
	resp, err := adm.CreateTopic(ctx, partitions, 1, map[string]*string{"max.message.bytes": &maxBytes}, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	testenv.DeleteTopicAtEnd(t, adm, name)
	for {
		md, err := adm.Metadata(ctx, name)
		if err == nil {
			if td, ok := md.Topics[name]; ok && td.Err == nil && len(td.Partitions) == int(partitions) {
				led := true
				for _, p := range td.Partitions {
					led = led && p.Err == nil && p.Leader >= 0
				}
				if led {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s: partitions without a leader after 30s", name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// memoryPeak samples the process's Go memory (heap and stacks in use) and
// RSS until stop is called, and returns the peaks.
func memoryPeak(t *testing.T) (stop func() (goMem, rss uint64)) {
	t.Helper()
	done := make(chan struct{})
	var (
		wg            sync.WaitGroup
		peakGo, peakR uint64
	)
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peakGo = max(peakGo, ms.HeapInuse+ms.StackInuse)
		if r, _, err := proc.Mem(os.Getpid()); err == nil {
			peakR = max(peakR, uint64(r))
		}
	}
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				sample()
			}
		}
	})
	return func() (uint64, uint64) {
		close(done)
		wg.Wait()
		sample()
		return peakGo, peakR
	}
}

// TestHostileRecordsGoToTheDLQ mixes every class of hostile record into a
// stream of good ones over three partitions and runs sluice on it: each
// hostile record lands in the DLQ exactly once with its reason (too_large for
// the one over flow.max_record_bytes, never decoded), every good record lands
// in the table, every partition is committed to its end, and the process's Go
// memory stays under the README's memory formula.
//
// The topics accept records of up to 8 MiB (max.message.bytes), as a topic
// that carries 2 MiB records must, and so does the DLQ producer: its batch
// limit is raised through daemon.Options.KafkaOpts, as franz-go's default
// (1,000,012 bytes) would refuse the 2 MiB dead letter.
func TestHostileRecordsGoToTheDLQ(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	const (
		good       = 3000
		partitions = 3
	)
	adm := testenv.Admin(t, brokers)
	topic := testenv.UniqueName(t, "sluice")
	newBigTopic(t, adm, topic, partitions)
	group := testenv.NewGroup(t, brokers)
	dlqTopic := group + ".dlq"
	newBigTopic(t, adm, dlqTopic, 1) // before sluice starts: it finds the topic and does not create it
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, name text, doc jsonb, amount numeric, k text, "+
		"kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	conn := testenv.Postgres(t, dsn)

	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Sink.Postgres.Columns = map[string]string{"id": "value.id", "name": "value.name", "doc": "value.doc",
		"amount": "value.amount", "k": "$key", "kafka_partition": "$partition", "kafka_offset": "$offset"}
	cfg.DLQ.Topic = dlqTopic
	cfg.Flow.MaxRecordBytes = hostileMaxRecord
	cfg.Flow.MaxBufferedBytes = 16 * config.MiB
	cfg.Kafka.FetchMaxBytes, cfg.Kafka.MaxConcurrentFetches, cfg.Kafka.MaxPollRecords = 8*config.MiB, 2, 50
	cfg.Sink.Batch.MaxRecords, cfg.Sink.Batch.MaxBytes = 500, 4*config.MiB
	cfg.Sink.WriteTimeout = 10 * time.Second // below pgConfig's rebalance timeout, as Validate asks
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the test's configuration: %v", err)
	}

	// The stream: good records, and after every 150th one a hostile one, in turn.
	kinds := hostileKinds()
	var (
		recs    []*kgo.Record
		kindOf  = map[int]*hostileKind{} // index in recs -> its class
		largest int
	)
	for i := range good {
		r := &kgo.Record{Partition: int32(i % partitions), Key: fmt.Append(nil, "k", i), Value: hostileGood(i)}
		recs = append(recs, r)
		if i%150 == 149 {
			k := &kinds[(i/150)%len(kinds)]
			h := &kgo.Record{Partition: int32((i / 150) % partitions), Key: k.key, Value: k.value(good + i)}
			if h.Key == nil {
				h.Key = fmt.Append(nil, "h", i)
			}
			kindOf[len(recs)] = k
			recs = append(recs, h)
		}
	}
	if len(kindOf) < len(kinds) {
		t.Fatalf("the stream holds %d hostile records for %d classes", len(kindOf), len(kinds))
	}
	for _, r := range recs {
		largest = max(largest, len(r.Key)+len(r.Value))
	}
	produceBig(t, brokers, topic, recs)
	runtime.GC()

	reg := prometheus.NewRegistry()
	stopSampling := memoryPeak(t)
	r := startDaemon(t, cfg, daemon.Options{Registry: reg,
		KafkaOpts: []kgo.Opt{kgo.ProducerBatchMaxBytes(hostileTopicMax)}})
	waitLagZero(t, adm, group, topic)
	ends, commits := endOffsets(t, adm, topic), committedOffsets(t, adm, group, topic)
	counts := r.d.Pipeline().Counts()
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	peakGo, peakRSS := stopSampling()

	for p, end := range ends {
		if c, ok := commits[p]; !ok || c != end {
			t.Errorf("partition %d: committed %d (present %v), end offset %d: the partition stalled", p, c, ok, end)
		}
	}
	if counts.DeadLettered != int64(len(kindOf)) || counts.Written != good {
		t.Errorf("the pipeline counted %d written and %d dead-lettered, want %d and %d", counts.Written, counts.DeadLettered, good, len(kindOf))
	}

	// The table: every good record once, no hostile one.
	inTable := tableRecords(t, conn, table)
	for i, rec := range recs {
		a := at{rec.Partition, rec.Offset}
		switch n := inTable[a]; {
		case kindOf[i] == nil && n != 1:
			t.Errorf("good record %s is in the table %d times, want once", a, n)
		case kindOf[i] != nil && n != 0:
			t.Errorf("hostile record %s (%s) is in the table", a, kindOf[i].name)
		}
	}
	var bigName, digits int
	if err := conn.QueryRow(t.Context(), "SELECT max(length(name)), max(length(amount::text)) FROM "+table).Scan(&bigName, &digits); err != nil {
		t.Fatal(err)
	}
	if bigName < int(hostileMaxRecord)-64 || digits != 1001 {
		t.Errorf("the longest name has %d characters and the longest amount %d: the records at the bounds were not written whole", bigName, digits)
	}

	// The DLQ: each hostile record exactly once, as it was, with its reason.
	byOrigin := map[at]int{}
	for i, rec := range recs {
		if kindOf[i] != nil {
			byOrigin[at{rec.Partition, rec.Offset}] = i
		}
	}
	seen := map[at]int{}
	perReason := map[string]int{}
	for _, dr := range readTopic(t, brokers, dlqTopic) {
		a := deadLetterOrigin(t, dr)
		seen[a]++
		i, ok := byOrigin[a]
		if !ok {
			t.Errorf("DLQ holds record %s (reason %q: %s), which is a good record", a, headers(dr)[dlq.HeaderReason], headers(dr)[dlq.HeaderMessage])
			continue
		}
		if seen[a] > 1 {
			t.Errorf("DLQ holds record %s (%s) %d times", a, kindOf[i].name, seen[a])
			continue
		}
		k, hs := kindOf[i], headers(dr)
		perReason[k.reason]++
		if hs[dlq.HeaderReason] != k.reason || !strings.Contains(hs[dlq.HeaderMessage], k.message) {
			t.Errorf("%s (%s): reason %q, message %q; want reason %q and a message with %q",
				a, k.name, hs[dlq.HeaderReason], hs[dlq.HeaderMessage], k.reason, k.message)
		}
		if string(dr.Value) != string(recs[i].Value) || string(dr.Key) != string(recs[i].Key) {
			t.Errorf("%s (%s): the DLQ record's key or value (%d bytes) differs from the original's (%d bytes)",
				a, k.name, len(dr.Value), len(recs[i].Value))
		}
		if len(hs[dlq.HeaderMessage]) > 1100 {
			t.Errorf("%s (%s): a message of %d bytes; it must quote a snippet, not the record", a, k.name, len(hs[dlq.HeaderMessage]))
		}
	}
	for a, i := range byOrigin {
		if seen[a] == 0 {
			t.Errorf("hostile record %s (%s) is not in the DLQ", a, kindOf[i].name)
		}
	}
	for reason, want := range perReason {
		if got := metricValue(t, reg, "sluice_records_dlq_total", "reason", reason); got != float64(want) {
			t.Errorf("sluice_records_dlq_total{reason=%q} = %v, want %d", reason, got, want)
		}
	}

	// Memory: the formula of the README, with the largest record of the stream.
	bound := uint64(config.MemoryBound(cfg, config.ByteSize(largest)))
	if peakGo > bound {
		t.Errorf("Go memory in use peaked at %d MiB, over the memory formula's %d MiB", peakGo>>20, bound>>20)
	}
	t.Logf("%d records (%d hostile: %v by reason); Go memory peak %d MiB, RSS peak %d MiB (this test process, race detector included), formula %d MiB",
		len(recs), len(kindOf), perReason, peakGo>>20, peakRSS>>20, bound>>20)
}

// produceBig writes recs, each to the partition it names, with a producer
// that takes records of up to hostileTopicMax bytes.
func produceBig(t *testing.T, brokers []string, topic string, recs []*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(hostileTopicMax),
		kgo.ProducerLinger(5*time.Millisecond))
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
