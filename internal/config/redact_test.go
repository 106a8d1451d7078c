package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestRedacted(t *testing.T) {
	const (
		dsn      = "postgres://u:hunter2@h/db"
		password = "kafka-pw-0451"
		token    = "Bearer tok-9931"
		urlPass  = "url-pw-7720"
	)
	doc := overlay(t, `
kafka: {sasl: {mechanism: SCRAM-SHA-256, username: sluice, password: '${KAFKA_PASSWORD}'}}
sink:
  postgres: {dsn: '${PG_DSN}'}
  http: {url: 'https://svc:`+urlPass+`@ingest.example.com/v1', headers: {Authorization: '${TOKEN}'}}
`)
	env := envMap(map[string]string{"PG_DSN": dsn, "KAFKA_PASSWORD": password, "TOKEN": token})
	c, err := LoadWith(writeFile(t, "sluice.yaml", doc), env)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Redacted(c)
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, secret := range []string{"hunter2", password, token, "tok-9931", urlPass} {
		if strings.Contains(text, secret) {
			t.Errorf("the output holds the secret %q:\n%s", secret, text)
		}
	}
	for _, want := range []string{
		"dsn: '[redacted]'", "password: '[redacted]'", "Authorization: '[redacted]'",
		"max_buffered_bytes: 64MiB", "linger: 200ms", "rebalance_timeout: 1m\n", "max_poll_records: 500",
		"brokers: ['localhost:9092']", "records_per_second: 0\n", "listen: :9108", "half_open_share: 0.05",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the output lacks %q:\n%s", want, text)
		}
	}
	// Nor do the Go formats of the Config show the secrets.
	for _, format := range []string{"%v", "%+v", "%#v"} {
		if s := fmt.Sprintf(format, c); strings.Contains(s, "hunter2") || strings.Contains(s, password) || strings.Contains(s, "tok-9931") {
			t.Errorf("%s shows a secret: %s", format, s)
		}
	}
}

// TestRedactedRoundTrip loads the output of Redacted back: the keys are the
// file's keys and the values read back as they were, secrets aside.
func TestRedactedRoundTrip(t *testing.T) {
	c, err := LoadWith(writeFile(t, "sluice.yaml", overlay(t, `
kafka: {brokers: [a:9092, b:9092], fetch_max_bytes: 8MB, rebalance_timeout: 1h30m}
flow: {rate_limit: {records_per_second: 12.5, burst: 20}}
sink: {http: {headers: {X-Tenant: acme}}, file: {columns: {"n": $partition}}}
dlq: {topic: "123"}
observability: {listen: "true:9108"}
`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Redacted(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadWith(writeFile(t, "redacted.yaml", string(out)), nil)
	if err != nil {
		t.Fatalf("the output does not load: %v\n%s", err, out)
	}
	want := *c
	want.Sink.Postgres.DSN = redactedText
	want.Sink.HTTP.Headers = map[string]Secret{"X-Tenant": redactedText}
	if !reflect.DeepEqual(back, &want) {
		t.Errorf("round trip:\ngot  %+v\nwant %+v\n%s", back, &want, out)
	}
}

func TestRedactedNil(t *testing.T) {
	if _, err := Redacted(nil); err == nil {
		t.Error("no error for nil")
	}
}

// TestRedactURL: sink.http.url is shown without the parts the http sink keeps
// out of its errors, since each may carry a token from ${VAR}.
func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"https://ingest.example.com", "https://ingest.example.com"},
		{"https://ingest.example.com/", "https://ingest.example.com/"},
		{"http://127.0.0.1:8080/v1/orders", "http://127.0.0.1:8080/[redacted]"},
		{"https://svc:pw-7720@ingest.example.com/hooks/T0K3N?api_key=k-1#f", "https://svc:xxxxx@ingest.example.com/[redacted]?[redacted]#[redacted]"},
		{"https://ingest.example.com?token=t-1", "https://ingest.example.com?[redacted]"},
		{"https://svc@ingest.example.com/a%2Fb", "https://svc@ingest.example.com/[redacted]"},
		{"https://h/p\x7f", redactedText},
	} {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
