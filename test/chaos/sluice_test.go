//go:build chaos

package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// dsnVar is the variable the written configurations read the DSN from, so it
// never sits in a file.
const dsnVar = "CHAOS_PG_DSN"

// sluiceConfig is the part of sluice's configuration the scenarios set; yaml
// writes it with every other key at sluice's default.
type sluiceConfig struct {
	Brokers                []string
	Group, Topic, DLQTopic string
	DSN                    string // passed in the environment as $CHAOS_PG_DSN
	Table, Mode, Delivery  string
	OffsetsTable           string // exactly-once only; written when set
	KeyColumns             []string
	Columns                map[string]string

	SessionTimeout, RebalanceTimeout, FetchMaxWait time.Duration
	MaxPollRecords, MaxConcurrentFetches           int
	FetchMaxBytes, PartitionFetchMaxBytes          int64

	MaxBufferedRecords int
	MaxBufferedBytes   int64
	Workers            int
	RecordTimeout      time.Duration
	RateLimit          float64
	Burst              int

	Concurrency, BatchRecords  int
	BatchBytes                 int64
	Linger, WriteTimeout       time.Duration
	InitialBackoff, MaxBackoff time.Duration
	BreakerThreshold           int
	BreakerOpenFor             time.Duration
	BreakerHalfOpenSuccesses   int

	CommitInterval, ShutdownTimeout time.Duration
	LogLevel                        string
}

// ordersColumns maps the orders the scenarios produce ({id, amount, seq, ...})
// and the record's coordinates.
func ordersColumns() map[string]string {
	return map[string]string{
		"id": "value.id", "amount": "value.amount", "seq": "value.seq",
		"kafka_partition": "$partition", "kafka_offset": "$offset",
	}
}

// baseConfig is the configuration every scenario starts from: orders from
// topic into table, sluice's defaults where they suit a test, shorter
// timeouts where the defaults would make it wait.
func baseConfig(brokers []string, group, topic, dsn, table, mode string) sluiceConfig {
	c := sluiceConfig{
		Brokers: brokers, Group: group, Topic: topic, DLQTopic: group + ".dlq",
		DSN: dsn, Table: "public." + table, Mode: mode, Delivery: config.DeliveryAtLeastOnce,
		Columns:        ordersColumns(),
		SessionTimeout: 10 * time.Second, RebalanceTimeout: 20 * time.Second, FetchMaxWait: 200 * time.Millisecond,
		MaxPollRecords: 500, MaxConcurrentFetches: 2,
		FetchMaxBytes: 8 << 20, PartitionFetchMaxBytes: 1 << 20,
		MaxBufferedRecords: 10000, MaxBufferedBytes: 16 << 20, Workers: 4, RecordTimeout: 10 * time.Second,
		Concurrency: 4, BatchRecords: 2000, BatchBytes: 1 << 20, Linger: 50 * time.Millisecond, WriteTimeout: 10 * time.Second,
		InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		BreakerThreshold: 5, BreakerOpenFor: 2 * time.Second, BreakerHalfOpenSuccesses: 2,
		CommitInterval: 200 * time.Millisecond, ShutdownTimeout: 15 * time.Second,
		LogLevel: "info",
	}
	if mode == config.ModeUpsert {
		c.KeyColumns = []string{"id"}
	}
	return c
}

