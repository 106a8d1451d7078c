// Package postgres is the PostgreSQL sink: it maps records to rows of one table
// and writes batches of rows into it, one transaction per batch.
//
// New reads the table from the catalog and refuses to start when the
// configuration cannot work (a missing table or column, a source that cannot
// fit its column, no unique index for ON CONFLICT). Map runs on the flow's
// workers and converts every value to its column's Go type, so a record that
// does not fit fails alone, as poison, before any write. Write runs on the lanes:
// insert mode copies a batch straight into the table; upsert mode, and insert
// mode with key_columns, copy it into a per-connection temporary staging table
// and merge it with INSERT ... ON CONFLICT. Write classifies its errors with
// flow's types: rows the database refused (*flow.RejectedError), an unavailable
// database (*flow.TransientError), a configuration that can never work
// (*flow.FatalError).
//
// With delivery exactly-once the sink also keeps the offsets table (offsets.go):
// each Write stores the batch's positions in the same transaction as its rows,
// with a compare-and-set that fences out any other writer of its partitions
// (*flow.FencedError), and Claim gives the consumer the stored positions to
// seek to.
//
// Concurrency: Map, Write, Ping, Claim and Release may be called from any
// number of goroutines at once; each Write holds one pooled connection for its
// transaction. Close may be called once, after every Write, Ping and Claim has
// returned. Neither the DSN nor the password ever appears in an error.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// Options are the settings the sink takes from outside sink.postgres.
type Options struct {
	// Lanes is how many lanes may write at once (sink.concurrency). The pool
	// holds up to Lanes+1 connections: one per lane and one for Ping. Zero
	// means one lane.
	Lanes int
	// WriteTimeout bounds one Write as a whole, and each statement on the
	// server (statement_timeout), so a dead connection or a blocked statement
	// fails the write instead of holding the lane (sink.write_timeout). Zero
	// means no bound beyond the caller's ctx.
	WriteTimeout time.Duration
	// Logger receives the sink's start-up line. Nil logs nothing.
	Logger *zap.Logger
	// Group is the consumer group (kafka.group): with delivery exactly-once,
	// the consumer_group of the offsets table's rows. Required then.
	Group string
}

// Sink writes mapped records to one PostgreSQL table. It implements flow.Mapper
// and flow.Sink.
type Sink struct {
	pool         *pgxpool.Pool
	plan         *plan
	writeTimeout time.Duration
	secrets      []string // never shown in an error: the DSN and the password
	log          *zap.Logger
	offsets      *offsetStore // delivery exactly-once only
	screen       *screen      // nil when the table has no CHECK the screen can evaluate
	// screening is set once a batch broke a CHECK (at-least-once delivery):
	// from then on each write takes the rows that break one out first and
	// writes the rest in the same transaction, until screenQuiet writes in a
	// row found none.
	screening atomic.Bool
	quiet     atomic.Int32 // screened writes in a row that found nothing
	// prescreenMissed is set once PostgreSQL refused a row the prescreen
	// let through; the screen then sends every row.
	prescreenMissed atomic.Bool
}

// screenQuiet is how many screened writes in a row that find no bad row turn
// the screening off again.
const screenQuiet = 16

const (
	// maxConnLifetimeJitter spreads the pool's connection recycling so that the
	// lanes do not all reconnect at once.
	maxConnLifetimeJitter = 5 * time.Minute
	// rollbackTimeout bounds the rollback of a failed write, which runs even
	// when the write's ctx is done.
	rollbackTimeout = 5 * time.Second
)

