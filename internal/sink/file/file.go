// Package file is the JSON-lines file sink: every record becomes one line of
// JSON appended to one file. It serves the embedded demo and people debugging a
// column mapping, who want to see what a record maps to without a database.
//
// Concurrency contract: Map may be called from any number of worker goroutines
// at once; Write may be called concurrently by several lanes and serialises them
// on one mutex, so every batch lands as one contiguous run of whole lines. Close
// may be called once the lanes have stopped writing; it is idempotent.
//
// The sink assumes it is the only writer of its file: when a write fails half
// way (a full disk), it truncates the file back to the last whole line so that a
// retry does not leave a torn line behind.
package file

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// ErrClosed is returned, as a *flow.FatalError, by Write after Close.
var ErrClosed = errors.New("file sink: closed")

// maxRetainedBuffer bounds the write buffer the sink keeps between batches; a
// larger buffer, grown for one unusually large batch, is released after it.
const maxRetainedBuffer = 16 << 20

// Option changes a default of New.
type Option func(*Sink)

// WithSync sets whether Write calls fsync after every batch (the default is
// true). Without it a batch is in the page cache, not on disk, when Write
// returns: fine for a demo, not for at-least-once delivery across a power loss.
func WithSync(on bool) Option { return func(s *Sink) { s.sync = on } }

// Sink writes rows produced by its own Map as JSON lines to a file. It
// implements flow.Mapper and flow.Sink. Create it with New.
type Sink struct {
	path    string
	sync    bool
	columns []column // nil: whole-record mode

	mu     sync.Mutex // guards the fields below
	f      *os.File
	size   int64 // file size after the last whole line we wrote
	buf    []byte
	closed bool
}

// New opens cfg.Path for appending, creating it with mode 0o644 when absent.
// The directory must exist. When cfg.Columns is set, every source is checked
// here, so a mapping mistake fails at start rather than on every record.
func New(cfg config.File, opts ...Option) (*Sink, error) {
	if cfg.Path == "" {
		return nil, errors.New("sink.file.path: must be set")
	}
	cols, err := compileColumns(cfg.Columns)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		dir := filepath.Dir(cfg.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("sink.file.path: directory %s does not exist: %w", dir, err)
		}
		return nil, fmt.Errorf("sink.file.path: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("sink.file.path: %w", err)
	}
	if st.IsDir() {
		_ = f.Close()
		return nil, fmt.Errorf("sink.file.path: %s is a directory", cfg.Path)
	}
	s := &Sink{path: cfg.Path, sync: true, columns: cols, f: f, size: st.Size()}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Path returns the path of the file the sink appends to.
func (s *Sink) Path() string { return s.path }

// Map encodes r as one JSON line (without the newline) and returns it as a Row
// of one element, the line as a []byte.
//
// Without columns the line is the whole record: {"topic", "partition",
// "offset", "timestamp" (RFC 3339 with nanoseconds, UTC), "key", "value",
// "headers"}. A key or header value is a string, or base64 when it is not valid
// UTF-8, or null when absent. The value is embedded as JSON when it is valid
// JSON, else written like a key.
//
// With columns the line holds one key per column, in column-name order. A
// value.<path> column needs the value to be JSON: when it is not, Map returns
// a decode *flow.PoisonError; a path that matches nothing yields null.
func (s *Sink) Map(ctx context.Context, r *record.Record) (record.Row, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var line []byte
	var err error
	if s.columns == nil {
		line, err = encodeRecord(r)
	} else {
		line, err = encodeColumns(s.columns, r)
	}
	if err != nil {
		return nil, err
	}
	return record.Row{line}, nil
}

// Write appends the lines of b to the file in one write call and, unless
// WithSync(false) was given, fsyncs the file before returning. It returns nil
// only when every line is written (and synced). Failures of the file system,
// a full disk among them, come back as a *flow.TransientError: the operator
// can fix them and a retry loses nothing. A row that Map did not produce is a
// wiring bug and comes back as a *flow.FatalError.
func (s *Sink) Write(ctx context.Context, b *record.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return &flow.FatalError{Err: ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("file sink: %w", err)
	}

	buf := s.buf[:0]
	for i, row := range b.Rows {
		line, ok := lineOf(row)
		if !ok {
			return &flow.FatalError{Err: fmt.Errorf("file sink: row %d is not a line from the file sink's Map", i)}
		}
		buf = append(buf, line...)
		buf = append(buf, '\n')
	}
	if cap(buf) <= maxRetainedBuffer {
		s.buf = buf
	} else {
		s.buf = nil
	}

	n, err := s.f.Write(buf)
	if err != nil {
		if n > 0 {
			// Drop the torn tail so that the retry starts on a line boundary.
			// If this fails too the file keeps a partial line; the retry's
			// error tells the operator the disk needs attention either way.
			_ = s.f.Truncate(s.size)
		}
		return &flow.TransientError{Err: fmt.Errorf("file sink: %w", err)}
	}
	s.size += int64(n)
	if s.sync {
		if err := s.f.Sync(); err != nil {
			return &flow.TransientError{Err: fmt.Errorf("file sink: %w", err)}
		}
	}
	return nil
}

// Close syncs and closes the file. Writes after Close fail with ErrClosed.
// Close is idempotent.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.buf = nil
	var errs []error
	if s.sync {
		if err := s.f.Sync(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.f.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("file sink: close: %w", err)
	}
	return nil
}

func lineOf(row record.Row) ([]byte, bool) {
	if len(row) != 1 {
		return nil, false
	}
	line, ok := row[0].([]byte)
	return line, ok && bytes.IndexByte(line, '\n') < 0
}

// wholeRecord is the line of a record in whole-record mode; the field order is
// the order on the line.
type wholeRecord struct {
	Topic     string         `json:"topic"`
	Partition int32          `json:"partition"`
	Offset    int64          `json:"offset"`
	Timestamp string         `json:"timestamp"`
	Key       any            `json:"key"`
	Value     any            `json:"value"`
	Headers   map[string]any `json:"headers"`
}

func encodeRecord(r *record.Record) ([]byte, error) {
	headers := make(map[string]any, len(r.Headers))
	for _, h := range r.Headers {
		headers[h.Key] = bytesValue(h.Value) // the last header of a name wins, as in Record.Header
	}
	return marshal(wholeRecord{
		Topic:     r.Topic,
		Partition: r.Partition,
		Offset:    r.Offset,
		Timestamp: timestamp(r.Timestamp),
		Key:       bytesValue(r.Key),
		Value:     jsonValue(r.Value),
		Headers:   headers,
	})
}

// bytesValue is how raw bytes appear on a line: null when nil, a string when
// valid UTF-8, else base64.
func bytesValue(b []byte) any {
	switch {
	case b == nil:
		return nil
	case utf8.Valid(b):
		return string(b)
	default:
		return base64.StdEncoding.EncodeToString(b)
	}
}

// jsonValue embeds b as JSON when it is valid JSON, else as bytesValue does.
func jsonValue(b []byte) any {
	if b != nil && json.Valid(b) {
		return json.RawMessage(b) // marshal compacts it, so it stays on one line
	}
	return bytesValue(b)
}

func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// marshal encodes v as compact JSON without HTML escaping and without the
// encoder's trailing newline.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, flow.Mapping(fmt.Errorf("file sink: encode line: %w", err))
	}
	return bytes.TrimSuffix(b.Bytes(), []byte{'\n'}), nil
}

