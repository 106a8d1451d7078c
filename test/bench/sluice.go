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
	"math"
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

// runMode is one way the bench runs sluice.
type runMode string

const (
	modeInsert      runMode = "insert"
	modeUpsert      runMode = "upsert"
	modeExactlyOnce runMode = "exactly-once"
	modeLatency     runMode = "latency"
)

// sluiceConfig is the YAML the bench runs sluice with: sluice's defaults but
// for the connection, the table and its mapping, and the keys of the mode.
func (e *env) sluiceConfig(mode runMode, group, topic, table, listen string) string {
	def := config.Default()
	var b strings.Builder
	fmt.Fprintf(&b, `# written by test/bench: sluice's defaults except for the keys below
kafka:
  brokers: [%s]
  group: %s
  topics: [%s]
  start_offset: earliest
sink:
  type: postgres
`, strings.Join(e.brokers, ", "), group, topic)
	if e.o.lanes != def.Sink.Concurrency {
		fmt.Fprintf(&b, "  concurrency: %d\n", e.o.lanes)
	}
	if e.o.batch != def.Sink.Batch.MaxRecords {
		fmt.Fprintf(&b, "  batch: {max_records: %d}\n", e.o.batch)
	}
	fmt.Fprintf(&b, "  postgres:\n    dsn: \"${%s}\"\n    table: public.%s\n", dsnVar, table)
	switch mode {
	case modeUpsert:
		b.WriteString("    mode: upsert\n    key_columns: [id]\n")
	case modeExactlyOnce:
		fmt.Fprintf(&b, "    delivery: exactly-once\n    offsets_table: public.%s_offsets\n", table)
	default:
		b.WriteString("    mode: insert\n")
	}
	cols := sluiceColumns
	if mode == modeLatency {
		cols = latencyColumns
	}
	fmt.Fprintf(&b, "    columns: %s\nobservability: {listen: %q, log_level: warn", cols, listen)
	if e.o.profile != "" {
		b.WriteString(", pprof: true")
	}
	b.WriteString("}\n")
	return b.String()
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
	mode        runMode
	config      string
	cfg         *config.Config
	bound       int64 // the README's memory formula for cfg
	boundExpr   string
	elapsed     time.Duration // start of the process until the committed lag is 0
	firstWrite  time.Duration // start until /status first showed a written row
	firstRows   int64         // rows written at firstWrite
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
	series      []sample // /status over the run
	check       tableCheck
	logWarnings int
	logTail     string
	statusErr   error // the last /status poll's error, if it failed
	profiles    []string
}

// sustainedRate is rows per second while writing: from the first /status
// that showed rows written to the first that showed all of them, counting the
// rows written in between.
func (s sluiceResult) sustainedRate() float64 {
	if s.firstWrite <= 0 || s.allWritten <= s.firstWrite {
		return rate(int(s.status.Written), s.elapsed)
	}
	return float64(s.status.Written-s.firstRows) / (s.allWritten - s.firstWrite).Seconds()
}

// sample is one /status reading.
type sample struct {
	at       time.Duration // since the process started
	written  int64
	consumed int64
	records  int   // buffered records
	bytes    int64 // buffered bytes
}

// statusDoc is the part of sluice's /status the bench reads.
type statusDoc struct {
	Ready        bool  `json:"ready"`
	Consumed     int64 `json:"records_consumed"`
	Written      int64 `json:"records_written"`
	DeadLettered int64 `json:"records_dead_lettered"`
	Buffer       struct {
		Records    int   `json:"records"`
		MaxRecords int   `json:"max_records"`
		Bytes      int64 `json:"bytes"`
		MaxBytes   int64 `json:"max_bytes"`
		PeakBytes  int64 `json:"peak_bytes"`
		Pauses     int64 `json:"pauses"`
	} `json:"buffer"`
	Partitions []struct {
		Partition int32 `json:"partition"`
	} `json:"partitions"`
}

