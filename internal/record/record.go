// Package record holds the value types that travel through sluice: a consumed
// Record, the Partition it came from, a mapped Row and a Batch of rows for a sink.
//
// It is a leaf package: it imports nothing of sluice and has no behaviour beyond
// small accessors, so every other package can share these types. Values are not
// safe for concurrent mutation; a Record is owned by one stage of the pipeline at
// a time (consumer, then a worker, then a lane).
package record

import (
	"strconv"
	"time"
)

// Partition names one partition of one topic.
type Partition struct {
	Topic     string
	Partition int32
}

func (p Partition) String() string {
	return p.Topic + "/" + strconv.FormatInt(int64(p.Partition), 10)
}

// Header is one record header. Value may be nil.
type Header struct {
	Key   string
	Value []byte
}

// Record is one consumed Kafka record as the rest of sluice sees it.
type Record struct {
	Topic       string
	Partition   int32
	Offset      int64
	LeaderEpoch int32
	Timestamp   time.Time
	Key         []byte
	Value       []byte
	Headers     []Header

	// Ticket is set by the consumer when it admits the record and identifies the
	// record to the consumer's commit tracker. Nobody else changes it; in
	// exactly-once delivery the lanes copy its Generation into the Positions of
	// the record's batch, so that the sink can refuse a stale assignment.
	Ticket Ticket

	// Admitted is when the record entered the flow gate; it feeds
	// processing_duration_seconds.
	Admitted time.Time
}

// Ticket identifies a record to the commit tracker of the assignment that
// admitted it. A ticket of an assignment that has since been revoked is stale and
// ignored.
type Ticket struct {
	Generation uint64
	Seq        uint64
}

// Part returns the partition the record came from.
func (r *Record) Part() Partition { return Partition{Topic: r.Topic, Partition: r.Partition} }

// Size is the number of bytes the record holds in memory that the flow budget
// counts: key, value and headers.
func (r *Record) Size() int {
	n := len(r.Key) + len(r.Value) + len(r.Topic)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Header returns the value of the last header named key, and whether there was one.
func (r *Record) Header(key string) ([]byte, bool) {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == key {
			return r.Headers[i].Value, true
		}
	}
	return nil, false
}

// Row is one record mapped to the sink's columns, in the sink's column order.
type Row []any

// Batch is what a lane hands to a sink in one write: rows in the order their
// records were consumed per partition, and the records they came from
// (Records[i] produced Rows[i]).
type Batch struct {
	Rows    []Row
	Records []*Record
	Bytes   int
	// Positions is set only in exactly-once delivery: one per partition the
	// batch moves on, in (topic, partition) order, for the sink to store with
	// the rows in the same transaction. A batch may hold positions and no rows
	// when every record it covers went to the dead-letter queue.
	Positions []Position
}

// Position is where a partition stands once a batch is written, in
// exactly-once delivery: every record of the partition before Next is written
// (in this batch or an earlier one) or dead-lettered, and no row of the batch
// is at or after Next.
type Position struct {
	Partition
	// Next is the offset after the last record the batch covers: that record's
	// offset + 1, since offsets are not dense (transaction markers leave gaps).
	Next int64
	// Generation is the Ticket.Generation of the batch's records of the
	// partition: the assignment they were consumed under.
	Generation uint64
}

// Len returns the number of rows in the batch.
func (b *Batch) Len() int { return len(b.Rows) }
