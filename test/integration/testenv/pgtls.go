package testenv

import (
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// PrivatePostgresConfig selects how a PrivatePostgres authenticates clients.
// The zero value is NewPrivatePostgres: trust, over plain TCP.
type PrivatePostgresConfig struct {
	// SSL turns TLS on (ssl = on) with a server certificate for 127.0.0.1
	// and localhost that a CA of the server's own issued (PrivatePostgres.CA),
	// sets password_encryption = scram-sha-256 and replaces pg_hba.conf with
	// one that accepts a connection only over TLS (hostssl) with a
	// scram-sha-256 password, or with a certificate for CertUsers, and
	// rejects every connection without TLS. The superuser postgres gets a
	// random password (PrivatePostgres.Password); PrivatePostgres.DSN
	// connects with it through sslmode=verify-full.
	SSL bool
	// CertUsers are roles that authenticate with a client certificate
	// instead of a password (hostssl ... cert: the certificate's common name
	// is the role, and CA must have issued it; see CA.Issue). Needs SSL. The
	// roles are not created: create them with CREATE ROLE ... LOGIN.
	CertUsers []string
}

// secretAlphabet is what NewSecret draws from: letters and digits, so a
// secret needs no quoting in a URL, a keyword/value DSN, YAML or SQL.
const secretAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewSecret returns a random token of 24 letters and digits: a password
// distinctive enough that finding it in any output means it leaked.
func NewSecret(t testing.TB) string {
	t.Helper()
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random secret: %v", err)
	}
	for i := range b {
		b[i] = secretAlphabet[int(b[i])%len(secretAlphabet)]
	}
	return string(b[:])
}

// setUpSSL writes the server's certificate, key and pg_hba.conf and the
// settings of cfg.SSL; the server is not running yet.
func (p *PrivatePostgres) setUpSSL(cfg PrivatePostgresConfig) {
	p.t.Helper()
	p.CA = NewCA(p.t, p.t.TempDir())
	// PostgreSQL refuses a key that its group or others can read, and reads
	// its files as its own OS user.
	srv := p.CA.Issue(p.t, p.data, "server", "127.0.0.1", "localhost")
	p.own(srv.CertFile)
	p.own(srv.KeyFile)
	caPEM, err := os.ReadFile(p.CA.CertFile)
	if err != nil {
		p.t.Fatal(err)
	}
	p.writeServerFile(filepath.Join(p.data, "ca.crt"), caPEM, 0o644)

	p.appendConf(`
# PrivatePostgres with SSL: TLS, and SCRAM passwords or client certificates.
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
`)
	var hba strings.Builder
	hba.WriteString("# PrivatePostgres with SSL: first match wins; nothing without TLS.\n")
	for _, u := range cfg.CertUsers {
		fmt.Fprintf(&hba, "hostssl   all %s 127.0.0.1/32 cert\n", u)
	}
	hba.WriteString("hostssl   all all 127.0.0.1/32 scram-sha-256\n")
	hba.WriteString("hostnossl all all 127.0.0.1/32 reject\n")
	hba.WriteString("host      all all ::1/128      reject\n")
	p.writeServerFile(filepath.Join(p.data, "pg_hba.conf"), []byte(hba.String()), 0o600)

	p.DSN = p.URL("postgres", p.Password)
}

// URL returns a connection URL to the postgres database as user with
// password (none when empty) through sslmode=verify-full against CA. It is
// for a server started with SSL.
func (p *PrivatePostgres) URL(user, password string) string {
	p.t.Helper()
	if p.CA == nil {
		p.t.Fatal("PrivatePostgres.URL: the server has no SSL")
	}
	u := &url.URL{Scheme: "postgres", Host: fmt.Sprintf("127.0.0.1:%d", p.Port), Path: "/postgres"}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	u.RawQuery = url.Values{"sslmode": {"verify-full"}, "sslrootcert": {p.CA.CertFile}}.Encode()
	return u.String()
}
