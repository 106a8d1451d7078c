package postgres

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// fuzzMappers are the mappings FuzzMap runs every record through: one column
// of each type the sink writes, read from value paths (plain, nested,
// indexed), the key and a header; and the whole value into jsonb and json.
func fuzzMappers(tb testing.TB) []*mapper {
	tb.Helper()
	wide := mustMapper(tb, testTable(
		col("i2", pgtype.Int2OID, false), col("i4", pgtype.Int4OID, false), col("i8", pgtype.Int8OID, false),
		col("f4", pgtype.Float4OID, false), col("f8", pgtype.Float8OID, false), col("n", pgtype.NumericOID, false),
		col("t", pgtype.TextOID, false), col("vc", pgtype.VarcharOID, false), col("b", pgtype.BoolOID, false),
		col("ts", pgtype.TimestamptzOID, false), col("tl", pgtype.TimestampOID, false), col("d", pgtype.DateOID, false),
		col("j", pgtype.JSONOID, false), col("jb", pgtype.JSONBOID, false), col("by", pgtype.ByteaOID, false),
		col("u", pgtype.UUIDOID, false), col("nested", pgtype.TextOID, false), col("idx", pgtype.NumericOID, false),
		col("k", pgtype.TextOID, false), col("h", pgtype.JSONBOID, false), col("deep", pgtype.JSONBOID, false),
	), map[string]string{
		"i2": "value.i2", "i4": "value.i4", "i8": "value.i8", "f4": "value.f4", "f8": "value.f8", "n": "value.n",
		"t": "value.t", "vc": "value.a.t", "b": "value.b", "ts": "value.ts", "tl": "value.ts", "d": "value.d",
		"j": "value.j", "jb": "value.j", "by": "value.by", "u": "value.u", "nested": "value.a.b.c",
		"idx": "value.items.0.n", "k": "$key", "h": "$headers.h", "deep": "value.a.b",
	})
	whole := mustMapper(tb, testTable(col("v", pgtype.JSONBOID, false), col("vj", pgtype.JSONOID, false), col("n", pgtype.NumericOID, false)),
		map[string]string{"v": "$value", "vj": "$value", "n": "value.n"})
	// The same source into every type: each conversion sees every kind of value.
	every := map[string]string{}
	var cols []column
	for oid := range typeNames {
		if _, ok := kindOf(oid); !ok {
			continue
		}
		name := fmt.Sprintf("c%d", oid)
		cols = append(cols, col(name, oid, false))
		every[name] = "value.x"
	}
	return []*mapper{wide, whole, mustMapper(tb, testTable(cols...), every)}
}

