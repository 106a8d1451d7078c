package postgres

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/tidwall/gjson"
)

// kind is a column type the sink can write, and so the Go type a Row holds for
// it (the value pgx encodes for a binary COPY):
//
//	int2 int16, int4 int32, int8 int64, float4 float32, float8 float64,
//	numeric *pgtype.Numeric, text/varchar/bpchar string, bool bool,
//	timestamptz/timestamp/date time.Time (timestamp and date in UTC),
//	json/jsonb []byte (raw JSON), bytea []byte, uuid [16]byte.
//
// A NULL is a nil interface.
type kind uint8

const (
	kindInt2 kind = iota + 1
	kindInt4
	kindInt8
	kindFloat4
	kindFloat8
	kindNumeric
	kindText
	kindBool
	kindTimestamptz
	kindTimestamp
	kindDate
	kindJSON
	kindJSONB
	kindBytea
	kindUUID
)

// kindOf returns the kind of a column's type OID (a domain's base type).
func kindOf(oid uint32) (kind, bool) {
	switch oid {
	case pgtype.Int2OID:
		return kindInt2, true
	case pgtype.Int4OID:
		return kindInt4, true
	case pgtype.Int8OID:
		return kindInt8, true
	case pgtype.Float4OID:
		return kindFloat4, true
	case pgtype.Float8OID:
		return kindFloat8, true
	case pgtype.NumericOID:
		return kindNumeric, true
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID:
		return kindText, true
	case pgtype.BoolOID:
		return kindBool, true
	case pgtype.TimestamptzOID:
		return kindTimestamptz, true
	case pgtype.TimestampOID:
		return kindTimestamp, true
	case pgtype.DateOID:
		return kindDate, true
	case pgtype.JSONOID:
		return kindJSON, true
	case pgtype.JSONBOID:
		return kindJSONB, true
	case pgtype.ByteaOID:
		return kindBytea, true
	case pgtype.UUIDOID:
		return kindUUID, true
	}
	return 0, false
}

const supportedTypes = "smallint, integer, bigint, real, double precision, numeric, text, varchar, char, boolean, " +
	"timestamptz, timestamp, date, json, jsonb, bytea, uuid"

// accepts says whether a value of source kind s can ever be converted to k; the
// sink refuses to start otherwise. Sources that are bytes or JSON are checked per
// record.
func (k kind) accepts(s sourceKind) bool {
	switch s {
	case srcTopic:
		return k == kindText
	case srcPartition:
		switch k {
		case kindInt2, kindInt4, kindInt8, kindNumeric, kindFloat4, kindFloat8, kindText:
			return true
		}
		return false
	case srcOffset:
		// Offsets outgrow integer (and real's exact range) on a busy topic: refuse
		// at start rather than dead-letter every record past 2^31 one day.
		switch k {
		case kindInt8, kindNumeric, kindFloat8, kindText:
			return true
		}
		return false
	case srcTimestamp:
		switch k {
		case kindTimestamptz, kindTimestamp, kindDate, kindText:
			return true
		}
		return false
	}
	return true // $key, $headers.x, $value, value.path
}

// want describes what a column of kind k takes, for "found ..., want ..." messages.
func (k kind) want() string {
	switch k {
	case kindInt2, kindInt4, kindInt8:
		return "an integer"
	case kindFloat4, kindFloat8, kindNumeric:
		return "a number"
	case kindText:
		return "text"
	case kindBool:
		return "a boolean"
	case kindTimestamptz:
		return "an RFC 3339 timestamp with a UTC offset or epoch milliseconds"
	case kindTimestamp:
		return "an RFC 3339 timestamp or epoch milliseconds"
	case kindDate:
		return "a date (2006-01-02), an RFC 3339 timestamp or epoch milliseconds"
	case kindJSON, kindJSONB:
		return "JSON"
	case kindBytea:
		return `a base64 or \x-hex string`
	case kindUUID:
		return "a UUID string"
	}
	return "?"
}

