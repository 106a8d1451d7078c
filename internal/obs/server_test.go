package obs_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/sluicehq/sluice/internal/obs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// running is a server started by start; stop cancels it and returns Run's result.
type running struct {
	base string
	stop func() error
}

// start listens on a free loopback port, runs srv until the test ends (or stop
// is called), and checks that Run then returns nil.
func start(t *testing.T, srv *obs.Server) running {
	t.Helper()
	if err := srv.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var result error
	var stopped bool
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(2 * obs.ShutdownTimeout):
			result = errors.New("Run did not return after its ctx was cancelled")
		}
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return running{base: "http://" + srv.Addr(), stop: stop}
}

func client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type response struct {
	code        int
	contentType string
	body        string
}

func get(t *testing.T, c *http.Client, method, url string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header.Get("Content-Type"), string(body)}
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	written := prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_records_written_total", Help: "Records written."})
	reg.MustRegister(written)
	written.Add(7)

	status := func() any {
		return map[string]any{"state": "running", "partitions": []int{0, 1}}
	}
	srv := obs.NewServer("127.0.0.1:0", reg, status, nil, zaptest.NewLogger(t))
	r := start(t, srv)
	c := client(t)

	tests := []struct {
		method, path string
		code         int
		contentType  string // prefix
		body         string // exact, or a substring when contains is set
		contains     bool
	}{
		{"GET", "/metrics", 200, "text/plain", "sluice_records_written_total 7", true},
		{"GET", "/healthz", 200, "text/plain", "ok\n", false},
		{"GET", "/readyz", 200, "text/plain", "ready\n", false},
		{"GET", "/status", 200, "application/json",
			"{\n  \"partitions\": [\n    0,\n    1\n  ],\n  \"state\": \"running\"\n}\n", false},
		{"HEAD", "/healthz", 200, "text/plain", "", false},
		{"POST", "/healthz", 405, "", "", true},
		{"GET", "/nope", 404, "", "", true},
		{"GET", "/", 200, "text/plain", "/metrics", true},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			got := get(t, c, tt.method, r.base+tt.path)
			if got.code != tt.code {
				t.Errorf("status = %d, want %d (body %q)", got.code, tt.code, got.body)
			}
			if !strings.HasPrefix(got.contentType, tt.contentType) {
				t.Errorf("Content-Type = %q, want %q", got.contentType, tt.contentType)
			}
			if tt.contains && !strings.Contains(got.body, tt.body) || !tt.contains && got.body != tt.body {
				t.Errorf("body = %q, want %q", got.body, tt.body)
			}
		})
	}
}

func TestReadinessFlips(t *testing.T) {
	var notReady atomic.Pointer[error]
	ready := func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}
	r := start(t, obs.NewServer("127.0.0.1:0", nil, nil, ready, zaptest.NewLogger(t)))
	c := client(t)

	breakerOpen := errors.New("circuit breaker open")
	steps := []struct {
		err  error
		code int
		body string
	}{
		{nil, 200, "ready\n"},
		{breakerOpen, 503, "circuit breaker open\n"},
		{nil, 200, "ready\n"},
	}
	for i, st := range steps {
		if st.err == nil {
			notReady.Store(nil)
		} else {
			notReady.Store(&st.err)
		}
		got := get(t, c, "GET", r.base+"/readyz")
		if got.code != st.code || got.body != st.body {
			t.Errorf("step %d: /readyz = %d %q, want %d %q", i, got.code, got.body, st.code, st.body)
		}
		// Liveness does not follow readiness.
		if h := get(t, c, "GET", r.base+"/healthz"); h.code != 200 {
			t.Errorf("step %d: /healthz = %d, want 200", i, h.code)
		}
	}
}

func TestStatusThatCannotBeEncoded(t *testing.T) {
	status := func() any { return map[string]any{"f": func() {}} }
	r := start(t, obs.NewServer("127.0.0.1:0", nil, status, nil, zaptest.NewLogger(t)))
	if got := get(t, client(t), "GET", r.base+"/status"); got.code != 500 {
		t.Errorf("/status = %d %q, want 500", got.code, got.body)
	}
}

func TestShutdownOnCancel(t *testing.T) {
	srv := obs.NewServer("127.0.0.1:0", nil, nil, nil, zaptest.NewLogger(t))
	r := start(t, srv)
	if got := get(t, client(t), "GET", r.base+"/healthz"); got.code != 200 {
		t.Fatalf("/healthz = %d", got.code)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if conn, err := net.Dial("tcp", srv.Addr()); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after Run returned", srv.Addr())
	}
}

