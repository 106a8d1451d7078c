// Package plan sizes a sluice deployment. From the input rate, the record
// size, the lag an operator tolerates and the throughput one replica was
// measured to write, Plan derives the replicas and partitions, the KEDA
// settings, the lag budget, and the flow budget with the memory it costs per
// replica (config.MemoryBound, the README's formula). docs/capacity.md
// explains the formulas with a worked example.
//
// It is arithmetic only: no I/O and no state. Plan is safe for concurrent use
// and does not modify the Config it is given.
package plan

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// Defaults for the optional fields of Input.
const (
	// DefaultHeadroom is the share of capacity planned above the input rate:
	// 1.5 keeps every replica at most two-thirds busy, for bursts and for
	// draining a backlog.
	DefaultHeadroom = 1.5
	// DefaultScaleOut is how many times the steady-state replica count KEDA
	// may scale to when lag builds up; the planned partition count is
	// replicas × ScaleOut, since KEDA never scales past the partitions.
	DefaultScaleOut = 2
)

// Never is Output.CatchUp and Output.CatchUpAtMax when the replicas have no
// capacity to spare over the input rate: a backlog never drains.
const Never time.Duration = -1

// Input is what an operator knows about a pipeline.
type Input struct {
	// RecordBytes is the average size of a record as sluice counts it
	// against flow.max_buffered_bytes: key + value + headers + topic name,
	// uncompressed. Required.
	RecordBytes int64
	// MaxRecordBytes is the largest record, for the memory formula's poll
	// term (kafka.max_poll_records × the largest record). 0 means
	// RecordBytes.
	MaxRecordBytes int64
	// Rate is the records per second produced to the topics at peak. Required.
	Rate float64
	// Lag is the lag tolerated: how far behind the sink may fall, in time.
	// Required.
	Lag time.Duration
	// ReplicaThroughput is the records per second one replica writes when it
	// is never short of input, measured on the real sink (sluice demo, the
	// benchmark, or sluice_records_written_total of a replica with lag).
	// Required.
	ReplicaThroughput float64
	// Headroom multiplies the rate before dividing it among replicas; at
	// least 1. 0 means DefaultHeadroom.
	Headroom float64
	// Partitions is the partition count of an existing topic (the sum over
	// the topics); 0 plans it.
	Partitions int
	// ScaleOut is the factor by which KEDA may scale beyond the steady state
	// when lag builds; at least 1. 0 means DefaultScaleOut. Used only when
	// Partitions is 0.
	ScaleOut int
	// Config holds the current settings (kafka fetch and poll limits,
	// flow.resume_at, sink.concurrency and batch size, flow budget) the
	// budgets and the memory start from. nil means config.Default().
	Config *config.Config
}

