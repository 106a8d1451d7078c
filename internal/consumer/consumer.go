// Package consumer is sluice's Kafka side: it joins the consumer group, polls
// records into the flow pipeline while the gate has room, pauses and resumes
// partitions for the gate (and the breaker), tracks which records are done and
// commits the contiguous done prefix of every partition, and exports each
// partition's lag (lag.go).
//
// Concurrency contract: Run owns the poll loop, the commit loop and the lag
// refresh loop and returns only after all three have stopped and the client is
// closed. The lag Collector may be scraped from any goroutine. Done, PauseForGate,
// ResumeForGate, PauseAll, ResumeAll and Stats may be called from any goroutine.
// Rebalance callbacks run on franz-go's group goroutine, never during the
// admission of a poll (BlockRebalanceOnPoll).
package consumer

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/plugin/kprom"
	"github.com/twmb/franz-go/plugin/kzap"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/metrics"
	"github.com/sluicehq/sluice/internal/record"
)

// Pipeline is what the consumer feeds. Room, Admit and CloseInput are called
// only from the poll loop.
type Pipeline interface {
	Room(r *record.Record) bool
	Admit(r *record.Record)
	CloseInput()
	Drained() <-chan struct{}
}

// Gate is the part of the flow gate the poll loop consults.
type Gate interface {
	FreeRecords() int
	Changed() <-chan struct{}
	Forget(ps []record.Partition)
}

// Options are the consumer's settings and injected dependencies.
type Options struct {
	Kafka           config.Kafka
	CommitInterval  time.Duration
	ShutdownTimeout time.Duration
	Logger          *zap.Logger
	Metrics         *metrics.Metrics
	// Registerer receives the per-partition lag metrics (a Collector, see
	// lag.go) and franz-go's client metrics (kprom, when it is also a
	// Gatherer); nil skips both.
	Registerer prometheus.Registerer
	// LagRefreshInterval is how often high watermarks of partitions that no
	// fetch reported lately (idle or paused) are listed from the brokers; 0
	// means CommitInterval, within 1s to 5s.
	LagRefreshInterval time.Duration
	// ExtraOpts are appended to the client options (tests, the demo).
	ExtraOpts []kgo.Opt
}

// Consumer is one member of the consumer group.
type Consumer struct {
	opts Options
	log  *zap.Logger
	m    *metrics.Metrics
	cl   *kgo.Client
	adm  *kadm.Client // on cl: committed offsets and end offsets for lag
	pipe Pipeline
	gate Gate

	mu      sync.Mutex // guards parts, gen, pending, closing
	parts   map[record.Partition]*partition
	gen     uint64
	pending []*record.Record // polled, not yet admitted: the gate had no room
	closing bool

	pauseMu sync.Mutex // guards paused; never held while taking mu
	paused  map[record.Partition]pauseReason
	breaker bool // the breaker holds every partition paused

	commitMu sync.Mutex    // serialises commits
	refresh  chan struct{} // size 1: an assignment asks the lag loop for a refresh
	joined   chan struct{}
	joinOnce sync.Once
}

type pauseReason uint8

const (
	pausedByGate pauseReason = 1 << iota
	pausedByBreaker
)

type partition struct {
	gen   uint64
	t     tracker
	hwm   int64     // high watermark from the latest fetch or listing, -1 until one
	hwmAt time.Time // when hwm was last set
	// base is the position the group had when the partition was assigned, as
	// the lag loop fetched it from the broker: the committed offset, or where
	// consumption starts when the group has none. It stands in for the
	// tracker's position until a record of this assignment is done.
	base      int64
	baseKnown bool
	committed bool // base is a committed offset (not a start position)
	revoking  bool
}

