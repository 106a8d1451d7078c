package http_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/file"
	httpsink "github.com/sluicehq/sluice/internal/sink/http"
)

func newSink(t *testing.T, cfg config.HTTP, opts httpsink.Options) *httpsink.Sink {
	t.Helper()
	s, err := httpsink.New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// serve starts a real HTTP server on 127.0.0.1 for the test.
func serve(t *testing.T, h nethttp.Handler) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

func rec(p int32, off int64, value string) *record.Record {
	return &record.Record{Topic: "orders", Partition: p, Offset: off, Timestamp: time.UnixMilli(1714566600000 + off).UTC(),
		Key: fmt.Appendf(nil, "k%d", off), Value: []byte(value), Headers: []record.Header{{Key: "h", Value: []byte("v")}}}
}

// batchOf maps recs through s into one batch.
func batchOf(t *testing.T, s flow.Mapper, recs ...*record.Record) *record.Batch {
	t.Helper()
	b := &record.Batch{}
	for _, r := range recs {
		row, err := s.Map(t.Context(), r)
		if err != nil {
			t.Fatalf("Map(%s@%d): %v", r.Part(), r.Offset, err)
		}
		b.Rows = append(b.Rows, row)
		b.Records = append(b.Records, r)
		b.Bytes += r.Size()
	}
	return b
}

func orders(n int) []*record.Record {
	out := make([]*record.Record, n)
	for i := range out {
		out[i] = rec(0, int64(i), fmt.Sprintf(`{"id":%d}`, i))
	}
	return out
}

// TestStatusClasses writes a batch of two records and one of a single record
// to an endpoint answering each status, and checks the class of the result.
func TestStatusClasses(t *testing.T) {
	now := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	type want struct {
		class      string // ok | transient | rejected
		retryAfter time.Duration
	}
	for _, tc := range []struct {
		name       string
		status     int
		retryAfter string
		want       want
	}{
		{"200", 200, "", want{class: "ok"}},
		{"201", 201, "", want{class: "ok"}},
		{"204", 204, "", want{class: "ok"}},
		{"503 Retry-After seconds", 503, "7", want{"transient", 7 * time.Second}},
		{"503 Retry-After with spaces", 503, " 12 ", want{"transient", 12 * time.Second}},
		{"503 Retry-After HTTP-date", 503, now.Add(90 * time.Second).Format(nethttp.TimeFormat), want{"transient", 90 * time.Second}},
		{"503 Retry-After date in the past", 503, now.Add(-time.Minute).Format(nethttp.TimeFormat), want{"transient", 0}},
		{"503 Retry-After days away", 503, now.Add(72 * time.Hour).Format(nethttp.TimeFormat), want{"transient", time.Hour}},
		{"503 Retry-After too many seconds", 503, "99999999999999999999999", want{"transient", time.Hour}},
		{"503 Retry-After negative", 503, "-5", want{"transient", 0}},
		{"503 Retry-After fraction", 503, "1.5", want{"transient", 0}},
		{"503 Retry-After garbage", 503, "soon", want{"transient", 0}},
		{"503 without Retry-After", 503, "", want{"transient", 0}},
		{"429 Retry-After seconds", 429, "2", want{"transient", 2 * time.Second}},
		{"429 Retry-After HTTP-date", 429, now.Add(30 * time.Second).Format(nethttp.TimeFormat), want{"transient", 30 * time.Second}},
		{"500", 500, "", want{class: "transient"}},
		{"502", 502, "", want{class: "transient"}},
		{"504", 504, "", want{class: "transient"}},
		{"500 ignores Retry-After", 500, "9", want{class: "transient"}},
		{"408", 408, "", want{class: "transient"}},
		{"400", 400, "", want{class: "rejected"}},
		{"409", 409, "", want{class: "rejected"}},
		{"413", 413, "", want{class: "rejected"}},
		{"422", 422, "", want{class: "rejected"}},
		{"401 is the credentials, not a record", 401, "", want{class: "transient"}},
		{"403 is the credentials, not a record", 403, "", want{class: "transient"}},
		{"404 is the URL, not a record", 404, "", want{class: "transient"}},
		{"405 is the URL, not a record", 405, "", want{class: "transient"}},
		{"415 is the format, not a record", 415, "", want{class: "transient"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, `{"error":"what the endpoint says"}`)
			}))
			s := newSink(t, config.HTTP{URL: ts.URL}, httpsink.Options{Now: func() time.Time { return now }})
			for _, n := range []int{2, 1} {
				err := s.Write(t.Context(), batchOf(t, s, orders(n)...))
				if tc.want.class == "ok" {
					if err != nil {
						t.Fatalf("batch of %d: Write = %v, want nil", n, err)
					}
					continue
				}
				if err == nil {
					t.Fatalf("batch of %d: Write = nil, want a %s error", n, tc.want.class)
				}
				var se *httpsink.StatusError
				if !errors.As(err, &se) || se.Code != tc.status {
					t.Errorf("batch of %d: %v does not carry a StatusError with code %d", n, err, tc.status)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("HTTP %d", tc.status)) || !strings.Contains(err.Error(), "what the endpoint says") {
					t.Errorf("batch of %d: %q lacks the status line or the answer's body", n, err)
				}
				switch tc.want.class {
				case "transient":
					var te *flow.TransientError
					if !errors.As(err, &te) || flow.Classify(err) != flow.ClassTransient {
						t.Fatalf("batch of %d: Write = %v, want a *flow.TransientError", n, err)
					}
					if te.RetryAfter != tc.want.retryAfter {
						t.Errorf("batch of %d: RetryAfter = %v, want %v", n, te.RetryAfter, tc.want.retryAfter)
					}
				case "rejected":
					var re *flow.RejectedError
					if !errors.As(err, &re) || flow.Classify(err) != flow.ClassRejected {
						t.Fatalf("batch of %d: Write = %v, want a *flow.RejectedError", n, err)
					}
					if n > 1 {
						if len(re.Rows) != 0 {
							t.Errorf("batch of %d: Rows = %v, want none (the lanes bisect)", n, re.Rows)
						}
						continue
					}
					if len(re.Rows) != 1 || re.Rows[0] != 0 || len(re.Causes) != 1 {
						t.Fatalf("single record: Rows %v, %d causes; want [0] and one cause", re.Rows, len(re.Causes))
					}
					c := re.Causes[0]
					if c.Reason != flow.ReasonSinkRejected || c.Code != fmt.Sprint(tc.status) || !errors.As(c.Err, &se) {
						t.Errorf("single record: cause %+v, want reason %s, code %d, a StatusError", c, flow.ReasonSinkRejected, tc.status)
					}
				}
			}
		})
	}
}