// problem says why one value cannot be converted, after "found <value>, ": the
// field that asked adds the column, the source and what it found. An empty
// problem is no problem; wrongType stands for "want <what the kind takes>".
type problem string

const wrongType problem = "\x00wrong type"

// fromJSON converts a JSON value that exists and is not null. value is the
// record's value the result was read from: JSON columns get a slice of it.
func fromJSON(k kind, res gjson.Result, value []byte) (any, problem) {
	switch res.Type {
	case gjson.String:
		switch k {
		case kindText:
			// gjson's Str aliases the record's value unless it had escapes to undo.
			s := res.Str
			if strings.IndexByte(res.Raw, '\\') < 0 {
				s = strings.Clone(s)
			}
			if p := checkText(s); p != "" {
				return nil, p
			}
			return s, ""
		case kindJSON, kindJSONB:
			return rawJSON(k, res, value)
		}
		return fromString(k, res.Str)
	case gjson.Number:
		switch k {
		case kindInt2, kindInt4, kindInt8:
			return toInt(k, res.Raw)
		case kindFloat4, kindFloat8:
			return toFloat(k, res.Raw)
		case kindNumeric:
			return toNumeric(res.Raw)
		case kindTimestamptz, kindTimestamp, kindDate:
			ms, p := parseInteger(res.Raw)
			switch {
			case p == "not an integer":
				return nil, p + " (epoch milliseconds are integers)"
			case p != "":
				return nil, "out of range for epoch milliseconds (years 1 to 9999)"
			}
			return fromEpochMillis(k, ms)
		case kindText:
			return strings.Clone(res.Raw), ""
		case kindJSON, kindJSONB:
			return rawJSON(k, res, value)
		}
	case gjson.True, gjson.False:
		switch k {
		case kindBool:
			return res.Type == gjson.True, ""
		case kindText:
			if res.Type == gjson.True {
				return "true", ""
			}
			return "false", ""
		case kindJSON, kindJSONB:
			return rawJSON(k, res, value)
		}
	case gjson.JSON:
		switch k {
		case kindText:
			s := strings.Clone(res.Raw)
			if p := checkText(s); p != "" {
				return nil, p
			}
			return s, ""
		case kindJSON, kindJSONB:
			return rawJSON(k, res, value)
		}
	}
	return nil, wrongType
}

// rawJSON returns the JSON text of res as bytes, sharing the record's value where
// gjson says where res lies in it.
func rawJSON(k kind, res gjson.Result, value []byte) (any, problem) {
	var b []byte
	if i, n := res.Index, len(res.Raw); i > 0 && i+n <= len(value) && unsafeString(value[i:i+n]) == res.Raw {
		b = value[i : i+n : i+n]
	} else {
		b = []byte(res.Raw)
	}
	if p := checkJSON(k, b); p != "" {
		return nil, p
	}
	return b, ""
}

// fromBytes converts a value given as bytes ($key, $headers.x, $value).
func fromBytes(k kind, b []byte) (any, problem) {
	switch k {
	case kindBytea:
		return b, ""
	case kindText:
		if p := checkText(unsafeString(b)); p != "" {
			return nil, p
		}
		return string(b), ""
	case kindJSON, kindJSONB:
		if !gjson.ValidBytes(b) {
			return nil, "not valid JSON"
		}
		if p := checkJSON(k, b); p != "" {
			return nil, p
		}
		return b, ""
	}
	// Parsing only reads the text; nothing keeps it.
	return fromString(k, unsafeString(b))
}

// fromString converts text (a JSON string, or bytes read as text) to any kind
// but text and JSON.
func fromString(k kind, s string) (any, problem) {
	switch k {
	case kindInt2, kindInt4, kindInt8:
		return toInt(k, s)
	case kindFloat4, kindFloat8:
		if !isDecimal(s) && !isFloatSpecial(s) {
			return nil, wrongType
		}
		return toFloat(k, s)
	case kindNumeric:
		return toNumeric(s)
	case kindBool:
		if b, ok := parseBool(s); ok {
			return b, ""
		}
	case kindTimestamptz, kindTimestamp, kindDate:
		if t, ok := parseTime(k, s); ok {
			return t, ""
		}
	case kindBytea:
		if b, ok := decodeBytes(s); ok {
			return b, ""
		}
	case kindUUID:
		if u, ok := parseUUID(s); ok {
			return u, ""
		}
	}
	return nil, wrongType
}

