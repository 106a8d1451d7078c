// Package dlq stores records the pipeline cannot write. This file holds the
// logging dead-letterer, used until a dlq.topic producer is configured and by
// tests: it writes one structured log line per record and reports success, so
// the record counts as done only after the line is written.
//
// Safe for concurrent use.
package dlq

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// Log dead-letters records to the log.
type Log struct {
	log *zap.Logger
}

// NewLog returns a logging dead-letterer.
func NewLog(l *zap.Logger) *Log { return &Log{log: l} }

// DeadLetter logs r's coordinates and the reason. It never fails.
func (d *Log) DeadLetter(_ context.Context, r *record.Record, cause *flow.PoisonError) error {
	d.log.Warn("record dead-lettered",
		zap.String("topic", r.Topic), zap.Int32("partition", r.Partition), zap.Int64("offset", r.Offset),
		zap.Time("timestamp", r.Timestamp), zap.String("reason", cause.Reason), zap.String("code", cause.Code),
		zap.String("error", cause.Error()), zap.Time("failed_at", time.Now()))
	return nil
}
