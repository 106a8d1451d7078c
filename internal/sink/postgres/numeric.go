package postgres

import (
	"encoding/binary"
	"math/big"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"
)

// numericValue is a value for a numeric column already in PostgreSQL's binary
// NUMERIC form: base-10000 digits, most significant first, the weight of the
// first digit, the sign and the display scale. It is built from the decimal
// text of a JSON number (or from an integer) without math/big: pgx's own
// encoding of a pgtype.Numeric goes through big.Int and costs about 450 ns and
// nine allocations a value, this costs one allocation (the row's interface
// box) and a few nanoseconds a digit.
//
// The digits and header are exactly those pgx's NumericCodec writes for the
// same value as a pgtype.Numeric{Int, Exp} (tests compare the bytes), so a
// value means the same whichever encoder writes it. The sink's COPY writes
// them (copyenc.go); anything else that hands one to pgx gets the
// pgtype.Numeric from NumericValue, which pgx encodes its own way.
//
// A numericValue is immutable and safe for concurrent use.
type numericValue struct {
	digits  [numericInline]int16
	ndigits uint8
	weight  int16
	sign    uint16 // numericPositive or numericNegative
	dscale  int16
}

const (
	// numericInline is how many base-10000 digits a numericValue holds: 40
	// decimal digits around the point, the precision of a numeric(38, s)
	// column and far more than a JSON number of float64 precision needs.
	numericInline   = 10
	numericPositive = 0x0000
	numericNegative = 0x4000
)

// numericFromDecimal builds ±D·10^exp, where D is the decimal digits of hi
// followed by those of lo read as one integer (a '.' among them is skipped:
// hi and lo may be the digits before and after a number's point, or its whole
// mantissa and ""), and exp the exponent already moved past the digits after
// the point. It returns false when the value needs more than numericInline
// base-10000 digits or an exponent out of the binary format's range; the
// caller then encodes it with pgx.
func numericFromDecimal(neg bool, hi, lo string, exp int64) (numericValue, bool) {
	var n numericValue
	// The integer's decimal digits without the point and leading zeros.
	var buf [4 * numericInline]byte
	digits := buf[:0]
	for _, part := range [2]string{hi, lo} {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if c == '.' || (c == '0' && len(digits) == 0) {
				continue
			}
			if c < '0' || c > '9' || len(digits) == len(buf)-3 {
				return n, false // not a digit, or too long for the inline digits (with up to 3 zeros of alignment)
			}
			digits = append(digits, c)
		}
	}
	if exp < -1<<15+1 || exp > 1<<15-1 {
		return n, false
	}
	if exp < 0 {
		n.dscale = int16(-exp)
	}
	if neg && len(digits) > 0 {
		n.sign = numericNegative
	}
	// Align the exponent down to a multiple of 4 by appending zeros, as
	// pgx's encoder does: the digits then fall into whole base-10000 groups.
	k := int((exp%4 + 4) % 4)
	for range k {
		digits = append(digits, '0')
	}
	e := int(exp) - k // a multiple of 4
	if len(digits) == k {
		digits = digits[:0] // the value is zero
	}

	var whole []byte // the digits before the point
	var fracGroups int
	if e >= 0 {
		whole = digits
	} else {
		fracGroups = -e / 4
		if len(digits) > -e {
			whole = digits[:len(digits)+e]
		}
	}
	wholeGroups := (len(whole) + 3) / 4
	if wholeGroups+fracGroups > numericInline {
		return n, false
	}
	// Whole groups, most significant first; the first may be short.
	d := 0
	for i := len(whole) - 4*wholeGroups; i < len(whole); i += 4 {
		n.digits[d] = group(whole, i)
		d++
	}
	// Fraction groups: every group down to 10^e, zeros included, as pgx
	// writes them; the digits are left-padded with zeros to -e.
	if fracGroups > 0 {
		frac := digits[len(whole):]
		pad := -e - len(frac)
		for i := -pad; i < len(frac); i += 4 {
			n.digits[d] = group(frac, i)
			d++
		}
	}
	n.ndigits = uint8(d)
	switch {
	case wholeGroups > 0:
		n.weight = int16(wholeGroups - 1 + max(e, 0)/4)
	case e >= 0:
		n.weight = int16(e/4 - 1) // zero
	default:
		n.weight = -1
	}
	return n, true
}

// group reads the 4 decimal digits of s starting at i as one base-10000
// digit; positions before the start of s count as zeros.
func group(s []byte, i int) int16 {
	var v int16
	for j := i; j < i+4; j++ {
		v *= 10
		if j >= 0 {
			v += int16(s[j] - '0')
		}
	}
	return v
}

// numericFromInt64 is v as a numericValue ($offset and $partition into a
// numeric column).
func numericFromInt64(v int64) numericValue {
	mag := uint64(v)
	if v < 0 {
		mag = -mag // two's complement: also right for MinInt64
	}
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + mag%10)
		if mag /= 10; mag == 0 {
			break
		}
	}
	n, _ := numericFromDecimal(v < 0, unsafeString(buf[i:]), "", 0) // 20 digits always fit
	return n
}

// appendBinary appends the value in PostgreSQL's binary NUMERIC format.
func (n numericValue) appendBinary(buf []byte) []byte {
	buf = binary.BigEndian.AppendUint16(buf, uint16(n.ndigits))
	buf = binary.BigEndian.AppendUint16(buf, uint16(n.weight))
	buf = binary.BigEndian.AppendUint16(buf, n.sign)
	buf = binary.BigEndian.AppendUint16(buf, uint16(n.dscale))
	for _, d := range n.digits[:n.ndigits] {
		buf = binary.BigEndian.AppendUint16(buf, uint16(d))
	}
	return buf
}

// NumericValue returns the value as a pgtype.Numeric, for a connection
// without the codec and for the text format. It implements
// pgtype.NumericValuer.
func (n numericValue) NumericValue() (pgtype.Numeric, error) {
	var s strings.Builder
	if n.sign == numericNegative {
		s.WriteByte('-')
	}
	for i, d := range n.digits[:n.ndigits] {
		var g [4]byte
		for j := 3; j >= 0; j-- {
			g[j] = byte('0' + d%10)
			d /= 10
		}
		if i == 0 {
			s.WriteString(strings.TrimLeft(string(g[:]), "0"))
		} else {
			s.Write(g[:])
		}
	}
	// The digits read as an integer are the value times 10000^(ndigits-1-weight).
	exp := 4 * (int32(n.weight) + 1 - int32(n.ndigits))
	i, ok := new(big.Int).SetString(s.String(), 10)
	if !ok { // no digits: zero
		i = new(big.Int)
	}
	// pgx keeps the display scale in Exp; bring the integer to it.
	want := -int32(n.dscale)
	for ; exp > want; exp-- {
		i.Mul(i, big.NewInt(10))
	}
	for ; exp < want; exp++ {
		i.Quo(i, big.NewInt(10)) // only zeros of pgx's alignment are dropped
	}
	return pgtype.Numeric{Int: i, Exp: exp, Valid: true}, nil
}
