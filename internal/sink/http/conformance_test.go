package http_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/record"
	httpsink "github.com/sluicehq/sluice/internal/sink/http"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

// TestConformance runs the sink conformance suite against an ingest endpoint
// served by net/http/httptest on 127.0.0.1. A bad record is one whose value
// says "reject": true, which the endpoint refuses with 400; a failure is the
// endpoint answering 503, 500 and 502 or dropping the connection; a held
// write is a request the endpoint stored and then does not answer, so a
// cancelled write may have landed (AtLeastOnce), as with a real endpoint
// whose answer is lost.
func TestConformance(t *testing.T) {
	const (
		password = "pw-Sw0rdfish"
		query    = "q-Sw0rdfish"
		token    = "tok-Sw0rdfish-123"
	)
	sinktest.Run(t, sinktest.Harness{
		Delivery:   sinktest.AtLeastOnce,
		RejectCode: "400",
		Secrets:    []string{password, query, token},
		New: func(t *testing.T) *sinktest.Instance {
			in := newIngest()
			in.token = "Bearer " + token
			ts := httptest.NewServer(in)
			t.Cleanup(ts.Close)
			u := strings.Replace(ts.URL, "http://", "http://svc:"+password+"@", 1) + "/v1/ingest?key=" + query
			s, err := httpsink.New(config.HTTP{URL: u, Headers: map[string]config.Secret{"Authorization": config.Secret("Bearer " + token)}},
				httpsink.Options{Lanes: 4, WriteTimeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			return &sinktest.Instance{
				Sink: s, Mapper: s,
				Stored: func(t *testing.T) []sinktest.Stored {
					var out []sinktest.Stored
					for _, l := range in.received() {
						if l.Topic != sinktest.Topic {
							t.Fatalf("the endpoint holds a record of topic %q", l.Topic)
						}
						out = append(out, sinktest.Stored{Partition: l.Partition, Offset: l.Offset, ID: l.id()})
					}
					return out
				},
				Bad: func(r *record.Record) {
					r.Value = append([]byte(`{"reject":true,`), bytes.TrimPrefix(r.Value, []byte("{"))...)
				},
				Fail: func(*testing.T) func() {
					failures := []step{
						{kind: stepStatus, status: 503, body: "down"},
						{kind: stepDrop},
						{kind: stepStatus, status: 500, body: "oops"},
						{kind: stepStatus, status: 502, body: "bad gateway"},
					}
					in.setPlan(func(n int) step { return failures[n%len(failures)] })
					return func() { in.setPlan(nil) }
				},
				Hold: func(*testing.T) (func(context.Context) error, func()) {
					release := make(chan struct{})
					in.setPlan(func(int) step { return step{kind: stepStoreThenHang, release: release} })
					var once sync.Once
					held := in.heldSignal()
					return func(ctx context.Context) error {
							select {
							case <-held:
								return nil
							case <-ctx.Done():
								return ctx.Err()
							}
						}, func() {
							once.Do(func() {
								in.setPlan(nil)
								close(release)
							})
						}
				},
			}
		},
	})
}