// Output is the plan. The formulas are those of docs/capacity.md.
type Output struct {
	// In is the Input planned, its defaults filled in (MaxRecordBytes,
	// Headroom, ScaleOut, Config).
	In Input

	// Replicas is the steady-state replica count, ceil(Rate × Headroom /
	// ReplicaThroughput), raised when an existing partition count divides
	// unevenly (see MinReplicas). KEDA's minReplicaCount.
	Replicas int
	// MinReplicas is ceil(Rate × Headroom / ReplicaThroughput), the count
	// before any adjustment for uneven partitions.
	MinReplicas int
	// Partitions is Input.Partitions when that can carry the rate, else
	// Replicas × ScaleOut. It is KEDA's maxReplicaCount: a replica beyond
	// the partition count gets no partition.
	Partitions int
	// PartitionsPerReplica is the most partitions one replica holds at
	// Replicas, ceil(Partitions / Replicas).
	PartitionsPerReplica int
	// BusiestReplicaLoad is the records per second, headroom included, of
	// the replica with the most partitions: Rate × Headroom / Partitions ×
	// PartitionsPerReplica. At most ReplicaThroughput.
	BusiestReplicaLoad float64
	// Capacity is Replicas × ReplicaThroughput, records per second.
	Capacity float64

	// LagRows is the lag budget in records: Rate × Lag seconds, rounded up.
	LagRows int64
	// LagBytes is LagRows × RecordBytes: what Kafka must retain beyond the
	// committed offsets while sluice is that far behind.
	LagBytes int64
	// LagThreshold is KEDA's lagThreshold: LagRows / Partitions (at least
	// 1), so that KEDA reaches maxReplicaCount when the lag reaches the
	// budget.
	LagThreshold int64
	// ActivationLagThreshold is KEDA's activationLagThreshold: the partition
	// count, since a fully read transactional topic still lags 1 per
	// partition.
	ActivationLagThreshold int64
	// CatchUp is how long Replicas take to drain a full lag budget while
	// the input goes on: LagRows / (Capacity - Rate). Never when Capacity
	// does not exceed Rate.
	CatchUp time.Duration
	// CatchUpAtMax is CatchUp with one replica per partition.
	CatchUpAtMax time.Duration

	// Current is the flow budget of Input.Config and its memory bound.
	Current Budget
	// Planned is the flow budget this plan proposes and its memory bound,
	// every other setting taken from Input.Config.
	Planned Budget
	// RecordsForResume and RecordsForBatches are the two lower bounds
	// Planned.MaxBufferedRecords is the larger of: ceil(ReplicaThroughput ×
	// kafka.fetch_max_wait / flow.resume_at), the records a replica writes
	// while a resumed partition's first fetch arrives, and
	// sink.concurrency × sink.batch.max_records + kafka.max_poll_records,
	// a full batch in every lane and one poll. Planned.MaxBufferedBytes is
	// Planned.MaxBufferedRecords × RecordBytes rounded up to a MiB, and at
	// least sink.batch.max_bytes (a batch must be able to fill).
	RecordsForResume, RecordsForBatches int

	// Warnings say where the input cannot be met as given (too few
	// partitions) or leaves no room (no scale-out, no spare capacity).
	Warnings []string
}

// Budget is a flow budget and what a replica needs with it.
type Budget struct {
	MaxBufferedRecords int
	MaxBufferedBytes   config.ByteSize
	// Memory is config.MemoryBound for the configuration with this budget
	// and records of Input.MaxRecordBytes.
	Memory config.ByteSize
}

// InputError is an Input that cannot be planned. Field is the name of the
// Input field (RecordBytes, Rate, ...), Reason what is wrong with it.
type InputError struct {
	Field  string
	Reason string
}

func (e *InputError) Error() string { return e.Field + ": " + e.Reason }

