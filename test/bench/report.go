package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// results is everything one run measured.
type results struct {
	opts    options
	command string
	started time.Time
	machine machine
	binary  string

	topic      string
	lanes      []int // partitions per lane
	produce    produced
	ceilings   []ceilingResult
	naive      naiveResult
	insert     *sluiceResult
	upsertBase ceilingResult
	upsert     *sluiceResult
	exactly    *sluiceResult
	latency    *latencyResult
	plotPath   string

	wantIDs, wantCents int64
	settled            bool // CHECKPOINT before each phase worked
	watched            bool // the PostgreSQL and Kafka processes were found
}

type machine struct {
	cpus     int
	model    string
	memory   int64
	kernel   string
	postgres string
}

func readMachine() machine {
	m := machine{cpus: runtime.NumCPU(), model: "unknown", postgres: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					m.memory = kb * 1024
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	return m
}

// ceilingRate is the mean of the ceiling runs' rates, rows per second.
func (r *results) ceilingRate() float64 {
	var sum float64
	for _, c := range r.ceilings {
		sum += c.rate(r.opts.records)
	}
	return sum / float64(len(r.ceilings))
}

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// perMillion is CPU seconds per million rows.
func (r *results) perMillion(cpu time.Duration, n int) float64 {
	return cpu.Seconds() / (float64(n) / 1e6)
}

// aim is one aim of the issue and what this run measured for it.
type aim struct {
	what     string
	measured string
	met      bool
}

func verdict(met bool) string {
	if met {
		return "**met**"
	}
	return "**not met**"
}

func (r *results) aims() []aim {
	var out []aim
	o := r.opts
	ceiling := r.ceilingRate()
	if s := r.insert; s != nil {
		x := s.sustainedRate() / ceiling
		out = append(out, aim{fmt.Sprintf("insert (at-least-once) ≥ %.2f × the raw COPY ceiling", aimCeiling),
			fmt.Sprintf("%.2f while writing (%.2f start to committed lag 0)", x, rate(o.records, s.elapsed)/ceiling), x >= aimCeiling})
		if r.naive.elapsed > 0 {
			x := s.sustainedRate() / r.naive.sustainedRate(o.records)
			out = append(out, aim{fmt.Sprintf("insert ≥ %.1f × the naive baseline", aimNaive),
				fmt.Sprintf("%.2f while writing (%.2f start to committed lag 0)", x, r.naive.elapsed.Seconds()/s.elapsed.Seconds()), x >= aimNaive})
		}
	}
	if s := r.upsert; s != nil && r.upsertBase.elapsed > 0 {
		x := s.sustainedRate() / r.upsertBase.rate(o.records)
		out = append(out, aim{fmt.Sprintf("upsert ≥ %.1f × COPY into staging + INSERT ... ON CONFLICT", aimUpsert),
			fmt.Sprintf("%.2f while writing (%.2f start to committed lag 0)", x, rate(o.records, s.elapsed)/r.upsertBase.rate(o.records)), x >= aimUpsert})
	}
	if s, a := r.exactly, r.insert; s != nil && a != nil {
		x := s.sustainedRate() / a.sustainedRate()
		out = append(out, aim{fmt.Sprintf("exactly-once insert ≥ %.1f × at-least-once insert", aimExactly),
			fmt.Sprintf("%.2f while writing (%.2f start to committed lag 0)", x, a.elapsed.Seconds()/s.elapsed.Seconds()), x >= aimExactly})
	}
	if l := r.latency; l != nil {
		out = append(out, aim{"p99 latency at half load ≤ linger + 3 × median batch write",
			fmt.Sprintf("p99 %s, bound %s + 3 × %s = %s", ms(l.p99), ms(l.linger), ms(max(l.medianWrite, l.medianWriteHist)), ms(l.bound())),
			l.p99 <= l.bound()})
	}
	var worst *sluiceResult
	for _, s := range r.sluiceRuns() {
		if worst == nil || float64(s.hwm)/float64(s.bound) > float64(worst.hwm)/float64(worst.bound) {
			worst = s
		}
	}
	if worst != nil {
		out = append(out, aim{"peak RSS ≤ the README's memory formula",
			fmt.Sprintf("at most %.0f%% of it (%s: %.0f of %.0f MiB)", 100*float64(worst.hwm)/float64(worst.bound), worst.mode, mibF(worst.hwm), mibF(worst.bound)),
			worst.hwm <= worst.bound})
	}
	if s := r.insert; s != nil && len(r.opts.set) == 0 && r.opts.lanes == config.Default().Sink.Concurrency && r.opts.batch == config.Default().Sink.Batch.MaxRecords {
		var peak int64
		for _, s := range r.sluiceRuns() {
			peak = max(peak, s.hwm)
		}
		out = append(out, aim{"peak RSS < 150 MiB with default settings",
			fmt.Sprintf("%.0f MiB (highest of the sluice runs)", mibF(peak)), peak < aimDefaultRSS})
	}
	return out
}

func (r *results) sluiceRuns() []*sluiceResult {
	var out []*sluiceResult
	for _, s := range []*sluiceResult{r.insert, r.upsert, r.exactly} {
		if s != nil {
			out = append(out, s)
		}
	}
	if r.latency != nil {
		out = append(out, r.latency.run)
	}
	return out
}

func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o := r.opts
	ceiling := r.ceilingRate()
	naive := 0.0
	if r.naive.elapsed > 0 {
		naive = r.naive.sustainedRate(o.records)
	}
	def := config.Default()

	p("# Benchmarks\n\n")
	p("sluice from Kafka into PostgreSQL next to baselines measured in the same run by [test/bench](test/bench)\n")
	p("(`make bench`): the raw COPY ceiling, the naive loop people write by hand, and, for upsert, the same\n")
	p("staging-table merge done by hand.\n\n")
	p("- Date: %s\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	p("- Machine: %d CPUs (%s), %.1f GiB memory, Linux %s; shared with other work, so every figure below is a ratio to a baseline of the same run\n",
		r.machine.cpus, r.machine.model, float64(r.machine.memory)/(1<<30), r.machine.kernel)
	p("- Software: %s; sluice binary %s; PostgreSQL %s; Kafka: the test environment's broker (test/env/up.sh)\n",
		runtime.Version(), r.binary, r.machine.postgres)
	p("- Command: `%s`\n", r.command)
	p("- Workload: %s JSON orders of %.0f bytes on average (largest record %d bytes with its key), %d partitions, %s;\n",
		thousands(float64(o.records)), float64(r.produce.valueBytes)/float64(o.records), r.produce.maxRecord, o.partitions, r.produce.compression)
	p("  table `(id bigint, customer text, amount numeric(12,2), currency text, created_at timestamptz, kafka_partition int, kafka_offset bigint)`,\n")
	p("  no index (upsert: `id` is the primary key); sluice with its defaults (%d lanes, %d-row batches), the baselines with as many connections and rows per transaction\n\n",
		o.lanes, o.batch)

	p("## Results\n\n")
	p("Rates are rows per second **while writing**: from the first row written to the last (for sluice, from its `/status`\n")
	p("polled every 25 ms), without the process start, the group join and the wait for the last offset commit, which are\n")
	p("shown apart (start to committed lag 0). The baselines are timed the same way; the ceiling's and the upsert baseline's\n")
	p("rows are built in memory before their clock starts.\n\n")
	p("| run | rows/s | × ceiling | × naive | start to committed lag 0 | CPU s per M rows | peak RSS (formula) |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	p("| produce: franz-go, 1 client, 5 ms linger | %s | | | %s | | |\n", thousands(rate(o.records, r.produce.elapsed)), secs(r.produce.elapsed))
	for i, c := range r.ceilings {
		when := "before the sluice runs"
		if i > 0 {
			when = "after"
		}
		p("| ceiling: pgx CopyFrom, %d connections, %d-row transactions (%s) | %s | %.2f | | | %.2f (client) | |\n",
			o.lanes, o.batch, when, thousands(c.rate(o.records)), c.rate(o.records)/ceiling, r.perMillion(c.clientCPU, o.records))
	}
	if n := r.naive; n.elapsed > 0 {
		p("| naive: 1 goroutine, poll → encoding/json → COPY → commit, %s batches of %.0f rows | %s | %.2f | 1.00 | %s (%s rows/s) | %.2f (client) | |\n",
			thousands(float64(n.batches)), float64(o.records)/float64(n.batches), thousands(naive), naive/ceiling, secs(n.elapsed),
			thousands(rate(o.records, n.elapsed)), r.perMillion(n.cpu, o.records))
	}
	row := func(name string, s *sluiceResult) {
		x := s.sustainedRate()
		xn := ""
		if naive > 0 {
			xn = fmt.Sprintf("%.2f", x/naive)
		}
		p("| **sluice** %s | **%s** | **%.2f** | %s | %s (%s rows/s) | %.2f | %.0f MiB (%.0f MiB) |\n",
			name, thousands(x), x/ceiling, xn, secs(s.elapsed), thousands(rate(o.records, s.elapsed)), r.perMillion(s.cpu, o.records),
			mibF(s.hwm), mibF(s.bound))
	}
	if r.insert != nil {
		row("insert, at-least-once", r.insert)
	}
	if r.upsertBase.elapsed > 0 {
		u := r.upsertBase.rate(o.records)
		p("| upsert baseline: COPY into a temp staging table + INSERT ... SELECT DISTINCT ON ... ON CONFLICT DO UPDATE, %d connections | %s | %.2f | | | %.2f (client) | |\n",
			o.lanes, thousands(u), u/ceiling, r.perMillion(r.upsertBase.clientCPU, o.records))
	}
	if r.upsert != nil {
		row(fmt.Sprintf("upsert (× upsert baseline: %.2f)", r.upsert.sustainedRate()/r.upsertBase.rate(o.records)), r.upsert)
	}
	if r.exactly != nil {
		row(fmt.Sprintf("insert, exactly-once (× at-least-once: %.2f)", r.exactly.sustainedRate()/r.insert.sustainedRate()), r.exactly)
	}
	p("\nThe ceiling is the mean of its two runs, %s rows/s. ", thousands(ceiling))
	p("Peak RSS is VmHWM when the lag reached 0; the formula is the README's for the run's configuration,\n%s.\n\n", r.insert.boundExpr)

	p("### Aims (issue #8)\n\n| aim | this run | |\n| --- | --- | --- |\n")
	for _, a := range r.aims() {
		p("| %s | %s | %s |\n", a.what, a.measured, verdict(a.met))
	}
	p("\n")

	if l := r.latency; l != nil {
		p("### End-to-end latency at half load\n\n")
		p("sluice in insert mode on a second, empty topic, fed by a producer at a fixed %s records/s (asked %s: half the insert\n",
			thousands(l.achieved), thousands(l.target))
		p("run's rate) for %s, %s records. Latency is each record's timestamp (set by the producer as it hands the record\n", secs(l.duration), thousands(float64(l.produced)))
		p("to its client) to the commit of the PostgreSQL transaction that wrote its row, taken as the `clock_timestamp()` of\n")
		p("that transaction's last inserted row (the commit follows within the same write; `synchronous_commit` is off on the test server).\n\n")
		p("| p50 | p99 | max | transactions | median batch write (table / sluice's histogram) | sink.batch.linger | aim: linger + 3 × median write |\n")
		p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		p("| %s | %s | %s | %s (%.0f rows each) | %s / %s | %s | %s: %s |\n\n", ms(l.p50), ms(l.p99), ms(l.max),
			thousands(float64(l.transactions)), float64(l.produced)/float64(max(l.transactions, 1)), ms(l.medianWrite), ms(l.medianWriteHist),
			ms(l.linger), ms(l.bound()), verdict(l.p99 <= l.bound()))
		p("sluice's CPU over the latency run: %.2f s per million rows; peak RSS %.0f MiB.\n\n", r.perMillion(l.run.cpu, l.produced), mibF(l.run.hwm))
	}

	if r.plotPath != "" {
		p("## Throughput and buffer use over the insert run\n\n![sluice insert run](%s)\n\n", r.plotPath)
	}

	p("## Where sluice's time goes\n\n")
	p("| | insert | upsert | exactly-once |\n| --- | ---: | ---: | ---: |\n")
	runs := []*sluiceResult{r.insert, r.upsert, r.exactly}
	cell := func(f func(s *sluiceResult) string) string {
		var c []string
		for _, s := range runs {
			if s == nil {
				c = append(c, "")
			} else {
				c = append(c, f(s))
			}
		}
		return strings.Join(c, " | ")
	}
	p("| process start to the first row written (start-up, group join, first fetch) | %s |\n", cell(func(s *sluiceResult) string { return secs(s.firstWrite) }))
	p("| first to last row written | %s |\n", cell(func(s *sluiceResult) string { return secs(s.allWritten - s.firstWrite) }))
	p("| last row written to committed lag 0 (commit.interval %s) | %s |\n", def.Commit.Interval,
		cell(func(s *sluiceResult) string { return secs(max(0, s.elapsed-s.allWritten)) }))
	p("| batches written (rows each on average) | %s |\n", cell(func(s *sluiceResult) string {
		return fmt.Sprintf("%s (%.0f)", thousands(s.metrics.batches), s.metrics.batchRows/max(s.metrics.batches, 1))
	}))
	p("| mean sink write (one transaction) | %s |\n", cell(func(s *sluiceResult) string {
		return ms(time.Duration(s.metrics.writeSeconds / max(s.metrics.writes, 1) * float64(time.Second)))
	}))
	p("| lanes busy writing (write time / write phase / lanes) | %s |\n", cell(func(s *sluiceResult) string {
		w := s.allWritten - s.firstWrite
		if w <= 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f%%", 100*s.metrics.writeSeconds/w.Seconds()/float64(o.lanes))
	}))
	p("| gate: pauses, peak buffered | %s |\n", cell(func(s *sluiceResult) string {
		return fmt.Sprintf("%d, %.1f MiB", s.status.Buffer.Pauses, mibF(s.status.Buffer.PeakBytes))
	}))
	p("| sluice CPU at lag 0, share of one CPU over the run | %s |\n", cell(func(s *sluiceResult) string {
		return fmt.Sprintf("%.2f s, %.0f%%", s.cpu.Seconds(), 100*s.cpu.Seconds()/s.elapsed.Seconds())
	}))
	p("| machine busy over the run | %s |\n", cell(func(s *sluiceResult) string { return fmt.Sprintf("%.0f%%", 100*s.phase.hostBusyShare()) }))
	p("| dead-lettered, log lines at warn or above, exit code, SIGTERM to exit | %s |\n", cell(func(s *sluiceResult) string {
		return fmt.Sprintf("%d, %d, %d, %s", s.status.DeadLettered, s.logWarnings, s.exitCode, secs(s.shutdown))
	}))
	p("\nPartitions per lane (flow's routing of the topic's partitions): %s.\n\n", joinInts(r.lanes))

	p("CPU by phase (seconds; the machine has %d CPUs, so %d CPU-seconds per second of wall time):\n\n", r.machine.cpus, r.machine.cpus)
	p("| phase | wall | machine busy | PostgreSQL | Kafka broker | bench client / sluice | all three per M rows |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	prow := func(name string, c phaseCPU, own time.Duration) {
		pg, k, all := "n/a", "n/a", "n/a"
		if r.watched {
			pg, k = fmt.Sprintf("%.2f", c.pg.Seconds()), fmt.Sprintf("%.2f", c.kafka.Seconds())
			all = fmt.Sprintf("%.2f", r.perMillion(c.pg+c.kafka+own, o.records))
		}
		p("| %s | %s | %.0f%% | %s | %s | %.2f | %s |\n", name, secs(c.wall), 100*c.hostBusyShare(), pg, k, own.Seconds(), all)
	}
	for i, c := range r.ceilings {
		prow(fmt.Sprintf("ceiling %d", i+1), c.cpu, c.clientCPU)
	}
	if r.naive.elapsed > 0 {
		prow("naive", r.naive.phase, r.naive.cpu)
	}
	for _, s := range runs {
		if s != nil {
			prow("sluice "+string(s.mode), s.phase, s.cpu)
		}
	}
	if r.upsertBase.elapsed > 0 {
		prow("upsert baseline", r.upsertBase.cpu, r.upsertBase.clientCPU)
	}
	p("\nThe servers' figures include their background work during the phase, which grows with its length.\n\n")
	r.writeCPULimits(p, o)

	p("Check: every sluice table holds %s rows, one per record, and sum(id) and sum(amount) match what was produced:", thousands(float64(o.records)))
	for _, s := range runs {
		if s != nil {
			ok := s.check.sumID == r.wantIDs && s.check.cents == r.wantCents
			p(" %s %v;", s.mode, ok)
		}
	}
	p(" the naive baseline's too: %v.\n\n", r.naive.elapsed == 0 || r.naive.check.sumID == r.wantIDs && r.naive.check.cents == r.wantCents)

	p("## How to read this\n\n")
	p("The machines these numbers come from are shared and noisy, so no figure here is meant to be compared across\n")
	p("runs or machines; what carries over is the ratio to the baselines measured minutes apart in the same run.\n")
	p("The ceiling is the fastest plain way to put the same rows into the same table with pgx: rows already built in memory\n")
	p("with pgx's own types (`pgtype.Numeric` for the amount), binary COPY over as many connections as sluice has lanes,\n")
	p("each an equal share, one transaction per batch. The naive baseline is the loop people write first: one goroutine,\n")
	p("franz-go's defaults, `PollFetches`, `encoding/json` into a struct, one `CopyFrom` per poll, `CommitRecords`.\n")
	p("sluice's runs read and decode every record from Kafka, map the JSON to typed columns and commit offsets, in\n")
	p("their own process; CPU seconds per million rows count that process alone (utime + stime from /proc).\n\n")
	if !r.settled {
		p("(PostgreSQL refused CHECKPOINT between the phases, so a checkpoint caused by one phase may have landed in the next.)\n\n")
	}

	p("## Configuration sluice ran with (insert run)\n\n")
	p("```yaml\n%s```\n", r.insert.config)
	p("\nThe upsert run adds `mode: upsert` and `key_columns: [id]`, the exactly-once run `delivery: exactly-once` and an\n`offsets_table`, the latency run `produced_at: $timestamp` to the columns.\n")
	if len(o.set) > 0 {
		p("\nwith these overrides in its environment: `%s`\n", o.set)
	}
	return b.String()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mibF(b int64) float64 { return float64(b) / (1 << 20) }

func mib(b int64) string {
	if b%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%.1f MiB", mibF(b))
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ", ")
}

// writeCPULimits says what the machine's CPUs allow each ratio aim to reach:
// sluice, PostgreSQL and the broker share them, so a run cannot go faster than
// all the CPUs divided by the CPU its three processes spend per row, and a
// baseline likewise. The ratio of the two limits is the best ratio this
// machine allows, whatever sluice's pipelining.
func (r *results) writeCPULimits(p func(string, ...any), o options) {
	if !r.watched {
		return
	}
	perM := func(c phaseCPU, own time.Duration) float64 { return r.perMillion(c.pg+c.kafka+own, o.records) }
	limit := func(perM float64) float64 { return float64(r.machine.cpus) * 1e6 / perM }
	type line struct {
		what     string
		sluice   float64 // CPU-s per M rows, all three processes
		base     float64
		aim, got float64
	}
	var lines []line
	if r.insert != nil && len(r.ceilings) > 0 {
		var base float64
		for _, c := range r.ceilings {
			base += perM(c.cpu, c.clientCPU) / float64(len(r.ceilings))
		}
		lines = append(lines, line{"insert / ceiling", perM(r.insert.phase, r.insert.cpu), base, aimCeiling, r.insert.sustainedRate() / r.ceilingRate()})
	}
	if r.upsert != nil && r.upsertBase.elapsed > 0 {
		lines = append(lines, line{"upsert / upsert baseline", perM(r.upsert.phase, r.upsert.cpu), perM(r.upsertBase.cpu, r.upsertBase.clientCPU),
			aimUpsert, r.upsert.sustainedRate() / r.upsertBase.rate(o.records)})
	}
	if len(lines) == 0 {
		return
	}
	p("What the CPUs allow: the three processes share the machine's %d CPUs, so no run can write faster than %d CPU-seconds\n", r.machine.cpus, r.machine.cpus)
	p("per second divided by the CPU they spend per row, and the ratio of two such limits is the best ratio this machine allows:\n\n")
	p("| ratio | CPU s per M rows, sluice's run (all three) | the baseline's | limit of sluice's run | limit of the baseline | best ratio the CPUs allow | measured | aim |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, l := range lines {
		p("| %s | %.2f | %.2f | %s rows/s | %s rows/s | %.2f | %.2f | %.2f |\n", l.what, l.sluice, l.base,
			thousands(limit(l.sluice)), thousands(limit(l.base)), l.base/l.sluice, l.got, l.aim)
	}
	p("\nAn aim above the best ratio cannot be met on this machine by any scheduling; it needs sluice to spend less CPU per row\n")
	p("(it decodes Kafka's records and maps JSON, which the baselines do not), or PostgreSQL on CPUs of its own, as in production.\n\n")
}
