package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// results is everything one run measured.
type results struct {
	opts    options
	command string
	started time.Time
	machine machine
	binary  string

	topic, group string
	lanes        []int // partitions per lane
	produce      produced
	ceilings     []ceilingResult
	sluice       sluiceResult
	check        tableCheck

	wantIDs, wantCents int64
	config             string
	bound              int64
	boundExpr          string
	commitInterval     time.Duration
	maxBufferedRecords int
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
		sum += rate(r.opts.records, c.elapsed)
	}
	return sum / float64(len(r.ceilings))
}

func (r *results) sluiceRate() float64 { return rate(r.opts.records, r.sluice.elapsed) }

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// perMillion is CPU seconds per million rows.
func (r *results) perMillion(cpu time.Duration) float64 {
	return cpu.Seconds() / (float64(r.opts.records) / 1e6)
}

func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o := r.opts
	ceiling, sl := r.ceilingRate(), r.sluiceRate()
	ratio := sl / ceiling
	verdict := "met"
	if ratio < aim {
		verdict = "not met"
	}

	p("# Benchmarks\n\n")
	p("sluice's insert-mode throughput from Kafka into PostgreSQL, next to the ceiling of a raw pgx `CopyFrom`\n")
	p("of the same rows, measured in one run by [test/bench](test/bench) (`make bench`).\n\n")
	p("- Date: %s\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	p("- Machine: %d CPUs (%s), %.1f GiB memory, Linux %s\n", r.machine.cpus, r.machine.model, float64(r.machine.memory)/(1<<30), r.machine.kernel)
	p("- Software: %s; sluice binary %s; PostgreSQL %s; Kafka: the test environment's broker (test/env/up.sh)\n",
		runtime.Version(), r.binary, r.machine.postgres)
	p("- Command: `%s`\n", r.command)
	p("- Workload: %s JSON orders of %.0f bytes on average (largest record %d bytes with its key), %d partitions, %s;\n",
		thousands(float64(o.records)), float64(r.produce.valueBytes)/float64(o.records), r.produce.maxRecord, o.partitions, r.produce.compression)
	p("  table `(id bigint, customer text, amount numeric(12,2), currency text, created_at timestamptz, kafka_partition int, kafka_offset bigint)`, no index\n\n")

	p("## Results\n\n")
	p("| run | rows/s | × ceiling | wall | CPU s per M rows | peak RSS |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	p("| produce: franz-go, 1 client, 5 ms linger | %s | | %s | | |\n", thousands(rate(o.records, r.produce.elapsed)), secs(r.produce.elapsed))
	for i, c := range r.ceilings {
		when := "before sluice"
		if i > 0 {
			when = "after sluice"
		}
		p("| ceiling: pgx CopyFrom, %d connections, %d-row transactions (%s) | %s | %.2f | %s | %.2f (client) | |\n",
			o.lanes, o.batch, when, thousands(rate(o.records, c.elapsed)), rate(o.records, c.elapsed)/ceiling, secs(c.elapsed), r.perMillion(c.clientCPU))
	}
	p("| **sluice** insert mode, %d lanes, %d-row batches, start to committed lag 0 | **%s** | **%.2f** | %s | %.2f | %.0f MiB (bound %.0f MiB) |\n\n",
		o.lanes, o.batch, thousands(sl), ratio, secs(r.sluice.elapsed), r.perMillion(r.sluice.cpu), mibF(r.sluice.hwm), mibF(r.bound))
	p("**sluice / ceiling = %.2f** (the ceiling is the mean of the two COPY runs, %s rows/s). ", ratio, thousands(ceiling))
	p("The aim is at least %.1f of the raw COPY rate: **%s in this run**.\n\n", aim, verdict)

	p("Memory: peak RSS %.1f MiB (VmHWM when the lag reached 0; highest VmRSS sampled every 100 ms %.1f MiB; VmHWM last read before exit, after the shutdown, %.1f MiB)\n",
		mibF(r.sluice.hwm), mibF(r.sluice.peakRSS), mibF(r.sluice.exitHWM))
	p("against the README's bound for this configuration, %s = %.1f MiB: %.0f%% of it.\n\n", r.boundExpr, mibF(r.bound), 100*float64(r.sluice.hwm)/float64(r.bound))

	p("Check: sluice's table holds %s rows, %s distinct (kafka_partition, kafka_offset) of %s records",
		thousands(float64(r.check.rows)), thousands(float64(r.check.distinct)), thousands(float64(o.records)))
	if r.check.sumID == r.wantIDs && r.check.cents == r.wantCents {
		p("; sum(id) and sum(amount) match what was produced.")
	} else {
		p("; sum(id) %d (want %d), sum(amount) %.2f (want %.2f).", r.check.sumID, r.wantIDs, float64(r.check.cents)/100, float64(r.wantCents)/100)
	}
	p(" sluice dead-lettered %d records, logged %d lines at warn or above, and exited %d %s after SIGTERM.\n\n",
		r.sluice.status.DeadLettered, r.sluice.logWarnings, r.sluice.exitCode, secs(r.sluice.shutdown))

	p("## Where sluice's time goes\n\n")
	s := r.sluice
	p("| | |\n| --- | --- |\n")
	if s.firstWrite > 0 && s.allWritten > 0 {
		write := s.allWritten - s.firstWrite
		p("| process start to the first row written (start-up, group join, first fetch) | %s |\n", secs(s.firstWrite))
		p("| first to last row written | %s: %s rows/s, %.2f × ceiling |\n", secs(write), thousands(rate(o.records, write)), rate(o.records, write)/ceiling)
		p("| last row written to committed lag 0 (commit.interval %s; both polled every 100 ms) | %s |\n", r.commitInterval, secs(max(0, s.elapsed-s.allWritten)))
	} else {
		p("| write phase | not measured: /status did not answer (%v) |\n", s.statusErr)
	}
	if m := s.metrics; m.ok {
		rowsPerBatch := m.batchRows / max(m.batches, 1)
		meanWrite := m.writeSeconds / m.writes
		p("| batches written | %s, %.0f rows each on average (batch.max_records %d, flow.max_buffered_records %d) |\n",
			thousands(m.batches), rowsPerBatch, o.batch, r.maxBufferedRecords)
		p("| mean sink write (one COPY transaction) | %.1f ms, so %s rows/s per lane while writing |\n",
			1000*meanWrite, thousands(rowsPerBatch/meanWrite))
		p("| lanes busy writing (sum of write time / write phase / lanes) | %s |\n", r.laneBusy())
		if m.writeErrors > 0 {
			p("| sink write errors | %.0f |\n", m.writeErrors)
		}
	}
	p("| partitions per lane (flow's routing of the topic's partitions) | %s |\n", joinInts(r.lanes))
	if need := o.lanes * o.batch; r.maxBufferedRecords < need {
		p("| note | flow.max_buffered_records (%d) is below lanes × batch.max_records (%d): the gate pauses before the lanes can fill their batches, so they flush on the linger timer instead |\n",
			r.maxBufferedRecords, need)
	}
	p("| gate | %d pauses, peak %.1f MiB buffered |\n", s.status.Buffer.Pauses, mibF(s.status.Buffer.PeakBytes))
	p("| sluice CPU | %.2f s at lag 0 (%.2f s at exit), %.0f%% of one CPU over the run |\n\n",
		s.cpu.Seconds(), s.cpuTotal.Seconds(), 100*s.cpu.Seconds()/s.elapsed.Seconds())

	p("CPU by phase (seconds; the machine has %d CPUs, so %d CPU-seconds per second of wall time):\n\n", r.machine.cpus, r.machine.cpus)
	p("| phase | wall | machine busy | PostgreSQL | Kafka broker | bench client / sluice |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	row := func(name string, c phaseCPU, own time.Duration) {
		pg, k := "n/a", "n/a"
		if r.watched {
			pg, k = fmt.Sprintf("%.2f", c.pg.Seconds()), fmt.Sprintf("%.2f", c.kafka.Seconds())
		}
		p("| %s | %s | %.0f%% | %s | %s | %.2f |\n", name, secs(c.wall), 100*c.hostBusyShare(), pg, k, own.Seconds())
	}
	for i, c := range r.ceilings {
		row(fmt.Sprintf("ceiling %d", i+1), c.cpu, c.clientCPU)
	}
	row("sluice", s.phase, s.cpu)
	p("\n")
	if r.watched && s.cpu > 0 {
		perRow := (s.cpu + s.phase.pg + s.phase.kafka).Seconds() / float64(o.records)
		limit := float64(r.machine.cpus) / perRow
		p("If CPU were the only limit: sluice, PostgreSQL and the broker used %.2f CPU-seconds per million rows together,\n", perRow*1e6)
		var ceilingCPU time.Duration
		for _, c := range r.ceilings {
			ceilingCPU += c.clientCPU + c.cpu.pg
		}
		ceilingPerM := ceilingCPU.Seconds() / float64(len(r.ceilings)) / (float64(o.records) / 1e6)
		p("so %d CPUs could carry about %s rows/s through sluice, %.2f × the ceiling. The ceiling's COPY used %.2f\n",
			r.machine.cpus, thousands(limit), limit/ceiling, ceilingPerM)
		p("CPU-seconds per million rows (bench client and PostgreSQL). The servers' figures include their background\n")
		p("work during the phase, which grows with its length, so a slow run overstates their cost per row.\n\n")
	}

	p("## How to read this\n\n")
	p("The machines these numbers come from are shared and noisy, so no figure here is meant to be compared across\n")
	p("runs or machines; what carries over is the ratio to the ceiling measured minutes apart in the same run. The\n")
	p("ceiling is the fastest way this client knows to put the same rows into the same table: rows already built in\n")
	p("memory, pgx's binary COPY over as many connections as sluice has lanes, each connection an equal share, one\n")
	p("transaction per %d rows. sluice's time runs from the start of its process to the moment the consumer group's\n", o.batch)
	p("committed lag is 0, so it includes start-up, joining the group, reading and decoding every record from Kafka,\n")
	p("mapping JSON to typed columns, and the wait for the last commit; it is the time an operator would see.\n")
	p("The two ceiling runs bracket sluice and show how much the machine drifted during the run. CPU seconds per\n")
	p("million rows count the sluice process alone (utime + stime from /proc); PostgreSQL's and the broker's share\n")
	p("of the machine is in the last table. The memory bound is the README's formula for the configuration below.\n\n")
	p("The aim (the throughput issue) is sluice at %.1f or more of the raw COPY rate. This run measured %.2f: the aim\n", aim, ratio)
	if ratio >= aim {
		p("was **met**.\n\n")
	} else {
		p("was **not met**.\n\n")
	}
	if !r.settled {
		p("(PostgreSQL refused CHECKPOINT between the phases, so a checkpoint caused by one phase may have landed in the next.)\n\n")
	}

	p("## Configuration sluice ran with\n\n")
	p("```yaml\n%s```\n", r.config)
	if len(o.set) > 0 {
		p("\nwith these overrides in its environment: `%s`\n", o.set)
	}
	return b.String()
}

// laneBusy is the share of the write phase the lanes spent writing.
func (r *results) laneBusy() string {
	s := r.sluice
	write := s.allWritten - s.firstWrite
	if write <= 0 || !s.metrics.ok {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%%", 100*s.metrics.writeSeconds/write.Seconds()/float64(r.opts.lanes))
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
