//go:build integration

package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// These tests need a real PostgreSQL: SLUICE_TEST_PG_DSN, as test/env/up.sh
// writes it to test/env/.state/env.sh. Each test works in tables of its own.

func testDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("SLUICE_TEST_PG_DSN")
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("SLUICE_TEST_PG_DSN is not set; CI must start PostgreSQL (test/env/up.sh) and export it")
		}
		t.Skip("SLUICE_TEST_PG_DSN is not set: run test/env/up.sh and source test/env/.state/env.sh to run the PostgreSQL integration tests")
	}
	return dsn
}

// admin returns a connection of the test's own, outside any sink.
func admin(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), testDSN(t))
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// newTable creates a uniquely named table from ddl (%s is the name) and drops it
// when the test ends.
func newTable(t *testing.T, conn *pgx.Conn, ddl string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "sink_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(ddl, name)); err != nil {
		t.Fatalf("create table: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
			t.Errorf("drop table %s: %v", name, err)
		}
	})
	return name
}

func newSink(t *testing.T, cfg config.Postgres, opts Options) *Sink {
	t.Helper()
	cfg.DSN = config.Secret(testDSN(t))
	if opts.Lanes == 0 {
		opts.Lanes = 2
	}
	s, err := New(t.Context(), cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// batch maps records through the sink, as the flow's workers do.
func batch(t *testing.T, s *Sink, recs ...*record.Record) *record.Batch {
	t.Helper()
	b := &record.Batch{Records: recs}
	for _, r := range recs {
		row, err := s.Map(t.Context(), r)
		if err != nil {
			t.Fatalf("Map offset %d: %v", r.Offset, err)
		}
		b.Rows = append(b.Rows, row)
		b.Bytes += r.Size()
	}
	return b
}

func rec(offset int64, value string) *record.Record {
	return &record.Record{Topic: "orders", Partition: 0, Offset: offset, Timestamp: time.UnixMilli(1714566600000 + offset), Value: []byte(value)}
}

func queryStrings(t *testing.T, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func TestIntegrationInsertWritesEveryRow(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (
		id bigint NOT NULL, customer text, amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL,
		items jsonb, kafka_offset bigint NOT NULL)`)
	s := newSink(t, config.Postgres{Table: table, Mode: "insert", Columns: map[string]string{
		"id": "value.id", "customer": "value.customer.name", "amount": "value.amount",
		"created_at": "value.created_at", "items": "value.items", "kafka_offset": "$offset",
	}}, Options{WriteTimeout: 30 * time.Second})

	const total, size = 20000, 5000
	for start := 0; start < total; start += size {
		var recs []*record.Record
		for i := start; i < start+size; i++ {
			recs = append(recs, rec(int64(i), fmt.Sprintf(
				`{"id":%d,"customer":{"name":"c%d"},"amount":%d.25,"created_at":"2024-05-01T12:30:00Z","items":[{"sku":"A","qty":%d}]}`, i, i, i, i%7)))
		}
		if err := s.Write(t.Context(), batch(t, s, recs...)); err != nil {
			t.Fatalf("Write rows %d..: %v", start, err)
		}
	}
	var n, sumID, sumOffset int64
	if err := conn.QueryRow(t.Context(), "SELECT count(*), sum(id), sum(kafka_offset) FROM "+table).Scan(&n, &sumID, &sumOffset); err != nil {
		t.Fatal(err)
	}
	if want := int64(total * (total - 1) / 2); n != total || sumID != want || sumOffset != want {
		t.Fatalf("count %d, sum(id) %d, sum(offset) %d; want %d rows summing to %d", n, sumID, sumOffset, total, want)
	}
	got := queryStrings(t, conn, "SELECT concat_ws('|', customer, amount, created_at AT TIME ZONE 'UTC', items) FROM "+table+" WHERE id = 12345")
	if want := `c12345|12345.25|2024-05-01 12:30:00|[{"qty": 4, "sku": "A"}]`; len(got) != 1 || got[0] != want {
		t.Fatalf("row 12345 = %q, want %q", got, want)
	}
}

// TestIntegrationEveryType writes one value of every supported type and reads
// it back as PostgreSQL prints it.
func TestIntegrationEveryType(t *testing.T) {
	conn := admin(t)
	if _, err := conn.Exec(t.Context(), "SET TIME ZONE 'UTC'"); err != nil {
		t.Fatal(err)
	}
	table := newTable(t, conn, `CREATE TABLE %s (
		i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric, n2 numeric(10,2),
		t text, vc varchar(10), c char(3), b boolean, tz timestamptz, ts timestamp, d date,
		j json, jb jsonb, by bytea, u uuid, k text, h integer, p smallint, o bigint, tm timestamptz)`)
	cols := map[string]string{
		"i2": "value.i2", "i4": "value.i4", "i8": "value.i8", "f4": "value.f4", "f8": "value.f8", "n": "value.n", "n2": "value.n2",
		"t": "value.t", "vc": "value.vc", "c": "value.c", "b": "value.b", "tz": "value.tz", "ts": "value.ts", "d": "value.d",
		"j": "value.j", "jb": "value.jb", "by": "value.by", "u": "value.u",
		"k": "$key", "h": "$headers.n", "p": "$partition", "o": "$offset", "tm": "$timestamp",
	}
	for _, mode := range []string{"insert", "upsert"} {
		t.Run(mode, func(t *testing.T) {
			if _, err := conn.Exec(t.Context(), "TRUNCATE "+table); err != nil {
				t.Fatal(err)
			}
			cfg := config.Postgres{Table: table, Mode: "insert", Columns: cols}
			if mode == "upsert" {
				if _, err := conn.Exec(t.Context(), "CREATE UNIQUE INDEX IF NOT EXISTS "+table+"_o ON "+table+" (o)"); err != nil {
					t.Fatal(err)
				}
				cfg.Mode, cfg.KeyColumns = "upsert", []string{"o"}
			}
			s := newSink(t, cfg, Options{})
			r := &record.Record{
				Topic: "orders", Partition: 5, Offset: 1 << 33, Timestamp: time.UnixMilli(1714566600123),
				Key: []byte("key-1"), Headers: []record.Header{{Key: "n", Value: []byte("17")}},
				Value: []byte(`{"i2":-32768,"i4":"2147483647","i8":9223372036854775807,"f4":1.5,"f8":-2.5e-3,` +
					`"n":"123456789012345678901234567890.123456789","n2":12.345,"t":"h\u00e9llo \"q\"","vc":"short","c":"EU",` +
					`"b":"yes","tz":"2024-05-01T14:30:00.5+02:00","ts":"2024-05-01T14:30:00+02:00","d":"2024-05-01",` +
					`"j":{"b": 1,  "a": [true]},"jb":{"b": 1,  "a": [true]},"by":"aGVsbG8=","u":"123E4567-E89B-12D3-A456-426614174000"}`),
			}
			if err := s.Write(t.Context(), batch(t, s, r)); err != nil {
				t.Fatalf("Write: %v", err)
			}
			got := queryStrings(t, conn, `SELECT concat_ws(' | ', i2, i4, i8, f4, f8, n, n2, t, vc, c, b, tz, ts, d, j, jb, by, u, k, h, p, o, tm) FROM `+table)
			want := `-32768 | 2147483647 | 9223372036854775807 | 1.5 | -0.0025 | 123456789012345678901234567890.123456789 | 12.35 | ` +
				`héllo "q" | short | EU  | t | 2024-05-01 12:30:00.5+00 | 2024-05-01 12:30:00 | 2024-05-01 | ` +
				`{"b": 1,  "a": [true]} | {"a": [true], "b": 1} | \x68656c6c6f | 123e4567-e89b-12d3-a456-426614174000 | ` +
				`key-1 | 17 | 5 | 8589934592 | 2024-05-01 12:30:00.123+00`
			if len(got) != 1 || got[0] != want {
				t.Fatalf("row =\n%q\nwant\n%q", got, want)
			}
		})
	}
}

func TestIntegrationUpsertKeepsTheLatestOffset(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint PRIMARY KEY, v text NOT NULL, src_offset bigint NOT NULL)`)
	s := newSink(t, config.Postgres{Table: table, Mode: "upsert", KeyColumns: []string{"id"},
		Columns: map[string]string{"id": "value.id", "v": "value.v", "src_offset": "$offset"}}, Options{})

	write := func(recs ...*record.Record) {
		t.Helper()
		if err := s.Write(t.Context(), batch(t, s, recs...)); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	check := func(want ...string) {
		t.Helper()
		got := queryStrings(t, conn, "SELECT id || '=' || v || '@' || src_offset FROM "+table+" ORDER BY id")
		if !slices.Equal(got, want) {
			t.Fatalf("table = %v, want %v", got, want)
		}
	}
	// Duplicate keys inside one batch: the highest offset wins.
	write(rec(0, `{"id":1,"v":"a"}`), rec(1, `{"id":2,"v":"b"}`), rec(2, `{"id":1,"v":"c"}`), rec(3, `{"id":1,"v":"d"}`))
	check("1=d@3", "2=b@1")
	// And across batches: a later batch of the partition overwrites.
	write(rec(4, `{"id":2,"v":"e"}`), rec(5, `{"id":3,"v":"f"}`), rec(6, `{"id":2,"v":"g"}`))
	check("1=d@3", "2=g@6", "3=f@5")
	// A redelivered batch writes the same values again: harmless.
	write(rec(4, `{"id":2,"v":"e"}`), rec(5, `{"id":3,"v":"f"}`), rec(6, `{"id":2,"v":"g"}`))
	check("1=d@3", "2=g@6", "3=f@5")
}

func TestIntegrationInsertWithKeysSkipsRedelivery(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint, region text, v text, src_offset bigint, PRIMARY KEY (region, id))`)
	s := newSink(t, config.Postgres{Table: table, Mode: "insert", KeyColumns: []string{"id", "region"},
		Columns: map[string]string{"id": "value.id", "region": "value.r", "v": "value.v", "src_offset": "$offset"}}, Options{})

	first := batch(t, s, rec(0, `{"id":1,"r":"eu","v":"a"}`), rec(1, `{"id":1,"r":"us","v":"b"}`), rec(2, `{"id":1,"r":"eu","v":"dup"}`))
	if err := s.Write(t.Context(), first); err != nil {
		t.Fatalf("Write: %v", err)
	}
	// After a crash the same records come again, with whatever else followed.
	again := batch(t, s, rec(0, `{"id":1,"r":"eu","v":"a"}`), rec(1, `{"id":1,"r":"us","v":"b"}`), rec(2, `{"id":1,"r":"eu","v":"dup"}`),
		rec(3, `{"id":2,"r":"eu","v":"new"}`))
	if err := s.Write(t.Context(), again); err != nil {
		t.Fatalf("Write of a redelivered batch: %v", err)
	}
	got := queryStrings(t, conn, "SELECT region || id || '=' || v || '@' || src_offset FROM "+table+" ORDER BY region, id")
	if want := []string{"eu1=a@0", "eu2=new@3", "us1=b@1"}; !slices.Equal(got, want) {
		t.Fatalf("table = %v, want %v", got, want)
	}
}

func asRejected(t *testing.T, err error) *flow.RejectedError {
	t.Helper()
	var re *flow.RejectedError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want a *flow.RejectedError", err, err)
	}
	return re
}

func TestIntegrationRejectedRows(t *testing.T) {
	conn := admin(t)
	if _, err := conn.Exec(t.Context(), `DO $$ BEGIN CREATE DOMAIN sink_test_positive AS numeric CHECK (VALUE > 0);
		EXCEPTION WHEN duplicate_object THEN NULL; END $$`); err != nil {
		t.Fatal(err)
	}
	table := newTable(t, conn, `CREATE TABLE %s (id bigint PRIMARY KEY, amount numeric NOT NULL CHECK (amount >= 0),
		code varchar(5), price sink_test_positive)`)
	cols := map[string]string{"id": "value.id", "amount": "value.amount", "code": "value.code", "price": "value.price"}
	ten := func(bad int, badJSON string) []*record.Record {
		var recs []*record.Record
		for i := range 10 {
			v := fmt.Sprintf(`{"id":%d,"amount":%d,"code":"c","price":1}`, i, i)
			if i == bad {
				v = badJSON
			}
			recs = append(recs, rec(int64(i), v))
		}
		return recs
	}
	count := func() int {
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("copy names the row a CHECK refuses", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Columns: cols}, Options{})
		err := s.Write(t.Context(), batch(t, s, ten(7, `{"id":7,"amount":-1,"code":"c","price":1}`)...))
		re := asRejected(t, err)
		if !slices.Equal(re.Rows, []int{7}) || re.Causes[0].Code != "23514" || re.Causes[0].Reason != flow.ReasonSinkRejected {
			t.Fatalf("rows %v causes %+v, want row 7 with 23514", re.Rows, re.Causes)
		}
		if n := count(); n != 0 {
			t.Fatalf("%d rows written by a failed batch", n)
		}
	})
	t.Run("copy names the row a domain refuses", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Columns: cols}, Options{})
		re := asRejected(t, s.Write(t.Context(), batch(t, s, ten(0, `{"id":0,"amount":1,"code":"c","price":-5}`)...)))
		if !slices.Equal(re.Rows, []int{0}) || re.Causes[0].Code != "23514" {
			t.Fatalf("rows %v causes %+v, want row 0 with 23514", re.Rows, re.Causes)
		}
	})
	t.Run("copy names a NOT NULL row", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Columns: cols}, Options{})
		b := batch(t, s, ten(-1, "")...)
		b.Rows[3][slices.Index(s.Columns(), "amount")] = nil // as if the column became NOT NULL after the map
		re := asRejected(t, s.Write(t.Context(), b))
		if !slices.Equal(re.Rows, []int{3}) || re.Causes[0].Code != "23502" {
			t.Fatalf("rows %v causes %+v, want row 3 with 23502", re.Rows, re.Causes)
		}
	})
	t.Run("a duplicate key in a straight copy", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Columns: cols}, Options{})
		re := asRejected(t, s.Write(t.Context(), batch(t, s, ten(5, `{"id":4,"amount":1,"code":"c","price":1}`)...)))
		if !slices.Equal(re.Rows, []int{5}) || re.Causes[0].Code != "23505" {
			t.Fatalf("rows %v causes %+v, want row 5 with 23505", re.Rows, re.Causes)
		}
	})
	t.Run("staging copy names a row too long for its column", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Mode: "upsert", KeyColumns: []string{"id"}, Columns: cols}, Options{})
		re := asRejected(t, s.Write(t.Context(), batch(t, s, ten(2, `{"id":2,"amount":1,"code":"toolong","price":1}`)...)))
		if !slices.Equal(re.Rows, []int{2}) || re.Causes[0].Code != "22001" {
			t.Fatalf("rows %v causes %+v, want row 2 with 22001", re.Rows, re.Causes)
		}
	})
	t.Run("the merge cannot say which row; the CHECK screen can", func(t *testing.T) {
		s := newSink(t, config.Postgres{Table: table, Mode: "upsert", KeyColumns: []string{"id"}, Columns: cols}, Options{})
		recs := ten(6, `{"id":6,"amount":-1,"code":"c","price":1}`)
		re := asRejected(t, s.Write(t.Context(), batch(t, s, recs...)))
		if !slices.Equal(re.Rows, []int{6}) || re.Causes[0].Code != "23514" || !strings.Contains(re.Causes[0].Error(), "_amount_check") {
			t.Fatalf("rows %v causes %v; want row 6 with 23514 naming the constraint", re.Rows, re.Causes)
		}
		// The rest is written.
		if err := s.Write(t.Context(), batch(t, s, slices.Delete(slices.Clone(recs), 6, 7)...)); err != nil {
			t.Fatalf("Write of the good rows: %v", err)
		}
		if n := count(); n != 9 {
			t.Fatalf("%d rows, want 9", n)
		}
	})
}

func TestIntegrationNewRefuses(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint NOT NULL, amount numeric, n integer, region text, UNIQUE (id, region))`)
	view := table + "_v"
	if _, err := conn.Exec(t.Context(), "CREATE VIEW "+view+" AS SELECT * FROM "+table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP VIEW IF EXISTS "+view) })
	tests := []struct {
		name string
		cfg  config.Postgres
		want string
	}{
		{"missing table", config.Postgres{Table: "public.no_such_table", Columns: map[string]string{"id": "value.id"}},
			"sink.postgres.table: table public.no_such_table does not exist"},
		{"missing table on the search_path", config.Postgres{Table: "no_such_table", Columns: map[string]string{"id": "value.id"}},
			"sink.postgres.table: table no_such_table does not exist in the search_path"},
		{"bad table name", config.Postgres{Table: "a.b.c.d", Columns: map[string]string{"id": "value.id"}},
			`sink.postgres.table: "a.b.c.d" is not a valid table name`},
		{"a view", config.Postgres{Table: view, Columns: map[string]string{"id": "value.id"}},
			"is a view, not a table"},
		{"missing column", config.Postgres{Table: table, Columns: map[string]string{"id": "value.id", "amont": "value.amount"}},
			fmt.Sprintf(`sink.postgres.columns.amont: column "amont" does not exist in table public.%s`, table)},
		{"unconvertible source", config.Postgres{Table: "public." + table, Columns: map[string]string{"id": "value.id", "n": "$timestamp"}},
			`sink.postgres.columns.n: source $timestamp cannot be converted to column "n" of type integer`},
		{"no unique index on the keys", config.Postgres{Table: table, Mode: "upsert", KeyColumns: []string{"id"}, Columns: map[string]string{"id": "value.id", "n": "value.n"}},
			fmt.Sprintf("sink.postgres.key_columns: table public.%s has no unique index or constraint on exactly (id), which ON CONFLICT needs (it has (id, region)", table)},
		{"insert with keys needs one too", config.Postgres{Table: table, Mode: "insert", KeyColumns: []string{"n"}, Columns: map[string]string{"n": "value.n"}},
			"sink.postgres.key_columns: table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DSN = config.Secret(testDSN(t))
			s, err := New(t.Context(), tt.cfg, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded, want %q", tt.want)
			}
			t.Logf("New: %v", err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), testDSN(t)) {
				t.Fatalf("err shows the DSN: %q", err)
			}
		})
	}
	// A composite key matches its unique constraint in any order.
	newSink(t, config.Postgres{Table: table, Mode: "upsert", KeyColumns: []string{"region", "id"},
		Columns: map[string]string{"id": "value.id", "region": "value.region", "n": "value.n"}}, Options{})
}

