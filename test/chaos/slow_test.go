//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// Slow records. sluice has no hook that makes a record's processing hang, and
// the scenarios run the built binary, so the slowness has to come from the
// record itself. What is slow in sluice's own processing (decode and mapping,
// on the worker pool, under flow.record_timeout) is converting a huge decimal:
// a numeric column's value is parsed into a big.Int, which costs time
// quadratic in its digits. A record with slowColumns numeric fields of
// PostgreSQL's largest numeric (131,072 digits before the point and 16,383
// after) takes tens of milliseconds per field to map, in the worker that maps
// it, while an ordinary record takes microseconds. The record stays under the
// broker's and the DLQ's 1 MB message limit.
//
// What cannot be done with the binary and a real PostgreSQL: a record whose
// processing hangs indefinitely (the mapping always ends), and a slow row in
// the sink: a trigger that sleeps for one row (pg_sleep) delays the whole
// batch's COPY, which is a slow sink (write_timeout, retries, the breaker),
// not a slow record, and never reaches the record timeout.
const (
	slowColumns   = 6
	numericDigits = 131072 // before the point
	numericScale  = 16383  // after the point
)

// hugeNumeric is the largest value PostgreSQL's numeric holds, as JSON.
func hugeNumeric() string {
	return strings.Repeat("9", numericDigits) + "." + strings.Repeat("9", numericScale)
}

// mappingCost measures, in this process, what converting one slow record's
// fields costs: big.Int.SetString of each, as sluice's mapper does.
func mappingCost() time.Duration {
	digits := strings.Repeat("9", numericDigits+numericScale)
	start := time.Now()
	for range slowColumns {
		var n big.Int
		n.SetString(digits, 10)
	}
	return time.Since(start)
}

// TestSlowRecord mixes slow records (two per partition, spread through the
// stream) into 20,000 ordinary ones (10,000 in -short) and runs sluice with a
// flow.record_timeout well below a slow record's mapping time. It asserts:
// every slow record is in the DLQ topic with reason timeout; every ordinary
// record is in the table (its partition kept moving past the slow one); the
// group is committed to the end of every partition; nothing is lost. An
// ordinary record that also timed out (a spurious timeout, possible on a
// loaded machine) is reported, not failed on: it is dead-lettered, not lost.
func TestSlowRecord(t *testing.T) {
	t.Parallel()
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	n := int64(20_000)
	if testing.Short() {
		n = 10_000
	}
	const partitions, slowPerPartition = 6, 2
	cost := mappingCost()
	timeout := min(100*time.Millisecond, cost/3)
	f := newFigures(t, "slow record", "record_timeout "+timeout.String())
	if timeout < 20*time.Millisecond {
		t.Skipf("a slow record maps in %v on this machine: too fast to tell from scheduling noise", cost)
	}

	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, partitions)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	huge := hugeNumeric()
	var ddl strings.Builder
	ddl.WriteString("(id bigint NOT NULL, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL")
	cfg := baseConfig(brokers, group, topic, dsn, "", config.ModeInsert)
	for c := range slowColumns {
		fmt.Fprintf(&ddl, ", n%d numeric", c)
		cfg.Columns[fmt.Sprintf("n%d", c)] = fmt.Sprintf("value.n%d", c)
	}
	ddl.WriteString(")")
	table := testenv.NewTable(t, dsn, ddl.String())
	cfg.Table = "public." + table
	cfg.RecordTimeout = timeout
	f.RSSBound, _ = memoryBound(t, cfg, 10+len(huge)*slowColumns+100)

	// Slow records at evenly spread places: record i is slow when
	// i mod every == every/2, so each partition gets its share.
	every := n / (partitions * slowPerPartition)
	isSlow := func(i int64) bool { return i%every == every/2 }
	gen := func(i int64) *kgo.Record {
		v := order(i)
		if isSlow(i) {
			var b bytes.Buffer
			fmt.Fprintf(&b, `{"id":%d,"amount":1.00,"seq":%d`, i, i)
			for c := range slowColumns {
				fmt.Fprintf(&b, `,"n%d":%s`, c, huge)
			}
			b.WriteString("}")
			v = b.Bytes()
		}
		return &kgo.Record{Topic: topic, Partition: int32(i % partitions), Key: strconv.AppendInt(nil, i, 10), Value: v}
	}
	slow := map[at]bool{}
	for i := range n {
		if isSlow(i) {
			slow[at{int32(i % partitions), i / partitions}] = true
		}
	}

	p := startSluice(t, cfg, "sluice")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	prod := newProducer(t, brokers, topic, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	start := time.Now()
	prod.produceN(ctx, 0, n, gen)
	waitLagZero(t, adm, group, topic, 5*time.Minute, p.alive)
	f.Drain = time.Since(start)
	m := p.mon.lastMetrics()
	if code, took := p.terminate(cfg.ShutdownTimeout + 10*time.Second); code != 0 {
		f.errorf(t, "sluice exited with %d after SIGTERM (%v), want 0", code, took)
	}

	l := account(t, brokers, topic, group+".dlq", pgConn(t, dsn), table)
	f.fromLedger(l)
	f.PeakRSS = p.mon.peakRSS()
	var slowTimedOut, slowOther, spurious int64
	var other []string
	for a, ds := range l.inDLQ {
		switch {
		case slow[a] && ds[0].reason == flow.ReasonTimeout:
			slowTimedOut++
		case slow[a]:
			slowOther++
			other = append(other, fmt.Sprintf("slow record %v dead-lettered as %q: %s", a, ds[0].reason, ds[0].msg))
		case ds[0].reason == flow.ReasonTimeout:
			spurious++
		default:
			other = append(other, fmt.Sprintf("ordinary record %v dead-lettered as %q: %s", a, ds[0].reason, ds[0].msg))
		}
	}
	var slowInTable int64
	for a := range slow {
		if l.inTable[a] > 0 {
			slowInTable++
		}
	}
	f.note("%d slow records (%d numeric fields of %d digits: %v of mapping each, measured here), %d ordinary",
		len(slow), slowColumns, numericDigits+numericScale, cost.Round(time.Millisecond), n-int64(len(slow)))
	f.note("%d slow records dead-lettered as timeout, %d written anyway, %d ordinary records timed out (spurious)", slowTimedOut, slowInTable, spurious)
	f.note("time to drain = production start to everything committed; %.0f rows written", m.Written)
	l.checkNoLoss(t, f)
	if slowTimedOut != int64(len(slow)) {
		f.errorf(t, "%d of %d slow records dead-lettered with reason timeout; %d written to the table; %v", slowTimedOut, len(slow), slowInTable, other)
	} else if len(other) > 0 {
		f.errorf(t, "unexpected dead letters: %v", other)
	}
	if spurious > 0 {
		t.Logf("%d ordinary records exceeded the %v record timeout on this loaded machine (dead-lettered, not lost)", spurious, timeout)
	}
}
