package obs

import (
	"bytes"
	"cmp"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"
)

var iso8601 = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|[+-]\d{4})$`)

func TestLoggerLevels(t *testing.T) {
	tests := []struct {
		level string
		want  []string // the messages that get through, of debug, info, warn, error
	}{
		{"debug", []string{"d", "i", "w", "e"}},
		{"info", []string{"i", "w", "e"}},
		{"", []string{"i", "w", "e"}},
		{"WARN", []string{"w", "e"}},
		{"error", []string{"e"}},
	}
	for _, tt := range tests {
		t.Run(cmp.Or(tt.level, "empty"), func(t *testing.T) {
			var buf bytes.Buffer
			log, err := newLogger(&buf, tt.level, "json")
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d")
			log.Info("i")
			log.Warn("w")
			log.Error("e")
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("line %q is not JSON: %v", line, err)
				}
				got = append(got, m["msg"].(string))
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("logged %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLoggerFormats(t *testing.T) {
	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := newLogger(&buf, "info", "json")
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", zap.String("topic", "orders"))
		var m map[string]any
		if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
			t.Fatalf("%q is not JSON: %v", buf.String(), err)
		}
		if m["level"] != "info" || m["msg"] != "hello" || m["topic"] != "orders" {
			t.Errorf("line = %v", m)
		}
		if ts, _ := m["ts"].(string); !iso8601.MatchString(ts) {
			t.Errorf("ts = %q, want ISO 8601", m["ts"])
		}
	})
	t.Run("console", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := newLogger(&buf, "info", "Console")
		if err != nil {
			t.Fatal(err)
		}
		log.Info("hello", zap.String("topic", "orders"))
		fields := strings.Split(strings.TrimSpace(buf.String()), "\t")
		if len(fields) < 4 || !iso8601.MatchString(fields[0]) || fields[1] != "INFO" ||
			!strings.Contains(buf.String(), "hello") || !strings.Contains(buf.String(), `{"topic": "orders"}`) {
			t.Errorf("console line = %q", buf.String())
		}
	})
}

func TestLoggerErrors(t *testing.T) {
	tests := []struct{ level, format, want string }{
		{"verbose", "json", "observability.log_level"},
		{"info", "xml", "observability.log_format"},
	}
	for _, tt := range tests {
		if _, err := NewLogger(tt.level, tt.format); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewLogger(%q, %q) error = %v, want one naming %s", tt.level, tt.format, err, tt.want)
		}
	}
	if log, err := NewLogger("info", "json"); err != nil || log == nil {
		t.Errorf("NewLogger(info, json) = %v, %v", log, err)
	}
}
