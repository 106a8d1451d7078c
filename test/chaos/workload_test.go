//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// at is a record's place in its topic.
type at struct {
	partition int32
	offset    int64
}

func (a at) String() string { return fmt.Sprintf("%d@%d", a.partition, a.offset) }

// ordersDDL is the table the orders go to in insert mode; upsertDDL keys it
// by id.
const (
	ordersDDL = "(id bigint NOT NULL, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"
	upsertDDL = "(id bigint PRIMARY KEY, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"
)

// order is the JSON value of order i: about 150 bytes.
func order(i int64) []byte {
	return fmt.Appendf(nil, `{"id":%d,"amount":%d.%02d,"seq":%d,"customer":"customer-%d","note":"an order of the chaos suite"}`,
		i, i%1000, i%100, i, i%97)
}

// producer writes records to one topic and remembers where each went. It is
// idempotent with unlimited retries (franz-go's defaults), so a broker
// restart delays records but neither loses nor repeats them. It does not
// compress: the README's memory formula bounds the client's fetch buffers in
// the bytes the broker sends, and says that compressed batches decompress to
// more, so with uncompressed records the formula holds in every scenario.
type producer struct {
	t     *testing.T
	cl    *kgo.Client
	topic string

	acked   atomic.Int64
	largest atomic.Int64 // largest key + value produced
	mu      sync.Mutex
	err     error
	onAck   func(r *kgo.Record) // called with every acknowledged record, under mu
}

func newProducer(t *testing.T, brokers []string, topic string, opts ...kgo.Opt) *producer {
	t.Helper()
	base := []kgo.Opt{
		kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(5 * time.Millisecond), kgo.ProducerBatchMaxBytes(1 << 20),
		kgo.MaxBufferedRecords(50_000), kgo.ProducerBatchCompression(kgo.NoCompression()),
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	t.Cleanup(cl.Close)
	return &producer{t: t, cl: cl, topic: topic}
}

// produce sends r asynchronously.
func (p *producer) produce(ctx context.Context, r *kgo.Record) {
	for n := int64(len(r.Key) + len(r.Value)); ; {
		if old := p.largest.Load(); n <= old || p.largest.CompareAndSwap(old, n) {
			break
		}
	}
	p.cl.Produce(ctx, r, func(r *kgo.Record, err error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			if p.err == nil && ctx.Err() == nil {
				p.err = fmt.Errorf("produce to %s: %w", p.topic, err)
			}
			return
		}
		p.acked.Add(1)
		if p.onAck != nil {
			p.onAck(r)
		}
	})
}

// flush waits for every record sent to be acknowledged, and fails the test
// on a produce error.
func (p *producer) flush(ctx context.Context) {
	p.t.Helper()
	if err := p.cl.Flush(ctx); err != nil {
		p.t.Fatalf("flush the producer: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		p.t.Fatal(p.err)
	}
}

// produceN sends n records made by gen(i) for i in [from, from+n) and waits
// for them.
func (p *producer) produceN(ctx context.Context, from, n int64, gen func(i int64) *kgo.Record) {
	p.t.Helper()
	for i := from; i < from+n; i++ {
		p.produce(ctx, gen(i))
	}
	p.flush(ctx)
}

// paced sends records gen(from), gen(from+1), ... at rate per second until
// finish or until total records were sent (total 0: no limit). It runs in its
// own goroutine. The records are produced with ctx, not with the pacing's own
// lifetime, so that finish stops sending without failing records in flight.
type paced struct {
	done chan struct{}
	sent atomic.Int64
	stop context.CancelFunc
}

func (p *producer) paced(ctx context.Context, from int64, rate float64, total int64, gen func(i int64) *kgo.Record) *paced {
	loop, cancel := context.WithCancel(ctx)
	pc := &paced{done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(pc.done)
		start := time.Now()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := from; total == 0 || i < from+total; {
			due := from + int64(time.Since(start).Seconds()*rate)
			for ; i < due && (total == 0 || i < from+total) && loop.Err() == nil; i++ {
				p.produce(ctx, gen(i))
				pc.sent.Add(1)
			}
			select {
			case <-loop.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return pc
}

// finish stops sending, waits for the sender and for every acknowledgement
// (failing the test on a produce error), and returns the number of records
// the producer has had acknowledged in all.
func (pc *paced) finish(p *producer) int64 {
	p.t.Helper()
	pc.stop()
	<-pc.done
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p.flush(ctx)
	if sent, acked := pc.sent.Load(), p.acked.Load(); sent != acked {
		p.t.Errorf("producer: %d records sent, %d acknowledged", sent, acked)
	}
	return p.acked.Load()
}

// keyed is an order with key strconv(i) and no fixed partition.
func keyed(topic string) func(i int64) *kgo.Record {
	return func(i int64) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: strconv.AppendInt(nil, i, 10), Value: order(i)}
	}
}

// endOffsets returns the end offset of every partition of topic.
func endOffsets(t *testing.T, adm *kadm.Client, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
		if err == nil {
			out := map[int32]int64{}
			ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
			return out
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("end offsets of %s: %v", topic, last)
	return nil
}

// committed returns the group's committed offset of every partition of topic
// that has one.
func committed(t *testing.T, adm *kadm.Client, group, topic string) map[int32]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		resp, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			err = resp.Error()
		}
		if err == nil {
			out := map[int32]int64{}
			resp.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic && o.At >= 0 {
					out[o.Partition] = o.At
				}
			})
			return out
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("committed offsets of %s: %v", group, last)
	return nil
}

