//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// The Kafka security tests run sluice against a private broker with a
// SASL_SSL listener (testenv.SecureKafka): TLS with a CA and a client
// certificate that the test makes, and SCRAM-SHA-256, SCRAM-SHA-512 and
// PLAIN users. The consumer, the dead-letter producer and `sluice dlq
// replay` all go through that listener, and a wrong password or CA fails
// start-up at once with a message that says what is wrong and never holds
// the password. acl_test.go adds the authorizer.

// securityDeadline bounds each wait of the security tests.
const securityDeadline = 2 * time.Minute

// startupBound is how long a start-up that cannot connect may take: Ensure
// gives up after 30s, and a wrong password or CA must fail much sooner.
const startupBound = 45 * time.Second

// testPassword returns a password that is easy to find in a log.
func testPassword(t *testing.T, prefix string) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// secureKafkaConfig points cfg's Kafka connection at k's SASL_SSL listener
// as user, with the CA, the client certificate and the server name of k.
func secureKafkaConfig(cfg *config.Config, k *testenv.SecureKafka, user, pass, mechanism string) *config.Config {
	cfg.Kafka.Brokers = k.SecureBrokers
	cfg.Kafka.TLS = config.TLS{Enabled: true, CAFile: k.CAFile, CertFile: k.ClientCertFile, KeyFile: k.ClientKeyFile,
		ServerName: testenv.SecureServerName}
	cfg.Kafka.SASL = config.SASL{Mechanism: mechanism, Username: user, Password: config.Secret(pass)}
	return cfg
}

// secureYAML is a configuration file of sluice for k's SASL_SSL listener,
// writing to a file sink; sasl and tls are the YAML of kafka.sasl and
// kafka.tls. It returns the file's path.
func secureYAML(t *testing.T, k *testenv.SecureKafka, group, topic, dlqTopic, tls, sasl string) string {
	t.Helper()
	dir := t.TempDir()
	yaml := fmt.Sprintf(`kafka:
  brokers: [%s]
  group: %s
  topics: [%s]
  tls: %s
  sasl: %s
sink: {type: file, file: {path: %q}}
dlq: {topic: %s}
observability: {listen: "127.0.0.1:0", log_format: json}
`, strings.Join(k.SecureBrokers, ", "), group, topic, tls, sasl, filepath.Join(dir, "out.jsonl"), dlqTopic)
	p := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsYAML is kafka.tls for k with the CA, the client certificate and the
// server name.
func tlsYAML(k *testenv.SecureKafka) string {
	return fmt.Sprintf("{enabled: true, ca_file: %q, cert_file: %q, key_file: %q, server_name: %s}",
		k.CAFile, k.ClientCertFile, k.ClientKeyFile, testenv.SecureServerName)
}

// runCLI runs the sluice binary with args and env added to the test's
// environment, kills it after limit, and returns its exit code (-1 when it
// was killed), its output and how long it ran.
func runCLI(t *testing.T, bin string, env []string, limit time.Duration, args ...string) (int, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	began := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(began)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return -1, string(out), took
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out), took
	case err != nil:
		t.Fatalf("sluice %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return 0, string(out), took
}

// observedLogger logs to the test and keeps every entry for assertions.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// logText renders every observed entry with its fields, one a line.
func logText(logs *observer.ObservedLogs) string {
	var b strings.Builder
	for _, e := range logs.All() {
		fmt.Fprintf(&b, "%s %s %v\n", e.Level, e.Message, e.ContextMap())
	}
	return b.String()
}

// produceWith writes recs, each to the partition it names, through cl and
// waits for every acknowledgement; on return each record holds its offset.
func produceWith(t *testing.T, cl *kgo.Client, topic string, recs []*kgo.Record) {
	t.Helper()
	for _, r := range recs {
		r.Topic = topic
	}
	ctx, cancel := context.WithTimeout(t.Context(), securityDeadline)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce %d records to %s: %v", len(recs), topic, err)
	}
}

