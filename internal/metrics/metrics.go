// Package metrics defines every Prometheus metric sluice exports, as fields of
// one Metrics struct registered on a Registerer passed in. There is no global
// registry. The fields are safe for concurrent use (Prometheus collectors are).
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

const ns = "sluice"

// Metrics holds sluice's own metrics. Lag per partition is owned by the consumer
// and exported by its own Collector (see consumer), not here.
type Metrics struct {
	BufferRecords       prometheus.Gauge
	BufferBytes         prometheus.Gauge
	BufferCapacityBytes prometheus.Gauge
	BufferUtilization   prometheus.Gauge
	InflightRecords     prometheus.Gauge
	PartitionsPaused    prometheus.Gauge
	PartitionPauses     *prometheus.CounterVec // reason: gate | breaker | revoke
	RecordsConsumed     prometheus.Counter
	RecordsWritten      prometheus.Counter
	RecordsDLQ          *prometheus.CounterVec // reason: decode | mapping | timeout | too_large | sink_rejected
	ProcessingDuration  prometheus.Histogram
	SinkWriteDuration   prometheus.Histogram
	SinkBatchRecords    prometheus.Histogram
	SinkWriteErrors     *prometheus.CounterVec // class: transient | rejected | fatal
	BreakerState        *prometheus.GaugeVec   // sink
	BreakerTransitions  *prometheus.CounterVec // to
	Rebalances          prometheus.Counter
	Commits             prometheus.Counter
	CommitErrors        prometheus.Counter
}

// New creates the metrics and registers them on reg. It panics only if a metric
// is registered twice on the same registry, which is a wiring bug.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		BufferRecords:       gauge("buffer_records", "Records admitted to the flow gate and not yet done."),
		BufferBytes:         gauge("buffer_bytes", "Bytes of records admitted to the flow gate and not yet done."),
		BufferCapacityBytes: gauge("buffer_capacity_bytes", "The flow gate's byte budget (flow.max_buffered_bytes)."),
		BufferUtilization:   gauge("buffer_utilization_ratio", "The larger of buffered records and bytes over their budgets, 0 to 1."),
		InflightRecords:     gauge("inflight_records", "Records in batches being written to the sink."),
		PartitionsPaused:    gauge("partitions_paused", "Assigned partitions whose fetching is paused, for any reason."),
		PartitionPauses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "partition_pauses_total",
			Help: "Times a partition was paused, by reason (gate, breaker, seek: waiting to read its stored offset in exactly-once delivery)."}, []string{"reason"}),
		RecordsConsumed: counter("records_consumed_total", "Records polled from Kafka and admitted."),
		RecordsWritten:  counter("records_written_total", "Records written to the sink."),
		RecordsDLQ: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "records_dlq_total",
			Help: "Records sent to the dead-letter queue, by reason (decode, mapping, timeout, too_large, sink_rejected)."}, []string{"reason"}),
		ProcessingDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "processing_duration_seconds",
			Help: "Time from admission to done (written or dead-lettered).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		SinkWriteDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "sink_write_duration_seconds",
			Help: "Duration of one sink write attempt.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		SinkBatchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "sink_batch_records",
			Help: "Rows per sink write.", Buckets: prometheus.ExponentialBuckets(1, 2, 15)}),
		SinkWriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sink_write_errors_total",
			Help: "Failed sink write attempts, by class (transient, rejected, fatal, fenced: another member moved the partition on in exactly-once delivery)."}, []string{"class"}),
		BreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "circuit_breaker_state",
			Help: "Circuit breaker state: 0 closed, 1 half-open, 2 open."}, []string{"sink"}),
		BreakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "circuit_breaker_transitions_total",
			Help: "Circuit breaker transitions, by the state entered."}, []string{"to"}),
		Rebalances:   counter("rebalances_total", "Assignment changes (assigned, revoked or lost) this member went through."),
		Commits:      counter("commits_total", "Successful offset commits."),
		CommitErrors: counter("commit_errors_total", "Failed offset commits."),
	}
	reg.MustRegister(m.BufferRecords, m.BufferBytes, m.BufferCapacityBytes, m.BufferUtilization,
		m.InflightRecords, m.PartitionsPaused, m.PartitionPauses, m.RecordsConsumed, m.RecordsWritten,
		m.RecordsDLQ, m.ProcessingDuration, m.SinkWriteDuration, m.SinkBatchRecords, m.SinkWriteErrors,
		m.BreakerState, m.BreakerTransitions, m.Rebalances, m.Commits, m.CommitErrors)
	for _, r := range []string{"gate", "breaker"} {
		m.PartitionPauses.WithLabelValues(r)
	}
	return m
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help})
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help})
}
