package flow_test

import (
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

func newGate(t *testing.T, cfg flow.GateConfig) (*flow.Gate, *fakePauser, *metrics.Metrics) {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	pz := &fakePauser{}
	return flow.NewGate(cfg, pz, m), pz, m
}

// admitAll admits rs, failing the test if any of them has no room.
func admitAll(t *testing.T, g *flow.Gate, rs ...*record.Record) {
	t.Helper()
	for _, r := range rs {
		if !g.Room(r) {
			t.Fatalf("Room(%s, %d bytes) = false, want room (stats %+v)", atOf(r), r.Size(), g.Stats())
		}
		g.Admit(r)
	}
}

// A gate admits while both budgets have room, and becomes full, pausing
// fetches, as soon as usage reaches either budget or a record does not fit.
func TestGateAdmitsWithinBothBudgetsAndNoFurther(t *testing.T) {
	tests := []struct {
		name    string
		cfg     flow.GateConfig
		fit     []*record.Record // admitted one by one, each with room
		reached bool             // the last of fit brings usage to a budget
		blocked *record.Record   // a record that then has no room
	}{
		{
			name:    "record budget reached",
			cfg:     flow.GateConfig{MaxRecords: 3, MaxBytes: 1000, ResumeAt: 0.5},
			fit:     []*record.Record{sized(0, 0, 10), sized(0, 1, 10), sized(0, 2, 10)},
			reached: true,
			blocked: sized(0, 3, 10),
		},
		{
			name:    "byte budget reached",
			cfg:     flow.GateConfig{MaxRecords: 100, MaxBytes: 100, ResumeAt: 0.5},
			fit:     []*record.Record{sized(0, 0, 40), sized(0, 1, 40), sized(0, 2, 20)},
			reached: true,
			blocked: sized(0, 3, 1),
		},
		{
			name:    "a record that would overshoot the byte budget",
			cfg:     flow.GateConfig{MaxRecords: 100, MaxBytes: 100, ResumeAt: 0.5},
			fit:     []*record.Record{sized(0, 0, 40), sized(0, 1, 40)},
			blocked: sized(0, 2, 21),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, pz, _ := newGate(t, tt.cfg)
			admitAll(t, g, tt.fit...)
			if g.Full() != tt.reached {
				t.Fatalf("after admitting what fits (%+v): Full() = %v, want %v", g.Stats(), g.Full(), tt.reached)
			}
			if g.Room(tt.blocked) {
				t.Fatalf("Room(%d bytes) = true with %+v", tt.blocked.Size(), g.Stats())
			}
			s := g.Stats()
			if !s.Full || s.Records > tt.cfg.MaxRecords || s.Bytes > tt.cfg.MaxBytes {
				t.Errorf("after a record that does not fit: %+v, want full and within budget", s)
			}
			if s.Pauses != 1 || len(pz.history()) != 1 {
				t.Errorf("gate became full %d time(s) with %d pauser call(s), want 1 and 1", s.Pauses, len(pz.history()))
			}
		})
	}
}

