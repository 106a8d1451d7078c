package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path is the key's path as written in YAML: kafka.brokers,
	// sink.postgres.columns.id, kafka.brokers[1]. It is "" for the file as a whole.
	Path string
	// Message says what is wrong and what to do. It never holds a secret.
	Message string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError is every problem found in a configuration, in the order of
// the file and then of the keys. Load, LoadWith, LoadUnvalidated and Validate
// return it as a *ValidationError.
type ValidationError struct {
	Problems []Problem
}

// Error writes one "path: message" line per problem.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (e *ValidationError) list() []Problem {
	if e == nil {
		return nil
	}
	return e.Problems
}

// Validate checks c and returns a *ValidationError listing every problem, or
// nil. It reads no files and changes nothing; the checks are those that keep
// sluice from starting in a state that cannot work: required keys, ranges,
// enumerations, column sources and combinations that contradict each other.
func (c *Config) Validate() error {
	v := &checker{}
	v.kafka(&c.Kafka)
	v.flow(&c.Flow)
	v.sink(c)
	v.dlq(c)
	v.positive("commit.interval", c.Commit.Interval)
	v.positive("shutdown_timeout", c.ShutdownTimeout)
	v.observability(&c.Observability)
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

type checker struct {
	problems []Problem
}

func (v *checker) add(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (v *checker) oneOf(path, got string, allowed ...string) {
	if slices.Contains(allowed, got) {
		return
	}
	if got == "" {
		v.add(path, "is required: use one of %s", strings.Join(allowed, ", "))
		return
	}
	for _, a := range allowed {
		if strings.EqualFold(a, got) {
			v.add(path, "is %q; values are case-sensitive: write %s", got, a)
			return
		}
	}
	if s := closest(got, slices.DeleteFunc(slices.Clone(allowed), func(a string) bool { return a == "" })); s != "" {
		v.add(path, "is %q; did you mean %s? (one of %s)", got, s, strings.Join(allowed, ", "))
		return
	}
	v.add(path, "is %q; use one of %s", got, strings.Join(allowed, ", "))
}

func (v *checker) atLeast(path string, got, least int) {
	if got < least {
		v.add(path, "is %d; it must be at least %d", got, least)
	}
}

func (v *checker) positive(path string, d time.Duration) {
	if d <= 0 {
		v.add(path, "is %s; it must be a positive duration, like 30s", d)
	}
}

func (v *checker) durationAtLeast(path string, d, least time.Duration) {
	if d < least {
		v.add(path, "is %s; it must be at least %s", d, least)
	}
}

func (v *checker) kafka(k *Kafka) {
	if len(k.Brokers) == 0 {
		v.add("kafka.brokers", "is required: list the bootstrap brokers as host:port, like [kafka-0:9092, kafka-1:9092]")
	}
	for i, b := range k.Brokers {
		if err := checkHostPort(b, true); err != nil {
			v.add(fmt.Sprintf("kafka.brokers[%d]", i), "%v", err)
		}
	}
	if strings.TrimSpace(k.Group) == "" {
		v.add("kafka.group", "is required: name the consumer group; every replica of this pipeline uses the same group")
	}
	if len(k.Topics) == 0 {
		v.add("kafka.topics", "is required: list the topics to consume, like [orders]")
	}
	for i, t := range k.Topics {
		p := fmt.Sprintf("kafka.topics[%d]", i)
		if err := checkTopic(t); err != nil {
			v.add(p, "%v", err)
		} else if slices.Index(k.Topics, t) < i {
			v.add(p, "%q is listed twice; list each topic once", t)
		}
	}
	v.oneOf("kafka.start_offset", k.StartOffset, StartEarliest, StartLatest)
	v.atLeast("kafka.max_poll_records", k.MaxPollRecords, 1)
	switch {
	case k.FetchMaxBytes < 1:
		v.add("kafka.fetch_max_bytes", "is %d; it must be a positive size, like 50MiB", k.FetchMaxBytes)
	case k.FetchMaxBytes > GiB:
		v.add("kafka.fetch_max_bytes", "is %s; the Kafka client reads at most 1GiB per response: lower it", k.FetchMaxBytes)
	}
	switch {
	case k.PartitionFetchMaxBytes < 1:
		v.add("kafka.partition_fetch_max_bytes", "is %d; it must be a positive size, like 1MiB", k.PartitionFetchMaxBytes)
	case k.FetchMaxBytes >= 1 && k.PartitionFetchMaxBytes > k.FetchMaxBytes:
		v.add("kafka.partition_fetch_max_bytes", "is %s, more than kafka.fetch_max_bytes (%s) for a whole fetch; lower it or raise fetch_max_bytes",
			k.PartitionFetchMaxBytes, k.FetchMaxBytes)
	}
	v.durationAtLeast("kafka.fetch_max_wait", k.FetchMaxWait, 10*time.Millisecond)
	if k.MaxConcurrentFetches < 1 {
		v.add("kafka.max_concurrent_fetches", "is %d; it must be at least 1: it bounds the memory of the fetch buffers (fetch_max_bytes x max_concurrent_fetches)", k.MaxConcurrentFetches)
	}
	v.durationAtLeast("kafka.session_timeout", k.SessionTimeout, 100*time.Millisecond)
	v.durationAtLeast("kafka.rebalance_timeout", k.RebalanceTimeout, 100*time.Millisecond)
	v.oneOf("kafka.balancer", k.Balancer, BalancerCooperativeSticky, BalancerSticky, BalancerRange, BalancerRoundRobin)
	switch {
	case k.ClientID == "":
		v.add("kafka.client_id", "is required: it names this client in broker logs and quotas, like sluice")
	case len(k.ClientID) > 256:
		v.add("kafka.client_id", "is %d characters long; Kafka allows at most 256", len(k.ClientID))
	}

	t := &k.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.add("kafka.tls.key_file", "is required with kafka.tls.cert_file: a client certificate needs its private key")
	case t.KeyFile != "" && t.CertFile == "":
		v.add("kafka.tls.cert_file", "is required with kafka.tls.key_file: a private key needs its client certificate")
	}
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "") {
		v.add("kafka.tls.enabled", "is false, but other kafka.tls keys are set and would be ignored; set enabled: true or remove them")
	}

	s := &k.SASL
	v.oneOf("kafka.sasl.mechanism", s.Mechanism, "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
	switch {
	case s.Mechanism == "" && (s.Username != "" || s.Password != ""):
		v.add("kafka.sasl.mechanism", "is empty, so the SASL username and password would be ignored; set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, or remove them")
	case s.Mechanism != "":
		if s.Username == "" {
			v.add("kafka.sasl.username", "is required with kafka.sasl.mechanism %s", s.Mechanism)
		}
		if s.Password == "" {
			v.add("kafka.sasl.password", `is required with kafka.sasl.mechanism %s: write "${KAFKA_PASSWORD}" or set kafka.sasl.password_file`, s.Mechanism)
		}
	}
}

func (v *checker) flow(f *Flow) {
	v.atLeast("flow.max_buffered_records", f.MaxBufferedRecords, 1)
	if f.MaxBufferedBytes < 1 {
		v.add("flow.max_buffered_bytes", "is %d; it must be a positive size, like 64MiB", f.MaxBufferedBytes)
	}
	switch {
	case f.MaxRecordBytes < KiB:
		v.add("flow.max_record_bytes", "is %d bytes; it must be at least 1KiB: write a size with its unit, like 1MiB", f.MaxRecordBytes)
	case f.MaxBufferedBytes >= 1 && f.MaxRecordBytes > f.MaxBufferedBytes:
		v.add("flow.max_record_bytes", "is %s, more than flow.max_buffered_bytes (%s), which must hold at least one record; lower it or raise max_buffered_bytes",
			f.MaxRecordBytes, f.MaxBufferedBytes)
	}
	if !(f.ResumeAt > 0 && f.ResumeAt < 1) {
		v.add("flow.resume_at", "is %g; it must be between 0 and 1 (exclusive), the share of the budget below which paused partitions resume, like 0.5", f.ResumeAt)
	}
	v.atLeast("flow.workers", f.Workers, 1)
	v.positive("flow.record_timeout", f.RecordTimeout)
	r := &f.RateLimit
	if r.RecordsPerSecond < 0 {
		v.add("flow.rate_limit.records_per_second", "is %g; use 0 for no limit or a positive rate", r.RecordsPerSecond)
	}
	switch {
	case r.Burst < 0:
		v.add("flow.rate_limit.burst", "is %d; it must not be negative", r.Burst)
	case r.RecordsPerSecond > 0 && r.Burst == 0:
		v.add("flow.rate_limit.burst", "is 0 with a rate limit set, so no record could ever be written; set it to at least 1 (it defaults to the rate)")
	}
}

func (v *checker) sink(c *Config) {
	s := &c.Sink
	v.oneOf("sink.type", s.Type, SinkPostgres, SinkHTTP, SinkFile)
	if s.Concurrency < 1 || s.Concurrency > 256 {
		v.add("sink.concurrency", "is %d; it must be between 1 and 256 (the number of lanes writing in parallel)", s.Concurrency)
	}

	b := &s.Batch
	v.atLeast("sink.batch.max_records", b.MaxRecords, 1)
	if b.MaxBytes < 1 {
		v.add("sink.batch.max_bytes", "is %d; it must be a positive size, like 8MiB", b.MaxBytes)
	}
	if b.Linger < 0 {
		v.add("sink.batch.linger", "is %s; it must not be negative (0 writes a batch as soon as it has a row)", b.Linger)
	}
	// Rows count against the flow budget until they are written, so a batch
	// larger than the budget can never fill: every write would wait for linger.
	if f := &c.Flow; f.MaxBufferedRecords >= 1 && b.MaxRecords > f.MaxBufferedRecords {
		v.add("sink.batch.max_records", "is %d, more than flow.max_buffered_records (%d), so a batch could never fill; lower it or raise max_buffered_records",
			b.MaxRecords, f.MaxBufferedRecords)
	}
	if f := &c.Flow; f.MaxBufferedBytes >= 1 && b.MaxBytes > f.MaxBufferedBytes {
		v.add("sink.batch.max_bytes", "is %s, more than flow.max_buffered_bytes (%s), so a batch could never fill; lower it or raise max_buffered_bytes",
			b.MaxBytes, f.MaxBufferedBytes)
	}

	v.positive("sink.write_timeout", s.WriteTimeout)
	// A revoked partition's in-flight batch must finish within the rebalance
	// timeout, or the group moves on while this replica is still writing.
	if s.WriteTimeout > 0 && c.Kafka.RebalanceTimeout > 0 && s.WriteTimeout >= c.Kafka.RebalanceTimeout {
		v.add("sink.write_timeout", "is %s, not less than kafka.rebalance_timeout (%s): a write still running at a rebalance would outlive it; lower it or raise rebalance_timeout",
			s.WriteTimeout, c.Kafka.RebalanceTimeout)
	}

	v.positive("sink.retry.initial_backoff", s.Retry.InitialBackoff)
	if s.Retry.InitialBackoff > 0 && s.Retry.MaxBackoff < s.Retry.InitialBackoff {
		v.add("sink.retry.max_backoff", "is %s, less than sink.retry.initial_backoff (%s); raise it", s.Retry.MaxBackoff, s.Retry.InitialBackoff)
	}

	br := &s.Breaker
	v.atLeast("sink.breaker.failure_threshold", br.FailureThreshold, 1)
	v.positive("sink.breaker.open_for", br.OpenFor)
	v.atLeast("sink.breaker.half_open_successes", br.HalfOpenSuccesses, 1)
	if !(br.HalfOpenShare > 0 && br.HalfOpenShare <= 1) {
		v.add("sink.breaker.half_open_share", "is %g; it must be above 0 and at most 1, the share of traffic let through while half-open, like 0.05", br.HalfOpenShare)
	}

	v.postgres(s)
	v.http(s)
	if s.Type == SinkFile && strings.TrimSpace(s.File.Path) == "" {
		v.add("sink.file.path", "is required with sink.type file: name the JSON-lines file to write, like ./out.jsonl")
	}
	v.columns("sink.file.columns", s.File.Columns)
	v.columns("sink.http.columns", s.HTTP.Columns)
}

func (v *checker) postgres(s *Sink) {
	pg := &s.Postgres
	selected := s.Type == SinkPostgres
	v.oneOf("sink.postgres.mode", pg.Mode, ModeInsert, ModeUpsert)
	v.oneOf("sink.postgres.delivery", pg.Delivery, DeliveryAtLeastOnce, DeliveryExactlyOnce)
	if pg.Delivery == DeliveryExactlyOnce && s.Type != SinkPostgres && s.Type != "" {
		v.add("sink.postgres.delivery", "is exactly-once, which only the postgres sink provides (offsets are stored with the rows), but sink.type is %s; use at-least-once", s.Type)
	}
	v.columns("sink.postgres.columns", pg.Columns)
	if !selected {
		return
	}
	if pg.DSN == "" {
		v.add("sink.postgres.dsn", `is required with sink.type postgres: write "${PG_DSN}" or set sink.postgres.dsn_file`)
	}
	if err := checkTable(pg.Table); err != nil {
		v.add("sink.postgres.table", "%v", err)
	}
	if len(pg.Columns) == 0 {
		v.add("sink.postgres.columns", "is required with sink.type postgres: map at least one column to a source, like id: value.id")
	}
	if pg.Delivery == DeliveryExactlyOnce {
		switch err := checkTable(pg.OffsetsTable); {
		case strings.TrimSpace(pg.OffsetsTable) == "":
			v.add("sink.postgres.offsets_table", "is required with delivery exactly-once: name the table that holds each partition's next offset, like %s", DefaultOffsetsTable)
		case err != nil:
			v.add("sink.postgres.offsets_table", "%v", err)
		case sameTable(pg.OffsetsTable, pg.Table):
			v.add("sink.postgres.offsets_table", "is %s, the target table; name a table of its own, like %s", pg.OffsetsTable, DefaultOffsetsTable)
		}
	}
	if pg.Mode == ModeUpsert && len(pg.KeyColumns) == 0 {
		v.add("sink.postgres.key_columns", "is required with mode upsert: list the columns of the conflict target (a unique index), like [id]")
	}
	for i, k := range pg.KeyColumns {
		p := fmt.Sprintf("sink.postgres.key_columns[%d]", i)
		switch _, mapped := pg.Columns[k]; {
		case slices.Index(pg.KeyColumns, k) < i:
			v.add(p, "%q is listed twice", k)
		case !mapped:
			v.add(p, "%q is not a column of sink.postgres.columns; key columns must be mapped to a source", k)
		}
	}
}

func (v *checker) http(s *Sink) {
	h := &s.HTTP
	v.oneOf("sink.http.format", h.Format, FormatNDJSON, FormatJSON)
	for name := range h.Headers {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			v.add("sink.http.headers", "has the header name %q; a header name has no spaces or colons", name)
		}
	}
	if s.Type != SinkHTTP {
		return
	}
	if h.URL == "" {
		v.add("sink.http.url", "is required with sink.type http: the endpoint that receives the batches, like https://ingest.example.com/orders")
		return
	}
	// The URL may carry credentials, so the messages do not repeat it.
	u, err := url.Parse(h.URL)
	switch {
	case err != nil:
		v.add("sink.http.url", "is not a valid URL")
	case u.Scheme != "http" && u.Scheme != "https":
		v.add("sink.http.url", "must start with http:// or https://")
	case u.Host == "":
		v.add("sink.http.url", "has no host")
	}
}

