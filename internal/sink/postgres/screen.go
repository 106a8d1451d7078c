package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// A batch that breaks the table's CHECK constraints fails as a whole, and
// PostgreSQL names only the first row that broke one (a COPY's line) or none
// (the staged modes' INSERT ... SELECT). Taking such rows out one failed
// transaction at a time costs a round trip and a re-sent batch per bad row, so
// a stream with a few percent of them runs at a few percent of its clean
// speed. The screen finds every such row of the batch at once instead: one
// query evaluates the table's CHECK expressions over the batch's values, sent
// as one array per column the expressions read, and returns the rows for which
// one is false. The lane then dead-letters them and writes the rest in one
// more transaction.
//
// The screen is an optimisation, never the judge: the write itself is what
// PostgreSQL accepts or refuses. Constraints it cannot evaluate (those reading
// a column the sink does not write, or an array column) are left out, and when
// the query fails (a domain's own CHECK on the array's element type, an
// expression that raises an error) the write falls back to the row PostgreSQL
// named, or to bisection.

// checkDef is one CHECK constraint of the target table.
type checkDef struct {
	Name    string
	Expr    string   // pg_get_expr of the constraint, e.g. (amount >= (0)::numeric)
	Columns []string // the columns it reads
}

// loadChecks reads the CHECK constraints of table t (NOT VALID ones too: they
// hold for new rows).
func loadChecks(ctx context.Context, conn *pgx.Conn, t *tableDef) ([]checkDef, error) {
	rows, err := conn.Query(ctx, `
SELECT c.conname, pg_catalog.pg_get_expr(c.conbin, c.conrelid),
       ARRAY(SELECT a.attname
             FROM unnest(c.conkey) AS k(attnum)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             ORDER BY k.attnum)
FROM pg_catalog.pg_constraint c
WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.contype = 'c'
ORDER BY c.conname`, pgx.Identifier{t.Schema, t.Name}.Sanitize())
	if err != nil {
		return nil, fmt.Errorf("read the CHECK constraints of table %s: %w", t, err)
	}
	checks, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (checkDef, error) {
		var c checkDef
		err := row.Scan(&c.Name, &c.Expr, &c.Columns)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the CHECK constraints of table %s: %w", t, err)
	}
	return checks, nil
}

// screen is the query that finds a batch's rows the table's CHECK constraints
// refuse. It is immutable and safe for concurrent use.
type screen struct {
	sql    string // over the batch's values, sent as arrays
	staged string // over the staging table: deletes the rows it returns
	fields []int  // the row indexes of the columns the query reads, in its parameter order
	// numeric says, by parameter, that the column is numeric and goes as
	// text: pgx's binary numeric costs ~400 ns a value, half a COPY's time.
	numeric []bool
	checks  []string // constraint names, by the index the query returns
	// pre flags the rows worth sending to the query (prescreen.go); nil
	// when a check is beyond it.
	pre *prescreen
}