// New creates the Kafka client; it connects lazily and starts no goroutine of
// sluice's own until Run.
func New(opts Options, pipe Pipeline, gate Gate) (*Consumer, error) {
	c := &Consumer{opts: opts, log: opts.Logger, m: opts.Metrics, pipe: pipe, gate: gate,
		parts: map[record.Partition]*partition{}, paused: map[record.Partition]pauseReason{},
		refresh: make(chan struct{}, 1), joined: make(chan struct{})}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	k := opts.Kafka
	kopts := []kgo.Opt{
		kgo.SeedBrokers(k.Brokers...),
		kgo.ClientID(k.ClientID),
		kgo.ConsumerGroup(k.Group),
		kgo.ConsumeTopics(k.Topics...),
		kgo.BlockRebalanceOnPoll(),
		kgo.DisableAutoCommit(),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.FetchMaxWait(k.FetchMaxWait),
		kgo.FetchMaxBytes(int32(min(int64(k.FetchMaxBytes), 1<<31-1))),
		kgo.FetchMaxPartitionBytes(int32(min(int64(k.PartitionFetchMaxBytes), 1<<31-1))),
		kgo.MaxConcurrentFetches(k.MaxConcurrentFetches),
		kgo.SessionTimeout(k.SessionTimeout),
		kgo.RebalanceTimeout(k.RebalanceTimeout),
		kgo.Balancers(balancer(k.Balancer)),
		kgo.WithLogger(kzap.New(c.log.Named("kafka"), kzap.Level(kgo.LogLevelWarn))),
	}
	if k.StartOffset == "latest" {
		kopts = append(kopts, kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))
	} else {
		kopts = append(kopts, kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	}
	sec, err := Security(k)
	if err != nil {
		return nil, err
	}
	kopts = append(kopts, sec...)
	if opts.Registerer != nil {
		if rg, ok := opts.Registerer.(kprom.RegistererGatherer); ok {
			kopts = append(kopts, kgo.WithHooks(kprom.NewMetrics("sluice_kafka",
				kprom.Registerer(kpromRegisterer{rg}), kprom.Gatherer(rg))))
		}
	}
	kopts = append(kopts, opts.ExtraOpts...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	c.cl, c.adm = cl, kadm.NewClient(cl)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(newLagCollector(c)); err != nil {
			cl.Close()
			return nil, fmt.Errorf("registering the lag metrics: %w", err)
		}
	}
	return c, nil
}

// kpromRegisterer registers kprom's collectors, renaming the two gauges kprom
// names like counters (buffered_fetch_records_total and
// buffered_produce_records_total), which promtool check metrics rejects, to
// sluice_kafka_buffered_fetch_records and sluice_kafka_buffered_produce_records.
type kpromRegisterer struct{ prometheus.Registerer }

func (r kpromRegisterer) Register(c prometheus.Collector) error {
	if g, ok := c.(prometheus.GaugeFunc); ok {
		descs := make(chan *prometheus.Desc, 1) // a GaugeFunc has one Desc
		g.Describe(descs)
		if d := (<-descs).String(); strings.Contains(d, `buffered_`) && strings.Contains(d, `_records_total"`) {
			name := "sluice_kafka_buffered_fetch_records"
			if strings.Contains(d, "produce") {
				name = "sluice_kafka_buffered_produce_records"
			}
			c = renamedGauge{g, prometheus.NewDesc(name, "Records the Kafka client has buffered (kprom's "+name+"_total).", nil, nil)}
		}
	}
	return r.Registerer.Register(c)
}

