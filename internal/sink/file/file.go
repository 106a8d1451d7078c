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
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/jsonrec"
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
	columns jsonrec.Columns // nil: whole-record mode

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
	cols, err := jsonrec.Compile("sink.file.columns", cfg.Columns)
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
	line, err := jsonrec.Encode(s.columns, r)
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
