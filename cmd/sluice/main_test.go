package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sluice(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateAcceptsEveryShippedConfig(t *testing.T) {
	t.Setenv("PG_DSN", "postgres://sluice:hunter2@db:5432/orders")
	t.Setenv("KAFKA_PASSWORD", "hunter3")
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, out, errOut := sluice(t, "validate", "-c", f)
			if code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, errOut)
			}
			if strings.Contains(out, "hunter2") || strings.Contains(out, "hunter3") {
				t.Errorf("validate printed a secret:\n%s", out)
			}
			if !strings.Contains(out, "kafka:") {
				t.Errorf("validate printed no effective configuration:\n%s", out)
			}
		})
	}
}

func TestValidateRejectsWithEveryProblemAndItsPath(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		paths []string
	}{
		{"typo and missing keys", "kafka:\n  brokrs: [a:9092]\n", []string{"kafka.brokrs", "kafka.brokers", "kafka.group", "kafka.topics", "sink.type"}},
		{"bad size and range", "kafka: {brokers: [a:1], group: g, topics: [t], max_poll_records: 0}\nflow: {max_buffered_bytes: 12XB, resume_at: 1.5}\nsink: {type: file}\n",
			[]string{"kafka.max_poll_records", "flow.max_buffered_bytes", "flow.resume_at"}},
		{"upsert without keys", "kafka: {brokers: [a:1], group: g, topics: [t]}\nsink:\n  type: postgres\n  postgres: {dsn: x, table: t, mode: upsert, columns: {id: value.id}}\n",
			[]string{"sink.postgres.key_columns"}},
		{"exactly-once off postgres", "kafka: {brokers: [a:1], group: g, topics: [t]}\nsink:\n  type: file\n  postgres: {delivery: exactly-once}\n",
			[]string{"sink.postgres.delivery"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, errOut := sluice(t, "validate", "-c", f)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
			}
			for _, p := range tc.paths {
				if !strings.Contains(errOut, p) {
					t.Errorf("stderr does not name %s:\n%s", p, errOut)
				}
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	if code, out, _ := sluice(t, "version"); code != 0 || !strings.HasPrefix(out, "sluice ") {
		t.Errorf("version: exit %d, output %q", code, out)
	}
	if code, _, errOut := sluice(t, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := sluice(t, "run"); code != 2 || !strings.Contains(errOut, "config") {
		t.Errorf("run without -c: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := sluice(t, "validate", "-c", "/nonexistent/sluice.yaml"); code != 1 || !strings.Contains(errOut, "/nonexistent/sluice.yaml") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
}