func (r kpromRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// renamedGauge exports a GaugeFunc without labels under another Desc.
type renamedGauge struct {
	g    prometheus.GaugeFunc
	desc *prometheus.Desc
}

func (r renamedGauge) Describe(ch chan<- *prometheus.Desc) { ch <- r.desc }

func (r renamedGauge) Collect(ch chan<- prometheus.Metric) {
	var m dto.Metric
	if err := r.g.Write(&m); err == nil {
		ch <- prometheus.MustNewConstMetric(r.desc, prometheus.GaugeValue, m.GetGauge().GetValue())
	}
}

// Security returns the TLS and SASL client options for k; the DLQ producer
// uses the same.
func Security(k config.Kafka) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	if k.TLS.Enabled {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: k.TLS.ServerName}
		if k.TLS.CAFile != "" {
			pem, err := os.ReadFile(k.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("kafka.tls.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kafka.tls.ca_file: no PEM certificate in %s", k.TLS.CAFile)
			}
			tc.RootCAs = pool
		}
		if k.TLS.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(k.TLS.CertFile, k.TLS.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("kafka.tls.cert_file/key_file: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	user, pass := k.SASL.Username, k.SASL.Password.Reveal()
	switch k.SASL.Mechanism {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: user, Pass: pass}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka.sasl.mechanism: unsupported %q", k.SASL.Mechanism)
	}
	return opts, nil
}

func balancer(name string) kgo.GroupBalancer {
	switch name {
	case "sticky":
		return kgo.StickyBalancer()
	case "range":
		return kgo.RangeBalancer()
	case "roundrobin":
		return kgo.RoundRobinBalancer()
	default:
		return kgo.CooperativeStickyBalancer()
	}
}

// Client returns the underlying client, for the DLQ producer's metadata and for tests.
func (c *Consumer) Client() *kgo.Client { return c.cl }

// Joined is closed once the first assignment arrived (readiness).
func (c *Consumer) Joined() <-chan struct{} { return c.joined }

// Run polls until ctx is done, then closes the pipeline's input, waits for it
// to drain (at most ShutdownTimeout), commits what is done, leaves the group
// and closes the client. It returns nil after a clean stop.
func (c *Consumer) Run(ctx context.Context) error {
	// The commit and lag loops outlive ctx: they run until the drain is over.
	commitCtx, stopCommits := context.WithCancel(context.WithoutCancel(ctx))
	var loops sync.WaitGroup
	loops.Go(func() { c.commitLoop(commitCtx) })
	loops.Go(func() { c.lagLoop(commitCtx) })

	c.pollLoop(ctx)

	c.pipe.CloseInput()
	drain := time.NewTimer(c.opts.ShutdownTimeout)
	select {
	case <-c.pipe.Drained():
	case <-drain.C:
		c.log.Warn("shutdown_timeout passed before the pipeline drained; committing what is done")
	}
	drain.Stop()
	stopCommits()
	loops.Wait()

	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	err := c.commit(fctx, nil)
	cancel()
	c.cl.CloseAllowingRebalance()
	if err != nil {
		return fmt.Errorf("final commit: %w", err)
	}
	return nil
}

func (c *Consumer) pollLoop(ctx context.Context) {
	maxPoll := c.opts.Kafka.MaxPollRecords
	for ctx.Err() == nil {
		c.admitPending()
		if c.hasPending() || c.gate.FreeRecords() == 0 {
			// No poll while the gate is full: wait for it to drain a little.
			t := time.NewTimer(250 * time.Millisecond)
			select {
			case <-c.gate.Changed():
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		n := min(maxPoll, c.gate.FreeRecords())
		fetches := c.cl.PollRecords(ctx, n)
		if fetches.IsClientClosed() {
			c.cl.AllowRebalance()
			return
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			c.log.Warn("fetch error; the client retries", zap.String("topic", topic), zap.Int32("partition", p), zap.Error(err))
		})
		now := time.Now()
		c.mu.Lock()
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			if ps := c.parts[record.Partition{Topic: fp.Topic, Partition: fp.Partition}]; ps != nil && fp.HighWatermark >= 0 {
				ps.hwm, ps.hwmAt = fp.HighWatermark, now
			}
		})
		fetches.EachRecord(func(kr *kgo.Record) { c.pending = append(c.pending, convert(kr)) })
		c.mu.Unlock()
		c.admitPending()
		c.cl.AllowRebalance()
	}
	c.cl.AllowRebalance()
}

func (c *Consumer) hasPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) > 0
}

