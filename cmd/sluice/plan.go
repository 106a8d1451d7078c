package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/plan"
)

// planFlags are the command line of `sluice plan`.
type planFlags struct {
	recordBytes    string
	maxRecordBytes string
	rate           float64
	lag            string
	throughput     float64
	headroom       float64
	partitions     int
	scaleOut       int
	config         string
}

// planFlagOf names the flag of each plan.Input field, for error messages.
var planFlagOf = map[string]string{
	"RecordBytes":       "--record-bytes",
	"MaxRecordBytes":    "--max-record-bytes",
	"Rate":              "--rate",
	"Lag":               "--lag",
	"ReplicaThroughput": "--replica-throughput",
	"Headroom":          "--headroom",
	"Partitions":        "--partitions",
	"ScaleOut":          "--scale-out",
	"Config":            "--config",
}

func planCmd() *cobra.Command {
	var f planFlags
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Size a deployment: replicas, partitions, KEDA thresholds, lag and flow budgets, memory per replica",
		Long: `plan is a calculator for the sizing docs/capacity.md explains. From the average record size, the
input rate at peak, the lag you tolerate and the throughput one replica was measured to write, it
prints the replicas and partitions needed, the lag budget in records and bytes, KEDA's
minReplicaCount, maxReplicaCount, lagThreshold and activationLagThreshold, and the flow budget
(flow.max_buffered_records, flow.max_buffered_bytes) with the memory per replica it costs by the
README's formula, next to the current settings (--config, or the defaults).

  replicas     = ceil(rate × headroom / replica throughput)
  partitions   = replicas × scale-out (or --partitions: the fewest replicas whose busiest member,
                 holding ceil(partitions / replicas) of them, stays within its throughput)
  lag budget   = rate × lag records, × record size bytes
  lagThreshold = lag budget / partitions

It reads nothing but --config and connects to nothing. Exit codes: 0 planned (warnings included);
1 the --config file is not valid; 2 the command line is wrong.`,
		Example: `  sluice plan --record-bytes 200 --rate 50000 --lag 60s --replica-throughput 30000
  sluice plan --record-bytes 1KiB --rate 8000 --lag 5m --replica-throughput 20000 --partitions 12 -c sluice.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, label, err := f.input()
			if err != nil {
				return err
			}
			out, err := plan.Plan(in)
			if err != nil {
				var ie *plan.InputError
				if errors.As(err, &ie) {
					if fl, ok := planFlagOf[ie.Field]; ok {
						return planUsage("%s: %s", fl, ie.Reason)
					}
				}
				return planUsage("%v", err)
			}
			return printPlan(cmd.OutOrStdout(), out, label)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.recordBytes, "record-bytes", "", "average record size as sluice counts it (key + value + headers + topic name, uncompressed): 200, 1KiB (required)")
	fl.StringVar(&f.maxRecordBytes, "max-record-bytes", "", "largest record size, for the memory formula's poll term (default: --record-bytes)")
	fl.Float64Var(&f.rate, "rate", 0, "records per second produced to the topics at peak (required)")
	fl.StringVar(&f.lag, "lag", "", "lag tolerated: a duration (60s, 5m) or seconds (required)")
	fl.Float64Var(&f.throughput, "replica-throughput", 0, "records per second one replica writes to the real sink when it has lag to work off (required)")
	fl.Float64Var(&f.headroom, "headroom", plan.DefaultHeadroom, "capacity planned per record of input: at least 1")
	fl.IntVar(&f.partitions, "partitions", 0, "the topic's partition count, when it exists (0: plan it)")
	fl.IntVar(&f.scaleOut, "scale-out", plan.DefaultScaleOut, "how many times the steady-state replicas KEDA may scale to on lag; partitions = replicas × this")
	fl.StringVarP(&f.config, "config", "c", "", "a sluice configuration file whose kafka, flow and sink settings the plan starts from (default: the defaults)")
	for _, name := range []string{"record-bytes", "rate", "lag", "replica-throughput"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func planUsage(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format+"\nRun 'sluice plan --help' for usage.", args...)}
}

// input turns the flags into a plan.Input; label names where the current
// settings come from.
func (f planFlags) input() (plan.Input, string, error) {
	in := plan.Input{Rate: f.rate, ReplicaThroughput: f.throughput, Headroom: f.headroom,
		Partitions: f.partitions, ScaleOut: f.scaleOut}
	b, err := config.ParseByteSize(f.recordBytes)
	if err != nil {
		return in, "", planUsage("--record-bytes: %v", err)
	}
	in.RecordBytes = int64(b)
	if f.maxRecordBytes != "" {
		b, err := config.ParseByteSize(f.maxRecordBytes)
		if err != nil {
			return in, "", planUsage("--max-record-bytes: %v", err)
		}
		if b == 0 {
			return in, "", planUsage("--max-record-bytes: is 0; want the largest record size, or leave it out")
		}
		in.MaxRecordBytes = int64(b)
	}
	if in.Lag, err = parseLag(f.lag); err != nil {
		return in, "", planUsage("--lag %q: %v", f.lag, err)
	}
	// A zero headroom or scale-out would silently mean the default in plan.
	if f.headroom == 0 {
		return in, "", planUsage("--headroom: is 0; want at least 1")
	}
	if f.scaleOut == 0 {
		return in, "", planUsage("--scale-out: is 0; want at least 1")
	}
	label := "defaults"
	if f.config != "" {
		cfg, err := config.Load(f.config)
		if err != nil {
			return in, "", &exitError{code: 1, err: fmt.Errorf("%s is not valid:\n%w", f.config, err)}
		}
		in.Config, label = cfg, f.config
	}
	return in, label, nil
}

// parseLag reads --lag: a Go duration, or a number of seconds.
func parseLag(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	secs, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(secs) || math.Abs(secs) > 1e9 {
		return 0, errors.New("want a duration such as 60s or 5m, or a number of seconds")
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// printPlan writes the plan as three tables: sizing, KEDA, and the flow
// budget with its memory, current against planned.
func printPlan(w io.Writer, p plan.Output, label string) error {
	in, cfg := p.In, p.In.Config
	lagSecs := strconv.FormatFloat(in.Lag.Seconds(), 'f', -1, 64) + "s"
	var b strings.Builder
	fmt.Fprintf(&b, "sluice plan: %s records/s of %s, %s of lag tolerated, %s records/s per replica, headroom %g\n\n",
		rate(in.Rate), bytesOf(in.RecordBytes), lagSecs, rate(in.ReplicaThroughput), in.Headroom)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	row("SIZING", "", "")
	load := in.Rate * in.Headroom
	how := fmt.Sprintf("ceil(%s × %g / %s) = ceil(%s) = %d", rate(in.Rate), in.Headroom, rate(in.ReplicaThroughput),
		strconv.FormatFloat(load/in.ReplicaThroughput, 'f', -1, 64), p.MinReplicas)
	if p.Replicas > p.MinReplicas {
		how += fmt.Sprintf(", raised to %d: the partitions divide unevenly", p.Replicas)
	}
	row("  replicas", strconv.Itoa(p.Replicas), how)
	if in.Partitions > 0 && in.Partitions == p.Partitions {
		row("  partitions", strconv.Itoa(p.Partitions), "the topic's (--partitions)")
	} else {
		row("  partitions", strconv.Itoa(p.Partitions), fmt.Sprintf("%d replicas × scale-out %d: KEDA never scales past the partition count", p.Replicas, in.ScaleOut))
	}
	row("  busiest replica", rate(p.BusiestReplicaLoad)+"/s", fmt.Sprintf("%d partition(s) of %s/s each, headroom included; it writes %s/s",
		p.PartitionsPerReplica, rate(load/float64(p.Partitions)), rate(in.ReplicaThroughput)))
	row("  capacity", rate(p.Capacity)+"/s", fmt.Sprintf("%d × %s/s = %.2f × the input rate", p.Replicas, rate(in.ReplicaThroughput), p.Capacity/in.Rate))
	row("  lag budget", thousands(p.LagRows)+" records", fmt.Sprintf("%s/s × %s; Kafka must retain it beyond the committed offsets", rate(in.Rate), lagSecs))
	row("", bytesOf(p.LagBytes), fmt.Sprintf("%s records × %s", thousands(p.LagRows), bytesOf(in.RecordBytes)))
	row("  catch-up of the budget", duration(p.CatchUp), fmt.Sprintf("at %d replicas: lag budget / (capacity − rate)", p.Replicas))
	row("", duration(p.CatchUpAtMax), fmt.Sprintf("at %d replicas (maxReplicaCount)", p.Partitions))
	row("", "", "")
	row("KEDA SCALEDOBJECT", "", "")
	row("  minReplicaCount", strconv.Itoa(p.Replicas), "the steady state; lower saves pods and holds a standing lag instead")
	row("  maxReplicaCount", strconv.Itoa(p.Partitions), "the partition count")
	row("  lagThreshold", strconv.Quote(strconv.FormatInt(p.LagThreshold, 10)), fmt.Sprintf("lag budget / %d: one replica per partition when the lag reaches the budget", p.Partitions))
	row("  activationLagThreshold", strconv.Quote(strconv.FormatInt(p.ActivationLagThreshold, 10)), "the partition count (a read transactional topic lags 1 per partition)")
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	row("FLOW BUDGET", "current ("+label+")", "planned", "")
	row("  flow.max_buffered_records", thousands(int64(p.Current.MaxBufferedRecords)), thousands(int64(p.Planned.MaxBufferedRecords)),
		fmt.Sprintf("max(%s/s × fetch_max_wait %s / resume_at %g, %d lanes × %s + %s poll) = max(%s, %s)",
			rate(in.ReplicaThroughput), cfg.Kafka.FetchMaxWait, cfg.Flow.ResumeAt, cfg.Sink.Concurrency,
			thousands(int64(cfg.Sink.Batch.MaxRecords)), thousands(int64(cfg.Kafka.MaxPollRecords)),
			thousands(int64(p.RecordsForResume)), thousands(int64(p.RecordsForBatches))))
	row("  flow.max_buffered_bytes", p.Current.MaxBufferedBytes.String(), p.Planned.MaxBufferedBytes.String(),
		fmt.Sprintf("max(%s records × %s rounded up to MiB, sink.batch.max_bytes %s)",
			thousands(int64(p.Planned.MaxBufferedRecords)), bytesOf(in.RecordBytes), cfg.Sink.Batch.MaxBytes))
	row("  memory per replica", bytesOf(int64(p.Current.Memory)), bytesOf(int64(p.Planned.Memory)),
		fmt.Sprintf("%s + %d × %s fetches + 2 × flow bytes + %s × %s (README)", config.RuntimeBaseline,
			cfg.Kafka.MaxConcurrentFetches, cfg.Kafka.FetchMaxBytes, thousands(int64(cfg.Kafka.MaxPollRecords)), bytesOf(in.MaxRecordBytes)))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(p.Warnings) > 0 {
		b.WriteString("\n")
	}
	for _, warn := range p.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", warn)
	}
	// The tables pad empty cells; drop the trailing blanks.
	for line := range strings.Lines(b.String()) {
		if _, err := fmt.Fprintln(w, strings.TrimRight(line, " \n")); err != nil {
			return err
		}
	}
	return nil
}

// rate prints records per second: whole numbers with separators, else one
// decimal.
func rate(v float64) string {
	if v == float64(int64(v)) {
		return thousands(int64(v))
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// bytesOf prints a size in the largest binary unit it reaches, with one
// decimal: 200 B, 5.7 MiB, 572.2 MiB.
func bytesOf(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func duration(d time.Duration) string {
	if d == plan.Never {
		return "never"
	}
	return d.String()
}
