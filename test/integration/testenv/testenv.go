// Package testenv gives integration tests the real Kafka broker and the real
// PostgreSQL server that test/env/up.sh starts on 127.0.0.1, and hands out
// uniquely named topics, consumer groups and tables that are removed when the
// test ends.
//
// The environment is found through two variables, which test/env/.state/env.sh
// exports (`make test` sources it):
//
//	SLUICE_TEST_KAFKA_BROKERS  comma-separated seed brokers, e.g. 127.0.0.1:19092
//	SLUICE_TEST_PG_DSN         a pgx connection string for the sluice_test database
//
// When a variable is missing the test is skipped, except under CI (CI set to a
// true value), where it fails: CI must never pass by skipping the tests that
// prove sluice against real servers.
//
// Every function takes the test it serves and may be called from parallel
// tests; failures end the calling test with t.Fatal, so call them from the
// test's own goroutine.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/internal/consumer"
)

// Names of the variables that point the tests at the environment.
const (
	EnvKafkaBrokers = "SLUICE_TEST_KAFKA_BROKERS"
	EnvPostgresDSN  = "SLUICE_TEST_PG_DSN"
)

// cleanupTimeout bounds each removal done in t.Cleanup, when t.Context() is
// already cancelled.
const cleanupTimeout = 30 * time.Second

// Kafka returns the seed brokers of the test Kafka cluster. It skips the test
// when SLUICE_TEST_KAFKA_BROKERS is not set, or fails it under CI.
func Kafka(t testing.TB) []string {
	t.Helper()
	v := lookup(t, EnvKafkaBrokers)
	var brokers []string
	for b := range strings.SplitSeq(v, ",") {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	if len(brokers) == 0 {
		t.Fatalf("%s=%q lists no broker", EnvKafkaBrokers, v)
	}
	return brokers
}

// PostgresDSN returns the connection string of the test PostgreSQL database.
// It skips the test when SLUICE_TEST_PG_DSN is not set, or fails it under CI.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	return lookup(t, EnvPostgresDSN)
}

func lookup(t testing.TB, name string) string {
	t.Helper()
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	msg := name + " is not set: this test needs the real Kafka and PostgreSQL of the test environment. " +
		"Run `make test`, or `make env-up && source test/env/.state/env.sh` and then go test -tags integration"
	if InCI() {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

// InCI reports whether the tests run under CI, that is whether the CI
// variable is set to a true value ("true", "1", ...).
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// UniqueName returns a name that starts with prefix, carries the test's name
// and is unique across tests and runs. It uses only [a-z0-9_], so it is a
// valid topic, group and unquoted SQL identifier, and is at most 63 bytes.
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random name suffix: %v", err)
	}
	suffix := "_" + hex.EncodeToString(b[:])
	base := sanitize(prefix + "_" + t.Name())
	if limit := 63 - len(suffix); len(base) > limit {
		base = base[:limit]
	}
	return base + suffix
}

func sanitize(s string) string {
	var sb strings.Builder
	lastUnderscore := false
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			sb.WriteRune(r)
			lastUnderscore = false
		case !lastUnderscore:
			sb.WriteByte('_')
			lastUnderscore = true
		}
	}
	out := strings.Trim(sb.String(), "_")
	if out == "" || (out[0] >= '0' && out[0] <= '9') {
		out = "t_" + out
	}
	return out
}

// Admin returns a kadm client for the brokers, closed when the test ends.
func Admin(t testing.TB, brokers []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("kafka admin client: %v", err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// NewTopic creates a topic with the given number of partitions (replication
// factor 1) and a unique name, waits until every partition has a leader, and
// deletes the topic when the test ends. It returns the topic's name.
func NewTopic(t testing.TB, brokers []string, partitions int32) string {
	t.Helper()
	adm := Admin(t, brokers)
	topic := UniqueName(t, "sluice")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	DeleteTopicAtEnd(t, adm, topic)

	// CreateTopics returns once the controller accepted the topic; the
	// broker may not have loaded the partitions yet.
	for {
		md, err := adm.Metadata(ctx, topic)
		if err == nil {
			if td, ok := md.Topics[topic]; ok && td.Err == nil && len(td.Partitions) == int(partitions) && allLed(td) {
				return topic
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s: partitions without a leader after 30s (last error: %v)", topic, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DeleteTopicAtEnd deletes topic when the test ends; a topic that is already
// gone is fine, and a topic that cannot be deleted (its broker already
// stopped, in a scenario with a private one) is logged, not failed: it is
// not what the test proves. Register it before starting sluice when sluice creates the
// topic (its DLQ), so that it runs after sluice stopped.
func DeleteTopicAtEnd(t testing.TB, adm *kadm.Client, topic string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		resp, err := adm.DeleteTopic(ctx, topic)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			t.Logf("delete topic %s: %v", topic, err)
		}
	})
}

func allLed(td kadm.TopicDetail) bool {
	for _, p := range td.Partitions {
		if p.Err != nil || p.Leader < 0 {
			return false
		}
	}
	return true
}

// GroupLag is kadm's view of group's lag (its committed offsets against the
// end offsets), waiting out a coordinator that is briefly unavailable; it
// fails the test on any other error.
func GroupLag(t testing.TB, adm *kadm.Client, group string) kadm.DescribedGroupLag {
	t.Helper()
	var gl kadm.DescribedGroupLag
	err := consumer.AwaitCoordinator(t.Context(), func() error {
		lags, err := adm.Lag(t.Context(), group)
		if err != nil {
			return err
		}
		var ok bool
		if gl, ok = lags[group]; !ok {
			return fmt.Errorf("group missing from the answer %v", lags)
		}
		return gl.Error()
	})
	if err != nil {
		t.Fatalf("lag of group %s: %v", group, err)
	}
	return gl
}

// NewGroup returns a unique consumer group name and deletes the group when
// the test ends. Close the group's clients before the test returns (a defer
// does), or the broker refuses to delete a group that still has members.
func NewGroup(t testing.TB, brokers []string) string {
	t.Helper()
	adm := Admin(t, brokers)
	group := UniqueName(t, "sluice")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		err := consumer.AwaitCoordinator(ctx, func() error {
			resp, err := adm.DeleteGroup(ctx, group)
			if err == nil {
				err = resp.Err
			}
			return err
		})
		if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			t.Errorf("delete consumer group %s: %v", group, err)
		}
	})
	return group
}

// Postgres connects to the test database and closes the connection when the
// test ends.
func Postgres(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// NewTable creates a table with a unique name in the public schema of the
// test database and drops it when the test ends. columns is the
// parenthesised part of CREATE TABLE, e.g. "(id bigint primary key, v text)".
// It returns the table's name, which needs no quoting.
func NewTable(t testing.TB, dsn, columns string) string {
	t.Helper()
	conn := Postgres(t, dsn)
	table := UniqueName(t, "sluice")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "CREATE TABLE public."+table+" "+columns); err != nil {
		t.Fatalf("create table %s: %v", table, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS public."+table); err != nil {
			t.Errorf("drop table %s: %v", table, err)
		}
	})
	return table
}
