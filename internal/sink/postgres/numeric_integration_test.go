//go:build integration

package postgres

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// numericValue written by the sink's binary COPY reads back from PostgreSQL as the same
// number PostgreSQL makes of its decimal text, display scale included, into
// an unconstrained numeric column and into a numeric(12,2) one.
func TestNumericRoundTrip(t *testing.T) {
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, testDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.WithoutCancel(ctx)) })
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE numeric_rt (i int, v numeric, m numeric(12,2))"); err != nil {
		t.Fatal(err)
	}
	values := []string{
		"0", "-0", "0.00", "-0.00", "1", "-1", "12.5", "12.50", "-12.345", "0.005", "0.00005", "1e3", "1.5e3",
		"1.5E-3", "-2.5e+7", "5e-5", "10000", "9999.9999", "123456789012345678", "-9223372036854775808",
		"3.14159265358979323846", "1e-40", "9999999999999999999999999999999999999", "1234567890.12",
	}
	var rows []record.Row
	for i, s := range values {
		neg, mant, exp := decimalParts(t, s)
		n, ok := numericFromDecimal(neg, mant, "", exp)
		if !ok {
			t.Fatalf("%q: numericFromDecimal refused it", s)
		}
		var m any // numeric(12,2) takes only what fits it
		if len(strings.TrimLeft(strings.Split(strings.TrimLeft(s, "-"), ".")[0], "0")) <= 10 && !strings.ContainsAny(s, "eE") {
			m = n
		}
		rows = append(rows, record.Row{int32(i), n, m})
	}
	// Through the sink's own COPY encoder, as the sink writes them.
	target := newCopyTarget(pgx.Identifier{"numeric_rt"}, []string{"i", "v", "m"}, []field{
		{col: column{Name: "i", TypeOID: pgtype.Int4OID}, kind: kindInt4},
		{col: column{Name: "v", TypeOID: pgtype.NumericOID}, kind: kindNumeric},
		{col: column{Name: "m", TypeOID: pgtype.NumericOID}, kind: kindNumeric},
	}, false)
	if _, err := conn.PgConn().CopyFrom(ctx, newCopyReader(target, conn.TypeMap(), rows), target.sql); err != nil {
		t.Fatalf("copy: %v", err)
	}
	for i, s := range values {
		var got, want string
		var gotM, wantM *string
		err := conn.QueryRow(ctx, `SELECT v::text, m::text, $2::numeric::text, CASE WHEN m IS NULL THEN NULL ELSE $2::numeric(12,2)::text END
			FROM numeric_rt WHERE i = $1`, i, s).Scan(&got, &gotM, &want, &wantM)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if got != want {
			t.Errorf("%q: PostgreSQL read %s, want %s", s, got, want)
		}
		if (gotM == nil) != (wantM == nil) || gotM != nil && *gotM != *wantM {
			t.Errorf("%q: numeric(12,2) read %v, want %v", s, gotM, wantM)
		}
	}
}
