package config

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// minimalYAML is the smallest valid configuration.
const minimalYAML = `
kafka:
  brokers: [localhost:9092]
  group: orders-sink
  topics: [orders]
sink:
  type: postgres
  postgres:
    dsn: postgres://u:p@localhost/db
    table: public.orders
    columns:
      id: value.id
`

// envMap is an environment for LoadWith.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// writeFile writes content to a file in a fresh temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// overlay returns minimalYAML with the overlay document merged in: mappings
// merge key by key, anything else replaces, and a null removes the key.
func overlay(t *testing.T, doc string) string {
	t.Helper()
	var base, over map[string]any
	if err := yaml.Unmarshal([]byte(minimalYAML), &base); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(doc), &over); err != nil {
		t.Fatalf("overlay: %v", err)
	}
	merge(base, over)
	out, err := yaml.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		sub, isMap := v.(map[string]any)
		cur, curIsMap := dst[k].(map[string]any)
		switch {
		case v == nil:
			delete(dst, k)
		case isMap && curIsMap:
			merge(cur, sub)
		default:
			dst[k] = v
		}
	}
}

// problems returns the problems of err, failing the test unless err is a
// *ValidationError.
func problems(t *testing.T, err error) []Problem {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error is %T (%v), want *ValidationError", err, err)
	}
	return ve.Problems
}

// wantProblem fails unless err reports a problem at exactly path whose message
// contains each of texts, and the error text holds the "path: " line.
func wantProblem(t *testing.T, err error, path string, texts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want a problem at %s", path)
	}
	for _, p := range problems(t, err) {
		if p.Path != path {
			continue
		}
		for _, s := range texts {
			if !strings.Contains(p.Message, s) {
				t.Errorf("problem at %s is %q, want it to contain %q", path, p.Message, s)
			}
		}
		if !strings.Contains(err.Error(), path+": ") {
			t.Errorf("error text lacks %q:\n%v", path+": ", err)
		}
		return
	}
	t.Fatalf("no problem at %s in:\n%v", path, err)
}

func withEnv(base map[string]string, extra map[string]string) map[string]string {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, extra)
	return out
}

func writeFileAt(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}