// lagOf returns the group's committed lag on topic: end offsets minus
// commits (a partition without a commit counts from 0).
func lagOf(t *testing.T, adm *kadm.Client, group, topic string) int64 {
	t.Helper()
	ends := endOffsets(t, adm, topic)
	commits := committed(t, adm, group, topic)
	var lag int64
	for p, end := range ends {
		lag += end - commits[p]
	}
	return lag
}

// tryLag is lagOf for goroutines other than the test's: it returns an error
// instead of failing the test.
func tryLag(ctx context.Context, adm *kadm.Client, group, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, err
	}
	commits, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = commits.Error()
	}
	if err != nil {
		return 0, err
	}
	var lag int64
	ends.Each(func(o kadm.ListedOffset) {
		lag += o.Offset
		if c, ok := commits.Lookup(topic, o.Partition); ok && c.At > 0 {
			lag -= c.At
		}
	})
	return lag, nil
}

// waitLagZero waits, at most limit, until the group has committed every
// partition of topic to its end; it returns how long that took. alive, when
// not nil, is checked on the way: a scenario whose processes all died fails
// at once instead of at the limit.
func waitLagZero(t *testing.T, adm *kadm.Client, group, topic string, limit time.Duration, alive func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	last := int64(-1)
	lastReport := start
	for time.Since(start) < limit {
		if last = lagOf(t, adm, group, topic); last == 0 {
			return time.Since(start)
		}
		if alive != nil && !alive() {
			t.Fatalf("no sluice process of group %s runs any more, lag %d", group, last)
		}
		if time.Since(lastReport) > 30*time.Second {
			t.Logf("waiting for group %s: lag %d after %v", group, last, time.Since(start).Round(time.Second))
			lastReport = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("group %s still lags %d records on %s after %v", group, last, topic, limit)
	return 0
}

// deadLetter is one record of the DLQ topic, by the original it stands for.
type deadLetter struct {
	orig   at
	reason string
	code   string
	msg    string
}

// readDLQ returns every record of the DLQ topic up to its end offsets now (an
// empty list when sluice never created it).
func readDLQ(t *testing.T, brokers []string, topic string) []deadLetter {
	t.Helper()
	adm := testenv.Admin(t, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		if err = ends.Error(); errors.Is(err, kerr.UnknownTopicOrPartition) {
			return nil
		}
	}
	if err != nil {
		t.Fatalf("end offsets of the DLQ topic %s: %v", topic, err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	if len(remaining) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond),
		kgo.FetchMaxPartitionBytes(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []deadLetter
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read the DLQ topic %s: %d records, partitions %v not read to their end", topic, len(out), remaining)
		}
		fs.EachRecord(func(r *kgo.Record) {
			hs := map[string]string{}
			for _, h := range r.Headers {
				hs[h.Key] = string(h.Value)
			}
			p, perr := strconv.ParseInt(hs[dlq.HeaderPartition], 10, 32)
			o, oerr := strconv.ParseInt(hs[dlq.HeaderOffset], 10, 64)
			if perr != nil || oerr != nil {
				t.Errorf("DLQ record %d@%d has no original partition and offset headers: %v", r.Partition, r.Offset, hs)
			}
			out = append(out, deadLetter{orig: at{int32(p), o}, reason: hs[dlq.HeaderReason],
				code: hs[dlq.HeaderCode], msg: hs[dlq.HeaderMessage]})
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
	return out
}

// pgConn connects to dsn, closed when the test ends, and notes the server's
// version for the report.
func pgConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn := testenv.Postgres(t, dsn)
	if pgVersion() == "(version not read)" {
		var v string
		if err := conn.QueryRow(t.Context(), "SHOW server_version").Scan(&v); err == nil {
			notePGVersion(v)
		}
	}
	return conn
}

// tableRecords returns how many rows of table hold each (partition, offset).
func tableRecords(t *testing.T, conn *pgx.Conn, table string) map[at]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rows, err := conn.Query(ctx, "SELECT kafka_partition, kafka_offset FROM "+table)
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

func count(t *testing.T, conn *pgx.Conn, query string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var n int64
	if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// ledger is the outcome of a scenario's records: every record of the topic
// (every offset below the end offsets) is in the table, in the DLQ topic, or
// lost.
type ledger struct {
	produced     int64 // records in the topic
	rows         int64 // rows in the table
	distinct     int64 // distinct (partition, offset) in the table
	duplicates   int64 // rows - distinct
	dead         int64 // DLQ records
	deadDistinct int64 // distinct originals in the DLQ
	lost         int64 // in neither
	lostSample   []at
	both         int64 // in the table and in the DLQ
	inTable      map[at]int
	inDLQ        map[at][]deadLetter
}

// account reads the table and the DLQ topic and balances them against the
// topic's end offsets.
func account(t *testing.T, brokers []string, topic, dlqTopic string, conn *pgx.Conn, table string) *ledger {
	t.Helper()
	ends := endOffsets(t, testenv.Admin(t, brokers), topic)
	l := &ledger{inTable: tableRecords(t, conn, table), inDLQ: map[at][]deadLetter{}}
	for _, d := range readDLQ(t, brokers, dlqTopic) {
		l.inDLQ[d.orig] = append(l.inDLQ[d.orig], d)
		l.dead++
	}
	l.deadDistinct = int64(len(l.inDLQ))
	for _, n := range l.inTable {
		l.rows += int64(n)
	}
	l.distinct = int64(len(l.inTable))
	l.duplicates = l.rows - l.distinct
	for p, end := range ends {
		l.produced += end
		for o := range end {
			a := at{p, o}
			_, inT := l.inTable[a]
			_, inD := l.inDLQ[a]
			switch {
			case inT && inD:
				l.both++
			case !inT && !inD:
				l.lost++
				if len(l.lostSample) < 10 {
					l.lostSample = append(l.lostSample, a)
				}
			}
		}
	}
	return l
}

// accountInSQL is account for tables too large to read into memory (the
// soak's): it counts per partition in PostgreSQL and keeps no per-record maps.
func accountInSQL(t *testing.T, brokers []string, topic, dlqTopic string, conn *pgx.Conn, table string) *ledger {
	t.Helper()
	ends := endOffsets(t, testenv.Admin(t, brokers), topic)
	l := &ledger{inDLQ: map[at][]deadLetter{}}
	for _, d := range readDLQ(t, brokers, dlqTopic) {
		l.inDLQ[d.orig] = append(l.inDLQ[d.orig], d)
		l.dead++
	}
	l.deadDistinct = int64(len(l.inDLQ))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	for p, end := range ends {
		var rows, distinct int64
		err := conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT kafka_offset) FILTER (WHERE kafka_offset >= 0 AND kafka_offset < $2) FROM "+
			table+" WHERE kafka_partition = $1", p, end).Scan(&rows, &distinct)
		if err != nil {
			t.Fatalf("count %s, partition %d: %v", table, p, err)
		}
		l.produced += end
		l.rows += rows
		l.distinct += distinct
		covered := distinct
		for a := range l.inDLQ {
			if a.partition != p || a.offset < 0 || a.offset >= end {
				continue
			}
			if count(t, conn, "SELECT count(*) FROM "+table+" WHERE kafka_partition = $1 AND kafka_offset = $2", p, a.offset) > 0 {
				l.both++
			} else {
				covered++
			}
		}
		l.lost += end - covered
	}
	l.duplicates = l.rows - l.distinct
	return l
}

// checkNoLoss fails the test for every lost record.
func (l *ledger) checkNoLoss(t *testing.T, f *figures) {
	t.Helper()
	if l.lost > 0 {
		f.errorf(t, "LOST %d of %d records: neither in the table nor in the DLQ topic (first: %v)", l.lost, l.produced, l.lostSample)
	}
}
