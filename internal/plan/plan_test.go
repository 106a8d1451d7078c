package plan

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// pinned is the configuration the cases plan against, spelled out so that
// the hand computations do not move with config.Default: kafka 500 records a
// poll, 2 fetches of 16 MiB, fetch_max_wait 500ms; flow 40000 records and
// 64 MiB, resume_at 0.5; sink 4 lanes of batches of 5000 records and 8 MiB.
// It is a complete configuration that passes Validate.
func pinned() *config.Config {
	c := config.Default()
	c.Kafka.Brokers, c.Kafka.Group, c.Kafka.Topics = []string{"kafka:9092"}, "orders-sink", []string{"orders"}
	c.Kafka.MaxPollRecords, c.Kafka.FetchMaxBytes, c.Kafka.MaxConcurrentFetches = 500, 16*config.MiB, 2
	c.Kafka.FetchMaxWait = 500 * time.Millisecond
	c.Flow.MaxBufferedRecords, c.Flow.MaxBufferedBytes, c.Flow.ResumeAt = 40000, 64*config.MiB, 0.5
	c.Sink.Type, c.Sink.Concurrency = config.SinkFile, 4
	c.Sink.Batch.MaxRecords, c.Sink.Batch.MaxBytes = 5000, 8*config.MiB
	c.DLQ.Topic = "orders-sink.dlq"
	return c
}

