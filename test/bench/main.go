// Command bench measures sluice against the real Kafka broker and PostgreSQL
// server of the test environment, in one run, and writes BENCHMARKS.md and a
// plot of the insert run:
//
//	make bench                                  # test/env/up.sh, then the full run, writing BENCHMARKS.md and docs/bench-insert.png
//	go run ./test/bench -records 200000         # a quick run (source test/env/.state/env.sh first)
//
// It produces -records JSON orders of about 200 bytes once into a fresh topic
// and then measures, each phase on its own fresh table (and consumer group):
//
//   - the ceiling: the same rows, built in memory, copied into an empty table
//     with pgx CopyFrom over as many connections as sluice has lanes (once
//     before and once after the sluice runs, to bracket them);
//   - the naive baseline: one goroutine that polls, decodes the batch with
//     encoding/json, COPYs it and commits, in a loop (what people write by hand);
//   - sluice (the built binary, as its own process) in insert mode
//     (at-least-once), in upsert mode, and in insert mode with exactly-once
//     delivery, each until its group's committed lag is 0;
//   - the upsert baseline: the rows copied into a temporary staging table and
//     merged with INSERT ... ON CONFLICT, sluice's own SQL, over as many
//     connections as sluice has lanes;
//   - end-to-end latency: sluice in insert mode on a second, empty topic, fed
//     at a fixed rate of half the insert run's sustained rate, from each
//     record's timestamp to the commit of the transaction that wrote it.
//
// The machines it runs on are shared and noisy, so every throughput is given
// as a ratio against baselines measured in the same run, and nothing is
// asserted on time: the run fails only when something is wrong (a row missing
// from a table, sluice not exiting cleanly), never because it is slow.
//
// Everything it creates (topics, groups, tables, temporary directory) is
// removed at the end, also after a failure or an interrupt.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
)

// Names of the variables test/env/.state/env.sh exports.
const (
	envKafkaBrokers = "SLUICE_TEST_KAFKA_BROKERS"
	envPostgresDSN  = "SLUICE_TEST_PG_DSN"
)

// The aims of the throughput issue (#8), each a ratio measured in one run.
const (
	aimCeiling    = 0.85 // sluice insert / raw COPY ceiling
	aimNaive      = 1.3  // sluice insert / naive baseline
	aimUpsert     = 0.8  // sluice upsert / staging + ON CONFLICT baseline
	aimExactly    = 0.9  // sluice exactly-once insert / at-least-once insert
	aimDefaultRSS = 150 << 20
)

// options are the command line.
type options struct {
	records, partitions, lanes, batch int
	brokers, dsn, out, plot, sluice   string
	profile                           string
	profileSeconds                    int
	latency                           time.Duration
	timeout                           time.Duration
	skip                              map[string]bool
	set                               overrides
}

// overrides are -set key=value flags, passed to sluice as SLUICE_<PATH>
// variables.
type overrides map[string]string

func (o overrides) String() string { return fmt.Sprint(map[string]string(o)) }

func (o overrides) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key.path=value, got %q", s)
	}
	o[config.EnvName(strings.TrimSpace(k))] = strings.TrimSpace(v)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// phases that -skip may name.
var phaseNames = []string{"naive", "upsert", "exactly-once", "latency"}