// yaml renders the configuration with the observability server on listen.
func (c sluiceConfig) yaml(listen string) string {
	q := strconv.Quote
	list := func(xs []string) string {
		qs := make([]string, len(xs))
		for i, x := range xs {
			qs[i] = q(x)
		}
		return "[" + strings.Join(qs, ", ") + "]"
	}
	names := make([]string, 0, len(c.Columns))
	for k := range c.Columns {
		names = append(names, k)
	}
	sort.Strings(names)
	var cols []string
	for _, k := range names {
		cols = append(cols, q(k)+": "+q(c.Columns[k]))
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# written by test/chaos; every key not here is at sluice's default\n")
	p("kafka:\n  brokers: %s\n  group: %s\n  topics: [%s]\n  start_offset: earliest\n", list(c.Brokers), q(c.Group), q(c.Topic))
	p("  max_poll_records: %d\n  fetch_max_bytes: %d\n  partition_fetch_max_bytes: %d\n  fetch_max_wait: %s\n  max_concurrent_fetches: %d\n",
		c.MaxPollRecords, c.FetchMaxBytes, c.PartitionFetchMaxBytes, c.FetchMaxWait, c.MaxConcurrentFetches)
	p("  session_timeout: %s\n  rebalance_timeout: %s\n", c.SessionTimeout, c.RebalanceTimeout)
	p("flow:\n  max_buffered_records: %d\n  max_buffered_bytes: %d\n  workers: %d\n  record_timeout: %s\n",
		c.MaxBufferedRecords, c.MaxBufferedBytes, c.Workers, c.RecordTimeout)
	p("  rate_limit: {records_per_second: %g, burst: %d}\n", c.RateLimit, c.Burst)
	p("sink:\n  type: postgres\n  concurrency: %d\n  batch: {max_records: %d, max_bytes: %d, linger: %s}\n  write_timeout: %s\n",
		c.Concurrency, c.BatchRecords, c.BatchBytes, c.Linger, c.WriteTimeout)
	p("  retry: {initial_backoff: %s, max_backoff: %s}\n", c.InitialBackoff, c.MaxBackoff)
	p("  breaker: {failure_threshold: %d, open_for: %s, half_open_successes: %d}\n",
		c.BreakerThreshold, c.BreakerOpenFor, c.BreakerHalfOpenSuccesses)
	p("  postgres:\n    dsn: \"${%s}\"\n    table: %s\n    mode: %s\n    delivery: %s\n", dsnVar, q(c.Table), c.Mode, c.Delivery)
	if len(c.KeyColumns) > 0 {
		p("    key_columns: %s\n", list(c.KeyColumns))
	}
	if c.OffsetsTable != "" {
		p("    offsets_table: %s\n", q(c.OffsetsTable))
	}
	p("    columns: {%s}\n", strings.Join(cols, ", "))
	p("dlq: {topic: %s}\n", q(c.DLQTopic))
	p("commit: {interval: %s}\n", c.CommitInterval)
	p("shutdown_timeout: %s\n", c.ShutdownTimeout)
	p("observability: {listen: %s, log_level: %s, log_format: json}\n", q(listen), c.LogLevel)
	return b.String()
}

// memoryBound is the README's formula for the configuration, in bytes:
// config.RuntimeBaseline + max_concurrent_fetches × fetch_max_bytes + 2 × max_buffered_bytes
// + max_poll_records × the largest record. It loads the written YAML as the
// binary does, so it uses sluice's own defaults for the keys left out.
func memoryBound(t *testing.T, c sluiceConfig, largestRecord int) (int64, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bound.yaml")
	if err := os.WriteFile(path, []byte(c.yaml("127.0.0.1:1")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadWith(path, func(k string) (string, bool) {
		if k == dsnVar {
			return c.DSN, true
		}
		return "", false
	})
	if err != nil {
		t.Fatalf("the scenario's configuration does not load: %v", err)
	}
	expr := fmt.Sprintf("%d MiB + %d × %s + 2 × %s + %d × %d B", config.RuntimeBaseline>>20, cfg.Kafka.MaxConcurrentFetches, mib(int64(cfg.Kafka.FetchMaxBytes)),
		mib(int64(cfg.Flow.MaxBufferedBytes)), cfg.Kafka.MaxPollRecords, largestRecord)
	return int64(config.MemoryBound(cfg, config.ByteSize(largestRecord))), expr
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// proc is one sluice process of a scenario.
type proc struct {
	t       *testing.T
	name    string
	cfgPath string
	logPath string
	addr    string // observability.listen
	cmd     *exec.Cmd
	pid     int
	started time.Time

	exited  chan struct{} // closed once the process has exited and been reaped
	state   *os.ProcessState
	http    *http.Client
	mon     *monitor
	stopMon context.CancelFunc
	monDone sync.WaitGroup
}

// startSluice starts `sluice run` with cfg as its own process, waits until
// it serves /healthz, and kills it when the test ends. name tells its log and
// figures apart.
func startSluice(t *testing.T, cfg sluiceConfig, name string) *proc {
	t.Helper()
	var last string
	for attempt := range 3 {
		p, err := tryStart(t, cfg, fmt.Sprintf("%s-%d", name, attempt))
		if err == nil {
			return p
		}
		last = err.Error()
		// Another process took the free port between our look and sluice's
		// bind: try another.
		if !strings.Contains(last, "address already in use") {
			break
		}
	}
	t.Fatalf("sluice %s did not start: %s", name, last)
	return nil
}

func tryStart(t *testing.T, cfg sluiceConfig, name string) (*proc, error) {
	dir := t.TempDir()
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p := &proc{t: t, name: name, addr: addr,
		cfgPath: filepath.Join(dir, name+".yaml"), logPath: filepath.Join(dir, name+".log"),
		http: &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	if err := os.WriteFile(p.cfgPath, []byte(cfg.yaml(addr)), 0o600); err != nil {
		return nil, err
	}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own descriptor
	p.cmd = exec.Command(suite.bin, "run", "-c", p.cfgPath)
	p.cmd.Env = childEnv(cfg.DSN)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", suite.bin, err)
	}
	p.pid, p.started, p.exited = p.cmd.Process.Pid, time.Now(), make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.exited)
	}()
	ctx, cancel := context.WithCancel(context.Background())
	p.stopMon = cancel
	p.mon = newMonitor(p)
	p.monDone.Go(func() { p.mon.run(ctx) })
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("sluice %s (pid %d) log, last lines:\n%s", p.name, p.pid, tailFile(p.logPath, 40))
		}
	})

	// Up when /healthz answers; an exit before that is a failed start.
	deadline := time.Now().Add(time.Minute)
	for {
		if p.get("/healthz") == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("sluice exited at start (%v): %s", p.state, tailFile(p.logPath, 20))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sluice does not serve /healthz on %s after a minute: %s", p.addr, tailFile(p.logPath, 20))
		}
	}
}

