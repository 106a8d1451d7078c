//go:build integration

package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/record"
	"github.com/sluicehq/sluice/internal/sink/postgres"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

// TestIntegrationConformance runs the sink conformance suite against the real
// PostgreSQL of SLUICE_TEST_PG_DSN, in a table of its own per case.
//
// A bad record has a negative amount, which a CHECK constraint refuses
// (23514). A failure is a statement trigger raising 53000
// (insufficient_resources) while a flag row exists, after the sink's
// connections are terminated, so the recovery also reconnects. A held write
// is a COPY waiting for the test's ACCESS EXCLUSIVE lock on the table.
func TestIntegrationConformance(t *testing.T) {
	dsn := os.Getenv("SLUICE_TEST_PG_DSN")
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("SLUICE_TEST_PG_DSN is not set; CI must start PostgreSQL (test/env/up.sh) and export it")
		}
		t.Skip("SLUICE_TEST_PG_DSN is not set: run test/env/up.sh and source test/env/.state/env.sh")
	}
	sinktest.Run(t, sinktest.Harness{
		Delivery:   sinktest.Once,
		RejectCode: "23514",
		Secrets:    []string{dsn},
		New:        func(t *testing.T) *sinktest.Instance { return newConformanceInstance(t, dsn) },
	})
}

func newConformanceInstance(t *testing.T, dsn string) *sinktest.Instance {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	table, flag, app := "sinktest_"+suffix, "sinktest_"+suffix+"_fail", "sinktest_"+suffix

	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(fmt.Sprintf(`CREATE TABLE %s (seq bigserial PRIMARY KEY, id bigint NOT NULL,
		amount numeric(12,2) NOT NULL CHECK (amount >= 0), kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`, table))
	exec(fmt.Sprintf(`CREATE TABLE %s (on_since timestamptz)`, flag))
	exec(fmt.Sprintf(`CREATE FUNCTION %[1]s_fail() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF EXISTS (SELECT 1 FROM %[2]s) THEN
				RAISE EXCEPTION 'sinktest: injected outage' USING ERRCODE = '53000';
			END IF;
			RETURN NULL;
		END $$`, table, flag))
	exec(fmt.Sprintf(`CREATE TRIGGER %[1]s_fail BEFORE INSERT ON %[1]s FOR EACH STATEMENT EXECUTE FUNCTION %[1]s_fail()`, table))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, sql := range []string{"DROP TABLE IF EXISTS " + table, "DROP TABLE IF EXISTS " + flag, "DROP FUNCTION IF EXISTS " + table + "_fail()"} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})

	// The sink's connections carry an application_name of their own, so that
	// the test can find (and terminate) them and only them.
	s, err := postgres.New(t.Context(), config.Postgres{DSN: config.Secret(withAppName(t, dsn, app)), Table: "public." + table,
		Mode: config.ModeInsert, Delivery: config.DeliveryAtLeastOnce, Columns: map[string]string{
			"id": "value.id", "amount": "value.amount", "kafka_partition": "$partition", "kafka_offset": "$offset"}},
		postgres.Options{Lanes: 4, WriteTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(s.Close)

	return &sinktest.Instance{
		Sink: s, Mapper: s,
		Stored: func(t *testing.T) []sinktest.Stored {
			rows, err := conn.Query(t.Context(), "SELECT kafka_partition, kafka_offset, id FROM "+table+" ORDER BY seq")
			if err != nil {
				t.Fatal(err)
			}
			var out []sinktest.Stored
			var st sinktest.Stored
			if _, err := pgx.ForEachRow(rows, []any{&st.Partition, &st.Offset, &st.ID}, func() error { out = append(out, st); return nil }); err != nil {
				t.Fatal(err)
			}
			return out
		},
		Bad: func(r *record.Record) {
			// -1<amount>: below zero even for an amount of 0.00.
			r.Value = []byte(strings.Replace(string(r.Value), `"amount":`, `"amount":-1`, 1))
		},
		Fail: func(t *testing.T) func() {
			exec("INSERT INTO " + flag + " VALUES (now())")
			exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
			var once sync.Once
			return func() { // called from a goroutine of the suite: no t.Fatal
				once.Do(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if _, err := conn.Exec(ctx, "DELETE FROM "+flag); err != nil {
						t.Errorf("end the injected outage: %v", err)
					}
				})
			}
		},
		Hold: func(t *testing.T) (func(context.Context) error, func()) {
			tx, err := conn.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			release := func() { once.Do(func() { _ = tx.Rollback(context.Background()) }) }
			t.Cleanup(release)
			wait := func(ctx context.Context) error {
				// A second connection: the test's own is inside the locking
				// transaction.
				watch, err := pgx.Connect(ctx, dsn)
				if err != nil {
					return err
				}
				defer watch.Close(context.Background())
				for {
					var waiting int
					err := watch.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
						WHERE NOT l.granted AND a.application_name = $1`, app).Scan(&waiting)
					if err != nil {
						return err
					}
					if waiting > 0 {
						return nil
					}
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(10 * time.Millisecond):
					}
				}
			}
			return wait, release
		},
	}
}

// withAppName sets application_name in a DSN, URL or keyword=value form.
func withAppName(t *testing.T, dsn, app string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("SLUICE_TEST_PG_DSN does not parse as a URL")
		}
		q := u.Query()
		q.Set("application_name", app)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " application_name=" + app
}