// fuzzSeeds are records of every hostile class and some good ones:
// key, value, header h.
var fuzzSeeds = [][3]string{
	{"k", `{"i2":1,"i4":2,"i8":3,"f4":1.5,"f8":-2.5e-3,"n":"12.50","t":"ok","a":{"t":"v","b":{"c":1}},"b":true,` +
		`"ts":"2024-01-02T03:04:05Z","d":"2024-01-02","j":{"x":[1,2]},"by":"aGVsbG8=","u":"123e4567-e89b-12d3-a456-426614174000",` +
		`"items":[{"n":1}],"x":"7"}`, `{"h":1}`},
	{"", `{"x":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `}`, ""},
	{"", `{"a":{"b":` + strings.Repeat(`{"c":`, 70) + `1` + strings.Repeat("}", 70) + `}}`, ""},
	{"", strings.Repeat("[", 5000), ""},
	{"", "{\"t\":\"\xff\xfe\",\"x\":\"\xc3\x28\"}", ""},
	{"\xff", `{"t":"a\u0000b","x":"\u0000"}`, "\xc0"},
	{"a\x00b", "{\"t\":\"a\x00b\"}", ""},
	{"", `{"j":{"a":"\u0000"},"x":"\ud800"}`, `"\udc00"`},
	{"", `{"j":{"a":"\\u0000"},"x":"\\ud800"}`, ""},
	{"", `{"n":` + strings.Repeat("9", 2000) + `,"x":1e999999,"i8":1e999999}`, ""},
	{"", `{"n":1e-999999,"x":-1e-99999999999,"f8":1e400,"f4":1e39,"i2":1e5}`, ""},
	{"", `{"n":"NaN","x":"-Infinity","i8":"9223372036854775808","i4":9.2e18}`, ""},
	{"", `{"x":1,"x":2}`, ""},
	{"", `{"j":{"a":1,"\u0061":2}}`, `{"a":1,"a":2}`},
	{"", `{"items":[{"n":1,"n":2}]}`, ""},
	{"", `[{"x":1}]`, ""},
	{"", `"just a string"`, "[]"},
	{"", ``, ""},
	{"", `{"x":"` + strings.Repeat("9", 3000) + `"}`, ""},
	{"", `{"x":"2024-01-02T03:04:05.123456789+23:59"}`, ""},
	{"", `{"x":"\\x` + strings.Repeat("ab", 100) + `","by":"\\xzz"}`, ""},
}

// FuzzMap maps arbitrary records with mappings that read every column type
// from value paths, the key and a header. Map must never panic and must
// return either a row that pgx can encode for the columns' types, holding
// only what PostgreSQL accepts, or a *flow.PoisonError with reason decode or
// mapping; and its memory must stay a small multiple of the record.
func FuzzMap(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s[0]), []byte(s[1]), []byte(s[2]))
	}
	mappers := fuzzMappers(f)
	types := pgtype.NewMap()
	f.Fuzz(func(t *testing.T, key, value, header []byte) {
		r := &record.Record{Key: key, Value: value, Headers: []record.Header{{Key: "h", Value: header}}}
		for _, m := range mappers {
			start := time.Now()
			row, err := m.mapRecord(r)
			// A hang guard, not a speed check: a record maps in microseconds
			// to milliseconds; only a runaway loop takes this long.
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("mapping a %d-byte record took %s", len(key)+len(value)+len(header), d)
			}
			if err != nil {
				var pe *flow.PoisonError
				if !errors.As(err, &pe) || (pe.Reason != flow.ReasonDecode && pe.Reason != flow.ReasonMapping) {
					t.Fatalf("err = %v (%T), want a decode or mapping *flow.PoisonError", err, err)
				}
				if len(err.Error()) > 1024 {
					t.Fatalf("the error is %d bytes; it must quote a snippet of the record, not all of it", len(err.Error()))
				}
				continue
			}
			if len(row) != len(m.fields) {
				t.Fatalf("row has %d values for %d columns", len(row), len(m.fields))
			}
			for i, v := range row {
				checkStorable(t, types, &m.fields[i], v)
			}
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _ = mappers[0].mapRecord(r)
		runtime.ReadMemStats(&after)
		if n, limit := after.TotalAlloc-before.TotalAlloc, uint64(8*(len(key)+len(value)+len(header))+64<<10); n > limit {
			t.Fatalf("mapping a %d-byte record allocated %d bytes, more than %d", len(key)+len(value)+len(header), n, limit)
		}
	})
}

// checkStorable fails unless v, mapped for f's column, is what PostgreSQL
// takes for it: pgx encodes it for the column's type, text is valid UTF-8
// without NUL, and JSON is valid and within the nesting bound, and for jsonb
// without a duplicate key, \u0000 or a lone surrogate.
func checkStorable(t *testing.T, types *pgtype.Map, f *field, v any) {
	t.Helper()
	if v == nil {
		if f.col.NotNull {
			t.Fatalf("column %s is NOT NULL but mapped to NULL", f.col.Name)
		}
		return
	}
	if _, err := types.Encode(f.col.TypeOID, pgtype.BinaryFormatCode, v, nil); err != nil {
		t.Fatalf("column %s (%s): pgx cannot encode %#v: %v", f.col.Name, f.col.Type, v, err)
	}
	switch f.kind {
	case kindText:
		s, ok := v.(string)
		if !ok || !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			t.Fatalf("column %s (text) = %q: not text PostgreSQL can hold", f.col.Name, v)
		}
	case kindJSON, kindJSONB:
		b, ok := v.([]byte)
		if !ok {
			t.Fatalf("column %s (%s) = %#v, want JSON bytes", f.col.Name, f.col.Type, v)
		}
		if res := scanValue(b, &pathTree{}, nil, nil); res.status != scanOK || !utf8.Valid(b) {
			t.Fatalf("column %s (%s) = %q: %+v, want valid JSON within the nesting bound", f.col.Name, f.col.Type, b, res)
		}
		if f.kind != kindJSONB {
			return
		}
		if key, dup := documentDuplicate(b, new(keySetPool)); dup {
			t.Fatalf("column %s (jsonb) = %q gives the key %q twice", f.col.Name, b, key)
		}
		if p := escapeProblem(b, true); p != "" {
			t.Fatalf("column %s (jsonb) = %q: %s", f.col.Name, b, p)
		}
	}
}

// FuzzParseInteger checks the exact integer reader against math/big on any
// decimal text.
func FuzzParseInteger(f *testing.F) {
	for _, s := range []string{"0", "-0", "12", "12.0", "1e3", "12000e-3", "9223372036854775807", "-9223372036854775808",
		"9223372036854775808", "9.2e18", "1e-400", "0.000e999999", "1e99999999999", "-1e-99999999999", "007", "1.5", ".5", "5.",
		"922337203685477580.8e1", "-922337203685477580.8e1", "+1", "1E+2", strings.Repeat("0", 40) + "1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, p := parseInteger(s)
		want, exact := exactInteger(s)
		switch {
		case !isDecimal(s):
			if p != wrongType {
				t.Fatalf("parseInteger(%q) = %d, %q; want wrong type", s, v, p)
			}
		case !exact:
			if p == "" {
				t.Fatalf("parseInteger(%q) = %d; it is not an integer in int64's range", s, v)
			}
		case p != "" || v != want:
			t.Fatalf("parseInteger(%q) = %d, %q; want %d", s, v, p, want)
		}
	})
}

// exactInteger is FuzzParseInteger's oracle: the value of the decimal s, and
// whether it is an integer in int64's range, computed with math/big.
func exactInteger(s string) (int64, bool) {
	if !isDecimal(s) {
		return 0, false
	}
	mant, exp := s, int64(0)
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.ParseInt(s[i+1:], 10, 64)
		if err != nil { // beyond int64: as good as infinite
			e = math.MaxInt32
			if s[i+1] == '-' {
				e = math.MinInt32
			}
		}
		mant, exp = s[:i], e
	}
	if strings.HasSuffix(mant, ".") {
		mant += "0"
	}
	if j := strings.IndexByte(mant, '.'); j == 0 || j == 1 && (mant[0] == '-' || mant[0] == '+') {
		mant = mant[:j] + "0" + mant[j:]
	}
	r, ok := new(big.Rat).SetString(mant)
	if !ok {
		panic("not a decimal: " + mant)
	}
	switch {
	case r.Sign() == 0:
		return 0, true
	case exp > int64(len(mant))+25: // at least 10^25 in magnitude
		return 0, false
	case exp < -int64(len(mant))-25: // less than 1 in magnitude
		return 0, false
	}
	scale := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(max(exp, -exp)), nil))
	if exp >= 0 {
		r.Mul(r, scale)
	} else {
		r.Quo(r, scale)
	}
	if !r.IsInt() || !r.Num().IsInt64() {
		return 0, false
	}
	return r.Num().Int64(), true
}
