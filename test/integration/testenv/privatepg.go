package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgresBin names the folder of the PostgreSQL server binaries
// (initdb, pg_ctl) that PrivatePostgres uses; by default the newest
// /usr/lib/postgresql/*/bin.
const EnvPostgresBin = "SLUICE_TEST_PG_BIN"

// PrivatePostgres is a PostgreSQL server of one test's own, for tests that
// stop and start the database (an outage) without disturbing the shared test
// server other tests use in parallel. It listens on 127.0.0.1 only, on a free
// port, with no Unix socket, trust authentication and no durability, and is
// stopped and removed when the test ends.
//
// When the process runs as root the server runs as the postgres OS user
// (through runuser), as PostgreSQL refuses to run as root.
//
// NewPrivatePostgresWith starts one with TLS and password authentication
// instead (see PrivatePostgresConfig).
type PrivatePostgres struct {
	t    testing.TB
	bin  string
	dir  string // owned by the server's user: data/ and the log
	data string
	log  string
	uid  int // the server's OS user when the test runs as root, else -1
	gid  int
	// Port is the TCP port on 127.0.0.1.
	Port int
	// DSN connects to the postgres database as the superuser postgres (with
	// SSL: with Password, through sslmode=verify-full and CA).
	DSN string
	// CA issued the server's certificate; nil without SSL. CA.CertFile is
	// what clients name as sslrootcert.
	CA *CA
	// Password is the superuser's password; empty without SSL.
	Password string
}

// NewPrivatePostgres creates a cluster with initdb and starts it, with trust
// authentication over plain TCP. It skips the test (or fails it under CI) when
// the PostgreSQL binaries are missing.
func NewPrivatePostgres(t testing.TB) *PrivatePostgres {
	t.Helper()
	return NewPrivatePostgresWith(t, PrivatePostgresConfig{})
}

// NewPrivatePostgresWith is NewPrivatePostgres with the authentication cfg
// asks for; the zero PrivatePostgresConfig is NewPrivatePostgres.
func NewPrivatePostgresWith(t testing.TB, cfg PrivatePostgresConfig) *PrivatePostgres {
	t.Helper()
	if len(cfg.CertUsers) > 0 && !cfg.SSL {
		t.Fatal("PrivatePostgresConfig.CertUsers needs SSL")
	}
	bin := os.Getenv(EnvPostgresBin)
	if bin == "" {
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		if len(matches) > 0 {
			bin = matches[len(matches)-1]
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "pg_ctl")); bin == "" || err != nil {
		msg := "no PostgreSQL server binaries (set " + EnvPostgresBin + " or install postgresql; test/env/up.sh does)"
		if InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir, err := os.MkdirTemp("", "sluice-private-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &PrivatePostgres{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), log: filepath.Join(dir, "postgres.log"), uid: -1, gid: -1}
	t.Cleanup(func() {
		p.pgctl("stop", "-m", "immediate", "-w", "-t", "30") // may already be down
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres OS user for the server: %v", err)
		}
		p.uid, _ = strconv.Atoi(u.Uid)
		p.gid, _ = strconv.Atoi(u.Gid)
	}
	p.own(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	initdb := []string{"-D", p.data, "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"}
	if cfg.SSL {
		// The superuser's password is set by initdb from a file the server's
		// user can read, never on a command line.
		p.Password = NewSecret(t)
		pwfile := p.writeServerFile(filepath.Join(dir, "initdb.pw"), []byte(p.Password+"\n"), 0o600)
		defer os.Remove(pwfile)
		initdb = append(initdb, "-A", "scram-sha-256", "--pwfile="+pwfile)
	} else {
		initdb = append(initdb, "-A", "trust")
	}
	if out, err := p.run("initdb", initdb...); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Port = freePort(t)
	conf := fmt.Sprintf(`
# PrivatePostgres: loopback only, disposable.
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = ''
max_connections = 50
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
`, p.Port)
	p.appendConf(conf)
	p.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	if cfg.SSL {
		p.setUpSSL(cfg)
	}
	p.Start()
	return p
}

// Start starts the server and waits until it accepts connections.
func (p *PrivatePostgres) Start() {
	p.t.Helper()
	if out, err := p.pgctl("start", "-w", "-t", "60", "-l", p.log); err != nil {
		logText, _ := os.ReadFile(p.log)
		p.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, logText)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, p.DSN)
		if err == nil {
			_ = conn.Close(ctx)
			return
		}
		if ctx.Err() != nil {
			p.t.Fatalf("private PostgreSQL on port %d does not accept connections: %v", p.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server with pg_ctl stop -m fast: sessions are terminated,
// then the server shuts down.
func (p *PrivatePostgres) Stop() {
	p.t.Helper()
	if out, err := p.pgctl("stop", "-m", "fast", "-w", "-t", "60"); err != nil {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// appendConf appends settings to postgresql.conf; later lines win.
func (p *PrivatePostgres) appendConf(conf string) {
	p.t.Helper()
	f, err := os.OpenFile(filepath.Join(p.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

// own gives path to the server's OS user when the test runs as root.
func (p *PrivatePostgres) own(path string) {
	p.t.Helper()
	if p.uid < 0 {
		return
	}
	if err := os.Chown(path, p.uid, p.gid); err != nil {
		p.t.Fatal(err)
	}
}

// writeServerFile writes a file the server reads, owned by its OS user, with
// mode perm; it returns path.
func (p *PrivatePostgres) writeServerFile(path string, data []byte, perm os.FileMode) string {
	p.t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		p.t.Fatal(err)
	}
	p.own(path)
	return path
}

func (p *PrivatePostgres) pgctl(args ...string) ([]byte, error) {
	return p.run("pg_ctl", append([]string{"-D", p.data}, args...)...)
}

// run runs one of the server binaries as the server's user. Its output goes
// to a file, not a pipe: a server started by pg_ctl must not hold a pipe the
// test waits on.
func (p *PrivatePostgres) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(p.bin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = "/"
	out, err := os.CreateTemp("", "sluice-pg-cmd-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	text, _ := os.ReadFile(out.Name())
	return text, err
}

// freePort returns a TCP port on 127.0.0.1 that nothing listened on a moment
// ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
