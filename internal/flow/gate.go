package flow

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// GateConfig is the flow budget: records and bytes admitted and not yet done.
type GateConfig struct {
	MaxRecords int
	MaxBytes   int64
	// ResumeAt is the fraction of both budgets below which paused partitions
	// resume (hysteresis). In (0, 1).
	ResumeAt float64
}

// Gate bounds the records and bytes between admission and done. When usage
// reaches either budget, or a record does not fit, the gate is full: it pauses, through the Pauser, every partition
// that holds buffered data (heaviest first) and the partition of the record that
// did not fit, and keeps them paused until usage of both budgets falls below
// ResumeAt. Lag then grows in Kafka, not in memory.
//
// Room and Admit are called by one goroutine (the admitter); Release may be
// called from any goroutine. Usage only falls between Room and Admit, so a
// record that had room is admitted within the budget.
type Gate struct {
	cfg     GateConfig
	pauser  Pauser
	metrics *metrics.Metrics

	mu        sync.Mutex
	records   int
	bytes     int64
	peakBytes int64
	byPart    map[record.Partition]*usage
	full      bool
	paused    []record.Partition // paused by the gate, released on resume
	pauses    int64
	changed   chan struct{} // closed and replaced whenever usage falls

	// Lock-free mirrors of full for the lanes, which look at every record.
	fullNow atomic.Bool
	fullSig atomic.Pointer[chan struct{}] // closed when the gate becomes full
}

type usage struct {
	records int
	bytes   int64
}

// NewGate returns a gate with the given budget. pauser may be nil (nothing to
// pause, as in tests of the flow alone).
func NewGate(cfg GateConfig, pauser Pauser, m *metrics.Metrics) *Gate {
	m.BufferCapacityBytes.Set(float64(cfg.MaxBytes))
	g := &Gate{cfg: cfg, pauser: pauser, metrics: m, byPart: map[record.Partition]*usage{}, changed: make(chan struct{})}
	sig := make(chan struct{})
	g.fullSig.Store(&sig)
	return g
}

// isFull is Full without the lock.
func (g *Gate) isFull() bool { return g.fullNow.Load() }

// fullSignal returns a channel that is closed when the gate becomes full.
func (g *Gate) fullSignal() <-chan struct{} { return *g.fullSig.Load() }

// Room reports whether r fits in the budget now. A record that does not fit
// makes the gate full (see Gate). An empty gate always has room, so a single
// record larger than the byte budget cannot stall a partition forever: it is
// admitted alone.
func (g *Gate) Room(r *record.Record) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.records == 0 {
		return true
	}
	if !g.full && g.records+1 <= g.cfg.MaxRecords && g.bytes+int64(r.Size()) <= g.cfg.MaxBytes {
		return true
	}
	g.fill(r.Part())
	return false
}

// Fits returns how many of rs, in order, Room would let in were each admitted
// before the next is asked about. Unlike Room it changes nothing: the caller
// admits them (AdmitAll) and then asks Room about the first that did not fit,
// which makes the gate full with the usage Admit one at a time would leave.
func (g *Gate) Fits(rs []*record.Record) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	records, bytes := g.records, g.bytes
	for i, r := range rs {
		n := int64(r.Size())
		if records > 0 && (g.full || records+1 > g.cfg.MaxRecords || bytes+n > g.cfg.MaxBytes) {
			return i
		}
		records++
		bytes += n
	}
	return len(rs)
}

// FreeRecords returns how many more records fit by count; the poll limit.
func (g *Gate) FreeRecords() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.full {
		return 0
	}
	return max(0, g.cfg.MaxRecords-g.records)
}

// Full reports whether the gate is holding partitions paused.
func (g *Gate) Full() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.full
}

// Changed returns a channel that is closed the next time usage falls.
func (g *Gate) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// Admit counts r against the budget. Call it only after Room(r) said yes.
func (g *Gate) Admit(r *record.Record) { g.AdmitAll([]*record.Record{r}) }

