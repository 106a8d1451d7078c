package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/daemon"
)

// sampleStatus is /status as a sluice with a breaker serves it, with a field
// this version of the command does not know.
const sampleStatus = `{
  "group": "orders-sink",
  "sink": "postgres",
  "ready": false,
  "not_ready": "circuit breaker open",
  "uptime_seconds": 3725.6,
  "buffer": {"records": 4200, "max_records": 10000, "bytes": 12582912, "max_bytes": 67108864,
             "peak_bytes": 20000000, "utilization": 0.42, "full": false, "pauses": 3},
  "records_consumed": 1234567,
  "records_written": 1230000,
  "records_dead_lettered": 12,
  "breaker": {"state": "open", "opens": 2, "since": "2026-01-02T03:04:35Z", "open_since": "2026-01-02T03:04:05Z",
              "last_error": "sink unavailable: dial tcp 10.0.0.1:5432: connection refused", "probes": 1},
  "some_future_field": {"nested": [1, 2, 3]},
  "partitions": [
    {"topic": "orders", "partition": 0, "committed_offset": 12000, "high_watermark": 12500, "lag": 500,
     "lag_seconds": 1.25, "in_flight": 300, "paused": true, "paused_by": "gate,breaker", "future": 1},
    {"topic": "orders", "partition": 1, "committed_offset": -1, "high_watermark": -1, "lag": -1,
     "lag_seconds": 0, "in_flight": 0, "paused": false}
  ]
}`

func serve(t *testing.T, code int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// row returns the table row of the given partition, fields split on spaces.
func row(t *testing.T, out, topic, partition string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) > 2 && f[0] == topic && f[1] == partition {
			return f
		}
	}
	t.Fatalf("no row for %s/%s in:\n%s", topic, partition, out)
	return nil
}

func TestStatusPrintsATable(t *testing.T) {
	addr := serve(t, http.StatusOK, sampleStatus)
	code, out, errOut := sluice(t, "status", "--addr", addr)
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	t.Logf("output:\n%s", out)
	lines := strings.Split(out, "\n")
	for _, want := range []string{"group orders-sink", "sink postgres", "NOT READY: circuit breaker open", "up 1h2m5s"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("first line %q lacks %q", lines[0], want)
		}
	}
	for _, want := range []string{"buffer 42% (4,200/10,000 records, 12.0/64.0 MiB)", "written 1,230,000", "dead-lettered 12",
		"breaker open since 2026-01-02T03:04:05Z (opens 2, probes=1, last error: sink unavailable: dial tcp 10.0.0.1:5432: connection refused)"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("second line %q lacks %q", lines[1], want)
		}
	}
	header := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[3]), -1)
	wantHeader := []string{"TOPIC", "PARTITION", "COMMITTED", "HIGH WATERMARK", "LAG", "LAG SECONDS", "IN FLIGHT", "PAUSED"}
	if strings.Join(header, "|") != strings.Join(wantHeader, "|") {
		t.Errorf("header %q, want %q", header, wantHeader)
	}
	if got, want := strings.Join(row(t, out, "orders", "0"), " "), "orders 0 12000 12500 500 1.2 300 yes (gate,breaker)"; got != want {
		t.Errorf("partition 0: %q, want %q", got, want)
	}
	if got, want := strings.Join(row(t, out, "orders", "1"), " "), "orders 1 - - - 0.0 0 no"; got != want {
		t.Errorf("partition 1: %q, want %q", got, want)
	}
	if !strings.Contains(out, "2 partitions, 1 paused, total lag 500 records (some partitions' lag not known yet)\n") {
		t.Errorf("no totals line in:\n%s", out)
	}
}

// The command reads what daemon.Status serves: a renamed JSON field shows here.
func TestStatusReadsTheDaemonsStatus(t *testing.T) {
	st := daemon.Status{Group: "g", Sink: "file", Ready: true, UptimeSeconds: 59.9,
		Buffer:   daemon.BufferStatus{Records: 10, MaxRecords: 100, Bytes: 1 << 20, MaxBytes: 4 << 20, Utilization: 0.25},
		Breaker:  daemon.BreakerStatus{State: "closed", Opens: 1, Since: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		Consumed: 7, Written: 5, DeadLettered: 2,
		Partitions: []consumer.PartitionStats{{Topic: "t", Partition: 3, Committed: 40, HighWatermark: 100, Lag: 60,
			LagSeconds: 12.34, InFlight: 2}}}
	body, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := sluice(t, "status", "--addr", "http://"+serve(t, http.StatusOK, string(body)))
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	for _, want := range []string{"group g · sink file · READY · up 59s",
		"buffer 25% (10/100 records, 1.0/4.0 MiB) · consumed 7 · written 5 · dead-lettered 2 · breaker closed (opens 1)\n",
		"1 partitions, 0 paused, total lag 60 records"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got, want := strings.Join(row(t, out, "t", "3"), " "), "t 3 40 100 60 12.3 2 no"; got != want {
		t.Errorf("partition row %q, want %q", got, want)
	}
}

func TestStatusFailsClearly(t *testing.T) {
	// A port nobody listens on: bind one, then free it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	cases := []struct {
		name     string
		addr     string
		code     int
		contains []string
	}{
		{"unreachable", closed, 1, []string{"cannot reach sluice at http://" + closed + "/status", "observability.listen"}},
		{"server error", serve(t, http.StatusInternalServerError, "cannot encode status: boom\n"), 1, []string{"500", "cannot encode status: boom"}},
		{"not JSON", serve(t, http.StatusOK, "sluice: /metrics /healthz"), 1, []string{"did not answer with a JSON object"}},
		{"bad address", "not an address", 2, []string{`--addr "not an address"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := sluice(t, "status", "--addr", tc.addr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out, errOut)
			}
			for _, want := range tc.contains {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q: %q", want, errOut)
				}
			}
		})
	}
}

func TestStatusURL(t *testing.T) {
	cases := map[string]string{
		"127.0.0.1:9108":               "http://127.0.0.1:9108/status",
		":9108":                        "http://127.0.0.1:9108/status",
		"[::1]:9108":                   "http://[::1]:9108/status",
		"http://sluice.prod:9108":      "http://sluice.prod:9108/status",
		"https://h/sluice/":            "https://h/sluice/status",
		"http://h:1/status":            "http://h:1/status",
		"sluice-0.sluice.default:9108": "http://sluice-0.sluice.default:9108/status",
	}
	for in, want := range cases {
		if got, err := statusURL(in); err != nil || got != want {
			t.Errorf("statusURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"localhost", "ftp://h:1", "http://"} {
		if _, err := statusURL(bad); err == nil {
			t.Errorf("statusURL(%q) accepted", bad)
		}
	}
}
