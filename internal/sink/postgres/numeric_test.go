package postgres

import (
	"bytes"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// decimalParts splits a decimal number as toNumeric does: the sign, the
// digits with their point, and the exponent moved past the point's digits.
func decimalParts(t testing.TB, s string) (neg bool, mant string, exp int64) {
	t.Helper()
	mant = s
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.ParseInt(s[i+1:], 10, 32)
		if err != nil {
			t.Fatalf("%q: exponent: %v", s, err)
		}
		mant, exp = s[:i], e
	}
	switch {
	case strings.HasPrefix(mant, "-"):
		neg, mant = true, mant[1:]
	case strings.HasPrefix(mant, "+"):
		mant = mant[1:]
	}
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		exp -= int64(len(mant) - i - 1)
	}
	return neg, mant, exp
}

// pgxNumeric is the value as pgx's own type holds it: the digits as an
// integer and the exponent.
func pgxNumeric(t testing.TB, neg bool, mant string, exp int64) pgtype.Numeric {
	t.Helper()
	i, ok := new(big.Int).SetString(strings.Replace(mant, ".", "", 1), 10)
	if !ok {
		t.Fatalf("%q: not digits", mant)
	}
	if neg {
		i.Neg(i)
	}
	return pgtype.Numeric{Int: i, Exp: int32(exp), Valid: true}
}

var stockMap = pgtype.NewMap()

// checkNumeric checks that s encodes to the bytes pgx writes for the same
// value, and that pgx, given the numericValue itself, encodes an equal value.
func checkNumeric(t *testing.T, s string) {
	t.Helper()
	neg, mant, exp := decimalParts(t, s)
	n, ok := numericFromDecimal(neg, mant, "", exp)
	if !ok {
		t.Fatalf("%q: numericFromDecimal refused it", s)
	}
	want, err := stockMap.Encode(pgtype.NumericOID, pgtype.BinaryFormatCode, pgxNumeric(t, neg, mant, exp), nil)
	if err != nil {
		t.Fatalf("%q: pgx: %v", s, err)
	}
	if got := n.appendBinary(nil); !bytes.Equal(got, want) {
		t.Fatalf("%q: encoded %x, pgx encodes %x", s, got, want)
	}
	// Split at the point, as toNumeric hands it over: the same digits.
	if hi, lo, ok := strings.Cut(mant, "."); ok {
		if split, ok := numericFromDecimal(neg, hi, lo, exp); !ok || split != n {
			t.Fatalf("%q: split at the point gives %+v (%v), want %+v", s, split, ok, n)
		}
	}
	// pgx encodes NumericValue: the same value.
	fallback, err := stockMap.Encode(pgtype.NumericOID, pgtype.BinaryFormatCode, n, nil)
	if err != nil {
		t.Fatalf("%q: fallback: %v", s, err)
	}
	if a, b := decodeRat(t, fallback), decodeRat(t, want); a.Cmp(b) != 0 {
		t.Fatalf("%q: the fallback encodes %s, want %s", s, a.RatString(), b.RatString())
	}
}

func decodeRat(t *testing.T, b []byte) *big.Rat {
	t.Helper()
	var n pgtype.Numeric
	if err := stockMap.Scan(pgtype.NumericOID, pgtype.BinaryFormatCode, b, &n); err != nil {
		t.Fatalf("decode %x: %v", b, err)
	}
	r := new(big.Rat).SetInt(n.Int)
	p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(abs32(n.Exp))), nil)
	if n.Exp >= 0 {
		return r.Mul(r, new(big.Rat).SetInt(p))
	}
	return r.Quo(r, new(big.Rat).SetInt(p))
}

func abs32(v int32) int32 {
	if v < 0 {
		return -v
	}
	return v
}

