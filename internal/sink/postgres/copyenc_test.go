package postgres

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// pgxField is one field of a binary COPY row as pgx's CopyFrom writes it: the
// length, -1 for NULL, then pgx's encoding of v for the column's type.
func pgxField(t *testing.T, oid uint32, v any) []byte {
	t.Helper()
	buf, err := stockMap.Encode(oid, pgtype.BinaryFormatCode, v, binary.BigEndian.AppendUint32(nil, 0))
	if err != nil {
		t.Fatalf("pgx encodes %T %v for OID %d: %v", v, v, oid, err)
	}
	if buf == nil {
		return binary.BigEndian.AppendUint32(nil, math.MaxUint32)
	}
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-4))
	return buf
}

// oidOf is a column type of each kind.
var oidOf = map[kind]uint32{
	kindInt2: pgtype.Int2OID, kindInt4: pgtype.Int4OID, kindInt8: pgtype.Int8OID,
	kindFloat4: pgtype.Float4OID, kindFloat8: pgtype.Float8OID, kindNumeric: pgtype.NumericOID,
	kindText: pgtype.TextOID, kindBool: pgtype.BoolOID, kindTimestamptz: pgtype.TimestamptzOID,
	kindTimestamp: pgtype.TimestampOID, kindDate: pgtype.DateOID, kindJSON: pgtype.JSONOID,
	kindJSONB: pgtype.JSONBOID, kindBytea: pgtype.ByteaOID, kindUUID: pgtype.UUIDOID,
}

// asPgx is a value and what pgx is given for the same value.
type asPgx struct{ v, pgx any }

// TestCopyValuesAreWhatPgxWrites encodes values the conversion gives each kind
// of column, and some it never gives, with sluice's COPY encoder and with pgx,
// and wants the same bytes.
func TestCopyValuesAreWhatPgxWrites(t *testing.T) {
	// num is a numeric as the conversion makes it, with pgx's own type for
	// the same number: pgx writes a numericValue given to it through
	// NumericValue, an equal value in other digits (trailing zero groups).
	num := func(s string) any {
		t.Helper()
		v, p := toNumeric(s)
		if p != "" {
			t.Fatalf("numeric from %q: %s", s, p)
		}
		neg, mant, exp := decimalParts(t, s)
		return asPgx{v: v, pgx: pgxNumeric(t, neg, mant, exp)}
	}
	from := func(k kind, s string) any {
		t.Helper()
		v, p := fromString(k, s)
		if p != "" {
			t.Fatalf("%s from %q: %s", kindNames[k], s, p)
		}
		return v
	}
	cases := map[kind][]any{
		kindInt2:    {from(kindInt2, "0"), from(kindInt2, "-32768"), from(kindInt2, "32767")},
		kindInt4:    {from(kindInt4, "-2147483648"), from(kindInt4, "7"), int32(math.MaxInt32)},
		kindInt8:    {from(kindInt8, "-9223372036854775808"), from(kindInt8, "42"), int64(math.MaxInt64)},
		kindFloat4:  {from(kindFloat4, "1.5"), from(kindFloat4, "-3.4e38"), from(kindFloat4, "NaN"), from(kindFloat4, "-Infinity")},
		kindFloat8:  {from(kindFloat8, "0.1"), from(kindFloat8, "-0"), from(kindFloat8, "1e308"), from(kindFloat8, "Infinity")},
		kindNumeric: {num("123.45"), num("-0.0001"), num("1e30"), num("0"), num("-9223372036854775808"), from(kindNumeric, "NaN"), from(kindNumeric, "-Infinity")},
		kindText:    {"", "customer-000042", "ünïcode ✓", "tab\tand\nnewline"},
		kindBool:    {from(kindBool, "true"), from(kindBool, "false")},
		kindTimestamptz: {from(kindTimestamptz, "2026-01-01T00:00:00Z"), from(kindTimestamptz, "1969-12-31T23:59:59.999999+02:00"),
			from(kindTimestamptz, "0001-01-01T00:00:00Z"), from(kindTimestamptz, "9999-12-31T23:59:59.123456-08:00")},
		kindTimestamp: {from(kindTimestamp, "2026-11-29T03:15:54.5Z"), from(kindTimestamp, "1900-02-28T12:00:00+05:30"),
			time.Date(2026, 1, 1, 12, 0, 0, 0, time.FixedZone("UTC+3", 3*3600))},
		kindDate: {from(kindDate, "2000-01-01"), from(kindDate, "1999-12-31"), from(kindDate, "0001-01-01"), from(kindDate, "9999-12-31"),
			from(kindDate, "2026-06-30T23:30:00-02:00")},
		kindJSON:  {[]byte(`{"a":1}`), []byte(`[1, 2, "x"]`)},
		kindJSONB: {[]byte(`{"a":1}`), []byte(`"text"`)},
		kindBytea: {[]byte{}, []byte{0, 1, 2, 255}, from(kindBytea, `\xdeadbeef`)},
		kindUUID:  {from(kindUUID, "123e4567-e89b-12d3-a456-426614174000")},
	}
	for k := kindInt2; k <= kindUUID; k++ {
		vs, ok := cases[k]
		if !ok {
			t.Errorf("no cases for kind %s", kindNames[k])
			continue
		}
		for _, v := range append(vs, nil) {
			pgxV := v
			if a, ok := v.(asPgx); ok {
				v, pgxV = a.v, a.pgx
			}
			got, err := appendValue(nil, stockMap, k, oidOf[k], v)
			if err != nil {
				t.Errorf("%s %T %v: %v", kindNames[k], v, v, err)
				continue
			}
			if want := pgxField(t, oidOf[k], pgxV); !bytes.Equal(got, want) {
				t.Errorf("%s %T %v:\n got % x\nwant % x", kindNames[k], v, v, got, want)
			}
		}
	}
}