// AdmitAll counts records into the budget, as Admit does each in turn, under
// one lock: the consumer admits the records of a poll together.
func (g *Gate) AdmitAll(rs []*record.Record) {
	if len(rs) == 0 {
		return
	}
	g.mu.Lock()
	var (
		last record.Partition
		u    *usage
	)
	for i, r := range rs {
		n := int64(r.Size())
		if p := r.Part(); i == 0 || p != last {
			last, u = p, g.byPart[p]
			if u == nil {
				u = &usage{}
				g.byPart[p] = u
			}
		}
		g.records++
		g.bytes += n
		u.records++
		u.bytes += n
		g.peakBytes = max(g.peakBytes, g.bytes)
	}
	if g.records >= g.cfg.MaxRecords || g.bytes >= g.cfg.MaxBytes {
		g.fill(last) // the budget is reached: stop fetching before anything waits
	}
	g.publish()
	g.mu.Unlock()
}

// Release returns the records' share of the budget, and resumes the partitions
// the gate paused once usage is below ResumeAt.
func (g *Gate) Release(rs ...*record.Record) {
	if len(rs) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var last record.Partition
	var u *usage
	for i, r := range rs {
		if p := r.Part(); i == 0 || p != last {
			last, u = p, g.byPart[p]
		}
		n := int64(r.Size())
		g.records--
		g.bytes -= n
		if u != nil {
			u.records--
			u.bytes -= n
			if u.records == 0 {
				delete(g.byPart, last)
				u = nil
			}
		}
	}
	if g.full && float64(g.records) < g.cfg.ResumeAt*float64(g.cfg.MaxRecords) &&
		float64(g.bytes) < g.cfg.ResumeAt*float64(g.cfg.MaxBytes) {
		g.full = false
		g.fullNow.Store(false)
		sig := make(chan struct{})
		g.fullSig.Store(&sig)
		if g.pauser != nil && len(g.paused) > 0 {
			g.pauser.ResumeForGate(g.paused)
		}
		g.paused = nil
	}
	close(g.changed)
	g.changed = make(chan struct{})
	g.publish()
}

// Forget drops the gate's pause of partitions no longer assigned, so a resume
// does not touch a partition another member now owns.
func (g *Gate) Forget(ps []record.Partition) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = slices.DeleteFunc(g.paused, func(p record.Partition) bool { return slices.Contains(ps, p) })
}

// GateStats is a snapshot of the gate for /status and the demo.
type GateStats struct {
	Records, MaxRecords int
	Bytes, MaxBytes     int64
	PeakBytes           int64
	Full                bool
	Pauses              int64 // times the gate became full
	Buffered            map[record.Partition]int
}

// Stats returns a snapshot.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := GateStats{Records: g.records, MaxRecords: g.cfg.MaxRecords, Bytes: g.bytes, MaxBytes: g.cfg.MaxBytes,
		PeakBytes: g.peakBytes, Full: g.full, Pauses: g.pauses, Buffered: make(map[record.Partition]int, len(g.byPart))}
	for p, u := range g.byPart {
		s.Buffered[p] = u.records
	}
	return s
}

// fill makes the gate full and pauses the partitions holding data. g.mu held.
func (g *Gate) fill(blocked record.Partition) {
	if g.full {
		return
	}
	g.full = true
	g.fullNow.Store(true)
	close(*g.fullSig.Load())
	g.pauses++
	ps := make([]record.Partition, 0, len(g.byPart)+1)
	for p := range g.byPart {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b record.Partition) int { return cmp.Compare(g.byPart[b].bytes, g.byPart[a].bytes) })
	if _, ok := g.byPart[blocked]; !ok {
		ps = append(ps, blocked)
	}
	g.paused = ps
	if g.pauser != nil {
		g.pauser.PauseForGate(ps)
	}
}

// publish updates the buffer gauges. g.mu held.
func (g *Gate) publish() {
	g.metrics.BufferRecords.Set(float64(g.records))
	g.metrics.BufferBytes.Set(float64(g.bytes))
	g.metrics.BufferUtilization.Set(max(float64(g.records)/float64(g.cfg.MaxRecords), float64(g.bytes)/float64(g.cfg.MaxBytes)))
}
