package http_test

import (
	"context"
	"errors"
	"fmt"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink"
	httpsink "github.com/sluicehq/sluice/internal/sink/http"
)

// These tests drive the sink as sluice does, through a flow.Pipeline and the
// circuit breaker, against a real net/http server over an in-memory network,
// inside a synctest bubble: backoff, Retry-After, write timeouts and the
// breaker's open_for pass in fake time, and the assertions on time are exact.

const (
	flowSecret = "Sw0rdfish"
	flowToken  = "Bearer tok-" + flowSecret
)

// flowCase is one pipeline run against an ingest endpoint.
type flowCase struct {
	lanes   int
	batch   flow.BatchConfig
	timeout time.Duration // flow's write timeout; 0 none
	breaker config.Breaker
	recs    []*record.Record
}

// flowResult is what the run left behind.
type flowResult struct {
	err         error
	start, end  time.Time
	breaker     *sink.Breaker
	transitions []sink.Transition
	dlq         *memDLQ
	done        *doneCount
	errs        []error // every error the http sink returned
}

// runFlow runs c.recs through a pipeline, the breaker and the http sink into
// in, until every record is done. Call it inside a synctest bubble.
func runFlow(t *testing.T, in *ingest, c flowCase) *flowResult {
	t.Helper()
	in.token = flowToken
	m, stop := serveMem(in)
	defer stop()
	s, err := httpsink.New(config.HTTP{URL: "http://svc:pw-" + flowSecret + "@ingest.test/v1/orders",
		Headers: map[string]config.Secret{"Authorization": flowToken}},
		httpsink.Options{Lanes: c.lanes, DialContext: m.DialContext})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	res := &flowResult{dlq: &memDLQ{}, done: &doneCount{times: map[string]int{}}}
	rec := &errSink{inner: s}
	var mu sync.Mutex
	res.breaker = sink.NewBreaker(rec, c.breaker, c.lanes, sink.OnTransition(func(tr sink.Transition) {
		mu.Lock()
		defer mu.Unlock()
		res.transitions = append(res.transitions, tr)
	}))
	mt := metrics.New(prometheus.NewRegistry())
	gate := flow.NewGate(flow.GateConfig{MaxRecords: len(c.recs) + 1, MaxBytes: 1 << 30, ResumeAt: 0.5}, nil, mt)
	p := flow.New(flow.Config{Workers: 2, Lanes: c.lanes, Batch: c.batch, WriteTimeout: c.timeout,
		Retry: flow.RetryConfig{Initial: 100 * time.Millisecond, Max: time.Second}},
		gate, s, res.breaker, res.dlq, res.done, mt)
	ran := make(chan error, 1)
	res.start = time.Now()
	go func() { ran <- p.Run(t.Context()) }()
	for _, r := range c.recs {
		p.Admit(r)
	}
	p.CloseInput()
	select {
	case res.err = <-ran:
	case <-time.After(time.Hour):
		t.Fatal("the pipeline did not drain within an hour of fake time")
	}
	res.end = time.Now()
	res.errs = rec.errors()
	mu.Lock()
	defer mu.Unlock()
	return res
}

// flowRecords returns parts x perPart records, interleaved by partition as
// a consumer admits them; bad says which ones the endpoint refuses.
func flowRecords(parts int32, perPart int64, bad func(p int32, off int64) bool) (all, good []*record.Record, rejected map[string]bool) {
	rejected = map[string]bool{}
	for off := range perPart {
		for p := range parts {
			id := int64(p)*1_000_000 + off
			v := fmt.Sprintf(`{"id":%d,"amount":%d.25}`, id, off)
			r := &record.Record{Topic: "orders", Partition: p, Offset: off, Timestamp: time.Now(), Key: fmt.Append(nil, id)}
			if bad != nil && bad(p, off) {
				v = fmt.Sprintf(`{"id":%d,"amount":-1,"reject":true}`, id)
				rejected[keyOf(r)] = true
			} else {
				good = append(good, r)
			}
			r.Value = []byte(v)
			all = append(all, r)
		}
	}
	return all, good, rejected
}

func keyOf(r *record.Record) string { return fmt.Sprintf("%d@%d", r.Partition, r.Offset) }