// sinkMetrics are sums and counts of sluice's sink histograms.
type sinkMetrics struct {
	writeSeconds, writes float64
	batchRows, batches   float64
	writeErrors          float64
	writeBuckets         []bucket // sink_write_duration_seconds, cumulative
	ok                   bool
}

type bucket struct{ le, count float64 }

// medianWrite estimates the median sink write from the histogram's buckets,
// interpolating linearly inside the bucket that holds it.
func (m sinkMetrics) medianWrite() time.Duration {
	half := m.writes / 2
	lo, below := 0.0, 0.0
	for _, b := range m.writeBuckets {
		if b.count >= half {
			if b.count == below {
				return time.Duration(b.le * float64(time.Second))
			}
			return time.Duration((lo + (b.le-lo)*(half-below)/(b.count-below)) * float64(time.Second))
		}
		lo, below = b.le, b.count
	}
	return 0
}

// sluiceProc is a running sluice binary with its samplers.
type sluiceProc struct {
	cmd        *exec.Cmd
	pid        int
	start      time.Time
	listen     string
	logPath    string
	exited     chan struct{}
	waitErr    error
	client     *http.Client
	before     cpuSample
	stopPoll   func()
	samplers   sync.WaitGroup
	profDone   chan struct{}
	profErr    error
	mu         sync.Mutex // guards the fields below
	live       sluiceResult
	lastStatus statusDoc
}

// startSluice writes cfg's configuration and starts the binary, sampling its
// memory and CPU every 100 ms and its /status every 25 ms until it exits.
func (e *env) startSluice(ctx context.Context, mode runMode, group, topic, table string) (*sluiceProc, *sluiceResult, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	res := &sluiceResult{mode: mode, config: e.sluiceConfig(mode, group, topic, table, listen)}
	cfgPath := filepath.Join(e.dir, "sluice-"+string(mode)+".yaml")
	if err := os.WriteFile(cfgPath, []byte(res.config), 0o600); err != nil {
		return nil, nil, err
	}
	if res.cfg, err = loadConfig(cfgPath, e.o.dsn, e.o.set); err != nil {
		return nil, nil, fmt.Errorf("the bench's sluice configuration (%s): %w", mode, err)
	}
	if dlq := res.cfg.DLQ.Topic; dlq != "" {
		// sluice creates its dead-letter topic (default <group>.dlq) at start.
		e.cleanup("delete topic "+dlq, func(c context.Context) error { return deleteTopic(c, e.adm, dlq) })
	}
	e.cleanup("delete group "+group, func(c context.Context) error { return deleteGroup(c, e.adm, group) })
	if mode == modeExactlyOnce {
		offsets := res.cfg.Sink.Postgres.OffsetsTable
		e.cleanup("drop table "+offsets, func(c context.Context) error {
			_, err := e.pg.Exec(c, "DROP TABLE IF EXISTS "+offsets)
			return err
		})
	}
	res.bound, res.boundExpr = memoryBound(res.cfg, e.largest)

	p := &sluiceProc{listen: listen, logPath: filepath.Join(e.dir, "sluice-"+string(mode)+".log"),
		exited: make(chan struct{}), client: &http.Client{Timeout: 5 * time.Second}}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	p.cmd = exec.Command(e.bin, "run", "-c", cfgPath)
	p.cmd.Env = childEnv(e.o.dsn, e.o.set)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.before = e.watch.sample()
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start sluice: %w", err)
	}
	p.pid = p.cmd.Process.Pid
	logf("sluice %s: pid %d, group %s", mode, p.pid, group)
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()

	// (ru_maxrss from wait4 is no use here: the kernel folds in the RSS of
	// the forking parent, the bench, as it was when the child called exec.)
	polling := make(chan struct{})
	p.stopPoll = sync.OnceFunc(func() { close(polling) })
	every := func(d time.Duration, stop <-chan struct{}, f func()) {
		p.samplers.Go(func() {
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				f()
				select {
				case <-stop:
					return
				case <-p.exited:
					return
				case <-t.C:
				}
			}
		})
	}
	every(100*time.Millisecond, p.exited, func() {
		rss, hwm, err := memStatus(p.pid)
		if err != nil {
			return
		}
		st, serr := readStat(p.pid)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.live.peakRSS = max(p.live.peakRSS, rss)
		p.live.hwm = max(p.live.hwm, hwm)
		if serr == nil {
			p.live.cpu = st.cpu
		}
	})
	every(25*time.Millisecond, polling, func() {
		st, err := getStatus(ctx, p.client, listen)
		now := time.Since(p.start)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.live.statusErr = err
		if err != nil {
			return
		}
		p.lastStatus = st
		p.live.series = append(p.live.series, sample{at: now, written: st.Written, consumed: st.Consumed,
			records: st.Buffer.Records, bytes: st.Buffer.Bytes})
		if p.live.firstWrite == 0 && st.Written > 0 {
			p.live.firstWrite, p.live.firstRows = now, st.Written
		}
	})
	if e.o.profile != "" {
		p.profDone = make(chan struct{})
		secs := e.o.profileSeconds
		if secs <= 0 {
			secs = 3
		}
		go func() {
			defer close(p.profDone)
			path := filepath.Join(e.o.profile, string(mode)+".cpu.pprof")
			p.profErr = fetchProfile(ctx, listen, fmt.Sprintf("profile?seconds=%d", secs), path, time.Duration(secs+30)*time.Second, p.exited)
			if p.profErr == nil {
				res.profiles = append(res.profiles, path)
			}
		}()
	}
	return p, res, nil
}

