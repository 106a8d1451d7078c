package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// createTopic creates topic with p partitions (replication factor 1) and
// waits until every partition has a leader.
func createTopic(ctx context.Context, adm *kadm.Client, topic string, p int) error {
	resp, err := adm.CreateTopic(ctx, int32(p), 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		md, err := adm.Metadata(ctx, topic)
		if err == nil {
			if td, ok := md.Topics[topic]; ok && td.Err == nil && len(td.Partitions) == p && allLed(td) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic %s: partitions without a leader after 30s (last error: %v)", topic, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func allLed(td kadm.TopicDetail) bool {
	for _, p := range td.Partitions {
		if p.Err != nil || p.Leader < 0 {
			return false
		}
	}
	return true
}

func deleteTopic(ctx context.Context, adm *kadm.Client, topic string) error {
	resp, err := adm.DeleteTopic(ctx, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("delete topic %s: %w", topic, err)
	}
	return nil
}

func deleteGroup(ctx context.Context, adm *kadm.Client, group string) error {
	resp, err := adm.DeleteGroup(ctx, group)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return fmt.Errorf("delete consumer group %s: %w", group, err)
	}
	return nil
}

// produced is what produceOrders reports.
type produced struct {
	elapsed     time.Duration
	valueBytes  int64 // sum of value sizes
	maxRecord   int   // largest key + value
	endOffsets  map[int32]int64
	compression string
}

// produceOrders writes orders [0, n) once, order i to partition i mod p, and
// returns the end offset of every partition.
func produceOrders(ctx context.Context, brokers []string, adm *kadm.Client, topic string, n, p int) (produced, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchMaxBytes(1<<20),
		kgo.MaxBufferedRecords(100_000),
	)
	if err != nil {
		return produced{}, fmt.Errorf("kafka producer: %w", err)
	}
	defer cl.Close()

	var (
		out      = produced{compression: "snappy (franz-go's default)"}
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
	for i := range n {
		o := orderAt(i)
		key := strconv.AppendInt(nil, o.id, 10)
		value := o.appendJSON(make([]byte, 0, valueTarget+16))
		out.valueBytes += int64(len(value))
		out.maxRecord = max(out.maxRecord, len(key)+len(value))
		cl.Produce(ctx, &kgo.Record{Key: key, Value: value, Partition: partitionOf(i, p)}, setErr)
		if i%10000 == 0 && ctx.Err() != nil {
			break
		}
	}
	if err := cl.Flush(ctx); err != nil {
		return produced{}, fmt.Errorf("produce: %w", err)
	}
	out.elapsed = time.Since(start)
	if firstErr != nil {
		return produced{}, fmt.Errorf("produce: %w", firstErr)
	}

	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return produced{}, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	out.endOffsets = map[int32]int64{}
	var total int64
	ends.Each(func(lo kadm.ListedOffset) {
		out.endOffsets[lo.Partition] = lo.Offset
		total += lo.Offset
	})
	if err := ends.Error(); err != nil {
		return produced{}, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	if total != int64(n) || len(out.endOffsets) != p {
		return produced{}, fmt.Errorf("topic %s holds %d records in %d partitions after producing %d into %d", topic, total, len(out.endOffsets), n, p)
	}
	return out, nil
}

// committedAll reports whether group has committed every partition of topic
// up to its end offset in ends (its committed lag is 0), and the remaining lag.
func committedAll(ctx context.Context, adm *kadm.Client, group, topic string, ends map[int32]int64) (bool, int64, error) {
	lags, err := adm.Lag(ctx, group)
	if err != nil {
		return false, -1, err
	}
	gl, ok := lags[group]
	if !ok {
		return false, -1, nil
	}
	if err := gl.Error(); err != nil {
		return false, -1, err
	}
	var remaining int64
	done := true
	for p, end := range ends {
		l, ok := gl.Lag.Lookup(topic, p)
		if !ok || l.Err != nil || l.Commit.At < 0 {
			remaining += end
			done = false
			continue
		}
		if l.Commit.At < end {
			remaining += end - l.Commit.At
			done = false
		}
	}
	return done, remaining, nil
}

// lanesOf returns how many of the topic's p partitions each of sluice's lanes
// owns, by flow's routing (fnv-32a of the topic and the big-endian partition,
// mod the lane count; internal/flow/pipeline.go Admit, copied here since it is
// not exported). Only the report and the choice of topic name use it.
func lanesOf(topic string, p, lanes int) []int {
	out := make([]int, lanes)
	for part := range p {
		h := fnv.New32a()
		h.Write([]byte(topic))
		h.Write([]byte{byte(part >> 24), byte(part >> 16), byte(part >> 8), byte(part)})
		out[int(h.Sum32()%uint32(lanes))]++
	}
	return out
}

// evenLanes reports whether no lane owns more than ceil(p/lanes) partitions,
// the most even spread the routing allows.
func evenLanes(counts []int, p int) bool {
	most := (p + len(counts) - 1) / len(counts)
	for _, c := range counts {
		if c > most {
			return false
		}
	}
	return true
}