// sourceKind is what a column takes from the record.
type sourceKind int

const (
	srcKey sourceKind = iota
	srcTopic
	srcPartition
	srcOffset
	srcTimestamp
	srcHeader
	srcValue
	srcValuePath
)

type column struct {
	name string
	kind sourceKind
	arg  string // header name or gjson path
}

// compileColumns parses sink.file.columns into columns ordered by name; nil for
// an empty mapping.
func compileColumns(m map[string]string) ([]column, error) {
	if len(m) == 0 {
		return nil, nil
	}
	cols := make([]column, 0, len(m))
	var errs []error
	for name, src := range m {
		c, err := parseSource(src)
		if err != nil {
			errs = append(errs, fmt.Errorf("sink.file.columns.%s: %w", name, err))
			continue
		}
		c.name = name
		cols = append(cols, c)
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(cols, func(a, b column) int { return strings.Compare(a.name, b.name) })
	return cols, nil
}

func parseSource(src string) (column, error) {
	switch src {
	case "$key":
		return column{kind: srcKey}, nil
	case "$topic":
		return column{kind: srcTopic}, nil
	case "$partition":
		return column{kind: srcPartition}, nil
	case "$offset":
		return column{kind: srcOffset}, nil
	case "$timestamp":
		return column{kind: srcTimestamp}, nil
	case "$value":
		return column{kind: srcValue}, nil
	}
	if name, ok := strings.CutPrefix(src, "$headers."); ok && name != "" {
		return column{kind: srcHeader, arg: name}, nil
	}
	if path, ok := strings.CutPrefix(src, "value."); ok && path != "" {
		return column{kind: srcValuePath, arg: path}, nil
	}
	return column{}, fmt.Errorf("unknown source %q (want $key, $topic, $partition, $offset, $timestamp, $headers.<name>, $value or value.<json.path>)", src)
}

func encodeColumns(cols []column, r *record.Record) ([]byte, error) {
	var validated bool
	var b bytes.Buffer
	b.WriteByte('{')
	for i, c := range cols {
		if i > 0 {
			b.WriteByte(',')
		}
		name, err := marshal(c.name)
		if err != nil {
			return nil, err
		}
		b.Write(name)
		b.WriteByte(':')

		var v any
		switch c.kind {
		case srcKey:
			v = bytesValue(r.Key)
		case srcTopic:
			v = r.Topic
		case srcPartition:
			v = r.Partition
		case srcOffset:
			v = r.Offset
		case srcTimestamp:
			v = timestamp(r.Timestamp)
		case srcHeader:
			if h, ok := r.Header(c.arg); ok {
				v = bytesValue(h)
			}
		case srcValue:
			v = jsonValue(r.Value)
		case srcValuePath:
			if !validated {
				if !json.Valid(r.Value) {
					return nil, flow.Decode(fmt.Errorf("value of %s offset %d is not valid JSON", r.Part(), r.Offset))
				}
				validated = true
			}
			if res := gjson.GetBytes(r.Value, c.arg); res.Exists() {
				v = json.RawMessage(res.Raw)
			}
		}
		enc, err := marshal(v)
		if err != nil {
			return nil, err
		}
		b.Write(enc)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