// New connects to PostgreSQL, reads the target table from the catalog, checks
// the configuration against it and returns the sink. Every problem with the
// configuration is reported with its key (sink.postgres.columns.amount: ...).
// ctx bounds the start-up only. The caller must Close the sink.
func New(ctx context.Context, cfg config.Postgres, opts Options) (*Sink, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	dsn := cfg.DSN.Reveal()
	if dsn == "" && cfg.DSNFile != "" {
		b, err := os.ReadFile(cfg.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("sink.postgres.dsn_file: %w", err)
		}
		dsn = strings.TrimSpace(string(b))
	}
	if dsn == "" {
		return nil, errors.New("sink.postgres.dsn: no connection string (set dsn or dsn_file)")
	}
	if cfg.Table == "" {
		return nil, errors.New("sink.postgres.table: no table named")
	}

	poolCfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message quotes the DSN with the password taken out as well as
		// it can tell; say nothing of it at all.
		return nil, errors.New("sink.postgres.dsn: cannot parse the connection string (not shown, as it may hold a password)")
	}
	s := &Sink{writeTimeout: opts.WriteTimeout, log: log}
	s.secrets = append(s.secrets, dsn)
	if pw := poolCfg.ConnConfig.Password; pw != "" {
		s.secrets = append(s.secrets, pw)
	}

	lanes := max(opts.Lanes, 1)
	poolCfg.MaxConns = int32(lanes + 1)
	poolCfg.MinConns = 0
	if poolCfg.MaxConnLifetimeJitter == 0 {
		poolCfg.MaxConnLifetimeJitter = min(maxConnLifetimeJitter, poolCfg.MaxConnLifetime/10)
	}
	params := poolCfg.ConnConfig.RuntimeParams
	if opts.WriteTimeout > 0 {
		params["statement_timeout"] = strconv.FormatInt(opts.WriteTimeout.Milliseconds(), 10)
	}
	if params["application_name"] == "" {
		params["application_name"] = "sluice"
	}

	// Read the table on a connection of its own: the pool's connections are
	// prepared (staging table) from what it says.
	conn, err := pgx.ConnectConfig(ctx, poolCfg.ConnConfig)
	if err != nil {
		return nil, s.scrub(fmt.Errorf("sink.postgres.dsn: connect to PostgreSQL: %w", err))
	}
	t, err := loadTable(ctx, conn, cfg.Table)
	var checks []checkDef
	if err == nil {
		checks, err = loadChecks(ctx, conn, t)
	}
	var offsetsTable *tableDef
	if err == nil && cfg.Delivery == config.DeliveryExactlyOnce {
		offsetsTable, err = setUpOffsets(ctx, conn, cfg, t, opts.Group)
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	_ = conn.Close(closeCtx)
	cancel()
	if err != nil {
		return nil, s.scrub(err)
	}
	if s.plan, err = newPlan(t, cfg); err != nil {
		return nil, err
	}
	if offsetsTable != nil {
		s.offsets = newOffsetStore(offsetsTable, opts.Group)
	}
	s.screen = newScreen(t, s.plan.columns, checks)

	create := s.plan.createStaging
	if create != "" {
		poolCfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Exec(ctx, create); err != nil {
				return fmt.Errorf("create the staging table: %w", err)
			}
			return nil
		}
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, poolCfg); err != nil {
		return nil, s.scrub(fmt.Errorf("sink.postgres.dsn: %w", err))
	}
	// Connect once through the pool so that a staging table that cannot be
	// created stops the start, not the first write.
	if err := s.pool.Ping(ctx); err != nil {
		s.pool.Close()
		return nil, s.scrub(fmt.Errorf("connect to PostgreSQL: %w", err))
	}
	delivery := config.DeliveryAtLeastOnce
	if s.offsets != nil {
		delivery = config.DeliveryExactlyOnce + " (offsets in " + s.offsets.tableName + ")"
	}
	log.Info("postgres sink ready",
		zap.String("table", s.plan.tableName),
		zap.Stringer("mode", s.plan.mode),
		zap.String("delivery", delivery),
		zap.Strings("columns", s.plan.columns),
		zap.Strings("key_columns", s.plan.keys),
		zap.Int32("max_conns", poolCfg.MaxConns))
	return s, nil
}

// Close closes the pool's connections. Call it once, after the last Write.
func (s *Sink) Close() { s.pool.Close() }

// Ping checks that the database answers, for readiness.
func (s *Sink) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return s.scrub(fmt.Errorf("ping PostgreSQL: %w", err))
	}
	return nil
}

// Columns returns the table's mapped columns in the order of a Row's values.
func (s *Sink) Columns() []string { return append([]string(nil), s.plan.columns...) }

// Map converts one record to a row of the table. It implements flow.Mapper:
// a record that is not JSON fails with a *flow.PoisonError of reason decode,
// one whose fields are missing or do not fit their columns with reason mapping.
// It does not block; ctx is not used.
func (s *Sink) Map(_ context.Context, r *record.Record) (record.Row, error) {
	return s.plan.mapper.mapRecord(r)
}

