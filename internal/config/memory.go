package config

// RuntimeBaseline is what the README's memory formula starts from: the
// process beyond its configured buffers (the binary's pages, the Go runtime,
// the Kafka and PostgreSQL clients' own buffers, the HTTP server). The
// reliability suite measured 45-50 MiB of it under load with small budgets
// (overload, outage and soak scenarios); 40 MiB, the first estimate, was
// exceeded by up to 10 MiB.
const RuntimeBaseline ByteSize = 64 * MiB

// MemoryBound is the README's memory formula for c: the runtime baseline,
// the Kafka client's fetch buffers, the flow budget twice (admitted records
// and their mapped rows), and one poll of records of largestRecord bytes
// waiting for the gate.
func MemoryBound(c *Config, largestRecord ByteSize) ByteSize {
	return RuntimeBaseline +
		ByteSize(c.Kafka.MaxConcurrentFetches)*c.Kafka.FetchMaxBytes +
		2*c.Flow.MaxBufferedBytes +
		ByteSize(c.Kafka.MaxPollRecords)*largestRecord
}

// MemoryLimit is the soft memory limit sluice gives the Go runtime
// (debug.SetMemoryLimit) when GOMEMLIMIT is not set: 90% of the memory formula
// for records of up to 1 KiB, the tenth left for what the runtime does not
// count and for the collector's reaction time. Without it the garbage collector lets the heap grow
// to twice the live data before collecting, which carries RSS past the
// formula under sustained load; with it the collector works harder near the
// bound instead. It is a soft limit: larger records make sluice use more
// memory and collect more often, never fail.
func MemoryLimit(c *Config) ByteSize { return MemoryBound(c, 1*KiB) * 9 / 10 }