// newScreen returns the screen for the checks that read only columns the sink
// writes (columns, in row order, with their definitions in t), or nil when no
// check qualifies.
func newScreen(t *tableDef, columns []string, checks []checkDef) *screen {
	var (
		sc       screen
		conds    []string
		screened []checkDef
	)
	for _, c := range checks {
		usable := len(c.Columns) > 0
		for _, name := range c.Columns {
			col, ok := t.column(name)
			if !ok || !slices.Contains(columns, name) || strings.HasSuffix(col.Type, "]") {
				usable = false
			}
		}
		if !usable {
			continue
		}
		for _, name := range c.Columns {
			if i := slices.Index(columns, name); !slices.Contains(sc.fields, i) {
				sc.fields = append(sc.fields, i)
			}
		}
		sc.checks = append(sc.checks, c.Name)
		screened = append(screened, c)
		conds = append(conds, "("+c.Expr+") IS FALSE")
	}
	if len(sc.checks) == 0 {
		return nil
	}
	slices.Sort(sc.fields)
	sc.pre = newPrescreen(t, columns, screened)
	// ARRAY[...] of the conditions: the query returns the first one that is
	// true, 1-based, as array_position does.
	params := []string{"$1::int4[]"}
	names := []string{ordColumn}
	for n, i := range sc.fields {
		col, _ := t.column(columns[i])
		numeric := col.TypeOID == pgtype.NumericOID
		sc.numeric = append(sc.numeric, numeric)
		if numeric {
			params = append(params, fmt.Sprintf("$%d::text[]::%s[]", n+2, col.Type))
		} else {
			params = append(params, fmt.Sprintf("$%d::%s[]", n+2, col.Type))
		}
		names = append(names, pgx.Identifier{col.Name}.Sanitize())
	}
	sc.sql = fmt.Sprintf(`SELECT %s, array_position(ARRAY[%s], true)
FROM unnest(%s) AS sluice_screen(%s)
WHERE %s
ORDER BY 1`,
		ordColumn, strings.Join(conds, ", "), strings.Join(params, ", "), strings.Join(names, ", "),
		strings.Join(conds, " OR "))
	sc.staged = fmt.Sprintf(`WITH refused AS (
  DELETE FROM %s WHERE %s
  RETURNING %s, array_position(ARRAY[%s], true) AS which)
SELECT %s, which FROM refused ORDER BY 1`,
		stagingIdent.Sanitize(), strings.Join(conds, " OR "), ordColumn, strings.Join(conds, ", "), ordColumn)
	return &sc
}

// querier runs a query: a pool, a connection or a transaction.
type querier interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}

// find returns the indexes of b's rows that break a check and, for each, the
// name of the first one it breaks. It writes nothing. With pre, only the rows
// the prescreen flags are sent, and none may mean no query at all.
func (sc *screen) find(ctx context.Context, q querier, b *record.Batch, pre bool) (rows []int, names []string, err error) {
	in := b.Rows
	var ord []int32
	if pre && sc.pre != nil {
		suspects := sc.pre.suspects(b.Rows)
		if len(suspects) == 0 {
			return nil, nil, nil
		}
		in = make([]record.Row, len(suspects))
		ord = make([]int32, len(suspects))
		for k, i := range suspects {
			in[k], ord[k] = b.Rows[i], int32(i)
		}
	} else {
		ord = make([]int32, len(in))
		for i := range ord {
			ord[i] = int32(i)
		}
	}
	args := make([]any, 1+len(sc.fields))
	args[0] = ord
	for n, f := range sc.fields {
		if sc.numeric[n] {
			if args[n+1], err = numericTexts(in, f); err != nil {
				return nil, nil, err
			}
			continue
		}
		args[n+1] = arrayOf(in, f)
	}
	return sc.collect(q.Query(ctx, sc.sql, args...))
}

// takeStaged deletes the staged rows of a batch of n rows that break a check
// from the staging table, in the batch's transaction, and returns them as
// find does.
func (sc *screen) takeStaged(ctx context.Context, q querier, n int) (rows []int, names []string, err error) {
	rows, names, err = sc.collect(q.Query(ctx, sc.staged))
	for _, i := range rows {
		if i >= n {
			return nil, nil, fmt.Errorf("the staging table holds row %d of a batch of %d", i, n)
		}
	}
	return rows, names, err
}

func (sc *screen) collect(res pgx.Rows, err error) (rows []int, names []string, _ error) {
	if err != nil {
		return nil, nil, err
	}
	defer res.Close()
	for res.Next() {
		var i, which int32
		if err := res.Scan(&i, &which); err != nil {
			return nil, nil, err
		}
		if i < 0 || which < 1 || int(which) > len(sc.checks) {
			return nil, nil, fmt.Errorf("the screen returned row %d, check %d, of %d checks", i, which, len(sc.checks))
		}
		rows = append(rows, int(i))
		names = append(names, sc.checks[which-1])
	}
	return rows, names, res.Err()
}

