package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// AdminUser is the SASL user of every SecureKafka that is a super user: the
// tests create topics, ACLs and check offsets as it.
const AdminUser = "admin"

// SecureServerName is a DNS name in the SecureKafka broker's certificate
// besides localhost and 127.0.0.1, for tests of kafka.tls.server_name.
const SecureServerName = "kafka.sluice.test"

// SecureKafkaOptions say what a SecureKafka runs with.
type SecureKafkaOptions struct {
	// Users are SASL users (name: password) besides AdminUser. Each can log
	// in with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN. Names and passwords
	// are made of [A-Za-z0-9._-].
	Users map[string]string
	// Authorizer runs KRaft's StandardAuthorizer with
	// allow.everyone.if.no.acl.found=false: only the super users (AdminUser,
	// and the broker itself on its internal listener) may do anything
	// without an ACL.
	Authorizer bool
}

// SecureKafka is a PrivateKafka with a second listener for clients,
// SASL_SSL, besides the PLAINTEXT one (which stays for the broker's own
// traffic and start-up probe; with the authorizer its principal,
// User:ANONYMOUS, is a super user, so tests must not use it for what they
// prove).
//
// The SASL_SSL listener takes SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN (the
// SCRAM credentials are written by StorageTool format --add-scram, the
// PLAIN ones are in the listener's JAAS configuration) and requires a client
// certificate. Its certificates are made at start by Go's crypto in the
// broker's folder: a CA (CAFile), the broker's certificate for localhost,
// 127.0.0.1 and SecureServerName, a client certificate of the same CA
// (ClientCertFile, ClientKeyFile), and an unrelated CA (UntrustedCAFile)
// for tests of a wrong kafka.tls.ca_file. The broker reads them as PEM.
type SecureKafka struct {
	*PrivateKafka

	// SecurePort is the SASL_SSL port; SecureBrokers is "127.0.0.1:<SecurePort>".
	SecurePort    int
	SecureBrokers []string
	// PEM files in the broker's folder.
	CAFile, ClientCertFile, ClientKeyFile, UntrustedCAFile string
	// AdminPassword is AdminUser's password, random per broker.
	AdminPassword string

	users     map[string]string
	tlsConfig *tls.Config // the CA's pool, the client certificate, SecureServerName
}

// NewSecureKafka formats and starts a SecureKafka; it skips or fails the
// test as NewPrivateKafka does when Java or the Kafka jars are missing.
func NewSecureKafka(t testing.TB, o SecureKafkaOptions) *SecureKafka {
	t.Helper()
	s := &SecureKafka{users: map[string]string{}}
	for u, p := range o.Users {
		if u == AdminUser {
			t.Fatalf("SecureKafkaOptions.Users: %s is the admin user of every SecureKafka", AdminUser)
		}
		if !saslSafe(u) || !saslSafe(p) {
			t.Fatalf("SecureKafkaOptions.Users: user %q or its password holds characters other than [A-Za-z0-9._-]", u)
		}
		s.users[u] = p
	}
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	s.AdminPassword = "admin-" + hex.EncodeToString(b[:])
	s.users[AdminUser] = s.AdminPassword

	s.PrivateKafka = newPrivateKafka(t, func(k *PrivateKafka) (string, []string) {
		s.SecurePort = freePort(t)
		for s.SecurePort == k.Port || s.SecurePort == k.ControllerPort {
			s.SecurePort = freePort(t)
		}
		s.SecureBrokers = []string{fmt.Sprintf("127.0.0.1:%d", s.SecurePort)}
		brokerPEM := s.writeCertificates(t, k.dir)
		return s.properties(k, brokerPEM, o.Authorizer), s.formatArgs()
	})
	return s
}

func saslSafe(s string) bool {
	return s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) < 0
}

// properties returns what SecureKafka adds to the private broker's
// configuration; listeners, advertised.listeners and the protocol map
// replace the private broker's.
func (s *SecureKafka) properties(k *PrivateKafka, brokerPEM string, authorizer bool) string {
	var plain strings.Builder
	plain.WriteString("org.apache.kafka.common.security.plain.PlainLoginModule required")
	for _, u := range slices.Sorted(maps.Keys(s.users)) {
		fmt.Fprintf(&plain, ` user_%s="%s"`, u, s.users[u])
	}
	plain.WriteString(";")
	p := fmt.Sprintf(`
# SecureKafka: a SASL_SSL listener for clients; PLAINTEXT stays for the broker's own traffic.
listeners=PLAINTEXT://127.0.0.1:%[1]d,SASL_SSL://127.0.0.1:%[2]d,CONTROLLER://127.0.0.1:%[3]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[1]d,SASL_SSL://127.0.0.1:%[2]d
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=%[4]s
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=%[5]s
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=%[6]s
listener.name.sasl_ssl.ssl.client.auth=required
`, k.Port, s.SecurePort, k.ControllerPort, plain.String(), brokerPEM, s.CAFile)
	if authorizer {
		p += fmt.Sprintf(`authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:%s
`, AdminUser)
	}
	return p
}

