//go:build integration

package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/dlq"
	"github.com/sluicehq/sluice/test/integration/testenv"
)

// secretsTable is ordersTable with a CHECK that a negative amount breaks:
// PostgreSQL (or sluice's screen of it) rejects such a row, so it reaches the
// DLQ with the database's message.
const secretsTable = "(id bigint NOT NULL, amount numeric(12,2) CHECK (amount >= 0), seq bigint, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)"

// secretsConfig is the configuration of the secrets test: at debug level, a
// breaker quick to open and to probe, and kafkaExtra and pgKey (the
// connection's line under sink.postgres) from the caller.
func secretsConfig(t *testing.T, brokers []string, group, topic, table, kafkaExtra, pgKey string) string {
	t.Helper()
	return binaryConfig(t, brokers, group, topic, kafkaExtra, fmt.Sprintf(`sink:
  type: postgres
  concurrency: 2
  batch: {max_records: 200, linger: 20ms}
  write_timeout: 2s
  retry: {initial_backoff: 20ms, max_backoff: 200ms}
  breaker: {failure_threshold: 2, open_for: 500ms, half_open_successes: 1}
  postgres:
    %s
    table: public.%s
    mode: insert
    columns: %s
`, pgKey, table, ordersColumns), "debug")
}

// observabilityAddr waits, at most 30 s, for the line in which a running
// sluice says where it serves, and returns that address.
func observabilityAddr(t *testing.T, p *sluiceProc) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for line := range strings.SplitSeq(p.out.String(), "\n") {
			var l struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "serving observability endpoints" && l.Addr != "" {
				return l.Addr
			}
		}
		select {
		case <-p.done:
			t.Fatalf("sluice exited (%v) before it served", p.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("sluice did not say where it serves within 30s")
		}
	}
}

// httpGet returns the status code and body of GET url, bounded by 10 s.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// statusOf is the part of /status the secrets test waits on.
type statusOf struct {
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready"`
	Written  int64  `json:"records_written"`
	Dead     int64  `json:"records_dead_lettered"`
	Breaker  struct {
		State     string `json:"state"`
		Opens     int64  `json:"opens"`
		LastError string `json:"last_error"`
	} `json:"breaker"`
}

// TestSecretsAppearNowhere runs the sluice binary at log level debug through
// a full cycle with known secrets (a PostgreSQL password over TLS and SCRAM, a
// wrong one, a SASL password, an HTTP token, each a random 24-character
// token) and looks for them everywhere sluice writes: its log and its error
// output, /status, /readyz and /metrics (also while PostgreSQL is down and the
// breaker open), the headers, keys and values of the dead letters, and the
// output of `sluice validate` for valid and invalid configurations. The
// cycle: a start with the wrong password (from ${VAR}), a start with a SASL
// mechanism the plaintext broker refuses, a run (password from dsn_file) that
// dead-letters poison and rows the database rejects, loses PostgreSQL for a
// few seconds, recovers, writes every good record and stops on SIGTERM.
func TestSecretsAppearNowhere(t *testing.T) {
	brokers := testenv.Kafka(t)
	pg := testenv.NewPrivatePostgresWith(t, testenv.PrivatePostgresConfig{SSL: true})
	pgPassword, wrongPassword := testenv.NewSecret(t), testenv.NewSecret(t)
	saslPassword, httpToken, urlPassword := testenv.NewSecret(t), testenv.NewSecret(t), testenv.NewSecret(t)
	secrets := map[string]string{
		"the PostgreSQL password":             pgPassword,
		"the wrong PostgreSQL password":       wrongPassword,
		"the SASL password":                   saslPassword,
		"the HTTP token":                      httpToken,
		"the HTTP URL's password":             urlPassword,
		"the PostgreSQL superuser's password": pg.Password,
		"the PostgreSQL password (base64)":    base64.StdEncoding.EncodeToString([]byte(pgPassword)),
	}
	// outputs collects everything sluice wrote that an operator or a
	// consumer of the DLQ can see; each is checked for every secret at the end.
	outputs := map[string]string{}
	record := func(what, text string) {
		if _, dup := outputs[what]; dup {
			t.Fatalf("output %q recorded twice", what)
		}
		outputs[what] = text
	}
	t.Cleanup(func() {
		for what, text := range outputs {
			for name, secret := range secrets {
				if strings.Contains(text, secret) {
					t.Errorf("%s holds %s", what, name)
				}
			}
		}
	})

	admin := testenv.Postgres(t, pg.DSN)
	if _, err := admin.Exec(t.Context(), "CREATE ROLE sluice LOGIN PASSWORD '"+pgPassword+"'"); err != nil {
		t.Fatalf("create role: %v", err)
	}
	table := testenv.UniqueName(t, "sluice")
	if _, err := admin.Exec(t.Context(), "CREATE TABLE public."+table+" "+secretsTable+"; GRANT SELECT, INSERT ON public."+table+" TO sluice"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	topic := testenv.NewTopic(t, brokers, 3)
	group := testenv.NewGroup(t, brokers)
	dlqTopic := group + ".dlq"
	testenv.DeleteTopicAtEnd(t, testenv.Admin(t, brokers), dlqTopic)
	bin := buildSluice(t)

	const (
		n     = 3000 // records before the outage
		m     = 600  // records produced while PostgreSQL is down
		every = 300  // of each 300 records, one is broken JSON and one has a negative amount
	)
	value := func(i int) []byte {
		switch i % every {
		case 7:
			return fmt.Appendf(nil, `{"id":%d,"amount":`, i) // decode
		case 13:
			return fmt.Appendf(nil, `{"id":%d,"amount":-1.50,"seq":%d}`, i, i) // rejected by the CHECK
		}
		return order(i)
	}
	poison := 2 * (n / every)
	produceOrders(t, brokers, topic, n, value)

	base := fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=sluice sslmode=verify-full sslrootcert=%s", pg.Port, pg.CA.CertFile)
	dsnFile := writeSecretFile(t, "dsn", base+" password="+pgPassword)
	saslFile := writeSecretFile(t, "sasl-password", saslPassword)
	env := []string{
		"SLUICE_TEST_SECRET_PG_PASSWORD=" + wrongPassword,
		"SLUICE_TEST_SECRET_SASL_PASSWORD=" + saslPassword,
		"SLUICE_TEST_SECRET_HTTP_TOKEN=" + httpToken,
		"SLUICE_TEST_SECRET_URL_PASSWORD=" + urlPassword,
	}
	wrongCfg := secretsConfig(t, brokers, group, topic, table, "", `dsn: "`+base+` password=${SLUICE_TEST_SECRET_PG_PASSWORD}"`)
	saslCfg := secretsConfig(t, brokers, group, topic, table,
		"  sasl: {mechanism: SCRAM-SHA-512, username: sluice, password: '${SLUICE_TEST_SECRET_SASL_PASSWORD}'}", "dsn_file: "+dsnFile)
	saslFileCfg := secretsConfig(t, brokers, group, topic, table,
		"  sasl: {mechanism: PLAIN, username: sluice, password_file: "+saslFile+"}", "dsn_file: "+dsnFile)
	mainCfg := secretsConfig(t, brokers, group, topic, table, "", "dsn_file: "+dsnFile)

	// 1. The wrong password, from ${VAR}: PostgreSQL refuses it at start.
	code, out := runSluice(t, bin, env, time.Minute, "run", "-c", wrongCfg)
	record("the output of a start with the wrong password", out)
	if code != 1 || !strings.Contains(out, "password authentication failed") || !strings.Contains(out, `"level":"error"`) {
		t.Errorf("a start with the wrong password: exit %d, want 1 and an error line saying the password authentication failed:\n%s", code, out)
	}

	// 2. A SASL password, from ${VAR}: the broker's plaintext listener
	// refuses SASL, so the start fails on Kafka after PostgreSQL connected.
	code, out = runSluice(t, bin, env, time.Minute, "run", "-c", saslCfg)
	record("the output of a start with SASL", out)
	if code != 1 || !strings.Contains(out, "postgres sink ready") || !strings.Contains(out, "SASL") {
		t.Errorf("a start with SASL against a plaintext listener: exit %d, want 1 after the sink connected, and a SASL error:\n%s", code, out)
	}

	// 3. The run, with the password from dsn_file.
	run := startSluice(t, bin, env, "run", "-c", mainCfg)
	addr := "http://" + observabilityAddr(t, run)
	status := func(what string) statusOf {
		t.Helper()
		code, body := httpGet(t, addr+"/status")
		record("/status "+what, body)
		var st statusOf
		if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
			t.Fatalf("/status %s: %d %s", what, code, body)
		}
		return st
	}
	// waitStatus polls /status (not recorded) until cond, at most limit.
	waitStatus := func(what string, limit time.Duration, cond func(statusOf) bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			_, body := httpGet(t, addr+"/status")
			var st statusOf
			if json.Unmarshal([]byte(body), &st) == nil && cond(st) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %v: %s; /status: %s", limit, what, body)
			}
			select {
			case <-run.done:
				t.Fatalf("sluice exited (%v) while waiting until %s", run.err, what)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	scrape := func(what string) string {
		t.Helper()
		code, body := httpGet(t, addr+"/metrics")
		record("/metrics "+what, body)
		if code != http.StatusOK || !strings.Contains(body, "sluice_") {
			t.Fatalf("/metrics %s: %d, %d bytes", what, code, len(body))
		}
		return body
	}
	readyz := func(what string) (int, string) {
		t.Helper()
		code, body := httpGet(t, addr+"/readyz")
		record("/readyz "+what, body)
		return code, body
	}

	waitStatus(fmt.Sprintf("%d records written and %d dead-lettered", n-poison, poison), 2*time.Minute,
		func(st statusOf) bool { return st.Written == int64(n-poison) && st.Dead == int64(poison) && st.Ready })
	status("before the outage")
	scrape("before the outage")
	if code, body := readyz("before the outage"); code != http.StatusOK {
		t.Errorf("/readyz before the outage: %d %s", code, body)
	}
	code, healthz := httpGet(t, addr+"/healthz")
	record("/healthz", healthz)
	if code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, healthz)
	}

	// 4. PostgreSQL goes away for a few seconds while records arrive: the
	// writes fail, the breaker opens, probes fail to connect, /readyz says
	// why.
	const downFor = 3 * time.Second
	pg.Stop()
	upAt := time.Now().Add(downFor)
	produceOrders(t, brokers, topic, m, func(i int) []byte { return order(n + i) })
	waitStatus("the breaker opened and a probe failed", time.Minute, func(st statusOf) bool {
		return st.Breaker.State != "closed" && st.Breaker.Opens >= 2 && st.Breaker.LastError != ""
	})
	during := status("while PostgreSQL is down")
	code, notReady := readyz("while PostgreSQL is down")
	scrape("while PostgreSQL is down")
	time.Sleep(time.Until(upAt)) // more probes fail meanwhile
	pg.Start()
	if code != http.StatusServiceUnavailable || !strings.Contains(notReady, "circuit breaker") {
		t.Errorf("/readyz while PostgreSQL is down: %d %q, want 503 and why", code, notReady)
	}
	if during.NotReady == "" || !strings.Contains(during.Breaker.LastError, "PostgreSQL") && !strings.Contains(during.Breaker.LastError, table) {
		t.Errorf("/status while PostgreSQL is down says neither why it is not ready nor the sink's error: %+v", during)
	}
	waitStatus("every good record written after the outage", 2*time.Minute, func(st statusOf) bool {
		return st.Written == int64(n-poison+m) && st.Breaker.State == "closed" && st.Ready
	})
	status("after the outage")
	metrics := scrape("after the outage")
	run.stop(t)
	log := run.out.String()
	record("the log of the run", log)

	conn := testenv.Postgres(t, pg.DSN)
	if got := count(t, conn, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table); got != int64(n-poison+m) {
		t.Errorf("%d records in the table, want %d", got, n-poison+m)
	}
	// The log is not trivially clean: it holds the run's story, errors
	// included.
	for _, want := range []string{"postgres sink ready", "circuit breaker open", "failed to connect to", "circuit breaker closed", `"level":"error"`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log of the run lacks %q", want)
		}
	}
	if !strings.Contains(metrics, `sluice_sink_write_errors_total{class="transient"}`) {
		t.Errorf("/metrics has no transient write errors after the outage")
	}

	// 5. The dead letters: every header, key and value.
	letters := readTopic(t, brokers, dlqTopic)
	if len(letters) != poison {
		t.Errorf("%d dead letters, want %d", len(letters), poison)
	}
	reasons := map[string]int{}
	for i, r := range letters {
		var b strings.Builder
		fmt.Fprintf(&b, "key %q value %q\n", r.Key, r.Value)
		for _, h := range r.Headers {
			fmt.Fprintf(&b, "%s: %s\n", h.Key, h.Value)
		}
		record(fmt.Sprintf("dead letter %d (%d@%d)", i, r.Partition, r.Offset), b.String())
		hs := headers(r)
		reasons[hs[dlq.HeaderReason]]++
		if hs[dlq.HeaderMessage] == "" {
			t.Errorf("dead letter %d@%d has no %s", r.Partition, r.Offset, dlq.HeaderMessage)
		}
	}
	if reasons["decode"] != poison/2 || reasons["sink_rejected"] != poison/2 {
		t.Errorf("dead letters by reason %v, want %d decode and %d sink_rejected", reasons, poison/2, poison/2)
	}

	// 6. sluice validate: valid configurations print the effective one with
	// the secrets redacted; invalid ones list their problems.
	httpCfg := filepath.Join(t.TempDir(), "http.yaml")
	if err := os.WriteFile(httpCfg, fmt.Appendf(nil, `kafka: {brokers: [%s], group: %s, topics: [%s]}
sink:
  type: http
  http:
    url: "https://sluice:${SLUICE_TEST_SECRET_URL_PASSWORD}@ingest.example.com/hooks/${SLUICE_TEST_SECRET_HTTP_TOKEN}?key=${SLUICE_TEST_SECRET_HTTP_TOKEN}"
    headers: {Authorization: "Bearer ${SLUICE_TEST_SECRET_HTTP_TOKEN}"}
`, brokers[0], group, topic), 0o600); err != nil {
		t.Fatal(err)
	}
	invalidCfg := secretsConfig(t, brokers, group, topic, table,
		"  sasl: {mechanism: SCRAM-SHA-1, username: sluice, password: '${SLUICE_TEST_SECRET_SASL_PASSWORD}'}\n  max_poll_records: -1", "dsn_file: "+dsnFile)
	for _, tc := range []struct {
		name, cfg string
		code      int
		want      []string
	}{
		{"dsn_file", mainCfg, 0, []string{"dsn: '[redacted]'", "dsn_file: " + dsnFile}},
		{"dsn with ${VAR}", wrongCfg, 0, []string{"dsn: '[redacted]'"}},
		{"SASL password with ${VAR}", saslCfg, 0, []string{"password: '[redacted]'", "username: sluice"}},
		{"SASL password_file", saslFileCfg, 0, []string{"password: '[redacted]'", "password_file: " + saslFile}},
		{"HTTP URL and header", httpCfg, 0, []string{"Authorization: '[redacted]'", "ingest.example.com"}},
		{"invalid", invalidCfg, 1, []string{"kafka.sasl.mechanism", "kafka.max_poll_records"}},
	} {
		code, out := runSluice(t, bin, env, 30*time.Second, "validate", "-c", tc.cfg)
		record("the output of validate ("+tc.name+")", out)
		if code != tc.code {
			t.Errorf("validate (%s): exit %d, want %d:\n%s", tc.name, code, tc.code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("validate (%s): the output lacks %q:\n%s", tc.name, w, out)
			}
		}
	}
	t.Logf("while PostgreSQL was down: %d breaker opens, last error %q, /readyz %q; %d lines of log; dead letters by reason %v; %d outputs checked for %d secrets",
		during.Breaker.Opens, during.Breaker.LastError, notReady, strings.Count(log, "\n"), reasons, len(outputs), len(secrets))
}
