//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// httpEndpoint is the ingest endpoint of the HTTP sink test: it checks the
// bearer token, answers the first few requests 503 with a Retry-After, refuses
// with 400 a batch holding a record whose value says "reject": true, and
// stores every other batch whole.
type httpEndpoint struct {
	token     string
	format    string
	overloads int // the first requests answered 503

	mu       sync.Mutex
	requests int
	stored   []at
	problems []string
}

func (e *httpEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	if r.Header.Get("Authorization") != e.token {
		e.problems = append(e.problems, fmt.Sprintf("request %d: Authorization %q", e.requests, r.Header.Get("Authorization")))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if e.requests <= e.overloads {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "warming up")
		return
	}
	type line struct {
		Partition int32
		Offset    int64
		Value     struct{ Reject bool }
	}
	var lines []line
	switch ct := r.Header.Get("Content-Type"); {
	case e.format == config.FormatJSON && ct == "application/json":
		err = json.Unmarshal(body, &lines)
	case e.format == config.FormatNDJSON && ct == "application/x-ndjson":
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, 64<<20)
		for sc.Scan() && err == nil {
			var l line
			err = json.Unmarshal(sc.Bytes(), &l)
			lines = append(lines, l)
		}
	default:
		err = fmt.Errorf("Content-Type %q for format %s", ct, e.format)
	}
	if err != nil {
		e.problems = append(e.problems, fmt.Sprintf("request %d: %v", e.requests, err))
		w.WriteHeader(http.StatusUnprocessableEntity)
		return
	}
	for _, l := range lines {
		if l.Value.Reject {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"record %d@%d: amount must not be negative"}`, l.Partition, l.Offset)
			return
		}
	}
	for _, l := range lines {
		e.stored = append(e.stored, at{l.Partition, l.Offset})
	}
}

// TestHTTPSinkRejectedRecordsToTheDLQ runs sluice from the real broker into an
// HTTP endpoint on 127.0.0.1 that refuses some records with 400: exactly those
// land in the real DLQ topic with reason sink_rejected and code 400, the
// endpoint receives every other record, in order per partition, and every
// partition is committed to its end. The endpoint's first answers are 503s,
// retried after their Retry-After, and lose nothing.
func TestHTTPSinkRejectedRecordsToTheDLQ(t *testing.T) {
	brokers := testenv.Kafka(t)
	for _, format := range []string{config.FormatNDJSON, config.FormatJSON} {
		t.Run(format, func(t *testing.T) {
			const (
				n          = 6000
				partitions = 6
				token      = "Bearer integration-Sw0rdfish"
			)
			adm := testenv.Admin(t, brokers)
			topic := testenv.NewTopic(t, brokers, partitions)
			group := testenv.NewGroup(t, brokers)
			dlqTopic := group + ".dlq"
			testenv.DeleteTopicAtEnd(t, adm, dlqTopic)

			ep := &httpEndpoint{token: token, format: format, overloads: 3}
			srv := httptest.NewServer(ep)
			t.Cleanup(srv.Close)

			recs := make([]*kgo.Record, n)
			for i := range recs {
				v := fmt.Sprintf(`{"id":%d,"amount":%d.50}`, i, i%1000)
				if i%97 == 13 {
					v = fmt.Sprintf(`{"id":%d,"amount":-1,"reject":true}`, i)
				}
				recs[i] = &kgo.Record{Partition: int32(i % partitions), Key: fmt.Append(nil, i), Value: []byte(v)}
			}
			produceAt(t, brokers, topic, recs)
			bad, good := map[at]int{}, map[at]bool{}
			for i, r := range recs {
				if i%97 == 13 {
					bad[at{r.Partition, r.Offset}] = i
				} else {
					good[at{r.Partition, r.Offset}] = true
				}
			}

			cfg := config.Default()
			cfg.Kafka.Brokers, cfg.Kafka.Group, cfg.Kafka.Topics = brokers, group, []string{topic}
			cfg.Kafka.FetchMaxWait = 200 * time.Millisecond
			cfg.Kafka.SessionTimeout, cfg.Kafka.RebalanceTimeout = 10*time.Second, 20*time.Second
			cfg.Flow.RecordTimeout = 10 * time.Second
			cfg.Sink.Type = config.SinkHTTP
			cfg.Sink.Concurrency = 4
			cfg.Sink.Batch.MaxRecords = 500
			cfg.Sink.Batch.Linger = 50 * time.Millisecond
			cfg.Sink.WriteTimeout = 10 * time.Second
			cfg.Sink.Retry = config.Retry{InitialBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
			cfg.Sink.HTTP = config.HTTP{URL: srv.URL + "/v1/orders", Format: format,
				Headers: map[string]config.Secret{"Authorization": token}}
			cfg.DLQ.Topic = dlqTopic
			cfg.Commit.Interval = 200 * time.Millisecond
			cfg.ShutdownTimeout = 20 * time.Second
			cfg.Observability.Listen = "127.0.0.1:0"
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the test's configuration does not validate: %v", err)
			}

			reg := prometheus.NewRegistry()
			r := startDaemon(t, cfg, daemon.Options{Registry: reg})
			waitLagZero(t, adm, group, topic)
			ends, commits := endOffsets(t, adm, topic), committedOffsets(t, adm, group, topic)
			if err := r.stop(); err != nil {
				t.Fatalf("sluice stopped with %v", err)
			}
			for p, end := range ends {
				if c, ok := commits[p]; !ok || c != end {
					t.Errorf("partition %d: committed %d (present %v), end offset %d", p, c, ok, end)
				}
			}

			// The endpoint: every good record, in order per partition
			// (at least once: a record may repeat after a lost answer), and
			// no bad one.
			ep.mu.Lock()
			stored, requests, problems := append([]at(nil), ep.stored...), ep.requests, ep.problems
			ep.mu.Unlock()
			for _, p := range problems {
				t.Errorf("endpoint: %s", p)
			}
			seen := map[at]int{}
			last := map[int32]int64{}
			for _, a := range stored {
				if !good[a] {
					t.Errorf("the endpoint received %s, which is not a good record", a)
					continue
				}
				if seen[a]++; seen[a] > 1 {
					continue
				}
				if prev, ok := last[a.partition]; ok && a.offset <= prev {
					t.Errorf("partition %d: offset %d received after %d", a.partition, a.offset, prev)
				}
				last[a.partition] = a.offset
			}
			missing := 0
			for a := range good {
				if seen[a] == 0 {
					if missing++; missing <= 5 {
						t.Errorf("good record %s never reached the endpoint", a)
					}
				}
			}
			if missing > 0 {
				t.Errorf("%d of %d good records never reached the endpoint", missing, len(good))
			}

			// The DLQ topic: exactly the bad records, once each, code 400.
			dead := readTopic(t, brokers, dlqTopic)
			inDLQ := map[at]int{}
			for _, dr := range dead {
				a := deadLetterOrigin(t, dr)
				inDLQ[a]++
				i, ok := bad[a]
				switch {
				case !ok:
					t.Errorf("DLQ holds %s (%s), which is not a bad record", a, headers(dr)[dlq.HeaderMessage])
					continue
				case inDLQ[a] > 1:
					t.Errorf("DLQ holds %s %d times", a, inDLQ[a])
					continue
				}
				checkDeadLetter(t, dr, recs[i], flow.ReasonSinkRejected, "400", srv.URL)
				if msg := headers(dr)[dlq.HeaderMessage]; !strings.Contains(msg, "HTTP 400") || !strings.Contains(msg, "must not be negative") ||
					strings.Contains(msg, "Sw0rdfish") {
					t.Errorf("DLQ record of %s: message %q, want the status line and the endpoint's answer, without the token", a, msg)
				}
			}
			for a := range bad {
				if inDLQ[a] == 0 {
					t.Errorf("bad record %s is not in the DLQ", a)
				}
			}
			if opened := metricValue(t, reg, "sluice_circuit_breaker_transitions_total", "to", "open"); opened != 0 {
				t.Errorf("the breaker opened %v times; 3 overloaded answers are below the threshold and rejections never count", opened)
			}
			dups := len(stored) - len(seen)
			t.Logf("%s: %d records, %d good received (%d repeated), %d in the DLQ, %d requests; example: %s",
				format, n, len(seen), dups, len(dead), requests, headers(dead[0])[dlq.HeaderMessage])
		})
	}
}
