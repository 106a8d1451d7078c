package postgres

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

func TestParseSource(t *testing.T) {
	tests := []struct {
		in      string
		kind    sourceKind
		arg     string
		wantErr string
	}{
		{"$key", srcKey, "", ""},
		{"$topic", srcTopic, "", ""},
		{"$partition", srcPartition, "", ""},
		{"$offset", srcOffset, "", ""},
		{"$timestamp", srcTimestamp, "", ""},
		{"$value", srcValue, "", ""},
		{"$headers.trace-id", srcHeader, "trace-id", ""},
		{"$headers.a.b", srcHeader, "a.b", ""},
		{"value.id", srcPath, "id", ""},
		{"value.customer.name", srcPath, "customer.name", ""},
		{"value.items.0.sku", srcPath, "items.0.sku", ""},
		{`value.a\.b`, srcPath, `a\.b`, ""},
		{"", 0, "", "empty source"},
		{"value", 0, "", "use $value for the whole value"},
		{"value.", 0, "", "empty JSON path"},
		{"value.a..b", 0, "", "empty key"},
		{"value.a.", 0, "", "empty key"},
		{`value.a\`, 0, "", "lone backslash"},
		{"value.items.#", 0, "", "only plain dot paths"},
		{"value.a*", 0, "", "only plain dot paths"},
		{"value.a|b", 0, "", "only plain dot paths"},
		{"value.@this", 0, "", "only plain dot paths"},
		{"$headers.", 0, "", "names no header"},
		{"$header.x", 0, "", "headers are written $headers.<name>"},
		{"$value.id", 0, "", "a field of the value is written value.id"},
		{"$offsets", 0, "", `unknown source "$offsets" (want $key`},
		{"id", 0, "", `unknown source "id"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := parseSource(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSource(%q) err = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseSource(%q): %v", tt.in, err)
			}
			if s.kind != tt.kind || s.arg != tt.arg || s.String() != tt.in {
				t.Fatalf("parseSource(%q) = %+v", tt.in, s)
			}
		})
	}
}

func TestNewMapperRefuses(t *testing.T) {
	tbl := testTable(
		col("id", pgtype.Int8OID, true),
		col("amount", pgtype.NumericOID, false),
		col("n", pgtype.Int4OID, false),
		col("tags", pgtype.Int4ArrayOID, false),
		column{Name: "total", TypeOID: pgtype.NumericOID, Type: "numeric", Generated: true},
	)
	tests := []struct {
		mapping map[string]string
		want    []string
	}{
		{map[string]string{"amont": "value.amount"},
			[]string{`sink.postgres.columns.amont: column "amont" does not exist in table public.orders`}},
		{map[string]string{"Amount": "value.amount"},
			[]string{`sink.postgres.columns.Amount: column "Amount" does not exist in table public.orders (did you mean "amount"?)`}},
		{map[string]string{"n": "$timestamp"},
			[]string{`sink.postgres.columns.n: source $timestamp cannot be converted to column "n" of type integer`}},
		{map[string]string{"n": "$offset"},
			[]string{`sink.postgres.columns.n: source $offset cannot be converted to column "n" of type integer`}},
		{map[string]string{"id": "$topic"},
			[]string{`sink.postgres.columns.id: source $topic cannot be converted to column "id" of type bigint`}},
		{map[string]string{"tags": "value.tags"},
			[]string{`sink.postgres.columns.tags: column "tags" has type integer[], which the postgres sink cannot write`}},
		{map[string]string{"total": "value.total"},
			[]string{`sink.postgres.columns.total: column "total" of table public.orders is a generated column`}},
		{map[string]string{"id": "value..id"},
			[]string{`sink.postgres.columns.id: source "value..id": JSON path has an empty key`}},
		{map[string]string{},
			[]string{`sink.postgres.columns: no columns are mapped`}},
		{map[string]string{"id": "value.id", "nope": "value.x", "n": "$timestamp"}, // every problem, in key order
			[]string{"sink.postgres.columns.n: source $timestamp", "sink.postgres.columns.nope: column \"nope\" does not exist"}},
	}
	for _, tt := range tests {
		_, err := newMapper(tbl, tt.mapping)
		if err == nil {
			t.Errorf("newMapper(%v) = nil error, want %q", tt.mapping, tt.want)
			continue
		}
		msg := err.Error()
		last := -1
		for _, w := range tt.want {
			i := strings.Index(msg, w)
			if i < 0 || i < last {
				t.Errorf("newMapper(%v) err = %q, want it to contain %q (in order)", tt.mapping, msg, tt.want)
			}
			last = i
		}
	}
}