func TestGateFullPausesHeaviestPartitionsFirstAndTheBlockedOne(t *testing.T) {
	tests := []struct {
		name string
		last *record.Record // offered after 79 bytes on partitions 0 (10), 1 (50) and 2 (19)
		fits bool           // whether last is admitted, reaching the budget
		want []record.Partition
	}{
		{"a record of a partition holding nothing does not fit", sized(3, 0, 50), false, []record.Partition{part(1), part(2), part(0), part(3)}},
		{"a record of a partition holding data does not fit", sized(2, 9, 50), false, []record.Partition{part(1), part(2), part(0)}},
		{"a record reaches the byte budget", sized(3, 0, 21), true, []record.Partition{part(1), part(3), part(2), part(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, pz, _ := newGate(t, flow.GateConfig{MaxRecords: 100, MaxBytes: 100, ResumeAt: 0.5})
			admitAll(t, g, sized(0, 0, 10), sized(1, 0, 25), sized(2, 0, 19), sized(1, 1, 25))
			if len(pz.history()) != 0 {
				t.Fatalf("paused %+v below the budget", pz.history())
			}
			if got := g.Room(tt.last); got != tt.fits {
				t.Fatalf("Room(%d bytes) = %v, want %v", tt.last.Size(), got, tt.fits)
			}
			if tt.fits {
				g.Admit(tt.last)
			}
			h := pz.history()
			if len(h) != 1 || !h[0].pause || !slices.Equal(h[0].parts, tt.want) {
				t.Fatalf("pauser calls %+v, want one pause of %v", h, tt.want)
			}
			// Asking again while full neither admits nor pauses again.
			for range 3 {
				if g.Room(sized(0, 1, 1)) {
					t.Fatal("Room = true while the gate is full")
				}
			}
			if n := len(pz.history()); n != 1 {
				t.Errorf("%d pauser calls after asking again while full, want 1", n)
			}
		})
	}
}

// TestGateResumesOnlyBelowTheMarkOnBothBudgets is the hysteresis: usage that
// falls to the resume mark, or below it on one budget only, keeps partitions
// paused; usage below the mark on both resumes them, once.
func TestGateResumesOnlyBelowTheMarkOnBothBudgets(t *testing.T) {
	type step struct {
		release []*record.Record
		resumed bool // whether partitions are resumed after this release
	}
	// Budget 10 records, 200 bytes, resume at 0.5: below 5 records and 100 bytes.
	cfg := flow.GateConfig{MaxRecords: 10, MaxBytes: 200, ResumeAt: 0.5}
	small := make([]*record.Record, 10) // 10 records of 2 bytes on partition 1
	for i := range small {
		small[i] = sized(1, int64(i), 2)
	}
	big := sized(0, 0, 150)
	tests := []struct {
		name    string
		admit   []*record.Record
		blocked *record.Record
		steps   []step
	}{
		{
			name:    "full by records; bytes are low all along",
			admit:   small,
			blocked: sized(2, 0, 2),
			steps: []step{
				{release: small[:4], resumed: false},  // 6 records left
				{release: small[4:5], resumed: false}, // 5 records left: at the mark, not below
				{release: small[5:6], resumed: true},  // 4 records left
				{release: small[6:], resumed: true},   // emptied: no second resume
			},
		},
		{
			name:    "full by bytes; records fall below the mark first",
			admit:   append([]*record.Record{big}, small[:8]...), // 9 records, 166 bytes
			blocked: sized(2, 0, 40),
			steps: []step{
				{release: small[:8], resumed: false}, // 1 record, 150 bytes
				{release: []*record.Record{big}, resumed: true},
			},
		},
		{
			name:    "bytes fall to exactly the mark",
			admit:   []*record.Record{sized(0, 0, 100), sized(0, 1, 50), sized(0, 2, 50)},
			blocked: sized(2, 0, 1),
			steps: []step{
				{release: []*record.Record{sized(0, 1, 50), sized(0, 2, 50)}, resumed: false}, // 100 bytes: at the mark
				{release: []*record.Record{sized(0, 0, 100)}, resumed: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, pz, _ := newGate(t, cfg)
			admitAll(t, g, tt.admit...)
			if g.Room(tt.blocked) {
				t.Fatalf("Room = true at %+v", g.Stats())
			}
			paused := pz.pausedNow()
			for i, st := range tt.steps {
				g.Release(st.release...)
				if got := len(pz.pausedNow()) == 0; got != st.resumed {
					t.Fatalf("step %d (%+v): resumed = %v, want %v", i, g.Stats(), got, st.resumed)
				}
				if g.Full() == st.resumed {
					t.Errorf("step %d: Full() = %v with resumed = %v", i, g.Full(), st.resumed)
				}
				if !st.resumed && g.Room(sized(1, 99, 1)) {
					t.Errorf("step %d: Room = true before resuming", i)
				}
			}
			var resumes [][]record.Partition
			for _, c := range pz.history() {
				if !c.pause {
					resumes = append(resumes, c.parts)
				}
			}
			if len(resumes) != 1 {
				t.Fatalf("%d resume calls, want exactly 1: %+v", len(resumes), pz.history())
			}
			slices.SortFunc(resumes[0], comparePart)
			if !slices.Equal(resumes[0], paused) {
				t.Errorf("resumed %v, want the paused %v", resumes[0], paused)
			}
			if !g.Room(sized(1, 100, 1)) {
				t.Error("no room after resuming")
			}
		})
	}
}

func TestGateChangedIsClosedOnRelease(t *testing.T) {
	g, _, _ := newGate(t, flow.GateConfig{MaxRecords: 1, MaxBytes: 100, ResumeAt: 0.5})
	r := sized(0, 0, 10)
	admitAll(t, g, r)
	changed := g.Changed()
	g.Room(sized(0, 1, 10)) // full
	select {
	case <-changed:
		t.Fatal("Changed closed before anything was released")
	default:
	}
	g.Release(r)
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed after Release")
	}
	select {
	case <-g.Changed():
		t.Fatal("the next Changed is already closed")
	default:
	}
}

func TestGateEmptyAdmitsOneOversizedRecord(t *testing.T) {
	g, pz, _ := newGate(t, flow.GateConfig{MaxRecords: 10, MaxBytes: 100, ResumeAt: 0.5})
	huge := sized(0, 0, 500)
	if !g.Room(huge) {
		t.Fatal("an empty gate has no room for a record over the byte budget: its partition would stall forever")
	}
	g.Admit(huge)
	if g.Room(sized(0, 1, 1)) {
		t.Fatal("room beside an oversized record")
	}
	if len(pz.pausedNow()) == 0 {
		t.Error("nothing paused while the gate holds an oversized record and another waits")
	}
	g.Release(huge)
	if !g.Room(sized(0, 1, 1)) || len(pz.pausedNow()) != 0 {
		t.Errorf("after the oversized record is done: room %v, paused %v; want room, nothing paused", g.Room(sized(0, 1, 1)), pz.pausedNow())
	}
}

func TestGateFreeRecordsIsZeroWhileFull(t *testing.T) {
	g, _, _ := newGate(t, flow.GateConfig{MaxRecords: 10, MaxBytes: 100, ResumeAt: 0.5})
	rs := []*record.Record{sized(0, 0, 30), sized(0, 1, 30), sized(0, 2, 30)}
	if got := g.FreeRecords(); got != 10 {
		t.Errorf("FreeRecords on an empty gate = %d, want 10", got)
	}
	admitAll(t, g, rs...)
	if got := g.FreeRecords(); got != 7 {
		t.Errorf("FreeRecords with 3 of 10 = %d, want 7", got)
	}
	g.Room(sized(0, 3, 30)) // over the byte budget: full
	if got := g.FreeRecords(); got != 0 {
		t.Errorf("FreeRecords while full = %d, want 0: the poll limit must stop polling", got)
	}
	g.Release(rs[:2]...)
	if got := g.FreeRecords(); got != 9 {
		t.Errorf("FreeRecords after resuming with 1 of 10 = %d, want 9", got)
	}
}

func TestGateForgetDropsPartitionsFromTheResume(t *testing.T) {
	g, pz, _ := newGate(t, flow.GateConfig{MaxRecords: 100, MaxBytes: 100, ResumeAt: 0.5})
	rs := []*record.Record{sized(0, 0, 30), sized(1, 0, 40), sized(2, 0, 20)}
	admitAll(t, g, rs...)
	g.Room(sized(3, 0, 20)) // full: pauses 1, 0, 2 and 3
	// 0 and 3 are revoked: another member owns them now.
	g.Forget([]record.Partition{part(0), part(3)})
	g.Release(rs...)
	h := pz.history()
	if len(h) != 2 || h[1].pause {
		t.Fatalf("pauser calls %+v, want a pause and a resume", h)
	}
	got := slices.SortedFunc(slices.Values(h[1].parts), comparePart)
	if want := []record.Partition{part(1), part(2)}; !slices.Equal(got, want) {
		t.Errorf("resumed %v, want %v: a forgotten partition must not be resumed", got, want)
	}
}

func TestGateBufferMetricsFollowUsage(t *testing.T) {
	g, _, m := newGate(t, flow.GateConfig{MaxRecords: 10, MaxBytes: 1000, ResumeAt: 0.5})
	check := func(when string, records, bytes, util float64) {
		t.Helper()
		for _, c := range []struct {
			name      string
			got, want float64
		}{
			{"sluice_buffer_records", testutil.ToFloat64(m.BufferRecords), records},
			{"sluice_buffer_bytes", testutil.ToFloat64(m.BufferBytes), bytes},
			{"sluice_buffer_capacity_bytes", testutil.ToFloat64(m.BufferCapacityBytes), 1000},
			{"sluice_buffer_utilization_ratio", testutil.ToFloat64(m.BufferUtilization), util},
		} {
			if c.got != c.want {
				t.Errorf("%s: %s = %v, want %v", when, c.name, c.got, c.want)
			}
		}
	}
	check("new gate", 0, 0, 0)
	a, b, c := sized(0, 0, 100), sized(1, 0, 600), sized(1, 1, 50)
	admitAll(t, g, a, b)
	check("2 records, 700 bytes", 2, 700, 0.7) // bytes are the larger share
	admitAll(t, g, c)
	check("3 records, 750 bytes", 3, 750, 0.75)
	g.Release(b)
	check("after releasing 600 bytes", 2, 150, 0.2) // now records are the larger share
	g.Release(a, c)
	check("empty", 0, 0, 0)
}

// Fits and AdmitAll, which the consumer uses to admit a poll's records
// together, then Room for the first record left out, decide and count exactly
// as Room and Admit do one record at a time: same number let in, same usage,
// same pauses in the same order, whichever budget is hit.
func TestGateFitsAndAdmitAllAreRoomAndAdmitInTurn(t *testing.T) {
	cfgs := []flow.GateConfig{
		{MaxRecords: 5, MaxBytes: 1 << 20, ResumeAt: 0.5},
		{MaxRecords: 100, MaxBytes: 250, ResumeAt: 0.5},
		{MaxRecords: 100, MaxBytes: 10, ResumeAt: 0.5}, // a single record over the budget
	}
	// Runs of records of three partitions, as polls bring them, some sizes
	// crossing the byte budgets above.
	runs := [][]*record.Record{
		{sized(0, 0, 40), sized(0, 1, 40)},
		{sized(1, 0, 30), sized(1, 1, 90), sized(1, 2, 100)},
		{sized(2, 0, 60), sized(2, 1, 60), sized(2, 2, 60), sized(2, 3, 60)},
		{sized(0, 2, 20)},
	}
	for _, cfg := range cfgs {
		one, onePz, _ := newGate(t, cfg)
		all, allPz, _ := newGate(t, cfg)
		for k, run := range runs {
			want := 0
			for _, r := range run {
				if !one.Room(r) {
					break
				}
				one.Admit(r)
				want++
			}
			// As the consumer does: admit what fits, then ask about the next.
			got := all.Fits(run)
			all.AdmitAll(run[:got])
			if got < len(run) && all.Room(run[got]) {
				t.Errorf("%+v, run %d: Room has room for the record Fits left out", cfg, k)
			}
			if got != want {
				t.Errorf("%+v, run %d: Fits = %d, Room let in %d", cfg, k, got, want)
			}
			if a, b := all.Stats(), one.Stats(); a.Records != b.Records || a.Bytes != b.Bytes || a.PeakBytes != b.PeakBytes ||
				a.Full != b.Full || a.Pauses != b.Pauses || !maps.Equal(a.Buffered, b.Buffered) {
				t.Errorf("%+v, run %d: stats after AdmitAll %+v, after Admit one by one %+v", cfg, k, a, b)
			}
			if a, b := allPz.history(), onePz.history(); !reflect.DeepEqual(a, b) {
				t.Errorf("%+v, run %d: pauses %+v after AdmitAll, %+v after Admit", cfg, k, a, b)
			}
		}
		if one.Stats().Pauses == 0 {
			t.Errorf("%+v: the runs never filled the gate; the test needs them to", cfg)
		}
	}
}