// admitPending admits pending records in poll order while the gate has room.
func (c *Consumer) admitPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return
	}
	now := time.Now().UnixNano()
	i := 0
	for ; i < len(c.pending); i++ {
		r := c.pending[i]
		ps := c.parts[r.Part()]
		if ps == nil || ps.revoking {
			continue // no longer ours: the next owner reads it from the last commit
		}
		if !c.pipe.Room(r) {
			break
		}
		r.Ticket = record.Ticket{Generation: ps.gen, Seq: ps.t.add(r.Offset, r.LeaderEpoch, lagTimestamp(r.Timestamp, now))}
		c.pipe.Admit(r)
	}
	n := copy(c.pending, c.pending[i:])
	clear(c.pending[n:])
	c.pending = c.pending[:n]
}

func convert(kr *kgo.Record) *record.Record {
	r := &record.Record{Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset, LeaderEpoch: kr.LeaderEpoch,
		Timestamp: kr.Timestamp, Key: kr.Key, Value: kr.Value}
	if len(kr.Headers) > 0 {
		r.Headers = make([]record.Header, len(kr.Headers))
		for i, h := range kr.Headers {
			r.Headers[i] = record.Header{Key: h.Key, Value: h.Value}
		}
	}
	return r
}

// Done marks records done; the commit position of their partitions moves over
// the done prefix. Records of an assignment that has since ended are ignored.
func (c *Consumer) Done(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var last record.Partition
	var ps *partition
	for i, r := range rs {
		if p := r.Part(); i == 0 || p != last {
			last, ps = p, c.parts[p]
		}
		if ps == nil || ps.gen != r.Ticket.Generation {
			continue
		}
		ps.t.done(r.Ticket.Seq)
	}
}

func (c *Consumer) commitLoop(ctx context.Context) {
	t := time.NewTicker(c.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.commit(ctx, nil); err != nil && ctx.Err() == nil {
				c.log.Warn("offset commit failed; the next one retries", zap.Error(err))
			}
		}
	}
}

// commit commits the position of every owned partition whose position is
// known (of only those in only, when it is not nil). Idle partitions are
// committed too, so that lag-based autoscalers see the group alive.
func (c *Consumer) commit(ctx context.Context, only map[record.Partition]bool) error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	offsets := map[string]map[int32]kgo.EpochOffset{}
	c.mu.Lock()
	for p, ps := range c.parts {
		if !ps.t.known || (only != nil && !only[p]) {
			continue
		}
		if offsets[p.Topic] == nil {
			offsets[p.Topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[p.Topic][p.Partition] = ps.t.pos
		ps.t.dirty = false
	}
	c.mu.Unlock()
	if len(offsets) == 0 {
		return nil
	}
	var cerr error
	c.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerrFor(p.ErrorCode); e != nil && cerr == nil {
					cerr = fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, e)
				}
			}
		}
	})
	if cerr != nil {
		c.m.CommitErrors.Inc()
		return cerr
	}
	c.m.Commits.Inc()
	return nil
}

// assigned starts tracking newly assigned partitions. franz-go keeps pauses
// across rebalances, so a partition sluice does not hold paused is resumed
// here explicitly, and one the breaker holds is paused.
func (c *Consumer) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	var ps []record.Partition
	c.mu.Lock()
	for topic, parts := range assigned {
		for _, p := range parts {
			c.gen++
			rp := record.Partition{Topic: topic, Partition: p}
			c.parts[rp] = &partition{gen: c.gen, hwm: -1}
			ps = append(ps, rp)
		}
	}
	c.mu.Unlock()
	if len(ps) == 0 {
		return
	}
	c.m.Rebalances.Inc()
	c.gate.Forget(ps)
	c.pauseMu.Lock()
	for _, p := range ps {
		delete(c.paused, p)
	}
	cl.ResumeFetchPartitions(assigned)
	if c.breaker {
		for _, p := range ps {
			c.paused[p] = pausedByBreaker
		}
		cl.PauseFetchPartitions(assigned)
		c.m.PartitionPauses.WithLabelValues("breaker").Add(float64(len(ps)))
	}
	c.publishPausedLocked()
	c.pauseMu.Unlock()
	select { // the lag loop fetches the group's committed offsets of the new partitions
	case c.refresh <- struct{}{}:
	default: // a refresh is already due
	}
	c.log.Info("partitions assigned", zap.Any("partitions", assigned))
	c.joinOnce.Do(func() { close(c.joined) })
}

