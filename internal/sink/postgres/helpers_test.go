package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

var typeNames = map[uint32]string{
	pgtype.Int2OID: "smallint", pgtype.Int4OID: "integer", pgtype.Int8OID: "bigint",
	pgtype.Float4OID: "real", pgtype.Float8OID: "double precision", pgtype.NumericOID: "numeric",
	pgtype.TextOID: "text", pgtype.VarcharOID: "character varying(20)", pgtype.BPCharOID: "character(3)",
	pgtype.BoolOID: "boolean", pgtype.TimestamptzOID: "timestamp with time zone",
	pgtype.TimestampOID: "timestamp without time zone", pgtype.DateOID: "date",
	pgtype.JSONOID: "json", pgtype.JSONBOID: "jsonb", pgtype.ByteaOID: "bytea", pgtype.UUIDOID: "uuid",
	pgtype.Int4ArrayOID: "integer[]",
}

func col(name string, oid uint32, notNull bool) column {
	return column{Name: name, TypeOID: oid, Type: typeNames[oid], NotNull: notNull}
}

func testTable(cols ...column) *tableDef {
	return &tableDef{Schema: "public", Name: "orders", Columns: cols, CanInsert: true, CanUpdate: true, CanTemp: true}
}

func mustMapper(t testing.TB, tbl *tableDef, mapping map[string]string) *mapper {
	t.Helper()
	m, err := newMapper(tbl, mapping)
	if err != nil {
		t.Fatalf("newMapper: %v", err)
	}
	return m
}