// columns checks a map of column name to source.
func (v *checker) columns(path string, cols map[string]string) {
	for _, name := range sortedKeys(cols) {
		if strings.TrimSpace(name) == "" {
			v.add(path, "has a column with an empty name")
			continue
		}
		if err := checkSource(cols[name]); err != nil {
			v.add(join(path, name), "%v", err)
		}
	}
}

func (v *checker) dlq(c *Config) {
	t := c.DLQ.Topic
	if t == "" {
		v.add("dlq.topic", "is required: name the dead-letter topic (it defaults to <kafka.group>.dlq when kafka.group is set)")
		return
	}
	if err := checkTopic(t); err != nil {
		v.add("dlq.topic", "%v", err)
	}
	if slices.Contains(c.Kafka.Topics, t) {
		v.add("dlq.topic", "%q is also in kafka.topics: dead letters would be consumed again; use a topic of its own", t)
	}
}

func (v *checker) observability(o *Observability) {
	if err := checkHostPort(o.Listen, false); err != nil {
		v.add("observability.listen", "%v", err)
	}
	v.oneOf("observability.log_level", o.LogLevel, "debug", "info", "warn", "error")
	v.oneOf("observability.log_format", o.LogFormat, "json", "console")
}

// columnSources are the sources that are not a path into the value.
var columnSources = []string{"$key", "$topic", "$partition", "$offset", "$timestamp", "$value"}

