package postgres

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
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
			} else if p := escapeProblem(unsafeBytes(res.Raw), false); p != "" {
				return nil, p // gjson would have written U+FFFD for it
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
		// Not gjson.ValidBytes: it recurses once per level of nesting.
		if scanValue(b, &pathTree{}, nil, nil).status != scanOK {
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
		return numericFromInt64(v), ""
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
	switch {
	case p == errRange:
		return nil, outOfRange(k)
	case p != "":
		return nil, p
	}
	return intOf(k, v)
}

// outOfRange names the range a value of kind k left.
func outOfRange(k kind) problem {
	switch k {
	case kindInt2:
		return "out of range for smallint"
	case kindInt4:
		return "out of range for integer"
	}
	return "out of range for bigint"
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

// parseInteger parses a decimal integer. A number with a fraction or an exponent
// is accepted when its value is an exact integer (12.0, 1e3, 12000e-3). A
// number out of int64's range is errRange, whatever its length or exponent;
// its digits are never parsed as a float, so none is rounded.
func parseInteger(s string) (int64, problem) {
	if len(s) <= maxIntegerText {
		v, err := strconv.ParseInt(s, 10, 64)
		if err == nil {
			return v, ""
		}
		if errors.Is(err, strconv.ErrRange) && isDecimal(s) { // ParseInt stops at an overflow: to it "100000000000000000000A" is out of range
			return 0, errRange
		}
	}
	d, ok := splitDecimal(s)
	switch {
	case !ok:
		return 0, wrongType
	case d.digits() == 0:
		return 0, ""
	case d.expOverflow && d.exp > 0:
		return 0, errRange
	case d.expOverflow:
		return 0, "not an integer"
	}
	// The value is digits × 10^exp; it is an integer when the digits past
	// the point (the last -exp ones) are zeros.
	n := int64(d.digits())
	if d.exp < 0 {
		if -d.exp >= n {
			return 0, "not an integer" // 0 < |value| < 1
		}
		n += d.exp
		for i := n; i < int64(d.digits()); i++ {
			if d.digit(i) != '0' {
				return 0, "not an integer"
			}
		}
	}
	if n+max(d.exp, 0) > 19 {
		return 0, errRange
	}
	var v uint64 // at most 19 digits: no overflow
	for i := range n {
		v = v*10 + uint64(d.digit(i)-'0')
	}
	for range max(d.exp, 0) {
		v *= 10
	}
	switch {
	case d.neg && v <= 1<<63:
		return -int64(v), "" // -(1<<63) wraps to MinInt64, as it should
	case !d.neg && v <= math.MaxInt64:
		return int64(v), ""
	}
	return 0, errRange
}

// errRange is an integer out of int64's range; toInt names the column type's
// range instead.
const errRange problem = "\x00out of range"

// maxIntegerText is the longest text strconv.ParseInt is asked to read: a
// sign and 19 digits with room for a few leading zeros. Longer text is read
// without it, as its errors copy the text.
const maxIntegerText = 32

// decimal is a decimal number split for exact reading: ±(hi lo) × 10^exp,
// where hi lo are its significant digits (leading zeros dropped) and exp the
// power of ten of the last of them.
type decimal struct {
	neg bool
	// hi is the digits before the point without leading zeros; lo the digits
	// after it, also without leading zeros when hi is empty.
	hi, lo string
	exp    int64
	// expOverflow: the exponent does not fit 32 bits; exp is then only its sign.
	expOverflow bool
}

func (d *decimal) digits() int { return len(d.hi) + len(d.lo) }

// digit returns the i-th significant digit.
func (d *decimal) digit(i int64) byte {
	if i < int64(len(d.hi)) {
		return d.hi[i]
	}
	return d.lo[i-int64(len(d.hi))]
}

// splitDecimal splits s if it is a decimal number (as isDecimal says), in
// one pass.
func splitDecimal(s string) (d decimal, ok bool) {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		d.neg = s[i] == '-'
		i++
	}
	start := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intPart, fracPart := s[start:i], ""
	if i < len(s) && s[i] == '.' {
		i++
		start = i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fracPart = s[start:i]
	}
	if intPart == "" && fracPart == "" {
		return d, false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		negExp := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			negExp = s[i] == '-'
			i++
		}
		if i == len(s) {
			return d, false
		}
		for ; i < len(s) && isDigit(s[i]); i++ {
			if d.exp = d.exp*10 + int64(s[i]-'0'); d.exp > math.MaxInt32 {
				d.expOverflow, d.exp = true, math.MaxInt32 // the digits go on being read
			}
		}
		if negExp {
			d.exp = -d.exp
		}
		if d.expOverflow {
			d.exp = 1
			if negExp {
				d.exp = -1
			}
		}
	}
	if i != len(s) {
		return d, false
	}
	if !d.expOverflow {
		d.exp -= int64(len(fracPart))
	}
	if d.hi = strings.TrimLeft(intPart, "0"); d.hi != "" {
		d.lo = fracPart
	} else {
		d.lo = strings.TrimLeft(fracPart, "0")
	}
	return d, true
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
	if len(s) > len("-infinity") {
		return false
	}
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

// The numbers a numeric column takes. PostgreSQL's numeric holds up to 131072
// digits before the point and 16383 after it, but a number's binary form costs
// time in the square of its digits to make (pgx divides a big.Int by 10000 for
// every four of them): 100,000 digits took 14 ms and 23 MB to parse and 300 ms
// to encode, so a batch of such records would outlast any write timeout.
// sluice takes what a declared numeric(p, s) can hold at most, p and s up to
// 1000, which costs microseconds, and any power of ten on top up to
// PostgreSQL's weight limit (1e131000 is cheap: pgx keeps its exponent).
const (
	numericMaxWeight = 131072 // digits before the point, as in PostgreSQL
	numericMaxScale  = 1000   // digits after the point
	numericMaxDigits = 1000   // significant digits
)

// toNumeric parses a decimal number into a numericValue, or one too long for
// it and NaN, ±Infinity into a *pgtype.Numeric.
func toNumeric(s string) (any, problem) {
	if s != "" && len(s) <= len("-infinity") && (s[len(s)-1] < '0' || s[len(s)-1] > '9') { // a number ends in a digit, but for "5."
		switch strings.ToLower(s) {
		case "nan":
			return &pgtype.Numeric{NaN: true, Valid: true}, ""
		case "infinity", "+infinity", "inf", "+inf":
			return &pgtype.Numeric{InfinityModifier: pgtype.Infinity, Valid: true}, ""
		case "-infinity", "-inf":
			return &pgtype.Numeric{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, ""
		}
	}
	d, ok := splitDecimal(s)
	if !ok {
		return nil, wrongType
	}
	sig := d.digits()
	switch {
	case sig == 0 && d.exp > 0:
		return numericFromInt64(0), "" // 0e999999 is 0
	case d.expOverflow && d.exp > 0:
		return nil, "out of range for numeric"
	case d.expOverflow || d.exp < -numericMaxScale:
		return nil, problem(fmt.Sprintf("has %s digits after the point; sluice writes at most %d, the largest scale of a declared numeric",
			afterPoint(d), numericMaxScale))
	case sig > numericMaxDigits:
		return nil, problem(fmt.Sprintf("has %d significant digits; sluice writes at most %d, the largest precision of a declared numeric", sig, numericMaxDigits))
	case int64(sig)+d.exp > numericMaxWeight:
		return nil, "out of range for numeric"
	}
	if n, ok := numericFromDecimal(d.neg, d.hi, d.lo, d.exp); ok {
		return n, "" // already in the binary form (numeric.go)
	}
	n := new(big.Int)
	if _, ok := n.SetString(d.hi+d.lo, 10); !ok {
		return nil, wrongType
	}
	if d.neg {
		n.Neg(n)
	}
	return &pgtype.Numeric{Int: n, Exp: int32(d.exp), Valid: true}, ""
}

// afterPoint says how many digits d has after the point, for messages.
func afterPoint(d decimal) string {
	if d.expOverflow {
		return "more than 2147483647"
	}
	return strconv.FormatInt(-d.exp, 10)
}

// --- booleans, times, bytes, uuids ---

// parseBool accepts the spellings PostgreSQL accepts for boolean input.
func parseBool(s string) (value, ok bool) {
	if len(s) > len("false") {
		return false, false
	}
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

// maxTimeText is longer than any timestamp parseTime accepts (35 bytes with
// nanoseconds and an offset).
const maxTimeText = 64

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
	if len(s) > maxTimeText {
		return time.Time{}, false // and time.Parse's error would copy it
	}
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
// UTF-8, and for jsonb the \u0000 escape and a UTF-16 surrogate escape that
// is not half of a pair. b is valid JSON.
func checkJSON(k kind, b []byte) problem {
	if !utf8.Valid(b) {
		return "not valid UTF-8"
	}
	if k == kindJSONB {
		return escapeProblem(b, true)
	}
	return ""
}

// escapeProblem finds, in the valid JSON text b, the escapes no PostgreSQL
// text can stand for: a UTF-16 surrogate that is not half of a pair (\ud800
// alone), and with nul also \u0000. It reads b's backslashes only, so a value
// without escapes costs one IndexByte.
func escapeProblem(b []byte, nul bool) problem {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\\')
		if j < 0 || i+j+1 >= len(b) {
			return ""
		}
		i += j + 1 // at the escape's letter
		if b[i] != 'u' {
			i++ // \\ too: its second backslash is not an escape
			continue
		}
		r, ok := hex4(b, i+1)
		if !ok {
			return ""
		}
		i += 5
		switch {
		case r == 0 && nul:
			return `contains a \u0000 escape, which PostgreSQL cannot store in text or jsonb`
		case r >= 0xD800 && r < 0xDC00: // a high surrogate: a low one must follow
			if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
				if r2, ok := hex4(b, i+2); ok && r2 >= 0xDC00 && r2 < 0xE000 {
					i += 6
					continue
				}
			}
			return problem(fmt.Sprintf(`contains the escape \u%04x, half of a UTF-16 surrogate pair without its other half, which is no character`, r))
		case r >= 0xDC00 && r < 0xE000:
			return problem(fmt.Sprintf(`contains the escape \u%04x, half of a UTF-16 surrogate pair without its other half, which is no character`, r))
		}
	}
}

// hex4 reads the four hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		n, ok := hexNibble(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(n)
	}
	return r, true
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