// TestCopyValueOfAnUnexpectedTypeNamesIt: a value no conversion gives a
// column of its kind fails with a message naming both, and leaves the buffer
// as it was.
func TestCopyValueOfAnUnexpectedTypeNamesIt(t *testing.T) {
	buf := []byte("before")
	got, err := appendValue(buf, stockMap, kindUUID, pgtype.UUIDOID, struct{ x int }{1})
	if err == nil {
		t.Fatal("encoding a struct into a uuid column succeeded")
	}
	if want := "encode a struct { x int } for a column of type uuid"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if string(got) != "before" {
		t.Errorf("buffer after the failure = %q, want it as it was", got)
	}
}

// TestCopyStreamIsWhatPgxWrites reads whole streams from copyReader, in
// reads of several sizes and over more than one chunk, and wants pgx's stream
// for the same rows: the header, each row's field count and fields (the
// staging index last), and the trailer.
func TestCopyStreamIsWhatPgxWrites(t *testing.T) {
	fields := []field{
		{col: column{Name: "id", TypeOID: pgtype.Int8OID}, kind: kindInt8},
		{col: column{Name: "customer", TypeOID: pgtype.TextOID}, kind: kindText},
		{col: column{Name: "amount", TypeOID: pgtype.NumericOID}, kind: kindNumeric},
		{col: column{Name: "at", TypeOID: pgtype.TimestamptzOID}, kind: kindTimestamptz},
	}
	amount, _ := toNumeric("12.34")
	at := time.Date(2026, 11, 29, 3, 15, 54, 0, time.UTC)
	for _, n := range []int{0, 1, 3000} {
		rows := make([]record.Row, n)
		for i := range rows {
			rows[i] = record.Row{int64(i), "customer-" + string(rune('a'+i%26)), amount, at.Add(time.Duration(i) * time.Millisecond)}
			if i%7 == 3 {
				rows[i][1] = nil
			}
		}
		for _, ord := range []bool{false, true} {
			target := newCopyTarget(pgx.Identifier{"t"}, []string{"id", "customer", "amount", "at"}, fields, ord)
			want := append([]byte("PGCOPY\n\377\r\n\000"), 0, 0, 0, 0, 0, 0, 0, 0)
			for i, row := range rows {
				want = binary.BigEndian.AppendUint16(want, uint16(len(row)+boolInt(ord)))
				for c, v := range row {
					want = append(want, pgxField(t, fields[c].col.TypeOID, v)...)
				}
				if ord {
					want = append(want, pgxField(t, pgtype.Int4OID, int32(i))...)
				}
			}
			want = append(want, 0xff, 0xff)
			for _, readSize := range []int{1, 7, 65531} {
				r := newCopyReader(target, stockMap, rows)
				got, err := io.ReadAll(&limitedReads{r: r, n: readSize})
				if err != nil {
					t.Fatalf("%d rows, ord %v, reads of %d: %v", n, ord, readSize, err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%d rows, ord %v, reads of %d: stream of %d bytes differs from pgx's %d bytes", n, ord, readSize, len(got), len(want))
				}
			}
		}
	}
	sql := newCopyTarget(pgx.Identifier{"s", "t"}, []string{"id", "Customer"}, fields[:2], false).sql
	if want := `COPY "s"."t" ("id", "Customer") FROM STDIN BINARY`; sql != want {
		t.Errorf("COPY statement = %q, want %q", sql, want)
	}
}

// limitedReads reads at most n bytes a call, as a slow consumer would.
type limitedReads struct {
	r io.Reader
	n int
}

func (l *limitedReads) Read(p []byte) (int, error) { return l.r.Read(p[:min(len(p), l.n)]) }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