const sourcesHelp = "use $key, $topic, $partition, $offset, $timestamp, $value (the whole value), $headers.<name> or value.<json.path>"

// checkSource checks one column source.
func checkSource(src string) error {
	if slices.Contains(columnSources, src) {
		return nil
	}
	if name, ok := strings.CutPrefix(src, "$headers."); ok {
		if name == "" {
			return fmt.Errorf("%q names no header; write $headers.<name>", src)
		}
		return nil
	}
	if path, ok := strings.CutPrefix(src, "value."); ok {
		if slices.Contains(strings.Split(path, "."), "") {
			return fmt.Errorf("%q has an empty path segment; write value.<field>.<field>, like value.customer.id", src)
		}
		return nil
	}
	switch {
	case src == "":
		return fmt.Errorf("has no source; %s", sourcesHelp)
	case src == "value":
		return fmt.Errorf(`"value" is not a source; write $value for the whole value or value.<field> for one field`)
	case strings.HasPrefix(src, "$value."):
		return fmt.Errorf("%q is not a source; write %s for a field of the value", src, strings.TrimPrefix(src, "$"))
	case src == "$headers":
		return fmt.Errorf(`"$headers" names no header; write $headers.<name>`)
	}
	return fmt.Errorf("%q is not a source; %s", src, sourcesHelp)
}

