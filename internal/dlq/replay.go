package dlq

// This file holds the replay: reading the dead-letter topic back and sending
// the records the operator chose to their original topic (or another), for
// `sluice dlq replay`.
//
// Replay runs in its caller's goroutine; the two Kafka clients it opens are
// closed before it returns.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/flow"
)

// HeaderReplayCount counts how many times a record was sent back from the
// dead-letter topic. Replay sets it to the DLQ record's count plus one; the
// DLQ producer keeps it (it keeps every header of the original), so a record
// that fails again arrives in the DLQ with the count it had, and the replay's
// loop guard (ReplayConfig.MaxReplays) can stop it.
const HeaderReplayCount = "sluice.replay.count"

// headerPrefix starts every header sluice owns; Replay strips them all but
// HeaderReplayCount.
const headerPrefix = "sluice."

// DefaultMaxReplays is how many times a record may be replayed by default.
const DefaultMaxReplays = 3

// ErrReplayIncomplete is returned (wrapped, with the count) by Replay when it
// finished but some records could not be replayed: a produce failed, or a
// record names no topic to go to. Nothing is committed past such a record, so
// a later run starts again there.
var ErrReplayIncomplete = errors.New("some records were not replayed")

// Timeouts of the replay's own waits. A produced record is retried until it
// is acknowledged or deliveryTimeout has passed (in flight, until the broker
// answers); commits and the start-up look-ups each get settleTimeout.
const (
	deliveryTimeout = 2 * time.Minute
	settleTimeout   = 30 * time.Second
	idleTimeout     = 30 * time.Second // a poll that brings nothing though records remain
	maxPoll         = 500              // records settled (produced, acknowledged, committed) per round
	maxDetailLines  = 100              // lines printed per kind of skip or error
)

// Reasons lists the sluice.error.reason values a DLQ record can carry.
func Reasons() []string {
	return []string{flow.ReasonDecode, flow.ReasonMapping, flow.ReasonTimeout, flow.ReasonSinkRejected}
}

// ReplayConfig is what one replay does.
type ReplayConfig struct {
	// Topic is the dead-letter topic to read.
	Topic string
	// Group is the consumer group whose committed offsets record the replay's
	// progress. It must not be a group that consumes the topic for anything
	// else.
	Group string
	// To sends every record to this topic; "" sends each to the topic in its
	// sluice.original.topic header.
	To string
	// Reasons keeps only records whose sluice.error.reason is one of these;
	// empty keeps all.
	Reasons []string
	// Since keeps only records whose sluice.failed.at is at or after it; zero
	// keeps all. A record without a readable sluice.failed.at does not match.
	Since time.Time
	// Rate bounds the records produced per second, with a burst of one
	// second's worth; 0 is unlimited.
	Rate float64
	// MaxReplays skips records whose sluice.replay.count has reached it.
	MaxReplays int
	// DryRun reports what would be replayed and neither produces nor commits.
	DryRun bool
}

// Validate reports every problem of c.
func (c *ReplayConfig) Validate() error {
	var errs []error
	if c.Topic == "" {
		errs = append(errs, errors.New("no dead-letter topic to read"))
	}
	if c.Group == "" {
		errs = append(errs, errors.New("no consumer group for the replay"))
	}
	if c.To != "" && c.To == c.Topic {
		errs = append(errs, fmt.Errorf("target topic %s is the dead-letter topic itself", c.To))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("rate %v: want records per second, 0 for unlimited", c.Rate))
	}
	if c.MaxReplays < 1 {
		errs = append(errs, fmt.Errorf("max replays %d: want at least 1", c.MaxReplays))
	}
	for _, r := range c.Reasons {
		if !slices.Contains(Reasons(), r) {
			errs = append(errs, fmt.Errorf("reason %q: want one of %s", r, strings.Join(Reasons(), ", ")))
		}
	}
	return errors.Join(errs...)
}

// ReplayReport is what a replay did. In a dry run, Replayed counts what would
// have been replayed.
type ReplayReport struct {
	Topic, Group string
	DryRun       bool
	// Backlog is how many offsets lay between the group's offsets and the end
	// offsets when the replay started: what it set out to scan.
	Backlog int64
	// Scanned counts the DLQ records read and decided on.
	Scanned int
	// Replayed counts the records produced and acknowledged, by target topic.
	Replayed map[string]int
	// SkippedByFilter counts records that did not match Reasons or Since.
	SkippedByFilter int
	// SkippedMaxReplays counts records skipped because their replay count had
	// reached MaxReplays.
	SkippedMaxReplays int
	// SkippedOmitted counts dead letters without the original's value
	// (HeaderValueOmitted), which cannot be replayed.
	SkippedOmitted int
	// Errors counts records that could not be replayed.
	Errors int
}

