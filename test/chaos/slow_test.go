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

// Slow records. The suite's binary is built with the chaoshook tag, whose
// only addition is a mapping hook: a record with the sluice-chaos-hang header
// maps for as long as the header says, or until its mapping's context ends
// (cmd/sluice/hook_chaos.go). That is a record whose processing hangs, as a
// pathological record in a real mapping would, while every other record maps
// in microseconds. (sluice refuses the records that used to be slow by
// themselves, such as numerics of a hundred thousand digits, before they cost
// anything: see the hostile-input limits.)
const (
	hangHeader = "sluice-chaos-hang" // as cmd/sluice/hook_chaos.go
	hangFor    = "30s"               // far beyond the record timeout; the watchdog ends it
)

// TestSlowRecord mixes slow records (two per partition, spread through the
// stream; their mapping hangs) into 20,000 ordinary ones (10,000 in -short)
// and runs sluice with a flow.record_timeout of 100ms. It asserts: every slow
// record is in the DLQ topic with reason timeout; every ordinary record is in
// the table (its partition kept moving past the slow one); the group is
// committed to the end of every partition; nothing is lost. An ordinary record
// that also timed out (a spurious timeout, possible on a loaded machine) is
// reported, not failed on: it is dead-lettered, not lost.
func TestSlowRecord(t *testing.T) {
	t.Parallel()
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	n := int64(20_000)
	if testing.Short() {
		n = 10_000
	}
	const partitions, slowPerPartition = 6, 2
	const timeout = 100 * time.Millisecond
	f := newFigures(t, "slow record", "record_timeout "+timeout.String())

	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, partitions)
	group := testenv.NewGroup(t, brokers)
	testenv.DeleteTopicAtEnd(t, adm, group+".dlq")
	cfg := baseConfig(brokers, group, topic, dsn, "", config.ModeInsert)
	table := testenv.NewTable(t, dsn, "(id bigint NOT NULL, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	cfg.Table = "public." + table
	cfg.RecordTimeout = timeout
	f.RSSBound, _ = memoryBound(t, cfg, 200)

	// Slow records at evenly spread places: record i is slow when
	// i mod every == every/2, so each partition gets its share.
	every := n / (partitions * slowPerPartition)
	isSlow := func(i int64) bool { return i%every == every/2 }
	gen := func(i int64) *kgo.Record {
		r := &kgo.Record{Topic: topic, Partition: int32(i % partitions), Key: strconv.AppendInt(nil, i, 10), Value: order(i)}
		if isSlow(i) {
			r.Headers = []kgo.RecordHeader{{Key: hangHeader, Value: []byte(hangFor)}}
		}
		return r
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
	f.note("%d slow records (mapping hangs for %s unless the record timeout ends it), %d ordinary", len(slow), hangFor, n-int64(len(slow)))
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