// screenRejected widens a write's rejection by a CHECK constraint to every row
// of the batch the table's checks refuse. re is the rejection PostgreSQL's
// error made (with the row it named, if any); it is returned unchanged when
// the screen cannot say more.
func (s *Sink) screenRejected(ctx context.Context, b *record.Batch, re *flow.RejectedError) *flow.RejectedError {
	rows, names, err := s.screen.find(ctx, s.pool, b, false)
	if err == nil && slices.ContainsFunc(rows, func(i int) bool { return i >= len(b.Rows) }) {
		err = fmt.Errorf("the screen returned a row past the batch's %d", len(b.Rows))
	}
	if err != nil {
		s.log.Debug("the CHECK screen failed; isolating the batch's rejected rows one by one",
			zap.String("table", s.plan.tableName), zap.Error(s.scrub(err)))
		return re
	}
	if len(rows) == 0 || (len(rows) == 1 && slices.Equal(rows, re.Rows)) {
		return re
	}
	out := &flow.RejectedError{Err: re.Err}
	for k, i := range rows {
		if j := slices.Index(re.Rows, i); j >= 0 {
			// PostgreSQL's own words for the row it named.
			out.Rows, out.Causes = append(out.Rows, i), append(out.Causes, re.Causes[j])
			continue
		}
		out.Rows = append(out.Rows, i)
		out.Causes = append(out.Causes, s.checkCause(names[k]))
	}
	for j, i := range re.Rows {
		// A row PostgreSQL named and the screen did not (a domain's check):
		// it is refused all the same.
		if !slices.Contains(out.Rows, i) {
			out.Rows, out.Causes = append(out.Rows, i), append(out.Causes, re.Causes[j])
		}
	}
	return out
}

// checkCause is the dead-letter cause of a row the screen found breaking the
// check constraint name.
func (s *Sink) checkCause(name string) *flow.PoisonError {
	return &flow.PoisonError{Reason: flow.ReasonSinkRejected, Code: checkViolation,
		Err: fmt.Errorf("write to %s: new row violates check constraint %q", s.plan.tableName, name)}
}

// checkViolation is SQLSTATE check_violation.
const checkViolation = "23514"

// arrayOf returns field f of rows as one slice for an array parameter: typed
// ([]T) when every value has one pointer or slice type T, so that pgx plans
// the elements' encoding once, and []any otherwise.
func arrayOf(rows []record.Row, f int) any {
	var typ reflect.Type
	for _, row := range rows {
		v := row[f]
		if v == nil {
			continue
		}
		t := reflect.TypeOf(v)
		if typ == nil {
			typ = t
		}
		if t != typ {
			typ = nil
			break
		}
	}
	if typ != nil && (typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice) {
		col := reflect.MakeSlice(reflect.SliceOf(typ), len(rows), len(rows))
		for i, row := range rows {
			if v := row[f]; v != nil {
				col.Index(i).Set(reflect.ValueOf(v))
			}
		}
		return col.Interface()
	}
	col := make([]any, len(rows))
	for i, row := range rows {
		col[i] = row[f]
	}
	return col
}

// numericTexts returns field f of rows, numeric values as Map makes them, as
// their decimal text.
func numericTexts(rows []record.Row, f int) ([]pgtype.Text, error) {
	out := make([]pgtype.Text, len(rows))
	var buf []byte
	for i, row := range rows {
		switch v := row[f].(type) {
		case nil:
		case *pgtype.Numeric:
			buf = appendNumeric(buf[:0], v)
			out[i] = pgtype.Text{String: string(buf), Valid: v.Valid}
		case numericValue:
			buf = v.appendText(buf[:0])
			out[i] = pgtype.Text{String: string(buf), Valid: true}
		default:
			return nil, fmt.Errorf("a numeric column's value is a %T", v)
		}
	}
	return out, nil
}

