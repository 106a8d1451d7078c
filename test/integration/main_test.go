//go:build integration

// Package integration holds the tests that run sluice's parts against the
// real Kafka broker and the real PostgreSQL server of the test environment
// (test/env/up.sh; see package testenv). They build only with -tags
// integration; `make test` starts the environment and runs them.
package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ordersColumns maps the tests' orders (testenv's JSON values) to their table.
const ordersColumns = "{id: value.id, amount: value.amount, seq: value.seq, kafka_partition: $partition, kafka_offset: $offset}"

// binaryConfig writes a configuration file for the sluice binary and returns
// its path: it reads topic as group with the tests' short Kafka timeouts
// (kafkaExtra adds lines under kafka:), then body (flow, sink, dlq), and
// commits every 200ms, logs JSON at logLevel and listens on a free port.
func binaryConfig(t *testing.T, brokers []string, group, topic, kafkaExtra, body, logLevel string) string {
	t.Helper()
	if kafkaExtra != "" {
		kafkaExtra += "\n"
	}
	yaml := fmt.Sprintf(`kafka:
  brokers: [%s]
  group: %s
  topics: [%s]
  fetch_max_wait: 200ms
  session_timeout: 6s
  rebalance_timeout: 10s
%s%s
commit: {interval: 200ms}
shutdown_timeout: 15s
observability: {listen: "127.0.0.1:0", log_level: %s, log_format: json}
`, strings.Join(brokers, ", "), group, topic, kafkaExtra, strings.TrimSuffix(body, "\n"), logLevel)
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
