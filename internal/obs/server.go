package obs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// ShutdownTimeout bounds the graceful shutdown of a Server: in-flight requests
// get this long to finish once Run's ctx is done, then their connections are
// closed.
const ShutdownTimeout = 5 * time.Second

// Errors of the Server's life cycle.
var (
	// ErrServerStarted is returned by Listen on a server that already listens,
	// and by Run on a server that runs or ran.
	ErrServerStarted = errors.New("obs: server already started")
	// ErrServerClosed is returned by Listen and Run after Close.
	ErrServerClosed = errors.New("obs: server closed")
)

// Server serves sluice's observability endpoints over HTTP:
//
//	GET /metrics  Prometheus exposition of the Gatherer
//	GET /healthz  200 "ok" while the process serves (liveness)
//	GET /readyz   200 "ready" when ready() returns nil, else 503 with its error (readiness)
//	GET /status   status() as indented JSON, for people and scripts
//	GET /debug/pprof/...  Go's profiler, only after ServePprof
//
// Create it with NewServer, then either call Run, or call Listen first (to
// learn the bound address, or to fail at start on a port in use) and then Run.
// A Server runs once.
type Server struct {
	addr    string
	handler http.Handler
	mux     *http.ServeMux // handler, for ServePprof
	log     *zap.Logger

	mu      sync.Mutex // guards the fields below
	ln      net.Listener
	started bool // Run was called
	closed  bool // Close was called
}

// NewServer returns a server that will listen on addr (host:port; ":0" picks a
// free port). status and ready are called on request goroutines, concurrently
// and while the pipeline runs: they must be safe for that and must not block,
// since Run waits for the requests that call them. Their results must not hold
// secrets. A nil gatherer serves no metrics, a nil status serves {}, a nil ready
// is always ready and a nil log discards. NewServer starts nothing.
func NewServer(addr string, gatherer prometheus.Gatherer, status func() any, ready func() error, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if gatherer == nil {
		gatherer = prometheus.NewRegistry()
	}
	if status == nil {
		status = func() any { return struct{}{} }
	}
	if ready == nil {
		ready = func() error { return nil }
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog: zap.NewStdLog(log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			text(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		text(w, http.StatusOK, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		body, err := json.MarshalIndent(status(), "", "  ")
		if err != nil {
			log.Error("cannot encode /status", zap.Error(err))
			text(w, http.StatusInternalServerError, "cannot encode status: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(body, '\n'))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "sluice: /metrics /healthz /readyz /status")
	})

	return &Server{addr: addr, handler: mux, mux: mux, log: log}
}

// ServePprof adds Go's profiler (net/http/pprof) under /debug/pprof/
// (observability.pprof). Call it before Run, from the goroutine that built
// the server.
func (s *Server) ServePprof() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}

// Listen binds the server's address. It returns the listen error at once (a
// port in use, a bad address), naming the address. After Listen, Addr returns
// the bound address; the caller then calls Run, or Close to give the port back.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listenLocked()
}

func (s *Server) listenLocked() error {
	switch {
	case s.closed:
		return ErrServerClosed
	case s.ln != nil:
		return ErrServerStarted
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("observability.listen %q: %w", s.addr, err)
	}
	s.ln = ln
	return nil
}

// Addr returns the address the server is bound to, once Listen (or Run) has
// bound it, else "". With a ":0" address it tells the port the system chose.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Run listens, unless Listen already did, and serves until ctx is done. It
// then stops accepting, gives in-flight requests ShutdownTimeout to finish,
// closes the connections that remain, and returns only after every goroutine
// of the server has stopped. It returns nil after a shutdown caused by ctx, and
// an error when it cannot listen or serving fails.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.started {
		s.mu.Unlock()
		return ErrServerStarted
	}
	if s.ln == nil {
		if err := s.listenLocked(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.started = true
	ln := s.ln
	s.mu.Unlock()

	// conns counts the connections' goroutines: net/http reports StateNew from
	// Serve's accept loop before it starts a connection's goroutine, and
	// StateClosed or StateHijacked from that goroutine as it ends.
	var conns sync.WaitGroup
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(s.log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				conns.Done()
			}
		},
	}

	s.log.Info("serving observability endpoints", zap.String("addr", ln.Addr().String()))
	served := make(chan error, 1) // size 1: Serve's goroutine never waits for its reader
	var wg sync.WaitGroup
	wg.Go(func() { served <- srv.Serve(ln) })

	var serveErr error
	select {
	case serveErr = <-served:
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("observability requests did not finish in time; closing their connections",
			zap.Duration("timeout", ShutdownTimeout), zap.Error(err))
		_ = srv.Close()
	}
	wg.Wait() // Serve has returned: no connection is added after this
	if serveErr == nil {
		serveErr = <-served
	}
	conns.Wait()

	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("observability: serve on %s: %w", ln.Addr(), serveErr)
	}
	return nil
}

// Close gives back the port of a server that listened but will not run. It
// has no effect on a server that runs or ran (Run's ctx stops that one), and
// it is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.started {
		s.closed = true
		return nil
	}
	s.closed = true
	if s.ln == nil {
		return nil
	}
	if err := s.ln.Close(); err != nil {
		return fmt.Errorf("observability: close listener: %w", err)
	}
	return nil
}
