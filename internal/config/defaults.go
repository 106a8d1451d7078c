package config

import "time"

// Default returns the configuration sluice uses for every key the file and the
// environment leave unset. The defaults are meant for production: bounded
// memory, at-least-once delivery, conservative timeouts. The keys without a
// default (kafka.brokers, kafka.group, kafka.topics, sink.type and the chosen
// sink's target) must be set; dlq.topic defaults to "<kafka.group>.dlq" at load.
func Default() *Config {
	return &Config{
		Kafka: Kafka{
			StartOffset:            StartEarliest,
			MaxPollRecords:         500,
			FetchMaxBytes:          16 * MiB,
			PartitionFetchMaxBytes: 512 * KiB,
			FetchMaxWait:           500 * time.Millisecond,
			MaxConcurrentFetches:   2,
			SessionTimeout:         45 * time.Second,
			RebalanceTimeout:       60 * time.Second,
			Balancer:               BalancerCooperativeSticky,
			ClientID:               "sluice",
		},
		Flow: Flow{
			MaxBufferedRecords: 40000,
			MaxBufferedBytes:   64 * MiB,
			MaxRecordBytes:     1 * MiB,
			ResumeAt:           0.5,
			Workers:            4,
			RecordTimeout:      30 * time.Second,
		},
		Sink: Sink{
			Concurrency:  4,
			Batch:        Batch{MaxRecords: 5000, MaxBytes: 8 * MiB, Linger: 200 * time.Millisecond},
			WriteTimeout: 30 * time.Second,
			Retry:        Retry{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second},
			Breaker:      Breaker{FailureThreshold: 5, OpenFor: 30 * time.Second, HalfOpenSuccesses: 3, HalfOpenShare: 0.05},
			Postgres:     Postgres{Mode: ModeInsert, Delivery: DeliveryAtLeastOnce, OffsetsTable: DefaultOffsetsTable},
			HTTP:         HTTP{Format: FormatNDJSON},
			File:         File{Path: "./out.jsonl"},
		},
		Commit:          Commit{Interval: time.Second},
		ShutdownTimeout: 30 * time.Second,
		Observability:   Observability{Listen: ":9108", LogLevel: "info", LogFormat: "json"},
	}
}

// The values of the enumerated keys, for the packages that switch on them.
const (
	StartEarliest = "earliest"
	StartLatest   = "latest"

	BalancerCooperativeSticky = "cooperative-sticky"
	BalancerSticky            = "sticky"
	BalancerRange             = "range"
	BalancerRoundRobin        = "roundrobin"

	SinkPostgres = "postgres"
	SinkHTTP     = "http"
	SinkFile     = "file"

	ModeInsert = "insert"
	ModeUpsert = "upsert"

	DeliveryAtLeastOnce = "at-least-once"
	DeliveryExactlyOnce = "exactly-once"

	// DefaultOffsetsTable is sink.postgres.offsets_table's default.
	DefaultOffsetsTable = "public.sluice_offsets"

	FormatNDJSON = "ndjson"
	FormatJSON   = "json"
)