// lockAndWait takes an exclusive lock on table, runs write, and calls
// whileBlocked with the sink's backends once its statement waits for the lock;
// it returns write's error after releasing the lock.
func lockAndWait(t *testing.T, table string, write func() error, whileBlocked func(pids []uint32)) error {
	t.Helper()
	// One connection holds the lock; another watches pg_stat_activity, which
	// a transaction would only see as of its first look.
	watch := admin(t)
	tx, err := admin(t).Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1) // the writer never waits for the test to read
	go func() { done <- write() }()

	var pids []uint32
	deadline := time.Now().Add(10 * time.Second)
	for len(pids) == 0 {
		select {
		case err := <-done:
			t.Fatalf("the write ended before it waited for the lock: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the sink's write never waited for the lock")
		}
		rows, err := watch.Query(t.Context(), `SELECT pid FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, table)
		if err != nil {
			t.Fatal(err)
		}
		if pids, err = pgx.CollectRows(rows, pgx.RowTo[uint32]); err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			time.Sleep(10 * time.Millisecond) // polling a real server: no event to wait on
		}
	}
	if whileBlocked != nil {
		whileBlocked(pids)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the write did not return")
		return nil
	}
}

func TestIntegrationTerminatedBackendIsTransient(t *testing.T) {
	for _, mode := range []string{"insert", "upsert"} {
		t.Run(mode, func(t *testing.T) {
			conn := admin(t)
			table := newTable(t, conn, `CREATE TABLE %s (id bigint PRIMARY KEY, v text)`)
			cfg := config.Postgres{Table: table, Mode: mode, Columns: map[string]string{"id": "value.id", "v": "value.v"}}
			if mode == "upsert" {
				cfg.KeyColumns = []string{"id"}
			}
			s := newSink(t, cfg, Options{Lanes: 1})
			if err := s.Write(t.Context(), batch(t, s, rec(0, `{"id":1,"v":"a"}`))); err != nil {
				t.Fatalf("first Write: %v", err)
			}

			second := batch(t, s, rec(1, `{"id":2,"v":"b"}`), rec(2, `{"id":3,"v":"c"}`))
			err := lockAndWait(t, table, func() error { return s.Write(t.Context(), second) }, func(pids []uint32) {
				for _, pid := range pids {
					var ok bool
					if err := conn.QueryRow(t.Context(), "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
						t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
					}
				}
			})
			t.Logf("write error: %v", err)
			var te *flow.TransientError
			if !errors.As(err, &te) || flow.Classify(err) != flow.ClassTransient {
				t.Fatalf("err = %v (%T), want a *flow.TransientError", err, err)
			}
			if strings.Contains(err.Error(), testDSN(t)) {
				t.Fatalf("err shows the DSN: %q", err)
			}

			// The retry gets a new connection (with its staging table) and succeeds.
			if err := s.Write(t.Context(), second); err != nil {
				t.Fatalf("Write after the backend was terminated: %v", err)
			}
			got := queryStrings(t, conn, "SELECT id || v FROM "+table+" ORDER BY id")
			if want := []string{"1a", "2b", "3c"}; !slices.Equal(got, want) {
				t.Fatalf("table = %v, want %v", got, want)
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("Ping: %v", err)
			}
		})
	}
}

func TestIntegrationWriteTimeoutIsTransient(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint)`)
	s := newSink(t, config.Postgres{Table: table, Columns: map[string]string{"id": "value.id"}}, Options{WriteTimeout: 300 * time.Millisecond})
	b := batch(t, s, rec(0, `{"id":1}`))
	err := lockAndWait(t, table, func() error { return s.Write(t.Context(), b) }, func([]uint32) {
		time.Sleep(time.Second) // past the write timeout, on a real server
	})
	t.Logf("write error: %v", err)
	if flow.Classify(err) != flow.ClassTransient || err == nil {
		t.Fatalf("err = %v, want a transient error", err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code != "57014" {
		t.Fatalf("err = %v, want statement_timeout (57014) or the write's deadline", err)
	}
	if err := s.Write(t.Context(), b); err != nil {
		t.Fatalf("Write after the timeout: %v", err)
	}
}

func TestIntegrationSchemaChangeIsFatal(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint, note text)`)
	s := newSink(t, config.Postgres{Table: table, Columns: map[string]string{"id": "value.id", "note": "value.note"}}, Options{})
	if _, err := conn.Exec(t.Context(), "ALTER TABLE "+table+" DROP COLUMN note"); err != nil {
		t.Fatal(err)
	}
	err := s.Write(t.Context(), batch(t, s, rec(0, `{"id":1,"note":"x"}`)))
	t.Logf("write error: %v", err)
	var fe *flow.FatalError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "42703") {
		t.Fatalf("err = %v (%T), want a *flow.FatalError for the missing column (42703)", err, err)
	}
}