func TestNumericMatchesPgx(t *testing.T) {
	cases := []string{
		"0", "-0", "0.0", "-0.00", "0.00000", "0e5", "0e-5", "00012", "-00012.3400",
		"1", "-1", "9999", "10000", "10001", "99999999", "100000000", "123456789012345678",
		"9223372036854775807", "-9223372036854775808", "18446744073709551615", "99999999999999999999999999999999999",
		"0.5", "0.05", "0.005", "0.0005", "0.00005", "-0.00005", "1.5", "12.34", "12.50", "1.00", "100.00",
		"0.1234", "0.12345", "1234.5678", "12345.6789", "-12345.67890", "3.14159265358979323846",
		"1e0", "1e1", "1e3", "1e4", "1e5", "1.5e3", "1.5E-3", "-2.5e+7", "5e-1", "5e-4", "5e-5", "1e-20", "1e30",
		"123e-2", "123e2", "0.000000000000000000000000000001", "1234567890.1234567890",
		"1e-40", "1.5e-39", "1e32767", "-1e-36", "9999999999999999999999999999999999999",
	}
	for _, s := range cases {
		t.Run(s, func(t *testing.T) { checkNumeric(t, s) })
	}
}

// Integers of one to five digits (every one up to 1200, then every seventh)
// at every scale from 10^-9 to 10^9, as a fraction and with an exponent: the
// alignment to base-10000 groups in all its cases.
func TestNumericMatchesPgxExhaustive(t *testing.T) {
	step := 7
	if testing.Short() {
		step = 101
	}
	var ms []int
	for m := -20011; m <= 20011; m++ {
		if (m > -1200 && m < 1200) || m%step == 0 {
			ms = append(ms, m)
		}
	}
	for _, m := range ms {
		digits := strconv.Itoa(m)
		for e := -9; e <= 9; e++ {
			checkNumeric(t, digits+"e"+strconv.Itoa(e))
		}
		if m >= 0 {
			for p := 0; p <= len(digits); p++ { // the same digits with a point
				checkNumeric(t, digits[:p]+"."+digits[p:]+"0")
			}
		}
	}
}

func TestNumericMatchesPgxRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var b strings.Builder
		if rng.IntN(3) == 0 {
			b.WriteByte('-')
		}
		whole, frac := rng.IntN(20), rng.IntN(20)
		for range whole {
			b.WriteByte(byte('0' + rng.IntN(10)))
		}
		if whole == 0 {
			b.WriteByte('0')
		}
		if frac > 0 {
			b.WriteByte('.')
			for range frac {
				b.WriteByte(byte('0' + rng.IntN(10)))
			}
		}
		if rng.IntN(4) == 0 {
			fmt.Fprintf(&b, "e%d", rng.IntN(61)-30)
		}
		s := b.String()
		neg, mant, exp := decimalParts(t, s)
		if _, ok := numericFromDecimal(neg, mant, "", exp); !ok {
			continue // more digits than the inline form holds: pgx encodes it
		}
		checkNumeric(t, s)
	}
}

func TestNumericTooLargeForInline(t *testing.T) {
	for _, s := range []string{
		strings.Repeat("9", 41),                   // 41 digits
		"1" + strings.Repeat("0", 40) + ".5",      // 11 groups
		"0." + strings.Repeat("0", 40) + "1",      // 11 fraction groups
		"1e-41", "1.5e-40", "1e40000", "1e-40000", // 11 fraction groups; exponents beyond int16
	} {
		neg, mant, exp := decimalParts(t, s)
		if _, ok := numericFromDecimal(neg, mant, "", exp); ok {
			t.Errorf("%q: numericFromDecimal took it; want false (pgx encodes it)", s)
		}
	}
}

func TestNumericFromInt64(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 9999, 10000, -10000, 123456789, math.MaxInt64, math.MinInt64} {
		s := strconv.FormatInt(v, 10)
		n := numericFromInt64(v)
		got := n.appendBinary(nil)
		want, err := stockMap.Encode(pgtype.NumericOID, pgtype.BinaryFormatCode, pgtype.Numeric{Int: big.NewInt(v), Valid: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: encoded %x, pgx encodes %x", s, got, want)
		}
	}
}

// pgx writes a numericValue in the text format, through NumericValue, with
// its display scale.
func TestNumericValueInTextFormat(t *testing.T) {
	n, _ := numericFromDecimal(false, "12", "50", -2)
	text, err := stockMap.Encode(pgtype.NumericOID, pgtype.TextFormatCode, n, nil)
	if err != nil || string(text) != "12.50" {
		t.Errorf("text format: %q (%v), want 12.50", text, err)
	}
}
