//go:build chaos

package chaos

import (
	"context"
	"sync"
	"time"

	procfs "github.com/sluicehq/sluice/test/proc"
)

// Sampling periods: RSS from /proc is cheap; /metrics and /status cost the
// process a little CPU, so they are read less often.
const (
	rssEvery     = 100 * time.Millisecond
	metricsEvery = 250 * time.Millisecond
	statusEvery  = 250 * time.Millisecond
)

// rssSample is one reading of the process's resident memory.
type rssSample struct {
	at  time.Time
	rss int64
}

type metricsSample struct {
	at time.Time
	m  metricsDoc
}

type statusSample struct {
	at time.Time
	s  statusDoc
}

// monitor samples one sluice process from the outside until it exits: its
// RSS and peak RSS (VmRSS, VmHWM of /proc/<pid>/status), its /metrics and
// its /status. The samples are kept for the scenario to judge afterwards.
type monitor struct {
	p *proc

	mu       sync.Mutex
	rss      []rssSample
	hwm      int64
	metrics  []metricsSample
	statuses []statusSample
}

func newMonitor(p *proc) *monitor { return &monitor{p: p} }

// run samples until ctx ends or the process exits.
func (m *monitor) run(ctx context.Context) {
	var wg sync.WaitGroup
	every := func(d time.Duration, f func()) {
		wg.Go(func() {
			tick := time.NewTicker(d)
			defer tick.Stop()
			for {
				f()
				select {
				case <-ctx.Done():
					return
				case <-m.p.exited:
					return
				case <-tick.C:
				}
			}
		})
	}
	every(rssEvery, func() {
		rss, hwm, err := memStatus(m.p.pid)
		if err != nil {
			return
		}
		m.mu.Lock()
		m.rss = append(m.rss, rssSample{time.Now(), rss})
		m.hwm = max(m.hwm, hwm)
		m.mu.Unlock()
	})
	every(metricsEvery, func() {
		doc, err := m.p.metrics()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.metrics = append(m.metrics, metricsSample{time.Now(), doc})
		m.mu.Unlock()
	})
	every(statusEvery, func() {
		doc, err := m.p.status()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.statuses = append(m.statuses, statusSample{time.Now(), doc})
		m.mu.Unlock()
	})
	wg.Wait()
}

// peakRSS is the highest resident memory the kernel saw (VmHWM), or the
// highest sample when the peak could not be read.
func (m *monitor) peakRSS() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	peak := m.hwm
	for _, s := range m.rss {
		peak = max(peak, s.rss)
	}
	return peak
}

// rssBetween returns the RSS samples taken in [from, to).
func (m *monitor) rssBetween(from, to time.Time) []rssSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []rssSample
	for _, s := range m.rss {
		if !s.at.Before(from) && s.at.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

func (m *monitor) metricSamples() []metricsSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]metricsSample(nil), m.metrics...)
}

func (m *monitor) statusSamples() []statusSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]statusSample(nil), m.statuses...)
}

// lastMetrics is the last /metrics read, the zero value when none was.
func (m *monitor) lastMetrics() metricsDoc {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.metrics) == 0 {
		return metricsDoc{}
	}
	return m.metrics[len(m.metrics)-1].m
}

// memStatus reads VmRSS and VmHWM of pid in bytes.
func memStatus(pid int) (rss, hwm int64, err error) { return procfs.Mem(pid) }

// meanRSS is the mean of samples, 0 for none.
func meanRSS(samples []rssSample) int64 {
	if len(samples) == 0 {
		return 0
	}
	var sum int64
	for _, s := range samples {
		sum += s.rss
	}
	return sum / int64(len(samples))
}

func maxRSS(samples []rssSample) int64 {
	var m int64
	for _, s := range samples {
		m = max(m, s.rss)
	}
	return m
}
