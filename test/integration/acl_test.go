//go:build integration

package integration

import (
	"context"
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
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// The ACL tests run sluice against a private broker with KRaft's
// StandardAuthorizer and allow.everyone.if.no.acl.found=false, with exactly
// the ACLs that deploy/kafka-acls documents for operators: the test takes
// them from deploy/kafka-acls/sluice-acls.sh --dry-run, which prints the
// kafka-acls.sh commands of deploy/kafka-acls/sluice-acls.txt, and creates
// each through kadm as the admin super user. So the documented set and the
// tested one cannot drift apart.

// aclScript is the operators' script, relative to this package.
var aclScript = filepath.Join("..", "..", "deploy", "kafka-acls", "sluice-acls.sh")

// documentedACL is one ACL a kafka-acls.sh command of the script grants.
type documentedACL struct {
	principal, host, operation, resource, name string
}

func (a documentedACL) String() string {
	return fmt.Sprintf("%s %s %s %s from %s", a.principal, a.operation, a.resource, a.name, a.host)
}

func (a documentedACL) builder(t *testing.T) *kadm.ACLBuilder {
	t.Helper()
	op, err := kmsg.ParseACLOperation(a.operation)
	if err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	b := kadm.NewACLs().Allow(a.principal).AllowHosts(a.host).Operations(op).ResourcePatternType(kadm.ACLPatternLiteral)
	switch a.resource {
	case "topic":
		b.Topics(a.name)
	case "group":
		b.Groups(a.name)
	default:
		t.Fatalf("%s: resource type %q", a, a.resource)
	}
	return b
}

// documentedACLs runs the script with --dry-run and vars (TOPICS, GROUP,
// DLQ_TOPIC, ...) and returns the ACLs of the commands it prints. Any flag
// the test does not understand fails it, so the script cannot grant more
// than the test applies.
func documentedACLs(t *testing.T, vars map[string]string) []documentedACL {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", aclScript, "--dry-run")
	cmd.Env = os.Environ()
	for _, v := range []string{"TOPICS", "GROUP", "DLQ_TOPIC", "REPLAY_GROUP", "SLUICE_PRINCIPAL", "REPLAY_PRINCIPAL", "ROLES"} {
		cmd.Env = append(cmd.Env, v+"="+vars[v]) // unset ones empty: the script's defaults
	}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s --dry-run: %v\n%s", aclScript, err, ee.Stderr)
		}
		t.Fatalf("%s --dry-run: %v", aclScript, err)
	}
	var acls []documentedACL
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		f := strings.Fields(strings.ReplaceAll(line, `\`, "")) // printf %q escapes only the *
		if len(f) == 0 || f[0] != "kafka-acls.sh" {
			t.Fatalf("%s --dry-run printed %q, want a kafka-acls.sh command", aclScript, line)
		}
		var a documentedACL
		add := false
		for i := 1; i < len(f); i++ {
			flag := f[i]
			if flag == "--add" {
				add = true
				continue
			}
			if i+1 >= len(f) {
				t.Fatalf("%q: %s without a value", line, flag)
			}
			i++
			switch v := f[i]; flag {
			case "--allow-principal":
				a.principal = v
			case "--allow-host":
				a.host = v
			case "--operation":
				a.operation = v
			case "--resource-pattern-type":
				if v != "literal" {
					t.Fatalf("%q: pattern type %s; the test applies literal ACLs only", line, v)
				}
			case "--topic", "--group":
				a.resource, a.name = strings.TrimPrefix(flag, "--"), v
			default:
				t.Fatalf("%q: flag %s, which this test does not apply", line, flag)
			}
		}
		if !add || a.principal == "" || a.host == "" || a.operation == "" || a.name == "" {
			t.Fatalf("%q: not a whole --add command", line)
		}
		acls = append(acls, a)
	}
	return acls
}

// grant creates acls as the admin and waits until the broker's authorizer
// holds them.
func grant(t *testing.T, adm *kadm.Client, acls ...documentedACL) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), securityDeadline)
	defer cancel()
	for _, a := range acls {
		res, err := adm.CreateACLs(ctx, a.builder(t))
		if err == nil {
			for _, r := range res {
				err = errors.Join(err, r.Err)
			}
		}
		if err != nil {
			t.Fatalf("create ACL %s: %v", a, err)
		}
	}
	waitACLs(t, adm, true, acls...)
}

// revoke deletes acls as the admin and waits until they are gone.
func revoke(t *testing.T, adm *kadm.Client, acls ...documentedACL) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), securityDeadline)
	defer cancel()
	for _, a := range acls {
		res, err := adm.DeleteACLs(ctx, a.builder(t))
		if err == nil {
			for _, r := range res {
				err = errors.Join(err, r.Err)
			}
		}
		if err != nil {
			t.Fatalf("delete ACL %s: %v", a, err)
		}
	}
	waitACLs(t, adm, false, acls...)
}

func waitACLs(t *testing.T, adm *kadm.Client, present bool, acls ...documentedACL) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), securityDeadline)
	defer cancel()
	for _, a := range acls {
		for {
			res, err := adm.DescribeACLs(ctx, a.builder(t))
			if err == nil && len(res) == 1 && res[0].Err == nil && (len(res[0].Described) > 0) == present {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("ACL %s: present %v after %v (last: %v, %v)", a, !present, securityDeadline, res, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// readDenied reads topic's partition 0 from its start as user and returns
// the first error; it fails the test if a record arrives or nothing does
// within 30s.
func readDenied(t *testing.T, k *testenv.SecureKafka, user, topic string) error {
	t.Helper()
	cl := k.Client(t, user, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchMaxWait(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if n := fs.NumRecords(); n > 0 {
			t.Fatalf("%s read %d records of %s", user, n, topic)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: no error and no record from %s within 30s", user, topic)
		}
		if err := fs.Err0(); err != nil {
			return err
		}
	}
}

// TestKafkaACLs runs sluice and `sluice dlq replay` on a broker that
// authorizes every request, with the ACLs of deploy/kafka-acls: sluice
// consumes and dead-letters, the replay principal replays, and nobody else
// (sluice itself included) reads the DLQ. Without WRITE on the DLQ, sluice
// says so at start-up, and when WRITE is revoked while it runs, it logs
// what to grant and commits nothing past the record it cannot dead-letter,
// until the ACL is back.
func TestKafkaACLs(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	pass, replayPass, dashPass := testPassword(t, "sluice-secret"), testPassword(t, "replay-secret"), testPassword(t, "dash-secret")
	k := testenv.NewSecureKafka(t, testenv.SecureKafkaOptions{Authorizer: true,
		Users: map[string]string{"sluice": pass, "sluice-replay": replayPass, "dashboard": dashPass}})
	adm := k.Admin(t)
	producer := k.Client(t, testenv.AdminUser, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	bin := buildSluice(t)

	// One pipeline: its topics, and the documented ACLs for them.
	type pipeline struct {
		topic, group, dlqTopic, table string
		acls                          []documentedACL
	}
	newPipeline := func(t *testing.T) pipeline {
		p := pipeline{topic: testenv.UniqueName(t, "acl"), group: testenv.UniqueName(t, "acl"), table: testenv.NewTable(t, dsn, ordersTable)}
		p.dlqTopic = p.group + ".dlq"
		k.CreateTopic(t, p.topic, 2)
		k.CreateTopic(t, p.dlqTopic, 1) // the documented set has no CREATE
		p.acls = documentedACLs(t, map[string]string{"TOPICS": p.topic, "GROUP": p.group,
			"SLUICE_PRINCIPAL": "User:sluice", "REPLAY_PRINCIPAL": "User:sluice-replay"})
		if len(p.acls) != 6 {
			t.Fatalf("the script grants %d ACLs for one topic, want the 6 lines of sluice-acls.txt: %v", len(p.acls), p.acls)
		}
		grant(t, adm, p.acls...)
		return p
	}
	// the ACL of p's set that lets sluice write to the DLQ
	dlqWrite := func(t *testing.T, p pipeline) documentedACL {
		t.Helper()
		for _, a := range p.acls {
			if a.principal == "User:sluice" && a.resource == "topic" && a.name == p.dlqTopic && a.operation == "Write" {
				return a
			}
		}
		t.Fatalf("the documented ACLs have no WRITE of User:sluice on %s: %v", p.dlqTopic, p.acls)
		return documentedACL{}
	}
	sluiceConfig := func(p pipeline) *config.Config {
		cfg := secureKafkaConfig(pgConfig(nil, p.group, p.topic, dsn, p.table, config.ModeInsert), k, "sluice", pass, "SCRAM-SHA-512")
		cfg.DLQ.Topic = p.dlqTopic
		return cfg
	}

	p := newPipeline(t)
	all, poison := ordersWithPoison(200, 2, 50)

	if !t.Run("sluice consumes and dead-letters", func(t *testing.T) {
		produceWith(t, producer, p.topic, all)
		log, logs := observedLogger(t)
		r := startDaemon(t, sluiceConfig(p), daemon.Options{Logger: log})
		waitLagZero(t, adm, p.group, p.topic)
		if err := r.stop(); err != nil {
			t.Fatalf("sluice stopped with %v", err)
		}
		// The dead letters are read back as the replay principal.
		checkSinkAndDLQ(t, dsn, p.table, k.ClientOpts(t, "sluice-replay"), adm, p.dlqTopic, all, poison)
		if text := logText(logs); strings.Contains(text, "AUTHORIZATION_FAILED") || strings.Contains(text, pass) {
			t.Errorf("sluice's log holds an authorization failure or its password:\n%s", text)
		}
	}) {
		t.FailNow()
	}

	t.Run("only the replay principal reads the DLQ", func(t *testing.T) {
		// Any other consumer: the dashboard may read the source topic,
		// not the dead letters.
		grant(t, adm, documentedACL{principal: "User:dashboard", host: "*", operation: "Read", resource: "topic", name: p.topic})
		cl := k.Client(t, "dashboard", kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{p.topic: {0: kgo.NewOffset().AtStart()}}))
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if fs := cl.PollFetches(ctx); fs.Err0() != nil || fs.NumRecords() == 0 {
			t.Fatalf("the dashboard cannot read %s, which it may: %v", p.topic, fs.Err0())
		}
		for _, user := range []string{"dashboard", "sluice"} {
			if err := readDenied(t, k, user, p.dlqTopic); !errors.Is(err, kerr.TopicAuthorizationFailed) {
				t.Errorf("%s reading the DLQ: %v, want %v", user, err, kerr.TopicAuthorizationFailed)
			}
		}
		// sluice's own principal cannot replay either, and is told why (it
		// may describe the DLQ, so the first refusal is of the replay's group).
		sasl := `{mechanism: SCRAM-SHA-512, username: sluice, password: "${SLUICE_TEST_KAFKA_PASSWORD}"}`
		yaml := secureYAML(t, k, p.group, p.topic, p.dlqTopic, tlsYAML(k), sasl)
		code, out, _ := runCLI(t, bin, []string{"SLUICE_TEST_KAFKA_PASSWORD=" + pass}, time.Minute, "dlq", "replay", "-c", yaml)
		for _, want := range []string{"_AUTHORIZATION_FAILED", `SASL user "sluice"`, "needs the replay ACLs", "READ on the dead-letter topic"} {
			if code != 1 || !strings.Contains(out, want) {
				t.Errorf("sluice dlq replay as sluice: exit %d, want 1 and %q in:\n%s", code, want, out)
			}
		}
		if strings.Contains(out, pass) {
			t.Errorf("sluice dlq replay printed the password:\n%s", out)
		}
	})

	t.Run("the replay principal replays", func(t *testing.T) {
		before := endOffsets(t, adm, p.topic)
		sasl := `{mechanism: SCRAM-SHA-256, username: sluice-replay, password: "${SLUICE_TEST_KAFKA_PASSWORD}"}`
		yaml := secureYAML(t, k, p.group, p.topic, p.dlqTopic, tlsYAML(k), sasl)
		code, out, _ := runCLI(t, bin, []string{"SLUICE_TEST_KAFKA_PASSWORD=" + replayPass}, time.Minute, "dlq", "replay", "-c", yaml)
		if want := fmt.Sprintf("%-30s %d  (%s: %d)", "replayed:", len(poison), p.topic, len(poison)); code != 0 || !strings.Contains(out, want) {
			t.Fatalf("sluice dlq replay as sluice-replay: exit %d, want 0 and %q:\n%s", code, want, out)
		}
		var back []string
		for _, r := range readAllWith(t, k.ClientOpts(t, testenv.AdminUser), adm, p.topic) {
			if r.Offset < before[r.Partition] {
				continue
			}
			if c := headers(r)[dlq.HeaderReplayCount]; c != "1" {
				t.Errorf("replayed record %d@%d: %s %q, want 1", r.Partition, r.Offset, dlq.HeaderReplayCount, c)
			}
			back = append(back, string(r.Value))
		}
		var want []string
		for _, r := range poison {
			want = append(want, string(r.Value))
		}
		slices.Sort(back)
		slices.Sort(want)
		if !slices.Equal(back, want) {
			t.Errorf("records sent back to %s: %q, want the dead-lettered ones %q", p.topic, back, want)
		}
		committed := committedOffsets(t, adm, p.group+".dlq-replay", p.dlqTopic)
		if end := endOffsets(t, adm, p.dlqTopic)[0]; committed[0] != end {
			t.Errorf("the replay group committed %d on the DLQ, want its end %d", committed[0], end)
		}
	})

	t.Run("without WRITE on the DLQ", func(t *testing.T) {
		p := newPipeline(t)
		write := dlqWrite(t, p)
		describe := write
		describe.operation = "Describe"
		sasl := `{mechanism: SCRAM-SHA-512, username: sluice, password: "${SLUICE_TEST_KAFKA_PASSWORD}"}`
		env := []string{"SLUICE_TEST_KAFKA_PASSWORD=" + pass}
		startup := func(t *testing.T, dlqTopic string, want ...string) {
			t.Helper()
			yaml := secureYAML(t, k, p.group, p.topic, dlqTopic, tlsYAML(k), sasl)
			code, out, took := runCLI(t, bin, env, startupBound+15*time.Second, "run", "-c", yaml)
			if code != 1 || took > startupBound {
				t.Errorf("sluice run: exit %d after %v, want 1 within %v:\n%s", code, took.Round(time.Millisecond), startupBound, out)
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("sluice run does not say %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, pass) {
				t.Errorf("sluice run printed the password:\n%s", out)
			}
			t.Logf("sluice run failed in %v: %s", took.Round(time.Millisecond), lastLines(strings.TrimSpace(out), 1))
		}

		t.Run("no ACL on the DLQ: start-up fails", func(t *testing.T) {
			revoke(t, adm, write)
			startup(t, p.dlqTopic, "not authorized to describe dead-letter topic "+p.dlqTopic, "TOPIC_AUTHORIZATION_FAILED",
				"grant it WRITE (which includes DESCRIBE) on topic "+p.dlqTopic)
		})
		t.Run("DESCRIBE only: start-up fails", func(t *testing.T) {
			revoke(t, adm, write)
			grant(t, adm, describe)
			startup(t, p.dlqTopic, "not authorized to write to dead-letter topic "+p.dlqTopic, "allows it only DESCRIBE",
				"grant it WRITE on topic "+p.dlqTopic)
			revoke(t, adm, describe)
		})
		t.Run("no CREATE for a missing DLQ: start-up fails", func(t *testing.T) {
			missing := write
			missing.name = p.dlqTopic + "_missing"
			grant(t, adm, missing) // as the documented set would for this name, which no topic has
			startup(t, missing.name, "topic "+missing.name+" does not exist and sluice could not create it",
				"TOPIC_AUTHORIZATION_FAILED", "create it, or grant sluice CREATE on it")
		})

		t.Run("revoked while running: the commit waits at the record", func(t *testing.T) {
			revoke(t, adm, describe)
			grant(t, adm, write) // the documented set again
			log, logs := observedLogger(t)
			r := startDaemon(t, sluiceConfig(p), daemon.Options{Logger: log})

			// A first poison record goes to the DLQ: the producer works.
			var first []*kgo.Record
			for i := range 40 {
				v := order(i)
				if i == 10 {
					v = []byte(`{"id":10,"amount":`)
				}
				first = append(first, &kgo.Record{Partition: int32(i % 2), Key: fmt.Append(nil, i), Value: v})
			}
			produceWith(t, producer, p.topic, first)
			waitLagZero(t, adm, p.group, p.topic)
			if n := endOffsets(t, adm, p.dlqTopic)[0]; n != 1 {
				t.Fatalf("the DLQ holds %d records, want the first poison one", n)
			}

			revoke(t, adm, write)
			// Partition 0: 20 good, the poison record, 100 good; partition
			// 1: 120 good.
			var second []*kgo.Record
			add := func(part int32, v []byte) *kgo.Record {
				r := &kgo.Record{Partition: part, Key: fmt.Append(nil, 1000+len(second)), Value: v}
				second = append(second, r)
				return r
			}
			for i := range 120 {
				if i == 20 {
					add(0, []byte(`{"id":"not JSON`))
				}
				add(0, order(1000+i))
				add(1, order(2000+i))
			}
			poisonRec := second[40]
			produceWith(t, producer, p.topic, second)
			if string(poisonRec.Value) != `{"id":"not JSON` || poisonRec.Partition != 0 {
				t.Fatalf("record 40 of the second batch is %d@%d %q, want the poison one", poisonRec.Partition, poisonRec.Offset, poisonRec.Value)
			}
			ends := endOffsets(t, adm, p.topic)
			conn := testenv.Postgres(t, dsn)

			// sluice writes every good record, behind the poison one too,
			// commits partition 1 to its end and partition 0 up to the
			// poison record, and says what to grant.
			const sayWhy = "not authorized to write to dead-letter topic"
			behind := func() int64 {
				return count(t, conn, fmt.Sprintf("SELECT count(DISTINCT kafka_offset) FROM %s WHERE kafka_partition = 0 AND kafka_offset > %d", p.table, poisonRec.Offset))
			}
			deadline := time.Now().Add(securityDeadline)
			var c map[int32]int64
			for settled := 0; settled < 10; {
				if time.Now().After(deadline) {
					t.Fatalf("after %v without WRITE on the DLQ: commits %v (ends %v, poison at 0@%d), %d of 100 records behind it written, logged %q: %v",
						securityDeadline, c, ends, poisonRec.Offset, behind(), sayWhy, logs.FilterMessageSnippet("dead-letter").Len())
				}
				c = committedOffsets(t, adm, p.group, p.topic)
				if c[0] > poisonRec.Offset {
					t.Fatalf("partition 0 committed at %d, past the poison record at %d that is not in the DLQ", c[0], poisonRec.Offset)
				}
				if settled > 0 || c[0] == poisonRec.Offset && c[1] == ends[1] && behind() == 100 && strings.Contains(logText(logs), sayWhy) {
					settled++
				}
				time.Sleep(200 * time.Millisecond)
			}
			if n := endOffsets(t, adm, p.dlqTopic)[0]; n != 1 {
				t.Fatalf("the DLQ holds %d records while sluice may not write to it", n)
			}
			var why string
			for _, e := range logs.FilterMessageSnippet("dead-letter").All() {
				if s := fmt.Sprint(e.ContextMap()["error"]); strings.Contains(s, sayWhy) {
					why = s
					break
				}
			}
			for _, w := range []string{p.dlqTopic, "TOPIC_AUTHORIZATION_FAILED", "grant it WRITE on topic " + p.dlqTopic, "commit waits"} {
				if !strings.Contains(why, w) {
					t.Errorf("the logged error does not say %q: %s", w, why)
				}
			}
			t.Logf("logged while WRITE was revoked: %s", why)
			// Readiness says the same, for the operator's probe.
			if err := r.d.Ready(); err == nil || !strings.Contains(err.Error(), sayWhy) || !strings.Contains(err.Error(), "grant it WRITE on topic "+p.dlqTopic) {
				t.Errorf("Ready() = %v while the DLQ refuses sluice, want it to say %q and what to grant", err, sayWhy)
			}

			// The ACL is back: the record is dead-lettered and the commit
			// moves on, without a restart.
			grant(t, adm, write)
			waitLagZero(t, adm, p.group, p.topic)
			if err := r.d.Ready(); err != nil {
				t.Errorf("Ready() = %v once the DLQ took the record, want nil", err)
			}
			if err := r.stop(); err != nil {
				t.Fatalf("sluice stopped with %v", err)
			}
			checkSinkAndDLQ(t, dsn, p.table, k.ClientOpts(t, "sluice-replay"), adm, p.dlqTopic,
				append(first, second...), []*kgo.Record{first[10], poisonRec})
			if text := logText(logs); strings.Contains(text, pass) {
				t.Errorf("sluice's log holds its password")
			}
		})
	})
}
