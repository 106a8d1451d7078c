package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/sluicehq/sluice/internal/config"
)

// buildSluice builds ./cmd/sluice of the module the bench belongs to into dir,
// and describes the tree it was built from.
func buildSluice(ctx context.Context, dir string) (bin, tree string, err error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", "", errors.New("not inside the sluice module: run the bench from the repository, or pass -sluice")
	}
	root := filepath.Dir(gomod)
	bin = filepath.Join(dir, "sluice")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sluice")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build ./cmd/sluice: %w\n%s", err, out)
	}
	return bin, gitTree(ctx, root), nil
}

// gitTree describes the checkout at root: its commit, and whether it has
// uncommitted changes. It is "" outside a git checkout.
func gitTree(ctx context.Context, root string) string {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	rev, err := git("rev-parse", "--short=12", "HEAD")
	if err != nil {
		return ""
	}
	if st, err := git("status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
		return rev + " plus uncommitted changes"
	}
	return rev
}

// binaryInfo describes a sluice binary from its build information, or from
// tree (gitTree) when the build carries no VCS stamp (GOFLAGS=-buildvcs=false).
func binaryInfo(bin, tree string) string {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "unknown build"
	}
	rev, modified := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	switch {
	case rev == "" && tree != "":
		return fmt.Sprintf("built with %s from %s", bi.GoVersion, tree)
	case rev == "":
		return "built with " + bi.GoVersion + ", no VCS stamp"
	case modified == "true":
		return fmt.Sprintf("built with %s from %.12s plus uncommitted changes", bi.GoVersion, rev)
	default:
		return fmt.Sprintf("built with %s from %.12s", bi.GoVersion, rev)
	}
}

// dsnVar is the variable the child's configuration reads the DSN from.
const dsnVar = "BENCH_PG_DSN"

// sluiceConfig is the YAML the bench runs sluice with: insert mode into the
// bench table, lanes lanes, 5000-row batches, every other key at its default.
func sluiceConfig(brokers []string, group, topic, table string, lanes, batch int, listen string) string {
	return fmt.Sprintf(`# written by test/bench: sluice's defaults except for the keys below
kafka:
  brokers: [%s]
  group: %s
  topics: [%s]
  start_offset: earliest
sink:
  type: postgres
  concurrency: %d
  batch: {max_records: %d}
  postgres:
    dsn: "${%s}"
    table: public.%s
    mode: insert
    columns: %s
observability: {listen: %q, log_level: warn}
`, strings.Join(brokers, ", "), group, topic, lanes, batch, dsnVar, table, sluiceColumns, listen)
}

// childEnv is the bench's environment without SLUICE_* variables (which would
// override keys of the configuration), plus the DSN and the -set overrides.
func childEnv(dsn string, overrides map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix) && !strings.HasPrefix(kv, dsnVar+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, dsnVar+"="+dsn)
	for k, v := range overrides {
		env = append(env, k+"="+v)
	}
	return env
}

