package postgres

import (
	"math/big"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// The benchmarks of encoding a row for a binary COPY, the way pgx's CopyFrom
// does (Map.Encode per value) and the way the sink does (copyenc.go):
//
//	go test -run='^$' -bench='Encode' -benchmem ./internal/sink/postgres
//
// make test runs them once (-benchtime=1x) so that they keep compiling and
// running.

// BenchmarkEncodeNumeric is one numeric(12,2) value: pgx's own encoding of a
// pgtype.Numeric (through big.Int), against numericValue's.
func BenchmarkEncodeNumeric(b *testing.B) {
	stock := pgtype.Numeric{Int: big.NewInt(123456), Exp: -2, Valid: true}
	b.Run("pgx", func(b *testing.B) {
		buf := make([]byte, 0, 64)
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = stockMap.Encode(pgtype.NumericOID, pgtype.BinaryFormatCode, stock, buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sluice", func(b *testing.B) {
		buf := make([]byte, 0, 64)
		b.ReportAllocs()
		for b.Loop() {
			n, _ := numericFromDecimal(false, "1234", "56", -2)
			buf = n.appendBinary(buf[:0])
		}
	})
}

// BenchmarkEncodeRow is the bench's order row (bigint, text, numeric, text,
// timestamptz, integer, bigint) encoded by pgx's CopyFrom way (Map.Encode per
// value, the numeric as pgx's type) and by the sink's COPY encoder: the
// sink's encoding cost per row, mapping aside.
func BenchmarkEncodeRow(b *testing.B) {
	oids := []uint32{pgtype.Int8OID, pgtype.TextOID, pgtype.NumericOID, pgtype.TextOID, pgtype.TimestamptzOID, pgtype.Int4OID, pgtype.Int8OID}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b.Run("pgx", func(b *testing.B) {
		row := []any{int64(42), "customer-000042", &pgtype.Numeric{Int: big.NewInt(123456), Exp: -2, Valid: true}, "EUR", at, int32(3), int64(1000)}
		buf := make([]byte, 0, 256)
		b.ReportAllocs()
		for b.Loop() {
			buf = buf[:0]
			for i, v := range row {
				var err error
				if buf, err = stockMap.Encode(oids[i], pgtype.BinaryFormatCode, v, buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("sluice", func(b *testing.B) {
		target := &copyTarget{oids: oids}
		for _, oid := range oids {
			k, _ := kindOf(oid)
			target.kinds = append(target.kinds, k)
		}
		fast, _ := numericFromDecimal(false, "1234", "56", -2)
		row := []any{int64(42), "customer-000042", fast, "EUR", at, int32(3), int64(1000)}
		buf := make([]byte, 0, 256)
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = target.appendRow(buf[:0], stockMap, row, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
