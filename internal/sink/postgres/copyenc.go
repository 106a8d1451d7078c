package postgres

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// copyTarget is one table a batch is copied into (the target, or the staging
// table with the row's index as its last column), with the COPY statement and
// each column's kind, fixed at start.
//
// sluice writes the binary COPY stream itself instead of through pgx's
// CopyFrom: pgx looks up an encode plan per value (a map lookup keyed on the
// value's type, about a tenth of sluice's CPU in make bench's insert run) and
// describes the table once per connection; the kinds of a row's values are
// known when the plan is made, so one switch per value does the same work.
// A value of a type the switch does not expect (NaN and ±Infinity numerics)
// goes through the connection's pgx type map, so the bytes are always pgx's
// (copyenc_test.go compares them kind by kind).
type copyTarget struct {
	sql   string
	kinds []kind   // the mapped columns, in row order
	oids  []uint32 // their type OIDs (a domain's base type)
	ord   bool     // staging: each row ends with its index in the batch, an integer
}

func newCopyTarget(table pgx.Identifier, columns []string, fields []field, ord bool) *copyTarget {
	t := &copyTarget{ord: ord}
	for _, f := range fields {
		t.kinds = append(t.kinds, f.kind)
		t.oids = append(t.oids, f.col.TypeOID)
	}
	t.sql = fmt.Sprintf("COPY %s (%s) FROM STDIN BINARY", table.Sanitize(), quoteList(columns))
	return t
}

// copyChunk is how many bytes of rows copyReader encodes before handing them
// on; pgconn sends what one Read returns as one CopyData message of at most
// 64 KiB.
const copyChunk = 48 << 10

// copyReader encodes rows into the binary COPY format as pgconn reads them:
// the header, each row, then the trailer. It is an io.Reader for
// pgconn.PgConn.CopyFrom; an error encoding a value ends the stream, and pgconn
// aborts the COPY with it.
type copyReader struct {
	t     *copyTarget
	types *pgtype.Map // for the values the switch leaves to pgx
	rows  []record.Row
	next  int
	buf   []byte
	off   int
	state uint8 // 0 before the header, 1 rows, 2 trailer written
}

func newCopyReader(t *copyTarget, types *pgtype.Map, rows []record.Row) *copyReader {
	return &copyReader{t: t, types: types, rows: rows, buf: make([]byte, 0, copyChunk+4096)}
}

