package config

import "testing"

func TestMemoryBoundIsTheREADMEFormula(t *testing.T) {
	c := Default()
	// 64 MiB + 2 × 16 MiB + 2 × 64 MiB + 500 × 1 KiB, as the README works it out.
	want := (64*MiB + 2*16*MiB + 2*64*MiB + 500*KiB) * 9 / 10
	if got := MemoryLimit(c); got != want {
		t.Errorf("MemoryLimit(defaults) = %v, want %v", got, want)
	}
	c.Kafka.MaxConcurrentFetches, c.Kafka.FetchMaxBytes, c.Flow.MaxBufferedBytes, c.Kafka.MaxPollRecords = 1, 4*MiB, 4*MiB, 100
	if got, want := MemoryBound(c, 930), 64*MiB+4*MiB+8*MiB+100*930; got != want {
		t.Errorf("MemoryBound = %v, want %v", got, want)
	}
}