// childEnv is the test's environment without SLUICE_* variables (they would
// override keys of the written configuration), plus the DSN.
func childEnv(dsn string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) && !strings.HasPrefix(kv, dsnVar+"=") {
			env = append(env, kv)
		}
	}
	return append(env, dsnVar+"="+dsn)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// alive reports whether the process has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits until the process is reaped and its
// samplers stopped. It is a no-op on an exited process.
func (p *proc) kill() {
	if p.alive() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			p.t.Errorf("sluice %s (pid %d) still not reaped 30s after SIGKILL", p.name, p.pid)
		}
	}
	p.stopMon()
	p.monDone.Wait()
}

// terminate sends SIGTERM and waits, at most limit, for the exit. It returns
// the exit code (-1 when killed by a signal) and how long the shutdown took;
// a process still running after limit is killed and the test fails.
func (p *proc) terminate(limit time.Duration) (int, time.Duration) {
	p.t.Helper()
	at := time.Now()
	if !p.alive() {
		p.t.Errorf("sluice %s (pid %d) had already exited (%v) before SIGTERM", p.name, p.pid, p.state)
		p.kill()
		return p.state.ExitCode(), 0
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(limit):
		p.t.Errorf("sluice %s (pid %d) did not exit within %v of SIGTERM: killed", p.name, p.pid, limit)
	}
	took := time.Since(at)
	p.kill()
	return p.state.ExitCode(), took
}

// get fetches path from the observability server and discards the body.
func (p *proc) get(path string) error {
	_, err := p.fetch(path)
	return err
}

