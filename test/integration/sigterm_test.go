//go:build integration

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/sluicehq/sluice/test/integration/testenv"

	"github.com/sluicehq/sluice/internal/consumer"
)

// buildSluice builds the sluice binary once per test into a temp dir.
func buildSluice(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sluice")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/sluicehq/sluice/cmd/sluice").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startBinary runs `sluice run -c cfg` and returns the command and its log.
func startBinary(t *testing.T, bin, cfg string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	var log bytes.Buffer
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("sluice log:\n%s", log.String())
		}
	})
	return cmd, &log
}

func TestSIGTERMDrainsCommitsAndExitsZero(t *testing.T) {
	brokers, dsn := testenv.Kafka(t), testenv.PostgresDSN(t)
	topic := testenv.NewTopic(t, brokers, 6)
	group := testenv.NewGroup(t, brokers)
	table := testenv.NewTable(t, dsn, "(id bigint PRIMARY KEY, amount numeric(12,2), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)")
	const n = 50000
	produceOrders(t, brokers, topic, n, order)
	bin := buildSluice(t)
	cfgPath := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := fmt.Sprintf(`kafka:
  brokers: [%s]
  group: %s
  topics: [%s]
flow:
  rate_limit: {records_per_second: 10000, burst: 500}
sink:
  type: postgres
  batch: {max_records: 500, linger: 50ms}
  postgres:
    dsn: ${TEST_PG_DSN}
    table: public.%s
    mode: upsert
    key_columns: [id]
    columns: {id: value.id, amount: value.amount, seq: value.seq, kafka_partition: $partition, kafka_offset: $offset}
commit: {interval: 200ms}
shutdown_timeout: 15s
observability: {listen: "127.0.0.1:0", log_level: info, log_format: json}
`, brokers[0], group, topic, table)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_PG_DSN", dsn)

	cmd, _ := startBinary(t, bin, cfgPath)
	conn := testenv.Postgres(t, dsn)
	waitRows(t, conn, table, 10000)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("sluice exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sluice did not exit within shutdown_timeout (15s) + 5s of SIGTERM")
	}
	written := count(t, conn, "SELECT count(*) FROM "+table)
	if written >= n {
		t.Fatalf("sluice had already written everything (%d rows) before SIGTERM; the test proves nothing", written)
	}

	// The commit covers what was written: a restart continues from there.
	adm := testenv.Admin(t, brokers)
	var offs kadm.OffsetResponses
	err := consumer.AwaitCoordinator(t.Context(), func() (err error) {
		offs, err = adm.FetchOffsets(t.Context(), group)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	offs.Each(func(o kadm.OffsetResponse) { committed += o.At })
	if committed == 0 || committed > written {
		t.Errorf("committed %d records in total with %d rows written: the final commit is missing or ahead of the sink", committed, written)
	}

	cmd2, _ := startBinary(t, bin, cfgPath)
	waitLagZero(t, adm, group, topic)
	if err := cmd2.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("restarted sluice exited with %v after SIGTERM", err)
	}
	if got := count(t, conn, "SELECT count(*) FROM "+table); got != n {
		t.Errorf("%d rows after the restart, produced %d", got, n)
	}
	t.Logf("SIGTERM at %d of %d rows; %d committed; the restart finished the rest", written, n, committed)
}
