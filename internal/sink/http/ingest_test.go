package http_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// ingest is the endpoint the tests write to: a real net/http handler that
// parses every batch (NDJSON or a JSON array, by Content-Type) and stores it
// whole, or refuses it whole with 400 when it holds a record whose value has
// "reject": true, the way an all-or-nothing ingest API does. plan, when set,
// decides the answer to each request before that: a status (503 with
// Retry-After, 429, 500), a dropped connection, or a hang.
//
// It is safe for concurrent use; the test reads what it stored with
// received.
type ingest struct {
	token string // the Authorization header every request must carry; "" any

	mu       sync.Mutex
	plan     func(n int) step // n counts requests from 0
	stored   []line
	requests []request
	held     chan struct{} // closed when a request is held (stepStoreThenHang)
	n        int
}

type stepKind int

const (
	stepAccept        stepKind = iota // store the batch, or refuse it for a rejected record
	stepStatus                        // answer status with header and body, store nothing
	stepDrop                          // close the connection without an answer
	stepHang                          // hang until the client gives up (or release); store nothing
	stepStoreThenHang                 // store the batch, then hang as stepHang
)

// step is ingest's answer to one request.
type step struct {
	kind    stepKind
	status  int
	header  map[string]string
	body    string
	release <-chan struct{} // ends a hang; nil: only the client ends it
}

// line is one record of a batch as the endpoint parsed it.
type line struct {
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Timestamp string          `json:"timestamp"`
	Key       any             `json:"key"`
	Value     json.RawMessage `json:"value"`
	Headers   map[string]any  `json:"headers"`
}

func (l line) id() int64 {
	var v struct{ ID int64 }
	_ = json.Unmarshal(l.Value, &v)
	return v.ID
}

func (l line) rejected() bool {
	var v struct{ Reject bool }
	_ = json.Unmarshal(l.Value, &v)
	return v.Reject
}

// request is one request the endpoint received.
type request struct {
	at      time.Time
	records int
	status  int           // 0: no answer (dropped, hung)
	wait    time.Duration // the Retry-After the answer asked for
	header  nethttp.Header
	body    []byte
}

func newIngest() *ingest { return &ingest{held: make(chan struct{})} }

func (in *ingest) setPlan(plan func(n int) step) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.plan = plan
}

func (in *ingest) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the client went away
	}
	lines, perr := parseBody(r.Header.Get("Content-Type"), body)
	in.mu.Lock()
	n := in.n
	in.n++
	st := step{kind: stepAccept}
	if in.plan != nil {
		st = in.plan(n)
	}
	req := request{at: time.Now(), records: len(lines), header: r.Header.Clone(), body: body}
	switch {
	case in.token != "" && r.Header.Get("Authorization") != in.token:
		st = step{kind: stepStatus, status: nethttp.StatusUnauthorized, body: `{"error":"bad token"}`}
	case perr != nil && st.kind == stepAccept:
		st = step{kind: stepStatus, status: nethttp.StatusBadRequest, body: perr.Error()}
	}
	if st.kind == stepAccept {
		st = step{kind: stepStatus, status: nethttp.StatusOK, body: `{"ok":true}`}
		for _, l := range lines {
			if l.rejected() {
				st = step{kind: stepStatus, status: nethttp.StatusBadRequest,
					body: fmt.Sprintf(`{"error":"record %d@%d refused: rejected by the test"}`, l.Partition, l.Offset)}
				break
			}
		}
		if st.status == nethttp.StatusOK {
			in.stored = append(in.stored, lines...)
		}
	}
	if st.kind == stepStoreThenHang {
		in.stored = append(in.stored, lines...)
	}
	if st.kind == stepStatus {
		req.status = st.status
		if ra := st.header["Retry-After"]; ra != "" {
			req.wait = waitOf(ra, req.at)
		}
	}
	in.requests = append(in.requests, req)
	held := in.held
	in.mu.Unlock()

	switch st.kind {
	case stepStatus:
		for k, v := range st.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(st.status)
		_, _ = io.WriteString(w, st.body)
	case stepDrop:
		if c, _, err := nethttp.NewResponseController(w).Hijack(); err == nil {
			_ = c.Close()
		}
	case stepHang, stepStoreThenHang:
		select {
		case <-held:
		default:
			close(held)
		}
		select {
		case <-r.Context().Done():
		case <-st.release:
		}
	}
}

// waitOf is the wait a Retry-After value asks for at now.
func waitOf(v string, now time.Time) time.Duration {
	var secs int
	if _, err := fmt.Sscanf(v, "%d", &secs); err == nil && !strings.ContainsAny(v, " ,:") {
		return time.Duration(secs) * time.Second
	}
	if at, err := nethttp.ParseTime(v); err == nil {
		return at.Sub(now)
	}
	return 0
}

func parseBody(contentType string, body []byte) ([]line, error) {
	var lines []line
	switch contentType {
	case "application/json":
		if err := json.Unmarshal(body, &lines); err != nil {
			return nil, fmt.Errorf("not a JSON array of records: %v", err)
		}
	case "application/x-ndjson":
		if len(body) == 0 || body[len(body)-1] != '\n' {
			return nil, fmt.Errorf("NDJSON body does not end with a newline")
		}
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				return nil, fmt.Errorf("line %d is not a JSON record: %v", len(lines)+1, err)
			}
			lines = append(lines, l)
		}
	default:
		return nil, fmt.Errorf("unexpected Content-Type %q", contentType)
	}
	return lines, nil
}

// received returns the records the endpoint stored, in the order it stored
// them.
func (in *ingest) received() []line {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.stored)
}

// log returns every request the endpoint received.
func (in *ingest) log() []request {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.requests)
}

// heldSignal returns a channel closed once a request is held.
func (in *ingest) heldSignal() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.held
}

// memNet is an in-memory network with one listener: the sink dials it, an
// http.Server accepts from it. Its connections are net.Pipe pairs, whose
// blocking reads and writes are durably blocking in a synctest bubble, where
// a loopback socket's are not.
type memNet struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newMemNet() *memNet { return &memNet{conns: make(chan net.Conn), done: make(chan struct{})} }

func (m *memNet) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *memNet) Close() error { m.once.Do(func() { close(m.done) }); return nil }

func (m *memNet) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80} }

func (m *memNet) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case m.conns <- server:
		return client, nil
	case <-m.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serveMem serves h on a new memNet and returns it with a stop that closes the
// server and every connection and waits for Serve to return.
func serveMem(h nethttp.Handler) (*memNet, func()) {
	m := newMemNet()
	srv := &nethttp.Server{Handler: h}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(m)
	}()
	return m, func() {
		_ = srv.Close()
		_ = m.Close()
		<-served
	}
}
