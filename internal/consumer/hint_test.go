package consumer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
)

func TestConnectHintNamesTheKeyToCheck(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want string // "" for no hint
	}{
		{"nil", nil, ""},
		{"sasl", fmt.Errorf("ping: %w", kerr.SaslAuthenticationFailed), "kafka.sasl.username"},
		{"mechanism", kerr.UnsupportedSaslMechanism, "kafka.sasl.mechanism"},
		{"unknown CA", fmt.Errorf("dial: %w", x509.UnknownAuthorityError{}), "kafka.tls.ca_file"},
		{"hostname", x509.HostnameError{Certificate: &x509.Certificate{}, Host: "10.0.0.1"}, "kafka.tls.server_name"},
		{"invalid", x509.CertificateInvalidError{Reason: x509.Expired}, "not valid"},
		{"plaintext port", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "kafka.tls.enabled to false"},
		{"handshake refused", &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, "kafka.tls.cert_file"},
		{"tls port", errors.New("invalid large response size 352518912 > limit 104857600; the first three bytes received appear to be a tls alert record for TLS v1.2; is this a plaintext connection speaking to a tls endpoint?"), "kafka.tls.enabled to true"},
		{"other", errors.New("connection refused"), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := ConnectHint(tt.err)
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Errorf("ConnectHint(%v) = %q, want it to contain %q", tt.err, got, tt.want)
			}
		})
	}
}