// Every case is worked out by hand in its comment, from the formulas of
// docs/capacity.md.
func TestPlan(t *testing.T) {
	if err := pinned().Validate(); err != nil {
		t.Fatalf("the pinned configuration is not valid: %v", err)
	}
	custom := pinned()
	custom.Kafka.FetchMaxWait = 200 * time.Millisecond
	custom.Kafka.MaxConcurrentFetches = 1
	custom.Kafka.MaxPollRecords = 1000
	custom.Flow.ResumeAt = 0.25
	custom.Flow.MaxBufferedRecords = 20000
	custom.Flow.MaxBufferedBytes = 32 * config.MiB
	custom.Sink.Concurrency = 8
	custom.Sink.Batch.MaxRecords = 2000
	custom.Sink.Batch.MaxBytes = 4 * config.MiB

	cases := []struct {
		name string
		in   Input
		want Output
		// warnings are substrings, one per expected warning, in order.
		warnings []string
	}{
		{
			// The README's example: 50,000 records/s of 200 B, a minute of lag,
			// 30,000 records/s a replica, headroom 1.5 (the default).
			//   replicas   = ceil(50000 × 1.5 / 30000) = ceil(2.5) = 3
			//   partitions = 3 × 2 = 6; 2 per replica, each 75000/6 = 12500/s → busiest 25000/s
			//   capacity   = 3 × 30000 = 90000/s
			//   lag rows   = 50000 × 60 = 3,000,000; bytes × 200 = 600,000,000
			//   lagThreshold = 3,000,000 / 6 = 500,000; activation = 6
			//   catch-up   = 3,000,000 / (90000 − 50000) = 75 s; at 6 replicas
			//                3,000,000 / (180000 − 50000) = 23.08 → 24 s
			//   budget     = max(ceil(30000 × 0.5 / 0.5), 4 × 5000 + 500) = max(30000, 20500) = 30000
			//                records; 30000 × 200 = 6,000,000 B → 6 MiB, raised to the batch's 8 MiB
			//   memory now = 64 + 2 × 16 + 2 × 64 MiB + 500 × 200 B = 224 MiB + 100,000 B = 234,981,024 B
			//   planned    = 64 + 2 × 16 + 2 × 8 MiB + 100,000 B = 112 MiB + 100,000 B = 117,540,512 B
			name: "readme example",
			in:   Input{RecordBytes: 200, Rate: 50000, Lag: time.Minute, ReplicaThroughput: 30000, Config: pinned()},
			want: Output{Replicas: 3, MinReplicas: 3, Partitions: 6, PartitionsPerReplica: 2, BusiestReplicaLoad: 25000,
				Capacity: 90000, LagRows: 3_000_000, LagBytes: 600_000_000, LagThreshold: 500_000, ActivationLagThreshold: 6,
				CatchUp: 75 * time.Second, CatchUpAtMax: 24 * time.Second,
				Current:          Budget{MaxBufferedRecords: 40000, MaxBufferedBytes: 64 * config.MiB, Memory: 234_981_024},
				Planned:          Budget{MaxBufferedRecords: 30000, MaxBufferedBytes: 8 * config.MiB, Memory: 117_540_512},
				RecordsForResume: 30000, RecordsForBatches: 20500},
		},
		{
			// The same on an existing topic of 4 partitions: 75000/4 = 18750/s a
			// partition, within one replica. 3 replicas: one holds ceil(4/3) = 2
			// partitions = 37500/s > 30000; 4 replicas: 1 each = 18750/s. So 4
			// replicas, no room to scale (4 = partitions).
			//   capacity 120000; lagThreshold 3,000,000 / 4 = 750,000; activation 4
			//   catch-up 3,000,000 / (120000 − 50000) = 42.86 → 43 s, the same at max
			name: "existing topic that divides unevenly",
			in:   Input{RecordBytes: 200, Rate: 50000, Lag: time.Minute, ReplicaThroughput: 30000, Partitions: 4, Config: pinned()},
			want: Output{Replicas: 4, MinReplicas: 3, Partitions: 4, PartitionsPerReplica: 1, BusiestReplicaLoad: 18750,
				Capacity: 120000, LagRows: 3_000_000, LagBytes: 600_000_000, LagThreshold: 750_000, ActivationLagThreshold: 4,
				CatchUp: 43 * time.Second, CatchUpAtMax: 43 * time.Second,
				Current:          Budget{MaxBufferedRecords: 40000, MaxBufferedBytes: 64 * config.MiB, Memory: 234_981_024},
				Planned:          Budget{MaxBufferedRecords: 30000, MaxBufferedBytes: 8 * config.MiB, Memory: 117_540_512},
				RecordsForResume: 30000, RecordsForBatches: 20500},
			warnings: []string{"do not divide evenly among 3 replicas", "no room above 4 replicas"},
		},
		{
			// An existing topic of 2 partitions: 75000/2 = 37500/s a partition,
			// more than one replica writes. The plan falls back to the planned
			// topic (3 replicas, 6 partitions: the first case) and says so.
			name: "existing topic with too few partitions",
			in:   Input{RecordBytes: 200, Rate: 50000, Lag: time.Minute, ReplicaThroughput: 30000, Partitions: 2, Config: pinned()},
			want: Output{Replicas: 3, MinReplicas: 3, Partitions: 6, PartitionsPerReplica: 2, BusiestReplicaLoad: 25000,
				Capacity: 90000, LagRows: 3_000_000, LagBytes: 600_000_000, LagThreshold: 500_000, ActivationLagThreshold: 6,
				CatchUp: 75 * time.Second, CatchUpAtMax: 24 * time.Second,
				Current:          Budget{MaxBufferedRecords: 40000, MaxBufferedBytes: 64 * config.MiB, Memory: 234_981_024},
				Planned:          Budget{MaxBufferedRecords: 30000, MaxBufferedBytes: 8 * config.MiB, Memory: 117_540_512},
				RecordsForResume: 30000, RecordsForBatches: 20500},
			warnings: []string{"2 partitions cannot carry 75,000 records/s"},
		},
		{
			// No headroom and no scale-out: 60000 × 1 / 30000 = 2 replicas exactly,
			// 2 × 1 = 2 partitions, capacity 60000 = the rate: nothing to spare.
			//   lag rows 60000 × 10 = 600,000; bytes × 1000 = 600,000,000; threshold 300,000
			//   budget max(30000, 20500) = 30000 records × 1000 B = 30,000,000 B → 28.6 → 29 MiB (above 8 MiB)
			//   memory now = 224 MiB + 500 × 1000 B = 234,881,024 + 500,000 = 235,381,024
			//   planned    = 64 + 32 + 58 MiB = 154 MiB + 500,000 = 161,480,704 + 500,000 = 161,980,704
			name: "no headroom, no spare capacity",
			in:   Input{RecordBytes: 1000, Rate: 60000, Lag: 10 * time.Second, ReplicaThroughput: 30000, Headroom: 1, ScaleOut: 1, Config: pinned()},
			want: Output{Replicas: 2, MinReplicas: 2, Partitions: 2, PartitionsPerReplica: 1, BusiestReplicaLoad: 30000,
				Capacity: 60000, LagRows: 600_000, LagBytes: 600_000_000, LagThreshold: 300_000, ActivationLagThreshold: 2,
				CatchUp: Never, CatchUpAtMax: Never,
				Current:          Budget{MaxBufferedRecords: 40000, MaxBufferedBytes: 64 * config.MiB, Memory: 235_381_024},
				Planned:          Budget{MaxBufferedRecords: 30000, MaxBufferedBytes: 29 * config.MiB, Memory: 161_980_704},
				RecordsForResume: 30000, RecordsForBatches: 20500},
			warnings: []string{"no room above 2 replicas", "never drains"},
		},
		{
			// Settings from a config file, a largest record of 4 KiB and headroom 2:
			//   replicas = ceil(4000 × 2 / 10000) = ceil(0.8) = 1; partitions 1 × 2 = 2,
			//   4000/s each → busiest (both) 8000/s; capacity 10000
			//   lag rows 4000 × 300 = 1,200,000; bytes × 512 = 614,400,000; threshold 600,000
			//   catch-up 1,200,000 / (10000 − 4000) = 200 s; at 2: / (20000 − 4000) = 75 s
			//   budget max(ceil(10000 × 0.2 / 0.25), 8 × 2000 + 1000) = max(8000, 17000) = 17000
			//          records × 512 = 8,704,000 B → 8.3 → 9 MiB (above the batch's 4 MiB)
			//   memory now = 64 + 1 × 16 + 2 × 32 MiB = 144 MiB + 1000 × 4096 B
			//              = 150,994,944 + 4,096,000 = 155,090,944
			//   planned    = 64 + 16 + 2 × 9 MiB = 98 MiB + 4,096,000 = 102,760,448 + 4,096,000 = 106,856,448
			name: "settings from a config",
			in: Input{RecordBytes: 512, MaxRecordBytes: 4096, Rate: 4000, Lag: 5 * time.Minute, ReplicaThroughput: 10000,
				Headroom: 2, Config: custom},
			want: Output{Replicas: 1, MinReplicas: 1, Partitions: 2, PartitionsPerReplica: 2, BusiestReplicaLoad: 8000,
				Capacity: 10000, LagRows: 1_200_000, LagBytes: 614_400_000, LagThreshold: 600_000, ActivationLagThreshold: 2,
				CatchUp: 200 * time.Second, CatchUpAtMax: 75 * time.Second,
				Current:          Budget{MaxBufferedRecords: 20000, MaxBufferedBytes: 32 * config.MiB, Memory: 155_090_944},
				Planned:          Budget{MaxBufferedRecords: 17000, MaxBufferedBytes: 9 * config.MiB, Memory: 106_856_448},
				RecordsForResume: 8000, RecordsForBatches: 17000},
		},
		{
			// Fractions: 1000.5 records/s for 1.5 s = 1500.75 → 1501 rows (rounded
			// up); × 100 B = 150,100. replicas ceil(1000.5 × 1.2 / 400) = ceil(3.0015)
			// = 4; partitions 8, 1200.6/8 = 150.075/s each, 2 per replica → 300.15;
			// threshold 1501 / 8 = 187 (integer division).
			//   capacity 1600; catch-up 1501 / (1600 − 1000.5) = 2.5 → 3 s;
			//   at 8: 1501 / (3200 − 1000.5) = 0.68 → 1 s
			//   budget max(ceil(400 × 0.5 / 0.5), 20500) = 20500 × 100 = 2,050,000 → 2 MiB, raised to 8 MiB
			//   memory now = 224 MiB + 500 × 100 = 234,881,024 + 50,000 = 234,931,024
			//   planned    = 64 + 32 + 16 MiB = 112 MiB + 50,000 = 117,440,512 + 50,000 = 117,490,512
			name: "fractions round up",
			in:   Input{RecordBytes: 100, Rate: 1000.5, Lag: 1500 * time.Millisecond, ReplicaThroughput: 400, Headroom: 1.2, Config: pinned()},
			want: Output{Replicas: 4, MinReplicas: 4, Partitions: 8, PartitionsPerReplica: 2, BusiestReplicaLoad: 300.15,
				Capacity: 1600, LagRows: 1501, LagBytes: 150_100, LagThreshold: 187, ActivationLagThreshold: 8,
				CatchUp: 3 * time.Second, CatchUpAtMax: time.Second,
				Current:          Budget{MaxBufferedRecords: 40000, MaxBufferedBytes: 64 * config.MiB, Memory: 234_931_024},
				Planned:          Budget{MaxBufferedRecords: 20500, MaxBufferedBytes: 8 * config.MiB, Memory: 117_490_512},
				RecordsForResume: 400, RecordsForBatches: 20500},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before config.Config
			if tc.in.Config != nil {
				before = *tc.in.Config
			}
			got, err := Plan(tc.in)
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			if len(got.Warnings) != len(tc.warnings) {
				t.Errorf("warnings %q, want %d containing %q", got.Warnings, len(tc.warnings), tc.warnings)
			} else {
				for i, w := range tc.warnings {
					if !strings.Contains(got.Warnings[i], w) {
						t.Errorf("warning %d = %q, want it to contain %q", i, got.Warnings[i], w)
					}
				}
			}
			if math.Abs(got.BusiestReplicaLoad-tc.want.BusiestReplicaLoad) > 1e-6 {
				t.Errorf("BusiestReplicaLoad = %v, want %v", got.BusiestReplicaLoad, tc.want.BusiestReplicaLoad)
			}
			got.In, got.Warnings, got.BusiestReplicaLoad, tc.want.BusiestReplicaLoad = Input{}, nil, 0, 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Plan =\n%+v\nwant\n%+v", got, tc.want)
			}
			if tc.in.Config != nil && !reflect.DeepEqual(*tc.in.Config, before) {
				t.Error("Plan modified the Config it was given")
			}
			// What the plan proposes, sluice accepts.
			planned := before
			planned.Flow.MaxBufferedRecords, planned.Flow.MaxBufferedBytes = got.Planned.MaxBufferedRecords, got.Planned.MaxBufferedBytes
			if err := planned.Validate(); err != nil {
				t.Errorf("the planned budget does not validate: %v", err)
			}
		})
	}
}

