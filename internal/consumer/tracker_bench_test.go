package consumer

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/record"
)

// The benchmarks of the consumer's per-record work:
//
//	go test -run='^$' -bench=. -benchmem ./internal/consumer
//
// make test runs them once (-benchtime=1x) so that they keep compiling and
// running.

// BenchmarkTracker is the commit tracker's share of a record: add as it is
// admitted, done when its batch is written, in batches of 5000 finishing in
// order. It allocates nothing in the steady state.
func BenchmarkTracker(b *testing.B) {
	var t tracker
	const batch = 5000
	seqs := make([]uint64, batch)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		for k := range seqs {
			seqs[k] = t.add(int64(i+k), 0, 0)
		}
		for _, s := range seqs {
			t.done(s)
		}
		i += batch
	}
}

// BenchmarkConvert is turning a poll's franz-go records into sluice's, as the
// poll loop does: one allocation for the poll, not one per record.
func BenchmarkConvert(b *testing.B) {
	const poll = 500
	krs := make([]*kgo.Record, poll)
	for i := range krs {
		krs[i] = &kgo.Record{Topic: "orders", Partition: int32(i % 6), Offset: int64(i), Value: make([]byte, 200)}
	}
	pending := make([]*record.Record, 0, poll)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		slab := make([]record.Record, len(krs))
		pending = pending[:0]
		for _, kr := range krs {
			r := &slab[0]
			slab = slab[1:]
			convert(r, kr)
			pending = append(pending, r)
		}
		i += poll
	}
}
