package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

func dropTable(ctx context.Context, conn *pgx.Conn, table string) error {
	if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize()); err != nil {
		return fmt.Errorf("drop table %s: %w", table, err)
	}
	return nil
}

// settle asks PostgreSQL to write out its dirty buffers before a timed phase,
// so that a checkpoint caused by the previous phase does not land in the next
// one. It needs superuser (or pg_checkpoint); without it the phases run unsettled.
func settle(ctx context.Context, conn *pgx.Conn) bool {
	_, err := conn.Exec(ctx, "CHECKPOINT")
	return err == nil
}

// ceilingResult is one raw COPY run (or the upsert baseline's staged merge).
type ceilingResult struct {
	elapsed   time.Duration
	clientCPU time.Duration // this process's CPU while copying
	cpu       phaseCPU
}

func (c ceilingResult) rate(n int) float64 { return rate(n, c.elapsed) }

// buildRows builds the rows of orders [0, n) as pgx encodes them, once for
// every baseline.
func buildRows(n, partitions int) [][]any {
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = orderAt(i).row(partitions)
	}
	return rows
}

// connectAll opens n connections; the returned function closes them.
func connectAll(ctx context.Context, dsn string, n int, afterConnect string) ([]*pgx.Conn, func(), error) {
	cs := make([]*pgx.Conn, 0, n)
	closeAll := func() {
		for _, c := range cs {
			_ = c.Close(context.WithoutCancel(ctx))
		}
	}
	for range n {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("connect: %w", err)
		}
		cs = append(cs, c)
		if afterConnect != "" {
			if _, err := c.Exec(ctx, afterConnect); err != nil {
				closeAll()
				return nil, nil, err
			}
		}
	}
	return cs, closeAll, nil
}

// runCeiling copies rows into table over conns connections, each owning an
// equal contiguous share of the rows and writing it in batches of batch rows,
// one transaction per batch, as fast as it can. The rows are built before the
// clock starts.
func runCeiling(ctx context.Context, dsn, table string, rows [][]any, conns, batch int, watch *watcher) (ceilingResult, error) {
	cs, closeAll, err := connectAll(ctx, dsn, conns, "")
	if err != nil {
		return ceilingResult{}, fmt.Errorf("ceiling: %w", err)
	}
	defer closeAll()
	ident := pgx.Identifier{table}
	res, err := timedShares(ctx, cs, len(rows), batch, watch, func(ctx context.Context, c *pgx.Conn, from, to int) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		copied, err := tx.CopyFrom(ctx, ident, tableColumns, pgx.CopyFromRows(rows[from:to]))
		if err == nil && copied != int64(to-from) {
			err = fmt.Errorf("copied %d rows of %d", copied, to-from)
		}
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return ceilingResult{}, fmt.Errorf("ceiling: copy into %s: %w", table, err)
	}
	return res, nil
}

// upsertBaseline is sluice's upsert done by hand with the rows built in
// memory: per batch, in one transaction, a COPY into a per-connection
// temporary staging table and sluice's own merge, INSERT ... SELECT DISTINCT
// ON (id) ... ON CONFLICT (id) DO UPDATE, into an empty table keyed on id.
func (e *env) upsertBaseline(ctx context.Context, rows [][]any) (ceilingResult, error) {
	table, err := e.table(ctx, "upsert_base", tableShapeKeyed)
	if err != nil {
		return ceilingResult{}, err
	}
	e.cleanup("drop table "+table, func(c context.Context) error { return dropTable(c, e.pg, table) })
	t := pgx.Identifier{table}.Sanitize()
	staging := "CREATE TEMP TABLE IF NOT EXISTS bench_staging ON COMMIT DELETE ROWS AS SELECT *, 0::integer AS ord FROM " + t + " WITH NO DATA"
	cs, closeAll, err := connectAll(ctx, e.o.dsn, e.o.lanes, staging)
	if err != nil {
		return ceilingResult{}, fmt.Errorf("upsert baseline: %w", err)
	}
	defer closeAll()
	var set []string
	for _, c := range tableColumns[1:] {
		set = append(set, c+" = EXCLUDED."+c)
	}
	cols := strings.Join(tableColumns, ", ")
	merge := "INSERT INTO " + t + " (" + cols + ") SELECT DISTINCT ON (id) " + cols +
		" FROM bench_staging ORDER BY id, ord DESC ON CONFLICT (id) DO UPDATE SET " + strings.Join(set, ", ")
	stagingCols := append(slices.Clone(tableColumns), "ord")
	logf("upsert baseline: COPY into staging and INSERT ... ON CONFLICT of %d rows over %d connections", len(rows), e.o.lanes)
	res, err := timedShares(ctx, cs, len(rows), e.o.batch, e.watch, func(ctx context.Context, c *pgx.Conn, from, to int) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		buf := make([]any, 0, len(stagingCols))
		i := from - 1
		src := pgx.CopyFromFunc(func() ([]any, error) {
			if i++; i >= to {
				return nil, nil
			}
			buf = append(append(buf[:0], rows[i]...), int32(i-from))
			return buf, nil
		})
		if _, err = tx.CopyFrom(ctx, pgx.Identifier{"bench_staging"}, stagingCols, src); err == nil {
			_, err = tx.Exec(ctx, merge)
		}
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return ceilingResult{}, fmt.Errorf("upsert baseline into %s: %w", table, err)
	}
	var n int64
	if err := e.pg.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil || n != int64(len(rows)) {
		return ceilingResult{}, fmt.Errorf("upsert baseline: table %s holds %d rows of %d (%v)", table, n, len(rows), err)
	}
	return res, nil
}

// timedShares runs write over the connections, each owning an equal
// contiguous share of rows [0, n) in batches of batch rows, and times it.
func timedShares(ctx context.Context, cs []*pgx.Conn, n, batch int, watch *watcher,
	write func(ctx context.Context, c *pgx.Conn, from, to int) error,
) (ceilingResult, error) {
	runtime.GC() // the row build's garbage is not the copy's
	before := watch.sample()
	cpu0 := selfCPU()
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for k, c := range cs {
		lo, hi := k*n/len(cs), (k+1)*n/len(cs)
		g.Go(func() error {
			for from := lo; from < hi; from += batch {
				if err := write(gctx, c, from, min(hi, from+batch)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	res := ceilingResult{elapsed: time.Since(start), clientCPU: selfCPU() - cpu0}
	res.cpu = watch.since(before) // before the connections close, so their backends still count
	return res, err
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tableCheck is what checkTable finds in sluice's table.
type tableCheck struct {
	rows, distinct int64
	sumID, cents   int64
}

func checkTable(ctx context.Context, conn *pgx.Conn, table string) (tableCheck, error) {
	var c tableCheck
	err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)),
		coalesce(sum(id), 0)::bigint, coalesce(sum(amount) * 100, 0)::bigint FROM `+pgx.Identifier{table}.Sanitize()).
		Scan(&c.rows, &c.distinct, &c.sumID, &c.cents)
	if err != nil {
		return c, fmt.Errorf("check table %s: %w", table, err)
	}
	return c, nil
}

func serverVersion(ctx context.Context, conn *pgx.Conn) (string, error) {
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "", err
	}
	return v, nil
}