// revoked stops admitting records of the revoked partitions, waits (bounded
// by the rebalance timeout) for their admitted records to be done, commits
// them and releases them.
func (c *Consumer) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := flatten(revoked)
	if len(ps) == 0 {
		return
	}
	c.m.Rebalances.Inc()
	c.mu.Lock()
	only := map[record.Partition]bool{}
	for _, p := range ps {
		if st := c.parts[p]; st != nil {
			st.revoking = true
			only[p] = true
		}
	}
	closing := c.closing
	c.mu.Unlock()

	deadline := time.Now().Add(c.opts.Kafka.RebalanceTimeout * 9 / 10)
	for !closing && time.Now().Before(deadline) && c.outstanding(ps) > 0 {
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-c.pipe.Drained():
			deadline = time.Now() // nothing more will finish
		case <-time.After(10 * time.Millisecond):
		}
	}
	if n := c.outstanding(ps); n > 0 {
		c.log.Warn("releasing revoked partitions with records still in flight; they will be redelivered to the next owner",
			zap.Int("records", n))
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	if err := c.commit(cctx, only); err != nil {
		c.log.Warn("commit on revoke failed; the next owner may see a few records again", zap.Error(err))
	}
	cancel()
	c.release(cl, ps, revoked)
	c.log.Info("partitions revoked", zap.Any("partitions", revoked))
}

// lost drops the lost partitions without committing: another member may own
// them already. Their records still in flight finish, but are not committed.
func (c *Consumer) lost(_ context.Context, cl *kgo.Client, lost map[string][]int32) {
	ps := flatten(lost)
	if len(ps) == 0 {
		return
	}
	c.m.Rebalances.Inc()
	c.release(cl, ps, lost)
	c.log.Warn("partitions lost; their uncommitted records will be redelivered", zap.Any("partitions", lost))
}

func (c *Consumer) release(cl *kgo.Client, ps []record.Partition, m map[string][]int32) {
	c.mu.Lock()
	for _, p := range ps {
		delete(c.parts, p)
	}
	c.mu.Unlock()
	c.gate.Forget(ps)
	c.pauseMu.Lock()
	for _, p := range ps {
		delete(c.paused, p)
	}
	cl.ResumeFetchPartitions(m)
	c.publishPausedLocked()
	c.pauseMu.Unlock()
}

func (c *Consumer) outstanding(ps []record.Partition) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range ps {
		if st := c.parts[p]; st != nil {
			n += st.t.outstanding()
		}
	}
	return n
}

func flatten(m map[string][]int32) []record.Partition {
	var ps []record.Partition
	for t, parts := range m {
		for _, p := range parts {
			ps = append(ps, record.Partition{Topic: t, Partition: p})
		}
	}
	return ps
}

func toMap(ps []record.Partition) map[string][]int32 {
	m := map[string][]int32{}
	for _, p := range ps {
		m[p.Topic] = append(m[p.Topic], p.Partition)
	}
	return m
}

// PauseForGate pauses fetching of ps for the gate. Called with the gate's lock held.
func (c *Consumer) PauseForGate(ps []record.Partition) { c.pause(ps, pausedByGate, "gate") }

// ResumeForGate lifts the gate's pause of ps.
func (c *Consumer) ResumeForGate(ps []record.Partition) { c.resume(ps, pausedByGate) }

// PauseAll pauses every assigned partition for the breaker, and partitions
// assigned later while it holds.
func (c *Consumer) PauseAll() {
	c.pauseMu.Lock()
	c.breaker = true
	c.pauseMu.Unlock()
	c.pause(c.assignedPartitions(), pausedByBreaker, "breaker")
}

