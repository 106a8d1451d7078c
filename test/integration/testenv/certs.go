package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// certValidity is how long the certificates of a test's CA are valid; they
// start an hour in the past, so a clock a little behind does not matter.
const certValidity = 24 * time.Hour

// CA is a certificate authority of one test: a self-signed ECDSA P-256
// certificate whose key stays in memory and signs the certificates Issue
// writes. Use one CA per trust domain; a second NewCA is a CA that the first
// one's clients do not trust (the "wrong CA" of a test).
//
// A CA may be used from any goroutine; its methods end the test with t.Fatal,
// so call them from the test's own goroutine.
type CA struct {
	// CertFile is the PEM file of the CA's certificate: what a client
	// trusts (PostgreSQL's sslrootcert, kafka.tls.ca_file, Kafka's PEM
	// truststore) and a server checks client certificates against.
	CertFile string
	// Cert is the CA's certificate.
	Cert *x509.Certificate

	key crypto.Signer
}

// Cert is a certificate and its key, issued by a CA, as PEM files.
type Cert struct {
	// CertFile holds the certificate alone (PEM "CERTIFICATE"), mode 0644.
	CertFile string
	// KeyFile holds the unencrypted private key as PKCS #8 (PEM "PRIVATE
	// KEY", which PostgreSQL, Go and Kafka's PEM key stores all read),
	// mode 0600.
	KeyFile string
}

// NewCA creates a CA named after the test and writes its certificate to
// dir/ca.crt (mode 0644); dir must exist. Give each CA a folder of its own.
func NewCA(t testing.TB, dir string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "sluice test CA " + t.Name(), Organization: []string{"sluice tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("create the CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse the CA certificate: %v", err)
	}
	ca := &CA{CertFile: filepath.Join(dir, "ca.crt"), Cert: cert, key: key}
	writePEM(t, ca.CertFile, "CERTIFICATE", der, 0o644)
	return ca
}

// Issue creates a certificate with the common name name, signed by the CA,
// valid for both server and client authentication, and writes it to
// dir/<name>.crt and its key to dir/<name>.key; dir must exist. hosts are the
// subject alternative names: each that parses as an IP address is an IP SAN,
// any other a DNS name. A client certificate for PostgreSQL's cert
// authentication needs no hosts: its common name is the role.
func (ca *CA) Issue(t testing.TB, dir, name string, hosts ...string) *Cert {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"sluice tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("issue a certificate for %s: %v", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("encode the key of %s: %v", name, err)
	}
	c := &Cert{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	writePEM(t, c.CertFile, "CERTIFICATE", der, 0o644)
	writePEM(t, c.KeyFile, "PRIVATE KEY", keyDER, 0o600)
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("certificate serial number: %v", err)
	}
	return n
}

// writePEM writes one PEM block to path with mode perm, which it sets
// explicitly so that the umask cannot loosen or tighten it.
func writePEM(t testing.TB, path, blockType string, der []byte, perm os.FileMode) {
	t.Helper()
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatalf("chmod %s: %v", path, err)
	}
}
