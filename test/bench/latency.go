package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// latencyResult is the end-to-end latency run.
type latencyResult struct {
	target, achieved float64 // input rate asked for and reached, records per second
	produced         int
	duration         time.Duration
	p50, p99, max    time.Duration // record timestamp to the commit of its transaction
	transactions     int
	medianWrite      time.Duration // per transaction, from the table: BEGIN to its last row
	medianWriteHist  time.Duration // sluice's sink_write_duration_seconds, interpolated
	linger           time.Duration
	run              *sluiceResult
}

// bound is the aim: linger + 3 x the median batch write time.
func (l latencyResult) bound() time.Duration {
	return l.linger + 3*max(l.medianWrite, l.medianWriteHist)
}

// latencyRun runs sluice in insert mode on a fresh, empty topic and feeds it
// at rate records per second for -latency-duration. Each row's latency is its
// record's timestamp (set by the producer as it hands the record over) to the
// commit of the transaction that wrote it; the commit is taken as the
// clock_timestamp() of the transaction's last inserted row, which the commit
// follows within the same write.
func (e *env) latencyRun(ctx context.Context, rate float64) (*latencyResult, error) {
	res := &latencyResult{target: rate}
	var topic string
	for range 256 {
		topic = "sluice_bench_" + randomID() + "_latency"
		if evenLanes(lanesOf(topic, e.o.partitions, e.o.lanes), e.o.partitions) {
			break
		}
	}
	if err := createTopic(ctx, e.adm, topic, e.o.partitions); err != nil {
		return nil, err
	}
	e.cleanup("delete topic "+topic, func(c context.Context) error { return deleteTopic(c, e.adm, topic) })
	table, err := e.table(ctx, "latency", latencyShape)
	if err != nil {
		return nil, err
	}
	e.cleanup("drop table "+table, func(c context.Context) error { return dropTable(c, e.pg, table) })
	p, run, err := e.startSluice(ctx, modeLatency, table, topic, table)
	if err != nil {
		return nil, err
	}
	res.run, res.linger = run, run.cfg.Sink.Batch.Linger
	fail := func(err error) (*latencyResult, error) {
		_ = e.finish(ctx, p, run, 0)
		return nil, err
	}

	// Wait until sluice owns every partition.
	joinBy := time.Now().Add(60 * time.Second)
	for {
		p.mu.Lock()
		st := p.lastStatus
		p.mu.Unlock()
		if st.Ready && len(st.Partitions) == e.o.partitions {
			break
		}
		if time.Now().After(joinBy) {
			return fail(fmt.Errorf("latency: sluice not ready with %d partitions after 60s", e.o.partitions))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-p.exited:
			return fail(fmt.Errorf("latency: sluice exited: %v", p.waitErr))
		case <-time.After(25 * time.Millisecond):
		}
	}

	logf("latency: feeding sluice %.0f records/s for %s", rate, e.o.latency)
	if res.produced, res.duration, err = producePaced(ctx, e.brokers, topic, e.o.partitions, rate, e.o.latency); err != nil {
		return fail(err)
	}
	res.achieved = float64(res.produced) / res.duration.Seconds()
	ends, err := endOffsets(ctx, e.adm, topic)
	if err != nil {
		return fail(err)
	}
	elapsed, werr := e.waitCommitted(ctx, p, table, topic, ends)
	run.elapsed = elapsed
	if err := e.finish(ctx, p, run, int64(res.produced)); werr != nil || err != nil {
		return nil, fmt.Errorf("latency: %w", errors.Join(werr, err))
	}
	res.medianWriteHist = run.metrics.medianWrite()

	t := pgx.Identifier{table}.Sanitize()
	var n int64
	var p50, p99, pmax, write float64
	err = e.pg.QueryRow(ctx, `WITH tx AS (
			SELECT xmin::text AS x, max(written_at) AS commit_at, min(tx_start) AS began FROM `+t+` GROUP BY 1)
		SELECT count(*),
			percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM tx.commit_at - r.produced_at)),
			percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM tx.commit_at - r.produced_at)),
			max(extract(epoch FROM tx.commit_at - r.produced_at)),
			(SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM commit_at - began)) FROM tx)
		FROM `+t+` r JOIN tx ON r.xmin::text = tx.x`).Scan(&n, &p50, &p99, &pmax, &write)
	if err != nil {
		return nil, fmt.Errorf("latency: query %s: %w", table, err)
	}
	if err := e.pg.QueryRow(ctx, `SELECT count(DISTINCT xmin::text) FROM `+t).Scan(&res.transactions); err != nil {
		return nil, fmt.Errorf("latency: query %s: %w", table, err)
	}
	if n != int64(res.produced) {
		return nil, fmt.Errorf("latency: the table holds %d rows of %d produced", n, res.produced)
	}
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	res.p50, res.p99, res.max, res.medianWrite = sec(p50), sec(p99), sec(pmax), sec(write)
	logf("latency: p50 %s, p99 %s at %.0f records/s", res.p50.Round(time.Millisecond), res.p99.Round(time.Millisecond), res.achieved)
	return res, nil
}

// producePaced produces orders round-robin over the partitions at rate records
// per second for d, each with its timestamp set as it is handed to the client,
// and returns how many it produced and how long that took.
func producePaced(ctx context.Context, brokers []string, topic string, partitions int, rate float64, d time.Duration) (int, time.Duration, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(time.Millisecond),
		kgo.MaxBufferedRecords(1_000_000),
	)
	if err != nil {
		return 0, 0, fmt.Errorf("kafka producer: %w", err)
	}
	defer cl.Close()
	var (
		mu       sync.Mutex
		firstErr error
	)
	setErr := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}
	}
	start := time.Now()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	i := 0
	for {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		for due := int(rate * elapsed.Seconds()); i < due; i++ {
			o := orderAt(i)
			value := o.appendJSON(make([]byte, 0, valueTarget+16))
			cl.Produce(ctx, &kgo.Record{Key: strconv.AppendInt(nil, o.id, 10), Value: value,
				Partition: partitionOf(i, partitions), Timestamp: time.Now()}, setErr)
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-tick.C:
		}
	}
	elapsed := time.Since(start)
	if err := cl.Flush(ctx); err != nil {
		return 0, 0, fmt.Errorf("produce: %w", err)
	}
	if firstErr != nil {
		return 0, 0, fmt.Errorf("produce: %w", firstErr)
	}
	return i, elapsed, nil
}

// endOffsets lists the end offset of every partition of topic.
func endOffsets(ctx context.Context, adm *kadm.Client, topic string) (map[int32]int64, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	out := map[int32]int64{}
	ends.Each(func(lo kadm.ListedOffset) { out[lo.Partition] = lo.Offset })
	return out, nil
}