// checkReceived checks the endpoint stored exactly want, once each, in order
// per partition.
func checkReceived(t *testing.T, got []line, want []*record.Record) {
	t.Helper()
	wantBy, gotBy := map[int32][]int64{}, map[int32][]int64{}
	for _, r := range want {
		wantBy[r.Partition] = append(wantBy[r.Partition], r.Offset)
	}
	for _, l := range got {
		if l.id() != int64(l.Partition)*1_000_000+l.Offset {
			t.Errorf("record %d@%d arrived with the value of id %d", l.Partition, l.Offset, l.id())
		}
		gotBy[l.Partition] = append(gotBy[l.Partition], l.Offset)
	}
	for p, w := range wantBy {
		if g := gotBy[p]; fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("partition %d: the endpoint stored %d records %v, want %d in order %v", p, len(g), brief(g), len(w), brief(w))
		}
	}
	if len(got) != len(want) {
		t.Errorf("the endpoint stored %d records, want %d", len(got), len(want))
	}
}

func brief(offs []int64) string {
	if len(offs) > 12 {
		return fmt.Sprintf("%v ... (%d)", offs[:12], len(offs))
	}
	return fmt.Sprint(offs)
}

func (r *flowResult) checkDoneOnce(t *testing.T, recs []*record.Record) {
	t.Helper()
	r.done.mu.Lock()
	defer r.done.mu.Unlock()
	for _, rec := range recs {
		if n := r.done.times[keyOf(rec)]; n != 1 {
			t.Errorf("record %s reported done %d times, want once", keyOf(rec), n)
		}
	}
}

// TestRetryAfterIsHonoured: an endpoint that answers 503 or 429 with a
// Retry-After, in seconds or as an HTTP-date, is not asked again before that
// time has passed, nor much after; then everything is written once, in order.
func TestRetryAfterIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		value  func(now time.Time) string
	}{
		{"503 seconds", 503, func(time.Time) string { return "7" }},
		{"429 seconds", 429, func(time.Time) string { return "3" }},
		{"503 HTTP-date", 503, func(now time.Time) string { return now.Add(5 * time.Second).UTC().Format(nethttp.TimeFormat) }},
		{"429 HTTP-date", 429, func(now time.Time) string { return now.Add(12 * time.Second).UTC().Format(nethttp.TimeFormat) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const refusals = 3
				in := newIngest()
				in.setPlan(func(n int) step {
					if n < refusals {
						return step{kind: stepStatus, status: tc.status, header: map[string]string{"Retry-After": tc.value(time.Now())},
							body: `{"error":"slow down"}`}
					}
					return step{kind: stepAccept}
				})
				all, _, _ := flowRecords(1, 20, nil)
				res := runFlow(t, in, flowCase{lanes: 1, recs: all,
					batch:   flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: 10 * time.Millisecond},
					breaker: config.Breaker{FailureThreshold: 5, OpenFor: 30 * time.Second, HalfOpenSuccesses: 1, HalfOpenShare: 1}})
				if res.err != nil {
					t.Fatalf("Run = %v", res.err)
				}
				log := in.log()
				if len(log) != refusals+1 {
					t.Fatalf("%d requests, want %d refused and one accepted", len(log), refusals)
				}
				for i := range refusals {
					wait, gap := log[i].wait, log[i+1].at.Sub(log[i].at)
					if log[i].status != tc.status || wait <= 0 {
						t.Fatalf("request %d answered %d asking for %v; the plan is %d with a Retry-After", i, log[i].status, wait, tc.status)
					}
					if gap < wait {
						t.Errorf("request %d came %v after a Retry-After of %v", i+1, gap, wait)
					}
					if limit := wait + time.Second; gap > limit { // the backoff's ceiling is 1s
						t.Errorf("request %d came %v after a Retry-After of %v, want within %v", i+1, gap, wait, limit)
					}
				}
				checkReceived(t, in.received(), all)
				res.checkDoneOnce(t, all)
				if n := len(res.dlq.letters()); n > 0 {
					t.Errorf("%d records dead-lettered for the endpoint's overload, want none", n)
				}
				if res.breaker.Opens() != 0 || res.breaker.State() != sink.StateClosed {
					t.Errorf("breaker %v after %d opens; 3 refusals are below the threshold of 5", res.breaker.State(), res.breaker.Opens())
				}
			})
		})
	}
}