func (r *copyReader) Read(p []byte) (int, error) {
	for r.off == len(r.buf) {
		if r.state == 2 {
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

// fill encodes the next chunk of the stream into buf.
func (r *copyReader) fill() error {
	buf := r.buf[:0]
	r.off = 0
	if r.state == 0 {
		buf = append(buf, "PGCOPY\n\377\r\n\000"...)
		buf = binary.BigEndian.AppendUint32(buf, 0) // flags
		buf = binary.BigEndian.AppendUint32(buf, 0) // header extension length
		r.state = 1
	}
	var err error
	for r.next < len(r.rows) && len(buf) < copyChunk {
		if buf, err = r.t.appendRow(buf, r.types, r.rows[r.next], r.next); err != nil {
			r.buf = buf[:0]
			return err
		}
		r.next++
	}
	if r.next == len(r.rows) {
		buf = binary.BigEndian.AppendUint16(buf, 0xffff) // the trailer: a field count of -1
		r.state = 2
	}
	r.buf = buf
	return nil
}

// appendRow appends one row (and for staging its index i) in the binary
// COPY format.
func (t *copyTarget) appendRow(buf []byte, types *pgtype.Map, row record.Row, i int) ([]byte, error) {
	n := len(row)
	if t.ord {
		n++
	}
	buf = binary.BigEndian.AppendUint16(buf, uint16(n))
	for c, v := range row {
		var err error
		if buf, err = appendValue(buf, types, t.kinds[c], t.oids[c], v); err != nil {
			return buf, err
		}
	}
	if t.ord {
		buf = binary.BigEndian.AppendUint32(buf, 4)
		buf = binary.BigEndian.AppendUint32(buf, uint32(int32(i)))
	}
	return buf, nil
}

// microsFromUnixToY2K is PostgreSQL's epoch, 2000-01-01 UTC, in microseconds
// since the Unix epoch; daysFromUnixToY2K in days.
const (
	microsFromUnixToY2K = 946684800 * 1000000
	daysFromUnixToY2K   = 10957
)

// appendValue appends one field: its length and its bytes, or -1 for NULL.
// Each case is the value the conversion gives a column of kind k (convert.go);
// anything else is encoded by pgx.
func appendValue(buf []byte, types *pgtype.Map, k kind, oid uint32, v any) ([]byte, error) {
	be := binary.BigEndian
	switch k {
	case kindInt2:
		if x, ok := v.(int16); ok {
			return be.AppendUint16(be.AppendUint32(buf, 2), uint16(x)), nil
		}
	case kindInt4:
		if x, ok := v.(int32); ok {
			return be.AppendUint32(be.AppendUint32(buf, 4), uint32(x)), nil
		}
	case kindInt8:
		if x, ok := v.(int64); ok {
			return be.AppendUint64(be.AppendUint32(buf, 8), uint64(x)), nil
		}
	case kindFloat4:
		if x, ok := v.(float32); ok {
			return be.AppendUint32(be.AppendUint32(buf, 4), math.Float32bits(x)), nil
		}
	case kindFloat8:
		if x, ok := v.(float64); ok {
			return be.AppendUint64(be.AppendUint32(buf, 8), math.Float64bits(x)), nil
		}
	case kindNumeric:
		if x, ok := v.(numericValue); ok {
			return x.appendBinary(be.AppendUint32(buf, uint32(8+2*int(x.ndigits)))), nil
		}
	case kindText:
		if x, ok := v.(string); ok {
			return append(be.AppendUint32(buf, uint32(len(x))), x...), nil
		}
	case kindBool:
		if x, ok := v.(bool); ok {
			b := byte(0)
			if x {
				b = 1
			}
			return append(be.AppendUint32(buf, 1), b), nil
		}
	case kindTimestamptz, kindTimestamp:
		// The conversion gives timestamp columns their wall clock in UTC, so
		// both count microseconds from the same epoch.
		if x, ok := v.(time.Time); ok && (k == kindTimestamptz || x.Location() == time.UTC) {
			us := x.Unix()*1000000 + int64(x.Nanosecond())/1000 - microsFromUnixToY2K
			return be.AppendUint64(be.AppendUint32(buf, 8), uint64(us)), nil
		}
	case kindDate:
		if x, ok := v.(time.Time); ok && x.Location() == time.UTC {
			y, m, d := x.Date()
			days := time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix()/86400 - daysFromUnixToY2K
			return be.AppendUint32(be.AppendUint32(buf, 4), uint32(int32(days))), nil
		}
	case kindJSON, kindBytea:
		if x, ok := v.([]byte); ok {
			return append(be.AppendUint32(buf, uint32(len(x))), x...), nil
		}
	case kindJSONB:
		if x, ok := v.([]byte); ok {
			return append(append(be.AppendUint32(buf, uint32(len(x)+1)), 1), x...), nil // version 1, then the text
		}
	case kindUUID:
		if x, ok := v.([16]byte); ok {
			return append(be.AppendUint32(buf, 16), x[:]...), nil
		}
	}
	if v == nil {
		return be.AppendUint32(buf, math.MaxUint32), nil // -1: NULL
	}
	at := len(buf)
	out, err := types.Encode(oid, pgtype.BinaryFormatCode, v, be.AppendUint32(buf, 0))
	switch {
	case err != nil:
		return buf[:at], fmt.Errorf("encode a %T for a column of type %s: %w", v, kindNames[k], err)
	case out == nil:
		return be.AppendUint32(buf[:at], math.MaxUint32), nil // pgx says NULL
	}
	be.PutUint32(out[at:], uint32(len(out)-at-4))
	return out, nil
}

// kindNames names the kinds for messages; the index below fails to compile
// when a kind is added without a name.
var _ = kindNames[kindUUID]

var kindNames = [...]string{"?", "smallint", "integer", "bigint", "real", "double precision", "numeric", "text",
	"boolean", "timestamptz", "timestamp", "date", "json", "jsonb", "bytea", "uuid"}
