package main

import (
	"math/big"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// valueTarget is the size the generator pads every JSON order towards.
const valueTarget = 200

// orderEpoch is created_at of the first order; order i is i seconds later.
var orderEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// tableColumns are the columns of both tables, in table order; the ceiling
// copies them in this order and sluice maps them from the record.
var tableColumns = []string{"id", "customer", "amount", "currency", "created_at", "kafka_partition", "kafka_offset"}

// tableShape is the column list of both tables.
const tableShape = `(id bigint, customer text, amount numeric(12,2), currency text,
	created_at timestamptz, kafka_partition int, kafka_offset bigint)`

// tableShapeKeyed is the upsert tables' column list: the same columns, keyed on id.
const tableShapeKeyed = `(id bigint PRIMARY KEY, customer text, amount numeric(12,2), currency text,
	created_at timestamptz, kafka_partition int, kafka_offset bigint)`

// sluiceColumns maps every column of the table for sluice.
const sluiceColumns = `{id: value.id, customer: value.customer, amount: value.amount, currency: value.currency, ` +
	`created_at: value.created_at, kafka_partition: $partition, kafka_offset: $offset}`

// The latency run's table and mapping add the record's timestamp, and the
// time each row was inserted (clock_timestamp(), evaluated per row as COPY
// inserts it) and its transaction began (now()), which PostgreSQL fills in.
const (
	latencyShape = `(id bigint, customer text, amount numeric(12,2), currency text,
	created_at timestamptz, kafka_partition int, kafka_offset bigint, produced_at timestamptz,
	tx_start timestamptz NOT NULL DEFAULT now(), written_at timestamptz NOT NULL DEFAULT clock_timestamp())`
	latencyColumns = `{id: value.id, customer: value.customer, amount: value.amount, currency: value.currency, ` +
		`created_at: value.created_at, kafka_partition: $partition, kafka_offset: $offset, produced_at: $timestamp}`
)

// order is the i-th synthetic order. Orders are a pure function of i, so the
// ceiling's rows are the same rows sluice writes, without parsing anything.
type order struct {
	id        int64
	customer  string
	cents     int64 // amount in cents
	createdAt time.Time
	i         int
}

func orderAt(i int) order {
	return order{
		id:        int64(i) + 1,
		customer:  "customer-" + pad(int64(i*7919%100000), 6),
		cents:     int64(i*104729%9_999_900) + 100,
		createdAt: orderEpoch.Add(time.Duration(i) * time.Second),
		i:         i,
	}
}

// partitionOf and offsetOf place order i: the producer writes order i to
// partition i mod p of a fresh topic, in order, so it lands at offset i div p.
func partitionOf(i, p int) int32 { return int32(i % p) }
func offsetOf(i, p int) int64    { return int64(i / p) }

const noteText = "leave the parcel with the neighbour if nobody answers; fragile, keep upright; call before delivery. "

// appendJSON appends the order as a JSON object of about valueTarget bytes.
func (o order) appendJSON(b []byte) []byte {
	start := len(b)
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, o.id, 10)
	b = append(b, `,"customer":"`...)
	b = append(b, o.customer...)
	b = append(b, `","amount":`...)
	b = strconv.AppendInt(b, o.cents/100, 10)
	b = append(b, '.')
	b = append(b, pad(o.cents%100, 2)...)
	b = append(b, `,"currency":"EUR","created_at":"`...)
	b = o.createdAt.AppendFormat(b, time.RFC3339)
	b = append(b, `","items":[`...)
	for k := range 1 + o.i%3 {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"sku":"SKU-`...)
		b = append(b, pad(int64((o.i*31+k*17)%100000), 5)...)
		b = append(b, `","qty":`...)
		b = strconv.AppendInt(b, int64(1+(o.i+k)%5), 10)
		b = append(b, '}')
	}
	b = append(b, `],"note":"`...)
	n := max(valueTarget-(len(b)-start)-2, 12)
	for n > 0 {
		k := min(n, len(noteText))
		b = append(b, noteText[:k]...)
		n -= k
	}
	return append(b, `"}`...)
}

// row is the order as the ceiling copies it: the Go values pgx encodes for
// the table's column types, in tableColumns order.
func (o order) row(partitions int) []any {
	return []any{
		o.id,
		o.customer,
		pgtype.Numeric{Int: big.NewInt(o.cents), Exp: -2, Valid: true},
		"EUR",
		o.createdAt,
		partitionOf(o.i, partitions),
		offsetOf(o.i, partitions),
	}
}

// pad formats v in decimal with leading zeros to at least width digits.
func pad(v int64, width int) string {
	s := strconv.FormatInt(v, 10)
	for len(s) < width {
		s = "0" + s
	}
	return s
}

// expectedSums are sum(id) and sum(amount) in cents over orders [0, n), to
// check the content of sluice's table.
func expectedSums(n int) (ids, cents int64) {
	for i := range n {
		o := orderAt(i)
		ids += o.id
		cents += o.cents
	}
	return ids, cents
}