// fromInt64 converts $partition and $offset.
func fromInt64(k kind, v int64) (any, problem) {
	switch k {
	case kindInt2, kindInt4, kindInt8:
		return intOf(k, v)
	case kindFloat4:
		return float32(v), ""
	case kindFloat8:
		return float64(v), ""
	case kindNumeric:
		mag := uint64(v)
		if v < 0 {
			mag = -mag // two's complement: also right for MinInt64
		}
		if mag <= math.MaxUint {
			return smallNumeric(mag, v < 0, 0), ""
		}
		return &pgtype.Numeric{Int: big.NewInt(v), Valid: true}, ""
	case kindText:
		return strconv.FormatInt(v, 10), ""
	}
	return nil, wrongType
}

// fromTime converts $timestamp and epoch milliseconds.
func fromTime(k kind, t time.Time) (any, problem) {
	t = t.UTC()
	switch k {
	case kindTimestamptz, kindTimestamp:
		return t, ""
	case kindDate:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), ""
	case kindText:
		return t.Format(time.RFC3339Nano), ""
	}
	return nil, wrongType
}

// --- integers ---

func toInt(k kind, s string) (any, problem) {
	v, p := parseInteger(s)
	if p != "" {
		return nil, p
	}
	return intOf(k, v)
}

// intOf range-checks v for k and returns it as k's Go type.
func intOf(k kind, v int64) (any, problem) {
	switch k {
	case kindInt2:
		if v < math.MinInt16 || v > math.MaxInt16 {
			return nil, "out of range for smallint"
		}
		return int16(v), ""
	case kindInt4:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return nil, "out of range for integer"
		}
		return int32(v), ""
	}
	return v, ""
}

// maxExactFloat is the largest integer a float64 holds exactly.
const maxExactFloat = 1 << 53

// parseInteger parses a decimal integer. A number with a fraction or an exponent
// is accepted when its value is an exact integer (12.0, 1e3).
func parseInteger(s string) (int64, problem) {
	v, err := strconv.ParseInt(s, 10, 64)
	if err == nil {
		return v, ""
	}
	if errors.Is(err, strconv.ErrRange) {
		return 0, "out of range for bigint"
	}
	if !isDecimal(s) {
		return 0, wrongType
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil || math.Abs(f) > maxExactFloat:
		return 0, "out of range (write large integers without a fraction or exponent)"
	case f != math.Trunc(f):
		return 0, "not an integer"
	}
	return int64(f), ""
}

// isDecimal reports whether s is a decimal number: an optional sign, digits with
// an optional point (at least one digit), an optional exponent.
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s)
}

// --- floating point and numeric ---

func isFloatSpecial(s string) bool {
	switch strings.ToLower(s) {
	case "nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf":
		return true
	}
	return false
}

func toFloat(k kind, s string) (any, problem) {
	if k == kindFloat4 {
		f, err := strconv.ParseFloat(s, 32)
		if err != nil {
			return nil, "out of range for real" // well-formed but too large (1e39)
		}
		return float32(f), ""
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, "out of range for double precision"
	}
	return f, ""
}

// PostgreSQL's numeric holds up to 131072 digits before the point and 16383
// after it; the bound also keeps a hostile exponent from costing memory.
const (
	numericMaxWeight = 131072
	numericMaxScale  = 16383
)