func TestShutdownLetsInFlightRequestsFinish(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	status := func() any {
		close(entered)
		<-release
		return map[string]string{"state": "draining"}
	}
	r := start(t, obs.NewServer("127.0.0.1:0", nil, status, nil, zaptest.NewLogger(t)))
	c := client(t)

	type result struct {
		code int
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := c.Get(r.base + "/status")
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- result{resp.StatusCode, string(body), err}
	}()
	<-entered

	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	// Wait until shutdown has begun (the listener is closed) while the request
	// is still in its handler.
	addr := strings.TrimPrefix(r.base, "http://")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener stayed open after cancel")
		}
	}
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) with a request in flight", err)
	default:
	}
	close(release)

	if resp := <-got; resp.err != nil || resp.code != 200 || !strings.Contains(resp.body, "draining") {
		t.Errorf("in-flight /status = %d %q %v, want 200 with the status", resp.code, resp.body, resp.err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

func TestPortInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	addr := taken.Addr().String()

	for name, run := range map[string]func(*obs.Server) error{
		"Listen": func(s *obs.Server) error { return s.Listen() },
		"Run":    func(s *obs.Server) error { return s.Run(t.Context()) },
	} {
		t.Run(name, func(t *testing.T) {
			srv := obs.NewServer(addr, nil, nil, nil, zaptest.NewLogger(t))
			err := run(srv)
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error = %v, want EADDRINUSE", err)
			}
			if err == nil || !strings.Contains(err.Error(), addr) {
				t.Errorf("error %q does not name %s", err, addr)
			}
			if srv.Addr() != "" {
				t.Errorf("Addr = %q after a failed listen, want \"\"", srv.Addr())
			}
		})
	}
}

func TestLifeCycle(t *testing.T) {
	t.Run("Addr is empty before Listen", func(t *testing.T) {
		if a := obs.NewServer("127.0.0.1:0", nil, nil, nil, nil).Addr(); a != "" {
			t.Errorf("Addr = %q", a)
		}
	})
	t.Run("Run without Listen binds the address", func(t *testing.T) {
		srv := obs.NewServer("127.0.0.1:0", nil, nil, nil, nil)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		// Run's bind is observable only through Addr; poll it briefly.
		deadline := time.Now().Add(5 * time.Second)
		for srv.Addr() == "" && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if get(t, client(t), "GET", "http://"+srv.Addr()+"/healthz").code != 200 {
			t.Error("/healthz not served")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	t.Run("a server runs once", func(t *testing.T) {
		srv := obs.NewServer("127.0.0.1:0", nil, nil, nil, nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := srv.Run(ctx); err != nil {
			t.Fatalf("Run with a done ctx = %v, want nil", err)
		}
		if err := srv.Run(t.Context()); !errors.Is(err, obs.ErrServerStarted) {
			t.Errorf("second Run = %v, want ErrServerStarted", err)
		}
		if err := srv.Listen(); !errors.Is(err, obs.ErrServerStarted) {
			t.Errorf("Listen after Run = %v, want ErrServerStarted", err)
		}
	})
	t.Run("Close gives the port back", func(t *testing.T) {
		srv := obs.NewServer("127.0.0.1:0", nil, nil, nil, nil)
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		addr := srv.Addr()
		for range 2 {
			if err := srv.Close(); err != nil {
				t.Fatalf("Close = %v", err)
			}
		}
		if err := srv.Run(t.Context()); !errors.Is(err, obs.ErrServerClosed) {
			t.Errorf("Run after Close = %v, want ErrServerClosed", err)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("port not given back: %v", err)
		}
		ln.Close()
	})
}

// The profiler is served only when asked for (observability.pprof).
func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[on], func(t *testing.T) {
			srv := obs.NewServer("127.0.0.1:0", nil, nil, nil, zaptest.NewLogger(t))
			if on {
				srv.ServePprof()
			}
			r := start(t, srv)
			c := client(t)
			want := map[bool]int{false: 404, true: 200}[on]
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/cmdline"} {
				if got := get(t, c, "GET", r.base+path); got.code != want {
					t.Errorf("GET %s: status %d, want %d", path, got.code, want)
				}
			}
		})
	}
}