// TestRedirectIsNotFollowed: a 302 would turn the POST into a GET; the sink
// reports it instead of following it.
func TestRedirectIsNotFollowed(t *testing.T) {
	var followed atomic.Bool
	target := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) { followed.Store(true) }))
	ts := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		nethttp.Redirect(w, r, target.URL+"/elsewhere", nethttp.StatusFound)
	}))
	s := newSink(t, config.HTTP{URL: ts.URL}, httpsink.Options{})
	err := s.Write(t.Context(), batchOf(t, s, orders(3)...))
	if flow.Classify(err) != flow.ClassTransient || !strings.Contains(fmt.Sprint(err), "302") {
		t.Errorf("Write = %v, want a transient error naming the 302", err)
	}
	if followed.Load() {
		t.Error("the redirect was followed")
	}
}

// TestBodyAndHeaders checks what the endpoint receives in both formats: the
// records in order, the content type, the configured headers, credentials
// from the URL, and a Host header.
func TestBodyAndHeaders(t *testing.T) {
	for _, format := range []string{config.FormatNDJSON, config.FormatJSON, ""} {
		t.Run("format="+format, func(t *testing.T) {
			var mu sync.Mutex
			var got *nethttp.Request
			var body []byte
			ts := serve(t, nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				got, body = r, b
				mu.Unlock()
			}))
			u := strings.Replace(ts.URL, "http://", "http://svc:pw@", 1) + "/v1/orders?tenant=acme"
			s := newSink(t, config.HTTP{URL: u, Format: format, Headers: map[string]config.Secret{
				"X-Tenant": "acme", "host": "ingest.example.com", "x-lower-case": "kept"}}, httpsink.Options{})
			recs := []*record.Record{rec(0, 1, `{"id":1,"a":[1, 2]}`), rec(1, 7, "not json"), rec(0, 2, `{"id":2}`)}
			if err := s.Write(t.Context(), batchOf(t, s, recs...)); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			wantType := "application/x-ndjson"
			if format == config.FormatJSON {
				wantType = "application/json"
			}
			for k, v := range map[string]string{"Content-Type": wantType, "X-Tenant": "acme", "X-Lower-Case": "kept",
				"User-Agent": "sluice", "Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("svc:pw"))} {
				if g := got.Header.Get(k); g != v {
					t.Errorf("header %s = %q, want %q", k, g, v)
				}
			}
			if got.Method != nethttp.MethodPost || got.URL.Path != "/v1/orders" || got.URL.RawQuery != "tenant=acme" {
				t.Errorf("request %s %s, want POST /v1/orders?tenant=acme", got.Method, got.URL)
			}
			if got.Host != "ingest.example.com" {
				t.Errorf("Host = %q, want the configured one", got.Host)
			}
			lines, err := parseBody(wantType, body)
			if err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if len(lines) != len(recs) {
				t.Fatalf("%d records in the body, want %d: %s", len(lines), len(recs), body)
			}
			for i, l := range lines {
				r := recs[i]
				if l.Topic != r.Topic || l.Partition != r.Partition || l.Offset != r.Offset || l.Key != string(r.Key) {
					t.Errorf("record %d of the body is %+v, want %s@%d", i, l, r.Part(), r.Offset)
				}
			}
			if string(lines[1].Value) != `"not json"` || string(lines[0].Value) != `{"id":1,"a":[1,2]}` {
				t.Errorf("values %s and %s, want JSON embedded (compacted) and other values as strings", lines[0].Value, lines[1].Value)
			}
		})
	}
}