// checkTopic checks a Kafka topic name.
func checkTopic(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("is empty; name a topic")
	case len(t) > 249:
		return fmt.Errorf("is %d characters long; a Kafka topic name has at most 249", len(t))
	case t == "." || t == "..":
		return fmt.Errorf("%q is not a valid Kafka topic name", t)
	}
	for _, r := range t {
		if !(r == '.' || r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("%q is not a valid Kafka topic name: use letters, digits, '.', '_' and '-' only", t)
		}
	}
	return nil
}

// checkTable checks the shape of table or schema.table.
// sameTable reports whether two configured table names surely name one table
// (unquoted names, with public as the schema when none is given).
func sameTable(a, b string) bool {
	norm := func(t string) string {
		t = strings.ToLower(strings.TrimSpace(t))
		if !strings.Contains(t, ".") {
			t = "public." + t
		}
		return t
	}
	return !strings.Contains(a+b, `"`) && norm(a) == norm(b)
}

func checkTable(t string) error {
	if strings.TrimSpace(t) == "" {
		return fmt.Errorf("is required with sink.type postgres: name the target table, like public.orders")
	}
	if strings.Contains(t, `"`) {
		return nil // a quoted identifier; PostgreSQL will judge it
	}
	if parts := strings.Split(t, "."); len(parts) > 2 || slices.Contains(parts, "") {
		return fmt.Errorf("is %q; write table or schema.table, like public.orders", t)
	}
	return nil
}

// checkHostPort checks a host:port address; the host may be empty (all
// interfaces) unless hostRequired.
func checkHostPort(s string, hostRequired bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if hostRequired {
			return fmt.Errorf("%q is not host:port; write it like kafka-0:9092", s)
		}
		return fmt.Errorf("%q is not host:port; write it like :9108 or 127.0.0.1:9108", s)
	}
	if hostRequired && host == "" {
		return fmt.Errorf("%q has no host; write it like kafka-0:9092", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (hostRequired && n == 0) {
		return fmt.Errorf("%q has an invalid port", s)
	}
	return nil
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
