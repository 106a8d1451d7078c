// Package jsonrec encodes a record as one JSON object, the same way for every
// sink that writes JSON (the file sink's lines, the HTTP sink's bodies): the
// whole record, or the columns an operator mapped with the sources of
// sink.postgres.columns. Compile once at start; Encode is safe for concurrent
// use.
package jsonrec

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// wholeRecord is a record's object in whole-record mode; the field order is
// the order in the object.
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

// bytesValue is how raw bytes appear in an object: null when nil, a string
// when valid UTF-8, else base64.
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
		return nil, flow.Mapping(fmt.Errorf("http sink: encode record: %w", err))
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

// compileColumns parses a column mapping into columns ordered by name; nil for
// an empty mapping. key is the mapping's configuration key, for the errors.
func compileColumns(key string, m map[string]string) ([]column, error) {
	if len(m) == 0 {
		return nil, nil
	}
	cols := make([]column, 0, len(m))
	var errs []error
	for name, src := range m {
		c, err := parseSource(src)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.%s: %w", key, name, err))
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

// Columns is a compiled column mapping; nil means the whole record.
type Columns []column

// Compile parses a column mapping (column -> source) into columns ordered by
// name; key is the mapping's configuration path, for errors. An empty mapping
// compiles to nil: the whole record.
func Compile(key string, m map[string]string) (Columns, error) {
	cols, err := compileColumns(key, m)
	return Columns(cols), err
}

// Encode returns r as one JSON object: the whole record when cols is nil,
// else the mapped columns. A value path into a value that is not JSON is a
// flow.Decode error.
func Encode(cols Columns, r *record.Record) ([]byte, error) {
	if cols == nil {
		return encodeRecord(r)
	}
	return encodeColumns(cols, r)
}