// Write writes a batch in one transaction. It implements flow.Sink: it returns
// nil only when every row is committed; a *flow.RejectedError when the database
// refused rows for their content (Rows names the rows when the database said
// which or the CHECK screen found them, else the caller bisects); a *flow.FatalError when the write can never
// succeed as configured; a *flow.TransientError otherwise. Rows must come from
// this sink's Map.
//
// With delivery exactly-once the batch must carry the positions of its
// partitions (record.Batch.Positions), and the transaction stores them in the
// offsets table with a compare-and-set on the offsets this sink last read
// (Claim) or wrote. A batch may then hold positions and no rows. Write fails
// with a *flow.FencedError, having written nothing, when a partition is not
// claimed for the batch's assignment or another writer has moved it on.
func (s *Sink) Write(ctx context.Context, b *record.Batch) error {
	err := s.write(ctx, b)
	var (
		re    *flow.RejectedError
		pgErr *pgconn.PgError
	)
	if s.screen != nil && len(b.Rows) > 1 && errors.As(err, &re) && errors.As(err, &pgErr) && pgErr.Code == checkViolation {
		if s.offsets == nil {
			s.quiet.Store(0)
			s.screening.Store(true)
		}
		if s.writeTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.writeTimeout)
			defer cancel()
		}
		return s.screenRejected(ctx, b, re)
	}
	return err
}

// write is one attempt at a batch, in one transaction.
func (s *Sink) write(ctx context.Context, b *record.Batch) (err error) {
	n := len(b.Rows)
	var (
		refused []int    // rows the staged screen took out, written without them
		names   []string // the check each broke
	)
	if n == 0 && len(b.Positions) == 0 {
		return nil
	}
	for i, row := range b.Rows {
		if len(row) != len(s.plan.columns) {
			return &flow.FatalError{Err: fmt.Errorf("write to %s: row %d has %d values for %d columns; rows must come from this sink's Map",
				s.plan.tableName, i, len(row), len(s.plan.columns))}
		}
	}
	var cas *casPlan
	switch {
	case s.offsets != nil:
		if len(b.Records) != n {
			return &flow.FatalError{Err: fmt.Errorf("write to %s: %d rows for %d records", s.plan.tableName, n, len(b.Records))}
		}
		if cas, err = s.offsets.prepare(b); err != nil {
			return err
		}
		if n == 0 && len(cas.parts) == 0 {
			return nil // nothing moves
		}
	case len(b.Positions) > 0:
		return &flow.FatalError{Err: fmt.Errorf("write to %s: the batch carries positions, and sink.postgres.delivery is not exactly-once", s.plan.tableName)}
	}
	if s.writeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.writeTimeout)
		defer cancel()
	}

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return s.classify("begin a write to", err, n, false)
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			_ = tx.Rollback(rctx) // the transaction is lost either way; the write's error says why
			cancel()
		}
	}()

	screen := cas == nil && n > 0 && s.screening.Load()
	switch {
	case n == 0:
	case s.plan.mode == modeCopy:
		rows := b.Rows
		pre := screen && !s.prescreenMissed.Load()
		if screen {
			if refused, names, err = s.screen.find(ctx, tx, b, pre); err != nil {
				return s.screenFailed(err)
			}
			rows = without(rows, refused)
		}
		copied, err := s.copy(ctx, tx, rows)
		if err != nil {
			var pgErr *pgconn.PgError
			if pre && s.screen.pre != nil && errors.As(err, &pgErr) && pgErr.Code == checkViolation && !s.prescreenMissed.Swap(true) {
				s.log.Info("PostgreSQL refused a row the CHECK prescreen passed; the screen sends every row from now on",
					zap.String("table", s.plan.tableName), zap.String("constraint", pgErr.ConstraintName))
			}
			return s.withRefused(s.classify("copy into", err, len(rows), true), refused, names)
		}
		if copied != int64(len(rows)) {
			return &flow.TransientError{Err: fmt.Errorf("copy into %s: copied %d rows of %d", s.plan.tableName, copied, len(rows))}
		}
	default:
		if _, err := s.copy(ctx, tx, b.Rows); err != nil {
			return s.classify("copy into the staging table of", err, n, true)
		}
		if screen {
			if refused, names, err = s.screen.takeStaged(ctx, tx, n); err != nil {
				return s.screenFailed(err)
			}
		}
		if _, err := tx.Exec(ctx, s.plan.merge); err != nil {
			return s.classify("merge into", err, n, false)
		}
	}
	if cas != nil && len(cas.parts) > 0 {
		if err := s.offsets.store(ctx, tx, cas); err != nil {
			return s.classifyOffsets(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		// With exactly-once, a commit whose outcome is unknown is retried
		// with the same compare-and-set: if it did commit, the retry is
		// fenced and the consumer seeks past the rows it wrote.
		return s.classify("commit a write to", err, n, false)
	}
	if cas != nil {
		s.offsets.advance(cas)
	}
	if screen {
		s.screened(len(refused) > 0)
	}
	if len(refused) > 0 {
		re := &flow.RejectedError{Written: true,
			Err: fmt.Errorf("write to %s: %d row(s) break the table's CHECK constraints; the batch's other rows are written", s.plan.tableName, len(refused))}
		for k, i := range refused {
			re.Rows, re.Causes = append(re.Rows, i), append(re.Causes, s.checkCause(names[k]))
		}
		return re
	}
	return nil
}

// copy copies rows into the plan's COPY target in tx and returns how many
// rows PostgreSQL says it copied.
func (s *Sink) copy(ctx context.Context, tx pgx.Tx, rows []record.Row) (int64, error) {
	c := tx.Conn()
	tag, err := c.PgConn().CopyFrom(ctx, newCopyReader(s.plan.copyInto, c.TypeMap(), rows), s.plan.copyInto.sql)
	return tag.RowsAffected(), err
}

// classify wraps a failed write's error with the operation and gives it its
// class. copied says the error came from a COPY whose rows are in batch order,
// so a line number in it names the row; n is the batch's size.
func (s *Sink) classify(op string, err error, n int, copied bool) error {
	wrapped := s.scrub(fmt.Errorf("%s %s: %w", op, s.plan.tableName, err))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Connection refused or lost, broken pipe, EOF, a timeout, the write's
		// ctx: the database, not the rows.
		return &flow.TransientError{Err: wrapped}
	}
	return classifyPg(pgErr, wrapped, n, copied)
}

