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
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluicehq/sluice/internal/consumer"
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
	// HeaderValueOmitted marks a dead letter too large for the dead-letter
	// topic: it carries only the sluice.* headers (and the key, when small),
	// and this header holds the size in bytes of the original's key, value
	// and headers. Read the original from its topic while Kafka retains it;
	// replay skips such records.
	HeaderValueOmitted = "sluice.value.omitted"
)

// maxMessage bounds sluice.error.message.
const maxMessage = 1024

// Kafka dead-letters records to a topic with an idempotent producer that
// waits for all in-sync replicas. DeadLetter returns only when the broker
// acknowledged the record, so a record counts as done only once it is safe.
// Safe for concurrent use; concurrent calls are batched by the client.
type Kafka struct {
	cl      *kgo.Client
	topic   string
	refused atomic.Pointer[AuthorizationError] // the last dead letter's refusal, nil after a success
	now     func() time.Time
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
		if errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) {
			// The produce, or the idempotent producer's InitProducerID, which
			// Kafka 3.0 and later allow with WRITE on any topic.
			ae := &AuthorizationError{Topic: k.topic, Action: "write to", Grant: "WRITE", Err: err}
			k.refused.Store(ae)
			return fmt.Errorf("%w; the record is not dead-lettered and its partition's commit waits before it until the ACL is granted", ae)
		}
		if !errors.Is(err, kerr.MessageTooLarge) {
			return fmt.Errorf("produce to dead-letter topic %s: %w", k.topic, err)
		}
		// Larger than the producer or the topic takes (max.message.bytes):
		// retrying cannot help, and the partition's commit would wait for
		// ever. The dead letter goes without the record's content.
		if err := k.cl.ProduceSync(ctx, Omitted(kr, r.Size())).FirstErr(); err != nil {
			return fmt.Errorf("produce to dead-letter topic %s (without the value, too large for it): %w", k.topic, err)
		}
	}
	k.refused.Store(nil)
	return nil
}

// DeadLetterAsync produces r to the DLQ topic as DeadLetter does and calls
// done with the broker's answer, without waiting for it (flow.AsyncDeadLetterer).
// A failed dead letter is stored again with DeadLetter, which tells a refused
// ACL or a record too large for the topic from an outage.
func (k *Kafka) DeadLetterAsync(ctx context.Context, r *record.Record, cause *flow.PoisonError, done func(error)) {
	kr := Build(r, cause, k.now())
	kr.Topic = k.topic
	k.cl.Produce(ctx, kr, func(_ *kgo.Record, err error) {
		if err == nil {
			k.refused.Store(nil)
		}
		done(err)
	})
}

// maxOmittedKey is the largest key an omitted dead letter keeps.
const maxOmittedKey = 1024

// Omitted returns the dead letter kr without the original's value and
// headers (and key, when longer than 1 KiB), marked with HeaderValueOmitted
// = size, for a record too large for the dead-letter topic.
func Omitted(kr *kgo.Record, size int) *kgo.Record {
	out := &kgo.Record{Topic: kr.Topic, Timestamp: kr.Timestamp}
	if len(kr.Key) <= maxOmittedKey {
		out.Key = kr.Key
	}
	for _, h := range kr.Headers {
		if strings.HasPrefix(h.Key, "sluice.") {
			out.Headers = append(out.Headers, h)
		}
	}
	out.Headers = append(out.Headers, kgo.RecordHeader{Key: HeaderValueOmitted, Value: strconv.AppendInt(nil, int64(size), 10)})
	return out
}

// Refused returns the *AuthorizationError of the last dead letter if the
// broker refused it, and nil once one is stored again: why the dead-letter
// topic takes nothing, for readiness.
func (k *Kafka) Refused() error {
	if ae := k.refused.Load(); ae != nil {
		return ae
	}
	return nil
}

// AuthorizationError is the broker's refusal (an authorizer's ACLs) of what
// sluice's Kafka principal must do with the dead-letter topic. Retrying does
// not help; an operator granting the ACL does, and sluice then goes on
// without a restart. Ensure and DeadLetter return it, DeadLetter wrapped.
type AuthorizationError struct {
	Topic  string // the dead-letter topic
	Action string // what sluice was refused: "describe", "write to"
	Grant  string // the ACL operation to grant on the topic
	Err    error  // the broker's error (kerr), or what the authorized operations lacked
}

func (e *AuthorizationError) Error() string {
	return fmt.Sprintf("sluice's Kafka principal is not authorized to %s dead-letter topic %s (%v): grant it %s on topic %s "+
		"(the principal of kafka.sasl.username, or of the kafka.tls.cert_file certificate; see docs/kafka-security.md and deploy/kafka-acls)",
		e.Action, e.Topic, e.Err, e.Grant, e.Topic)
}

func (e *AuthorizationError) Unwrap() error { return e.Err }

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
	// Each pattern needs its separator; most messages have neither, and the
	// regular expressions cost microseconds a dead letter.
	if strings.Contains(msg, "://") {
		msg = urlCredentials.ReplaceAllString(msg, "${1}[redacted]@")
	}
	if strings.IndexByte(msg, '=') >= 0 {
		msg = dsnSecret.ReplaceAllString(msg, "${1}=[redacted]")
	}
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "…"
	}
	return msg
}

// ErrUnreachable is returned by Ensure, wrapped with the cause and what to
// check, when it cannot connect to the brokers at all: a problem of
// kafka.brokers, kafka.tls or kafka.sasl rather than of the DLQ topic.
var ErrUnreachable = errors.New("cannot connect to the Kafka brokers")

// Ensure checks at start-up that sluice can reach the brokers and write to
// the DLQ topic, and creates the topic when it does not exist, with the
// broker's default partition count and replication factor. A failure to
// connect is ErrUnreachable and says what to check (consumer.ConnectHint).
// An authorizer's refusal is an *AuthorizationError: sluice must at least
// describe the topic, and where the broker reports the principal's
// authorized operations (Kafka 2.3 and later), they must include WRITE.
func (k *Kafka) Ensure(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := k.cl.Ping(ctx); err != nil {
		if hint := consumer.ConnectHint(err); hint != "" {
			return fmt.Errorf("%w: %w; %s", ErrUnreachable, err, hint)
		}
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	adm := kadm.NewClient(k.cl)
	td, err := adm.ListTopics(kadm.WithAuthorizedOps(ctx), k.topic)
	if errors.Is(err, kerr.TopicAuthorizationFailed) {
		// Kafka does not say whether the topic exists to whom may not describe it.
		return &AuthorizationError{Topic: k.topic, Action: "describe", Grant: "WRITE (which includes DESCRIBE)", Err: err}
	}
	if err != nil {
		return fmt.Errorf("look up topic %s: %w", k.topic, err)
	}
	if t, ok := td[k.topic]; ok && t.Err == nil {
		// An empty list: the broker did not report the operations.
		if ops := t.AuthorizedOperations; len(ops) > 0 && !slices.Contains(ops, kmsg.ACLOperationWrite) {
			names := make([]string, len(ops))
			for i, op := range ops {
				names[i] = op.String()
			}
			return &AuthorizationError{Topic: k.topic, Action: "write to", Grant: "WRITE",
				Err: fmt.Errorf("the broker allows it only %s", strings.Join(names, ", "))}
		}
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
