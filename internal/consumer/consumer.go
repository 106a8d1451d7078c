// Package consumer is sluice's Kafka side: it joins the consumer group, polls
// records into the flow pipeline while the gate has room, pauses and resumes
// partitions for the gate (and the breaker), tracks which records are done and
// commits the contiguous done prefix of every partition, and exports each
// partition's lag (lag.go). With exactly-once delivery (Options.Offsets) the
// positions the sink stores with the rows are the truth: the consumer seeks
// every assigned partition to its stored position, and again after the sink
// fenced it; Kafka commits continue, for lag and autoscalers.
//
// Concurrency contract: Run owns the poll loop, the commit loop and the lag
// refresh loop and returns only after all three have stopped and the client is
// closed. The lag Collector may be scraped from any goroutine. Done, Fence,
// PauseForGate, ResumeForGate, PauseAll, ResumeAll and Stats may be called from
// any goroutine.
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
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
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

// Pipeline is what the consumer feeds. Fits, AdmitAll, Room and CloseInput
// are called only from the poll loop.
type Pipeline interface {
	// Fits returns how many of rs, in order, fit in the budget now.
	Fits(rs []*record.Record) int
	// AdmitAll hands over records Fits counted, in order.
	AdmitAll(rs []*record.Record)
	// Room reports whether r fits now; when it does not, the pipeline
	// pauses partitions (flow.Gate).
	Room(r *record.Record) bool
	CloseInput()
	Drained() <-chan struct{}
}

// Gate is the part of the flow gate the poll loop consults.
type Gate interface {
	FreeRecords() int
	Changed() <-chan struct{}
	Forget(ps []record.Partition)
}

// OffsetStore holds the partitions' positions for exactly-once delivery: the
// sink, which stores them with the rows (postgres.Sink). The consumer calls
// Claim from the rebalance callbacks and the poll loop, Release from the
// rebalance callbacks.
type OffsetStore interface {
	// Claim reads the stored next offsets of ps and claims ps for the
	// assignment generations given (the Ticket.Generation of the records the
	// consumer will admit for them): the sink then writes a partition only
	// for that assignment, with a compare-and-set on the offset read.
	// groupGeneration is the consumer group's, stored with the writes. It
	// returns the offsets of the partitions that have one.
	Claim(ctx context.Context, groupGeneration int32, ps map[record.Partition]uint64) (map[record.Partition]int64, error)
	// Release ends the claims of ps for the generations given: writes of
	// those assignments still in the pipeline are refused.
	Release(ps map[record.Partition]uint64)
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
	// Offsets, when set, makes delivery exactly-once: every assigned
	// partition starts at the position stored there (partitions without one
	// start from the group's committed offset, or kafka.start_offset), and a
	// partition the sink fenced is sought there again (see Fence).
	Offsets OffsetStore
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

	mu      sync.Mutex // guards parts, gen, pending, closing, interrupt, seekAt
	parts   map[record.Partition]*partition
	gen     uint64
	pending []*record.Record // polled, not yet admitted: the gate had no room
	closing bool
	// Exactly-once only: interrupt cuts the poll in progress short, so that
	// a fenced partition is sought at once; seekAt is when the poll loop may
	// retry a Claim that failed.
	interrupt context.CancelFunc
	seekAt    time.Time

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
	pausedBySeek // exactly-once: the stored position could not be read yet
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
	committed bool  // base is a committed offset (not a start position)
	stall     stall // since when the position stands behind hwm (lag.go)
	revoking  bool
	// seek (exactly-once) says the partition's stored position must be read
	// and sought before its records are admitted: they are dropped until
	// then. resume is where to seek if the store has no position for it: the
	// first record of a fenced assignment that was not done, or -1.
	seek   bool
	resume int64
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

// ConnectHint says what the operator should check when err is a failure to
// connect to the brokers with the options of Security: the SASL credentials
// or mechanism, the CA, the server name, the client certificate, TLS on a
// plaintext port or the other way round. It names configuration keys, never
// a secret, and returns "" for any other error. Neither franz-go nor the
// broker puts the password in these errors, so err may be shown with it.
func ConnectHint(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		notTLS    tls.RecordHeaderError
		op        *net.OpError
	)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, kerr.SaslAuthenticationFailed):
		return "the brokers refused the SASL login: check kafka.sasl.username, kafka.sasl.password (or password_file) and kafka.sasl.mechanism"
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "the brokers do not enable kafka.sasl.mechanism on this listener"
	case errors.As(err, &unknownCA):
		return "the broker's certificate is not signed by a CA sluice trusts: set kafka.tls.ca_file to the CA that signed it (empty uses the system roots)"
	case errors.As(err, &hostname):
		return "the broker's certificate does not name the address sluice connected to: set kafka.tls.server_name to a name in it, or list kafka.brokers by that name"
	case errors.As(err, &invalid):
		return "the broker's certificate is not valid (expired, not yet valid, or not for a server)"
	case errors.As(err, &notTLS):
		return "the broker does not speak TLS on this port: set kafka.tls.enabled to false, or use the broker's TLS listener"
	case errors.As(err, &op) && op.Op == "remote error":
		return "the broker refused the TLS handshake; if it requires a client certificate, set kafka.tls.cert_file and kafka.tls.key_file to one its CA signed"
	case strings.Contains(err.Error(), "speaking to a tls endpoint"):
		return "the broker speaks TLS on this port: set kafka.tls.enabled to true"
	}
	return ""
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
		fetches := c.poll(ctx, n)
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
			ps := c.parts[record.Partition{Topic: fp.Topic, Partition: fp.Partition}]
			if ps == nil {
				return
			}
			if fp.HighWatermark >= 0 {
				ps.hwm, ps.hwmAt = fp.HighWatermark, now
			}
			if n := len(fp.Records); n > 0 {
				// A commit marker may follow a transactional record (lag.go).
				ps.stall.plainTail = !fp.Records[n-1].Attrs.IsTransactional()
			}
		})
		// One allocation for the poll's records rather than one each.
		slab := make([]record.Record, fetches.NumRecords())
		fetches.EachRecord(func(kr *kgo.Record) {
			r := &slab[0]
			slab = slab[1:]
			convert(r, kr)
			c.pending = append(c.pending, r)
		})
		c.mu.Unlock()
		if c.opts.Offsets != nil {
			// No rebalance runs until AllowRebalance: the one moment
			// SetOffsets may be called outside a callback.
			c.seekWaiting(ctx)
		}
		c.admitPending()
		c.cl.AllowRebalance()
	}
	c.cl.AllowRebalance()
}

