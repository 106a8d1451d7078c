package postgres

import (
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/flow"
)

// The screen sends numerics as text; each must read back as the same number
// pgx would have sent in binary.
func TestAppendNumericMatchesPgx(t *testing.T) {
	m := pgtype.NewMap()
	for _, in := range []string{
		"0", "0.00", "-0.0", "7", "-7", "123.25", "-123.25", "0.05", "-0.05", "0.000001", "1e5", "-1.5e-7", "2.5E+3",
		"12345678901234567890.123", "-98765432109876543210987654321e-40", "9223372036854775807", "-9223372036854775808",
		"-9223372036854775808.5", "100", "1.10",
	} {
		v, p := toNumeric(in)
		if p != "" {
			t.Fatalf("toNumeric(%q): %s", in, p)
		}
		n, ok := v.(*pgtype.Numeric)
		if !ok {
			pn, err := v.(numericValue).NumericValue() // the big.Int form of the same number
			if err != nil {
				t.Fatal(err)
			}
			n = &pn
		}
		got := string(appendNumeric([]byte("x"), n))[1:]
		want, err := m.Encode(pgtype.NumericOID, pgtype.TextFormatCode, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		g, ok1 := new(big.Rat).SetString(got)
		w, ok2 := new(big.Rat).SetString(string(want))
		r, ok3 := new(big.Rat).SetString(in)
		if !ok1 || !ok2 || !ok3 || g.Cmp(w) != 0 || g.Cmp(r) != 0 || strings.ContainsAny(got, "eE") {
			t.Errorf("%s: appendNumeric %q, pgx %q", in, got, want)
		}
	}
	for _, tt := range []struct {
		n    pgtype.Numeric
		want string
	}{
		{pgtype.Numeric{NaN: true, Valid: true}, "NaN"},
		{pgtype.Numeric{InfinityModifier: pgtype.Infinity, Valid: true}, "Infinity"},
		{pgtype.Numeric{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, "-Infinity"},
	} {
		if got := string(appendNumeric(nil, &tt.n)); got != tt.want {
			t.Errorf("appendNumeric(%+v) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

// A COPY that fails after the screen took rows out names a row of what it
// copied; withRefused turns that into the batch's row and adds the taken ones.
func TestWithRefusedMapsRowsBack(t *testing.T) {
	s := &Sink{plan: &plan{tableName: "public.orders"}}
	for _, tt := range []struct {
		refused []int
		named   int // by the failed COPY, in the rows it copied
		want    int // in the batch
	}{
		{nil, 3, 3},
		{[]int{1, 3}, 0, 0},
		{[]int{1, 3}, 1, 2},
		{[]int{1, 3}, 2, 4},
		{[]int{0, 1, 2}, 0, 3},
		{[]int{5}, 4, 4},
		{[]int{5}, 5, 6},
	} {
		names := make([]string, len(tt.refused))
		for i := range names {
			names[i] = "c"
		}
		cause := &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: "23502"}
		err := s.withRefused(&flow.RejectedError{Rows: []int{tt.named}, Causes: []*flow.PoisonError{cause}, Err: errors.New("x")}, tt.refused, names)
		var re *flow.RejectedError
		if !errors.As(err, &re) || re.Written {
			t.Fatalf("%+v: %v", tt, err)
		}
		want := append([]int{tt.want}, tt.refused...)
		if !slices.Equal(re.Rows, want) || re.Causes[0] != cause || len(re.Causes) != len(want) {
			t.Errorf("refused %v, COPY named %d: rows %v, want %v", tt.refused, tt.named, re.Rows, want)
		}
		for _, c := range re.Causes[1:] {
			if c.Code != "23514" || !strings.Contains(c.Error(), `"c"`) {
				t.Errorf("cause %v of a refused row", c)
			}
		}
	}
	// Without rows named (or any other error) it stays as it is.
	plain := &flow.RejectedError{Err: errors.New("x")}
	if got := s.withRefused(plain, []int{1}, []string{"c"}); got != plain {
		t.Errorf("withRefused of a rejection without rows = %v", got)
	}
}

// The screen sends numericValue as text too; it must be the number pgx
// would write, with its display scale.
func TestNumericValueText(t *testing.T) {
	for _, in := range []string{"0", "7", "-7", "123.25", "-0.05", "0.000001", "1e5", "-1.5e-7", "2.5E+3", "100", "1.10",
		"12345678.9012", "9999.9999", "-10000", "0.0001", "1e-12", "1234567890123456.7890123"} {
		v, p := toNumeric(in)
		if p != "" {
			t.Fatalf("toNumeric(%q): %s", in, p)
		}
		nv, ok := v.(numericValue)
		if !ok {
			t.Fatalf("toNumeric(%q) makes %T, not numericValue", in, v)
		}
		got := string(nv.appendText(nil))
		pn, err := nv.NumericValue()
		if err != nil {
			t.Fatal(err)
		}
		want := string(appendNumeric(nil, &pn))
		g, _ := new(big.Rat).SetString(got)
		r, _ := new(big.Rat).SetString(in)
		if got != want || g == nil || g.Cmp(r) != 0 {
			t.Errorf("%s: appendText %q, want %q", in, got, want)
		}
	}
}