// ReplayedTotal is the sum of Replayed.
func (r *ReplayReport) ReplayedTotal() int {
	n := 0
	for _, v := range r.Replayed {
		n += v
	}
	return n
}

// ReplayOption sets an injected dependency of Replay.
type ReplayOption func(*replayer)

// WithOutput makes Replay write one line per record it would replay (in a
// dry run), per record it skips for too many replays and per error to w (at
// most 100 lines of each kind of skip or error). The default discards them.
func WithOutput(w io.Writer) ReplayOption { return func(r *replayer) { r.out = w } }

// withIdleTimeout shortens idleTimeout for a test.
func withIdleTimeout(d time.Duration) ReplayOption { return func(r *replayer) { r.idle = d } }

// withLimiter lets a test see the rate limiter Replay built.
func withLimiter(fn func(*rate.Limiter)) ReplayOption {
	return func(r *replayer) { r.seeLimiter = fn }
}

// Replay reads cfg.Topic from the offsets cfg.Group committed (the log start
// where it has none) up to the end offsets it finds when it starts, and sends
// the chosen records to their original topic (or cfg.To) with their key,
// value, timestamp and non-sluice headers, every sluice.* header removed and
// sluice.replay.count set one higher than the DLQ record's. It commits the
// group's offset of a partition only past records that are settled: skipped,
// or produced and acknowledged by all in-sync replicas. An interrupted replay
// (ctx cancelled) waits for the acknowledgements of what it produced, commits
// them and returns ctx's error, so a new run resumes without losing a record;
// it may repeat the few records produced after the last commit. A partition
// stops at its first record that cannot be replayed; the others go on, and
// Replay returns ErrReplayIncomplete at the end.
//
// kopts carry the brokers and the TLS and SASL options. The report is never
// nil; on error it says how far the replay got.
func Replay(ctx context.Context, cfg ReplayConfig, kopts []kgo.Opt, opts ...ReplayOption) (*ReplayReport, error) {
	r := &replayer{cfg: cfg, out: io.Discard, lines: map[string]int{}, idle: idleTimeout,
		rep: &ReplayReport{Topic: cfg.Topic, Group: cfg.Group, DryRun: cfg.DryRun, Replayed: map[string]int{}}}
	for _, o := range opts {
		o(r)
	}
	if err := cfg.Validate(); err != nil {
		return r.rep, err
	}
	if cfg.Rate > 0 {
		r.limiter = newLimiter(cfg.Rate)
	}
	if r.seeLimiter != nil {
		r.seeLimiter(r.limiter)
	}
	return r.rep, r.run(ctx, kopts)
}

// newLimiter paces rps records a second with a burst of one second's worth
// (at least one record).
func newLimiter(rps float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(rps), max(1, int(min(math.Ceil(rps), math.MaxInt32))))
}

type replayer struct {
	cfg        ReplayConfig
	out        io.Writer
	limiter    *rate.Limiter // nil: unlimited
	seeLimiter func(*rate.Limiter)
	idle       time.Duration
	rep        *ReplayReport
	lines      map[string]int // detail lines printed, by kind

	cl    *kgo.Client // admin and producer
	adm   *kadm.Client
	parts map[int32]*replayPart
}

// replayPart is the replay's state of one DLQ partition.
type replayPart struct {
	next   int64 // the first offset not yet settled; committed up to here
	end    int64 // the end offset when the replay started
	failed bool  // a record could not be replayed; the partition stopped there
}

func (p *replayPart) finished() bool { return p.failed || p.next >= p.end }

// item is one DLQ record of a round and what became of it.
type item struct {
	rec    *kgo.Record // from the DLQ
	out    *kgo.Record // to produce; nil when the record is skipped
	target string
	bad    bool  // cannot be replayed at all
	sent   bool  // handed to the producer
	err    error // the producer's answer, set before wg.Done
	settle bool  // the offset may be committed past
}