// TestErrorsShowNoSecrets answers with the request's credentials in the body,
// then fails to connect at all: no error shows the URL's credentials, path or
// query, or a header value.
func TestErrorsShowNoSecrets(t *testing.T) {
	const secret = "Sw0rdfish"
	echo := func(status int) nethttp.HandlerFunc {
		return func(w nethttp.ResponseWriter, r *nethttp.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(status)
			user, pw, _ := r.BasicAuth()
			_, token, _ := strings.Cut(r.Header.Get("X-Other"), " ")
			fmt.Fprintf(w, "you sent %s %s %s to %s as %s:%s", r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"),
				token, r.URL.String(), user, pw)
		}
	}
	cfg := func(base string) config.HTTP {
		return config.HTTP{URL: strings.Replace(base, "http://", "http://user-"+secret+":pw-"+secret+"@", 1) + "/hooks/T0K3N-" + secret + "?api_key=q-" + secret,
			Headers: map[string]config.Secret{"X-Api-Key": "xk-" + secret, "X-Other": config.Secret("Token o-" + secret)}}
	}
	check := func(t *testing.T, what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		msgs := []string{err.Error()}
		var re *flow.RejectedError
		if errors.As(err, &re) {
			for _, c := range re.Causes {
				msgs = append(msgs, c.Error())
			}
		}
		for _, m := range msgs {
			basic := base64.StdEncoding.EncodeToString([]byte("user-" + secret + ":pw-" + secret))
			if strings.Contains(m, secret) || strings.Contains(m, "T0K3N") || strings.Contains(m, basic) {
				t.Errorf("%s: error shows a secret: %q", what, m)
			}
		}
		t.Logf("%s: %v", what, err)
	}
	for _, status := range []int{400, 503, 401} {
		ts := serve(t, echo(status))
		s := newSink(t, cfg(ts.URL), httpsink.Options{})
		check(t, fmt.Sprintf("%d, one record", status), s.Write(t.Context(), batchOf(t, s, orders(1)...)))
		check(t, fmt.Sprintf("%d, a batch", status), s.Write(t.Context(), batchOf(t, s, orders(3)...)))
	}
	ts := httptest.NewServer(echo(200))
	ts.Close() // nothing listens there now
	s := newSink(t, cfg(ts.URL), httpsink.Options{})
	err := s.Write(t.Context(), batchOf(t, s, orders(2)...))
	check(t, "unreachable", err)
	if flow.Classify(err) != flow.ClassTransient {
		t.Errorf("unreachable endpoint: %v, want transient", err)
	}

	_, err = httpsink.New(config.HTTP{URL: "http://u:pw-" + secret + "@host:port:bad/"}, httpsink.Options{})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("New with a bad URL = %v, want an error without the URL", err)
	}
}

