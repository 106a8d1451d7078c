package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Byte-size units. The decimal ones are powers of 1000 and the binary ones
// powers of 1024: 8MB is 8,000,000 bytes and 8MiB is 8,388,608 bytes.
const (
	KB ByteSize = 1000
	MB ByteSize = 1000 * KB
	GB ByteSize = 1000 * MB
	TB ByteSize = 1000 * GB

	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
	TiB ByteSize = 1 << 40
)

// sizeUnits maps a lower-cased unit to its multiplier. Units are matched
// case-insensitively, so "64mib" and "64MiB" are the same size; "mb" is always
// decimal.
var sizeUnits = map[string]ByteSize{
	"": 1, "b": 1,
	"kb": KB, "mb": MB, "gb": GB, "tb": TB,
	"kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
}

// ParseByteSize parses a size written as a number of bytes with an optional
// unit: "1024", "512KiB", "8MB", "64MiB", "1.5GiB". Spaces between the number and
// the unit are allowed. Negative sizes and fractions of a byte are errors.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("%q is not a size: write a number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), like 64MiB or 8MB", s)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/int64(mult) {
			return 0, fmt.Errorf("%q is too large a size", s)
		}
		return ByteSize(n) * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %q is not a number", s, num)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large a size", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	return ByteSize(v), nil
}

// UnmarshalText parses a size as ParseByteSize does, so a ByteSize can be read
// by encoding/json, YAML decoders, flag.TextVar and mapstructure's
// TextUnmarshallerHookFunc.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// String writes the size in the largest unit that divides it exactly, binary
// units first: 67108864 is "64MiB", 8000000 is "8MB", 1023 is "1023". The result
// parses back to the same size with ParseByteSize.
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for _, u := range []struct {
		name string
		size ByteSize
	}{
		{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
		{"TB", TB}, {"GB", GB}, {"MB", MB}, {"KB", KB},
	} {
		if b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
