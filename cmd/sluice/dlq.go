package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/dlq"
)

func dlqCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Work with the dead-letter topic (dlq.topic)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return &exitError{code: 2, err: errors.New("dlq needs a subcommand: replay (see 'sluice dlq --help')")}
		},
	}
	cmd.AddCommand(dlqReplayCmd())
	return cmd
}

// replayFlags are the command line of `sluice dlq replay`.
type replayFlags struct {
	config     string
	to         string
	reasons    []string
	since      string
	rate       float64
	maxReplays int
	dryRun     bool
	group      string
}

func dlqReplayCmd() *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Send dead-lettered records back to their original topic (or --to), filtered and rate-limited",
		Long: `replay reads the dead-letter topic (dlq.topic of the configuration) with its own consumer group,
from the offsets that group committed (the start of the topic the first time) up to the end offsets
it finds when it starts, so it terminates even while sluice keeps dead-lettering. Every record that
passes the filters is produced (acks=all) to the topic in its sluice.original.topic header, or to
--to, with its original key, value, timestamp and headers; the sluice.* headers are removed and
sluice.replay.count is set one higher than the record's own. A keyed record lands in the partition
its key hashes to, as with any producer.

Loop guard: a record whose sluice.replay.count has reached --max-replays is skipped and listed, not
replayed again. The count survives another trip through the DLQ, since the dead-letter producer keeps
the record's headers.

Progress: the group's offsets are committed only past records that are skipped, or produced and
acknowledged. An interrupted replay (Ctrl-C, a broker failure) commits what was acknowledged and a new
run resumes there, losing nothing; it may send again the few records produced after the last commit.
Records skipped by --reason or --since are passed over for good by this group: to replay them later,
use another --group. A record that cannot be replayed (a failed produce, no sluice.original.topic and
no --to) stops its partition there; the others go on, and the command exits 1.

It prints a report: records scanned, replayed per target topic, skipped by filter, skipped for too
many replays, errors. Exit codes: 0 done; 1 the configuration is invalid, Kafka cannot be reached,
or some records were not replayed; 2 the command line is wrong.`,
		Example: `  sluice dlq replay -c sluice.yaml --dry-run
  sluice dlq replay -c sluice.yaml --reason decode,mapping --since 2h --rate 100
  sluice dlq replay -c sluice.yaml --to orders.retry --since 2025-06-01T00:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd, f, time.Now())
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.config, "config", "c", "", "the YAML configuration file (required): kafka.brokers, TLS/SASL and dlq.topic come from it")
	fl.StringVar(&f.to, "to", "", "send every record to this topic instead of its sluice.original.topic")
	fl.StringSliceVar(&f.reasons, "reason", nil, "replay only records with this sluice.error.reason ("+strings.Join(dlq.Reasons(), ", ")+"); repeat it or give a comma-separated list")
	fl.StringVar(&f.since, "since", "", "replay only records that failed at or after this time: RFC 3339 (2025-06-01T12:00:00Z) or a duration back from now (2h, 30m)")
	fl.Float64Var(&f.rate, "rate", 0, "at most this many records produced a second, with a burst of one second's worth; 0 is unlimited")
	fl.IntVar(&f.maxReplays, "max-replays", dlq.DefaultMaxReplays, "skip records already replayed this many times (their sluice.replay.count)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "list what would be replayed; produce nothing and commit nothing")
	fl.StringVar(&f.group, "group", "", `the consumer group that records the replay's progress (default "<kafka.group>.dlq-replay")`)
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func replayUsage(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format+"\nRun 'sluice dlq replay --help' for usage.", args...)}
}

