package postgres

import (
	"errors"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

const missing = "<missing>"

func num(i int64, exp int32) pgtype.Numeric {
	return pgtype.Numeric{Int: big.NewInt(i), Exp: exp, Valid: true}
}

func bigOf(s string) *big.Int {
	b, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic(s)
	}
	return b
}

func uuidOf(s string) [16]byte {
	u, ok := parseUUID(s)
	if !ok {
		panic(s)
	}
	return u
}

// same compares converted values, treating NaN as NaN, times by instant and
// location, and numerics by value.
func same(got, want any) bool {
	switch w := want.(type) {
	case float64:
		g, ok := got.(float64)
		return ok && (g == w || math.IsNaN(g) && math.IsNaN(w))
	case float32:
		g, ok := got.(float32)
		return ok && (g == w || math.IsNaN(float64(g)) && math.IsNaN(float64(w)))
	case time.Time:
		g, ok := got.(time.Time)
		return ok && g.Equal(w) && g.Location() == w.Location()
	case pgtype.Numeric:
		var g pgtype.Numeric
		switch gv := got.(type) {
		case *pgtype.Numeric:
			g = *gv
		case numericValue:
			n, err := gv.NumericValue()
			if err != nil {
				return false
			}
			g = n
		default:
			return false
		}
		if g.Valid != w.Valid || g.NaN != w.NaN || g.InfinityModifier != w.InfinityModifier {
			return false
		}
		if w.Int == nil || w.Int.Sign() == 0 {
			return g.Int == nil || g.Int.Sign() == 0
		}
		// The same number with the same display scale: 1e3 may come as
		// 1000·10^0 or 1·10^3, but 1.50 keeps its two places.
		return g.Int != nil && numericRat(g).Cmp(numericRat(w)) == 0 && max(0, -g.Exp) == max(0, -w.Exp)
	}
	return reflect.DeepEqual(got, want)
}

// numericRat is n's value, Int·10^Exp.
func numericRat(n pgtype.Numeric) *big.Rat {
	r := new(big.Rat).SetInt(n.Int)
	p := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(max(n.Exp, -n.Exp))), nil))
	if n.Exp >= 0 {
		return r.Mul(r, p)
	}
	return r.Quo(r, p)
}

