//go:build chaos

package chaos

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// figures are what a scenario measured, printed at its end (also when it
// failed) and gathered into docs/reliability.md by make chaos. A value of -1
// means "not measured by this scenario".
type figures struct {
	Scenario     string
	Case         string
	Result       string // PASS | FAIL | SKIP, set when the test ends
	Produced     int64
	Written      int64 // rows in the table (or the figure the scenario names in Notes)
	DeadLettered int64
	Duplicates   int64
	Lost         int64
	PeakRSS      int64
	RSSBound     int64
	Pauses       int64
	BreakerOpens int64
	Drain        time.Duration
	Notes        []string
	failures     []string
	Elapsed      time.Duration
	start        time.Time
}

// newFigures starts the figures of the running test; they are printed and
// filed when the test ends, whatever its outcome.
func newFigures(t *testing.T, scenario, tc string) *figures {
	f := &figures{Scenario: scenario, Case: tc, Produced: -1, Written: -1, DeadLettered: -1, Duplicates: -1,
		Lost: -1, PeakRSS: -1, RSSBound: -1, Pauses: -1, BreakerOpens: -1, Drain: -1, start: time.Now()}
	t.Cleanup(func() {
		f.Elapsed = time.Since(f.start)
		switch {
		case t.Skipped():
			f.Result = "SKIP"
			f.RSSBound = -1
		case t.Failed():
			f.Result = "FAIL"
			if len(f.failures) == 0 {
				f.failures = append(f.failures, "stopped early: see the test log")
			}
		default:
			f.Result = "PASS"
		}
		t.Logf("FIGURES %s", f.line())
		suite.report.add(f)
	})
	return f
}

// errorf fails the test, as t.Errorf, and files the reason with the figures.
func (f *figures) errorf(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	f.failures = append(f.failures, msg)
	t.Error(msg)
}

// note adds a free-form figure.
func (f *figures) note(format string, args ...any) {
	f.Notes = append(f.Notes, fmt.Sprintf(format, args...))
}

// fromLedger copies a ledger's counts.
func (f *figures) fromLedger(l *ledger) {
	f.Produced, f.Written, f.DeadLettered, f.Duplicates, f.Lost = l.produced, l.rows, l.dead, l.duplicates, l.lost
}

func (f *figures) name() string {
	if f.Case == "" {
		return f.Scenario
	}
	return f.Scenario + " / " + f.Case
}

func num(v int64) string {
	if v < 0 {
		return "–"
	}
	return thousands(v)
}

func rss(v int64) string {
	if v < 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(v)/(1<<20))
}

func dur(d time.Duration) string {
	if d < 0 {
		return "–"
	}
	return d.Round(100 * time.Millisecond).String()
}

// line is the figures on one line, for the test log.
func (f *figures) line() string {
	s := fmt.Sprintf("%s [%s]: produced %s, written %s, dead-lettered %s, duplicates %s, lost %s, peak RSS %s (bound %s), pauses %s, breaker opens %s, time to drain %s, took %s",
		f.name(), f.Result, num(f.Produced), num(f.Written), num(f.DeadLettered), num(f.Duplicates), num(f.Lost),
		rss(f.PeakRSS), rss(f.RSSBound), num(f.Pauses), num(f.BreakerOpens), dur(f.Drain), dur(f.Elapsed))
	if len(f.Notes) > 0 {
		s += "; " + strings.Join(f.Notes, "; ")
	}
	return s
}

// report gathers the figures of every scenario of the run.
type report struct {
	mu  sync.Mutex
	all []*figures
}

func (r *report) add(f *figures) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, f)
}

