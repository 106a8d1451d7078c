package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/record"
)

// Lag per assigned partition, the figure KEDA's Kafka scaler computes:
//
//	sluice_consumer_lag_records = high watermark - position
//
// The high watermark comes from fetch responses; for partitions no fetch has
// reported for a while (idle, or paused by the gate or the breaker) the lag
// loop lists it from the brokers (ListOffsets). The position is the tracker's
// (the done prefix, which reaches Kafka within commit.interval); until a
// record of the assignment is done it is the group's committed offset that
// the lag loop fetches from the broker at assignment (OffsetFetch). A
// partition the group never committed counts from where consumption starts:
// the log start offset with start_offset earliest (as kadm's lag does), the
// end offset with latest.
//
//	sluice_consumer_lag_seconds = now - timestamp of the oldest admitted record not yet done
//
// The timestamp is the record's Kafka timestamp, or its admission time when
// that is later (a producer's clock ahead of ours) or missing; 0 when nothing
// is outstanding. Series exist only for the partitions assigned at the scrape.

// lagTimestamp is the timestamp the tracker keeps for a record admitted at
// now (Unix nanoseconds): its Kafka timestamp, bounded above by now.
func lagTimestamp(ts time.Time, now int64) int64 {
	if ts.IsZero() || ts.Unix() <= 0 {
		return now
	}
	return min(ts.UnixNano(), now)
}

// position returns the partition's position, whether it is a committed
// offset (rather than where consumption starts for a group without a
// commit), and whether it is known. Called with c.mu held.
func (ps *partition) position() (off int64, committed, ok bool) {
	switch {
	case ps.t.known:
		return ps.t.pos.Offset, true, true
	case ps.baseKnown:
		return ps.base, ps.committed, true
	default:
		return -1, false, false
	}
}

// lag returns high watermark minus position, when both are known. Called
// with c.mu held.
func (ps *partition) lag() (int64, bool) {
	off, _, ok := ps.position()
	if !ok || ps.hwm < 0 {
		return 0, false
	}
	return max(0, ps.hwm-off), true
}

// lagSeconds returns the age at now (Unix nanoseconds) of the oldest record
// not yet done, 0 when none is outstanding. Called with c.mu held.
func (ps *partition) lagSeconds(now int64) float64 {
	ts, ok := ps.t.oldest()
	if !ok {
		return 0
	}
	return max(0, time.Duration(now-ts).Seconds())
}

// lagCollector exports the consumer's lag per assigned partition. It owns no
// state: every scrape reads the consumer's partitions under its lock, so the
// series of a partition vanish with its assignment.
type lagCollector struct {
	c       *Consumer
	records *prometheus.Desc
	seconds *prometheus.Desc
}

func newLagCollector(c *Consumer) *lagCollector {
	labels := []string{"topic", "partition"}
	return &lagCollector{
		c: c,
		records: prometheus.NewDesc("sluice_consumer_lag_records",
			"High watermark minus the group's committed position (the done prefix, committed within commit.interval), per assigned partition.",
			labels, nil),
		seconds: prometheus.NewDesc("sluice_consumer_lag_seconds",
			"Age of the oldest admitted record not yet done (by its Kafka timestamp), per assigned partition; 0 when none is outstanding.",
			labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (l *lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- l.records
	ch <- l.seconds
}

// Collect implements prometheus.Collector.
func (l *lagCollector) Collect(ch chan<- prometheus.Metric) {
	type sample struct {
		p       record.Partition
		lag     int64
		lagOK   bool
		seconds float64
	}
	now := time.Now().UnixNano()
	l.c.mu.Lock()
	samples := make([]sample, 0, len(l.c.parts))
	for p, ps := range l.c.parts {
		lag, ok := ps.lag()
		samples = append(samples, sample{p: p, lag: lag, lagOK: ok, seconds: ps.lagSeconds(now)})
	}
	l.c.mu.Unlock()
	// The channel may block on the registry: send outside the lock.
	for _, s := range samples {
		part := fmt.Sprint(s.p.Partition)
		if s.lagOK {
			ch <- prometheus.MustNewConstMetric(l.records, prometheus.GaugeValue, float64(s.lag), s.p.Topic, part)
		}
		ch <- prometheus.MustNewConstMetric(l.seconds, prometheus.GaugeValue, s.seconds, s.p.Topic, part)
	}
}

// lagRefreshInterval is how often the lag loop lists high watermarks.
func (c *Consumer) lagRefreshInterval() time.Duration {
	if d := c.opts.LagRefreshInterval; d > 0 {
		return d
	}
	return min(max(c.opts.CommitInterval, time.Second), 5*time.Second)
}

// lagLoop refreshes what fetches do not tell: the committed offsets of newly
// assigned partitions (at once after an assignment) and the high watermarks of
// partitions no fetch reported within the interval. It returns when ctx is done.
func (c *Consumer) lagLoop(ctx context.Context) {
	every := c.lagRefreshInterval()
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		}
		err := c.refreshLag(ctx, every)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			c.log.Warn("cannot read offsets from the brokers; the lag of idle or paused partitions may be stale until this recovers", zap.Error(err))
		case err == nil && failing:
			failing = false
			c.log.Info("reading offsets from the brokers works again")
		}
	}
}