// toNumeric parses a decimal number (or NaN, ±Infinity) into a *pgtype.Numeric.
func toNumeric(s string) (any, problem) {
	if s != "" && (s[len(s)-1] < '0' || s[len(s)-1] > '9') { // a number ends in a digit, but for "5."
		switch strings.ToLower(s) {
		case "nan":
			return &pgtype.Numeric{NaN: true, Valid: true}, ""
		case "infinity", "+infinity", "inf", "+inf":
			return &pgtype.Numeric{InfinityModifier: pgtype.Infinity, Valid: true}, ""
		case "-infinity", "-inf":
			return &pgtype.Numeric{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, ""
		}
	}
	if !isDecimal(s) {
		return nil, wrongType
	}
	mant, expPart := s, ""
	for i := 0; i < len(s); i++ {
		if s[i] == 'e' || s[i] == 'E' {
			mant, expPart = s[:i], s[i+1:]
			break
		}
	}
	var exp int64
	if expPart != "" {
		e, err := strconv.ParseInt(expPart, 10, 32)
		if err != nil {
			return nil, "out of range for numeric"
		}
		exp = e
	}
	neg := false
	switch {
	case strings.HasPrefix(mant, "-"):
		neg, mant = true, mant[1:]
	case strings.HasPrefix(mant, "+"):
		mant = mant[1:]
	}
	digits := len(mant)
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		digits--
		exp -= int64(len(mant) - i - 1)
	}
	if exp < -numericMaxScale || exp+int64(digits) > numericMaxWeight {
		return nil, "out of range for numeric"
	}
	if digits <= maxSmallDigits {
		var v uint64
		for i := 0; i < len(mant); i++ {
			if c := mant[i]; c != '.' {
				v = v*10 + uint64(c-'0')
			}
		}
		if v <= math.MaxUint {
			return smallNumeric(v, neg, int32(exp)), ""
		}
	}
	n := new(big.Int)
	if _, ok := n.SetString(strings.Replace(mant, ".", "", 1), 10); !ok {
		return nil, wrongType
	}
	if neg {
		n.Neg(n)
	}
	return &pgtype.Numeric{Int: n, Exp: int32(exp), Valid: true}, ""
}

// maxSmallDigits is the most decimal digits a uint64 always holds.
const maxSmallDigits = 19

// numericBox is a numeric whose digits fit a machine word, with its big.Int and
// the word in the same allocation.
type numericBox struct {
	n pgtype.Numeric
	i big.Int
	w [1]big.Word
}

// smallNumeric returns ±v·10^exp as a *pgtype.Numeric in one allocation (pgx
// encodes the pointer as the value). v must fit a big.Word.
func smallNumeric(v uint64, neg bool, exp int32) *pgtype.Numeric {
	b := new(numericBox)
	b.w[0] = big.Word(v)
	b.i.SetBits(b.w[:])
	if neg {
		b.i.Neg(&b.i)
	}
	b.n = pgtype.Numeric{Int: &b.i, Exp: exp, Valid: true}
	return &b.n
}

// --- booleans, times, bytes, uuids ---

// parseBool accepts the spellings PostgreSQL accepts for boolean input.
func parseBool(s string) (value, ok bool) {
	switch strings.ToLower(s) {
	case "true", "t", "yes", "y", "on", "1":
		return true, true
	case "false", "f", "no", "n", "off", "0":
		return false, true
	}
	return false, false
}

// Epoch milliseconds are accepted for years 1 to 9999, as RFC 3339 strings are.
var (
	minEpochMillis = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxEpochMillis = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

func fromEpochMillis(k kind, ms int64) (any, problem) {
	if ms < minEpochMillis || ms > maxEpochMillis {
		return nil, "out of range for epoch milliseconds (years 1 to 9999)"
	}
	return fromTime(k, time.UnixMilli(ms))
}

const (
	layoutZoned      = time.RFC3339 // parsing accepts a fraction after the seconds
	layoutZonedSpace = "2006-01-02 15:04:05Z07:00"
	layoutLocal      = "2006-01-02T15:04:05"
	layoutLocalSpace = "2006-01-02 15:04:05"
	layoutDate       = time.DateOnly
)

// parseTime parses an RFC 3339 timestamp ('T' or a space between date and time).
// timestamptz needs a UTC offset; timestamp takes the UTC wall-clock time of a
// zoned value and a zoneless one as written; date takes the date as written.
func parseTime(k kind, s string) (time.Time, bool) {
	if k == kindDate && len(s) == len(layoutDate) {
		t, err := time.Parse(layoutDate, s)
		return t, err == nil
	}
	zoned, local := layoutZoned, layoutLocal
	if len(s) > 10 && s[10] == ' ' {
		zoned, local = layoutZonedSpace, layoutLocalSpace
	}
	if t, err := time.Parse(zoned, s); err == nil {
		switch k {
		case kindDate:
			return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), true
		case kindTimestamp:
			return t.UTC(), true
		}
		return t, true
	}
	if k == kindTimestamptz {
		return time.Time{}, false // no offset: ambiguous
	}
	t, err := time.Parse(local, s)
	if err != nil {
		return time.Time{}, false
	}
	if k == kindDate {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), true
	}
	return t, true
}