func (r *replayer) run(ctx context.Context, kopts []kgo.Opt) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.ClientID("sluice-dlq-replay"),
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}, kopts...)...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	r.cl, r.adm = cl, kadm.NewClient(cl)

	if err := r.plan(ctx); err != nil {
		return err
	}
	start := map[int32]kgo.Offset{}
	for p, st := range r.parts {
		if !st.finished() {
			start[p] = kgo.NewOffset().At(st.next)
		}
	}
	if len(start) == 0 {
		return nil
	}
	// The consumer reads exact partitions from exact offsets; it is no
	// member of the group, whose offsets Replay commits itself.
	cons, err := kgo.NewClient(append([]kgo.Opt{
		kgo.ClientID("sluice-dlq-replay"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.Topic: start}),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, kopts...)...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cons.Close()

	// With a rate limit, a round is about a second's worth, so commits follow
	// the replay closely.
	perRound := maxPoll
	if r.limiter != nil {
		perRound = min(maxPoll, r.limiter.Burst())
	}
	for !r.allFinished() {
		pctx, cancel := context.WithTimeout(ctx, r.idle)
		fs := cons.PollRecords(pctx, perRound)
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("replay interrupted; what was acknowledged is committed, run again to resume: %w", ctx.Err())
		}
		if fs.Empty() && pctx.Err() != nil {
			return fmt.Errorf("no record came from %s for %s though %d offset(s) remain before the end offsets taken at the start "+
				"(is the broker reachable?); what was acknowledged is committed, run again to resume", r.cfg.Topic, r.idle, r.remaining())
		}
		var fetchErr error
		fs.EachError(func(t string, p int32, err error) {
			fetchErr = errors.Join(fetchErr, fmt.Errorf("read %s/%d: %w", t, p, err))
		})
		if fetchErr != nil {
			return fetchErr
		}
		if err := r.round(ctx, fs); err != nil {
			return err
		}
		var done []int32
		for p, st := range r.parts {
			if st.finished() {
				done = append(done, p)
			}
		}
		cons.PauseFetchPartitions(map[string][]int32{r.cfg.Topic: done})
	}
	if r.rep.Errors > 0 {
		return fmt.Errorf("%w: %d error(s); the partitions concerned stopped at their first failed record", ErrReplayIncomplete, r.rep.Errors)
	}
	return nil
}

// plan finds, per partition, where to start (the group's offset, or the log
// start) and where to stop (the end offset now).
func (r *replayer) plan(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	if err := r.cl.Ping(ctx); err != nil {
		return fmt.Errorf("cannot reach any Kafka broker: %w", err)
	}
	topic := r.cfg.Topic
	ends, err := r.adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("dead-letter topic %s does not exist", topic)
	}
	if err != nil {
		return fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	starts, err := r.adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("list start offsets of %s: %w", topic, err)
	}
	var committed kadm.OffsetResponses
	err = consumer.AwaitCoordinator(ctx, func() (err error) {
		committed, err = r.adm.FetchOffsets(ctx, r.cfg.Group)
		return err
	})
	if errors.Is(err, kerr.GroupIDNotFound) {
		committed, err = kadm.OffsetResponses{}, nil
	}
	if err != nil {
		return fmt.Errorf("fetch the offsets of group %s: %w", r.cfg.Group, err)
	}
	r.parts = map[int32]*replayPart{}
	for p, e := range ends[topic] {
		first := starts[topic][p].Offset
		st := &replayPart{next: first, end: e.Offset}
		// A committed offset outside the log (records expired, or the topic
		// was recreated) starts at the log start, as a consumer would.
		c, ok := committed.Lookup(topic, p)
		if ok && c.Err != nil {
			return fmt.Errorf("fetch the offsets of group %s: %s/%d: %w", r.cfg.Group, topic, p, c.Err)
		}
		if ok && c.At >= first && c.At <= e.Offset {
			st.next = c.At
		}
		r.parts[p] = st
		r.rep.Backlog += max(0, st.end-st.next)
	}
	return nil
}

// remaining counts the offsets of unfinished partitions still to scan.
func (r *replayer) remaining() int64 {
	var n int64
	for _, st := range r.parts {
		if !st.finished() {
			n += st.end - st.next
		}
	}
	return n
}

func (r *replayer) allFinished() bool {
	for _, st := range r.parts {
		if !st.finished() {
			return false
		}
	}
	return true
}