// TestConvertJSON maps {"v": <json>} into a column of each supported type.
func TestConvertJSON(t *testing.T) {
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) time.Time {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC)
	}
	tests := []struct {
		name    string
		oid     uint32
		notNull bool
		json    string // the field's JSON text, or missing
		want    any
		wantErr string // substring of the mapping error
	}{
		// integers
		{"int2", pgtype.Int2OID, false, `12`, int16(12), ""},
		{"int2 max", pgtype.Int2OID, false, `32767`, int16(32767), ""},
		{"int2 too big", pgtype.Int2OID, false, `32768`, nil, "found number 32768, out of range for smallint"},
		{"int2 too small", pgtype.Int2OID, false, `-32769`, nil, "out of range for smallint"},
		{"int2 as string", pgtype.Int2OID, false, `"12"`, int16(12), ""},
		{"int4 max", pgtype.Int4OID, false, `2147483647`, int32(math.MaxInt32), ""},
		{"int4 too big", pgtype.Int4OID, false, `2147483648`, nil, "out of range for integer"},
		{"int8 max", pgtype.Int8OID, false, `9223372036854775807`, int64(math.MaxInt64), ""},
		{"int8 min as string", pgtype.Int8OID, false, `"-9223372036854775808"`, int64(math.MinInt64), ""},
		{"int8 too big", pgtype.Int8OID, false, `9223372036854775808`, nil, "out of range for bigint"},
		{"int8 huge", pgtype.Int8OID, false, `123456789012345678901234567890`, nil, "out of range for bigint"},
		{"int8 huge exponent", pgtype.Int8OID, false, `1e19`, nil, "out of range"},
		{"int8 integral fraction", pgtype.Int8OID, false, `12.0`, int64(12), ""},
		{"int8 integral exponent", pgtype.Int8OID, false, `1e3`, int64(1000), ""},
		{"int8 fraction", pgtype.Int8OID, false, `12.5`, nil, "found number 12.5, not an integer"},
		{"int8 fraction as string", pgtype.Int8OID, false, `"12.5"`, nil, "not an integer"},
		{"int8 bad string", pgtype.Int8OID, false, `"12abc"`, nil, `found string "12abc", want an integer`},
		{"int8 overflowing digits then junk", pgtype.Int8OID, false, `"100000000000000000000A"`, nil, "want an integer"}, // found by FuzzParseInteger
		{"int8 padded string", pgtype.Int8OID, false, `" 12"`, nil, "want an integer"},
		{"int8 empty string", pgtype.Int8OID, false, `""`, nil, "want an integer"},
		{"int8 bool", pgtype.Int8OID, false, `true`, nil, "found boolean true, want an integer"},
		{"int8 object", pgtype.Int8OID, false, `{"a":1}`, nil, "found object, want an integer"},
		{"int8 array", pgtype.Int8OID, false, `[1]`, nil, "found array, want an integer"},
		{"int8 huge exponent named", pgtype.Int8OID, false, `1e999999`, nil, "found number 1e999999, out of range for bigint"},
		{"int8 exponent overflow", pgtype.Int8OID, false, `1e99999999999`, nil, "out of range for bigint"},
		{"int8 100k digits", pgtype.Int8OID, false, strings.Repeat("9", 100_000), nil, "out of range for bigint"},
		{"int8 tiny", pgtype.Int8OID, false, `1e-400`, nil, "not an integer"},
		{"int8 tiny exponent overflow", pgtype.Int8OID, false, `1e-99999999999`, nil, "not an integer"},
		{"int8 zero with exponent", pgtype.Int8OID, false, `0.000e999999`, int64(0), ""},
		{"int8 leading zeros string", pgtype.Int8OID, false, `"` + strings.Repeat("0", 100) + `42"`, int64(42), ""},
		{"int8 beyond 2^53 with exponent is exact", pgtype.Int8OID, false, `9007199254740993e0`, int64(9007199254740993), ""},
		{"int8 max with fraction", pgtype.Int8OID, false, `9223372036854775807.000`, int64(math.MaxInt64), ""},
		{"int8 min with exponent", pgtype.Int8OID, false, `-922337203685477580.8e1`, int64(math.MinInt64), ""},
		{"int8 max plus one with exponent", pgtype.Int8OID, false, `922337203685477580.8e1`, nil, "out of range for bigint"},
		{"int8 fraction deep in zeros", pgtype.Int8OID, false, "1." + strings.Repeat("0", 100_000) + "1", nil, "not an integer"},
		{"int8 many zeros after the point", pgtype.Int8OID, false, "7." + strings.Repeat("0", 100_000), int64(7), ""},
		{"int8 small with negative exponent", pgtype.Int8OID, false, `12000e-3`, int64(12), ""},
		{"int8 just beyond bigint", pgtype.Int8OID, false, `9.3e18`, nil, "out of range for bigint"},
		{"int4 huge names integer", pgtype.Int4OID, false, `123456789012345678901234567890`, nil, "out of range for integer"},
		{"int4 1e999999 names integer", pgtype.Int4OID, false, `1e999999`, nil, "out of range for integer"},
		{"int2 huge names smallint", pgtype.Int2OID, false, `"1e30"`, nil, "out of range for smallint"},

		// floating point
		{"float4", pgtype.Float4OID, false, `1.5`, float32(1.5), ""},
		{"float4 too big", pgtype.Float4OID, false, `1e39`, nil, "out of range for real"},
		{"float4 string", pgtype.Float4OID, false, `"2.25"`, float32(2.25), ""},
		{"float8", pgtype.Float8OID, false, `-1.25e-3`, -1.25e-3, ""},
		{"float8 integer", pgtype.Float8OID, false, `42`, 42.0, ""},
		{"float8 too big", pgtype.Float8OID, false, `1e400`, nil, "out of range for double precision"},
		{"float8 NaN string", pgtype.Float8OID, false, `"NaN"`, math.NaN(), ""},
		{"float8 Infinity string", pgtype.Float8OID, false, `"-Infinity"`, math.Inf(-1), ""},
		{"float8 hex string refused", pgtype.Float8OID, false, `"0x1p3"`, nil, "want a number"},
		{"float8 bad string", pgtype.Float8OID, false, `"abc"`, nil, `found string "abc", want a number`},
		{"float8 bool", pgtype.Float8OID, false, `false`, nil, "want a number"},
		{"float8 1e999999", pgtype.Float8OID, false, `1e999999`, nil, "out of range for double precision"},
		{"float8 -1e999999", pgtype.Float8OID, false, `-1e999999`, nil, "out of range for double precision"},
		{"float8 100k digits", pgtype.Float8OID, false, "1" + strings.Repeat("0", 100_000), nil, "out of range for double precision"},
		{"float8 long fraction", pgtype.Float8OID, false, "0." + strings.Repeat("3", 100_000), 1.0 / 3, ""},
		{"float8 long string", pgtype.Float8OID, false, `"` + strings.Repeat("n", 100_000) + `"`, nil, "want a number"},

		// numeric
		{"numeric", pgtype.NumericOID, false, `12.50`, num(1250, -2), ""},
		{"numeric string", pgtype.NumericOID, false, `"12.50"`, num(1250, -2), ""},
		{"numeric integer", pgtype.NumericOID, false, `42`, num(42, 0), ""},
		{"numeric exponent", pgtype.NumericOID, false, `1e3`, num(1, 3), ""},
		{"numeric negative exponent", pgtype.NumericOID, false, `"-0.5E-3"`, num(-5, -4), ""},
		{"numeric huge", pgtype.NumericOID, false, `123456789012345678901234567890.5`,
			pgtype.Numeric{Int: func() *big.Int { b, _ := new(big.Int).SetString("1234567890123456789012345678905", 10); return b }(), Exp: -1, Valid: true}, ""},
		{"numeric negative", pgtype.NumericOID, false, `-12.5`, num(-125, -1), ""},
		{"numeric plus sign string", pgtype.NumericOID, false, `"+5"`, num(5, 0), ""},
		{"numeric zero", pgtype.NumericOID, false, `-0.00`, num(0, -2), ""},
		{"numeric 19 digits", pgtype.NumericOID, false, `9999999999999999999`,
			pgtype.Numeric{Int: func() *big.Int { b, _ := new(big.Int).SetString("9999999999999999999", 10); return b }(), Valid: true}, ""},
		{"numeric 20 digits", pgtype.NumericOID, false, `-99999999999999999999.5`,
			pgtype.Numeric{Int: func() *big.Int { b, _ := new(big.Int).SetString("-999999999999999999995", 10); return b }(), Exp: -1, Valid: true}, ""},
		{"numeric NaN", pgtype.NumericOID, false, `"NaN"`, pgtype.Numeric{NaN: true, Valid: true}, ""},
		{"numeric Infinity", pgtype.NumericOID, false, `"Infinity"`, pgtype.Numeric{InfinityModifier: pgtype.Infinity, Valid: true}, ""},
		{"numeric exponent out of range", pgtype.NumericOID, false, `1e200000`, nil, "out of range for numeric"},
		{"numeric exponent overflow", pgtype.NumericOID, false, `1e99999999999`, nil, "out of range for numeric"},
		{"numeric bad string", pgtype.NumericOID, false, `"12,50"`, nil, `found string "12,50", want a number`},
		{"numeric 1000 digits", pgtype.NumericOID, false, strings.Repeat("9", 1000), pgtype.Numeric{Int: bigOf(strings.Repeat("9", 1000)), Valid: true}, ""},
		{"numeric 1001 digits", pgtype.NumericOID, false, strings.Repeat("9", 1001), nil, "has 1001 significant digits; sluice writes at most 1000"},
		{"numeric 100k digits", pgtype.NumericOID, false, strings.Repeat("7", 100_000), nil, "has 100000 significant digits"},
		{"numeric 100k digits as string", pgtype.NumericOID, false, `"-` + strings.Repeat("7", 100_000) + `"`, nil, "has 100000 significant digits"},
		{"numeric leading zeros are not digits", pgtype.NumericOID, false, `"` + strings.Repeat("0", 5000) + `1.5"`, num(15, -1), ""},
		{"numeric 1000 after the point", pgtype.NumericOID, false, "0." + strings.Repeat("0", 999) + "1", num(1, -1000), ""},
		{"numeric 1001 after the point", pgtype.NumericOID, false, "1." + strings.Repeat("0", 1001), nil, "has 1001 digits after the point; sluice writes at most 1000"},
		{"numeric tiny exponent", pgtype.NumericOID, false, `1e-16383`, nil, "has 16383 digits after the point"},
		{"numeric 1e999999", pgtype.NumericOID, false, `1e999999`, nil, "out of range for numeric"},
		{"numeric largest weight", pgtype.NumericOID, false, `1e131071`, num(1, 131071), ""},
		{"numeric past the largest weight", pgtype.NumericOID, false, `10e131071`, nil, "out of range for numeric"},
		{"numeric zero with a huge exponent", pgtype.NumericOID, false, `0e999999`, num(0, 0), ""},
		{"numeric zero with a tiny exponent", pgtype.NumericOID, false, `0e-999999`, nil, "has 999999 digits after the point"},
		{"numeric exponent past 32 bits", pgtype.NumericOID, false, `1e-99999999999`, nil, "has more than 2147483647 digits after the point"},
		{"numeric long special-looking string", pgtype.NumericOID, false, `"` + strings.Repeat("x", 100_000) + `"`, nil, "want a number"},
		{"numeric bool", pgtype.NumericOID, false, `true`, nil, "found boolean true, want a number"},

		// text
		{"text", pgtype.TextOID, false, `"abc"`, "abc", ""},
		{"text escapes", pgtype.TextOID, false, `"a\"b\u00e9"`, `a"bé`, ""},
		{"text from number keeps its text", pgtype.TextOID, false, `12.50`, "12.50", ""},
		{"text from bool", pgtype.TextOID, false, `true`, "true", ""},
		{"text from object", pgtype.TextOID, false, `{"a": [1, 2]}`, `{"a": [1, 2]}`, ""},
		{"text from array", pgtype.TextOID, false, `[1,2]`, "[1,2]", ""},
		{"text NUL", pgtype.TextOID, false, `"a\u0000b"`, nil, "contains a NUL character"},
		{"text escaped backslash before u0000", pgtype.TextOID, false, `"a\\u0000b"`, `a\u0000b`, ""},
		{"text invalid UTF-8", pgtype.TextOID, false, "\"a\xffb\"", nil, "not valid UTF-8"},
		{"text invalid UTF-8 with escapes", pgtype.TextOID, false, "\"\\n\xc3\"", nil, "not valid UTF-8"},
		{"text surrogate pair", pgtype.TextOID, false, `"\ud83d\ude00"`, "😀", ""},
		{"text lone high surrogate", pgtype.TextOID, false, `"a\ud800b"`, nil, `contains the escape \ud800, half of a UTF-16 surrogate pair`},
		{"text lone low surrogate", pgtype.TextOID, false, `"\udc00"`, nil, `\udc00, half of a UTF-16 surrogate pair`},
		{"text high surrogate then not low", pgtype.TextOID, false, `"\ud83d\u0041"`, nil, `\ud83d, half of a UTF-16 surrogate pair`},
		{"text object keeps escapes as text", pgtype.TextOID, false, `{"a":"\u0000\ud800"}`, `{"a":"\u0000\ud800"}`, ""},
		{"text object invalid UTF-8", pgtype.TextOID, false, "{\"a\":\"\xff\"}", nil, "not valid UTF-8"},
		{"bool long string", pgtype.BoolOID, false, `"` + strings.Repeat("t", 100_000) + `"`, nil, "want a boolean"},
		{"timestamptz long string", pgtype.TimestamptzOID, false, `"2024-01-02T03:04:05` + strings.Repeat("9", 100_000) + `Z"`, nil, "want an RFC 3339"},
		{"varchar", pgtype.VarcharOID, false, `"abc"`, "abc", ""},
		{"bpchar", pgtype.BPCharOID, false, `"EUR"`, "EUR", ""},

		// bool
		{"bool true", pgtype.BoolOID, false, `true`, true, ""},
		{"bool false", pgtype.BoolOID, false, `false`, false, ""},
		{"bool string", pgtype.BoolOID, false, `"true"`, true, ""},
		{"bool string f", pgtype.BoolOID, false, `"f"`, false, ""},
		{"bool number", pgtype.BoolOID, false, `1`, nil, "found number 1, want a boolean"},
		{"bool bad string", pgtype.BoolOID, false, `"maybe"`, nil, "want a boolean"},

		// times
		{"timestamptz Z", pgtype.TimestamptzOID, false, `"2024-01-02T03:04:05Z"`, utc(2024, 1, 2, 3, 4, 5, 0), ""},
		{"timestamptz offset and fraction", pgtype.TimestamptzOID, false, `"2024-01-02T03:04:05.123456+02:00"`,
			time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.FixedZone("", 2*3600)), ""},
		{"timestamptz space", pgtype.TimestamptzOID, false, `"2024-01-02 03:04:05Z"`, utc(2024, 1, 2, 3, 4, 5, 0), ""},
		{"timestamptz epoch millis", pgtype.TimestamptzOID, false, `1704164645123`, utc(2024, 1, 2, 3, 4, 5, 123e6), ""},
		{"timestamptz without offset", pgtype.TimestamptzOID, false, `"2024-01-02T03:04:05"`, nil, "want an RFC 3339 timestamp with a UTC offset"},
		{"timestamptz fractional millis", pgtype.TimestamptzOID, false, `1704164645123.5`, nil, "not an integer (epoch milliseconds are integers)"},
		{"timestamptz millis out of range", pgtype.TimestamptzOID, false, `1e17`, nil, "found number 1e17, out of range for epoch milliseconds"},
		{"timestamptz millis year 10000", pgtype.TimestamptzOID, false, `253402300800000`, nil, "out of range for epoch milliseconds"},
		{"timestamptz words", pgtype.TimestamptzOID, false, `"yesterday"`, nil, `found string "yesterday", want an RFC 3339`},
		{"timestamptz bool", pgtype.TimestamptzOID, false, `true`, nil, "want an RFC 3339"},
		{"timestamp zoned is UTC wall time", pgtype.TimestampOID, false, `"2024-01-02T03:04:05+02:00"`, utc(2024, 1, 2, 1, 4, 5, 0), ""},
		{"timestamp zoneless as written", pgtype.TimestampOID, false, `"2024-01-02T03:04:05.5"`, utc(2024, 1, 2, 3, 4, 5, 5e8), ""},
		{"timestamp epoch millis", pgtype.TimestampOID, false, `0`, utc(1970, 1, 1, 0, 0, 0, 0), ""},
		{"date", pgtype.DateOID, false, `"2024-01-02"`, utc(2024, 1, 2, 0, 0, 0, 0), ""},
		{"date from timestamp keeps the written date", pgtype.DateOID, false, `"2024-01-02T23:30:00-05:00"`, utc(2024, 1, 2, 0, 0, 0, 0), ""},
		{"date from epoch millis", pgtype.DateOID, false, `1704164645123`, utc(2024, 1, 2, 0, 0, 0, 0), ""},
		{"date bad", pgtype.DateOID, false, `"01/02/2024"`, nil, "want a date"},
		{"date invalid day", pgtype.DateOID, false, `"2024-02-30"`, nil, "want a date"},

		// json
		{"jsonb object", pgtype.JSONBOID, false, `{"a": 1}`, []byte(`{"a": 1}`), ""},
		{"jsonb string", pgtype.JSONBOID, false, `"s"`, []byte(`"s"`), ""},
		{"jsonb number", pgtype.JSONBOID, false, `1.50`, []byte(`1.50`), ""},
		{"jsonb bool", pgtype.JSONBOID, false, `true`, []byte(`true`), ""},
		{"jsonb NUL escape", pgtype.JSONBOID, false, `"a\u0000"`, nil, `contains a \u0000 escape`},
		{"json NUL escape is fine", pgtype.JSONOID, false, `"a\u0000"`, []byte(`"a\u0000"`), ""},
		{"jsonb escaped backslash before u0000", pgtype.JSONBOID, false, `{"a":"\\u0000"}`, []byte(`{"a":"\\u0000"}`), ""},
		{"jsonb NUL escape deep", pgtype.JSONBOID, false, `{"a":[{"b":"x\u0000"}]}`, nil, `contains a \u0000 escape`},
		{"jsonb lone surrogate", pgtype.JSONBOID, false, `{"a":"\udbff"}`, nil, `\udbff, half of a UTF-16 surrogate pair`},
		{"jsonb lone surrogate at the end", pgtype.JSONBOID, false, `"\ud800"`, nil, `\ud800, half of a UTF-16 surrogate pair`},
		{"jsonb surrogate pair", pgtype.JSONBOID, false, `"\uD83D\uDE00"`, []byte(`"\uD83D\uDE00"`), ""},
		{"jsonb invalid UTF-8", pgtype.JSONBOID, false, "[\"\xed\xa0\x80\"]", nil, "not valid UTF-8"},
		{"json lone surrogate is fine", pgtype.JSONOID, false, `"\ud800"`, []byte(`"\ud800"`), ""},
		{"json invalid UTF-8", pgtype.JSONOID, false, "\"\xc0\xaf\"", nil, "not valid UTF-8"},
		{"json array", pgtype.JSONOID, false, `[1, {"b": null}]`, []byte(`[1, {"b": null}]`), ""},

		// bytea
		{"bytea base64", pgtype.ByteaOID, false, `"aGVsbG8="`, []byte("hello"), ""},
		{"bytea base64 unpadded", pgtype.ByteaOID, false, `"aGVsbG8"`, []byte("hello"), ""},
		{"bytea hex", pgtype.ByteaOID, false, `"\\x68656c6c6f"`, []byte("hello"), ""},
		{"bytea empty", pgtype.ByteaOID, false, `""`, []byte{}, ""},
		{"bytea bad", pgtype.ByteaOID, false, `"!!!"`, nil, `want a base64 or \x-hex string`},
		{"bytea bad hex", pgtype.ByteaOID, false, `"\\xzz"`, nil, "want a base64"},
		{"bytea number", pgtype.ByteaOID, false, `12`, nil, "want a base64"},

		// uuid
		{"uuid", pgtype.UUIDOID, false, `"123e4567-e89b-12d3-a456-426614174000"`, uuidOf("123e4567e89b12d3a456426614174000"), ""},
		{"uuid upper", pgtype.UUIDOID, false, `"123E4567-E89B-12D3-A456-426614174000"`, uuidOf("123e4567e89b12d3a456426614174000"), ""},
		{"uuid bare", pgtype.UUIDOID, false, `"123e4567e89b12d3a456426614174000"`, uuidOf("123e4567-e89b-12d3-a456-426614174000"), ""},
		{"uuid bad", pgtype.UUIDOID, false, `"123e4567-e89b-12d3-a456-42661417400g"`, nil, "want a UUID string"},
		{"uuid misplaced dash", pgtype.UUIDOID, false, `"123e4567e-89b-12d3-a456-426614174000"`, nil, "want a UUID string"},
		{"uuid number", pgtype.UUIDOID, false, `12`, nil, "want a UUID string"},

		// null and missing
		{"null into nullable", pgtype.Int8OID, false, `null`, nil, ""},
		{"missing into nullable", pgtype.TextOID, false, missing, nil, ""},
		{"null into NOT NULL", pgtype.Int8OID, true, `null`, nil, `column "c" is NOT NULL but value.v is null`},
		{"missing into NOT NULL", pgtype.TextOID, true, missing, nil, `column "c" is NOT NULL but value.v is missing`},
		{"value into NOT NULL", pgtype.TextOID, true, `"x"`, "x", ""},
	}
	types := pgtype.NewMap()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustMapper(t, testTable(col("c", tt.oid, tt.notNull)), map[string]string{"c": "value.v"})
			value := `{"v": ` + tt.json + `, "w": 1}`
			if tt.json == missing {
				value = `{"w": 1}`
			}
			row, err := m.mapRecord(&record.Record{Value: []byte(value)})
			if tt.wantErr != "" {
				var pe *flow.PoisonError
				if !errors.As(err, &pe) || pe.Reason != flow.ReasonMapping {
					t.Fatalf("err = %v, want a mapping *flow.PoisonError", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %q, want it to contain %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), `column "c"`) || !strings.Contains(err.Error(), "value.v") {
					t.Fatalf("err = %q, want it to name the column and the path", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("mapRecord: %v", err)
			}
			if len(row) != 1 {
				t.Fatalf("row = %v, want 1 value", row)
			}
			if !same(row[0], tt.want) {
				t.Fatalf("value = %#v (%T), want %#v (%T)", row[0], row[0], tt.want, tt.want)
			}
			// What Map returns, pgx can write in a binary COPY.
			if _, err := types.Encode(tt.oid, pgtype.BinaryFormatCode, row[0], nil); err != nil {
				t.Fatalf("pgx cannot encode %#v for OID %d: %v", row[0], tt.oid, err)
			}
		})
	}
}

