package consumer

import (
	"math/rand/v2"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The commit position only ever moves over a contiguous prefix of done
// records, whatever order they finish in, and offsets need not be dense.
func TestTrackerCommitsOnlyTheDonePrefix(t *testing.T) {
	type step struct {
		done    int   // index (into offsets) of the record finishing
		want    int64 // position after it, -1 for none yet
		pending int
	}
	tests := []struct {
		name    string
		offsets []int64 // in poll order; gaps are transaction markers or compaction
		steps   []step
	}{
		{
			name:    "in order",
			offsets: []int64{10, 11, 12},
			steps:   []step{{0, 11, 2}, {1, 12, 1}, {2, 13, 0}},
		},
		{
			name:    "out of order waits for the first",
			offsets: []int64{10, 11, 12, 13},
			steps:   []step{{2, -1, 4}, {1, -1, 4}, {3, -1, 4}, {0, 14, 0}},
		},
		{
			name:    "gaps in offsets",
			offsets: []int64{5, 7, 8, 20},
			steps:   []step{{1, -1, 4}, {0, 8, 2}, {3, 8, 2}, {2, 21, 0}},
		},
		{
			name:    "a hole in the middle holds the rest",
			offsets: []int64{0, 1, 2, 3, 4},
			steps:   []step{{0, 1, 4}, {1, 2, 3}, {3, 2, 3}, {4, 2, 3}, {2, 5, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr tracker
			seqs := make([]uint64, len(tt.offsets))
			for i, off := range tt.offsets {
				seqs[i] = tr.add(off, 3, 0)
			}
			for _, s := range tt.steps {
				tr.done(seqs[s.done])
				got := int64(-1)
				if tr.known {
					got = tr.pos.Offset
				}
				if got != s.want || tr.outstanding() != s.pending {
					t.Fatalf("after offset %d done: position %d with %d outstanding, want %d with %d",
						tt.offsets[s.done], got, tr.outstanding(), s.want, s.pending)
				}
				if tr.known && tr.pos.Epoch != 3 {
					t.Errorf("position epoch %d, want the record's leader epoch 3", tr.pos.Epoch)
				}
			}
		})
	}
}

// Repeated, stale and unknown sequence numbers change nothing.
func TestTrackerIgnoresRepeatsAndStrangers(t *testing.T) {
	var tr tracker
	a, b := tr.add(100, 0, 0), tr.add(101, 0, 0)
	tr.done(a)
	tr.done(a)       // repeated
	tr.done(b + 100) // never issued
	if tr.pos != (kgo.EpochOffset{Epoch: 0, Offset: 101}) || tr.outstanding() != 1 {
		t.Fatalf("position %+v with %d outstanding, want 101 with 1", tr.pos, tr.outstanding())
	}
	tr.done(b)
	tr.done(a) // stale: already behind the position
	if tr.pos.Offset != 102 || tr.outstanding() != 0 {
		t.Fatalf("position %+v with %d outstanding, want 102 with 0", tr.pos, tr.outstanding())
	}
}

// Many records finishing in random order, with compaction of the entry slice
// along the way: the position ends after the last one and never moved past an
// unfinished record.
func TestTrackerRandomCompletion(t *testing.T) {
	const n = 20000
	var tr tracker
	seqs := make([]uint64, n)
	for i := range n {
		seqs[i] = tr.add(int64(2*i), 0, 0) // every other offset: a gap each time
	}
	order := rand.Perm(n)
	finished := make([]bool, n)
	for k, i := range order {
		tr.done(seqs[i])
		finished[i] = true
		if tr.known {
			// Every record before the position is finished.
			last := int(tr.pos.Offset-1) / 2
			if !finished[last] {
				t.Fatalf("step %d: position %d passed unfinished offset %d", k, tr.pos.Offset, 2*last)
			}
			if last+1 < n && finished[last+1] {
				t.Fatalf("step %d: position %d stops before finished offset %d", k, tr.pos.Offset, 2*(last+1))
			}
		}
	}
	if tr.pos.Offset != 2*(n-1)+1 || tr.outstanding() != 0 {
		t.Fatalf("final position %d with %d outstanding, want %d with 0", tr.pos.Offset, tr.outstanding(), 2*(n-1)+1)
	}
}
