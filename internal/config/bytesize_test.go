package config

import (
	"encoding/json"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
	}{
		{"0", 0},
		{"1024", 1024},
		{"1024B", 1024},
		{"512KiB", 512 << 10},
		{"64MiB", 64 << 20},
		{"64mib", 64 << 20},
		{"64 MiB", 64 << 20},
		{"1GiB", 1 << 30},
		{"2TiB", 2 << 40},
		{"8MB", 8_000_000},
		{"8mb", 8_000_000},
		{"1KB", 1000},
		{"3GB", 3_000_000_000},
		{"1.5KiB", 1536},
		{" 50MiB ", 50 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
	for _, in := range []string{"", "MiB", "64XB", "-1", "-1MiB", "1.5", "0.1KB5", "1.2.3MB", "64 M", "9999999999TiB", "99999999999999999999"} {
		t.Run("bad "+in, func(t *testing.T) {
			if got, err := ParseByteSize(in); err == nil {
				t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
			}
		})
	}
}

func TestByteSizeString(t *testing.T) {
	tests := []struct {
		in   ByteSize
		want string
	}{
		{0, "0"},
		{1023, "1023"},
		{1024, "1KiB"},
		{64 << 20, "64MiB"},
		{50 << 20, "50MiB"},
		{8_000_000, "8MB"},
		{1000, "1KB"},
		{1536, "1536"},
		{1 << 30, "1GiB"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.in.String(); got != tt.want {
				t.Errorf("String(%d) = %q, want %q", tt.in, got, tt.want)
			}
			back, err := ParseByteSize(tt.in.String())
			if err != nil || back != tt.in {
				t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tt.in.String(), back, err, tt.in)
			}
		})
	}
}

func TestByteSizeUnmarshalText(t *testing.T) {
	var v struct{ Size ByteSize }
	if err := json.Unmarshal([]byte(`{"Size": "8MiB"}`), &v); err != nil || v.Size != 8*MiB {
		t.Errorf("got %d, %v; want 8MiB", v.Size, err)
	}
	if err := json.Unmarshal([]byte(`{"Size": "8 parsecs"}`), &v); err == nil {
		t.Error("no error for 8 parsecs")
	}
}