// Plan sizes the deployment for in. It returns an *InputError when a field is
// missing or out of range, or when the figures overflow.
func Plan(in Input) (Output, error) {
	if err := in.defaults(); err != nil {
		return Output{}, err
	}
	cfg := in.Config
	out := Output{In: in}

	// Replicas: enough capacity for the rate with headroom.
	load := in.Rate * in.Headroom
	minRep := ceil(load / in.ReplicaThroughput)
	out.MinReplicas = minRep

	perPartition := 0.0
	switch {
	case in.Partitions > 0 && load/float64(in.Partitions) <= in.ReplicaThroughput*(1+eps):
		// An existing topic that can carry the load with one replica per
		// partition: the fewest replicas whose busiest member (the one with
		// ceil(P/R) partitions) stays within its throughput.
		out.Partitions = in.Partitions
		perPartition = load / float64(in.Partitions)
		out.Replicas = in.Partitions
		for r := minRep; r <= in.Partitions; r++ {
			if float64(ceilDiv(in.Partitions, r))*perPartition <= in.ReplicaThroughput*(1+eps) {
				out.Replicas = r
				break
			}
		}
		if out.Replicas > minRep {
			out.Warnings = append(out.Warnings, fmt.Sprintf(
				"%d partitions do not divide evenly among %d replicas: one would hold %d partitions (%s records/s, more than %s); %d replicas are needed",
				in.Partitions, minRep, ceilDiv(in.Partitions, minRep), num(float64(ceilDiv(in.Partitions, minRep))*perPartition),
				num(in.ReplicaThroughput), out.Replicas))
		}
	default:
		if in.Partitions > 0 {
			out.Warnings = append(out.Warnings, fmt.Sprintf(
				"the topic's %d partitions cannot carry %s records/s: at most %d replicas consume it, %s records/s; it needs at least %d partitions, and this plan assumes %d",
				in.Partitions, num(load), in.Partitions, num(float64(in.Partitions)*in.ReplicaThroughput), minRep, minRep*in.ScaleOut))
		}
		out.Replicas = minRep
		out.Partitions = minRep * in.ScaleOut
		perPartition = load / float64(out.Partitions)
	}
	if out.Replicas == out.Partitions {
		out.Warnings = append(out.Warnings, fmt.Sprintf(
			"%d partitions leave KEDA no room above %d replicas: a backlog drains only at their capacity",
			out.Partitions, out.Replicas))
	}
	out.PartitionsPerReplica = ceilDiv(out.Partitions, out.Replicas)
	out.BusiestReplicaLoad = float64(out.PartitionsPerReplica) * perPartition
	out.Capacity = float64(out.Replicas) * in.ReplicaThroughput

	// Lag budget, and KEDA's thresholds over it.
	rows := up(in.Rate * in.Lag.Seconds())
	if rows*float64(in.RecordBytes) >= math.MaxInt64/2 {
		return Output{}, &InputError{Field: "Lag", Reason: "the lag budget in bytes (rate × lag × record size) does not fit in 64 bits"}
	}
	out.LagRows = int64(rows)
	out.LagBytes = out.LagRows * in.RecordBytes
	out.LagThreshold = max(1, out.LagRows/int64(out.Partitions))
	out.ActivationLagThreshold = int64(out.Partitions)
	out.CatchUp = drain(out.LagRows, out.Capacity-in.Rate)
	out.CatchUpAtMax = drain(out.LagRows, float64(out.Partitions)*in.ReplicaThroughput-in.Rate)
	if out.CatchUp == Never {
		out.Warnings = append(out.Warnings, fmt.Sprintf(
			"%d replicas write exactly the input rate: a backlog never drains without KEDA adding replicas; raise the headroom above 1",
			out.Replicas))
	}

	// The flow budget: room to keep the writers busy across a resume, and
	// a full batch in every lane.
	if fw := cfg.Kafka.FetchMaxWait.Seconds(); fw > 0 {
		out.RecordsForResume = ceil(in.ReplicaThroughput * fw / cfg.Flow.ResumeAt)
	}
	out.RecordsForBatches = cfg.Sink.Concurrency*cfg.Sink.Batch.MaxRecords + cfg.Kafka.MaxPollRecords
	planned := *cfg
	planned.Flow.MaxBufferedRecords = max(out.RecordsForResume, out.RecordsForBatches)
	planned.Flow.MaxBufferedBytes = max(roundUp(config.ByteSize(planned.Flow.MaxBufferedRecords)*config.ByteSize(in.RecordBytes), config.MiB),
		cfg.Sink.Batch.MaxBytes)
	// A planned budget that sluice validate would reject (a rule this
	// package does not know) is reported, not silently proposed.
	had := budgetProblems(cfg)
	for _, p := range budgetProblems(&planned) {
		if !slices.Contains(had, p) {
			out.Warnings = append(out.Warnings, "the planned budget fails sluice validate: "+p)
		}
	}
	largest := config.ByteSize(in.MaxRecordBytes)
	out.Current = Budget{MaxBufferedRecords: cfg.Flow.MaxBufferedRecords, MaxBufferedBytes: cfg.Flow.MaxBufferedBytes,
		Memory: config.MemoryBound(cfg, largest)}
	out.Planned = Budget{MaxBufferedRecords: planned.Flow.MaxBufferedRecords, MaxBufferedBytes: planned.Flow.MaxBufferedBytes,
		Memory: config.MemoryBound(&planned, largest)}
	return out, nil
}

// budgetProblems returns what Validate finds wrong with c's flow and batch
// settings, the ones a plan changes or depends on.
func budgetProblems(c *config.Config) []string {
	var ve *config.ValidationError
	if !errors.As(c.Validate(), &ve) {
		return nil
	}
	var out []string
	for _, p := range ve.Problems {
		if strings.HasPrefix(p.Path, "flow.") || strings.HasPrefix(p.Path, "sink.batch.") {
			out = append(out, p.String())
		}
	}
	return out
}

// eps is the relative floating-point error forgiven when rounding up, so
// that 2.0000000000000004 replicas are 2.
const eps = 1e-12

// maxRecordBytes bounds the record sizes: far above any Kafka's
// message.max.bytes, low enough that the byte figures cannot overflow.
const maxRecordBytes = 1 << 30

