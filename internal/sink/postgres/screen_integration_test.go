//go:build integration

package postgres

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// TestIntegrationCheckScreen: a batch with many rows that break the table's
// CHECK constraints comes back with every one of them named, in one Write, in
// each write mode; from then on the sink writes the rest of such a batch
// without them, until enough clean batches went by.
func TestIntegrationCheckScreen(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint PRIMARY KEY,
		amount numeric(12,2) CONSTRAINT amount_positive CHECK (amount >= 0),
		"Qty" int, note text,
		CONSTRAINT qty_small CHECK ("Qty" < 100),
		CONSTRAINT note_short CHECK (length(note) < 20),
		CONSTRAINT pair CHECK (amount < 1000 OR "Qty" > 1))`)
	cols := map[string]string{"id": "value.id", "amount": "value.amount", "Qty": "value.qty"} // note is not written
	// want: the first constraint of each bad row, in the screen's order (by name).
	want := map[int]string{}
	var recs []*record.Record
	for i := range 200 {
		v := fmt.Sprintf(`{"id":%d,"amount":%d.25,"qty":%d}`, i, i, i%50)
		switch i % 10 {
		case 3:
			v, want[i] = fmt.Sprintf(`{"id":%d,"amount":-%d,"qty":1}`, i, i), "amount_positive"
		case 7:
			v, want[i] = fmt.Sprintf(`{"id":%d,"amount":1,"qty":%d}`, i, 100+i), "qty_small"
		case 9:
			if i%20 == 19 {
				v, want[i] = fmt.Sprintf(`{"id":%d,"amount":5000,"qty":1}`, i), "pair"
			} else {
				v = fmt.Sprintf(`{"id":%d,"amount":null,"qty":null}`, i) // NULL passes a CHECK
			}
		}
		recs = append(recs, rec(int64(i), v))
	}
	for _, cfg := range []config.Postgres{
		{Table: table, Columns: cols},
		{Table: table, Mode: "upsert", KeyColumns: []string{"id"}, Columns: cols},
		{Table: table, Mode: "insert", KeyColumns: []string{"id"}, Columns: cols},
	} {
		t.Run(cfg.Mode+fmt.Sprint(cfg.KeyColumns), func(t *testing.T) {
			if _, err := conn.Exec(t.Context(), "TRUNCATE "+table); err != nil {
				t.Fatal(err)
			}
			s := newSink(t, cfg, Options{})
			if s.screen == nil || len(s.screen.checks) != 3 {
				t.Fatalf("screen %+v, want the 3 checks on written columns (not note_short)", s.screen)
			}
			if s.screen.pre == nil {
				t.Fatal("no prescreen: the three checks are comparisons with constants, ANDed and ORed")
			}
			b := batch(t, s, recs...)
			checkRejected := func(re *flow.RejectedError) {
				t.Helper()
				got := map[int]string{}
				for k, row := range re.Rows {
					c := re.Causes[k]
					if c.Code != "23514" || c.Reason != "sink_rejected" {
						t.Errorf("row %d: cause %+v, want sink_rejected 23514", row, c)
					}
					for _, name := range []string{"amount_positive", "qty_small", "pair"} {
						if strings.Contains(c.Error(), `"`+name+`"`) {
							got[row] = name
						}
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("rejected rows and constraints\n got  %v\n want %v", got, want)
				}
			}
			re := asRejected(t, s.Write(t.Context(), b))
			checkRejected(re)
			if re.Written || count(t, conn, "SELECT count(*) FROM "+table) != 0 {
				t.Fatalf("the first rejection wrote rows (Written %v)", re.Written)
			}
			// From now on a write takes the refused rows out first and
			// writes the rest in the same transaction.
			if !s.screening.Load() {
				t.Fatal("screening is off after a batch broke a CHECK")
			}
			re = asRejected(t, s.Write(t.Context(), b))
			checkRejected(re)
			if !re.Written {
				t.Fatalf("the second rejection: Written false, want the rest written")
			}
			if n := count(t, conn, "SELECT count(*) FROM "+table); n != int64(200-len(want)) {
				t.Fatalf("%d rows in the table, want %d", n, 200-len(want))
			}
			// Clean batches go through the screen until screenQuiet of them
			// found nothing; then it is off.
			for i := range screenQuiet {
				if !s.screening.Load() {
					t.Fatalf("screening off after %d clean writes, want %d", i, screenQuiet)
				}
				id := 1000 + i
				if err := s.Write(t.Context(), batch(t, s, rec(int64(id), fmt.Sprintf(`{"id":%d,"amount":1,"qty":1}`, id)))); err != nil {
					t.Fatalf("Write of a clean batch with the screen on: %v", err)
				}
			}
			if s.screening.Load() {
				t.Fatalf("screening still on after %d clean writes", screenQuiet)
			}
			if n := count(t, conn, "SELECT count(*) FROM "+table); n != int64(200-len(want)+screenQuiet) {
				t.Fatalf("%d rows in the table, want %d", n, 200-len(want)+screenQuiet)
			}
		})
	}
}

// TestIntegrationCheckScreenFallsBack: a check the screen cannot evaluate
// (a domain's, on the element type of its array) leaves the row PostgreSQL
// named.
func TestIntegrationCheckScreenFallsBack(t *testing.T) {
	conn := admin(t)
	if _, err := conn.Exec(t.Context(), `DO $$ BEGIN CREATE DOMAIN sink_test_screen_pos AS numeric CHECK (VALUE > 0);
		EXCEPTION WHEN duplicate_object THEN NULL; END $$`); err != nil {
		t.Fatal(err)
	}
	table := newTable(t, conn, `CREATE TABLE %s (id bigint, price sink_test_screen_pos, amount numeric CHECK (amount > price))`)
	s := newSink(t, config.Postgres{Table: table, Columns: map[string]string{"id": "value.id", "price": "value.price", "amount": "value.amount"}}, Options{})
	var recs []*record.Record
	for i := range 10 {
		v := fmt.Sprintf(`{"id":%d,"price":1,"amount":2}`, i)
		switch i {
		case 4:
			v = fmt.Sprintf(`{"id":%d,"price":-1,"amount":2}`, i) // the domain's check
		case 8:
			v = fmt.Sprintf(`{"id":%d,"price":3,"amount":2}`, i) // the table's
		}
		recs = append(recs, rec(int64(i), v))
	}
	re := asRejected(t, s.Write(t.Context(), batch(t, s, recs...)))
	if !slices.Equal(re.Rows, []int{4}) || re.Causes[0].Code != "23514" {
		t.Fatalf("rows %v causes %v; want row 4 (the first COPY refused) alone", re.Rows, re.Causes)
	}
}

// TestIntegrationPrescreenMissFallsBack: a prescreen that lets a bad row
// through costs a failed COPY, never a wrong write: the write still names
// every bad row, and from then on the screen sends every row.
func TestIntegrationPrescreenMissFallsBack(t *testing.T) {
	conn := admin(t)
	table := newTable(t, conn, `CREATE TABLE %s (id bigint, amount numeric(12,2) CONSTRAINT amount_positive CHECK (amount >= 0))`)
	s := newSink(t, config.Postgres{Table: table, Columns: map[string]string{"id": "value.id", "amount": "value.amount"}}, Options{})
	if s.screen == nil || s.screen.pre == nil {
		t.Fatalf("screen %+v: want one with a prescreen for amount >= 0", s.screen)
	}
	var recs []*record.Record
	var want []int
	for i := range 50 {
		v := fmt.Sprintf(`{"id":%d,"amount":%d.5}`, i, i)
		if i%7 == 3 {
			v, want = fmt.Sprintf(`{"id":%d,"amount":-%d}`, i, i), append(want, i)
		}
		recs = append(recs, rec(int64(i), v))
	}
	b := batch(t, s, recs...)
	rowsOf := func(re *flow.RejectedError) []int {
		got := slices.Clone(re.Rows)
		slices.Sort(got)
		return got
	}
	if re := asRejected(t, s.Write(t.Context(), b)); !slices.Equal(rowsOf(re), want) || re.Written {
		t.Fatalf("first write: rows %v written %v, want %v refused and nothing written", rowsOf(re), re.Written, want)
	}

	// The real prescreen flags exactly the bad rows here, and a batch with
	// none of them sends no query at all (no querier: it would panic).
	if got := s.screen.pre.suspects(b.Rows); !slices.Equal(got, want) {
		t.Fatalf("prescreen suspects %v, want %v", got, want)
	}
	clean := batch(t, s, rec(100, `{"id":100,"amount":1}`), rec(101, `{"id":101,"amount":2}`))
	if rows, _, err := s.screen.find(t.Context(), nil, clean, true); err != nil || rows != nil {
		t.Fatalf("find over a clean batch: %v, %v; want nothing, without a query", rows, err)
	}

	s.screen.pre = &prescreen{op: "and"} // flags nothing: PostgreSQL refuses the COPY
	re := asRejected(t, s.Write(t.Context(), b))
	if !slices.Equal(rowsOf(re), want) || re.Written {
		t.Fatalf("write past a prescreen that missed: rows %v written %v, want %v refused and nothing written", rowsOf(re), re.Written, want)
	}
	if !s.prescreenMissed.Load() {
		t.Fatal("the sink still prescreens after a miss")
	}
	re = asRejected(t, s.Write(t.Context(), b))
	if !slices.Equal(rowsOf(re), want) || !re.Written {
		t.Fatalf("next write: rows %v written %v, want %v refused and the rest written", rowsOf(re), re.Written, want)
	}
	if n := count(t, conn, "SELECT count(*) FROM "+table); n != int64(50-len(want)) {
		t.Fatalf("%d rows in the table, want %d", n, 50-len(want))
	}
}
