package file_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/file"
)

var (
	_ flow.Sink   = (*file.Sink)(nil)
	_ flow.Mapper = (*file.Sink)(nil)
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newSink(t *testing.T, cfg config.File, opts ...file.Option) *file.Sink {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "out.jsonl")
	}
	s, err := file.New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// write maps rs and writes them as one batch.
func write(t *testing.T, s *file.Sink, rs ...*record.Record) {
	t.Helper()
	b := &record.Batch{}
	for _, r := range rs {
		row, err := s.Map(t.Context(), r)
		if err != nil {
			t.Fatalf("Map(%s@%d): %v", r.Part(), r.Offset, err)
		}
		b.Rows = append(b.Rows, row)
		b.Records = append(b.Records, r)
	}
	if err := s.Write(t.Context(), b); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

// readLines returns every line of path, each parsed as a JSON object; it fails
// the test on a line that is not one.
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("file does not end with a newline: %q", data)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("line %d is not a JSON object: %v: %q", len(out)+1, err, sc.Text())
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var ts = time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.FixedZone("CET", 3600))

func TestWholeRecordRoundTrip(t *testing.T) {
	binary := []byte{0xff, 0x00, 0xfe}
	tests := []struct {
		name string
		rec  record.Record
		want string // the parsed line, re-encoded by encoding/json (keys sorted)
	}{
		{
			name: "json value",
			rec: record.Record{Topic: "orders", Partition: 3, Offset: 42, Timestamp: ts,
				Key: []byte("k-1"), Value: []byte(`{"id": 7, "tags": ["a", "b"], "note": "<&>"}`),
				Headers: []record.Header{{Key: "trace", Value: []byte("abc")}, {Key: "empty", Value: nil}}},
			want: `{"headers":{"empty":null,"trace":"abc"},"key":"k-1","offset":42,"partition":3,` +
				`"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"orders","value":{"id":7,"note":"\u003c\u0026\u003e","tags":["a","b"]}}`,
		},
		{
			name: "pretty json value stays on one line",
			rec:  record.Record{Topic: "t", Timestamp: ts, Value: []byte("{\n  \"a\": [1,\n 2]\n}\n")},
			want: `{"headers":{},"key":null,"offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":{"a":[1,2]}}`,
		},
		{
			name: "scalar json value",
			rec:  record.Record{Topic: "t", Timestamp: ts, Value: []byte(`12.5`)},
			want: `{"headers":{},"key":null,"offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":12.5}`,
		},
		{
			name: "text value",
			rec:  record.Record{Topic: "t", Timestamp: ts, Key: []byte(""), Value: []byte("not json\nat all")},
			want: `{"headers":{},"key":"","offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":"not json\nat all"}`,
		},
		{
			name: "binary key, value and header",
			rec: record.Record{Topic: "t", Timestamp: ts, Key: binary, Value: binary,
				Headers: []record.Header{{Key: "h", Value: binary}}},
			want: fmt.Sprintf(`{"headers":{"h":%[1]q},"key":%[1]q,"offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":%[1]q}`,
				base64.StdEncoding.EncodeToString(binary)),
		},
		{
			name: "tombstone",
			rec:  record.Record{Topic: "t", Timestamp: ts, Key: []byte("k")},
			want: `{"headers":{},"key":"k","offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":null}`,
		},
		{
			name: "last header of a name wins",
			rec: record.Record{Topic: "t", Timestamp: ts,
				Headers: []record.Header{{Key: "h", Value: []byte("1")}, {Key: "h", Value: []byte("2")}}},
			want: `{"headers":{"h":"2"},"key":null,"offset":0,"partition":0,"timestamp":"2026-03-01T11:30:45.123456789Z","topic":"t","value":null}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSink(t, config.File{})
			write(t, s, &tt.rec)
			lines := readLines(t, s.Path())
			if len(lines) != 1 {
				t.Fatalf("got %d lines, want 1", len(lines))
			}
			if got := toJSON(t, lines[0]); got != tt.want {
				t.Errorf("line:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestWholeRecordKeyOrder(t *testing.T) {
	s := newSink(t, config.File{})
	row, err := s.Map(t.Context(), &record.Record{Topic: "t", Timestamp: ts, Key: []byte("k"), Value: []byte(`{"b":1,"a":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"topic":"t","partition":0,"offset":0,"timestamp":"2026-03-01T11:30:45.123456789Z","key":"k","value":{"b":1,"a":2},"headers":{}}`
	if got := string(row[0].([]byte)); got != want {
		t.Errorf("line:\n got %s\nwant %s", got, want)
	}
}

func TestColumns(t *testing.T) {
	cols := map[string]string{
		"id":         "value.id",
		"city":       "value.customer.address.city",
		"first_item": "value.items.0.sku",
		"missing":    "value.nope.deeper",
		"whole":      "$value",
		"key":        "$key",
		"topic":      "$topic",
		"part":       "$partition",
		"off":        "$offset",
		"ts":         "$timestamp",
		"trace":      "$headers.trace",
		"absent":     "$headers.absent",
	}
	s := newSink(t, config.File{Columns: cols})
	rec := &record.Record{Topic: "orders", Partition: 1, Offset: 9, Timestamp: ts, Key: []byte("o-9"),
		Value:   []byte(`{"id":9,"customer":{"address":{"city":"Zürich"}},"items":[{"sku":"A-1"}]}`),
		Headers: []record.Header{{Key: "trace", Value: []byte("t-1")}}}
	write(t, s, rec)

	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"absent":null,"city":"Zürich","first_item":"A-1","id":9,"key":"o-9","missing":null,"off":9,"part":1,` +
		`"topic":"orders","trace":"t-1","ts":"2026-03-01T11:30:45.123456789Z",` +
		`"whole":{"id":9,"customer":{"address":{"city":"Zürich"}},"items":[{"sku":"A-1"}]}}` + "\n"
	if string(data) != want {
		t.Errorf("file:\n got %s\nwant %s", data, want)
	}
}

func TestColumnsErrors(t *testing.T) {
	t.Run("value path on a value that is not JSON is a decode poison", func(t *testing.T) {
		s := newSink(t, config.File{Columns: map[string]string{"id": "value.id", "k": "$key"}})
		_, err := s.Map(t.Context(), &record.Record{Topic: "t", Value: []byte("{oops")})
		var pe *flow.PoisonError
		if !errors.As(err, &pe) || pe.Reason != flow.ReasonDecode {
			t.Fatalf("Map error = %v, want a decode PoisonError", err)
		}
	})
	t.Run("value that is not JSON is fine without value paths", func(t *testing.T) {
		s := newSink(t, config.File{Columns: map[string]string{"v": "$value", "k": "$key"}})
		row, err := s.Map(t.Context(), &record.Record{Topic: "t", Key: []byte("k"), Value: []byte("{oops")})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(row[0].([]byte)), `{"k":"k","v":"{oops"}`; got != want {
			t.Errorf("line = %s, want %s", got, want)
		}
	})
	t.Run("unknown sources fail New with the key path", func(t *testing.T) {
		_, err := file.New(config.File{Path: filepath.Join(t.TempDir(), "x"),
			Columns: map[string]string{"a": "$nope", "b": "value.", "c": "$headers.", "d": "$key"}})
		if err == nil {
			t.Fatal("New succeeded, want an error")
		}
		for _, want := range []string{"sink.file.columns.a", "sink.file.columns.b", "sink.file.columns.c"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
		if strings.Contains(err.Error(), "columns.d") {
			t.Errorf("error %q names a valid column", err)
		}
	})
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		want string
	}{
		{"empty path", "", "sink.file.path: must be set"},
		{"missing directory", filepath.Join(dir, "no", "such", "out.jsonl"), "directory " + filepath.Join(dir, "no", "such") + " does not exist"},
		{"directory", dir, "sink.file.path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := file.New(config.File{Path: tt.path})
			if err == nil {
				_ = s.Close()
				t.Fatal("New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestAppendsAndCreatesWithMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	for i := range 2 {
		s, err := file.New(config.File{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		write(t, s, &record.Record{Topic: "t", Offset: int64(i), Value: []byte(`1`)})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	lines := readLines(t, path)
	if len(lines) != 2 || lines[0]["offset"] != json.Number("0") || lines[1]["offset"] != json.Number("1") {
		t.Fatalf("lines = %v, want offsets 0 then 1", lines)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The umask may clear bits of 0o644; it cannot add any.
	if perm := st.Mode().Perm(); perm&^0o644 != 0 {
		t.Errorf("mode = %v, want at most 0644", perm)
	}
}

func TestConcurrentWritesKeepWholeLines(t *testing.T) {
	for _, doSync := range []bool{true, false} {
		t.Run(fmt.Sprintf("sync=%v", doSync), func(t *testing.T) {
			s := newSink(t, config.File{}, file.WithSync(doSync))
			const writers, batches, perBatch = 4, 20, 25
			big := strings.Repeat("x", 300)
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for bn := range batches {
						b := &record.Batch{}
						for i := range perBatch {
							r := &record.Record{Topic: "t", Partition: int32(w), Offset: int64(bn*perBatch + i),
								Value: []byte(fmt.Sprintf(`{"w":%d,"pad":%q}`, w, big))}
							row, err := s.Map(t.Context(), r)
							if err != nil {
								t.Error(err)
								return
							}
							b.Rows = append(b.Rows, row)
							b.Records = append(b.Records, r)
						}
						if err := s.Write(t.Context(), b); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()

			lines := readLines(t, s.Path())
			if got, want := len(lines), writers*batches*perBatch; got != want {
				t.Fatalf("got %d lines, want %d", got, want)
			}
			// Every writer's lines are whole and in its own order: batches are
			// not interleaved with each other.
			next := make(map[string]int64)
			for i, l := range lines {
				p := l["partition"].(json.Number).String()
				off, _ := l["offset"].(json.Number).Int64()
				if off != next[p] {
					t.Fatalf("line %d: partition %s offset %d, want %d", i+1, p, off, next[p])
				}
				next[p]++
			}
		})
	}
}

func TestWriteFailureIsTransient(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full:", err)
	}
	s, err := file.New(config.File{Path: "/dev/full"})
	if err != nil {
		t.Skip("cannot open /dev/full:", err)
	}
	t.Cleanup(func() { _ = s.Close() })

	row, err := s.Map(t.Context(), &record.Record{Topic: "t", Value: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Write(t.Context(), &record.Batch{Rows: []record.Row{row}, Records: []*record.Record{{}}})
	var te *flow.TransientError
	if !errors.As(err, &te) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Write error = %v, want a TransientError wrapping ENOSPC", err)
	}
	if flow.Classify(err) != flow.ClassTransient {
		t.Errorf("Classify = %v, want transient", flow.Classify(err))
	}
}

func TestWriteRejectsForeignRows(t *testing.T) {
	s := newSink(t, config.File{})
	for _, row := range []record.Row{{"a string"}, {[]byte("a"), []byte("b")}, {[]byte("two\nlines")}} {
		err := s.Write(t.Context(), &record.Batch{Rows: []record.Row{row}, Records: []*record.Record{{}}})
		if flow.Classify(err) != flow.ClassFatal {
			t.Errorf("Write(%q) = %v, want a fatal error", row, err)
		}
	}
	if lines := readLines(t, s.Path()); len(lines) != 0 {
		t.Errorf("file has %d lines, want none", len(lines))
	}
}

func TestWriteAfterClose(t *testing.T) {
	s, err := file.New(config.File{Path: filepath.Join(t.TempDir(), "out.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	row, err := s.Map(t.Context(), &record.Record{Topic: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	err = s.Write(t.Context(), &record.Batch{Rows: []record.Row{row}, Records: []*record.Record{{}}})
	if !errors.Is(err, file.ErrClosed) || flow.Classify(err) != flow.ClassFatal {
		t.Errorf("Write after Close = %v, want fatal ErrClosed", err)
	}
}

func TestEmptyBatch(t *testing.T) {
	s := newSink(t, config.File{})
	if err := s.Write(t.Context(), &record.Batch{}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(s.Path()); err != nil || st.Size() != 0 {
		t.Fatalf("stat = %v, %v; want an empty file", st, err)
	}
}

func BenchmarkMapWrite(b *testing.B) {
	s, err := file.New(config.File{Path: filepath.Join(b.TempDir(), "out.jsonl")}, file.WithSync(false))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	r := &record.Record{Topic: "orders", Partition: 1, Offset: 1, Timestamp: ts, Key: []byte("k"),
		Value: []byte(`{"id":1,"amount":12.5,"customer":{"name":"x"}}`)}
	batch := &record.Batch{Rows: make([]record.Row, 100), Records: make([]*record.Record, 100)}
	b.ReportAllocs()
	for b.Loop() {
		for i := range batch.Rows {
			row, err := s.Map(b.Context(), r)
			if err != nil {
				b.Fatal(err)
			}
			batch.Rows[i], batch.Records[i] = row, r
		}
		if err := s.Write(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
}