// fetchProfile GETs /debug/pprof/<what> into path, retrying until the
// listener answers.
func fetchProfile(ctx context.Context, listen, what, path string, timeout time.Duration, exited <-chan struct{}) error {
	client := &http.Client{Timeout: timeout}
	for {
		resp, err := client.Get("http://" + listen + "/debug/pprof/" + what)
		if err == nil {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /debug/pprof/%s: %s", what, resp.Status)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			return os.WriteFile(path, b, 0o644)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("sluice exited")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitWritten waits until sluice's group has committed every partition of
// topic up to ends.
func (e *env) waitCommitted(ctx context.Context, p *sluiceProc, group, topic string, ends map[int32]int64) (time.Duration, error) {
	deadline := time.Now().Add(e.o.timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for {
		done, remaining, lagErr := committedAll(ctx, e.adm, group, topic, ends)
		if done {
			return time.Since(p.start), nil
		}
		if time.Since(lastReport) >= 10*time.Second {
			lastReport = time.Now()
			logf("sluice running for %s, committed lag %d (lag error: %v)", time.Since(p.start).Round(time.Second), remaining, lagErr)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("sluice: committed lag still %d after %s (last lag error: %v)", remaining, e.o.timeout, lagErr)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-p.exited:
			return 0, fmt.Errorf("sluice exited before the lag reached 0: %v", p.waitErr)
		case <-tick.C:
		}
	}
}

// finish reads what the process holds once its work is done, then stops it
// with SIGTERM and waits for it; res gets everything sampled.
func (e *env) finish(ctx context.Context, p *sluiceProc, res *sluiceResult, n int64) (err error) {
	defer func() {
		p.stopPoll()
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		p.samplers.Wait()
		p.mu.Lock()
		res.peakRSS = max(res.peakRSS, p.live.peakRSS)
		res.exitHWM = p.live.hwm
		res.status, res.statusErr = p.lastStatus, p.live.statusErr
		res.series = p.live.series
		res.firstWrite, res.firstRows = p.live.firstWrite, p.live.firstRows
		for _, s := range res.series {
			if s.written >= n {
				res.allWritten = s.at
				break
			}
		}
		if res.cpu == 0 {
			res.cpu = p.live.cpu
		}
		p.mu.Unlock()
		res.logWarnings, res.logTail = readLog(p.logPath)
		if err != nil && res.logTail != "" {
			logf("sluice's log (last lines):\n%s", res.logTail)
		}
	}()
	res.phase = e.watch.since(p.before)
	if st, err := readStat(p.pid); err == nil {
		res.cpu = st.cpu
	}
	if rss, hwm, err := memStatus(p.pid); err == nil {
		res.peakRSS, res.hwm = rss, hwm
	}
	res.metrics = getSinkMetrics(ctx, p.client, p.listen)
	if st, err := getStatus(ctx, p.client, p.listen); err == nil {
		p.mu.Lock()
		p.lastStatus = st
		p.live.series = append(p.live.series, sample{at: time.Since(p.start), written: st.Written, consumed: st.Consumed,
			records: st.Buffer.Records, bytes: st.Buffer.Bytes})
		p.mu.Unlock()
	}
	p.stopPoll()
	if e.o.profile != "" {
		path := filepath.Join(e.o.profile, string(res.mode)+".allocs.pprof")
		if err := fetchProfile(ctx, p.listen, "allocs", path, 30*time.Second, p.exited); err != nil {
			logf("allocation profile: %v", err)
		} else {
			res.profiles = append(res.profiles, path)
		}
		<-p.profDone
		if p.profErr != nil {
			logf("CPU profile: %v", p.profErr)
		}
	}

	stopAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("SIGTERM sluice: %w", err)
	}
	select {
	case <-p.exited:
	case <-time.After(90 * time.Second):
		return errors.New("sluice did not exit within 90s of SIGTERM")
	}
	res.shutdown = time.Since(stopAt)
	res.exitCode = p.cmd.ProcessState.ExitCode()
	res.cpuTotal = p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
	if res.exitCode != 0 {
		return fmt.Errorf("sluice exited with %d after SIGTERM", res.exitCode)
	}
	return nil
}

// sluiceRun runs the binary in mode on a fresh table and group until the
// group's committed lag on topic is 0, then checks the table.
func (e *env) sluiceRun(ctx context.Context, mode runMode, topic string, ends map[int32]int64) (*sluiceResult, error) {
	shape := tableShape
	if mode == modeUpsert {
		shape = tableShapeKeyed
	}
	table, err := e.table(ctx, strings.ReplaceAll(string(mode), "-", "_"), shape)
	if err != nil {
		return nil, err
	}
	e.cleanup("drop table "+table, func(c context.Context) error { return dropTable(c, e.pg, table) })
	group := table
	p, res, err := e.startSluice(ctx, mode, group, topic, table)
	if err != nil {
		return nil, err
	}
	elapsed, werr := e.waitCommitted(ctx, p, group, topic, ends)
	res.elapsed = elapsed
	if err := e.finish(ctx, p, res, int64(e.o.records)); werr != nil || err != nil {
		return nil, errors.Join(werr, err)
	}
	if res.check, err = checkTable(ctx, e.pg, table); err != nil {
		return nil, err
	}
	if res.check.distinct != int64(e.o.records) || res.check.rows != int64(e.o.records) {
		return nil, fmt.Errorf("sluice %s: the table holds %d rows, %d distinct (kafka_partition, kafka_offset), of %d records",
			mode, res.check.rows, res.check.distinct, e.o.records)
	}
	logf("sluice %s: %.0f rows/s while writing, %.2f s to committed lag 0", mode, res.sustainedRate(), res.elapsed.Seconds())
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
		case "sluice_sink_write_duration_seconds_bucket":
			if _, le, ok := strings.Cut(line, `le="`); ok {
				le, _, _ = strings.Cut(le, `"`)
				if b, err := strconv.ParseFloat(le, 64); err == nil && !math.IsInf(b, 1) {
					m.writeBuckets = append(m.writeBuckets, bucket{le: b, count: v})
				}
			}
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
