package flow_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// The benchmarks of the flow's hot path, per record:
//
//	go test -run='^$' -bench=. -benchmem ./internal/flow
//
// make test runs them once (-benchtime=1x) so that they keep compiling and
// running; the figures come from a longer run.

// discard is a sink that takes every batch at once.
type discard struct{}

func (discard) Write(context.Context, *record.Batch) error { return nil }

// nopCommitter and nopDLQ take what they are told and keep nothing.
type nopCommitter struct{}

func (nopCommitter) Done(...*record.Record) {}

type nopDLQ struct{}

func (nopDLQ) DeadLetter(context.Context, *record.Record, *flow.PoisonError) error { return nil }

// benchRecords builds n records of 200-byte values spread over 6 partitions,
// in poll order.
func benchRecords(n int) []*record.Record {
	rs := make([]*record.Record, n)
	value := make([]byte, 200)
	for i := range rs {
		rs[i] = &record.Record{Topic: "orders", Partition: int32(i % 6), Offset: int64(i / 6), Value: value}
	}
	return rs
}

// BenchmarkGate is the gate's share of a record: Room and Admit as the poll
// loop calls them, Release once per 500 records as a lane's write does. It
// allocates nothing in the steady state.
func BenchmarkGate(b *testing.B) {
	g := flow.NewGate(flow.GateConfig{MaxRecords: 40_000, MaxBytes: 64 << 20, ResumeAt: 0.5}, nil, metrics.New(prometheus.NewRegistry()))
	rs := benchRecords(500)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		for _, r := range rs {
			if !g.Room(r) {
				b.Fatal("no room")
			}
			g.Admit(r)
		}
		g.Release(rs...)
		i += len(rs)
	}
}

// BenchmarkPipeline is a record's way from Admit to done through the worker
// pool and the lanes (4 workers, 4 lanes, 5000-row batches), with a mapper
// that costs nothing and a sink that takes every batch at once: the flow's
// own cost. One op is one record.
func BenchmarkPipeline(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry())
	g := flow.NewGate(flow.GateConfig{MaxRecords: 40_000, MaxBytes: 64 << 20, ResumeAt: 0.5}, nil, m)
	row := record.Row{int64(1), "x", int32(0)}
	mapper := mapperFunc(func(context.Context, *record.Record) (record.Row, error) { return row, nil })
	p := flow.New(flow.Config{Workers: 4, RecordTimeout: 30 * time.Second, Lanes: 4,
		Batch: flow.BatchConfig{MaxRecords: 5000, MaxBytes: 8 << 20, Linger: 200 * time.Millisecond}},
		g, mapper, discard{}, nopDLQ{}, nopCommitter{}, m)
	rs := benchRecords(b.N)
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	b.ReportAllocs()
	b.ResetTimer()
	for _, r := range rs {
		for !p.Room(r) {
			<-g.Changed()
		}
		p.Admit(r)
	}
	p.CloseInput()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
