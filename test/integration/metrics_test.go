//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// The metrics tests scrape a sluice running against the real broker: the
// exposition passes promtool, carries every metric deploy/ (alert rules,
// dashboard, KEDA's prometheus trigger) relies on, and its lag is the lag
// Kafka reports for the group, the figure KEDA's kafka trigger scales on.

// scrapeMetrics GETs /metrics from a running sluice.
func scrapeMetrics(t *testing.T, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s, %v", resp.Status, err)
	}
	return body
}

// sampleLine is one sample of the text exposition: name{labels} value.
var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)

// sampleNames returns the names of the samples in a scrape (for a histogram:
// its _bucket, _sum and _count).
func sampleNames(scrape []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(scrape))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if m := sampleLine.FindStringSubmatch(sc.Text()); m != nil {
			names[m[1]] = true
		}
	}
	return names
}

// partitionGauge returns the samples of a per-partition gauge by partition.
func partitionGauge(t *testing.T, scrape []byte, name string) map[int32]float64 {
	t.Helper()
	out := map[int32]float64{}
	partition := regexp.MustCompile(`(?:^|,)partition="(\d+)"`)
	sc := bufio.NewScanner(bytes.NewReader(scrape))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := sampleLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != name {
			continue
		}
		p := partition.FindStringSubmatch(m[2])
		v, err := strconv.ParseFloat(m[3], 64)
		if p == nil || err != nil {
			t.Fatalf("bad sample %q", sc.Text())
		}
		n, _ := strconv.ParseInt(p[1], 10, 32)
		out[int32(n)] = v
	}
	return out
}