// TestRejectedRecordsGoToTheDLQ: an endpoint that refuses a batch with 400
// when it holds a bad record gets every other record, once and in order, and
// exactly the bad records are dead-lettered, each with the status code and
// the endpoint's answer and without credentials. Rejections prove the
// endpoint reachable: the breaker stays closed.
func TestRejectedRecordsGoToTheDLQ(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		in := newIngest()
		all, good, rejected := flowRecords(4, 100, func(p int32, off int64) bool {
			return (int64(p)*100+off)%29 == 7 || (p == 2 && off >= 50 && off <= 52)
		})
		res := runFlow(t, in, flowCase{lanes: 2, recs: all,
			batch:   flow.BatchConfig{MaxRecords: 64, MaxBytes: 1 << 20, Linger: 10 * time.Millisecond},
			breaker: config.Breaker{FailureThreshold: 3, OpenFor: 10 * time.Second, HalfOpenSuccesses: 1, HalfOpenShare: 1}})
		if res.err != nil {
			t.Fatalf("Run = %v", res.err)
		}
		seen := map[string]bool{}
		for _, d := range res.dlq.letters() {
			k := keyOf(d.rec)
			if !rejected[k] || seen[k] {
				t.Errorf("record %s dead-lettered (bad: %v, before: %v)", k, rejected[k], seen[k])
			}
			seen[k] = true
			c := d.cause
			if c.Reason != flow.ReasonSinkRejected || c.Code != "400" {
				t.Errorf("record %s: reason %q code %q, want %q and 400", k, c.Reason, c.Code, flow.ReasonSinkRejected)
			}
			msg := c.Error()
			if !strings.Contains(msg, "HTTP 400 Bad Request") || !strings.Contains(msg, fmt.Sprintf("record %s refused", k)) {
				t.Errorf("record %s: message %q lacks the status line or the endpoint's answer about it", k, msg)
			}
			if strings.Contains(msg, flowSecret) || strings.Contains(msg, "ingest.test") {
				t.Errorf("record %s: message %q shows the endpoint's URL or credentials", k, msg)
			}
		}
		for k := range rejected {
			if !seen[k] {
				t.Errorf("bad record %s was not dead-lettered", k)
			}
		}
		checkReceived(t, in.received(), good)
		res.checkDoneOnce(t, all)
		if res.breaker.Opens() != 0 {
			t.Errorf("the breaker opened %d times for records the endpoint refused", res.breaker.Opens())
		}
		t.Logf("%d records, %d rejected, %d requests", len(all), len(rejected), len(in.log()))
	})
}

// TestBreakerOpensAndClosesOnAnOutage: an endpoint that fails every way it
// can (503, 500, 429, a dropped connection) for a while opens the breaker, is
// called only by the breaker's probes until it recovers, and then gets every
// record once, in order, with nothing dead-lettered, as the PostgreSQL sink
// does (see package sink's breaker_flow_test.go).
func TestBreakerOpensAndClosesOnAnOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			lanes  = 4
			outage = 9 * time.Second
		)
		bcfg := config.Breaker{FailureThreshold: 5, OpenFor: 2 * time.Second, HalfOpenSuccesses: 3, HalfOpenShare: 0.05}
		in := newIngest()
		up := time.Now().Add(outage)
		in.setPlan(func(n int) step {
			if !time.Now().Before(up) {
				return step{kind: stepAccept}
			}
			switch n % 4 {
			case 0:
				return step{kind: stepStatus, status: 503, body: "down for maintenance"}
			case 1:
				return step{kind: stepStatus, status: 500, body: "internal error"}
			case 2:
				return step{kind: stepStatus, status: 429, header: map[string]string{"Retry-After": "1"}}
			default:
				return step{kind: stepDrop}
			}
		})
		all, _, _ := flowRecords(8, 300, nil)
		res := runFlow(t, in, flowCase{lanes: lanes, recs: all, breaker: bcfg,
			batch: flow.BatchConfig{MaxRecords: 100, MaxBytes: 1 << 20, Linger: 50 * time.Millisecond}})
		if res.err != nil {
			t.Fatalf("Run = %v", res.err)
		}
		checkReceived(t, in.received(), all)
		res.checkDoneOnce(t, all)
		if n := len(res.dlq.letters()); n > 0 {
			t.Errorf("%d records dead-lettered for the endpoint's outage, want none", n)
		}
		if st := res.breaker.State(); st != sink.StateClosed {
			t.Errorf("breaker %v after the outage, want closed", st)
		}
		tr := res.transitions
		if len(tr) < 3 || tr[0].To != sink.StateOpen || tr[len(tr)-1].To != sink.StateClosed {
			t.Fatalf("transitions %+v, want open ... closed", tr)
		}
		if !tr[0].At.Before(up) {
			t.Errorf("the breaker opened at +%v, after the outage ended", tr[0].At.Sub(res.start))
		}
		during := 0
		for _, r := range in.log() {
			if r.at.Before(up) {
				during++
			}
		}
		// The failures up to the threshold (one per lane in flight, retried),
		// then one probe per open_for.
		if limit := bcfg.FailureThreshold + lanes + int(outage/bcfg.OpenFor) + 1; during > limit {
			t.Errorf("the endpoint was called %d times during the %v outage, want at most %d", during, outage, limit)
		}
		if limit := outage + bcfg.OpenFor + 2*time.Second; res.end.Sub(res.start) > limit {
			t.Errorf("the pipeline drained %v after the start, want within %v", res.end.Sub(res.start), limit)
		}
		for _, err := range res.errs {
			if flow.Classify(err) != flow.ClassTransient {
				t.Errorf("during the outage the sink returned %v, want transient errors only", err)
			}
		}
		t.Logf("outage %v: %d calls during it, %d in all, %d opens, drained at +%v", outage, during, len(in.log()),
			res.breaker.Opens(), res.end.Sub(res.start))
	})
}