func (p *proc) fetch(path string) ([]byte, error) {
	resp, err := p.http.Get("http://" + p.addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	// /status and /readyz answer 503 while not ready, with their document.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// statusDoc is the part of /status the scenarios read.
type statusDoc struct {
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready"`
	Buffer   struct {
		Records     int     `json:"records"`
		MaxRecords  int     `json:"max_records"`
		Bytes       int64   `json:"bytes"`
		MaxBytes    int64   `json:"max_bytes"`
		PeakBytes   int64   `json:"peak_bytes"`
		Utilization float64 `json:"utilization"`
		Pauses      int64   `json:"pauses"`
	} `json:"buffer"`
	Consumed     int64 `json:"records_consumed"`
	Written      int64 `json:"records_written"`
	DeadLettered int64 `json:"records_dead_lettered"`
	Breaker      struct {
		State     string `json:"state"`
		Opens     int64  `json:"opens"`
		LastError string `json:"last_error"`
	} `json:"breaker"`
	Partitions []struct {
		Partition int32  `json:"partition"`
		Paused    bool   `json:"paused"`
		PausedBy  string `json:"paused_by"`
		Lag       int64  `json:"lag"`
	} `json:"partitions"`
}

func (p *proc) status() (statusDoc, error) {
	var st statusDoc
	body, err := p.fetch("/status")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(body, &st)
}

// metricsDoc is the part of /metrics the scenarios read; counters and gauges
// with labels are summed over their labels unless named by one.
type metricsDoc struct {
	Utilization     float64 // sluice_buffer_utilization_ratio
	BufferBytes     float64 // sluice_buffer_bytes
	BufferRecords   float64 // sluice_buffer_records
	Paused          float64 // sluice_partitions_paused
	PausesGate      float64 // sluice_partition_pauses_total{reason="gate"}
	PausesBreaker   float64 // sluice_partition_pauses_total{reason="breaker"}
	BreakerState    float64 // sluice_circuit_breaker_state
	BreakerOpens    float64 // sluice_circuit_breaker_transitions_total{to="open"}
	Consumed        float64 // sluice_records_consumed_total
	Written         float64 // sluice_records_written_total
	DeadLettered    float64 // sluice_records_dlq_total
	TransientErrors float64 // sluice_sink_write_errors_total{class="transient"}
	RejectedErrors  float64 // sluice_sink_write_errors_total{class="rejected"}
	Rebalances      float64 // sluice_rebalances_total
	CommitErrors    float64 // sluice_commit_errors_total
	Goroutines      float64 // go_goroutines
	ResidentBytes   float64 // process_resident_memory_bytes
	HeapInuse       float64 // go_memstats_heap_inuse_bytes
	GoSys           float64 // go_memstats_sys_bytes: all the Go runtime obtained from the OS
}

func (p *proc) metrics() (metricsDoc, error) {
	body, err := p.fetch("/metrics")
	if err != nil {
		return metricsDoc{}, err
	}
	return parseMetrics(body), nil
}

func parseMetrics(body []byte) metricsDoc {
	var m metricsDoc
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, rest := line, "", ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, labels, rest = line[:i], line[i+1:j], line[j+1:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		switch name {
		case "sluice_buffer_utilization_ratio":
			m.Utilization = v
		case "sluice_buffer_bytes":
			m.BufferBytes = v
		case "sluice_buffer_records":
			m.BufferRecords = v
		case "sluice_partitions_paused":
			m.Paused = v
		case "sluice_partition_pauses_total":
			switch {
			case strings.Contains(labels, `reason="gate"`):
				m.PausesGate += v
			case strings.Contains(labels, `reason="breaker"`):
				m.PausesBreaker += v
			}
		case "sluice_circuit_breaker_state":
			m.BreakerState += v
		case "sluice_circuit_breaker_transitions_total":
			if strings.Contains(labels, `to="open"`) {
				m.BreakerOpens += v
			}
		case "sluice_records_consumed_total":
			m.Consumed = v
		case "sluice_records_written_total":
			m.Written = v
		case "sluice_records_dlq_total":
			m.DeadLettered += v
		case "sluice_sink_write_errors_total":
			switch {
			case strings.Contains(labels, `class="transient"`):
				m.TransientErrors += v
			case strings.Contains(labels, `class="rejected"`):
				m.RejectedErrors += v
			}
		case "sluice_rebalances_total":
			m.Rebalances = v
		case "sluice_commit_errors_total":
			m.CommitErrors = v
		case "go_goroutines":
			m.Goroutines = v
		case "process_resident_memory_bytes":
			m.ResidentBytes = v
		case "go_memstats_heap_inuse_bytes":
			m.HeapInuse = v
		case "go_memstats_sys_bytes":
			m.GoSys = v
		}
	}
	return m
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
