package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// The benchmarks of the mapping, the hot path of every record:
//
//	go test -run='^$' -bench=. -benchmem -count=5 ./internal/sink/postgres
//
// BenchmarkMap and BenchmarkMapWide map typical records; BenchmarkScanWide is
// the scan alone; BenchmarkMapDocument stores a whole value as jsonb;
// BenchmarkMapHostile maps records built to cost time or memory, which must
// stay bounded by their size.

func BenchmarkMap(b *testing.B) {
	m := orderMapper(b)
	r := orderRecord()
	b.SetBytes(int64(len(r.Value)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.mapRecord(r); err != nil {
			b.Fatal(err)
		}
	}
}

// wideMapper maps 16 columns of wideRecord's value.
func wideMapper(tb testing.TB) *mapper {
	tbl := testTable(
		col("event_id", pgtype.UUIDOID, true), col("type", pgtype.TextOID, true), col("user_id", pgtype.Int8OID, false),
		col("session", pgtype.TextOID, false), col("seq", pgtype.Int4OID, false), col("amount", pgtype.NumericOID, false),
		col("score", pgtype.Float8OID, false), col("ok", pgtype.BoolOID, false), col("at", pgtype.TimestamptzOID, true),
		col("country", pgtype.TextOID, false), col("device", pgtype.TextOID, false), col("version", pgtype.TextOID, false),
		col("attempts", pgtype.Int2OID, false), col("tags", pgtype.JSONBOID, false), col("referrer", pgtype.TextOID, false),
		col("latency_ms", pgtype.Float8OID, false),
	)
	return mustMapper(tb, tbl, map[string]string{
		"event_id": "value.event_id", "type": "value.type", "user_id": "value.user_id", "session": "value.session",
		"seq": "value.seq", "amount": "value.amount", "score": "value.score", "ok": "value.ok", "at": "value.at",
		"country": "value.geo_country", "device": "value.device", "version": "value.app_version", "attempts": "value.attempts",
		"tags": "value.tags", "referrer": "value.referrer", "latency_ms": "value.latency_ms",
	})
}

// wideRecord is a ~600-byte event of 24 top-level fields.
func wideRecord() *record.Record {
	return &record.Record{Topic: "events", Offset: 12345, Value: []byte(`{"event_id":"6f1c2a9e-3b7d-4c1e-9a52-0d8e4f7b1c33",` +
		`"type":"checkout_completed","user_id":4815162342,"session":"s-9f8e7d6c5b4a","seq":17,"amount":"249.90","currency":"EUR",` +
		`"score":0.87,"ok":true,"at":"2024-05-01T12:30:00.123Z","geo_country":"DE","geo_city":"Berlin","device":"ios",` +
		`"app_version":"7.12.1","os_version":"17.4.1","attempts":2,"tags":["promo","returning"],"referrer":"https://example.com/landing?utm_source=newsletter",` +
		`"ip":"203.0.113.7","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15",` +
		`"latency_ms":183.5,"experiment":{"name":"checkout_v2","arm":"b"},"debug":null,"schema":3}`)}
}

// BenchmarkMapWide maps 16 columns of a ~600-byte event of 24 top-level fields,
// where reading each column's path from the start of the value cost most.
func BenchmarkMapWide(b *testing.B) {
	m := wideMapper(b)
	r := wideRecord()
	b.SetBytes(int64(len(r.Value)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.mapRecord(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScanWide is the one pass over wideRecord's value alone: validation
// and finding the 16 members.
func BenchmarkScanWide(b *testing.B) {
	m := wideMapper(b)
	v := wideRecord().Value
	found := make([]member, m.members)
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for b.Loop() {
		clear(found)
		if res := scanValue(v, &m.paths, found, nil); res.status != scanOK {
			b.Fatalf("judged %+v", res)
		}
	}
}

// documentValue is a ~1.3 KiB order with nested objects and arrays.
func documentValue() []byte {
	var sb strings.Builder
	sb.WriteString(`{"id":1001,"customer":{"id":77,"name":"Ada Lovelace","tier":"gold","address":{"street":"12 Analytical Row",` +
		`"city":"London","zip":"NW1 6XE","country":"GB"}},"amount":129.99,"currency":"EUR","created_at":"2024-05-01T12:30:00Z","items":[`)
	for i := range 12 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"sku":"SKU-%04d","qty":%d,"price":%d.99,"tags":["a","b"],"meta":{"w":%d,"h":%d}}`, i, i%3+1, 10+i, i, 2*i)
	}
	sb.WriteString(`],"note":null,"flags":{"gift":false,"express":true}}`)
	return []byte(sb.String())
}

// BenchmarkMapDocument stores a whole nested value in a jsonb column, which
// reads every key of every object.
func BenchmarkMapDocument(b *testing.B) {
	m := mustMapper(b, testTable(col("doc", pgtype.JSONBOID, true), col("o", pgtype.Int8OID, true)),
		map[string]string{"doc": "$value", "o": "$offset"})
	r := &record.Record{Offset: 7, Value: documentValue()}
	b.SetBytes(int64(len(r.Value)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.mapRecord(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapHostile maps values of about 1 MiB built to cost: what each
// costs must stay proportional to its size.
func BenchmarkMapHostile(b *testing.B) {
	const size = 1 << 20
	wide := func() []byte { // one object of ~100k distinct keys
		var sb strings.Builder
		sb.WriteString(`{"id":1,"doc":{`)
		for i := 0; sb.Len() < size; i++ {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `"k%d":%d`, i, i)
		}
		sb.WriteString(`}}`)
		return []byte(sb.String())
	}
	for _, tc := range []struct {
		name  string
		value []byte
	}{
		{"deep", []byte(`{"id":1,"doc":` + strings.Repeat("[", size/2) + strings.Repeat("]", size/2) + `}`)},
		{"wide object", wide()},
		{"100k digits", []byte(`{"id":1,"n":` + strings.Repeat("7", 100_000) + `}`)},
		{"1e999999", []byte(`{"id":1,"n":1e999999}`)},
		{"long string", []byte(`{"id":1,"s":"` + strings.Repeat("é", size/2) + `"}`)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := mustMapper(b, testTable(col("id", pgtype.Int8OID, true), col("doc", pgtype.JSONBOID, false),
				col("n", pgtype.NumericOID, false), col("s", pgtype.TextOID, false)),
				map[string]string{"id": "value.id", "doc": "value.doc", "n": "value.n", "s": "value.s"})
			r := &record.Record{Value: tc.value}
			b.SetBytes(int64(len(r.Value)))
			b.ReportAllocs()
			for b.Loop() {
				_, _ = m.mapRecord(r) // refused or not, it must cost little
			}
		})
	}
}
