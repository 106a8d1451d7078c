// Package dlq stores the records sluice cannot write in the dead-letter topic
// (Kafka, with the sluice.* headers) and replays them back to their topics.
//
// Kafka's DeadLetter and Replay are safe for concurrent use by many
// goroutines; Replay runs until its range is done or its ctx ends.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// The headers sluice adds to a dead-lettered record, next to the original's.
const (
	HeaderTopic     = "sluice.original.topic"
	HeaderPartition = "sluice.original.partition"
	HeaderOffset    = "sluice.original.offset"
	HeaderTimestamp = "sluice.original.timestamp"
	HeaderReason    = "sluice.error.reason"
	HeaderMessage   = "sluice.error.message"
	HeaderCode      = "sluice.error.code"
	HeaderAttempts  = "sluice.attempts"
	HeaderFailedAt  = "sluice.failed.at"
)

// maxMessage bounds sluice.error.message.
const maxMessage = 1024

// Kafka dead-letters records to a topic with an idempotent producer that
// waits for all in-sync replicas. DeadLetter returns only when the broker
// acknowledged the record, so a record counts as done only once it is safe.
// Safe for concurrent use; concurrent calls are batched by the client.
type Kafka struct {
	cl    *kgo.Client
	topic string
	now   func() time.Time
}

// NewKafka returns a dead-letterer producing to topic. opts carry the brokers
// and security options (the consumer's).
func NewKafka(topic string, opts ...kgo.Opt) (*Kafka, error) {
	all := append([]kgo.Opt{
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(5 * time.Millisecond),
		kgo.RecordDeliveryTimeout(0), // retried until ctx ends: a dead letter is never dropped
		kgo.ClientID("sluice-dlq"),
	}, opts...)
	cl, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("dlq producer: %w", err)
	}
	return &Kafka{cl: cl, topic: topic, now: time.Now}, nil
}

// Close flushes nothing (DeadLetter already waited) and closes the client.
func (k *Kafka) Close() { k.cl.Close() }

// Ping checks that the DLQ topic exists and has a leader.
func (k *Kafka) Ping(ctx context.Context) error { return k.cl.Ping(ctx) }

// DeadLetter produces r to the DLQ topic with its original key, value and
// headers and the sluice.* headers, and waits for the acknowledgement.
func (k *Kafka) DeadLetter(ctx context.Context, r *record.Record, cause *flow.PoisonError) error {
	kr := Build(r, cause, k.now())
	kr.Topic = k.topic
	if err := k.cl.ProduceSync(ctx, kr).FirstErr(); err != nil {
		return fmt.Errorf("produce to dead-letter topic %s: %w", k.topic, err)
	}
	return nil
}

// Build returns the DLQ record for r: the original key, value and headers,
// then the sluice.* headers.
func Build(r *record.Record, cause *flow.PoisonError, failedAt time.Time) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+9)
	for _, h := range r.Headers {
		hs = append(hs, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	attempts := max(cause.Attempts, 1)
	hs = append(hs,
		kgo.RecordHeader{Key: HeaderTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: HeaderPartition, Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
		kgo.RecordHeader{Key: HeaderOffset, Value: strconv.AppendInt(nil, r.Offset, 10)},
		kgo.RecordHeader{Key: HeaderTimestamp, Value: strconv.AppendInt(nil, r.Timestamp.UnixMilli(), 10)},
		kgo.RecordHeader{Key: HeaderReason, Value: []byte(cause.Reason)},
		kgo.RecordHeader{Key: HeaderMessage, Value: []byte(Scrub(cause.Error()))},
		kgo.RecordHeader{Key: HeaderCode, Value: []byte(cause.Code)},
		kgo.RecordHeader{Key: HeaderAttempts, Value: strconv.AppendInt(nil, int64(attempts), 10)},
		kgo.RecordHeader{Key: HeaderFailedAt, Value: []byte(failedAt.UTC().Format(time.RFC3339Nano))},
	)
	return &kgo.Record{Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp}
}

var (
	// scheme://user:password@host → scheme://[redacted]@host
	urlCredentials = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@`)
	// key=value DSN parts that carry secrets
	dsnSecret = regexp.MustCompile(`(?i)\b(password|passwd|pwd|sslpassword|secret|token)=\S+`)
)

// Scrub removes credentials from an error message and bounds its length, so a
// DLQ header never carries a connection string's secrets.
func Scrub(msg string) string {
	msg = urlCredentials.ReplaceAllString(msg, "${1}[redacted]@")
	msg = dsnSecret.ReplaceAllString(msg, "${1}=[redacted]")
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "…"
	}
	return msg
}

// Ensure checks that the DLQ topic exists and creates it when it does not,
// with the broker's default partition count and replication factor.
func (k *Kafka) Ensure(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(k.cl)
	td, err := adm.ListTopics(ctx, k.topic)
	if err != nil {
		return fmt.Errorf("look up topic %s: %w", k.topic, err)
	}
	if t, ok := td[k.topic]; ok && t.Err == nil {
		return nil
	}
	resp, err := adm.CreateTopic(ctx, -1, -1, nil, k.topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("topic %s does not exist and sluice could not create it (%w); create it, or grant sluice CREATE on it", k.topic, err)
	}
	return nil
}