// TestConnectionsAreReusedAndBounded: lanes share at most Lanes connections,
// kept alive across answers of every class, error bodies included.
func TestConnectionsAreReusedAndBounded(t *testing.T) {
	var conns, active, peak atomic.Int64
	var n atomic.Int64
	ts := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		now := active.Add(1)
		defer active.Add(-1)
		for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
		}
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(2 * time.Millisecond)
		switch n.Add(1) % 4 {
		case 1:
			w.WriteHeader(400)
			_, _ = w.Write(bytes.Repeat([]byte("x"), 20<<10)) // longer than the quoted snippet
		case 2:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(503)
		case 3:
			w.WriteHeader(500)
		}
	}))
	ts.Config.ConnState = func(_ net.Conn, st nethttp.ConnState) {
		if st == nethttp.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)

	t.Run("sequential", func(t *testing.T) {
		conns.Store(0)
		s := newSink(t, config.HTTP{URL: ts.URL}, httpsink.Options{Lanes: 1})
		for range 40 {
			_ = s.Write(t.Context(), batchOf(t, s, orders(3)...))
		}
		if c := conns.Load(); c != 1 {
			t.Errorf("40 sequential writes opened %d connections, want 1 kept alive", c)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		conns.Store(0)
		peak.Store(0)
		const lanes = 3
		s := newSink(t, config.HTTP{URL: ts.URL}, httpsink.Options{Lanes: lanes})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 15 {
					_ = s.Write(t.Context(), batchOf(t, s, orders(2)...))
				}
			})
		}
		wg.Wait()
		if c := conns.Load(); c > lanes {
			t.Errorf("8 writers over %d lanes opened %d connections, want at most %d", lanes, c, lanes)
		}
		if p := peak.Load(); p > lanes {
			t.Errorf("%d requests in flight at once, want at most %d", p, lanes)
		}
		t.Logf("%d connections, at most %d requests at once", conns.Load(), peak.Load())
	})
}

func TestNewRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  config.HTTP
		opts httpsink.Options
		key  string
	}{
		{"no url", config.HTTP{}, httpsink.Options{}, "sink.http.url"},
		{"scheme", config.HTTP{URL: "ftp://host/x"}, httpsink.Options{}, "sink.http.url"},
		{"no host", config.HTTP{URL: "http:///x"}, httpsink.Options{}, "sink.http.url"},
		{"format", config.HTTP{URL: "http://host", Format: "xml"}, httpsink.Options{}, "sink.http.format"},
		{"header name", config.HTTP{URL: "http://host", Headers: map[string]config.Secret{"Bad Name": "x"}}, httpsink.Options{}, "sink.http.headers"},
		{"header name with a comma", config.HTTP{URL: "http://host", Headers: map[string]config.Secret{"X-A,B": "x"}}, httpsink.Options{}, "sink.http.headers"},
		{"header name not ASCII", config.HTTP{URL: "http://host", Headers: map[string]config.Secret{"X-Zoë": "x"}}, httpsink.Options{}, "sink.http.headers"},
		{"header value", config.HTTP{URL: "http://host", Headers: map[string]config.Secret{"X-A": "a\r\nX-Injected: 1"}}, httpsink.Options{}, "sink.http.headers.X-A"},
		{"column source", config.HTTP{URL: "http://host"}, httpsink.Options{Columns: map[string]string{"id": "nope"}}, "sink.http.columns.id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := httpsink.New(tc.cfg, tc.opts)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.HasPrefix(err.Error(), tc.key) {
				t.Errorf("error %q does not start with the key %s", err, tc.key)
			}
			if strings.Contains(err.Error(), "Injected") {
				t.Errorf("error %q shows a header value", err)
			}
		})
	}
}

