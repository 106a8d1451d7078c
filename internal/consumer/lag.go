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
//	sluice_consumer_lag_seconds = now - min(timestamp of the record at the position, when sluice holds it,
//	                                        when the position was first seen behind the high watermark)
//
// It is the age of the partition's oldest record not yet done (the one at the
// position), as a lower bound. When sluice holds that record (admitted, or
// polled and waiting for room in the gate) the age is exact: the record's
// Kafka timestamp, or the time sluice took it when that timestamp is later (a
// producer's clock ahead of ours) or missing. When the record is still in
// Kafka, as for a partition paused by the gate or the breaker (the client
// drops what it buffered for a paused partition, and no poll returns its
// records), its timestamp is unknown; but it existed when the high watermark
// was first seen beyond the position, and the position has not moved since:
// the stall, which the lag loop observes every refresh interval and every
// scrape observes too, bounds its age from below. The larger age is reported;
// 0 when the partition is caught up or its position is unknown. A
// transaction's commit marker takes an offset and is no record (a fully read
// transactional partition lags 1 for ever), so a lag of 1 counts as a stall
// only when the partition's last polled record was not transactional. Series
// exist only for the partitions assigned at the scrape.

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

// stall is how long a partition's position has stood behind its high
// watermark: the lower bound of consumer_lag_seconds for a record sluice does
// not hold. Guarded by c.mu, like the partition.
type stall struct {
	pos   int64 // the position the stall was observed at
	since int64 // Unix nanoseconds of the first observation behind at pos; 0: not behind
	// plainTail says the partition's last polled record was not
	// transactional, so no commit marker follows it: the offset after it,
	// when the high watermark is beyond, is a record.
	plainTail bool
}

// observeStall notes at now (Unix nanoseconds) whether the position stands
// behind the high watermark, and since when at this position. The time is
// that of the observation, never earlier: the record at the position existed
// then (the high watermark was read before), so the stall's age never exceeds
// the record's. Called with c.mu held.
func (ps *partition) observeStall(now int64) {
	off, _, ok := ps.position()
	behind := int64(2) // a commit marker alone lags 1
	if ps.stall.plainTail || ps.t.outstanding() > 0 {
		behind = 1
	}
	if !ok || ps.hwm < 0 || ps.hwm-off < behind {
		ps.stall.since = 0
		return
	}
	if ps.stall.since == 0 || ps.stall.pos != off {
		ps.stall.pos, ps.stall.since = off, now
	}
}

// lagSeconds returns consumer_lag_seconds at now (Unix nanoseconds): the age
// of the record at the position if sluice holds it (the tracker's oldest, or
// else polled, the timestamp of the partition's first pending record when
// pending is true), or of the stall if that is older; 0 when neither is
// known. It observes the stall first. Called with c.mu held.
func (ps *partition) lagSeconds(now, pendingTS int64, pending bool) float64 {
	ps.observeStall(now)
	ts, ok := ps.t.oldest()
	if !ok && pending {
		ts, ok = pendingTS, true
	}
	if s := ps.stall.since; s != 0 && (!ok || s < ts) {
		ts, ok = s, true
	}
	if !ok {
		return 0
	}
	return max(0, time.Duration(now-ts).Seconds())
}

// lagSecondsLocked returns consumer_lag_seconds of every assigned partition
// at now (Unix nanoseconds). Called with c.mu held.
func (c *Consumer) lagSecondsLocked(now int64) map[record.Partition]float64 {
	// The first pending record of a partition is its oldest polled and not
	// admitted: pending is in poll order.
	first := map[record.Partition]int64{}
	for _, r := range c.pending {
		if _, ok := first[r.Part()]; !ok {
			first[r.Part()] = lagTimestamp(r.Timestamp, now)
		}
	}
	out := make(map[record.Partition]float64, len(c.parts))
	for p, ps := range c.parts {
		ts, ok := first[p]
		out[p] = ps.lagSeconds(now, ts, ok)
	}
	return out
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
			"Age of the oldest record not yet done (written or dead-lettered), per assigned partition, as a lower bound: "+
				"by its Kafka timestamp when sluice holds the record; for a record still in Kafka (a paused partition's), "+
				"how long the position has stood behind the high watermark; 0 when caught up.",
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
	l.c.mu.Lock()
	// Read under the lock: no high watermark is newer than now.
	seconds := l.c.lagSecondsLocked(time.Now().UnixNano())
	samples := make([]sample, 0, len(l.c.parts))
	for p, ps := range l.c.parts {
		lag, ok := ps.lag()
		samples = append(samples, sample{p: p, lag: lag, lagOK: ok, seconds: seconds[p]})
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

// refreshLag observes every partition's stall, fetches the group's committed
// offsets of partitions whose position is unknown and lists the end offsets
// of partitions whose high watermark is older than stale. Results for a
// partition that was revoked or re-assigned meanwhile are dropped.
func (c *Consumer) refreshLag(ctx context.Context, stale time.Duration) error {
	now := time.Now()
	var needBase, needEnd []assignedAt
	c.mu.Lock()
	observed := time.Now().UnixNano() // under the lock: no high watermark is newer
	for p, ps := range c.parts {
		ps.observeStall(observed)
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
	// After the listing: a record behind a new high watermark may be
	// younger than now.
	observed = time.Now().UnixNano()
	apply := func(as []assignedAt, fn func(*partition, record.Partition)) {
		for _, a := range as {
			if ps := c.parts[a.p]; ps != nil && ps.gen == a.gen {
				fn(ps, a.p)
				ps.observeStall(observed)
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
