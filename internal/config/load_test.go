package config

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadMinimalGetsDefaults(t *testing.T) {
	got, err := LoadWith(writeFile(t, "sluice.yaml", minimalYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Kafka.Brokers = []string{"localhost:9092"}
	want.Kafka.Group = "orders-sink"
	want.Kafka.Topics = []string{"orders"}
	want.Sink.Type = SinkPostgres
	want.Sink.Postgres.DSN = "postgres://u:p@localhost/db"
	want.Sink.Postgres.Table = "public.orders"
	want.Sink.Postgres.Columns = map[string]string{"id": "value.id"}
	want.DLQ.Topic = "orders-sink.dlq"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	// The defaults DESIGN.md promises, spelled out.
	for name, c := range map[string]struct{ got, want any }{
		"start_offset":              {got.Kafka.StartOffset, "earliest"},
		"max_poll_records":          {got.Kafka.MaxPollRecords, 500},
		"fetch_max_bytes":           {got.Kafka.FetchMaxBytes, ByteSize(16 << 20)},
		"partition_fetch_max_bytes": {got.Kafka.PartitionFetchMaxBytes, ByteSize(512 << 10)},
		"fetch_max_wait":            {got.Kafka.FetchMaxWait, 500 * time.Millisecond},
		"max_concurrent_fetches":    {got.Kafka.MaxConcurrentFetches, 2},
		"session_timeout":           {got.Kafka.SessionTimeout, 45 * time.Second},
		"rebalance_timeout":         {got.Kafka.RebalanceTimeout, 60 * time.Second},
		"balancer":                  {got.Kafka.Balancer, "cooperative-sticky"},
		"client_id":                 {got.Kafka.ClientID, "sluice"},
		"max_buffered_records":      {got.Flow.MaxBufferedRecords, 40000},
		"max_buffered_bytes":        {got.Flow.MaxBufferedBytes, ByteSize(64 << 20)},
		"max_record_bytes":          {got.Flow.MaxRecordBytes, ByteSize(1 << 20)},
		"resume_at":                 {got.Flow.ResumeAt, 0.5},
		"workers":                   {got.Flow.Workers, 4},
		"record_timeout":            {got.Flow.RecordTimeout, 30 * time.Second},
		"rate_limit":                {got.Flow.RateLimit, RateLimit{}},
		"concurrency":               {got.Sink.Concurrency, 4},
		"batch":                     {got.Sink.Batch, Batch{MaxRecords: 5000, MaxBytes: 8 << 20, Linger: 200 * time.Millisecond}},
		"write_timeout":             {got.Sink.WriteTimeout, 30 * time.Second},
		"retry":                     {got.Sink.Retry, Retry{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second}},
		"breaker":                   {got.Sink.Breaker, Breaker{FailureThreshold: 5, OpenFor: 30 * time.Second, HalfOpenSuccesses: 3, HalfOpenShare: 0.05}},
		"mode":                      {got.Sink.Postgres.Mode, "insert"},
		"delivery":                  {got.Sink.Postgres.Delivery, "at-least-once"},
		"offsets_table":             {got.Sink.Postgres.OffsetsTable, "public.sluice_offsets"},
		"http.format":               {got.Sink.HTTP.Format, "ndjson"},
		"file.path":                 {got.Sink.File.Path, "./out.jsonl"},
		"commit.interval":           {got.Commit.Interval, time.Second},
		"shutdown_timeout":          {got.ShutdownTimeout, 30 * time.Second},
		"listen":                    {got.Observability.Listen, ":9108"},
		"log_level":                 {got.Observability.LogLevel, "info"},
		"log_format":                {got.Observability.LogFormat, "json"},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}
}

func TestLoadNoFile(t *testing.T) {
	t.Run("defaults and environment only", func(t *testing.T) {
		got, err := LoadWith("", envMap(map[string]string{
			"SLUICE_KAFKA_BROKERS":           "127.0.0.1:9092",
			"SLUICE_KAFKA_GROUP":             "demo",
			"SLUICE_KAFKA_TOPICS":            "orders",
			"SLUICE_SINK_TYPE":               "file",
			"SLUICE_OBSERVABILITY_LISTEN":    "127.0.0.1:9108",
			"SLUICE_SINK_FILE_PATH":          "/tmp/demo.jsonl",
			"SLUICE_FLOW_MAX_BUFFERED_BYTES": "32MiB",
		}))
		if err != nil {
			t.Fatal(err)
		}
		if got.Observability.Listen != "127.0.0.1:9108" || got.Sink.File.Path != "/tmp/demo.jsonl" ||
			got.Flow.MaxBufferedBytes != 32*MiB || got.DLQ.Topic != "demo.dlq" || got.Flow.Workers != 4 {
			t.Errorf("got %+v", got)
		}
	})
	t.Run("unvalidated is the defaults", func(t *testing.T) {
		got, err := LoadUnvalidated("", nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, Default()) {
			t.Errorf("got %+v, want the defaults", got)
		}
		wantProblem(t, got.Validate(), "kafka.brokers", "required")
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("invalid YAML", func(t *testing.T) {
		_, err := LoadWith(writeFile(t, "bad.yaml", "kafka: [\n"), nil)
		var ve *ValidationError
		if err == nil || errors.As(err, &ve) || !strings.Contains(err.Error(), "bad.yaml") {
			t.Errorf("err = %v, want a plain YAML error naming the file", err)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		got, err := LoadUnvalidated(writeFile(t, "empty.yaml", "# nothing\n"), nil)
		if err != nil || !reflect.DeepEqual(got, Default()) {
			t.Errorf("got %+v, %v; want the defaults", got, err)
		}
	})
}

func TestLoadRejectsBadConfigurations(t *testing.T) {
	tests := []struct {
		name    string
		overlay string            // merged into minimalYAML
		env     map[string]string // the environment
		path    string            // the problem's exact key path
		texts   []string          // and what its message must say
	}{
		{name: "typo", overlay: "kafka: {brokrs: [a:9092]}", path: "kafka.brokrs", texts: []string{"unknown key", "did you mean kafka.brokers?"}},
		{name: "typo deep", overlay: "sink: {postgres: {colums: {id: $offset}}}", path: "sink.postgres.colums", texts: []string{"did you mean sink.postgres.columns?"}},
		{name: "typo in a section name", overlay: "kafak: {group: g}", path: "kafak", texts: []string{"did you mean kafka?"}},
		{name: "typo with camel case", overlay: "flow: {maxBufferedBytes: 1MiB}", path: "flow.maxBufferedBytes", texts: []string{"did you mean flow.max_buffered_bytes?"}},
		{name: "key in the wrong section", overlay: "kafka: {password: x}", path: "kafka.password", texts: []string{"did you mean kafka.sasl.password?"}},
		{name: "unknown key far from any", overlay: "observability: {zzzzzz: 1}", path: "observability.zzzzzz", texts: []string{"the keys of observability are listen, log_level, log_format"}},
		{name: "bad duration", overlay: "sink: {batch: {linger: fast}}", path: "sink.batch.linger", texts: []string{`"fast" is not a duration`}},
		{name: "duration without unit", overlay: "kafka: {session_timeout: 45}", path: "kafka.session_timeout", texts: []string{`"45" has no unit`, "45s"}},
		{name: "bad size", overlay: "flow: {max_buffered_bytes: 64XB}", path: "flow.max_buffered_bytes", texts: []string{`"64XB" is not a size`, "MiB"}},
		{name: "negative size", overlay: "sink: {batch: {max_bytes: -1MiB}}", path: "sink.batch.max_bytes", texts: []string{`"-1MiB" is not a size`}},
		{name: "not a number", overlay: "flow: {workers: four}", path: "flow.workers", texts: []string{`"four" is not a whole number`}},
		{name: "not a bool", overlay: "kafka: {tls: {enabled: maybe}}", path: "kafka.tls.enabled", texts: []string{`"maybe" is not true or false`}},
		{name: "list for a value", overlay: "kafka: {group: [a, b]}", path: "kafka.group", texts: []string{"must be a single value, not a list"}},
		{name: "value for a section", overlay: "flow: fast", path: "flow", texts: []string{"must be a section of keys"}},
		{name: "section for a list", overlay: "kafka: {topics: {a: b}}", path: "kafka.topics", texts: []string{"must be a list"}},
		{name: "resume_at 1", overlay: "flow: {resume_at: 1}", path: "flow.resume_at", texts: []string{"between 0 and 1"}},
		{name: "resume_at 0", overlay: "flow: {resume_at: 0}", path: "flow.resume_at", texts: []string{"between 0 and 1"}},
		{name: "max_poll_records 0", overlay: "kafka: {max_poll_records: 0}", path: "kafka.max_poll_records", texts: []string{"at least 1"}},
		{name: "workers 0", overlay: "flow: {workers: 0}", path: "flow.workers", texts: []string{"at least 1"}},
		{name: "concurrency 0", overlay: "sink: {concurrency: 0}", path: "sink.concurrency", texts: []string{"between 1 and 256"}},
		{name: "concurrency 300", overlay: "sink: {concurrency: 300}", path: "sink.concurrency", texts: []string{"between 1 and 256"}},
		{name: "batch max_records 0", overlay: "sink: {batch: {max_records: 0}}", path: "sink.batch.max_records", texts: []string{"at least 1"}},
		{name: "batch larger than the budget", overlay: "flow: {max_buffered_records: 1000}", path: "sink.batch.max_records", texts: []string{"flow.max_buffered_records (1000)", "never fill"}},
		{name: "batch bytes larger than the budget", overlay: "flow: {max_buffered_bytes: 4MiB}", path: "sink.batch.max_bytes", texts: []string{"8MiB", "4MiB"}},
		{name: "record bytes larger than the budget", overlay: "flow: {max_buffered_bytes: 4MiB, max_record_bytes: 8MiB}", path: "flow.max_record_bytes", texts: []string{"8MiB", "flow.max_buffered_bytes (4MiB)"}},
		{name: "record bytes without unit", overlay: "flow: {max_record_bytes: 1}", path: "flow.max_record_bytes", texts: []string{"at least 1KiB", "1MiB"}},
		{name: "record bytes 0", overlay: "flow: {max_record_bytes: 0}", path: "flow.max_record_bytes", texts: []string{"at least 1KiB"}},
		{name: "record bytes from the environment", env: map[string]string{"SLUICE_FLOW_MAX_RECORD_BYTES": "100MiB"}, path: "flow.max_record_bytes", texts: []string{"100MiB", "(64MiB)"}},
		{name: "zero duration", overlay: "flow: {record_timeout: 0s}", path: "flow.record_timeout", texts: []string{"positive duration"}},
		{name: "fetch wait too short", overlay: "kafka: {fetch_max_wait: 1ms}", path: "kafka.fetch_max_wait", texts: []string{"at least 10ms"}},
		{name: "partition fetch above fetch", overlay: "kafka: {partition_fetch_max_bytes: 100MiB}", path: "kafka.partition_fetch_max_bytes", texts: []string{"kafka.fetch_max_bytes (16MiB)"}},
		{name: "max_backoff below initial", overlay: "sink: {retry: {initial_backoff: 1s, max_backoff: 500ms}}", path: "sink.retry.max_backoff", texts: []string{"less than sink.retry.initial_backoff"}},
		{name: "write outlives rebalance", overlay: "sink: {write_timeout: 2m}", path: "sink.write_timeout", texts: []string{"kafka.rebalance_timeout (1m0s)"}},
		{name: "half_open_share 0", overlay: "sink: {breaker: {half_open_share: 0}}", path: "sink.breaker.half_open_share"},
		{name: "half_open_share 1.5", overlay: "sink: {breaker: {half_open_share: 1.5}}", path: "sink.breaker.half_open_share"},
		{name: "failure_threshold 0", overlay: "sink: {breaker: {failure_threshold: 0}}", path: "sink.breaker.failure_threshold"},
		{name: "rate without burst", overlay: "flow: {rate_limit: {records_per_second: -5}}", path: "flow.rate_limit.records_per_second"},
		{name: "start_offset", overlay: "kafka: {start_offset: newest}", path: "kafka.start_offset", texts: []string{`"newest"`, "earliest, latest"}},
		{name: "sink type", overlay: "sink: {type: kafka}", path: "sink.type", texts: []string{"postgres, http, file"}},
		{name: "mode", overlay: "sink: {postgres: {mode: merge}}", path: "sink.postgres.mode", texts: []string{"insert, upsert"}},
		{name: "delivery", overlay: "sink: {postgres: {delivery: exactly-twice}}", path: "sink.postgres.delivery"},
		{name: "balancer", overlay: "kafka: {balancer: random}", path: "kafka.balancer"},
		{name: "log level", overlay: "observability: {log_level: verbose}", path: "observability.log_level"},
		{name: "log format", overlay: "observability: {log_format: text}", path: "observability.log_format"},
		{name: "http format", overlay: "sink: {http: {format: xml}}", path: "sink.http.format"},
		{name: "mechanism case", overlay: "kafka: {sasl: {mechanism: scram-sha-512, username: u, password: p}}", path: "kafka.sasl.mechanism", texts: []string{"case-sensitive", "SCRAM-SHA-512"}},
		{name: "mechanism without password", overlay: "kafka: {sasl: {mechanism: PLAIN, username: u}}", path: "kafka.sasl.password", texts: []string{"KAFKA_PASSWORD"}},
		{name: "password without mechanism", overlay: "kafka: {sasl: {username: u, password: p}}", path: "kafka.sasl.mechanism", texts: []string{"ignored"}},
		{name: "upsert without key_columns", overlay: "sink: {postgres: {mode: upsert}}", path: "sink.postgres.key_columns", texts: []string{"required with mode upsert"}},
		{name: "key column not mapped", overlay: "sink: {postgres: {mode: upsert, key_columns: [order_id]}}", path: "sink.postgres.key_columns[0]", texts: []string{`"order_id" is not a column`}},
		{name: "exactly-once without offsets table", overlay: "sink: {postgres: {delivery: exactly-once, offsets_table: ''}}", path: "sink.postgres.offsets_table", texts: []string{"required with delivery exactly-once", "public.sluice_offsets"}},
		{name: "exactly-once bad offsets table", overlay: "sink: {postgres: {delivery: exactly-once, offsets_table: a.b.c}}", path: "sink.postgres.offsets_table", texts: []string{"schema.table"}},
		{name: "offsets table is the target", overlay: "sink: {postgres: {delivery: exactly-once, offsets_table: ORDERS}}", path: "sink.postgres.offsets_table", texts: []string{"the target table"}},
		{name: "exactly-once to a file", overlay: "sink: {type: file, postgres: {delivery: exactly-once}}", path: "sink.postgres.delivery", texts: []string{"only the postgres sink"}},
		{name: "cert without key", overlay: "kafka: {tls: {enabled: true, cert_file: /c.pem}}", path: "kafka.tls.key_file"},
		{name: "tls files while disabled", overlay: "kafka: {tls: {ca_file: /ca.pem}}", path: "kafka.tls.enabled", texts: []string{"set enabled: true"}},
		{name: "no brokers", overlay: "kafka: {brokers: null}", path: "kafka.brokers", texts: []string{"required"}},
		{name: "broker without port", overlay: "kafka: {brokers: [localhost:9092, localhost]}", path: "kafka.brokers[1]", texts: []string{`"localhost" is not host:port`}},
		{name: "no group", overlay: "kafka: {group: null}", path: "kafka.group", texts: []string{"required"}},
		{name: "no topics", overlay: "kafka: {topics: []}", path: "kafka.topics", texts: []string{"required"}},
		{name: "bad topic", overlay: "kafka: {topics: [orders, 'my topic']}", path: "kafka.topics[1]", texts: []string{"not a valid Kafka topic name"}},
		{name: "dlq is consumed", overlay: "dlq: {topic: orders}", path: "dlq.topic", texts: []string{"also in kafka.topics"}},
		{name: "no sink type", overlay: "sink: {type: null}", path: "sink.type", texts: []string{"required"}},
		{name: "postgres without dsn", overlay: "sink: {postgres: {dsn: null}}", path: "sink.postgres.dsn", texts: []string{"${PG_DSN}", "dsn_file"}},
		{name: "postgres without table", overlay: "sink: {postgres: {table: null}}", path: "sink.postgres.table", texts: []string{"required"}},
		{name: "postgres bad table", overlay: "sink: {postgres: {table: a..b}}", path: "sink.postgres.table"},
		{name: "postgres without columns", overlay: "sink: {postgres: {columns: null}}", path: "sink.postgres.columns", texts: []string{"at least one column"}},
		{name: "unknown column source", overlay: "sink: {postgres: {columns: {amount: $amount}}}", path: "sink.postgres.columns.amount", texts: []string{`"$amount" is not a source`, "value.<json.path>"}},
		{name: "empty path segment", overlay: "sink: {postgres: {columns: {amount: value.order..amount}}}", path: "sink.postgres.columns.amount", texts: []string{"empty path segment"}},
		{name: "dollar value path", overlay: "sink: {postgres: {columns: {amount: $value.amount}}}", path: "sink.postgres.columns.amount", texts: []string{"write value.amount"}},
		{name: "header without name", overlay: "sink: {file: {columns: {h: $headers.}}}", path: "sink.file.columns.h", texts: []string{"$headers.<name>"}},
		{name: "http without url", overlay: "sink: {type: http}", path: "sink.http.url", texts: []string{"required with sink.type http"}},
		{name: "http url scheme", overlay: "sink: {type: http, http: {url: 'ftp://x'}}", path: "sink.http.url", texts: []string{"http:// or https://"}},
		{name: "file without path", overlay: "sink: {type: file, file: {path: ''}}", path: "sink.file.path", texts: []string{"required"}},
		{name: "listen without port", overlay: "observability: {listen: '9108'}", path: "observability.listen", texts: []string{"host:port"}},
		{name: "missing variable", overlay: "sink: {postgres: {dsn: '${PG_DSN}'}}", path: "sink.postgres.dsn", texts: []string{"PG_DSN is not set"}},
		{name: "bad environment value", env: map[string]string{"SLUICE_FLOW_WORKERS": "many"}, path: "flow.workers", texts: []string{"SLUICE_FLOW_WORKERS", `"many" is not a whole number`}},
		{name: "bad environment size", env: map[string]string{"SLUICE_KAFKA_FETCH_MAX_BYTES": "lots"}, path: "kafka.fetch_max_bytes", texts: []string{"SLUICE_KAFKA_FETCH_MAX_BYTES", `"lots"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := minimalYAML
			if tt.overlay != "" {
				doc = overlay(t, tt.overlay)
			}
			c, err := LoadWith(writeFile(t, "sluice.yaml", doc), envMap(tt.env))
			if c != nil {
				t.Errorf("LoadWith returned a Config with an error")
			}
			wantProblem(t, err, tt.path, tt.texts...)
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	doc := `
kafka:
  brokrs: [a:9092]
  group: g
  topics: [t]
  max_poll_records: none
flow:
  resume_at: 2
  workers: 0
sink:
  type: postgres
  postgres:
    dsn: ${PG_DSN}
    table: t
    mode: upsert
    columns: {id: $nope}
observability:
  log_level: loud
  log_level: quiet
`
	_, err := LoadWith(writeFile(t, "sluice.yaml", doc), nil)
	for _, path := range []string{
		"kafka.brokrs", "kafka.brokers", "kafka.max_poll_records", "flow.resume_at", "flow.workers",
		"sink.postgres.dsn", "sink.postgres.key_columns", "sink.postgres.columns.id",
		"observability.log_level",
	} {
		wantProblem(t, err, path)
	}
	// A key that failed to load is not reported a second time by validation.
	n := 0
	for _, p := range problems(t, err) {
		if p.Path == "sink.postgres.dsn" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("sink.postgres.dsn reported %d times, want once:\n%v", n, err)
	}
	if !strings.Contains(err.Error(), "(line 3)") {
		t.Errorf("problems from the file do not give the line:\n%v", err)
	}
	wantProblem(t, err, "observability.log_level", "set twice (first at line 18)")
}

func TestEnvOverridesWinOverTheFile(t *testing.T) {
	doc := overlay(t, `
kafka: {brokers: [file:9092], tls: {enabled: false}}
flow: {max_buffered_bytes: 128MiB, workers: 2, resume_at: 0.6}
sink: {batch: {linger: 1s}, postgres: {dsn: '${PG_DSN}', columns: {id: value.id}}}
observability: {listen: ':1111'}
`)
	env := map[string]string{
		"SLUICE_KAFKA_BROKERS":             "env-a:9092, env-b:9092,",
		"SLUICE_KAFKA_TLS_ENABLED":         "true",
		"SLUICE_FLOW_MAX_BUFFERED_BYTES":   "32MiB",
		"SLUICE_FLOW_WORKERS":              "16",
		"SLUICE_FLOW_RESUME_AT":            "0.25",
		"SLUICE_SINK_BATCH_LINGER":         "50ms",
		"SLUICE_SINK_POSTGRES_DSN":         "postgres://env/db", // PG_DSN is unset: the file's reference is not expanded
		"SLUICE_SINK_POSTGRES_COLUMNS":     "id=value.id, off=$offset",
		"SLUICE_SINK_POSTGRES_KEY_COLUMNS": "id",
		"SLUICE_OBSERVABILITY_LISTEN":      "127.0.0.1:2222",
	}
	c, err := LoadWith(writeFile(t, "sluice.yaml", doc), envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]struct{ got, want any }{
		"list":            {c.Kafka.Brokers, []string{"env-a:9092", "env-b:9092"}},
		"bool":            {c.Kafka.TLS.Enabled, true},
		"size":            {c.Flow.MaxBufferedBytes, 32 * MiB},
		"int":             {c.Flow.Workers, 16},
		"float":           {c.Flow.ResumeAt, 0.25},
		"duration":        {c.Sink.Batch.Linger, 50 * time.Millisecond},
		"secret":          {c.Sink.Postgres.DSN, Secret("postgres://env/db")},
		"map":             {c.Sink.Postgres.Columns, map[string]string{"id": "value.id", "off": "$offset"}},
		"not in the file": {c.Sink.Postgres.KeyColumns, []string{"id"}},
		"nested":          {c.Observability.Listen, "127.0.0.1:2222"},
		"untouched":       {c.Kafka.Group, "orders-sink"},
	} {
		if !reflect.DeepEqual(v.got, v.want) {
			t.Errorf("%s: got %#v, want %#v", name, v.got, v.want)
		}
	}
}

// TestEveryKeyHasAnEnvOverride sets the SLUICE_ variable of every key of the
// struct, found by reflection, and checks that the key took its value.
func TestEveryKeyHasAnEnvOverride(t *testing.T) {
	env := map[string]string{}
	want := map[string]any{}
	eachLeaf(reflect.ValueOf(Default()).Elem(), "", func(path string, fv reflect.Value) {
		var text string
		var value any
		switch ft := fv.Type(); {
		case ft == durationType:
			text, value = "7s", 7*time.Second
		case ft == byteSizeType:
			text, value = "7KiB", 7*KiB
		case ft == secretType:
			text, value = "s3cret", Secret("s3cret")
		case ft.Kind() == reflect.String:
			text, value = "x7", "x7"
		case ft.Kind() == reflect.Int:
			text, value = "7", 7
		case ft.Kind() == reflect.Float64:
			text, value = "0.7", 0.7
		case ft.Kind() == reflect.Bool:
			text, value = "true", true
		case ft.Kind() == reflect.Slice:
			text, value = "a, b", []string{"a", "b"}
		case ft.Kind() == reflect.Map:
			m := reflect.MakeMap(ft)
			m.SetMapIndex(reflect.ValueOf("k").Convert(ft.Key()), reflect.ValueOf("v").Convert(ft.Elem()))
			text, value = "k=v", m.Interface()
		default:
			t.Fatalf("%s: no test value for %s", path, ft)
		}
		if strings.HasSuffix(path, "_file") {
			return // tested with real files in TestSecretFiles
		}
		env[EnvName(path)] = text
		want[path] = value
	})
	if len(want) < 50 {
		t.Fatalf("only %d keys found", len(want))
	}
	c, err := LoadUnvalidated("", envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	eachLeaf(reflect.ValueOf(c).Elem(), "", func(path string, fv reflect.Value) {
		w, ok := want[path]
		if !ok {
			return
		}
		if !reflect.DeepEqual(fv.Interface(), w) {
			t.Errorf("%s (%s): got %#v, want %#v", path, EnvName(path), fv.Interface(), w)
		}
	})
}

func TestExpand(t *testing.T) {
	env := map[string]string{"HOST": "db.internal", "USER": "app", "EMPTY": ""}
	tests := []struct {
		name    string
		overlay string
		get     func(*Config) any
		want    any
	}{
		{"whole value", "sink: {postgres: {table: '${USER}'}}", func(c *Config) any { return c.Sink.Postgres.Table }, "app"},
		{"inside text", "sink: {postgres: {dsn: 'postgres://${USER}@${HOST}/db'}}", func(c *Config) any { return c.Sink.Postgres.DSN.Reveal() }, "postgres://app@db.internal/db"},
		{"empty variable", "kafka: {client_id: 'a${EMPTY}b'}", func(c *Config) any { return c.Kafka.ClientID }, "ab"},
		{"column sources stay literal", "sink: {postgres: {columns: {o: $offset, k: $key, h: $headers.x}}}",
			func(c *Config) any { return c.Sink.Postgres.Columns }, map[string]string{"id": "value.id", "o": "$offset", "k": "$key", "h": "$headers.x"}},
		{"escaped", "kafka: {client_id: 'a$${HOST}'}", func(c *Config) any { return c.Kafka.ClientID }, "a${HOST}"},
		{"lone dollar", "kafka: {client_id: 'a$b$'}", func(c *Config) any { return c.Kafka.ClientID }, "a$b$"},
		{"list item", "kafka: {brokers: ['${HOST}:9092']}", func(c *Config) any { return c.Kafka.Brokers }, []string{"db.internal:9092"}},
		{"number", "flow: {workers: '${NUM}'}", func(c *Config) any { return c.Flow.Workers }, 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadUnvalidated(writeFile(t, "sluice.yaml", overlay(t, tt.overlay)), envMap(withEnv(env, map[string]string{"NUM": "12"})))
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}

	bad := []struct {
		name, overlay, path, text string
	}{
		{"missing", "sink: {postgres: {dsn: 'postgres://${PG_USER}:${PG_PASSWORD}@h/db'}}", "sink.postgres.dsn", "not set in the environment: PG_USER, PG_PASSWORD"},
		{"missing in a list", "kafka: {brokers: [a:9092, '${BROKER}']}", "kafka.brokers[1]", "BROKER is not set"},
		{"missing in a map", "sink: {http: {headers: {Authorization: 'Bearer ${TOKEN}'}}}", "sink.http.headers.Authorization", "TOKEN is not set"},
		{"unterminated", "sink: {postgres: {dsn: 'postgres://${PG'}}", "sink.postgres.dsn", `without a closing "}"`},
		{"malformed", "sink: {postgres: {dsn: '${PG DSN}'}}", "sink.postgres.dsn", "malformed"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadUnvalidated(writeFile(t, "sluice.yaml", overlay(t, tt.overlay)), envMap(env))
			wantProblem(t, err, tt.path, tt.text)
		})
	}
	t.Run("messages hide the text around a reference", func(t *testing.T) {
		_, err := LoadUnvalidated(writeFile(t, "sluice.yaml", overlay(t, "sink: {postgres: {dsn: 'postgres://u:hunter2@${NOPE}/db'}}")), nil)
		wantProblem(t, err, "sink.postgres.dsn", "NOPE")
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the secret:\n%v", err)
		}
	})
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	dsnFile := filepath.Join(dir, "dsn")
	pwFile := filepath.Join(dir, "pw")
	emptyFile := filepath.Join(dir, "empty")
	for name, content := range map[string]string{dsnFile: "postgres://u:hunter2@h/db\n", pwFile: "s3cret\r\n", emptyFile: "\n"} {
		if err := writeFileAt(name, content); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("read and trimmed", func(t *testing.T) {
		doc := overlay(t, `
kafka: {sasl: {mechanism: PLAIN, username: u, password_file: `+pwFile+`}}
sink: {postgres: {dsn: null, dsn_file: `+dsnFile+`}}`)
		c, err := LoadWith(writeFile(t, "sluice.yaml", doc), nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.Sink.Postgres.DSN.Reveal() != "postgres://u:hunter2@h/db" || c.Kafka.SASL.Password.Reveal() != "s3cret" {
			t.Errorf("dsn %q, password %q", c.Sink.Postgres.DSN.Reveal(), c.Kafka.SASL.Password.Reveal())
		}
	})
	t.Run("from the environment", func(t *testing.T) {
		doc := overlay(t, `sink: {postgres: {dsn: null}}`)
		c, err := LoadWith(writeFile(t, "sluice.yaml", doc), envMap(map[string]string{"SLUICE_SINK_POSTGRES_DSN_FILE": dsnFile}))
		if err != nil {
			t.Fatal(err)
		}
		if c.Sink.Postgres.DSN.Reveal() != "postgres://u:hunter2@h/db" {
			t.Errorf("dsn %q", c.Sink.Postgres.DSN.Reveal())
		}
	})
	t.Run("variable in the file name", func(t *testing.T) {
		doc := overlay(t, `sink: {postgres: {dsn: null, dsn_file: '${SECRETS}/dsn'}}`)
		c, err := LoadWith(writeFile(t, "sluice.yaml", doc), envMap(map[string]string{"SECRETS": dir}))
		if err != nil {
			t.Fatal(err)
		}
		if c.Sink.Postgres.DSN.Reveal() != "postgres://u:hunter2@h/db" {
			t.Errorf("dsn %q", c.Sink.Postgres.DSN.Reveal())
		}
	})

	t.Run("http header from a file", func(t *testing.T) {
		doc := overlay(t, `sink: {http: {url: "https://ingest.example.com/x", headers: {X-Trace: on}, headers_file: {Authorization: `+pwFile+`}}}`)
		c, err := LoadWith(writeFile(t, "sluice.yaml", doc), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Sink.HTTP.Headers["Authorization"].Reveal(); got != "s3cret" || c.Sink.HTTP.Headers["X-Trace"].Reveal() != "on" {
			t.Errorf("headers %q", c.Sink.HTTP.Headers)
		}
	})

	bad := []struct {
		name, overlay, path, text string
	}{
		{"header in both", "sink: {http: {headers: {Authorization: x}, headers_file: {Authorization: " + pwFile + "}}}",
			"sink.http.headers_file.Authorization", "keep one"},
		{"header file missing", "sink: {http: {headers_file: {Authorization: " + filepath.Join(dir, "nope") + "}}}",
			"sink.http.headers_file.Authorization", "cannot read"},
		{"both set", "sink: {postgres: {dsn_file: " + dsnFile + "}}", "sink.postgres.dsn_file", "both sink.postgres.dsn and sink.postgres.dsn_file are set"},
		{"both set for sasl", "kafka: {sasl: {mechanism: PLAIN, username: u, password: p, password_file: " + pwFile + "}}", "kafka.sasl.password_file", "keep one"},
		{"missing file", "sink: {postgres: {dsn: null, dsn_file: " + filepath.Join(dir, "nope") + "}}", "sink.postgres.dsn_file", "cannot read"},
		{"empty file", "sink: {postgres: {dsn: null, dsn_file: " + emptyFile + "}}", "sink.postgres.dsn_file", "is empty"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadWith(writeFile(t, "sluice.yaml", overlay(t, tt.overlay)), nil)
			wantProblem(t, err, tt.path, tt.text)
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error shows a secret:\n%v", err)
			}
		})
	}
}

func TestRateLimitBurstDefaultsToTheRate(t *testing.T) {
	c, err := LoadWith(writeFile(t, "sluice.yaml", overlay(t, "flow: {rate_limit: {records_per_second: 2.5}}")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Flow.RateLimit.Burst != 3 {
		t.Errorf("burst = %d, want 3", c.Flow.RateLimit.Burst)
	}
}

func TestValidationErrorText(t *testing.T) {
	err := &ValidationError{Problems: []Problem{
		{Path: "kafka.brokers", Message: "is required"},
		{Path: "", Message: "the file must be a mapping"},
		{Path: "flow.workers", Message: "is 0"},
	}}
	want := "kafka.brokers: is required\nthe file must be a mapping\nflow.workers: is 0"
	if err.Error() != want {
		t.Errorf("got %q, want %q", err.Error(), want)
	}
}

func TestValidate(t *testing.T) {
	t.Run("defaults lack only the required keys", func(t *testing.T) {
		var got []string
		for _, p := range problems(t, Default().Validate()) {
			got = append(got, p.Path)
		}
		want := []string{"kafka.brokers", "kafka.group", "kafka.topics", "sink.type", "dlq.topic"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got problems at %v, want %v", got, want)
		}
	})
	t.Run("a config built in code", func(t *testing.T) {
		c := Default()
		c.Kafka.Brokers = []string{"127.0.0.1:9092"}
		c.Kafka.Group = "demo"
		c.Kafka.Topics = []string{"orders"}
		c.Sink.Type = SinkFile
		c.DLQ.Topic = "demo.dlq"
		if err := c.Validate(); err != nil {
			t.Error(err)
		}
	})
	t.Run("the zero Config", func(t *testing.T) {
		if err := new(Config).Validate(); err == nil {
			t.Error("the zero Config is valid")
		}
	})
}