func runReplay(cmd *cobra.Command, f replayFlags, now time.Time) error {
	rc := dlq.ReplayConfig{To: f.to, Rate: f.rate, MaxReplays: f.maxReplays, DryRun: f.dryRun}
	for _, r := range f.reasons {
		if r = strings.TrimSpace(r); r != "" {
			if !slices.Contains(dlq.Reasons(), r) {
				return replayUsage("--reason %q: want one of %s", r, strings.Join(dlq.Reasons(), ", "))
			}
			rc.Reasons = append(rc.Reasons, r)
		}
	}
	if f.since != "" {
		t, err := parseSince(f.since, now)
		if err != nil {
			return replayUsage("--since %q: %v", f.since, err)
		}
		rc.Since = t
	}
	if f.rate < 0 {
		return replayUsage("--rate %v: want records per second, 0 for unlimited", f.rate)
	}
	if f.maxReplays < 1 {
		return replayUsage("--max-replays %d: want at least 1", f.maxReplays)
	}

	cfg, err := config.Load(f.config)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("%s is not valid:\n%w", f.config, err)}
	}
	rc.Topic, rc.Group = cfg.DLQ.Topic, f.group
	if rc.Group == "" {
		rc.Group = cfg.Kafka.Group + ".dlq-replay"
	}
	if rc.Group == cfg.Kafka.Group {
		return replayUsage("--group %s is the pipeline's own group (kafka.group); the replay needs a group of its own", rc.Group)
	}
	if err := rc.Validate(); err != nil {
		return replayUsage("%v", err)
	}
	sec, err := consumer.Security(cfg.Kafka)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	kopts := append([]kgo.Opt{kgo.SeedBrokers(cfg.Kafka.Brokers...)}, sec...)

	out := cmd.OutOrStdout()
	mode := ""
	if rc.DryRun {
		mode = " (dry run: nothing is produced or committed)"
	}
	fmt.Fprintf(out, "sluice dlq replay: %s from the offsets of group %s%s\n", rc.Topic, rc.Group, mode)
	rep, err := dlq.Replay(cmd.Context(), rc, kopts, dlq.WithOutput(out))
	if err == nil || rep.Scanned > 0 {
		printReport(out, rep, rc)
	}
	if err != nil {
		if errors.Is(err, dlq.ErrReplayIncomplete) || rep.Scanned > 0 {
			return &exitError{code: 1, err: err}
		}
		return &exitError{code: 1, err: fmt.Errorf("%w (kafka.brokers: %s)%s", err, strings.Join(cfg.Kafka.Brokers, ","), replayHint(cfg.Kafka, err))}
	}
	return nil
}

// replayHint says what to check when the replay could not start: the
// connection settings, or the ACLs of the principal that replays.
func replayHint(k config.Kafka, err error) string {
	user := ""
	if k.SASL.Mechanism != "" {
		user = fmt.Sprintf(" (SASL user %q)", k.SASL.Username)
	}
	if errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.GroupAuthorizationFailed) {
		return "; the replay's Kafka principal" + user + " needs the replay ACLs of deploy/kafka-acls/sluice-acls.txt: " +
			"READ on the dead-letter topic and on the replay's group, WRITE on the topics it sends to (docs/kafka-security.md)"
	}
	hint := consumer.ConnectHint(err)
	if hint == "" {
		return ""
	}
	if errors.Is(err, kerr.SaslAuthenticationFailed) {
		hint += user
	}
	return "; " + hint
}

// parseSince reads --since: an RFC 3339 time, or a duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, errors.New("want an RFC 3339 time (2025-06-01T12:00:00Z) or a duration such as 2h")
	}
	if d < 0 {
		return time.Time{}, errors.New("want a positive duration: how far back from now")
	}
	return now.Add(-d), nil
}

func printReport(w io.Writer, rep *dlq.ReplayReport, rc dlq.ReplayConfig) {
	replayed := "replayed"
	if rep.DryRun {
		replayed = "would replay"
	}
	var per []string
	for _, t := range slices.Sorted(maps.Keys(rep.Replayed)) {
		per = append(per, fmt.Sprintf("%s: %d", t, rep.Replayed[t]))
	}
	perTopic := ""
	if len(per) > 0 {
		perTopic = "  (" + strings.Join(per, ", ") + ")"
	}
	fmt.Fprintf(w, "%-30s %d\n", "scanned:", rep.Scanned)
	fmt.Fprintf(w, "%-30s %d%s\n", replayed+":", rep.ReplayedTotal(), perTopic)
	fmt.Fprintf(w, "%-30s %d\n", "skipped by filter:", rep.SkippedByFilter)
	fmt.Fprintf(w, "%-30s %d  (--max-replays %d)\n", "skipped for too many replays:", rep.SkippedMaxReplays, rc.MaxReplays)
	if rep.SkippedOmitted > 0 {
		fmt.Fprintf(w, "%-30s %d  (too large for the DLQ: read them from their topic)\n", "skipped, value omitted:", rep.SkippedOmitted)
	}
	fmt.Fprintf(w, "%-30s %d\n", "errors:", rep.Errors)
}
