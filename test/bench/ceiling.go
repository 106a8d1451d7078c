package main

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

func createTable(ctx context.Context, conn *pgx.Conn, table string) error {
	if _, err := conn.Exec(ctx, "CREATE TABLE "+pgx.Identifier{table}.Sanitize()+" "+tableShape); err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	return nil
}

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

// ceilingResult is one raw COPY run.
type ceilingResult struct {
	elapsed   time.Duration
	clientCPU time.Duration // this process's CPU while copying
	cpu       phaseCPU
}

// runCeiling copies orders [0, n) into table over conns connections, each
// owning an equal contiguous share of the rows and writing it in batches of
// batch rows, one transaction per batch, as fast as it can. The rows are built
// before the clock starts.
func runCeiling(ctx context.Context, dsn, table string, n, partitions, conns, batch int, watch *watcher) (ceilingResult, error) {
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = orderAt(i).row(partitions)
	}
	cs := make([]*pgx.Conn, conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				_ = c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range cs {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return ceilingResult{}, fmt.Errorf("ceiling: connect: %w", err)
		}
		cs[i] = c
	}
	runtime.GC() // the row build's garbage is not the copy's

	ident := pgx.Identifier{table}
	before := watch.sample()
	cpu0 := selfCPU()
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for k, c := range cs {
		lo, hi := k*n/conns, (k+1)*n/conns
		g.Go(func() error {
			for from := lo; from < hi; from += batch {
				to := min(hi, from+batch)
				tx, err := c.Begin(gctx)
				if err != nil {
					return err
				}
				copied, err := tx.CopyFrom(gctx, ident, tableColumns, pgx.CopyFromRows(rows[from:to]))
				if err == nil && copied != int64(to-from) {
					err = fmt.Errorf("copied %d rows of %d", copied, to-from)
				}
				if err != nil {
					_ = tx.Rollback(context.WithoutCancel(gctx))
					return err
				}
				if err := tx.Commit(gctx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	res := ceilingResult{elapsed: time.Since(start), clientCPU: selfCPU() - cpu0}
	res.cpu = watch.since(before) // before the connections close, so their backends still count
	if err != nil {
		return ceilingResult{}, fmt.Errorf("ceiling: copy into %s: %w", table, err)
	}
	return res, nil
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