// ResumeAll lifts the breaker's pause.
func (c *Consumer) ResumeAll() {
	c.pauseMu.Lock()
	c.breaker = false
	var ps []record.Partition
	for p, r := range c.paused {
		if r&pausedByBreaker != 0 {
			ps = append(ps, p)
		}
	}
	c.pauseMu.Unlock()
	c.resume(ps, pausedByBreaker)
}

func (c *Consumer) assignedPartitions() []record.Partition {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := make([]record.Partition, 0, len(c.parts))
	for p := range c.parts {
		ps = append(ps, p)
	}
	return ps
}

func (c *Consumer) pause(ps []record.Partition, why pauseReason, label string) {
	c.pauseMu.Lock()
	defer c.pauseMu.Unlock()
	var now []record.Partition
	for _, p := range ps {
		was := c.paused[p]
		c.paused[p] = was | why
		if was&why == 0 {
			c.m.PartitionPauses.WithLabelValues(label).Inc()
		}
		if was == 0 {
			now = append(now, p)
		}
	}
	if len(now) > 0 {
		c.cl.PauseFetchPartitions(toMap(now))
	}
	c.publishPausedLocked()
}

func (c *Consumer) resume(ps []record.Partition, why pauseReason) {
	c.pauseMu.Lock()
	defer c.pauseMu.Unlock()
	var now []record.Partition
	for _, p := range ps {
		was, ok := c.paused[p]
		if !ok || was&why == 0 {
			continue
		}
		if rest := was &^ why; rest != 0 {
			c.paused[p] = rest
			continue
		}
		delete(c.paused, p)
		now = append(now, p)
	}
	if len(now) > 0 {
		c.cl.ResumeFetchPartitions(toMap(now))
	}
	c.publishPausedLocked()
}

func (c *Consumer) publishPausedLocked() { c.m.PartitionsPaused.Set(float64(len(c.paused))) }

// PartitionStats is one assigned partition as /status and the demo show it.
// Lag and LagSeconds are the figures of sluice_consumer_lag_records and
// sluice_consumer_lag_seconds.
type PartitionStats struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Committed is the position of this assignment's done prefix (committed
	// within commit.interval), else the group's committed offset fetched from
	// the broker at assignment; -1 while neither is known or the group has no
	// commit for the partition.
	Committed     int64   `json:"committed_offset"`
	HighWatermark int64   `json:"high_watermark"` // -1 until a fetch or a listing reported it
	Lag           int64   `json:"lag"`            // high watermark minus position; -1 while unknown
	LagSeconds    float64 `json:"lag_seconds"`    // age of the oldest record not yet done; 0 when none is outstanding
	InFlight      int     `json:"in_flight"`
	Paused        bool    `json:"paused"`
	PausedBy      string  `json:"paused_by,omitempty"`
}

// Stats returns the assigned partitions.
func (c *Consumer) Stats() []PartitionStats {
	now := time.Now().UnixNano()
	c.mu.Lock()
	out := make([]PartitionStats, 0, len(c.parts))
	for p, ps := range c.parts {
		s := PartitionStats{Topic: p.Topic, Partition: p.Partition, Committed: -1, HighWatermark: ps.hwm, Lag: -1,
			LagSeconds: ps.lagSeconds(now), InFlight: ps.t.outstanding()}
		if off, committed, ok := ps.position(); ok && committed {
			s.Committed = off
		}
		if lag, ok := ps.lag(); ok {
			s.Lag = lag
		}
		out = append(out, s)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b PartitionStats) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
	})
	c.pauseMu.Lock()
	for i := range out {
		r := c.paused[record.Partition{Topic: out[i].Topic, Partition: out[i].Partition}]
		out[i].Paused = r != 0
		switch {
		case r&pausedByBreaker != 0 && r&pausedByGate != 0:
			out[i].PausedBy = "gate,breaker"
		case r&pausedByBreaker != 0:
			out[i].PausedBy = "breaker"
		case r&pausedByGate != 0:
			out[i].PausedBy = "gate"
		}
	}
	c.pauseMu.Unlock()
	return out
}