func run(ctx context.Context, args []string) int {
	def := config.Default()
	o := options{set: overrides{}, skip: map[string]bool{}}
	var skip string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.records, "records", 1_000_000, "orders to produce and write")
	fs.IntVar(&o.partitions, "partitions", 6, "partitions of the topic")
	fs.IntVar(&o.lanes, "lanes", 0, "sluice's sink.concurrency, and the baselines' number of connections (default: sluice's default, "+strconv.Itoa(def.Sink.Concurrency)+")")
	fs.IntVar(&o.batch, "batch", 0, "rows per batch, for sluice (sink.batch.max_records) and the baselines (default: sluice's default, "+strconv.Itoa(def.Sink.Batch.MaxRecords)+")")
	fs.StringVar(&o.brokers, "brokers", os.Getenv(envKafkaBrokers), "Kafka seed brokers, comma-separated (default $"+envKafkaBrokers+")")
	fs.StringVar(&o.dsn, "dsn", os.Getenv(envPostgresDSN), "PostgreSQL connection string (default $"+envPostgresDSN+")")
	fs.StringVar(&o.out, "out", "", "write the results as markdown to this file (BENCHMARKS.md)")
	fs.StringVar(&o.plot, "plot", "", "write a PNG plot of throughput and buffer use over the sluice insert run to this file")
	fs.StringVar(&o.sluice, "sluice", "", "a built sluice binary (default: go build ./cmd/sluice into a temporary directory)")
	fs.StringVar(&o.profile, "profile", "", "write pprof CPU and allocation profiles of every sluice run into this directory (turns on observability.pprof)")
	fs.IntVar(&o.profileSeconds, "profile-seconds", 0, "length of the CPU profiles (default: about twice the ceiling's time, at least 3s)")
	fs.DurationVar(&o.latency, "latency-duration", 6*time.Second, "how long the latency run feeds sluice at half its insert rate")
	fs.StringVar(&skip, "skip", "", "comma-separated phases to leave out: "+strings.Join(phaseNames, ", "))
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up when sluice has not committed everything after this long")
	fs.Var(o.set, "set", "override a key of sluice's configuration in every sluice run, key.path=value (repeatable), e.g. -set flow.max_buffered_records=40000")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for p := range strings.SplitSeq(skip, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		known := false
		for _, n := range phaseNames {
			known = known || n == p
		}
		if !known {
			fmt.Fprintf(os.Stderr, "bench: -skip: unknown phase %q (want %s)\n", p, strings.Join(phaseNames, ", "))
			return 2
		}
		o.skip[p] = true
	}
	if o.lanes == 0 {
		o.lanes = def.Sink.Concurrency
	}
	if o.batch == 0 {
		o.batch = def.Sink.Batch.MaxRecords
	}
	switch {
	case o.records < 1 || o.partitions < 1 || o.lanes < 1 || o.batch < 1:
		fmt.Fprintln(os.Stderr, "bench: -records, -partitions, -lanes and -batch must be at least 1")
		return 2
	case o.brokers == "" || o.dsn == "":
		fmt.Fprintf(os.Stderr, "bench: no Kafka or PostgreSQL: set -brokers and -dsn, or run `make env-up && source test/env/.state/env.sh` (make bench does both)\n")
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	r, err := bench(ctx, o, args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: FAILED: %v\n", err)
		return 1
	}
	if o.plot != "" {
		if err := plotInsert(o.plot, r); err != nil {
			fmt.Fprintf(os.Stderr, "bench: plot: %v\n", err)
			return 1
		}
		r.plotPath = o.plot
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.plot)
	}
	md := r.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "bench: wrote %s\n", o.out)
	}
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// env is what every phase of one run shares.
type env struct {
	o       options
	id      string
	dir     string
	brokers []string
	bin     string
	adm     *kadm.Client
	pg      *pgx.Conn
	watch   *watcher
	largest int // the largest record produced, key and value, for the memory formula
	cleanup func(what string, f func(context.Context) error)
}

// table creates a fresh table named after the run and suffix, dropped at the end.
func (e *env) table(ctx context.Context, suffix, shape string) (string, error) {
	name := "sluice_bench_" + e.id + "_" + suffix
	if _, err := e.pg.Exec(ctx, "CREATE TABLE "+pgx.Identifier{name}.Sanitize()+" "+shape); err != nil {
		return "", fmt.Errorf("create table %s: %w", name, err)
	}
	// Deferred by the caller's cleanup list: tables go when the run ends.
	return name, nil
}