// loadConfig loads the configuration as the child will, for the memory formula.
func loadConfig(path, dsn string, overrides map[string]string) (*config.Config, error) {
	env := map[string]string{dsnVar: dsn}
	for k, v := range overrides {
		env[k] = v
	}
	return config.LoadWith(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

// memoryBound evaluates the README's formula for cfg, in bytes.
func memoryBound(cfg *config.Config, largestRecord int) (int64, string) {
	expr := fmt.Sprintf("%d + %d × %s + 2 × %s + %d × %d B", config.RuntimeBaseline>>20, cfg.Kafka.MaxConcurrentFetches, mib(int64(cfg.Kafka.FetchMaxBytes)),
		mib(int64(cfg.Flow.MaxBufferedBytes)), cfg.Kafka.MaxPollRecords, largestRecord)
	return int64(config.MemoryBound(cfg, config.ByteSize(largestRecord))), expr
}

// freeAddr returns a 127.0.0.1 address with a port nobody listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// sluiceResult is what one run of the sluice binary measured.
type sluiceResult struct {
	elapsed     time.Duration // start of the process until the committed lag is 0
	firstWrite  time.Duration // start until /status first showed a written row
	allWritten  time.Duration // start until /status showed every row written
	peakRSS     int64         // highest VmRSS sampled
	hwm         int64         // VmHWM when the lag reached 0
	exitHWM     int64         // the last VmHWM read before the process exited (covers the shutdown)
	cpu         time.Duration // utime + stime when the lag reached 0
	cpuTotal    time.Duration // utime + stime at exit (rusage)
	shutdown    time.Duration // SIGTERM until exit
	exitCode    int
	status      statusDoc
	metrics     sinkMetrics
	phase       phaseCPU
	logWarnings int
	logTail     string
	statusErr   error // the last /status poll's error, if it failed
}

// sampled is what the sampling goroutines of runSluice collect, under mu.
type sampled struct {
	mu         sync.Mutex
	peakRSS    int64
	hwm        int64
	cpu        time.Duration
	status     statusDoc
	statusErr  error
	firstWrite time.Duration
	allWritten time.Duration
}

// statusDoc is the part of sluice's /status the bench reads.
type statusDoc struct {
	Consumed     int64 `json:"records_consumed"`
	Written      int64 `json:"records_written"`
	DeadLettered int64 `json:"records_dead_lettered"`
	Buffer       struct {
		MaxRecords int   `json:"max_records"`
		PeakBytes  int64 `json:"peak_bytes"`
		Pauses     int64 `json:"pauses"`
	} `json:"buffer"`
}

// sinkMetrics are sums and counts of sluice's sink histograms.
type sinkMetrics struct {
	writeSeconds, writes float64
	batchRows, batches   float64
	writeErrors          float64
	ok                   bool
}

// runSluice runs the binary with cfgPath until the group's committed lag on
// topic is 0, then stops it with SIGTERM and waits for it.
func runSluice(ctx context.Context, bin, cfgPath, dir string, env []string, statusAddr string,
	adm *kadm.Client, group, topic string, ends map[int32]int64, n int, timeout time.Duration, watch *watcher,
) (res sluiceResult, err error) {
	logPath := filepath.Join(dir, "sluice.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logFile.Close()

	cmd := exec.Command(bin, "run", "-c", cfgPath)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	before := watch.sample()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start sluice: %w", err)
	}
	pid := cmd.Process.Pid
	logf("sluice: pid %d", pid)
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()

	// Sample memory and CPU every 100 ms, and /status for the write phase.
	// Memory is sampled until the process exits, to cover its shutdown too.
	// (ru_maxrss from wait4 is no use here: the kernel folds in the RSS of
	// the forking parent, the bench, as it was when the child called exec.)
	var (
		live     sampled
		polling  = make(chan struct{})
		samplers sync.WaitGroup
	)
	stopPolling := sync.OnceFunc(func() { close(polling) })
	defer func() {
		stopPolling()
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		samplers.Wait()
		res.peakRSS = max(res.peakRSS, live.peakRSS)
		res.exitHWM = live.hwm
		res.status, res.statusErr = live.status, live.statusErr
		res.firstWrite, res.allWritten = live.firstWrite, live.allWritten
		if res.cpu == 0 {
			res.cpu = live.cpu
		}
		res.logWarnings, res.logTail = readLog(logPath)
	}()
	every := func(stop <-chan struct{}, f func()) {
		samplers.Go(func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				f()
				select {
				case <-stop:
					return
				case <-exited:
					return
				case <-t.C:
				}
			}
		})
	}
	every(exited, func() {
		rss, hwm, err := memStatus(pid)
		if err != nil {
			return
		}
		st, serr := readStat(pid)
		live.mu.Lock()
		defer live.mu.Unlock()
		live.peakRSS = max(live.peakRSS, rss)
		live.hwm = max(live.hwm, hwm)
		if serr == nil {
			live.cpu = st.cpu
		}
	})
	client := &http.Client{Timeout: time.Second}
	every(polling, func() {
		st, err := getStatus(ctx, client, statusAddr)
		now := time.Since(start)
		live.mu.Lock()
		defer live.mu.Unlock()
		live.statusErr = err
		if err != nil {
			return
		}
		live.status = st
		if live.firstWrite == 0 && st.Written > 0 {
			live.firstWrite = now
		}
		if live.allWritten == 0 && st.Written >= int64(n) {
			live.allWritten = now
		}
	})

	// Wait for the committed lag to reach 0.
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for {
		done, remaining, lagErr := committedAll(ctx, adm, group, topic, ends)
		if done {
			res.elapsed = time.Since(start)
			break
		}
		if time.Since(lastReport) >= 10*time.Second {
			lastReport = time.Now()
			fmt.Fprintf(os.Stderr, "bench: sluice running for %s, committed lag %d (lag error: %v)\n",
				time.Since(start).Round(time.Second), remaining, lagErr)
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("sluice: committed lag still %d after %s (last lag error: %v)", remaining, timeout, lagErr)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-exited:
			return res, fmt.Errorf("sluice exited before the lag reached 0: %v", waitErr)
		case <-tick.C:
		}
	}

	// The lag is 0: read what the process holds before it starts to stop.
	res.phase = watch.since(before)
	if st, err := readStat(pid); err == nil {
		res.cpu = st.cpu
	}
	if rss, hwm, err := memStatus(pid); err == nil {
		res.peakRSS, res.hwm = rss, hwm
	}
	res.metrics = getSinkMetrics(ctx, client, statusAddr)
	if st, err := getStatus(ctx, client, statusAddr); err == nil {
		live.mu.Lock()
		live.status = st
		live.mu.Unlock()
	}
	stopPolling()

	stopAt := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return res, fmt.Errorf("SIGTERM sluice: %w", err)
	}
	select {
	case <-exited:
	case <-time.After(90 * time.Second):
		return res, errors.New("sluice did not exit within 90s of SIGTERM")
	}
	res.shutdown = time.Since(stopAt)
	res.exitCode = cmd.ProcessState.ExitCode()
	res.cpuTotal = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if res.exitCode != 0 {
		return res, fmt.Errorf("sluice exited with %d after SIGTERM", res.exitCode)
	}
	return res, nil
}

func getStatus(ctx context.Context, client *http.Client, addr string) (statusDoc, error) {
	var st statusDoc
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	// /status answers 503 while not ready, with the same document.
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// getSinkMetrics reads the sums and counts of the sink histograms from /metrics.
func getSinkMetrics(ctx context.Context, client *http.Client, addr string) sinkMetrics {
	var m sinkMetrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return m
	}
	resp, err := client.Do(req)
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return m
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			if j := strings.LastIndexByte(line, '}'); j >= 0 {
				rest = strings.TrimSpace(line[j+1:])
			}
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			continue
		}
		switch name {
		case "sluice_sink_write_duration_seconds_sum":
			m.writeSeconds += v
		case "sluice_sink_write_duration_seconds_count":
			m.writes += v
		case "sluice_sink_batch_records_sum":
			m.batchRows += v
		case "sluice_sink_batch_records_count":
			m.batches += v
		case "sluice_sink_write_errors_total":
			m.writeErrors += v
		}
	}
	m.ok = m.writes > 0
	return m
}

// readLog counts the lines sluice logged (at warn or above, as configured)
// and returns the last few.
func readLog(path string) (int, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return 0, ""
	}
	tail := lines[max(0, len(lines)-30):]
	return len(lines), strings.Join(tail, "\n")
}
