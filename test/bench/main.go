// Command bench measures sluice's insert-mode throughput into PostgreSQL next to
// the ceiling of raw pgx CopyFrom, in one run against the real Kafka broker and
// PostgreSQL server of the test environment:
//
//	make bench                                  # test/env/up.sh, then the full run, writing BENCHMARKS.md
//	go run ./test/bench -records 100000         # a quick run (source test/env/.state/env.sh first)
//
// It produces -records JSON orders of about 200 bytes once into a fresh topic,
// copies the same rows into an empty table with pgx CopyFrom over -lanes
// connections (the ceiling, once before and once after sluice), and runs the
// built sluice binary as its own process with a fresh consumer group, timed
// from its start until the group's committed lag is 0. The machines it runs on
// are shared and noisy, so every throughput is given as a ratio against the
// ceiling measured in the same run, and nothing is asserted on time: the run
// fails only when something is wrong (a row missing from the table, sluice
// not exiting cleanly), never because it is slow.
//
// Everything it creates (topic, group, tables, temporary directory) is removed
// at the end, also after a failure or an interrupt.
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

// aim is the share of the raw COPY rate sluice is meant to reach.
const aim = 0.8

// options are the command line.
type options struct {
	records, partitions, lanes, batch int
	brokers, dsn, out, sluice         string
	timeout                           time.Duration
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

func run(ctx context.Context, args []string) int {
	o := options{set: overrides{}}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.records, "records", 1_000_000, "orders to produce and write")
	fs.IntVar(&o.partitions, "partitions", 6, "partitions of the topic")
	fs.IntVar(&o.lanes, "lanes", 4, "sluice's sink.concurrency, and the ceiling's number of connections")
	fs.IntVar(&o.batch, "batch", 5000, "rows per batch, for sluice (sink.batch.max_records) and the ceiling")
	fs.StringVar(&o.brokers, "brokers", os.Getenv(envKafkaBrokers), "Kafka seed brokers, comma-separated (default $"+envKafkaBrokers+")")
	fs.StringVar(&o.dsn, "dsn", os.Getenv(envPostgresDSN), "PostgreSQL connection string (default $"+envPostgresDSN+")")
	fs.StringVar(&o.out, "out", "", "write the results as markdown to this file (BENCHMARKS.md)")
	fs.StringVar(&o.sluice, "sluice", "", "a built sluice binary (default: go build ./cmd/sluice into a temporary directory)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up when sluice has not committed everything after this long")
	fs.Var(o.set, "set", "override a key of sluice's configuration, key.path=value (repeatable), e.g. -set flow.max_buffered_records=40000")
	if err := fs.Parse(args); err != nil {
		return 2
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

// bench runs the whole measurement; the deferred clean-ups remove what it
// created whatever happens.
func bench(ctx context.Context, o options, args []string) (_ *results, err error) {
	r := &results{opts: o, command: commandLine(args), started: time.Now(), machine: readMachine()}
	brokers := strings.Split(o.brokers, ",")

	dir, err := os.MkdirTemp("", "sluice-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cleanup := func(what string, f func(context.Context) error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := f(cctx); cerr != nil {
			logf("clean-up: %s: %v", what, cerr)
			err = errors.Join(err, fmt.Errorf("clean-up: %s: %w", what, cerr))
		}
	}

	bin, tree := o.sluice, ""
	if bin == "" {
		logf("building ./cmd/sluice")
		if bin, tree, err = buildSluice(ctx, dir); err != nil {
			return nil, err
		}
	}
	r.binary = binaryInfo(bin, tree)

	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)
	pg, err := pgx.Connect(ctx, o.dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pg.Close(context.WithoutCancel(ctx))
	if v, err := serverVersion(ctx, pg); err == nil {
		r.machine.postgres = v
	}
	watch := &watcher{pgPID: listenerPID(pgPort(o.dsn)), kafkaPID: listenerPID(hostPort(brokers[0]))}
	r.watched = watch.pgPID != 0 && watch.kafkaPID != 0

	// Names: one run id; the topic's is chosen so that sluice's lane routing
	// spreads the partitions as evenly as it can (see lanesOf).
	id := randomID()
	for range 256 {
		r.topic = "sluice_bench_" + randomID()
		if evenLanes(lanesOf(r.topic, o.partitions, o.lanes), o.partitions) {
			break
		}
	}
	r.lanes = lanesOf(r.topic, o.partitions, o.lanes)
	r.group = "sluice_bench_" + id
	ceilingTable, sluiceTable := "sluice_bench_"+id+"_ceiling", "sluice_bench_"+id+"_sluice"

	if err := createTopic(ctx, adm, r.topic, o.partitions); err != nil {
		return nil, err
	}
	defer cleanup("delete topic "+r.topic, func(c context.Context) error { return deleteTopic(c, adm, r.topic) })
	defer cleanup("delete group "+r.group, func(c context.Context) error { return deleteGroup(c, adm, r.group) })
	for _, t := range []string{ceilingTable, sluiceTable} {
		if err := createTable(ctx, pg, t); err != nil {
			return nil, err
		}
		defer cleanup("drop table "+t, func(c context.Context) error { return dropTable(c, pg, t) })
	}

	logf("producing %d orders into %s (%d partitions)", o.records, r.topic, o.partitions)
	if r.produce, err = produceOrders(ctx, brokers, adm, r.topic, o.records, o.partitions); err != nil {
		return nil, err
	}

	// The ceiling, before sluice.
	r.settled = settle(ctx, pg)
	logf("ceiling: pgx CopyFrom of %d rows over %d connections", o.records, o.lanes)
	c1, err := runCeiling(ctx, o.dsn, ceilingTable, o.records, o.partitions, o.lanes, o.batch, watch)
	if err != nil {
		return nil, err
	}
	r.ceilings = append(r.ceilings, c1)
	if _, err := pg.Exec(ctx, "TRUNCATE "+pgx.Identifier{ceilingTable}.Sanitize()); err != nil {
		return nil, fmt.Errorf("truncate %s: %w", ceilingTable, err)
	}
	runtime.GC()

	// sluice.
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "sluice.yaml")
	r.config = sluiceConfig(brokers, r.group, r.topic, sluiceTable, o.lanes, o.batch, listen)
	if err := os.WriteFile(cfgPath, []byte(r.config), 0o600); err != nil {
		return nil, err
	}
	cfg, err := loadConfig(cfgPath, o.dsn, o.set)
	if err != nil {
		return nil, fmt.Errorf("the bench's sluice configuration: %w", err)
	}
	if dlq := cfg.DLQ.Topic; dlq != "" {
		// sluice creates its dead-letter topic (default <group>.dlq) at start.
		defer cleanup("delete topic "+dlq, func(c context.Context) error { return deleteTopic(c, adm, dlq) })
	}
	r.bound, r.boundExpr = memoryBound(cfg, r.produce.maxRecord)
	r.commitInterval = cfg.Commit.Interval
	r.maxBufferedRecords = cfg.Flow.MaxBufferedRecords
	settle(ctx, pg)
	logf("sluice: running %s with a fresh group %s", bin, r.group)
	r.sluice, err = runSluice(ctx, bin, cfgPath, dir, childEnv(o.dsn, o.set), listen, adm, r.group, r.topic,
		r.produce.endOffsets, o.records, o.timeout, watch)
	if err != nil {
		if r.sluice.logTail != "" {
			logf("sluice's log (last lines):\n%s", r.sluice.logTail)
		}
		return nil, err
	}
	if r.check, err = checkTable(ctx, pg, sluiceTable); err != nil {
		return nil, err
	}
	r.wantIDs, r.wantCents = expectedSums(o.records)
	if r.check.distinct != int64(o.records) {
		return nil, fmt.Errorf("sluice's table holds %d distinct (kafka_partition, kafka_offset) of %d records (%d rows)",
			r.check.distinct, o.records, r.check.rows)
	}

	// The ceiling again, after sluice, to bracket it.
	settle(ctx, pg)
	logf("ceiling again, after sluice")
	c2, err := runCeiling(ctx, o.dsn, ceilingTable, o.records, o.partitions, o.lanes, o.batch, watch)
	if err != nil {
		return nil, err
	}
	r.ceilings = append(r.ceilings, c2)
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
		cmd = exe
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