// bench runs the whole measurement; the deferred clean-ups remove what it
// created whatever happens.
func bench(ctx context.Context, o options, args []string) (_ *results, err error) {
	r := &results{opts: o, command: commandLine(args), started: time.Now(), machine: readMachine()}
	e := &env{o: o, id: randomID(), brokers: strings.Split(o.brokers, ",")}

	if e.dir, err = os.MkdirTemp("", "sluice-bench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(e.dir)
	var cleanups []func()
	e.cleanup = func(what string, f func(context.Context) error) {
		cleanups = append(cleanups, func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if cerr := f(cctx); cerr != nil {
				logf("clean-up: %s: %v", what, cerr)
				err = errors.Join(err, fmt.Errorf("clean-up: %s: %w", what, cerr))
			}
		})
	}

	e.bin = o.sluice
	tree := ""
	if e.bin == "" {
		logf("building ./cmd/sluice")
		if e.bin, tree, err = buildSluice(ctx, e.dir); err != nil {
			return nil, err
		}
	}
	r.binary = binaryInfo(e.bin, tree)

	kcl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer kcl.Close()
	e.adm = kadm.NewClient(kcl)
	if e.pg, err = pgx.Connect(ctx, o.dsn); err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer e.pg.Close(context.WithoutCancel(ctx))
	// After the clients' defers, so before they close: drop and delete
	// everything the phases created, newest first.
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	if v, err := serverVersion(ctx, e.pg); err == nil {
		r.machine.postgres = v
	}
	e.watch = &watcher{pgPID: listenerPID(pgPort(o.dsn)), kafkaPID: listenerPID(hostPort(e.brokers[0]))}
	r.watched = e.watch.pgPID != 0 && e.watch.kafkaPID != 0

	// The topic's name is chosen so that sluice's lane routing spreads the
	// partitions as evenly as it can (see lanesOf).
	for range 256 {
		r.topic = "sluice_bench_" + randomID()
		if evenLanes(lanesOf(r.topic, o.partitions, o.lanes), o.partitions) {
			break
		}
	}
	r.lanes = lanesOf(r.topic, o.partitions, o.lanes)
	if err := createTopic(ctx, e.adm, r.topic, o.partitions); err != nil {
		return nil, err
	}
	e.cleanup("delete topic "+r.topic, func(c context.Context) error { return deleteTopic(c, e.adm, r.topic) })

	logf("producing %d orders into %s (%d partitions)", o.records, r.topic, o.partitions)
	if r.produce, err = produceOrders(ctx, e.brokers, e.adm, r.topic, o.records, o.partitions); err != nil {
		return nil, err
	}
	r.wantIDs, r.wantCents = expectedSums(o.records)
	e.largest = r.produce.maxRecord
	rows := buildRows(o.records, o.partitions)

	// The ceiling, before sluice.
	ceilingTable, err := e.table(ctx, "ceiling", tableShape)
	if err != nil {
		return nil, err
	}
	e.cleanup("drop table "+ceilingTable, func(c context.Context) error { return dropTable(c, e.pg, ceilingTable) })
	r.settled = settle(ctx, e.pg)
	logf("ceiling: pgx CopyFrom of %d rows over %d connections", o.records, o.lanes)
	c1, err := runCeiling(ctx, o.dsn, ceilingTable, rows, o.lanes, o.batch, e.watch)
	if err != nil {
		return nil, err
	}
	r.ceilings = append(r.ceilings, c1)

	if !o.skip["naive"] {
		settle(ctx, e.pg)
		if r.naive, err = e.naive(ctx, r.topic); err != nil {
			return nil, err
		}
	}

	// sluice, insert mode, at-least-once.
	settle(ctx, e.pg)
	if r.insert, err = e.sluiceRun(ctx, modeInsert, r.topic, r.produce.endOffsets); err != nil {
		return nil, err
	}

	if !o.skip["upsert"] {
		settle(ctx, e.pg)
		if r.upsertBase, err = e.upsertBaseline(ctx, rows); err != nil {
			return nil, err
		}
		settle(ctx, e.pg)
		if r.upsert, err = e.sluiceRun(ctx, modeUpsert, r.topic, r.produce.endOffsets); err != nil {
			return nil, err
		}
	}
	if !o.skip["exactly-once"] {
		settle(ctx, e.pg)
		if r.exactly, err = e.sluiceRun(ctx, modeExactlyOnce, r.topic, r.produce.endOffsets); err != nil {
			return nil, err
		}
	}

	// The ceiling again, after sluice, to bracket it.
	if _, err := e.pg.Exec(ctx, "TRUNCATE "+pgx.Identifier{ceilingTable}.Sanitize()); err != nil {
		return nil, fmt.Errorf("truncate %s: %w", ceilingTable, err)
	}
	settle(ctx, e.pg)
	logf("ceiling again, after sluice")
	c2, err := runCeiling(ctx, o.dsn, ceilingTable, rows, o.lanes, o.batch, e.watch)
	if err != nil {
		return nil, err
	}
	r.ceilings = append(r.ceilings, c2)
	rows = nil
	runtime.GC()

	if !o.skip["latency"] {
		rate := r.insert.sustainedRate() / 2
		settle(ctx, e.pg)
		if r.latency, err = e.latencyRun(ctx, rate); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// pgPort is the port of a local PostgreSQL DSN, or 0.
func pgPort(dsn string) int {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil || !isLocal(cfg.Host) {
		return 0
	}
	return int(cfg.Port)
}

// hostPort is the port of a local host:port, or 0.
func hostPort(addr string) int {
	host, port, err := net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil || !isLocal(host) {
		return 0
	}
	p, _ := strconv.Atoi(port)
	return p
}

func isLocal(host string) bool {
	if host == "localhost" || strings.HasPrefix(host, "/") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// commandLine is the command that ran the bench, as a user would type it.
func commandLine(args []string) string {
	cmd := "go run ./test/bench"
	if exe := os.Args[0]; !strings.Contains(exe, "go-build") {
		cmd = filepath.Base(exe)
	}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		cmd += " " + a
	}
	return redactDSN(cmd)
}

// redactDSN hides a password in any URL-shaped argument.
func redactDSN(s string) string {
	fields := strings.Fields(s)
	for i, f := range fields {
		if u, err := url.Parse(strings.Trim(f, `"`)); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				fields[i] = u.Redacted()
			}
		}
	}
	return strings.Join(fields, " ")
}