func TestPlanRejectsBadInput(t *testing.T) {
	ok := Input{RecordBytes: 200, Rate: 50000, Lag: time.Minute, ReplicaThroughput: 30000}
	badConfig := config.Default()
	badConfig.Flow.ResumeAt = 1
	cases := []struct {
		field string
		edit  func(*Input)
	}{
		{"RecordBytes", func(in *Input) { in.RecordBytes = 0 }},
		{"MaxRecordBytes", func(in *Input) { in.MaxRecordBytes = 100 }},
		{"Rate", func(in *Input) { in.Rate = -1 }},
		{"Rate", func(in *Input) { in.Rate = math.NaN() }},
		{"Rate", func(in *Input) { in.Rate = math.Inf(1) }},
		{"Lag", func(in *Input) { in.Lag = 0 }},
		{"ReplicaThroughput", func(in *Input) { in.ReplicaThroughput = 0 }},
		{"ReplicaThroughput", func(in *Input) { in.ReplicaThroughput = 0.001 }}, // 3.75e9 replicas: a unit mistake
		{"Headroom", func(in *Input) { in.Headroom = 0.9 }},
		{"Partitions", func(in *Input) { in.Partitions = -3 }},
		{"Partitions", func(in *Input) { in.Partitions = 2_000_000 }},
		{"ScaleOut", func(in *Input) { in.ScaleOut = -1 }},
		{"ScaleOut", func(in *Input) { in.ScaleOut = 1 << 40 }},
		{"RecordBytes", func(in *Input) { in.RecordBytes = 2 << 30 }},
		{"MaxRecordBytes", func(in *Input) { in.MaxRecordBytes = 2 << 30 }},
		{"Lag", func(in *Input) { in.RecordBytes, in.Lag = 1<<30, 100_000*time.Hour }}, // 1.9e22 bytes
		{"Config", func(in *Input) { in.Config = badConfig }},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			in := ok
			tc.edit(&in)
			_, err := Plan(in)
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("Plan = %v, want an *InputError", err)
			}
			if ie.Field != tc.field || ie.Reason == "" {
				t.Errorf("InputError{%q, %q}, want field %q and a reason", ie.Field, ie.Reason, tc.field)
			}
		})
	}
	if _, err := Plan(ok); err != nil {
		t.Errorf("the base input: %v", err)
	}
}

func TestPlanFillsDefaults(t *testing.T) {
	in := Input{RecordBytes: 200, Rate: 50000, Lag: time.Minute, ReplicaThroughput: 30000}
	got, err := Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	if got.In.Headroom != DefaultHeadroom || got.In.ScaleOut != DefaultScaleOut || got.In.MaxRecordBytes != 200 ||
		!reflect.DeepEqual(got.In.Config, config.Default()) {
		t.Errorf("In = %+v, want the defaults filled in", got.In)
	}
	if in.Config != nil || in.Headroom != 0 {
		t.Error("Plan changed the caller's Input")
	}
	// Explicit values are kept.
	in.Headroom, in.ScaleOut, in.MaxRecordBytes = 2, 3, 1000
	if got, _ := Plan(in); got.In.Headroom != 2 || got.In.ScaleOut != 3 || got.In.MaxRecordBytes != 1000 {
		t.Errorf("In = %+v, want the given values", got.In)
	}
}