// assignedAt names one partition of one assignment.
type assignedAt struct {
	p   record.Partition
	gen uint64
}

// refreshLag fetches the group's committed offsets of partitions whose
// position is unknown and lists the end offsets of partitions whose high
// watermark is older than stale. Results for a partition that was revoked or
// re-assigned meanwhile are dropped.
func (c *Consumer) refreshLag(ctx context.Context, stale time.Duration) error {
	now := time.Now()
	var needBase, needEnd []assignedAt
	c.mu.Lock()
	for p, ps := range c.parts {
		if !ps.t.known && !ps.baseKnown {
			needBase = append(needBase, assignedAt{p, ps.gen})
		}
		if ps.hwm < 0 || now.Sub(ps.hwmAt) >= stale {
			needEnd = append(needEnd, assignedAt{p, ps.gen})
		}
	}
	c.mu.Unlock()
	if len(needBase) == 0 && len(needEnd) == 0 {
		return nil
	}

	var errs []error
	base := map[record.Partition]int64{}  // committed offsets
	start := map[record.Partition]int64{} // no commit: where consumption starts
	var noCommit []assignedAt
	if len(needBase) > 0 {
		commits, err := c.adm.FetchOffsets(ctx, c.opts.Kafka.Group)
		if errors.Is(err, kerr.GroupIDNotFound) { // a group that never committed (kfake)
			commits, err = kadm.OffsetResponses{}, nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("fetching the group's committed offsets: %w", err))
		} else {
			for _, a := range needBase {
				o, ok := commits.Lookup(a.p.Topic, a.p.Partition)
				switch {
				case ok && o.Err != nil:
					errs = append(errs, fmt.Errorf("committed offset of %s: %w", a.p, o.Err))
				case ok && o.At >= 0:
					base[a.p] = o.At
				default:
					noCommit = append(noCommit, a)
				}
			}
		}
	}
	if len(noCommit) > 0 {
		if c.opts.Kafka.StartOffset == config.StartLatest {
			needEnd = append(needEnd, noCommit...) // starts at the end offset listed below
		} else {
			listed, err := c.adm.ListStartOffsets(ctx, topicsOf(noCommit)...)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing start offsets: %w", err))
			}
			for _, a := range noCommit {
				if o, ok := listed.Lookup(a.p.Topic, a.p.Partition); ok && o.Err == nil {
					start[a.p] = o.Offset
				}
			}
		}
	}
	end := map[record.Partition]int64{}
	if len(needEnd) > 0 {
		listed, err := c.adm.ListEndOffsets(ctx, topicsOf(needEnd)...)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing end offsets: %w", err))
		}
		for _, a := range needEnd {
			if o, ok := listed.Lookup(a.p.Topic, a.p.Partition); ok && o.Err == nil {
				end[a.p] = o.Offset
			}
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	apply := func(as []assignedAt, fn func(*partition, record.Partition)) {
		for _, a := range as {
			if ps := c.parts[a.p]; ps != nil && ps.gen == a.gen {
				fn(ps, a.p)
			}
		}
	}
	apply(needEnd, func(ps *partition, p record.Partition) {
		if off, ok := end[p]; ok {
			// A fetch may have reported a newer one since the listing.
			ps.hwm, ps.hwmAt = max(ps.hwm, off), now
		}
	})
	apply(needBase, func(ps *partition, p record.Partition) {
		if off, ok := base[p]; ok {
			ps.base, ps.baseKnown, ps.committed = off, true, true
		}
	})
	apply(noCommit, func(ps *partition, p record.Partition) {
		off, ok := start[p]
		if c.opts.Kafka.StartOffset == config.StartLatest {
			off, ok = end[p]
		}
		if ok {
			ps.base, ps.baseKnown, ps.committed = off, true, false
		}
	})
	return errors.Join(errs...)
}

func topicsOf(as []assignedAt) []string {
	var ts []string
	for _, a := range as {
		if !slices.Contains(ts, a.p.Topic) {
			ts = append(ts, a.p.Topic)
		}
	}
	return ts
}