// formatArgs give every user SCRAM-SHA-256 and SCRAM-SHA-512 credentials.
func (s *SecureKafka) formatArgs() []string {
	var args []string
	for _, u := range slices.Sorted(maps.Keys(s.users)) {
		for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-512"} {
			args = append(args, "--add-scram", fmt.Sprintf("%s=[name=%s,password=%s]", mech, u, s.users[u]))
		}
	}
	return args
}

// writeCertificates makes the CA, the broker's and the client's
// certificates and the untrusted CA in dir, and returns the broker's PEM
// file (its PKCS #8 key and certificate, as ssl.keystore.type=PEM reads it).
func (s *SecureKafka) writeCertificates(t testing.TB, dir string) string {
	t.Helper()
	now := time.Now()
	ca := newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "sluice test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
	}, nil)
	broker := newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: SecureServerName}, DNSNames: []string{SecureServerName, "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
	}, ca)
	client := newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "sluice test client"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
	}, ca)
	untrusted := newCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "sluice untrusted test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
	}, nil)

	write := func(name string, blocks ...[]byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, slices.Concat(blocks...), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s.CAFile = write("ca.pem", ca.certPEM)
	s.UntrustedCAFile = write("untrusted-ca.pem", untrusted.certPEM)
	s.ClientCertFile = write("client.pem", client.certPEM)
	s.ClientKeyFile = write("client-key.pem", client.keyPEM)
	brokerPEM := write("broker.pem", broker.keyPEM, broker.certPEM, ca.certPEM)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	pair, err := tls.X509KeyPair(client.certPEM, client.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	s.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: SecureServerName}
	return brokerPEM
}

type testCert struct {
	cert            *x509.Certificate
	key             *ecdsa.PrivateKey
	certPEM, keyPEM []byte
}

// newCert signs tmpl with parent's key (itself when parent is nil).
func newCert(t testing.TB, tmpl *x509.Certificate, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})}
}

// Password returns the password of a SASL user of the broker.
func (s *SecureKafka) Password(t testing.TB, user string) string {
	t.Helper()
	p, ok := s.users[user]
	if !ok {
		t.Fatalf("SecureKafka has no user %q", user)
	}
	return p
}

// ClientOpts are the options of a franz-go client that connects to the
// SASL_SSL listener as user with SCRAM-SHA-512, trusting the CA, showing the
// client certificate and verifying SecureServerName.
func (s *SecureKafka) ClientOpts(t testing.TB, user string) []kgo.Opt {
	t.Helper()
	return []kgo.Opt{
		kgo.SeedBrokers(s.SecureBrokers...),
		kgo.DialTLSConfig(s.tlsConfig.Clone()),
		kgo.SASL(scram.Auth{User: user, Pass: s.Password(t, user)}.AsSha512Mechanism()),
	}
}

// Client returns a client of user on the SASL_SSL listener with opts added,
// closed when the test ends.
func (s *SecureKafka) Client(t testing.TB, user string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append(s.ClientOpts(t, user), opts...)...)
	if err != nil {
		t.Fatalf("kafka client of %s: %v", user, err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// Admin returns an admin client of AdminUser on the SASL_SSL listener,
// closed when the test ends.
func (s *SecureKafka) Admin(t testing.TB) *kadm.Client {
	t.Helper()
	return kadm.NewClient(s.Client(t, AdminUser))
}

// CreateTopic creates a topic with the given partitions as AdminUser and
// waits until every partition has a leader. The broker and its topics go
// when the test ends.
func (s *SecureKafka) CreateTopic(t testing.TB, name string, partitions int32) {
	t.Helper()
	adm := s.Admin(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	for {
		md, err := adm.Metadata(ctx, name)
		if err == nil {
			if td, ok := md.Topics[name]; ok && td.Err == nil && len(td.Partitions) == int(partitions) && allLed(td) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("topic %s: partitions without a leader after 30s (last error: %v)", name, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
