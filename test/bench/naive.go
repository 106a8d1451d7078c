package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// naiveResult is one run of the naive baseline.
type naiveResult struct {
	elapsed    time.Duration // client start to the last commit (committed lag 0)
	firstWrite time.Duration // client start to the first COPY committed
	firstRows  int           // rows of the first batch
	batches    int
	cpu        time.Duration // this process's CPU during the run
	phase      phaseCPU
	check      tableCheck
}

// sustainedRate is rows per second from the first batch written to the last,
// counting the rows after the first batch.
func (n naiveResult) sustainedRate(records int) float64 {
	return rate(records-n.firstRows, n.elapsed-n.firstWrite)
}

// naiveOrder is an order as encoding/json decodes it.
type naiveOrder struct {
	ID        int64     `json:"id"`
	Customer  string    `json:"customer"`
	Amount    float64   `json:"amount"`
	Currency  string    `json:"currency"`
	CreatedAt time.Time `json:"created_at"`
}

// naive is the loop people write by hand: one goroutine, one connection; poll
// whatever the client has, decode every record with encoding/json, COPY the
// batch (one transaction), commit its offsets synchronously, repeat. The
// client keeps franz-go's defaults.
func (e *env) naive(ctx context.Context, topic string) (naiveResult, error) {
	var res naiveResult
	table, err := e.table(ctx, "naive", tableShape)
	if err != nil {
		return res, err
	}
	e.cleanup("drop table "+table, func(c context.Context) error { return dropTable(c, e.pg, table) })
	group := "sluice_bench_" + e.id + "_naive"
	e.cleanup("delete group "+group, func(c context.Context) error { return deleteGroup(c, e.adm, group) })
	conn, err := pgx.Connect(ctx, e.o.dsn)
	if err != nil {
		return res, fmt.Errorf("naive: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	logf("naive baseline: poll, encoding/json, COPY, commit in one goroutine, group %s", group)

	before := e.watch.sample()
	cpu0 := selfCPU()
	start := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	if err != nil {
		return res, fmt.Errorf("naive: kafka client: %w", err)
	}
	defer cl.Close()
	ident := pgx.Identifier{table}
	written := 0
	deadline := time.Now().Add(e.o.timeout)
	for written < e.o.records {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("naive: %d rows of %d after %s", written, e.o.records, e.o.timeout)
		}
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return res, fmt.Errorf("naive: fetch: %w", ferr)
		}
		recs := fetches.Records()
		if len(recs) == 0 {
			continue
		}
		rows := make([][]any, 0, len(recs))
		for _, r := range recs {
			var o naiveOrder
			if err := json.Unmarshal(r.Value, &o); err != nil {
				return res, fmt.Errorf("naive: decode %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			}
			rows = append(rows, []any{o.ID, o.Customer, o.Amount, o.Currency, o.CreatedAt, r.Partition, r.Offset})
		}
		if _, err := conn.CopyFrom(ctx, ident, tableColumns, pgx.CopyFromRows(rows)); err != nil {
			return res, fmt.Errorf("naive: copy: %w", err)
		}
		if err := cl.CommitRecords(ctx, recs...); err != nil {
			return res, fmt.Errorf("naive: commit: %w", err)
		}
		if res.batches++; res.batches == 1 {
			res.firstWrite, res.firstRows = time.Since(start), len(recs)
		}
		written += len(recs)
	}
	res.elapsed = time.Since(start)
	res.cpu = selfCPU() - cpu0
	res.phase = e.watch.since(before)
	if res.check, err = checkTable(ctx, e.pg, table); err != nil {
		return res, err
	}
	if res.check.distinct != int64(e.o.records) {
		return res, fmt.Errorf("naive: table holds %d distinct records of %d", res.check.distinct, e.o.records)
	}
	return res, nil
}
