package postgres

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

// TestNewNeverShowsTheDSN fails New on purpose (a DSN that does not parse, a
// server that is not there) and checks the error shows neither the DSN nor
// the password.
func TestNewNeverShowsTheDSN(t *testing.T) {
	const password = "Sw0rdfish-9"
	for name, dsn := range map[string]string{
		"unparsable":  "postgres://sluice:" + password + "@127.0.0.1:notaport/db",
		"unreachable": "postgres://sluice:" + password + "@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		"keywords":    "host=127.0.0.1 port=1 user=sluice password=" + password + " dbname=db sslmode=disable connect_timeout=2",
	} {
		t.Run(name, func(t *testing.T) {
			cfg := config.Postgres{DSN: config.Secret(dsn), Table: "orders", Columns: map[string]string{"id": "value.id"}}
			s, err := New(t.Context(), cfg, Options{Lanes: 2})
			if err == nil {
				s.Close()
				t.Fatal("New succeeded against nothing")
			}
			if msg := err.Error(); strings.Contains(msg, password) || strings.Contains(msg, dsn) || strings.Contains(msg, "Sw0rd") {
				t.Fatalf("error shows a secret: %q", msg)
			}
			if !strings.Contains(err.Error(), "sink.postgres.dsn") {
				t.Errorf("error %q does not name the key", err)
			}
		})
	}
}

func TestNewNeedsADSNAndATable(t *testing.T) {
	if _, err := New(t.Context(), config.Postgres{Table: "t"}, Options{}); err == nil || !strings.Contains(err.Error(), "sink.postgres.dsn") {
		t.Errorf("no DSN: err = %v", err)
	}
	if _, err := New(t.Context(), config.Postgres{DSN: "postgres://x@127.0.0.1:1/db"}, Options{}); err == nil || !strings.Contains(err.Error(), "sink.postgres.table") {
		t.Errorf("no table: err = %v", err)
	}
}