// decodeBytes decodes a bytea given as text: PostgreSQL's hex form (\x0a1b) or
// base64 (standard alphabet, padded or not), as encoding/json writes []byte.
func decodeBytes(s string) ([]byte, bool) {
	if h, ok := strings.CutPrefix(s, `\x`); ok {
		b, err := hex.DecodeString(h)
		return nonNil(b), err == nil
	}
	enc := base64.StdEncoding
	if len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	b, err := enc.DecodeString(s)
	return nonNil(b), err == nil
}

// nonNil keeps an empty bytea from turning into NULL (pgx writes a nil slice as NULL).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// parseUUID accepts the canonical 36-character form and 32 bare hex digits, in
// either case.
func parseUUID(s string) ([16]byte, bool) {
	var u [16]byte
	switch len(s) {
	case 36:
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return u, false
		}
		j := 0
		for i := 0; i < 36; {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				i++
				continue
			}
			b, ok := hexByte(s[i], s[i+1])
			if !ok {
				return u, false
			}
			u[j] = b
			j++
			i += 2
		}
		return u, true
	case 32:
		for j := range u {
			b, ok := hexByte(s[2*j], s[2*j+1])
			if !ok {
				return u, false
			}
			u[j] = b
		}
		return u, true
	}
	return u, false
}

func hexByte(hi, lo byte) (byte, bool) {
	h, ok1 := hexNibble(hi)
	l, ok2 := hexNibble(lo)
	return h<<4 | l, ok1 && ok2
}

func hexNibble(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// --- checks PostgreSQL would otherwise make, failing the whole batch ---

// checkText refuses what a text column cannot store: invalid UTF-8 and NUL.
func checkText(s string) problem {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL character, which PostgreSQL text cannot hold"
	}
	return ""
}

// checkJSON refuses JSON that PostgreSQL's json or jsonb input would: invalid
// UTF-8, and for jsonb the \u0000 escape.
func checkJSON(k kind, b []byte) problem {
	if !utf8.Valid(b) {
		return "not valid UTF-8"
	}
	if k == kindJSONB && strings.Contains(unsafeString(b), `\u0000`) {
		return `contains a \u0000 escape, which jsonb cannot hold`
	}
	return ""
}

// --- messages ---

// describe says what a JSON value is, for "found ..." messages.
func describe(res gjson.Result) string {
	switch res.Type {
	case gjson.String:
		return "string " + snippet(res.Str, true)
	case gjson.Number:
		return "number " + snippet(res.Raw, false)
	case gjson.True, gjson.False:
		return "boolean " + res.Raw
	case gjson.JSON:
		if strings.HasPrefix(res.Raw, "[") {
			return "array"
		}
		return "object"
	}
	return "null"
}

// snippetMax bounds how much of a value a message quotes.
const snippetMax = 40

// snippet shortens s for a message, quoted if asked.
func snippet(s string, quote bool) string {
	if len(s) > snippetMax {
		cut := snippetMax
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	if quote {
		return strconv.Quote(s)
	}
	return s
}

// unsafeString views b as a string without copying. The caller keeps nothing of
// it past the call that needs it.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