func TestMapperColumnsInTableOrder(t *testing.T) {
	tbl := testTable(col("c", pgtype.TextOID, false), col("a", pgtype.TextOID, false), col("b", pgtype.TextOID, false), col("unmapped", pgtype.TextOID, true))
	m := mustMapper(t, tbl, map[string]string{"b": "value.b", "a": "value.a", "c": "value.c"})
	if got := m.columns(); !slices.Equal(got, []string{"c", "a", "b"}) {
		t.Fatalf("columns = %v, want table order [c a b]", got)
	}
	row, err := m.mapRecord(&record.Record{Value: []byte(`{"a":"1","b":"2","c":"3"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(row, record.Row{"3", "1", "2"}) {
		t.Fatalf("row = %v", row)
	}
}

func TestMapDecodeErrors(t *testing.T) {
	m := mustMapper(t, testTable(col("id", pgtype.Int8OID, false)), map[string]string{"id": "value.id"})
	for name, value := range map[string][]byte{
		"invalid":   []byte(`{"id": 1`),
		"not json":  []byte(`id=1`),
		"empty":     {},
		"tombstone": nil,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := m.mapRecord(&record.Record{Value: value})
			var pe *flow.PoisonError
			if !errors.As(err, &pe) || pe.Reason != flow.ReasonDecode {
				t.Fatalf("err = %v, want a decode *flow.PoisonError", err)
			}
		})
	}
	// A mapping that reads no JSON does not care whether the value is JSON.
	m = mustMapper(t, testTable(col("raw", pgtype.ByteaOID, false), col("o", pgtype.Int8OID, false)),
		map[string]string{"raw": "$value", "o": "$offset"})
	row, err := m.mapRecord(&record.Record{Value: []byte("not json"), Offset: 7})
	if err != nil || string(row[0].([]byte)) != "not json" || row[1] != int64(7) {
		t.Fatalf("row, err = %v, %v", row, err)
	}
}

// TestMapJSONFields reads fields where the JSON value is unusual: escaped
// keys, a key with a dot, a value that is not an object, and keys given twice,
// which make the value ambiguous wherever a field is read from the object that
// has them (reason decode, naming the key), and do not matter elsewhere: text
// keeps an object as it is. (jsonb, which keeps one of the two, is in
// TestMapHostileRecords.)
func TestMapJSONFields(t *testing.T) {
	tests := []struct {
		path, value string
		want        any    // nil: NULL
		dup         string // the key the decode error names; "" when the record maps
	}{
		{"value.id", `{"\u0069d":"escaped"}`, "escaped", ""},
		{`value.a\.b`, `{"a":{"b":"nested"},"a.b":"dotted"}`, "dotted", ""},
		{"value.items.1.sku", `{"items":[{"sku":"A"},{"sku":"B"}]}`, "B", ""},
		{"value.0.id", `[{"id":"in an array"}]`, "in an array", ""},
		{"value.id", `"{\"id\":\"in a string\"}"`, nil, ""},
		{"value.id", `17`, nil, ""},
		{"value.id", ` {"x":{"id":"deeper"}} `, nil, ""},
		{"value.id", `{"id":"first","id":"second"}`, nil, "id"},
		{"value.id", `{"id":null,"id":"second"}`, nil, "id"},
		{"value.id", `{"id":"x","\u0069d":"y"}`, nil, "id"}, // one key, once unescaped
		{"value.a.b", `{"a":"x","a":{"b":"nested"}}`, nil, "a"},
		{"value.a.b", `{"a":{"b":"first"},"a":{"b":"second"}}`, nil, "a"},
		{"value.a.b", `{"a":{"b":"first","b":"second"}}`, nil, "b"},
		{"value.items.0.sku", `{"items":[{"sku":"A","sku":"B"}]}`, nil, "sku"},
		{"value.items.0.sku", `{"items":[{"sku":"A"},{"qty":1,"qty":2}]}`, nil, "qty"}, // the array gjson reads from
		{"value.0.id", `[{"id":1,"id":2}]`, nil, "id"},
		{"value.doc", `{"doc":{"a":[{"k":1,"k":2}]}}`, `{"a":[{"k":1,"k":2}]}`, ""}, // text keeps the JSON as it is
		// Keys given twice where the mapping neither reads nor stores them.
		{"value.id", `{"id":"one","other":1,"other":2}`, "one", ""},
		{"value.id", `{"id":"one","x":{"id":1,"id":2}}`, "one", ""},
		{"value.a.b", `{"a":{"b":"one","c":1,"c":2}}`, "one", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path+" "+tt.value, func(t *testing.T) {
			m := mustMapper(t, testTable(col("c", pgtype.TextOID, false)), map[string]string{"c": tt.path})
			row, err := m.mapRecord(&record.Record{Value: []byte(tt.value)})
			if tt.dup != "" {
				var pe *flow.PoisonError
				if !errors.As(err, &pe) || pe.Reason != flow.ReasonDecode || !strings.Contains(err.Error(), `the key "`+tt.dup+`" twice`) {
					t.Fatalf("err = %v, want a decode error naming the key %q", err, tt.dup)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if row[0] != tt.want {
				t.Fatalf("value = %#v, want %#v", row[0], tt.want)
			}
		})
	}
}

// TestMapRecordSources maps every record-level source into the column types it
// accepts.
func TestMapRecordSources(t *testing.T) {
	ts := time.Date(2024, 1, 2, 3, 4, 5, 6e6, time.FixedZone("", 3600))
	rec := &record.Record{
		Topic: "orders", Partition: 3, Offset: 1 << 40, Timestamp: ts,
		Key:   []byte("123e4567-e89b-12d3-a456-426614174000"),
		Value: []byte(`{"id": 42}`),
		Headers: []record.Header{
			{Key: "trace", Value: []byte("first")}, {Key: "trace", Value: []byte("last")},
			{Key: "n", Value: []byte("17")}, {Key: "j", Value: []byte(`{"a":1}`)}, {Key: "nil"},
		},
	}
	tests := []struct {
		src     string
		oid     uint32
		notNull bool
		rec     *record.Record
		want    any
		wantErr string
	}{
		{"$topic", pgtype.TextOID, false, rec, "orders", ""},
		{"$partition", pgtype.Int2OID, false, rec, int16(3), ""},
		{"$partition", pgtype.Int4OID, false, rec, int32(3), ""},
		{"$partition", pgtype.Int8OID, false, rec, int64(3), ""},
		{"$partition", pgtype.NumericOID, false, rec, num(3, 0), ""},
		{"$partition", pgtype.Float8OID, false, rec, 3.0, ""},
		{"$partition", pgtype.TextOID, false, rec, "3", ""},
		{"$partition", pgtype.Int2OID, false, &record.Record{Partition: 40000}, nil, "found 40000, out of range for smallint"},
		{"$offset", pgtype.Int8OID, false, rec, int64(1 << 40), ""},
		{"$offset", pgtype.NumericOID, false, rec, pgtype.Numeric{Int: big.NewInt(1 << 40), Valid: true}, ""},
		{"$offset", pgtype.NumericOID, false, &record.Record{Offset: math.MinInt64}, pgtype.Numeric{Int: big.NewInt(math.MinInt64), Valid: true}, ""},
		{"$offset", pgtype.TextOID, false, rec, "1099511627776", ""},
		{"$timestamp", pgtype.TimestamptzOID, false, rec, ts.UTC(), ""},
		{"$timestamp", pgtype.TimestampOID, false, rec, ts.UTC(), ""},
		{"$timestamp", pgtype.DateOID, false, rec, time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC), ""},
		{"$timestamp", pgtype.TextOID, false, rec, "2024-01-02T02:04:05.006Z", ""},
		{"$timestamp", pgtype.TimestamptzOID, false, &record.Record{}, nil, ""},
		{"$timestamp", pgtype.TimestamptzOID, true, &record.Record{}, nil, "is NOT NULL but $timestamp is not set"},
		{"$key", pgtype.TextOID, false, rec, "123e4567-e89b-12d3-a456-426614174000", ""},
		{"$key", pgtype.UUIDOID, false, rec, uuidOf("123e4567e89b12d3a456426614174000"), ""},
		{"$key", pgtype.ByteaOID, false, rec, []byte("123e4567-e89b-12d3-a456-426614174000"), ""},
		{"$key", pgtype.Int8OID, false, &record.Record{Key: []byte("12")}, int64(12), ""},
		{"$key", pgtype.Int8OID, false, rec, nil, `found "123e4567-e89b-12d3-a456-426614174000", want an integer`},
		{"$key", pgtype.JSONBOID, false, &record.Record{Key: []byte(`{"k":1}`)}, []byte(`{"k":1}`), ""},
		{"$key", pgtype.JSONBOID, false, &record.Record{Key: []byte(`k`)}, nil, `found "k", not valid JSON`},
		{"$key", pgtype.TextOID, false, &record.Record{Key: []byte{0xff, 0xfe}}, nil, "not valid UTF-8"},
		{"$key", pgtype.TextOID, false, &record.Record{}, nil, ""},
		{"$key", pgtype.TextOID, true, &record.Record{}, nil, `column "c" is NOT NULL but $key is null`},
		{"$headers.trace", pgtype.TextOID, false, rec, "last", ""},
		{"$headers.n", pgtype.Int4OID, false, rec, int32(17), ""},
		{"$headers.j", pgtype.JSONOID, false, rec, []byte(`{"a":1}`), ""},
		{"$headers.nil", pgtype.TextOID, false, rec, nil, ""},
		{"$headers.nil", pgtype.TextOID, true, rec, nil, "is NOT NULL but $headers.nil is null"},
		{"$headers.absent", pgtype.TextOID, false, rec, nil, ""},
		{"$headers.absent", pgtype.TextOID, true, rec, nil, "is NOT NULL but $headers.absent is missing"},
		{"$value", pgtype.JSONBOID, false, rec, []byte(`{"id": 42}`), ""},
		{"$value", pgtype.TextOID, false, rec, `{"id": 42}`, ""},
		{"$value", pgtype.ByteaOID, false, rec, []byte(`{"id": 42}`), ""},
		{"$value", pgtype.ByteaOID, false, &record.Record{}, nil, ""},
		{"$value", pgtype.ByteaOID, true, &record.Record{}, nil, "is NOT NULL but $value is null (a tombstone)"},
		{"$value", pgtype.JSONBOID, false, &record.Record{Value: []byte(`{"a":"\u0000"}`)}, nil, `contains a \u0000 escape`},
	}
	types := pgtype.NewMap()
	for _, tt := range tests {
		t.Run(tt.src+"/"+typeNames[tt.oid], func(t *testing.T) {
			m := mustMapper(t, testTable(col("c", tt.oid, tt.notNull)), map[string]string{"c": tt.src})
			row, err := m.mapRecord(tt.rec)
			if tt.wantErr != "" {
				var pe *flow.PoisonError
				if !errors.As(err, &pe) || pe.Reason != flow.ReasonMapping || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a mapping error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("mapRecord: %v", err)
			}
			if !same(row[0], tt.want) {
				t.Fatalf("value = %#v, want %#v", row[0], tt.want)
			}
			if _, err := types.Encode(tt.oid, pgtype.BinaryFormatCode, row[0], nil); err != nil {
				t.Fatalf("pgx cannot encode %#v for OID %d: %v", row[0], tt.oid, err)
			}
		})
	}
}

// TestMapOrder maps a typical order and checks the whole row.
func TestMapOrder(t *testing.T) {
	m := orderMapper(t)
	row, err := m.mapRecord(orderRecord())
	if err != nil {
		t.Fatal(err)
	}
	want := record.Row{
		int64(1001), "Ada Lovelace", num(12999, -2),
		time.Date(2024, 5, 1, 12, 30, 0, 0, time.UTC), []byte(`[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}]`), int64(99),
	}
	for i := range want {
		if !same(row[i], want[i]) {
			t.Errorf("row[%d] (%s) = %#v, want %#v", i, m.fields[i].col.Name, row[i], want[i])
		}
	}
}

func orderMapper(t testing.TB) *mapper {
	tbl := testTable(
		col("id", pgtype.Int8OID, true),
		col("customer", pgtype.TextOID, false),
		column{Name: "amount", TypeOID: pgtype.NumericOID, Type: "numeric(12,2)", NotNull: true},
		col("created_at", pgtype.TimestamptzOID, true),
		col("items", pgtype.JSONBOID, false),
		col("kafka_offset", pgtype.Int8OID, true),
	)
	return mustMapper(t, tbl, map[string]string{
		"id": "value.id", "customer": "value.customer.name", "amount": "value.amount",
		"created_at": "value.created_at", "items": "value.items", "kafka_offset": "$offset",
	})
}

// orderRecord is a ~200-byte order as a producer would send it.
func orderRecord() *record.Record {
	return &record.Record{
		Topic: "orders", Partition: 1, Offset: 99,
		Value: []byte(`{"id":1001,"customer":{"id":77,"name":"Ada Lovelace","tier":"gold"},"amount":129.99,"currency":"EUR",` +
			`"created_at":"2024-05-01T12:30:00Z","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":null}`),
	}
}

// hostileMapper maps the columns of the hostile-record tests: text, jsonb,
// numeric and bigint from the value, and text from the key.
func hostileMapper(t testing.TB) *mapper {
	return mustMapper(t, testTable(
		col("id", pgtype.Int8OID, true), col("name", pgtype.TextOID, false), col("doc", pgtype.JSONBOID, false),
		col("amount", pgtype.NumericOID, false), col("k", pgtype.TextOID, false),
	), map[string]string{"id": "value.id", "name": "value.name", "doc": "value.doc", "amount": "value.amount", "k": "$key"})
}

// TestMapHostileRecords maps each class of hostile record: each is refused
// with the reason and a message that names what is wrong (and the column,
// where one column is at fault), and none costs memory beyond a small multiple
// of its size.
func TestMapHostileRecords(t *testing.T) {
	const mib = 1 << 20
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	wideDup := func() string {
		var sb strings.Builder
		sb.WriteString(`{"id":1,"doc":{`)
		for i := 0; sb.Len() < mib; i++ {
			fmt.Fprintf(&sb, `"k%d":%d,`, i, i)
		}
		sb.WriteString(`"k7":0}}`)
		return sb.String()
	}
	tests := []struct {
		name   string
		key    string
		value  string
		reason string   // "" for a record that maps
		texts  []string // in the error
	}{
		{"good", "k1", `{"id":1,"name":"Ada","doc":{"a":[1,{"b":"c"}]},"amount":"12.50"}`, "", nil},
		{"good at the nesting bound", "", `{"id":1,"doc":` + deep(maxDepth-1) + `}`, "", nil},
		{"nested past the bound", "", `{"id":1,"doc":` + deep(maxDepth) + `}`, flow.ReasonDecode, []string{"more than 64 levels deep"}},
		{"nested a million deep", "", `{"id":1,"doc":` + deep(mib/2) + `}`, flow.ReasonDecode, []string{"more than 64 levels deep"}},
		{"nested in an unmapped field", "", `{"id":1,"x":` + deep(maxDepth) + `}`, flow.ReasonDecode, []string{"more than 64 levels deep"}},
		{"invalid UTF-8 in text", "", "{\"id\":1,\"name\":\"A\xffda\"}", flow.ReasonMapping, []string{`column "name" (text) from value.name`, "not valid UTF-8"}},
		{"invalid UTF-8 in jsonb", "", "{\"id\":1,\"doc\":[\"\xc3\x28\"]}", flow.ReasonMapping, []string{`column "doc" (jsonb) from value.doc`, "not valid UTF-8"}},
		{"invalid UTF-8 in the key", "\xfe", `{"id":1}`, flow.ReasonMapping, []string{`column "k" (text) from $key`, "not valid UTF-8"}},
		{"NUL escape in text", "", `{"id":1,"name":"A\u0000da"}`, flow.ReasonMapping, []string{`column "name"`, "contains a NUL character"}},
		{"raw NUL in a JSON string", "", "{\"id\":1,\"name\":\"A\x00da\"}", flow.ReasonDecode, []string{"not valid JSON"}},
		{"NUL in the key", "a\x00b", `{"id":1}`, flow.ReasonMapping, []string{`column "k"`, "contains a NUL character"}},
		{"NUL escape in jsonb", "", `{"id":1,"doc":{"a":"\u0000"}}`, flow.ReasonMapping, []string{`column "doc"`, `contains a \u0000 escape`}},
		{"lone surrogate in text", "", `{"id":1,"name":"\ud800"}`, flow.ReasonMapping, []string{`column "name"`, "surrogate"}},
		{"100k digits into numeric", "", `{"id":1,"amount":` + strings.Repeat("9", 100_000) + `}`, flow.ReasonMapping,
			[]string{`column "amount" (numeric) from value.amount`, "has 100000 significant digits; sluice writes at most 1000"}},
		{"1e999999 into numeric", "", `{"id":1,"amount":1e999999}`, flow.ReasonMapping, []string{`column "amount"`, "out of range for numeric"}},
		{"1e-999999 into numeric", "", `{"id":1,"amount":1e-999999}`, flow.ReasonMapping, []string{`column "amount"`, "has 999999 digits after the point"}},
		{"100k digits into bigint", "", `{"id":` + strings.Repeat("9", 100_000) + `}`, flow.ReasonMapping, []string{`column "id" (bigint)`, "out of range for bigint"}},
		{"1e999999 into bigint", "", `{"id":1e999999}`, flow.ReasonMapping, []string{`column "id"`, "found number 1e999999, out of range for bigint"}},
		{"duplicate mapped key", "", `{"id":1,"name":"a","name":"b"}`, flow.ReasonDecode, []string{`the key "name" twice in one object, in value;`}},
		{"duplicate key in jsonb", "", `{"id":1,"doc":{"a":1,"b":[{"c":1,"c":2}]}}`, flow.ReasonDecode, []string{`the key "c" twice in one object, in value.doc;`}},
		{"duplicate key in a wide jsonb object", "", wideDup(), flow.ReasonDecode, []string{`the key "k7" twice in one object, in value.doc;`}},
		{"duplicate key nobody reads", "", `{"id":1,"x":{"y":1,"y":2}}`, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := hostileMapper(t)
			r := &record.Record{Value: []byte(tt.value)}
			if tt.key != "" {
				r.Key = []byte(tt.key)
			}
			row, err := m.mapRecord(r)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("mapRecord: %v", err)
				}
				if len(row) != 5 {
					t.Fatalf("row = %v, want 5 values", row)
				}
			} else {
				var pe *flow.PoisonError
				if !errors.As(err, &pe) || pe.Reason != tt.reason {
					t.Fatalf("err = %.300v, want a %s *flow.PoisonError", err, tt.reason)
				}
				for _, s := range tt.texts {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("err = %.300q, want it to contain %q", err, s)
					}
				}
				if n := len(err.Error()); n > 1024 {
					t.Errorf("the error is %d bytes long; it must quote a snippet, not the value", n)
				}
			}
			// Memory: a small multiple of the record, whatever it holds.
			var before, after runtime.MemStats
			const runs = 5
			runtime.ReadMemStats(&before)
			for range runs {
				_, _ = m.mapRecord(r)
			}
			runtime.ReadMemStats(&after)
			perRecord := (after.TotalAlloc - before.TotalAlloc) / runs
			if limit := uint64(4*len(tt.value) + 64<<10); perRecord > limit {
				t.Errorf("mapping it allocated %d bytes, more than %d for a %d-byte value", perRecord, limit, len(tt.value))
			}
		})
	}
}

// TestMapJSONFromKeyAndHeader refuses JSON in the key or a header that is
// nested too deep or ambiguous, as it refuses such a value: reason decode.
func TestMapJSONFromKeyAndHeader(t *testing.T) {
	m := mustMapper(t, testTable(col("k", pgtype.JSONBOID, false), col("h", pgtype.JSONBOID, false), col("j", pgtype.JSONOID, false)),
		map[string]string{"k": "$key", "h": "$headers.h", "j": "$headers.j"})
	deep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	tests := []struct {
		key, header, json, reason, text string
	}{
		{`{"a":[1,{"b":2}]}`, `[{"c":null}]`, `{}`, "", ""},
		{`{"a":1,"a":2}`, `{}`, `{}`, flow.ReasonDecode, `column "k" from $key: the JSON gives the key "a" twice`},
		{`{}`, `[{"x":1},{"y":{"z":1,"z":2}}]`, `{}`, flow.ReasonDecode, `column "h" from $headers.h: the JSON gives the key "z" twice`},
		{`{}`, `{}`, `{"z":1,"z":2}`, "", ""}, // json keeps both
		{deep, `{}`, `{}`, flow.ReasonDecode, `column "k" from $key: the JSON nests arrays and objects more than 64 levels deep`},
		{`{}`, `{}`, deep, flow.ReasonDecode, `column "j" from $headers.j: the JSON nests arrays and objects more than 64 levels deep`},
		{`{}`, strings.Repeat(`{"a":`, 1<<16), `{}`, flow.ReasonDecode, `column "h" from $headers.h: the JSON nests`}, // too deep before it is seen never to close
		{`{"a":1}x`, `{}`, `{}`, flow.ReasonMapping, "not valid JSON"},
	}
	for _, tt := range tests {
		r := &record.Record{Key: []byte(tt.key), Headers: []record.Header{{Key: "h", Value: []byte(tt.header)}, {Key: "j", Value: []byte(tt.json)}}}
		_, err := m.mapRecord(r)
		if tt.reason == "" {
			if err != nil {
				t.Errorf("key %.40q, header %.40q: %v", tt.key, tt.header, err)
			}
			continue
		}
		var pe *flow.PoisonError
		if !errors.As(err, &pe) || pe.Reason != tt.reason || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("key %.40q, header %.40q: err = %.200v, want a %s error containing %q", tt.key, tt.header, err, tt.reason, tt.text)
		}
	}
}