// poll polls at most n records. With exactly-once delivery Fence can cut it
// short, and it ends within a second while a partition waits for a Claim
// that failed, so that the poll loop seeks fenced partitions without delay.
func (c *Consumer) poll(ctx context.Context, n int) kgo.Fetches {
	if c.opts.Offsets == nil {
		return c.cl.PollRecords(ctx, n)
	}
	pctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	if c.seeksWaiting() {
		cancel()
		pctx, cancel = context.WithTimeout(ctx, time.Second)
	}
	c.interrupt = cancel
	c.mu.Unlock()
	fetches := c.cl.PollRecords(pctx, n)
	c.mu.Lock()
	c.interrupt = nil
	c.mu.Unlock()
	cancel()
	return fetches
}

// seeksWaiting reports whether a partition waits for its stored position.
// c.mu held.
func (c *Consumer) seeksWaiting() bool {
	for _, ps := range c.parts {
		if ps.seek {
			return true
		}
	}
	return false
}

// seekWaiting claims the partitions that wait for their stored position
// (fenced, or assigned while the store could not be read), seeks them there
// and lets their records in again, under the generation Fence or assigned
// gave them. It runs on the poll loop, after a poll and before
// AllowRebalance: no revoke can run, and records polled from before the seek
// are still in pending, where it drops them. A failed Claim is retried a
// second later; meanwhile the partitions stay paused.
func (c *Consumer) seekWaiting(ctx context.Context) {
	c.mu.Lock()
	gens := map[record.Partition]uint64{}
	if !time.Now().Before(c.seekAt) {
		for p, ps := range c.parts {
			if ps.seek {
				gens[p] = ps.gen
			}
		}
	}
	c.mu.Unlock()
	if len(gens) == 0 {
		return
	}
	stored, err := c.claim(ctx, c.cl, gens)
	if err != nil {
		c.mu.Lock()
		c.seekAt = time.Now().Add(time.Second)
		c.mu.Unlock()
		c.pause(slices.Collect(maps.Keys(gens)), pausedBySeek, "seek")
		c.log.Warn("cannot read the stored positions of partitions waiting for a seek; their records wait, retrying in a second",
			zap.Stringers("partitions", slices.Collect(maps.Keys(gens))), zap.Error(err))
		return
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	var sought []record.Partition
	c.mu.Lock()
	for p, gen := range gens {
		ps := c.parts[p]
		if ps == nil || ps.gen != gen || !ps.seek {
			continue
		}
		off, ok := stored[p]
		if !ok {
			// No stored position. Assigned while the store could not be
			// read: nothing was consumed, the cursor is where the group's
			// commit puts it. Fenced (an operator deleted the row): go on
			// from the first record of this member that is not done.
			off = ps.resume
			if off < 0 {
				if i := slices.IndexFunc(c.pending, func(r *record.Record) bool { return r.Part() == p }); i >= 0 {
					off = c.pending[i].Offset
				}
			}
			if off >= 0 {
				c.log.Error("no stored position for a fenced partition; continuing from this member's first record not done",
					zap.Stringer("partition", p), zap.Int64("offset", off))
			}
		}
		if off >= 0 {
			if offsets[p.Topic] == nil {
				offsets[p.Topic] = map[int32]kgo.EpochOffset{}
			}
			offsets[p.Topic][p.Partition] = kgo.EpochOffset{Epoch: -1, Offset: off}
		}
		ps.seek, ps.resume = false, -1
		if ok {
			ps.t.seek(off)
		}
		sought = append(sought, p)
	}
	// Records polled before the seek are from the old position.
	c.dropPendingLocked(sought)
	c.mu.Unlock()
	c.cl.SetOffsets(offsets)
	c.resume(sought, pausedBySeek)
	c.log.Info("partitions sought to their stored positions", zap.Any("offsets", offsets))
}

// claim claims ps from the offset store, bounded in time. cl is the client:
// a rebalance callback may run before New has set c.cl.
func (c *Consumer) claim(ctx context.Context, cl *kgo.Client, ps map[record.Partition]uint64) (map[record.Partition]int64, error) {
	_, groupGen := cl.GroupMetadata()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	return c.opts.Offsets.Claim(cctx, groupGen, ps)
}

// claimTimeout bounds one read of the stored positions.
const claimTimeout = 10 * time.Second

// dropPendingLocked drops the polled records of ps not yet admitted. c.mu held.
func (c *Consumer) dropPendingLocked(ps []record.Partition) {
	if len(ps) == 0 || len(c.pending) == 0 {
		return
	}
	n := len(c.pending)
	c.pending = slices.DeleteFunc(c.pending, func(r *record.Record) bool { return slices.Contains(ps, r.Part()) })
	clear(c.pending[len(c.pending):n])
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
	// One clock reading for the records admitted together: the flow gate's
	// admission time (Record.Admitted) and the lag's fallback timestamp.
	at := time.Now()
	now := at.UnixNano()
	// The pending records come a partition at a time: admit each run of one
	// partition's records together.
	i := 0
	for i < len(c.pending) {
		p := c.pending[i].Part()
		j := i + 1
		for j < len(c.pending) && c.pending[j].Part() == p {
			j++
		}
		ps := c.parts[p]
		switch {
		case ps == nil || ps.revoking:
			i = j // no longer ours: the next owner reads it from the last commit
			continue
		case ps.seek:
			i = j // exactly-once: read again from the stored position
			continue
		}
		run := c.pending[i:j]
		k := c.pipe.Fits(run)
		for _, r := range run[:k] {
			r.Ticket = record.Ticket{Generation: ps.gen, Seq: ps.t.add(r.Offset, r.LeaderEpoch, lagTimestamp(r.Timestamp, now))}
			r.Admitted = at
		}
		c.pipe.AdmitAll(run[:k])
		i += k
		if k < len(run) && !c.pipe.Room(run[k]) {
			break // Room paused the heaviest partitions; admitPending runs again when the gate has room
		}
	}
	n := copy(c.pending, c.pending[i:])
	clear(c.pending[n:])
	c.pending = c.pending[:n]
}

// convert fills r, a zero Record, from kr.
func convert(r *record.Record, kr *kgo.Record) {
	*r = record.Record{Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset, LeaderEpoch: kr.LeaderEpoch,
		Timestamp: kr.Timestamp, Key: kr.Key, Value: kr.Value}
	if len(kr.Headers) > 0 {
		r.Headers = make([]record.Header, len(kr.Headers))
		for i, h := range kr.Headers {
			r.Headers[i] = record.Header{Key: h.Key, Value: h.Value}
		}
	}
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

// Fence is told of records the sink refused because another writer moved
// their partition on, or their assignment here ended (exactly-once). For a
// partition still assigned under the records' generation it ends that
// generation: the records of it not yet done never will be, its records not
// yet admitted are dropped, and the poll loop seeks it to its stored position
// and admits its records again under a new generation. Records of an ended
// generation are ignored. Any goroutine; it does not block.
func (c *Consumer) Fence(rs ...*record.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var fenced []record.Partition
	for _, r := range rs {
		ps := c.parts[r.Part()]
		if ps == nil || ps.seek || ps.gen != r.Ticket.Generation {
			continue
		}
		resume := int64(-1)
		if off, ok := ps.t.first(); ok {
			resume = off
		} else if ps.t.known {
			resume = ps.t.pos.Offset
		}
		c.gen++
		ps.gen, ps.t, ps.seek, ps.resume = c.gen, tracker{}, true, resume
		fenced = append(fenced, r.Part())
	}
	if len(fenced) == 0 {
		return
	}
	c.dropPendingLocked(fenced)
	c.seekAt = time.Time{}
	if c.interrupt != nil {
		c.interrupt()
	}
	c.log.Warn("partitions fenced: another writer moved them on; seeking them to their stored positions",
		zap.Stringers("partitions", fenced))
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
//
// With exactly-once delivery it claims the new partitions from the offset
// store and seeks those with a stored position there; a partition without one
// starts from the group's committed offset or kafka.start_offset. If the store
// cannot be read, the partitions stay paused and the poll loop retries.
func (c *Consumer) assigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	var ps []record.Partition
	gens := map[record.Partition]uint64{}
	eo := c.opts.Offsets != nil
	c.mu.Lock()
	for topic, parts := range assigned {
		for _, p := range parts {
			c.gen++
			rp := record.Partition{Topic: topic, Partition: p}
			c.parts[rp] = &partition{gen: c.gen, hwm: -1, seek: eo, resume: -1}
			gens[rp] = c.gen
			ps = append(ps, rp)
		}
	}
	c.dropPendingLocked(ps) // of an earlier assignment of the same partitions
	c.mu.Unlock()
	if len(ps) == 0 {
		return
	}
	var seekFailed bool
	if eo {
		seekFailed = !c.seekAssigned(ctx, cl, gens)
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
	if seekFailed {
		// The cursors must not move before the stored positions are known.
		for _, p := range ps {
			c.paused[p] |= pausedBySeek
		}
		cl.PauseFetchPartitions(assigned)
		c.m.PartitionPauses.WithLabelValues("seek").Add(float64(len(ps)))
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

// seekAssigned claims newly assigned partitions from the offset store and
// seeks those with a stored position there (SetOffsets inside
// OnPartitionsAssigned, which franz-go supports from v1.22.3). It reports
// false when the store could not be read: the partitions then wait for the
// poll loop (seekWaiting).
func (c *Consumer) seekAssigned(ctx context.Context, cl *kgo.Client, gens map[record.Partition]uint64) bool {
	stored, err := c.claim(ctx, cl, gens)
	if err != nil {
		c.log.Warn("cannot read the stored positions of the assigned partitions; they stay paused until they can be read",
			zap.Error(err))
		c.mu.Lock()
		if c.interrupt != nil {
			c.interrupt() // a poll waiting for data of the paused partitions would wait forever
		}
		c.mu.Unlock()
		return false
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for p, off := range stored {
		if offsets[p.Topic] == nil {
			offsets[p.Topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[p.Topic][p.Partition] = kgo.EpochOffset{Epoch: -1, Offset: off}
	}
	cl.SetOffsets(offsets)
	c.mu.Lock()
	for p, gen := range gens {
		if ps := c.parts[p]; ps != nil && ps.gen == gen {
			ps.seek = false
			if off, ok := stored[p]; ok {
				ps.t.seek(off)
			}
		}
	}
	c.mu.Unlock()
	c.log.Info("assigned partitions sought to their stored positions (the others start from the group's commit)",
		zap.Any("stored", offsets))
	return true
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
	gens := map[record.Partition]uint64{}
	c.mu.Lock()
	for _, p := range ps {
		if st := c.parts[p]; st != nil {
			gens[p] = st.gen
		}
		delete(c.parts, p)
	}
	c.dropPendingLocked(ps)
	c.mu.Unlock()
	if c.opts.Offsets != nil {
		c.opts.Offsets.Release(gens)
	}
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
	LagSeconds    float64 `json:"lag_seconds"`    // age of the oldest record not yet done, a lower bound (lag.go); 0 when caught up
	InFlight      int     `json:"in_flight"`
	Paused        bool    `json:"paused"`
	PausedBy      string  `json:"paused_by,omitempty"`
}

// Stats returns the assigned partitions.
func (c *Consumer) Stats() []PartitionStats {
	now := time.Now().UnixNano()
	c.mu.Lock()
	seconds := c.lagSecondsLocked(now)
	out := make([]PartitionStats, 0, len(c.parts))
	for p, ps := range c.parts {
		s := PartitionStats{Topic: p.Topic, Partition: p.Partition, Committed: -1, HighWatermark: ps.hwm, Lag: -1,
			LagSeconds: seconds[p], InFlight: ps.t.outstanding()}
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
		var by []string
		for _, reason := range []struct {
			bit  pauseReason
			name string
		}{{pausedByGate, "gate"}, {pausedByBreaker, "breaker"}, {pausedBySeek, "seek"}} {
			if r&reason.bit != 0 {
				by = append(by, reason.name)
			}
		}
		out[i].PausedBy = strings.Join(by, ",")
	}
	c.pauseMu.Unlock()
	return out
}