// round decides on the records of one poll, produces the chosen ones, waits
// for their acknowledgements and commits what is settled.
func (r *replayer) round(ctx context.Context, fs kgo.Fetches) error {
	byPart := map[int32][]*item{}
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		st := r.parts[fp.Partition]
		if fp.Topic != r.cfg.Topic || st == nil {
			return
		}
		for _, rec := range fp.Records {
			if st.finished() || rec.Offset >= st.end || hasBad(byPart[fp.Partition]) {
				return
			}
			if rec.Offset < st.next {
				continue
			}
			byPart[fp.Partition] = append(byPart[fp.Partition], r.decide(rec))
		}
	})

	// Produce in partition order, so the records of one DLQ partition keep
	// their order, through the rate limit.
	var wg sync.WaitGroup
	interrupted := false
	// What is handed to the producer is seen through even when ctx ends; each
	// record gets deliveryTimeout. (kgo's RecordDeliveryTimeout would count
	// from the record's timestamp, which is the original's, long past.)
	base := context.WithoutCancel(ctx)
	for _, p := range slices.Sorted(maps.Keys(byPart)) {
		for _, it := range byPart[p] {
			if it.out == nil || r.cfg.DryRun || interrupted {
				continue
			}
			if r.limiter != nil {
				if err := r.limiter.Wait(ctx); err != nil {
					interrupted = true
					continue
				}
			}
			it.sent = true
			wg.Add(1)
			pctx, cancel := context.WithTimeout(base, deliveryTimeout)
			r.cl.Produce(pctx, it.out, func(_ *kgo.Record, err error) {
				cancel()
				it.err = err
				wg.Done()
			})
		}
	}
	wg.Wait() // bounded by deliveryTimeout

	commits := kadm.Offsets{}
	for _, p := range slices.Sorted(maps.Keys(byPart)) {
		st := r.parts[p]
		for _, it := range byPart[p] {
			switch {
			case it.bad: // counted by decide
			case it.out == nil, r.cfg.DryRun:
				it.settle = true
			case it.sent && it.err == nil:
				it.settle = true
				r.rep.Replayed[it.target]++
			case it.sent:
				r.rep.Errors++
				r.detail("error", "error %s: produce to %s: %v", coords(it.rec), it.target, it.err)
			}
		}
		// The partition's offset moves over the settled records up to the
		// first one that is not: failed, or not produced (interrupted).
		for _, it := range byPart[p] {
			if !it.settle {
				st.failed = st.failed || it.sent || it.bad
				break
			}
			st.next = it.rec.Offset + 1
		}
		if !r.cfg.DryRun {
			commits.Add(kadm.Offset{Topic: r.cfg.Topic, Partition: p, At: st.next, LeaderEpoch: -1})
		}
	}
	if len(commits) > 0 {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		defer cancel()
		err := consumer.AwaitCoordinator(cctx, func() error { return r.adm.CommitAllOffsets(cctx, r.cfg.Group, commits) })
		if err != nil {
			return fmt.Errorf("commit the offsets of group %s (what was replayed since the last commit will be replayed again): %w", r.cfg.Group, err)
		}
	}
	if interrupted {
		return fmt.Errorf("replay interrupted; what was acknowledged is committed, run again to resume: %w", ctx.Err())
	}
	return nil
}

func hasBad(items []*item) bool {
	return len(items) > 0 && items[len(items)-1].bad
}

