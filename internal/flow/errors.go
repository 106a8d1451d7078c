package flow

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/internal/record"
)

// TransientError says the sink is unavailable or overloaded: the write may be
// retried as it is, after RetryAfter if the sink named one. Transient errors feed
// the circuit breaker; no record goes to the DLQ for them.
type TransientError struct {
	Err        error
	RetryAfter time.Duration
}

func (e *TransientError) Error() string { return "transient sink error: " + e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// RejectedError says the sink refused specific rows of a batch for their own
// content. Rows holds indexes into the batch; Causes[i] explains Rows[i]. The
// other rows of the batch were not written and may be written again without
// the rejected ones. When a sink cannot tell which rows failed it returns a
// RejectedError with Rows empty and the lane bisects the batch.
//
// Written says instead that the sink wrote (committed) the batch's other rows,
// so only Rows are left to the caller. A sink may say so only with Rows named
// and only for a batch without positions (at-least-once delivery): a position
// must not pass a record before the dead-letter queue has it.
type RejectedError struct {
	Rows    []int
	Causes  []*PoisonError
	Written bool
	Err     error
}

func (e *RejectedError) Error() string {
	if len(e.Rows) == 0 {
		return "sink rejected the batch: " + e.Err.Error()
	}
	return fmt.Sprintf("sink rejected %d row(s): %v", len(e.Rows), e.Err)
}
func (e *RejectedError) Unwrap() error { return e.Err }

// FatalError says the write can never succeed as configured (a schema mismatch,
// a missing permission, a bug): the sink stops, readiness fails, and the error is
// reported to the operator.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return "fatal sink error: " + e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// FencedError says the sink refused the batch because the positions it holds
// for Partitions are not the ones this writer expected (exactly-once
// delivery): another member owns those partitions since a rebalance and moved
// them on, their assignment here has ended, or a write whose commit was lost
// did commit after all. Nothing of the batch was written. Its records of the
// fenced partitions are dropped: neither written, nor dead-lettered, nor done;
// the consumer seeks those partitions to the positions the sink stored. The
// batch's other records may be written again without them.
type FencedError struct {
	Partitions []record.Partition
	Err        error
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("sink fenced %d partition(s) %v: %v", len(e.Partitions), e.Partitions, e.Err)
}
func (e *FencedError) Unwrap() error { return e.Err }

// Class is what the pipeline does with a failed write.
type Class int

const (
	ClassTransient Class = iota // retry with backoff; feeds the breaker
	ClassRejected               // isolate the bad rows, dead-letter them, write the rest
	ClassFatal                  // stop the pipeline
	ClassFenced                 // drop the fenced partitions' records, write the rest (exactly-once)
)

// Classify decides what a Sink's write error means. Errors that carry no class
// are transient: an unknown failure of the sink is not the record's fault, and a
// retry loses nothing.
func Classify(err error) Class {
	var fe *FatalError
	var re *RejectedError
	var fenced *FencedError
	switch {
	case errors.As(err, &fe):
		return ClassFatal
	case errors.As(err, &fenced):
		return ClassFenced
	case errors.As(err, &re):
		return ClassRejected
	default:
		return ClassTransient
	}
}
