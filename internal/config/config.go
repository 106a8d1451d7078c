// Package config loads sluice's one YAML file, applies defaults and SLUICE_<PATH>
// environment overrides, resolves secrets (${VAR} and *_file keys) and validates
// the result, reporting every problem with the key's full path.
//
// Load is safe to call from any goroutine; a loaded Config is a plain value that
// nobody mutates after Load returns.
package config

import "time"

// Config is the whole of sluice's configuration. The YAML keys are the
// mapstructure tags; DESIGN.md and README.md document them.
type Config struct {
	Kafka           Kafka         `mapstructure:"kafka"`
	Flow            Flow          `mapstructure:"flow"`
	Sink            Sink          `mapstructure:"sink"`
	DLQ             DLQ           `mapstructure:"dlq"`
	Commit          Commit        `mapstructure:"commit"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	Observability   Observability `mapstructure:"observability"`
}

// Kafka is the consumer's connection and group settings.
type Kafka struct {
	Brokers                []string      `mapstructure:"brokers"`
	Group                  string        `mapstructure:"group"`
	Topics                 []string      `mapstructure:"topics"`
	StartOffset            string        `mapstructure:"start_offset"` // earliest | latest
	MaxPollRecords         int           `mapstructure:"max_poll_records"`
	FetchMaxBytes          ByteSize      `mapstructure:"fetch_max_bytes"`
	PartitionFetchMaxBytes ByteSize      `mapstructure:"partition_fetch_max_bytes"`
	FetchMaxWait           time.Duration `mapstructure:"fetch_max_wait"`
	MaxConcurrentFetches   int           `mapstructure:"max_concurrent_fetches"`
	SessionTimeout         time.Duration `mapstructure:"session_timeout"`
	RebalanceTimeout       time.Duration `mapstructure:"rebalance_timeout"`
	Balancer               string        `mapstructure:"balancer"` // cooperative-sticky | sticky | range | roundrobin
	ClientID               string        `mapstructure:"client_id"`
	TLS                    TLS           `mapstructure:"tls"`
	SASL                   SASL          `mapstructure:"sasl"`
}

// TLS configures TLS to the Kafka brokers.
type TLS struct {
	Enabled    bool   `mapstructure:"enabled"`
	CAFile     string `mapstructure:"ca_file"`
	CertFile   string `mapstructure:"cert_file"`
	KeyFile    string `mapstructure:"key_file"`
	ServerName string `mapstructure:"server_name"`
}

// SASL configures SASL authentication to the Kafka brokers.
type SASL struct {
	Mechanism    string `mapstructure:"mechanism"` // "" | PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
	Username     string `mapstructure:"username"`
	Password     Secret `mapstructure:"password"`
	PasswordFile string `mapstructure:"password_file"`
}

// Flow is the in-memory budget and the processing stage.
type Flow struct {
	MaxBufferedRecords int           `mapstructure:"max_buffered_records"`
	MaxBufferedBytes   ByteSize      `mapstructure:"max_buffered_bytes"`
	MaxRecordBytes     ByteSize      `mapstructure:"max_record_bytes"` // key + value + headers; larger records are dead-lettered undecoded (too_large)
	ResumeAt           float64       `mapstructure:"resume_at"`
	Workers            int           `mapstructure:"workers"`
	RecordTimeout      time.Duration `mapstructure:"record_timeout"`
	RateLimit          RateLimit     `mapstructure:"rate_limit"`
}

// RateLimit is an optional token bucket on rows written per second; 0 is off.
type RateLimit struct {
	RecordsPerSecond float64 `mapstructure:"records_per_second"`
	Burst            int     `mapstructure:"burst"`
}

// Sink selects and configures the sink.
type Sink struct {
	Type         string        `mapstructure:"type"` // postgres | http | file
	Concurrency  int           `mapstructure:"concurrency"`
	Batch        Batch         `mapstructure:"batch"`
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	Retry        Retry         `mapstructure:"retry"`
	Breaker      Breaker       `mapstructure:"breaker"`
	Postgres     Postgres      `mapstructure:"postgres"`
	HTTP         HTTP          `mapstructure:"http"`
	File         File          `mapstructure:"file"`
}

// Batch bounds one sink write.
type Batch struct {
	MaxRecords int           `mapstructure:"max_records"`
	MaxBytes   ByteSize      `mapstructure:"max_bytes"`
	Linger     time.Duration `mapstructure:"linger"`
}

// Retry is the backoff for transient sink errors.
type Retry struct {
	InitialBackoff time.Duration `mapstructure:"initial_backoff"`
	MaxBackoff     time.Duration `mapstructure:"max_backoff"`
}

// Breaker is the sink's circuit breaker.
type Breaker struct {
	FailureThreshold  int           `mapstructure:"failure_threshold"`
	OpenFor           time.Duration `mapstructure:"open_for"`
	HalfOpenSuccesses int           `mapstructure:"half_open_successes"`
	HalfOpenShare     float64       `mapstructure:"half_open_share"`
}

// Postgres configures the PostgreSQL sink.
type Postgres struct {
	DSN        Secret   `mapstructure:"dsn"`
	DSNFile    string   `mapstructure:"dsn_file"`
	Table      string   `mapstructure:"table"`
	Mode       string   `mapstructure:"mode"` // insert | upsert
	KeyColumns []string `mapstructure:"key_columns"`
	Delivery   string   `mapstructure:"delivery"` // at-least-once | exactly-once
	// OffsetsTable holds each partition's next offset with exactly-once
	// delivery; sluice creates it when it is missing.
	OffsetsTable string            `mapstructure:"offsets_table"`
	Columns      map[string]string `mapstructure:"columns"`
}

// HTTP configures the HTTP sink.
type HTTP struct {
	URL     string            `mapstructure:"url"`
	Headers map[string]Secret `mapstructure:"headers"`
	// HeadersFile names, per header, a file holding its value (a token
	// mounted from a Kubernetes Secret); a header is set in one of the two.
	HeadersFile map[string]string `mapstructure:"headers_file"`
	Format      string            `mapstructure:"format"`  // ndjson | json
	Columns     map[string]string `mapstructure:"columns"` // optional; empty sends the whole record
}

// File configures the JSON-lines file sink.
type File struct {
	Path    string            `mapstructure:"path"`
	Columns map[string]string `mapstructure:"columns"` // optional; empty writes the whole record
}

// DLQ names the dead-letter topic.
type DLQ struct {
	Topic string `mapstructure:"topic"`
}

// Commit controls how often offsets are committed.
type Commit struct {
	Interval time.Duration `mapstructure:"interval"`
}

// Observability is the HTTP listener and logging.
type Observability struct {
	Listen    string `mapstructure:"listen"`
	LogLevel  string `mapstructure:"log_level"`  // debug | info | warn | error
	LogFormat string `mapstructure:"log_format"` // json | console
	// Pprof serves Go's profiler (net/http/pprof) under /debug/pprof/ on the
	// same listener. Off by default: a profile costs CPU while it runs, and the
	// listener is usually reachable by more than the operator.
	Pprof bool `mapstructure:"pprof"`
}

// ByteSize is a number of bytes, written in YAML as 64MiB, 8MB, 512KiB or 1024.
type ByteSize int64

// Secret is a string that never prints: String, GoString and MarshalText redact it.
// Reveal returns the value for the one place that needs it.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString redacts the secret for %#v.
func (s Secret) GoString() string { return s.String() }

// MarshalText redacts the secret in YAML and JSON output.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
