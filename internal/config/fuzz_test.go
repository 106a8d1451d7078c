package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoad loads arbitrary YAML with one arbitrary environment variable set.
// Its seeds are kept small: the fuzzer minimizes every input it finds
// interesting, re-running the load once per byte it tries to drop (run it
// with -fuzzminimizetime=5s to spend the time on new inputs).
// Loading must never panic, and must return either a configuration that
// Validate accepts or an error that names where the problem is: a
// *ValidationError whose every problem has a key path under a section of the
// file (or, for the file as a whole, a message), or a plain error naming the
// file.
func FuzzLoad(f *testing.F) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "PG_DSN", "postgres://u:p@localhost/db")
	}
	for _, s := range []struct{ doc, name, value string }{
		{minimalYAML, "SLUICE_FLOW_MAX_RECORD_BYTES", "2MiB"},
		{minimalYAML, "SLUICE_FLOW_MAX_RECORD_BYTES", "1e400MiB"},
		{minimalYAML, "SLUICE_FLOW_MAX_BUFFERED_BYTES", "512KiB"},
		{minimalYAML, "SLUICE_KAFKA_BROKERS", ",,, ,"},
		{minimalYAML, "SLUICE_SINK_POSTGRES_COLUMNS", "id=value.id,x"},
		{minimalYAML + "flow: {max_record_bytes: 99999999999999999999TiB}\n", "", ""},
		{minimalYAML + "flow: {max_record_bytes: -1, max_buffered_bytes: 0.5}\n", "", ""},
		{minimalYAML + "kafka: {session_timeout: 9999999999999h}\n", "", ""},
		{"a: &a [*a, *a]\n", "", ""},
		{"x: &x {a: &y [*x, *x, *x]}\nkafka: *x\n", "", ""},
		{"<<: {kafka: {group: g}}\n", "", ""},
		{strings.Repeat("- ", 500) + "x\n", "", ""},
		{strings.Repeat("{a: ", 300) + "1" + strings.Repeat("}", 300) + "\n", "", ""},
		{"kafka:\n  group: ${" + strings.Repeat("A", 1000) + "}\n", "", ""},
		{"kafka:\n  group: \"${X}\"\n", "X", "${X}"},
		{"\xef\xbb\xbfkafka: {group: g}\n", "", ""},
		{"kafka: {group: \"\xff\xfe\"}\n", "", ""},
		{"kafka: {group: g, group: h}\n", "", ""},
		{"kafka:\n\tgroup: g\n", "", ""},
		{strings.Repeat("k", 2000) + ": 1\n", "", ""},
		{"sink: {postgres: {columns: {" + strings.Repeat("c", 300) + ": value." + strings.Repeat("a.", 100) + "b}}}\n", "", ""},
		{"", "", ""},
		{"~", "", ""},
		{"[1, 2]", "", ""},
		{"!!binary aGVsbG8=", "", ""},
	} {
		f.Add([]byte(s.doc), s.name, s.value)
	}
	sections := map[string]bool{}
	for _, p := range keyPaths(reflect.TypeFor[Config](), "") {
		if !strings.Contains(p, ".") {
			sections[p] = true
		}
	}
	// One file rewritten for every input: a directory per input costs more
	// than the load. Inputs run one at a time in a worker process.
	path := filepath.Join(f.TempDir(), "sluice.yaml")
	f.Fuzz(func(t *testing.T, doc []byte, name, value string) {
		if err := os.WriteFile(path, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{name: value}
		c, err := LoadWith(path, envMap(env))
		if err == nil {
			if c == nil {
				t.Fatal("LoadWith returned neither a config nor an error")
			}
			if verr := c.Validate(); verr != nil {
				t.Fatalf("LoadWith accepted a config that Validate refuses: %v", verr)
			}
			return
		}
		if c != nil {
			t.Fatalf("LoadWith returned a config with the error %v", err)
		}
		var ve *ValidationError
		if !errors.As(err, &ve) {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("a plain error must name the file %s: %v", path, err)
			}
			return
		}
		if len(ve.Problems) == 0 {
			t.Fatal("a *ValidationError without problems")
		}
		for _, p := range ve.Problems {
			if p.Message == "" {
				t.Fatalf("problem at %q has no message", p.Path)
			}
			if p.Path == "" {
				continue // the file as a whole
			}
			top, _, _ := strings.Cut(p.Path, ".")
			top, _, _ = strings.Cut(top, "[")
			if !sections[top] && !strings.Contains(string(doc), top) {
				t.Fatalf("problem %q names a path that is neither a key of Config nor in the file", p)
			}
		}
	})
}