// decide reads the sluice.* headers of a DLQ record and returns what to do
// with it, counting it in the report (except the outcome of a produce).
func (r *replayer) decide(rec *kgo.Record) *item {
	r.rep.Scanned++
	m := readMeta(rec)
	it := &item{rec: rec}
	if !r.matches(m) {
		r.rep.SkippedByFilter++
		return it
	}
	if omitted := m.omitted; omitted != "" {
		r.rep.SkippedOmitted++
		r.detail("omitted", "skip %s (from %s, reason %s): the dead letter holds no value (the original of %s bytes was too large for the dead-letter topic); read it from its topic",
			coords(rec), m.origin(), m.reason, omitted)
		return it
	}
	if !m.countOK || m.count >= r.cfg.MaxReplays {
		r.rep.SkippedMaxReplays++
		why := fmt.Sprintf("replayed %d time(s) already, the limit is %d", m.count, r.cfg.MaxReplays)
		if !m.countOK {
			why = fmt.Sprintf("unreadable %s header, taken as over the limit", HeaderReplayCount)
		}
		r.detail("max-replays", "skip %s (from %s, reason %s): %s", coords(rec), m.origin(), m.reason, why)
		return it
	}
	it.target = r.cfg.To
	if it.target == "" {
		it.target = m.topic
	}
	if it.target == "" {
		it.bad = true
		r.rep.Errors++
		r.detail("error", "error %s: no %s header and no target topic given; its partition stops here", coords(rec), HeaderTopic)
		return it
	}
	if r.cfg.DryRun {
		r.rep.Replayed[it.target]++
		fmt.Fprintf(r.out, "would replay %s -> %s (from %s, reason %s, failed at %s, replay %d of %d)\n",
			coords(rec), it.target, m.origin(), m.reason, m.failedAtText, m.count+1, r.cfg.MaxReplays)
	}
	it.out = replayRecord(rec, m, it.target)
	return it
}

func (r *replayer) matches(m meta) bool {
	if len(r.cfg.Reasons) > 0 && !slices.Contains(r.cfg.Reasons, m.reason) {
		return false
	}
	if !r.cfg.Since.IsZero() && (m.failedAt.IsZero() || m.failedAt.Before(r.cfg.Since)) {
		return false
	}
	return true
}

// detail prints a line of the given kind, up to maxDetailLines of each.
func (r *replayer) detail(kind, format string, args ...any) {
	r.lines[kind]++
	switch n := r.lines[kind]; {
	case n <= maxDetailLines:
		fmt.Fprintf(r.out, format+"\n", args...)
	case n == maxDetailLines+1:
		fmt.Fprintf(r.out, "(more %s lines left out; the report counts them all)\n", kind)
	}
}

func coords(rec *kgo.Record) string {
	return rec.Topic + "/" + strconv.FormatInt(int64(rec.Partition), 10) + "@" + strconv.FormatInt(rec.Offset, 10)
}

// meta is what the sluice.* headers of a DLQ record say. Where a header
// appears more than once the last one wins (sluice appends its own after the
// original's), except the replay count, where the highest wins.
type meta struct {
	topic, partition, offset, reason string
	failedAt                         time.Time
	failedAtText                     string
	timestamp                        time.Time // zero when the header is missing
	count                            int
	countOK                          bool
	omitted                          string // HeaderValueOmitted: the original's size; "" when the value is there
}

func (m meta) origin() string {
	if m.topic == "" {
		return "unknown origin"
	}
	return m.topic + "/" + m.partition + "@" + m.offset
}

func readMeta(rec *kgo.Record) meta {
	m := meta{countOK: true}
	for _, h := range rec.Headers {
		if !strings.HasPrefix(h.Key, headerPrefix) {
			continue
		}
		v := string(h.Value)
		switch h.Key {
		case HeaderTopic:
			m.topic = v
		case HeaderPartition:
			m.partition = v
		case HeaderOffset:
			m.offset = v
		case HeaderReason:
			m.reason = v
		case HeaderFailedAt:
			m.failedAtText = v
			m.failedAt, _ = time.Parse(time.RFC3339Nano, v)
		case HeaderTimestamp:
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
				m.timestamp = time.UnixMilli(ms)
			}
		case HeaderValueOmitted:
			m.omitted = v
		case HeaderReplayCount:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				m.countOK = false
				continue
			}
			m.count = max(m.count, n)
		}
	}
	return m
}

// replayRecord is the record to send back: the DLQ record's key and value,
// the original timestamp, the headers that are not sluice's, and the replay
// count one higher.
func replayRecord(rec *kgo.Record, m meta, target string) *kgo.Record {
	hs := make([]kgo.RecordHeader, 0, len(rec.Headers)+1)
	for _, h := range rec.Headers {
		if !strings.HasPrefix(h.Key, headerPrefix) {
			hs = append(hs, h)
		}
	}
	hs = append(hs, kgo.RecordHeader{Key: HeaderReplayCount, Value: strconv.AppendInt(nil, int64(m.count+1), 10)})
	ts := m.timestamp
	if ts.IsZero() {
		ts = rec.Timestamp
	}
	return &kgo.Record{Topic: target, Key: rec.Key, Value: rec.Value, Headers: hs, Timestamp: ts}
}