// appendNumeric appends n in PostgreSQL's text form: Int × 10^Exp, or NaN,
// Infinity, -Infinity.
func appendNumeric(b []byte, n *pgtype.Numeric) []byte {
	switch {
	case n.NaN:
		return append(b, "NaN"...)
	case n.InfinityModifier == pgtype.Infinity:
		return append(b, "Infinity"...)
	case n.InfinityModifier == pgtype.NegativeInfinity:
		return append(b, "-Infinity"...)
	case n.Int == nil || n.Int.Sign() == 0:
		return append(b, '0')
	}
	if n.Int.Sign() < 0 {
		b = append(b, '-')
	}
	start := len(b)
	if n.Int.IsInt64() {
		v := n.Int.Int64()
		if v < 0 {
			b = strconv.AppendUint(b, uint64(-v), 10) // -MinInt64 wraps to itself, which as uint64 is right
		} else {
			b = strconv.AppendInt(b, v, 10)
		}
	} else {
		b = new(big.Int).Abs(n.Int).Append(b, 10)
	}
	if n.Exp >= 0 {
		for range n.Exp {
			b = append(b, '0')
		}
		return b
	}
	scale := int(-n.Exp)
	if pad := scale + 1 - (len(b) - start); pad > 0 { // 0.00ddd: lead with zeros
		b = append(b, make([]byte, pad)...)
		copy(b[start+pad:], b[start:len(b)-pad])
		for i := range pad {
			b[start+i] = '0'
		}
	}
	point := len(b) - scale
	b = append(b, 0)
	copy(b[point+1:], b[point:len(b)-1])
	b[point] = '.'
	return b
}

// screenFailed turns the screening off after the screen's query failed in a
// write's transaction, which is lost with it: the next attempt goes without.
func (s *Sink) screenFailed(err error) error {
	s.screening.Store(false)
	return &flow.TransientError{Err: s.scrub(fmt.Errorf("screen the rows of a batch for %s's CHECK constraints: %w", s.plan.tableName, err))}
}

// screened counts a screened write; found says it took rows out.
func (s *Sink) screened(found bool) {
	if found {
		s.quiet.Store(0)
		return
	}
	if s.quiet.Add(1) >= screenQuiet {
		s.screening.Store(false)
	}
}

// withRefused adds the rows the screen took out of a batch to the rejection
// of the rest (a COPY of the other rows that failed in the same transaction):
// the rows it names count the other rows, and become the batch's own. Any
// other error stays as it is: nothing was written, and the lane isolates the
// rows again on its own.
func (s *Sink) withRefused(err error, refused []int, names []string) error {
	var re *flow.RejectedError
	if len(refused) == 0 || !errors.As(err, &re) || len(re.Rows) == 0 {
		return err
	}
	out := &flow.RejectedError{Err: re.Err}
	for k, row := range re.Rows {
		i, skipped := row, 0 // the row-th index of the batch not in refused
		for skipped < len(refused) && refused[skipped] <= i+skipped {
			skipped++
		}
		out.Rows, out.Causes = append(out.Rows, i+skipped), append(out.Causes, re.Causes[k])
	}
	for k, i := range refused {
		out.Rows, out.Causes = append(out.Rows, i), append(out.Causes, s.checkCause(names[k]))
	}
	return out
}

// without returns rows without the indexes in drop (ascending).
func without(rows []record.Row, drop []int) []record.Row {
	if len(drop) == 0 {
		return rows
	}
	out := make([]record.Row, 0, len(rows)-len(drop))
	next := 0
	for i, row := range rows {
		if next < len(drop) && drop[next] == i {
			next++
			continue
		}
		out = append(out, row)
	}
	return out
}

// appendText appends n in PostgreSQL's text form, with its display scale:
// the base-10000 digits up to the weight, then dscale decimal digits.
func (n numericValue) appendText(b []byte) []byte {
	if n.sign == numericNegative {
		b = append(b, '-')
	}
	digit := func(k int) int16 { // base-10000 digit k; zero outside the stored ones
		if k < 0 || k >= int(n.ndigits) {
			return 0
		}
		return n.digits[k]
	}
	four := func(b []byte, d int16) []byte {
		return append(b, byte('0'+d/1000), byte('0'+d/100%10), byte('0'+d/10%10), byte('0'+d%10))
	}
	if n.weight < 0 {
		b = append(b, '0')
	} else {
		b = strconv.AppendInt(b, int64(digit(0)), 10)
		for k := 1; k <= int(n.weight); k++ {
			b = four(b, digit(k))
		}
	}
	if n.dscale > 0 {
		b = append(b, '.')
		start := len(b)
		for k := int(n.weight) + 1; len(b)-start < int(n.dscale); k++ {
			b = four(b, digit(k))
		}
		b = b[:start+int(n.dscale)]
	}
	return b
}
