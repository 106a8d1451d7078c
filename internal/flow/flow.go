// Package flow moves admitted records from the consumer to the sink: the Gate
// that bounds buffered records and bytes, the worker pool that maps records to
// rows under a per-record timeout, and the lanes that batch rows and write them
// in order per partition while lanes write in parallel.
//
// flow knows nothing of Kafka or SQL. It declares the small interfaces it needs
// (Mapper, Sink, DeadLetterer, Committer, Fencer, Pauser) and is wired by
// cmd/sluice.
//
// In exactly-once delivery (Config.ExactlyOnce) every batch also carries the
// position each of its partitions moves to (record.Position), for a sink that
// stores positions with the rows in one transaction. A position never passes a
// record that is neither in the same or an earlier write nor acknowledged by
// the dead-letter queue: a lane waits for the dead letters of its batch before
// writing it, and a dead-lettered record is done only once a write has stored
// a position past it.
// Concurrency contract: Pipeline.Run owns every goroutine flow starts and returns
// only after all of them have stopped; Admit may be called from one goroutine
// (the consumer's poll loop) while Run is running.
package flow

import (
	"context"
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/internal/record"
)

// Mapper turns one record into one row for the sink. It runs on a worker
// goroutine, is called concurrently, and should honour ctx: it is cancelled
// when the record exceeds the record timeout (the record is then already
// dead-lettered with reason timeout) or when the pipeline stops. An error that wraps a *PoisonError sends the record to the
// dead-letter queue; any other error is treated as a mapping poison too, since a
// mapper has nothing but the record to fail on.
type Mapper interface {
	Map(ctx context.Context, r *record.Record) (record.Row, error)
}

// Sink writes one batch. Write is called by one lane goroutine at a time per
// lane and concurrently across lanes. It returns nil only when every row of the
// batch is durably written. A *RejectedError names rows the sink refused for
// their own content; any other error is classified by Classify.
type Sink interface {
	Write(ctx context.Context, b *record.Batch) error
}

// DeadLetterer stores a record the pipeline cannot write, with the reason. It
// returns nil only when the record is safely stored; until then the record is not
// done and its offset is not committed.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, r *record.Record, cause *PoisonError) error
}

// AsyncDeadLetterer is a DeadLetterer that can also start storing a record
// and report the outcome later, so the pipeline keeps many dead letters in
// flight from one goroutine rather than a goroutine each. done is called
// once, possibly on another goroutine, and must not block. After an error the
// pipeline stores the record with DeadLetter, retrying.
type AsyncDeadLetterer interface {
	DeadLetterAsync(ctx context.Context, r *record.Record, cause *PoisonError, done func(error))
}

// Committer learns that records are done (written or dead-lettered). Done may be
// called from any goroutine and must not block.
type Committer interface {
	Done(rs ...*record.Record)
}

// Fencer learns of records the sink refused with a *FencedError: another
// writer owns their partition now, or their assignment has ended. They are not
// done and never will be; the Fencer seeks their partition to the position the
// sink stored. A Committer that is also a Fencer is told; Fence may be called
// from any goroutine, for records of an assignment that has ended too, and
// must not block.
type Fencer interface {
	Fence(rs ...*record.Record)
}

// Pauser pauses and resumes fetching of partitions. Called with the Gate's lock
// held: it must not call back into the Gate, and must not block.
type Pauser interface {
	PauseForGate(ps []record.Partition)
	ResumeForGate(ps []record.Partition)
}

// Poison reasons, the values of the sluice.error.reason DLQ header and the reason
// label of sluice_records_dlq_total.
const (
	ReasonDecode       = "decode"
	ReasonMapping      = "mapping"
	ReasonTimeout      = "timeout"
	ReasonSinkRejected = "sink_rejected"
	// ReasonTooLarge is a record whose key, value and headers exceed
	// Config.MaxRecordBytes: it is dead-lettered without being mapped.
	ReasonTooLarge = "too_large"
)

// PoisonError says a record cannot be written through no fault of the sink.
type PoisonError struct {
	Reason string // one of the Reason constants
	Code   string // SQLSTATE or HTTP status, when there is one
	// Attempts is how many times the record was tried before it was given up
	// (the sluice.attempts DLQ header); 0 means once.
	Attempts int
	Err      error
}

func (e *PoisonError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s (%s): %v", e.Reason, e.Code, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *PoisonError) Unwrap() error { return e.Err }

// Decode returns a PoisonError with reason decode.
func Decode(err error) *PoisonError { return &PoisonError{Reason: ReasonDecode, Err: err} }

// Mapping returns a PoisonError with reason mapping.
func Mapping(err error) *PoisonError { return &PoisonError{Reason: ReasonMapping, Err: err} }

// ErrRecordTimeout is the cause of a record that exceeded flow.record_timeout.
var ErrRecordTimeout = errors.New("record processing exceeded flow.record_timeout")

// ErrRecordTooLarge is the cause of a record larger than flow.max_record_bytes.
var ErrRecordTooLarge = errors.New("record exceeds flow.max_record_bytes")

// asPoison turns a mapper's error into the PoisonError the DLQ receives.
func asPoison(err error) *PoisonError {
	var pe *PoisonError
	if errors.As(err, &pe) {
		return pe
	}
	return Mapping(err)
}