// readAllWith reads every record of topic up to its end offsets at the call
// through a new client with opts (a secure listener's options).
func readAllWith(t *testing.T, opts []kgo.Opt, adm *kadm.Client, topic string) []*kgo.Record {
	t.Helper()
	start := map[int32]kgo.Offset{}
	remaining := map[int32]int64{}
	for p, end := range endOffsets(t, adm, topic) {
		start[p] = kgo.NewOffset().AtStart()
		if end > 0 {
			remaining[p] = end
		}
	}
	if len(remaining) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append(slices.Clone(opts), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: start}),
		kgo.FetchMaxWait(200*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), securityDeadline)
	defer cancel()
	var out []*kgo.Record
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d records, partitions %v not read to their end: %v", topic, len(out), remaining, ctx.Err())
		}
		if err := fs.Err0(); err != nil {
			t.Fatalf("read %s: %v", topic, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
	return out
}

// ordersWithPoison returns n orders over partitions 0..parts-1 (record i to
// partition i%parts) of which every poisonEvery-th one is broken JSON; the
// poison ones are also returned by themselves.
func ordersWithPoison(n, parts, poisonEvery int) (all, poison []*kgo.Record) {
	for i := range n {
		r := &kgo.Record{Partition: int32(i % parts), Key: fmt.Append(nil, i), Value: order(i)}
		if i%poisonEvery == poisonEvery-1 {
			r.Value = fmt.Appendf(nil, `{"id":%d,"amount":`, i)
			poison = append(poison, r)
		}
		all = append(all, r)
	}
	return all, poison
}

// checkSinkAndDLQ checks that table holds every record of all but the
// poison ones, once each, and that the DLQ topic, read back through the
// secure listener with opts, holds exactly the poison ones.
func checkSinkAndDLQ(t *testing.T, dsn, table string, opts []kgo.Opt, adm *kadm.Client, dlqTopic string, all, poison []*kgo.Record) {
	t.Helper()
	inTable := tableRecords(t, testenv.Postgres(t, dsn), table)
	want := map[at]bool{}
	for _, r := range all {
		want[at{r.Partition, r.Offset}] = true
	}
	for _, r := range poison {
		delete(want, at{r.Partition, r.Offset})
	}
	for a, n := range inTable {
		if !want[a] {
			t.Errorf("the table holds %s, which is poison or was never produced", a)
		} else if n != 1 {
			t.Errorf("the table holds %s %d times", a, n)
		}
	}
	if len(inTable) != len(want) {
		t.Errorf("the table holds %d distinct records, want %d", len(inTable), len(want))
	}
	dead := readAllWith(t, opts, adm, dlqTopic)
	byOrigin := map[at]int{}
	for _, d := range dead {
		byOrigin[deadLetterOrigin(t, d)]++
		if reason := headers(d)[dlq.HeaderReason]; reason != flow.ReasonDecode {
			t.Errorf("DLQ record from %s: reason %q, want %q", deadLetterOrigin(t, d), reason, flow.ReasonDecode)
		}
	}
	for _, p := range poison {
		if n := byOrigin[at{p.Partition, p.Offset}]; n != 1 {
			t.Errorf("poison record %d@%d is %d times in the DLQ, want once", p.Partition, p.Offset, n)
		}
	}
	if len(dead) != len(poison) {
		t.Errorf("the DLQ holds %d records, want the %d poison ones", len(dead), len(poison))
	}
}

// TestKafkaTLSAndSASL runs sluice through a SASL_SSL listener with each SASL
// mechanism: it consumes into PostgreSQL, dead-letters to a DLQ topic it
// creates itself, and `sluice dlq replay` reads that topic back; the
// records and dead letters are checked through the same listener. Then it
// starts sluice (and the replay) with one thing wrong at a time: each fails
// within seconds, exit code 1, naming the problem and the key to fix,
// without the password.
func TestKafkaTLSAndSASL(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	pass := testPassword(t, "sluice-secret")
	k := testenv.NewSecureKafka(t, testenv.SecureKafkaOptions{Users: map[string]string{"sluice": pass}})
	adm := k.Admin(t)
	producer := k.Client(t, testenv.AdminUser, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	bin := buildSluice(t)

	for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			topic := testenv.UniqueName(t, "sec")
			k.CreateTopic(t, topic, 3)
			dlqTopic := topic + "_dlq" // created by sluice
			group := testenv.UniqueName(t, "sec")
			table := testenv.NewTable(t, dsn, ordersTable)
			all, poison := ordersWithPoison(300, 3, 50)
			produceWith(t, producer, topic, all)

			log, logs := observedLogger(t)
			cfg := secureKafkaConfig(pgConfig(nil, group, topic, dsn, table, config.ModeInsert), k, "sluice", pass, mech)
			cfg.DLQ.Topic = dlqTopic
			r := startDaemon(t, cfg, daemon.Options{Logger: log})
			waitLagZero(t, adm, group, topic)
			if err := r.stop(); err != nil {
				t.Fatalf("sluice stopped with %v", err)
			}
			checkSinkAndDLQ(t, dsn, table, k.ClientOpts(t, testenv.AdminUser), adm, dlqTopic, all, poison)
			committed := committedOffsets(t, adm, group, topic)
			for p, end := range endOffsets(t, adm, topic) {
				if committed[p] != end {
					t.Errorf("partition %d committed at %d, want its end %d", p, committed[p], end)
				}
			}
			if text := logText(logs); strings.Contains(text, pass) {
				t.Errorf("sluice's log holds the SASL password")
			}

			// The replay reads the DLQ through the same listener: the
			// password from the environment (${VAR}) or from a file.
			sasl := fmt.Sprintf(`{mechanism: %s, username: sluice, password: "${SLUICE_TEST_KAFKA_PASSWORD}"}`, mech)
			if mech != "SCRAM-SHA-256" {
				pf := filepath.Join(t.TempDir(), "password")
				if err := os.WriteFile(pf, []byte(pass+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				sasl = fmt.Sprintf(`{mechanism: %s, username: sluice, password_file: %q}`, mech, pf)
			}
			yaml := secureYAML(t, k, group, topic, dlqTopic, tlsYAML(k), sasl)
			code, out, _ := runCLI(t, bin, []string{"SLUICE_TEST_KAFKA_PASSWORD=" + pass}, time.Minute,
				"dlq", "replay", "-c", yaml, "--dry-run", "--group", group+"_replay")
			if wantLine := fmt.Sprintf("%-30s %d  (%s: %d)", "would replay:", len(poison), topic, len(poison)); code != 0 || !strings.Contains(out, wantLine) {
				t.Errorf("sluice dlq replay --dry-run: exit %d, want 0 and %q:\n%s", code, wantLine, out)
			}
			if strings.Contains(out, pass) {
				t.Errorf("sluice dlq replay printed the SASL password:\n%s", out)
			}
		})
	}

	t.Run("start-up fails clearly", func(t *testing.T) {
		topic := testenv.UniqueName(t, "sec")
		k.CreateTopic(t, topic, 1)
		group := testenv.UniqueName(t, "sec")
		wrong := testPassword(t, "wrong-secret")
		sasl := func(mech, pw string) string {
			return fmt.Sprintf(`{mechanism: %s, username: sluice, password: "%s"}`, mech, pw)
		}
		good := sasl("SCRAM-SHA-512", pass)
		cases := []struct {
			name, tls, sasl string
			replay          bool     // also run `sluice dlq replay`
			want            []string // in the output, each
		}{
			{"wrong password", tlsYAML(k), sasl("SCRAM-SHA-512", wrong), true,
				[]string{"SASL_AUTHENTICATION_FAILED", "invalid credentials", "kafka.sasl.password"}},
			{"wrong password, PLAIN", tlsYAML(k), sasl("PLAIN", wrong), false,
				[]string{"SASL_AUTHENTICATION_FAILED", "kafka.sasl.password"}},
			{"unknown user", tlsYAML(k), `{mechanism: SCRAM-SHA-256, username: nobody, password: "` + wrong + `"}`, false,
				[]string{"SASL_AUTHENTICATION_FAILED", "kafka.sasl.username"}},
			{"wrong CA", fmt.Sprintf("{enabled: true, ca_file: %q, cert_file: %q, key_file: %q}", k.UntrustedCAFile, k.ClientCertFile, k.ClientKeyFile),
				good, true, []string{"certificate signed by unknown authority", "kafka.tls.ca_file"}},
			{"system roots", fmt.Sprintf("{enabled: true, cert_file: %q, key_file: %q}", k.ClientCertFile, k.ClientKeyFile),
				good, false, []string{"certificate signed by unknown authority", "kafka.tls.ca_file"}},
			{"wrong server name", fmt.Sprintf("{enabled: true, ca_file: %q, cert_file: %q, key_file: %q, server_name: kafka.wrong.test}", k.CAFile, k.ClientCertFile, k.ClientKeyFile),
				good, false, []string{"not kafka.wrong.test", "kafka.tls.server_name"}},
			{"no client certificate", fmt.Sprintf("{enabled: true, ca_file: %q}", k.CAFile),
				good, false, []string{"tls: ", "kafka.tls.cert_file"}},
			{"no TLS", "{enabled: false}", good, false, []string{"tls endpoint", "kafka.tls.enabled"}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				yaml := secureYAML(t, k, group, topic, topic+"_dlq", c.tls, c.sasl)
				runs := map[string][]string{"sluice run": {"run", "-c", yaml}}
				if c.replay {
					runs["sluice dlq replay"] = []string{"dlq", "replay", "-c", yaml, "--group", group + "_replay"}
				}
				for what, args := range runs {
					code, out, took := runCLI(t, bin, nil, startupBound+15*time.Second, args...)
					if code == -1 || took > startupBound {
						t.Fatalf("%s ran %v, want an exit within %v:\n%s", what, took.Round(time.Millisecond), startupBound, out)
					}
					if code != 1 {
						t.Errorf("%s: exit %d, want 1:\n%s", what, code, out)
					}
					for _, w := range c.want {
						if !strings.Contains(out, w) {
							t.Errorf("%s: the output does not say %q:\n%s", what, w, out)
						}
					}
					if strings.Contains(out, pass) || strings.Contains(out, wrong) {
						t.Errorf("%s: the output holds a password:\n%s", what, out)
					}
					t.Logf("%s failed in %v: %s", what, took.Round(time.Millisecond), lastLines(strings.TrimSpace(out), 1))
				}
			})
		}
	})
}
