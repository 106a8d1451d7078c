//go:build integration

package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// offsetsTableName returns a fresh name for an offsets table that sluice
// creates, dropped when the test ends.
func offsetsTableName(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "sink_test_offsets_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS public."+name); err != nil {
			t.Errorf("drop table %s: %v", name, err)
		}
	})
	return "public." + name
}

// eoSink is an exactly-once sink on table (columns id, kafka_partition,
// kafka_offset) and the offsets table given, for group.
func eoSink(t *testing.T, table, offsets, group string, mode string, keys ...string) *Sink {
	t.Helper()
	return newSink(t, config.Postgres{Table: table, Mode: mode, KeyColumns: keys, Delivery: config.DeliveryExactlyOnce, OffsetsTable: offsets,
		Columns: map[string]string{"id": "value.id", "kafka_partition": "$partition", "kafka_offset": "$offset"}},
		Options{Group: group, WriteTimeout: 10 * time.Second})
}

// eoBatch maps records of partition p (generation gen) at offsets and
// gives the batch the position next.
func eoBatch(t *testing.T, s *Sink, p int32, gen uint64, next int64, offsets ...int64) *record.Batch {
	t.Helper()
	var recs []*record.Record
	for _, off := range offsets {
		r := rec(off, fmt.Sprintf(`{"id":%d}`, off))
		r.Partition, r.Ticket.Generation = p, gen
		recs = append(recs, r)
	}
	b := batch(t, s, recs...)
	b.Positions = []record.Position{{Partition: record.Partition{Topic: "orders", Partition: p}, Next: next, Generation: gen}}
	return b
}

func storedOffset(t *testing.T, conn *pgx.Conn, offsets, group string, p int32) (next int64, gen int32) {
	t.Helper()
	err := conn.QueryRow(t.Context(), `SELECT next_offset, generation FROM `+offsets+` WHERE consumer_group = $1 AND topic = 'orders' AND "partition" = $2`,
		group, p).Scan(&next, &gen)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return next, gen
}

func asFenced(t *testing.T, err error) *flow.FencedError {
	t.Helper()
	var fe *flow.FencedError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v (%T), want a *flow.FencedError", err, err)
	}
	return fe
}

func orders(p int32) record.Partition { return record.Partition{Topic: "orders", Partition: p} }