// classifyPg classifies a PostgreSQL error by its SQLSTATE (see DESIGN.md).
func classifyPg(pgErr *pgconn.PgError, wrapped error, n int, copied bool) error {
	code := pgErr.Code
	switch {
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"):
		// Data exception or integrity violation: the rows' fault.
		re := &flow.RejectedError{Err: wrapped}
		row := -1
		if n == 1 {
			row = 0
		} else if line, ok := copyLine(pgErr.Where); copied && ok && line >= 1 && line <= n {
			row = line - 1
		}
		if row >= 0 {
			re.Rows = []int{row}
			re.Causes = []*flow.PoisonError{{Reason: flow.ReasonSinkRejected, Code: code, Err: wrapped}}
		}
		return re
	case strings.HasPrefix(code, "42"), code == "21000":
		// Syntax, undefined object, permission (42501), cardinality: the
		// configuration or the schema, not the rows; retrying cannot help.
		return &flow.FatalError{Err: wrapped}
	default:
		// 08 connection, 53 resources, 57 operator intervention (57014
		// statement_timeout, 57P01 terminated), 40001 serialization, 40P01
		// deadlock, 55P03 lock not available, 58 system; and any code not
		// known to be the rows' or ours: the database's, retried.
		return &flow.TransientError{Err: wrapped}
	}
}

// copyLine reads the row number COPY reports in an error's context
// ("COPY orders, line 7, column amount: ..."). Lines count rows from 1, also in
// binary COPY, which has no text lines.
func copyLine(where string) (int, bool) {
	for line := range strings.SplitSeq(where, "\n") {
		if !strings.HasPrefix(line, "COPY ") {
			continue
		}
		_, rest, ok := strings.Cut(line, ", line ")
		if !ok {
			continue
		}
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(rest[:end])
		if err != nil {
			continue
		}
		return n, true
	}
	return 0, false
}

// scrub keeps the DSN and the password out of an error's message; the error
// stays reachable through Unwrap, so errors.As still finds a *pgconn.PgError.
func (s *Sink) scrub(err error) error {
	msg := err.Error()
	clean := msg
	for _, secret := range s.secrets {
		clean = strings.ReplaceAll(clean, secret, "[redacted]")
	}
	if clean == msg {
		return err
	}
	return &scrubbedError{msg: clean, err: err}
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }
