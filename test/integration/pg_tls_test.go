//go:build integration

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/test/integration/testenv"
)

// lockedOutput collects a process's stdout and stderr; it may be read while
// the process still writes.
type lockedOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *lockedOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *lockedOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// sluiceProc is one command of the built sluice binary, its output captured.
type sluiceProc struct {
	cmd  *exec.Cmd
	out  *lockedOutput
	done chan struct{} // closed when the process exited; err is then set
	err  error
}

// startSluice runs bin with args in an environment of the test's own: the
// process's, without the PG* variables that pgx would read (PGPASSWORD,
// PGPASSFILE, PGSSLMODE, ...), plus env. The process is killed when the test
// ends, and its output logged when the test failed.
func startSluice(t *testing.T, bin string, env []string, args ...string) *sluiceProc {
	t.Helper()
	p := &sluiceProc{cmd: exec.Command(bin, args...), out: &lockedOutput{}, done: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start sluice %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		defer close(p.done)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("sluice %s output:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

// wait waits at most limit for the process to exit and returns its exit code.
func (p *sluiceProc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("sluice %s did not exit within %v", strings.Join(p.cmd.Args[1:], " "), limit)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("sluice: %v", p.err)
		return -1
	}
}

// stop sends SIGTERM and expects a clean exit within a minute.
func (p *sluiceProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if code := p.wait(t, time.Minute); code != 0 {
		t.Fatalf("sluice exited with %d after SIGTERM, want 0", code)
	}
}

// runSluice runs a sluice command that ends on its own within limit and
// returns its exit code and output.
func runSluice(t *testing.T, bin string, env []string, limit time.Duration, args ...string) (int, string) {
	t.Helper()
	p := startSluice(t, bin, env, args...)
	code := p.wait(t, limit)
	return code, p.out.String()
}

// writeSecretFile writes a secret as a Kubernetes Secret volume would hold it
// (with a trailing newline) with mode 0600, and returns its path.
func writeSecretFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsSluiceConfig writes a configuration for the sluice binary that writes
// orders from topic into table of a private PostgreSQL; dsnKey is the
// connection's line under sink.postgres (dsn: "..." or dsn_file: ...), so the
// secret is never in the file itself. It returns the file's path.
func tlsSluiceConfig(t *testing.T, brokers []string, group, topic, table, dsnKey string) string {
	t.Helper()
	return binaryConfig(t, brokers, group, topic, "", fmt.Sprintf(`sink:
  type: postgres
  concurrency: 2
  batch: {max_records: 500, linger: 50ms}
  write_timeout: 5s
  retry: {initial_backoff: 20ms, max_backoff: 500ms}
  postgres:
    %s
    table: public.%s
    mode: insert
    columns: %s
`, dsnKey, table, ordersColumns), "info")
}

// TestPostgresTLSVerifyFullWithSCRAM runs the sluice binary against a
// PostgreSQL that accepts nothing but TLS with a scram-sha-256 password (or a
// client certificate): through sslmode=verify-full with sslrootcert, and the
// password from dsn_file, from ${VAR}, from PGPASSFILE or PGPASSWORD, or a
// client certificate instead, every record of the topic lands in the table. A CA
// that did not sign the server's certificate, and a connection without TLS,
// make start-up fail with a message that says why, names the setting and
// holds no password.
func TestPostgresTLSVerifyFullWithSCRAM(t *testing.T) {
	brokers := testenv.Kafka(t)
	pg := testenv.NewPrivatePostgresWith(t, testenv.PrivatePostgresConfig{SSL: true, CertUsers: []string{"sluice_cert"}})
	admin := testenv.Postgres(t, pg.DSN)
	password := testenv.NewSecret(t)
	for _, stmt := range []string{
		"CREATE ROLE sluice LOGIN PASSWORD '" + password + "'",
		"CREATE ROLE sluice_cert LOGIN",
	} {
		if _, err := admin.Exec(t.Context(), stmt); err != nil {
			t.Fatalf("%s: %v", strings.Replace(stmt, password, "…", 1), err)
		}
	}
	var stored string
	if err := admin.QueryRow(t.Context(), "SELECT rolpassword FROM pg_authid WHERE rolname = 'sluice'").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$") {
		t.Fatalf("the role's password is stored as %.14q..., want a SCRAM-SHA-256 verifier", stored)
	}

	const n = 2000
	topic := testenv.NewTopic(t, brokers, 3)
	produceOrders(t, brokers, topic, n, order)
	bin := buildSluice(t)
	certDir := t.TempDir()
	clientCert := pg.CA.Issue(t, certDir, "sluice_cert")
	wrongCA := testenv.NewCA(t, t.TempDir())
	// A keyword/value connection string: host, port, database, TLS; the
	// subtests add the role and where its password comes from.
	base := func(rootCert string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres sslmode=verify-full sslrootcert=%s", pg.Port, rootCert)
	}
	passfile := writeSecretFile(t, "pgpass", fmt.Sprintf("127.0.0.1:%d:postgres:sluice:%s", pg.Port, password))

	// newTable creates the subtest's table, writable by both roles.
	newTable := func(t *testing.T) string {
		table := testenv.UniqueName(t, "sluice")
		if _, err := admin.Exec(t.Context(), "CREATE TABLE public."+table+" "+ordersTable+
			"; GRANT SELECT, INSERT ON public."+table+" TO sluice, sluice_cert"); err != nil {
			t.Fatalf("create table %s: %v", table, err)
		}
		return table
	}
	wrongPassword := testenv.NewSecret(t)
	noPassword := func(t *testing.T, what, out string) {
		t.Helper()
		if strings.Contains(out, password) {
			t.Errorf("%s holds the password", what)
		}
		if strings.Contains(out, wrongPassword) {
			t.Errorf("%s holds the wrong password", what)
		}
	}

	writes := []struct {
		name   string
		dsnKey func(t *testing.T) string // the line under sink.postgres
		env    []string
		user   string // the role the connections must have used
	}{
		{"password in dsn_file", func(t *testing.T) string {
			return "dsn_file: " + writeSecretFile(t, "dsn", base(pg.CA.CertFile)+" user=sluice password="+password)
		}, nil, "sluice"},
		{"password from ${VAR}", func(*testing.T) string {
			return `dsn: "` + base(pg.CA.CertFile) + ` user=sluice password=${SLUICE_TEST_SECRET_PG_PASSWORD}"`
		}, []string{"SLUICE_TEST_SECRET_PG_PASSWORD=" + password}, "sluice"},
		{"password from PGPASSFILE", func(*testing.T) string {
			return `dsn: "` + base(pg.CA.CertFile) + ` user=sluice"`
		}, []string{"PGPASSFILE=" + passfile}, "sluice"},
		{"password from PGPASSWORD", func(*testing.T) string {
			return `dsn: "` + base(pg.CA.CertFile) + ` user=sluice"`
		}, []string{"PGPASSWORD=" + password}, "sluice"},
		{"client certificate", func(*testing.T) string {
			return `dsn: "` + base(pg.CA.CertFile) + ` user=sluice_cert sslcert=` + clientCert.CertFile + ` sslkey=` + clientCert.KeyFile + `"`
		}, nil, "sluice_cert"},
	}
	for _, tc := range writes {
		t.Run(tc.name, func(t *testing.T) {
			group := testenv.NewGroup(t, brokers)
			testenv.DeleteTopicAtEnd(t, testenv.Admin(t, brokers), group+".dlq")
			table := newTable(t)
			cfg := tlsSluiceConfig(t, brokers, group, topic, table, tc.dsnKey(t))
			run := startSluice(t, bin, tc.env, "run", "-c", cfg)
			deadline := time.Now().Add(2 * time.Minute)
			var rows, sslConns int64
			for {
				rows = count(t, admin, "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM "+table)
				// Every session of sluice's role runs over TLS, and at least
				// one is open (the pool keeps the lanes' connections).
				var plain int64
				if err := admin.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
					FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
					WHERE a.usename = $1 AND a.application_name = 'sluice'`, tc.user).Scan(&sslConns, &plain); err != nil {
					t.Fatal(err)
				}
				if plain > 0 {
					t.Fatalf("%d sessions of %s without TLS", plain, tc.user)
				}
				if rows == n && sslConns > 0 {
					break
				}
				select {
				case <-run.done:
					t.Fatalf("sluice exited (%v) with %d of %d records in the table", run.err, rows, n)
				case <-time.After(100 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("after 2m: %d of %d records in the table, %d TLS sessions of %s", rows, n, sslConns, tc.user)
				}
			}
			run.stop(t)
			if total := count(t, admin, "SELECT count(*) FROM "+table); total != n {
				t.Errorf("%d rows for %d records", total, n)
			}
			out := run.out.String()
			if !strings.Contains(out, "postgres sink ready") {
				t.Errorf("the log has no \"postgres sink ready\" line")
			}
			noPassword(t, "the log", out)
		})
	}

	// Start-up failures: sluice exits 1 before it consumes anything.
	failures := []struct {
		name string
		dsn  string
		want []string // in the output, all of them
	}{
		// The CA named by sslrootcert did not sign the server's certificate.
		{"wrong CA", base(wrongCA.CertFile) + " user=sluice password=" + password,
			[]string{"sink.postgres.dsn", "certificate signed by unknown authority"}},
		// The server rejects every connection without TLS (hostnossl ... reject).
		{"without TLS", fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres sslmode=disable user=sluice password=%s", pg.Port, password),
			[]string{"sink.postgres.dsn", "pg_hba.conf", "no encryption"}},
		// verify-full checks the name: the certificate is for 127.0.0.1 and
		// localhost, and Linux connects 0.0.0.0 to the local host.
		{"host not in the certificate", strings.Replace(base(pg.CA.CertFile), "host=127.0.0.1", "host=0.0.0.0", 1) + " user=sluice password=" + password,
			[]string{"sink.postgres.dsn", "certificate is valid for 127.0.0.1, not 0.0.0.0"}},
		// pgx reads sslrootcert while it parses the string, and sluice does
		// not show pgx's parse errors (they may quote the password).
		{"sslrootcert missing", base(filepath.Join(certDir, "missing.crt")) + " user=sluice password=" + password,
			[]string{"sink.postgres.dsn: cannot parse the connection string"}},
		{"wrong password", base(pg.CA.CertFile) + " user=sluice password=" + wrongPassword,
			[]string{"sink.postgres.dsn", "password authentication failed"}},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			group := testenv.NewGroup(t, brokers)
			testenv.DeleteTopicAtEnd(t, testenv.Admin(t, brokers), group+".dlq")
			table := newTable(t)
			cfg := tlsSluiceConfig(t, brokers, group, topic, table, "dsn_file: "+writeSecretFile(t, "dsn", tc.dsn))
			code, out := runSluice(t, bin, nil, time.Minute, "run", "-c", cfg)
			if code != 1 {
				t.Errorf("sluice exited with %d, want 1", code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the output does not say %q", w)
				}
			}
			noPassword(t, "the output", out)
			if got := count(t, admin, "SELECT count(*) FROM "+table); got != 0 {
				t.Errorf("%d rows written", got)
			}
			t.Logf("sluice says: %s", strings.TrimSpace(lastLines(strings.TrimSpace(out), 1)))
		})
	}
}