// write writes the figures as markdown: a table, the date and the machine.
// The file has two sections, the suite's (make chaos) and the soak's (make
// soak); a run rewrites the sections it has figures for and keeps the other
// as the file had it, so the soak's figures survive a make chaos and the
// other way round.
func (r *report) write(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var suiteFigs, soakFigs []*figures
	for _, f := range r.all {
		if f.Scenario == "soak" {
			soakFigs = append(soakFigs, f)
		} else {
			suiteFigs = append(suiteFigs, f)
		}
	}
	old, _ := os.ReadFile(path)
	suiteSec, soakSec := section(string(old), "suite"), section(string(old), "soak")
	if len(suiteFigs) > 0 {
		mode := "full (`make chaos`)"
		if testing.Short() {
			mode = "short subset (`go test -short`, as in `make test`)"
		}
		suiteSec = renderSection("suite", "Scenarios", mode, scenarioDescriptions, suiteFigs)
	}
	if len(soakFigs) > 0 {
		soakSec = renderSection("soak", "Soak", "`make soak`", soakDescription, soakFigs)
	}
	if suiteSec == "" {
		suiteSec = "<!-- suite:begin -->\n## Scenarios\n\nNo `make chaos` run recorded yet.\n<!-- suite:end -->\n"
	}
	if soakSec == "" {
		soakSec = "<!-- soak:begin -->\n## Soak\n\nNo `make soak` run recorded yet.\n<!-- soak:end -->\n"
	}
	var b strings.Builder
	b.WriteString("# Reliability\n\n")
	b.WriteString("Figures of sluice's reliability suite ([test/chaos](../test/chaos)): the built sluice binary, run as separate\n")
	b.WriteString("processes against a real Kafka broker and a real PostgreSQL server, while the suite kills it, stops its\n")
	b.WriteString("database or its broker, churns its consumer group, overloads it and feeds it poison. Generated by\n")
	b.WriteString("`make chaos` (the scenarios) and `make soak` (the soak); do not edit by hand.\n\n")
	b.WriteString("Lost = records of the topic that are neither in the table nor in the dead-letter topic; every scenario fails\n")
	b.WriteString("on any. Duplicates = rows beyond one per record (at-least-once redelivery; upsert tables have none by design).\n")
	b.WriteString("Peak RSS is the kernel's high-water mark (VmHWM) of the sluice process, against the README's memory formula\n")
	b.WriteString("for the scenario's configuration (the producers do not compress, so the formula applies); it is asserted in\n")
	b.WriteString("the overload scenario and reported elsewhere. – means not measured by that scenario.\n\n")
	b.WriteString(suiteSec)
	b.WriteString("\n")
	b.WriteString(soakSec)
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// section returns the section named name of a report, markers included, or "".
func section(doc, name string) string {
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return ""
	}
	return doc[i:j+len(end)] + "\n"
}

func renderSection(name, title, mode, description string, figs []*figures) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := readMachine()
	p("<!-- %s:begin -->\n## %s\n\n", name, title)
	p("- Date: %s\n", suite.started.UTC().Format("2006-01-02 15:04 MST"))
	p("- Machine: %d CPUs (%s), %.1f GiB memory, Linux %s; shared with other work, so times are indicative only\n",
		m.cpus, m.model, float64(m.memory)/(1<<30), m.kernel)
	p("- sluice: %s\n", suite.build)
	p("- Servers: Apache Kafka 4.4.0 (KRaft, one node) and PostgreSQL %s on 127.0.0.1: the test environment's\n", pgVersion())
	p("  (test/env/up.sh), or private ones for the scenarios that stop a server\n")
	p("- Run: %s, took %s\n\n", mode, time.Since(suite.started).Round(time.Second))
	p("%s\n", description)
	sort.SliceStable(figs, func(i, j int) bool { return rank(figs[i].Scenario) < rank(figs[j].Scenario) })
	p("| scenario | result | produced | written | dead-lettered | duplicates | lost | peak RSS (bound) | pauses | breaker opens | time to drain |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, f := range figs {
		peak := rss(f.PeakRSS)
		if f.RSSBound >= 0 {
			peak += " (" + rss(f.RSSBound) + ")"
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f.name(), f.Result, num(f.Produced), num(f.Written),
			num(f.DeadLettered), num(f.Duplicates), num(f.Lost), peak, num(f.Pauses), num(f.BreakerOpens), dur(f.Drain))
	}
	p("\n### Details\n\n")
	for _, f := range figs {
		p("- **%s** (%s, %s)", f.name(), f.Result, dur(f.Elapsed))
		if len(f.Notes) > 0 {
			p(": %s", strings.Join(f.Notes, "; "))
		}
		p("\n")
		for _, msg := range f.failures {
			p("  - failed: %s\n", msg)
		}
	}
	p("<!-- %s:end -->\n", name)
	return b.String()
}