// defaults fills the optional fields and checks the rest.
func (in *Input) defaults() error {
	positive := func(field string, v float64, what string) error {
		if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			return &InputError{Field: field, Reason: fmt.Sprintf("is %v; want %s, more than 0", v, what)}
		}
		return nil
	}
	if in.RecordBytes <= 0 || in.RecordBytes > maxRecordBytes {
		return &InputError{Field: "RecordBytes", Reason: fmt.Sprintf("is %d; want the average record size in bytes, more than 0 and at most 1GiB", in.RecordBytes)}
	}
	if in.MaxRecordBytes == 0 {
		in.MaxRecordBytes = in.RecordBytes
	}
	if in.MaxRecordBytes < in.RecordBytes || in.MaxRecordBytes > maxRecordBytes {
		return &InputError{Field: "MaxRecordBytes", Reason: fmt.Sprintf("is %d; want the largest record size, at least the average record size %d and at most 1GiB", in.MaxRecordBytes, in.RecordBytes)}
	}
	if err := positive("Rate", in.Rate, "the input rate in records per second"); err != nil {
		return err
	}
	if in.Lag <= 0 {
		return &InputError{Field: "Lag", Reason: fmt.Sprintf("is %v; want the tolerated lag, more than 0", in.Lag)}
	}
	if err := positive("ReplicaThroughput", in.ReplicaThroughput, "the records per second one replica writes"); err != nil {
		return err
	}
	if in.Headroom == 0 {
		in.Headroom = DefaultHeadroom
	}
	if math.IsNaN(in.Headroom) || math.IsInf(in.Headroom, 0) || in.Headroom < 1 {
		return &InputError{Field: "Headroom", Reason: fmt.Sprintf("is %v; want at least 1 (1.5 plans a third of the capacity spare)", in.Headroom)}
	}
	if in.Partitions < 0 || in.Partitions > 1_000_000 {
		return &InputError{Field: "Partitions", Reason: fmt.Sprintf("is %d; want the topic's partition count (at most a million), or 0 to plan it", in.Partitions)}
	}
	if in.ScaleOut == 0 {
		in.ScaleOut = DefaultScaleOut
	}
	if in.ScaleOut < 1 || in.ScaleOut > 1000 {
		return &InputError{Field: "ScaleOut", Reason: fmt.Sprintf("is %d; want at least 1 and at most 1000", in.ScaleOut)}
	}
	if in.Config == nil {
		in.Config = config.Default()
	}
	if in.Rate*in.Headroom/in.ReplicaThroughput > 1e6 {
		return &InputError{Field: "ReplicaThroughput", Reason: "asks for more than a million replicas; check the units (records per second)"}
	}
	c := in.Config
	if !(c.Flow.ResumeAt > 0 && c.Flow.ResumeAt < 1) || c.Sink.Concurrency < 1 || c.Sink.Batch.MaxRecords < 1 || c.Kafka.MaxPollRecords < 1 {
		return &InputError{Field: "Config", Reason: "flow.resume_at, sink.concurrency, sink.batch.max_records or kafka.max_poll_records is out of range (sluice validate says which)"}
	}
	return nil
}

// ceil rounds x up to a whole number, forgiving floating-point error.
func ceil(x float64) int { return int(up(x)) }

// up is math.Ceil forgiving floating-point error.
func up(x float64) float64 { return math.Ceil(x - math.Abs(x)*eps) }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func roundUp(b, unit config.ByteSize) config.ByteSize { return (b + unit - 1) / unit * unit }

// drain is how long a backlog of rows takes to drain with spare records per
// second; Never without spare capacity. Whole seconds, rounded up.
func drain(rows int64, spare float64) time.Duration {
	if spare <= 0 {
		return Never
	}
	return time.Duration(up(float64(rows)/spare)) * time.Second
}

// num prints a rate for a warning: whole numbers with thousands separators
// (37,500), others with one decimal.
func num(v float64) string {
	if v != math.Trunc(v) || math.Abs(v) >= 1e15 {
		return fmt.Sprintf("%.1f", v)
	}
	s := fmt.Sprintf("%.0f", math.Abs(v))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if v < 0 {
		s = "-" + s
	}
	return s
}
