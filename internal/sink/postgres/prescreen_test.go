package postgres

import (
	"math"
	"slices"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// prescreenTable has one column of each type the prescreen reads, and one
// it does not.
func prescreenTable() (*tableDef, []string) {
	cols := []column{
		{Name: "a", TypeOID: pgtype.NumericOID, Type: "numeric(12,2)"},
		{Name: "b", TypeOID: pgtype.Int8OID, Type: "bigint"},
		{Name: "c", TypeOID: pgtype.Int4OID, Type: "integer"},
		{Name: "d", TypeOID: pgtype.NumericOID, Type: "numeric"},
		{Name: "e", TypeOID: pgtype.Float8OID, Type: "double precision"},
		{Name: "Qty", TypeOID: pgtype.Int2OID, Type: "smallint"},
		{Name: "h", TypeOID: pgtype.TextOID, Type: "text"},
		{Name: "m", TypeOID: pgtype.NumericOID, Type: "money_amount"}, // a domain
		{Name: "r", TypeOID: pgtype.Float4OID, Type: "real"},
	}
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return &tableDef{Schema: "public", Name: "t", Columns: cols}, names
}

func dec(t *testing.T, s string) any {
	t.Helper()
	v, p := toNumeric(s)
	if p != "" {
		t.Fatalf("toNumeric(%q): %s", s, p)
	}
	return v
}

// The expressions are pg_get_expr's, as PostgreSQL 15 printed them for
// CHECK (a >= 0), (b > 0), (c <= -5), (d > 0.5 AND d < 100), (e <> 3.5),
// (d >= -1.25), (c BETWEEN 1 AND 10), (0 <= c), ("Qty" < 100),
// (a < 1000 OR "Qty" > 1). A value at the bound passes >= and <=, but the
// prescreen flags it all the same: it allows for float64's error.
func TestPrescreenFlagsWhatMayFail(t *testing.T) {
	tbl, cols := prescreenTable()
	row := func(field int, v any) record.Row {
		r := make(record.Row, len(cols))
		r[field] = v
		return r
	}
	a, b, c, d, e, qty, r := 0, 1, 2, 3, 4, 5, 8
	for _, tc := range []struct {
		expr string
		pass []record.Row // rows that cannot fail
		fail []record.Row // rows that may
	}{
		{"(a >= (0)::numeric)",
			[]record.Row{row(a, dec(t, "0.02")), row(a, dec(t, "1000000.5")), row(a, nil), row(b, int64(-1))},
			// -0.004 rounds to 0.00 and passes, but it is within the scale: flagged, PostgreSQL decides
			[]record.Row{row(a, dec(t, "-1")), row(a, dec(t, "0")), row(a, dec(t, "-0.004")), row(a, dec(t, "0.004")),
				row(a, &pgtype.Numeric{NaN: true, Valid: true})}},
		{"(b > 0)", []record.Row{row(b, int64(1)), row(b, int64(math.MaxInt64))}, []record.Row{row(b, int64(0)), row(b, int64(-7))}},
		{"(c <= '-5'::integer)", []record.Row{row(c, int32(-6)), row(c, int32(-1000))}, []record.Row{row(c, int32(-5)), row(c, int32(-4)), row(c, int32(5))}},
		{"((d > 0.5) AND (d < (100)::numeric))", []record.Row{row(d, dec(t, "0.51")), row(d, dec(t, "99.999"))},
			[]record.Row{row(d, dec(t, "0.5")), row(d, dec(t, "100")), row(d, dec(t, "-3")), row(d, dec(t, "1e9"))}},
		{"(e <> (3.5)::double precision)", []record.Row{row(e, 3.6), row(e, -3.5)}, []record.Row{row(e, 3.5), row(e, math.NaN()), row(e, math.Inf(1))}},
		{"(d >= '-1.25'::numeric)", []record.Row{row(d, dec(t, "-1.2")), row(d, dec(t, "12345678901234567890"))}, []record.Row{row(d, dec(t, "-1.25")), row(d, dec(t, "-1.26"))}},
		{"((c >= 1) AND (c <= 10))", []record.Row{row(c, int32(2)), row(c, int32(9))}, []record.Row{row(c, int32(1)), row(c, int32(0)), row(c, int32(11))}},
		{"(0 <= c)", []record.Row{row(c, int32(3))}, []record.Row{row(c, int32(0)), row(c, int32(-1))}},
		{`("Qty" < 100)`, []record.Row{row(qty, int16(99))}, []record.Row{row(qty, int16(100))}},
		{`((a < (1000)::numeric) OR ("Qty" > 1))`,
			[]record.Row{{dec(t, "5"), nil, nil, nil, nil, int16(0), nil, nil, nil}, {dec(t, "5000"), nil, nil, nil, nil, int16(2), nil, nil, nil},
				{dec(t, "5000"), nil, nil, nil, nil, nil, nil, nil, nil}}, // NULL OR false is NULL: passes
			[]record.Row{{dec(t, "5000"), nil, nil, nil, nil, int16(1), nil, nil, nil}}},
		{"(r > (0.1)::double precision)", []record.Row{row(r, float32(0.2))}, []record.Row{row(r, float32(0.1)), row(r, float32(0))}},
	} {
		p := newPrescreen(tbl, cols, []checkDef{{Name: "x", Expr: tc.expr}})
		if p == nil {
			t.Errorf("%s: no prescreen, want one", tc.expr)
			continue
		}
		for _, rw := range tc.pass {
			if p.mayFail(rw) {
				t.Errorf("%s: flags %v, which cannot fail", tc.expr, rw)
			}
		}
		for _, rw := range tc.fail {
			if !p.mayFail(rw) {
				t.Errorf("%s: passes %v, which may fail: PostgreSQL would refuse a row the prescreen let through", tc.expr, rw)
			}
		}
		got := p.suspects(append(slices.Clone(tc.pass), tc.fail...))
		want := make([]int, len(tc.fail))
		for i := range want {
			want[i] = len(tc.pass) + i
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: suspects %v, want %v", tc.expr, got, want)
		}
	}
}

// A check the prescreen cannot read leaves the table without one: the screen
// then sends every row.
func TestPrescreenRefusesWhatItCannotRead(t *testing.T) {
	tbl, cols := prescreenTable()
	for _, expr := range []string{
		"(length(h) > 0)", "(b IS NOT NULL)", "(a > d)", "(b = 5)", "(h > 'x'::text)", "((b)::numeric > (0)::numeric)",
		"(m > (0)::numeric)", // a domain's scale is unknown
		"(zz > 0)",           // not a written column
		"(b > 1e5)",          // a constant form pg_get_expr does not write
		"((b > 0) OR (h <> ''::text))",
	} {
		if p := newPrescreen(tbl, cols, []checkDef{{Name: "x", Expr: expr}}); p != nil {
			t.Errorf("%s: a prescreen %+v, want none", expr, p)
		}
	}
	good := checkDef{Name: "ok", Expr: "(b > 0)"}
	if p := newPrescreen(tbl, cols, []checkDef{good, {Name: "x", Expr: "(length(h) > 0)"}}); p != nil {
		t.Errorf("one readable and one unreadable check: a prescreen, want none")
	}
	if p := newPrescreen(tbl, cols, []checkDef{good}); p == nil {
		t.Errorf("%s: no prescreen", good.Expr)
	}
}

func TestNumericValueFloat64(t *testing.T) {
	for _, s := range []string{"0", "1", "-1", "0.5", "123.25", "-0.004", "1e9", "12345678901234567890", "0.00001234", "-98765.4321", "1e-30"} {
		v, ok := dec(t, s).(numericValue)
		if !ok {
			t.Fatalf("%s: not a numericValue", s)
		}
		want, _ := strconv.ParseFloat(s, 64)
		if got := v.float64(); math.Abs(got-want) > 1e-12*math.Max(1, math.Abs(want)) {
			t.Errorf("%s: float64() = %v, want %v", s, got, want)
		}
	}
}

func TestSplitTopAndUnwrap(t *testing.T) {
	for _, tc := range []struct {
		in, sep string
		want    []string
	}{
		{"(a > 0) AND (b < 1)", " AND ", []string{"(a > 0)", "(b < 1)"}},
		{"((a > 0) AND (b < 1)) OR (c <> 2)", " AND ", []string{"((a > 0) AND (b < 1)) OR (c <> 2)"}},
		{`("x AND y" > 0) AND (h <> ' AND '::text)`, " AND ", []string{`("x AND y" > 0)`, `(h <> ' AND '::text)`}},
		{"a >= (0)::numeric", " >= ", []string{"a", "(0)::numeric"}},
	} {
		if got := splitTop(tc.in, tc.sep); !slices.Equal(got, tc.want) {
			t.Errorf("splitTop(%q, %q) = %q, want %q", tc.in, tc.sep, got, tc.want)
		}
	}
	for in, want := range map[string]string{
		"(a > 0)": "a > 0", "((a > 0) AND (b < 1))": "(a > 0) AND (b < 1)",
		"(0)::numeric": "", "(a > 0) AND (b < 1)": "", "(h <> ')'::text)": "h <> ')'::text", "a": "",
	} {
		got, ok := unwrap(in)
		if (want != "") != ok || (ok && got != want) {
			t.Errorf("unwrap(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