// TestConvertedValuesDoNotAliasTheRecord checks that text read from the JSON
// value does not share the value's memory (a row outlives nothing it points to
// but the record, and text must not change if the bytes did).
func TestConvertedValuesDoNotAliasTheRecord(t *testing.T) {
	tbl := testTable(col("s", pgtype.TextOID, false), col("n", pgtype.TextOID, false), col("o", pgtype.TextOID, false))
	m := mustMapper(t, tbl, map[string]string{"s": "value.s", "n": "value.n", "o": "value.o"})
	value := []byte(`{"s": "abc", "n": 12.5, "o": {"x": 1}}`)
	row, err := m.mapRecord(&record.Record{Value: value})
	if err != nil {
		t.Fatal(err)
	}
	for i := range value {
		value[i] = 'X'
	}
	if row[0] != "abc" || row[1] != "12.5" || row[2] != `{"x": 1}` {
		t.Fatalf("row = %q after the value changed", row)
	}
}

func TestIsDecimal(t *testing.T) {
	for s, want := range map[string]bool{
		"1": true, "-1": true, "+1": true, "1.5": true, ".5": true, "5.": true, "1e3": true, "1E-3": true, "-0.5e+10": true,
		"": false, "-": false, ".": false, "e3": false, "1e": false, "1e+": false, "1.2.3": false, "0x10": false,
		" 1": false, "1 ": false, "1_000": false, "NaN": false, "Inf": false,
	} {
		if got := isDecimal(s); got != want {
			t.Errorf("isDecimal(%q) = %v, want %v", s, got, want)
		}
	}
}