// The positions go into the offsets table with the rows; expected is what the
// table holds (offsets have gaps), and a write of positions alone moves them
// past dead letters.
func TestIntegrationExactlyOnceStoresPositionsWithTheRows(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`)
	offsets := offsetsTableName(t, conn)
	s := eoSink(t, table, offsets, "g1", "insert")

	stored, err := s.Claim(t.Context(), 4, map[record.Partition]uint64{orders(0): 1, orders(1): 1})
	if err != nil || len(stored) != 0 {
		t.Fatalf("Claim on a new offsets table = %v, %v; want no positions", stored, err)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 6, 0, 1, 5)); err != nil {
		t.Fatalf("first write (inserts the row): %v", err)
	}
	if next, gen := storedOffset(t, conn, offsets, "g1", 0); next != 6 || gen != 4 {
		t.Fatalf("stored %d (generation %d), want 6 (4)", next, gen)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 10, 9)); err != nil { // expects 6, not 9
		t.Fatalf("second write, past a gap: %v", err)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 12)); err != nil { // 10 and 11 were dead-lettered
		t.Fatalf("write of positions alone: %v", err)
	}
	if next, _ := storedOffset(t, conn, offsets, "g1", 0); next != 12 {
		t.Fatalf("stored %d, want 12", next)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 12)); err != nil {
		t.Fatalf("write that moves nothing: %v", err)
	}
	if n := count(t, conn, "SELECT count(*) FROM "+table); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
	if next, _ := storedOffset(t, conn, offsets, "g1", 1); next != -1 {
		t.Fatalf("orders/1 has a row (%d) without a write", next)
	}
	// Another group's positions are its own.
	other := eoSink(t, table, offsets, "g2", "insert")
	if stored, err := other.Claim(t.Context(), 1, map[record.Partition]uint64{orders(0): 1}); err != nil || len(stored) != 0 {
		t.Fatalf("group g2 reads %v, %v; want nothing", stored, err)
	}
	// A new assignment reads what was stored.
	stored, err = s.Claim(t.Context(), 5, map[record.Partition]uint64{orders(0): 2})
	if err != nil || stored[orders(0)] != 12 {
		t.Fatalf("Claim = %v, %v; want orders/0 at 12", stored, err)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 14, 12, 13)); err == nil {
		t.Fatal("a write of the previous assignment succeeded after the new claim")
	} else {
		asFenced(t, err)
	}
}

func count(t *testing.T, conn *pgx.Conn, q string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(t.Context(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// Two writers believe they own one partition: one of them is a zombie (paused
// past a rebalance). Whichever reaches the table second with a stale expected
// offset is rolled back by the compare-and-set; nothing is written twice.
func TestIntegrationExactlyOnceFencesAZombie(t *testing.T) {
	for _, mode := range []string{"insert", "upsert"} {
		t.Run(mode, func(t *testing.T) {
			conn := admin(t)
			ddl := `CREATE TABLE %s (id bigint NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`
			var keys []string
			if mode == "upsert" {
				ddl = `CREATE TABLE %s (id bigint PRIMARY KEY, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`
				keys = []string{"id"}
			}
			table := newTable(t, conn, ddl)
			offsets := offsetsTableName(t, conn)
			owner := eoSink(t, table, offsets, "g", mode, keys...)
			zombie := eoSink(t, table, offsets, "g", mode, keys...)
			claim := func(s *Sink, gen uint64) int64 {
				stored, err := s.Claim(t.Context(), int32(gen), map[record.Partition]uint64{orders(0): gen})
				if err != nil {
					t.Fatal(err)
				}
				if off, ok := stored[orders(0)]; ok {
					return off
				}
				return -1
			}

			// Both claim the partition while it has no row.
			claim(zombie, 1)
			claim(owner, 2)
			if err := owner.Write(t.Context(), eoBatch(t, owner, 0, 2, 5, 0, 1, 2, 3, 4)); err != nil {
				t.Fatal(err)
			}
			// The zombie's first write would insert the row: it is there.
			fe := asFenced(t, zombie.Write(t.Context(), eoBatch(t, zombie, 0, 1, 3, 0, 1, 2)))
			if len(fe.Partitions) != 1 || fe.Partitions[0] != orders(0) {
				t.Fatalf("fenced %v, want orders/0", fe.Partitions)
			}
			// Fenced once, the zombie's claim refuses every further write
			// without asking the database.
			asFenced(t, zombie.Write(t.Context(), eoBatch(t, zombie, 0, 1, 6, 3, 4, 5)))

			// The zombie seeks again (new claim at 5); now the owner is
			// the stale one.
			if off := claim(zombie, 3); off != 5 {
				t.Fatalf("zombie reclaims at %d, want 5", off)
			}
			if err := zombie.Write(t.Context(), eoBatch(t, zombie, 0, 3, 8, 5, 6, 7)); err != nil {
				t.Fatal(err)
			}
			asFenced(t, owner.Write(t.Context(), eoBatch(t, owner, 0, 2, 8, 5, 6, 7)))

			if n := count(t, conn, "SELECT count(*) FROM "+table); n != 8 {
				t.Errorf("%d rows, want 8", n)
			}
			if n := count(t, conn, "SELECT count(DISTINCT kafka_offset) FROM "+table); n != 8 {
				t.Errorf("%d distinct offsets, want 8: a record was written twice", n)
			}
			if next, gen := storedOffset(t, conn, offsets, "g", 0); next != 8 || gen != 3 {
				t.Errorf("stored %d (generation %d), want 8 (3)", next, gen)
			}
		})
	}
}

// A write whose rows the database rejects stores no position either: the
// transaction is one.
func TestIntegrationExactlyOnceRejectedRowsMoveNothing(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint NOT NULL CHECK (id <> 13), kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`)
	offsets := offsetsTableName(t, conn)
	s := eoSink(t, table, offsets, "g", "insert")
	if _, err := s.Claim(t.Context(), 1, map[record.Partition]uint64{orders(0): 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), eoBatch(t, s, 0, 1, 10, 0, 1, 2)); err != nil {
		t.Fatal(err)
	}
	re := asRejected(t, s.Write(t.Context(), eoBatch(t, s, 0, 1, 20, 11, 12, 13, 14)))
	if len(re.Rows) != 1 || re.Rows[0] != 2 {
		t.Fatalf("rejected rows %v, want [2]", re.Rows)
	}
	if next, _ := storedOffset(t, conn, offsets, "g", 0); next != 10 {
		t.Fatalf("stored %d after a rejected write, want 10", next)
	}
	// The lane writes the rest with the same positions once the DLQ has 13.
	b := eoBatch(t, s, 0, 1, 20, 11, 12, 14)
	if err := s.Write(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if next, _ := storedOffset(t, conn, offsets, "g", 0); next != 20 {
		t.Fatalf("stored %d, want 20", next)
	}
}

func TestIntegrationExactlyOnceOffsetsTable(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint NOT NULL, kafka_partition int NOT NULL, kafka_offset bigint NOT NULL)`)
	cols := map[string]string{"id": "value.id"}
	t.Run("created with the documented schema", func(t *testing.T) {
		offsets := offsetsTableName(t, conn)
		eoSink(t, table, offsets, "g", "insert")
		got := queryStrings(t, conn, `SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns
			WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position`, strings.TrimPrefix(offsets, "public."))
		want := []string{"consumer_group text NO", "topic text NO", "partition integer NO", "next_offset bigint NO",
			"generation integer NO", "updated_at timestamp with time zone NO"}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Fatalf("offsets table columns %v, want %v", got, want)
		}
		eoSink(t, table, offsets, "g", "insert") // a second start finds it
	})
	for _, tt := range []struct {
		name, ddl, want string
	}{
		{"a column missing", `(consumer_group text, topic text, "partition" int, next_offset bigint, PRIMARY KEY (consumer_group, topic, "partition"))`, "it has no column generation"},
		{"a wrong type", `(consumer_group text, topic text, "partition" int, next_offset int, generation int, updated_at timestamptz, PRIMARY KEY (consumer_group, topic, "partition"))`, "column next_offset is integer, not bigint"},
		{"no key", `(consumer_group text, topic text, "partition" int, next_offset bigint, generation int, updated_at timestamptz)`, "no primary key or unique index"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			offsets := offsetsTableName(t, conn)
			if _, err := conn.Exec(t.Context(), "CREATE TABLE "+offsets+" "+tt.ddl); err != nil {
				t.Fatal(err)
			}
			s, err := New(t.Context(), config.Postgres{DSN: config.Secret(testDSN(t)), Table: table, Delivery: config.DeliveryExactlyOnce,
				OffsetsTable: offsets, Columns: cols}, Options{Group: "g"})
			if err == nil {
				s.Close()
				t.Fatal("New accepted the table")
			}
			if !strings.Contains(err.Error(), "sink.postgres.offsets_table") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v; want sink.postgres.offsets_table and %q", err, tt.want)
			}
		})
	}
	t.Run("the target table", func(t *testing.T) {
		s, err := New(t.Context(), config.Postgres{DSN: config.Secret(testDSN(t)), Table: table, Delivery: config.DeliveryExactlyOnce,
			OffsetsTable: table, Columns: cols}, Options{Group: "g"})
		if err == nil {
			s.Close()
			t.Fatal("New accepted the target table as the offsets table")
		}
	})
}