// scenarioOrder is the order of the report's rows.
var scenarioOrder = []string{"crash", "sink outage", "broker restart", "group churn", "overload", "poison flood", "slow record", "soak"}

func rank(scenario string) int {
	for i, s := range scenarioOrder {
		if s == scenario {
			return i
		}
	}
	return len(scenarioOrder)
}

// scenarioDescriptions says what each scenario asserts, for the report.
const scenarioDescriptions = `What each scenario does and asserts (the test's comment has the details):

- **crash**: SIGKILL at random moments while 300,000 records are written, restarted each time (8 kills);
  after each kill no committed offset is ahead of the table; at the end nothing is missing (upsert: exactly
  one row per record; insert at-least-once: duplicates counted; insert exactly-once: no duplicate at all,
  skipped with the reason when sluice refuses exactly-once at start).
- **sink outage**: a private PostgreSQL stopped for 20 s under a steady producer: the breaker opens, every
  partition is paused while it is open, RSS flat during the outage, nothing in the DLQ topic, no loss, the
  lag drains (time reported).
- **broker restart**: a private Kafka broker stopped (SIGTERM) mid-stream for 15 s and started again: the
  same sluice process carries on, no loss, duplicates counted and held to the in-flight window.
- **group churn**: three processes in one group under load; one killed, one added, one stopped with SIGTERM
  (exit 0): every key of an upserted sequence ends at its last value and offset; the group is committed to
  the end.
- **overload**: a producer ten times faster than flow.rate_limit for 60 s: peak RSS within the README's
  formula, sluice_buffer_utilization_ratio never above 1, the backlog stays in Kafka; drained afterwards by a
  process without the limit (sluice reads its configuration at start only).
- **poison flood**: 5% bad records (malformed JSON, CHECK violations): exactly those in the DLQ topic with
  their reason, every good one in the table; good-record throughput at least 0.8 of a clean run in the same
  scenario (asserted in the full run only).
- **slow record**: records whose mapping takes several times flow.record_timeout (huge numerics; sluice has
  no hook to make a record hang): dead-lettered with reason timeout, their partitions move on, no loss.
`

// soakDescription says what the soak does and asserts, for the report.
const soakDescription = `The soak (make soak only, not in CI) measures sluice's maximum rate into a private PostgreSQL, then produces
at half that rate for 10 minutes while PostgreSQL is stopped for 5 s every minute; it asserts RSS and goroutine
count flat (first and last minute reported), no loss, nothing in the DLQ topic.
`

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "."
}

// pgVersionSeen is the server version a scenario read, for the report.
var pgVersionSeen struct {
	sync.Mutex
	v string
}

func notePGVersion(v string) {
	pgVersionSeen.Lock()
	defer pgVersionSeen.Unlock()
	if pgVersionSeen.v == "" {
		pgVersionSeen.v = v
	}
}

func pgVersion() string {
	pgVersionSeen.Lock()
	defer pgVersionSeen.Unlock()
	if pgVersionSeen.v == "" {
		return "(version not read)"
	}
	return pgVersionSeen.v
}

type machine struct {
	cpus   int
	model  string
	memory int64
	kernel string
}

func readMachine() machine {
	m := machine{cpus: runtime.NumCPU(), model: "unknown"}
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
				if f := strings.Fields(v); len(f) > 0 {
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

// thousands prints n with separators: 1234567 → 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