// TestMapMatchesTheFileSink: a record's object is the file sink's line, in
// both modes, so that the two sinks show a record the same way.
func TestMapMatchesTheFileSink(t *testing.T) {
	recs := []*record.Record{
		rec(0, 1, `{"id": 1, "customer": {"name": "Zoë", "tags": ["a", "<b>"]}, "amount": 12.5}`),
		rec(3, 9, "plain text"),
		{Topic: "t", Partition: 2, Offset: 5, Key: []byte{0xff, 0x00}, Value: nil, Headers: []record.Header{{Key: "bin", Value: []byte{0xfe}}, {Key: "n"}}},
		{Topic: "t", Offset: 6, Value: []byte(`[1,2,3]`), Headers: []record.Header{{Key: "dup", Value: []byte("1")}, {Key: "dup", Value: []byte("2")}}},
	}
	columns := map[string]string{"id": "value.id", "name": "value.customer.name", "k": "$key", "p": "$partition",
		"o": "$offset", "ts": "$timestamp", "tp": "$topic", "h": "$headers.h", "v": "$value"}
	for _, mode := range []map[string]string{nil, columns} {
		fs, err := file.New(config.File{Path: filepath.Join(t.TempDir(), "out.jsonl"), Columns: mode})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = fs.Close() })
		hs := newSink(t, config.HTTP{URL: "http://127.0.0.1:1"}, httpsink.Options{Columns: mode})
		for _, r := range recs {
			want, ferr := fs.Map(t.Context(), r)
			got, herr := hs.Map(t.Context(), r)
			if (ferr == nil) != (herr == nil) {
				t.Errorf("columns %v, %s@%d: file sink error %v, http sink error %v", mode != nil, r.Part(), r.Offset, ferr, herr)
				continue
			}
			if ferr != nil {
				if flow.Classify(ferr) != flow.Classify(herr) {
					t.Errorf("errors differ: %v, %v", ferr, herr)
				}
				continue
			}
			if !bytes.Equal(want[0].([]byte), got[0].([]byte)) {
				t.Errorf("columns %v, %s@%d:\nhttp %s\nfile %s", mode != nil, r.Part(), r.Offset, got[0], want[0])
			}
			if !json.Valid(got[0].([]byte)) {
				t.Errorf("%s is not JSON", got[0])
			}
		}
	}
}

func TestForeignRowsAreFatal(t *testing.T) {
	var called atomic.Bool
	ts := serve(t, nethttp.HandlerFunc(func(nethttp.ResponseWriter, *nethttp.Request) { called.Store(true) }))
	s := newSink(t, config.HTTP{URL: ts.URL}, httpsink.Options{})
	for _, row := range []record.Row{{"a string"}, {[]byte("a"), []byte("b")}, {[]byte("two\nlines")}, {[]byte{}}} {
		err := s.Write(t.Context(), &record.Batch{Rows: []record.Row{row}, Records: []*record.Record{{}}})
		if flow.Classify(err) != flow.ClassFatal {
			t.Errorf("Write(%q) = %v, want a fatal error", row, err)
		}
	}
	if err := s.Write(t.Context(), &record.Batch{}); err != nil {
		t.Errorf("an empty batch: %v", err)
	}
	if called.Load() {
		t.Error("the endpoint was called")
	}
}

// TestHangingRequestEnds: a request the endpoint never answers ends at the
// write timeout, or when the caller cancels, as a transient error.
func TestHangingRequestEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		in := newIngest()
		in.setPlan(func(int) step { return step{kind: stepHang} })
		m, stop := serveMem(in)
		defer stop()
		s, err := httpsink.New(config.HTTP{URL: "http://ingest.test/v1"}, httpsink.Options{WriteTimeout: 5 * time.Second, DialContext: m.DialContext})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()

		start := time.Now()
		err = s.Write(t.Context(), batchOf(t, s, orders(2)...))
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("a hanging write returned after %v, want the write timeout, 5s", took)
		}
		if flow.Classify(err) != flow.ClassTransient || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Write = %v, want a transient error wrapping DeadlineExceeded", err)
		}

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		start = time.Now()
		go func() { done <- s.Write(ctx, batchOf(t, s, orders(2)...)) }()
		<-in.heldSignal()
		time.Sleep(time.Second)
		cancel()
		err = <-done
		if took := time.Since(start); took != time.Second {
			t.Errorf("a cancelled write returned %v after it began, want at once after the cancel (1s)", took)
		}
		if flow.Classify(err) != flow.ClassTransient || !errors.Is(err, context.Canceled) {
			t.Errorf("Write = %v, want a transient error wrapping Canceled", err)
		}
		if got := in.received(); len(got) != 0 {
			t.Errorf("the endpoint stored %d records of hung requests", len(got))
		}
	})
}