func sum(m map[int32]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

// deployMetricNames returns the sluice_* names that deploy/ uses outside its
// tests, with the file that uses each.
func deployMetricNames(t *testing.T) map[string]string {
	t.Helper()
	root := filepath.Join("..", "..", "deploy")
	names := map[string]string{}
	re := regexp.MustCompile(`\bsluice_[a-z0-9_]+`)
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "check" {
			return filepath.SkipDir
		}
		ext := filepath.Ext(path)
		if d.IsDir() || (ext != ".yaml" && ext != ".json") || strings.HasSuffix(path, "_test.yaml") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range re.FindAllString(string(b), -1) {
			names[n] = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 10 {
		t.Fatalf("only %d metric names in deploy/: %v", len(names), names)
	}
	return names
}

// promtoolBin returns promtool, which test/env/up.sh installs; without it the
// test is skipped, or fails under CI.
func promtoolBin(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool is not on PATH: test/env/up.sh installs it (Debian's prometheus package)"
		if testenv.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// dropTopicAtEnd deletes topic when the test ends (the dead-letter topic
// sluice creates for the test's group).
func dropTopicAtEnd(t *testing.T, adm *kadm.Client, topic string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := adm.DeleteTopic(ctx, topic)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			t.Errorf("delete topic %s: %v", topic, err)
		}
	})
}

// checkedOrdersTable is ordersTable with a CHECK that a negative amount
// violates, so that PostgreSQL rejects such a row (23514, sink_rejected).
const checkedOrdersTable = "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"

func TestMetricsScrapePassesPromtoolAndCoversDeploy(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	promtool := promtoolBin(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	dropTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, checkedOrdersTable)

	// Good orders, one record that is not JSON and one the table refuses: the
	// series that exist only after such events (dead letters by reason, sink
	// write errors by class) are then in the scrape too.
	const n = 2000
	produceOrders(t, brokers, topic, n, func(i int) []byte {
		switch i {
		case 100:
			return []byte("not JSON")
		case 200:
			return []byte(`{"id":200,"amount":-1.00,"seq":200}`)
		}
		return order(i)
	})
	r := start(t, pgConfig(brokers, group, topic, dsn, table, config.ModeInsert))
	waitLagZero(t, adm, group, topic)

	var scrape []byte
	deadline := time.Now().Add(time.Minute)
	for {
		// The lag series follow the commit; the counters follow the writes.
		scrape = scrapeMetrics(t, r.d.Addr())
		lag := partitionGauge(t, scrape, "sluice_consumer_lag_records")
		if len(lag) == 6 && sum(lag) == 0 && bytes.Contains(scrape, []byte(`sluice_records_dlq_total{reason="sink_rejected"} 1`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scrape never showed 6 partitions without lag and the rejected row:\n%s", scrape)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// promtool's linter: names, units, suffixes, help.
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(scrape)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	// Every metric deploy/ names is one sluice exports.
	exported := sampleNames(scrape)
	used := deployMetricNames(t)
	for _, name := range slices.Sorted(maps.Keys(used)) {
		if !exported[name] {
			t.Errorf("%s uses %s, which the scrape lacks", used[name], name)
		}
	}
	for _, want := range []string{`sluice_records_dlq_total{reason="decode"} 1`, `sluice_sink_write_errors_total{class="rejected"}`} {
		if !bytes.Contains(scrape, []byte(want)) {
			t.Errorf("the scrape lacks %s", want)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
	t.Logf("%d metric names of deploy/ found in a scrape of %d sample names", len(used), len(exported))
}

// groupLag is the group's lag on topic as kadm computes it (committed offsets
// and end offsets from the brokers), per partition.
func groupLag(t *testing.T, adm *kadm.Client, group, topic string) (lag, committed map[int32]int64) {
	t.Helper()
	gl := testenv.GroupLag(t, adm, group)
	lag, committed = map[int32]int64{}, map[int32]int64{}
	for p, ml := range gl.Lag[topic] {
		if ml.Err != nil {
			t.Fatalf("kadm lag of %s/%d: %v", topic, p, ml.Err)
		}
		lag[p], committed[p] = ml.Lag, ml.Commit.At
	}
	return lag, committed
}

func total(m map[int32]int64) int64 {
	var s int64
	for _, v := range m {
		s += v
	}
	return s
}

// TestLagMetricIsTheGroupsLag checks sluice_consumer_lag_records against the
// group lag kadm computes, as KEDA's kafka scaler does, three ways:
//
//  1. mid-stream, rate-limited: the metric follows the done position, which
//     reaches Kafka within commit.interval, so the two differ by at most what
//     sluice finishes in one commit interval (plus one batch per lane, the
//     step in which records become done);
//  2. with a blocked sink, so that nothing becomes done: the metric counts
//     from the group's committed offsets fetched from the broker, and equals
//     kadm's lag exactly, partition by partition;
//  3. records produced while the partitions are paused (no fetch reports
//     them): the high watermarks listed from the broker bring the metric to
//     kadm's lag again.
func TestLagMetricIsTheGroupsLag(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	adm := testenv.Admin(t, brokers)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	dropTopicAtEnd(t, adm, group+".dlq")
	table := testenv.NewTable(t, dsn, ordersTable)
	conn := testenv.Postgres(t, dsn)

	const n, rate, batch, lanes = 30000, 3000, 200, 4
	produceOrders(t, brokers, topic, n, order)
	produced := time.Now()
	cfg := pgConfig(brokers, group, topic, dsn, table, config.ModeInsert)
	cfg.Flow.RateLimit = config.RateLimit{RecordsPerSecond: rate, Burst: batch}
	cfg.Sink.Batch.MaxRecords, cfg.Sink.Concurrency = batch, lanes
	cfg.Flow.MaxBufferedRecords = 2000

	// 1. Mid-stream.
	a := start(t, cfg)
	waitRows(t, conn, "public."+table, 3000)
	tolerance := rate*(cfg.Commit.Interval.Seconds()+0.1) + lanes*batch
	for i := range 5 {
		before := sum(partitionGauge(t, scrapeMetrics(t, a.d.Addr()), "sluice_consumer_lag_records"))
		kl, _ := groupLag(t, adm, group, topic)
		after := sum(partitionGauge(t, scrapeMetrics(t, a.d.Addr()), "sluice_consumer_lag_records"))
		k := float64(total(kl))
		t.Logf("sample %d: sluice %v then %v, kadm %v in between (tolerance %v)", i, before, after, k, tolerance)
		// Committed offsets trail the done position: kadm's lag is never
		// below sluice's, and exceeds it by at most a commit interval's work.
		if k < after || k > before+tolerance {
			t.Errorf("kadm's lag %v is outside [%v, %v + %v]", k, after, before, tolerance)
		}
		if k == 0 || k == n {
			t.Fatalf("kadm's lag %v: the sample is not mid-stream", k)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err := a.stop(); err != nil { // commits what is done
		t.Fatalf("sluice stopped with %v", err)
	}

	// 2. A second member whose sink is blocked: the test holds an exclusive
	// lock on the table, so no record becomes done.
	lock := testenv.Postgres(t, dsn)
	tx, err := lock.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	b := start(t, cfg)
	want, committed := groupLag(t, adm, group, topic)
	if total(want) == 0 {
		t.Fatal("the first member read everything: no backlog left for the second")
	}
	minAge := time.Since(produced).Seconds()
	waitLagEquals(t, b.d.Addr(), adm, group, topic)
	for _, s := range b.d.Consumer().Stats() {
		if s.Committed != committed[s.Partition] || s.Lag != want[s.Partition] {
			t.Errorf("/status partition %d: committed %d lag %d; the broker: committed %d lag %d",
				s.Partition, s.Committed, s.Lag, committed[s.Partition], want[s.Partition])
		}
	}
	// The gate holds records of some partitions; the oldest of each was
	// produced before `produced`. A partition with nothing admitted but lag
	// in Kafka counts how long its position has stood behind the high
	// watermark: no longer than this member has run. None lags, none ages.
	ages := partitionGauge(t, scrapeMetrics(t, b.d.Addr()), "sluice_consumer_lag_seconds")
	holding := 0
	for _, s := range b.d.Consumer().Stats() {
		switch age := ages[s.Partition]; {
		case s.InFlight > 0 && age < minAge:
			t.Errorf("partition %d: lag seconds %v, but its oldest outstanding record is at least %vs old", s.Partition, age, minAge)
		case s.InFlight == 0 && age > time.Since(started).Seconds():
			t.Errorf("partition %d: lag seconds %v with nothing outstanding, more than the %v this member has run", s.Partition, age, time.Since(started))
		case s.Lag == 0 && age != 0:
			t.Errorf("partition %d: lag seconds %v without lag", s.Partition, age)
		}
		if s.InFlight > 0 {
			holding++
		}
	}
	if holding == 0 {
		t.Error("no partition holds an outstanding record although the sink is blocked")
	}

	// 3. The gate (2000 records) is full: partitions are paused and no poll
	// reports new records; only listing the end offsets shows them.
	waitPaused(t, b)
	produceOrders(t, brokers, topic, 600, func(i int) []byte { return order(n + i) })
	waitLagEquals(t, b.d.Addr(), adm, group, topic)

	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitLagZero(t, adm, group, topic)
	if err := b.stop(); err != nil {
		t.Fatalf("sluice stopped with %v", err)
	}
}

// waitLagEquals waits, at most 30s, until sluice's lag equals kadm's lag of
// the group partition by partition, in a scrape taken between two kadm
// readings that agree (nothing commits meanwhile).
func waitLagEquals(t *testing.T, addr string, adm *kadm.Client, group, topic string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		k1, _ := groupLag(t, adm, group, topic)
		got := partitionGauge(t, scrapeMetrics(t, addr), "sluice_consumer_lag_records")
		k2, _ := groupLag(t, adm, group, topic)
		equal := len(got) == len(k1) && fmt.Sprint(k1) == fmt.Sprint(k2)
		for p, v := range k1 {
			equal = equal && got[p] == float64(v)
		}
		if equal {
			t.Logf("sluice's lag equals kadm's: %v (total %d)", k1, total(k1))
			return
		}
		last = fmt.Sprintf("sluice %v, kadm %v then %v", got, k1, k2)
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("sluice's lag never equalled kadm's: %s", last)
}

func waitPaused(t *testing.T, r *running) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range r.d.Consumer().Stats() {
			if s.Paused {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no partition paused although the sink was blocked and the gate full")
}