// TestHangingEndpointTimesOut: requests the endpoint never answers end at the
// write timeout as transient failures, which open the breaker; once the
// endpoint answers again every record is written once, in order.
func TestHangingEndpointTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const hangs, timeout = 6, 5 * time.Second
		in := newIngest()
		in.setPlan(func(n int) step {
			if n < hangs {
				return step{kind: stepHang}
			}
			return step{kind: stepAccept}
		})
		all, _, _ := flowRecords(4, 100, nil)
		res := runFlow(t, in, flowCase{lanes: 2, recs: all, timeout: timeout,
			batch:   flow.BatchConfig{MaxRecords: 50, MaxBytes: 1 << 20, Linger: 10 * time.Millisecond},
			breaker: config.Breaker{FailureThreshold: 3, OpenFor: 10 * time.Second, HalfOpenSuccesses: 1, HalfOpenShare: 0.5}})
		if res.err != nil {
			t.Fatalf("Run = %v", res.err)
		}
		checkReceived(t, in.received(), all)
		res.checkDoneOnce(t, all)
		if n := len(res.dlq.letters()); n > 0 {
			t.Errorf("%d records dead-lettered for a hanging endpoint, want none", n)
		}
		timeouts := 0
		for _, err := range res.errs {
			if flow.Classify(err) != flow.ClassTransient {
				t.Errorf("the sink returned %v, want transient errors only", err)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				timeouts++
			}
		}
		if timeouts != hangs {
			t.Errorf("%d writes timed out, want %d (one per hung request)", timeouts, hangs)
		}
		if res.breaker.Opens() == 0 || res.breaker.State() != sink.StateClosed {
			t.Errorf("breaker %v after %d opens; want it opened by the timeouts and closed again", res.breaker.State(), res.breaker.Opens())
		}
		// Both lanes' first requests hang: the next one waits for a timeout.
		if log := in.log(); len(log) < 3 || log[2].at.Sub(log[0].at) < timeout {
			t.Errorf("the third request came before the write timeout (%v) of the two hung ones", timeout)
		}
	})
}

// errSink records the errors of the sink it wraps.
type errSink struct {
	inner flow.Sink
	mu    sync.Mutex
	errs  []error
}

func (s *errSink) Write(ctx context.Context, b *record.Batch) error {
	err := s.inner.Write(ctx, b)
	if err != nil {
		s.mu.Lock()
		s.errs = append(s.errs, err)
		s.mu.Unlock()
	}
	return err
}

func (s *errSink) errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.errs...)
}

type deadLetter struct {
	rec   *record.Record
	cause *flow.PoisonError
}

// memDLQ stores every dead letter it is given.
type memDLQ struct {
	mu     sync.Mutex
	stored []deadLetter
}

func (d *memDLQ) DeadLetter(_ context.Context, r *record.Record, cause *flow.PoisonError) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stored = append(d.stored, deadLetter{r, cause})
	return nil
}

func (d *memDLQ) letters() []deadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]deadLetter(nil), d.stored...)
}

// doneCount counts the done reports of each record.
type doneCount struct {
	mu    sync.Mutex
	times map[string]int
}

func (c *doneCount) Done(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rs {
		c.times[keyOf(r)]++
	}
}
