package postgres

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/config"
)

// writeMode is how a batch reaches the table.
type writeMode uint8

const (
	// modeCopy copies the batch straight into the table (insert, no key_columns).
	modeCopy writeMode = iota + 1
	// modeUpsert copies into the staging table, then inserts the last row of
	// each key and updates the rows that exist (upsert).
	modeUpsert
	// modeInsertNew copies into the staging table, then inserts the first row of
	// each key whose key is not in the table yet (insert with key_columns): a
	// redelivered record is skipped.
	modeInsertNew
)

func (m writeMode) String() string {
	switch m {
	case modeCopy:
		return "insert (copy)"
	case modeUpsert:
		return "upsert"
	case modeInsertNew:
		return "insert (skip existing keys)"
	}
	return "?"
}

// stagingTable is the per-connection temporary table batches are copied into in
// the staged modes; ordColumn in it holds a row's index in its batch.
const (
	stagingTable = "sluice_staging"
	ordColumn    = "sluice_ord"
)

var stagingIdent = pgx.Identifier{"pg_temp", stagingTable}

// plan is everything the sink decided at start: the mapping, the mode and the
// SQL it runs. It is immutable and safe for concurrent use.
type plan struct {
	table     pgx.Identifier
	tableName string // schema.table, for messages
	mapper    *mapper
	columns   []string // mapped columns, in row order
	keys      []string
	mode      writeMode
	copyInto  *copyTarget // the table (modeCopy) or the staging table

	// Staged modes only.
	stagingColumns []string // columns then ordColumn
	createStaging  string   // run once per connection
	merge          string   // staging -> table, in the batch's transaction
}

// newPlan checks the configuration against the table and builds the plan, or
// returns every problem found, each naming its configuration key.
func newPlan(t *tableDef, cfg config.Postgres) (*plan, error) {
	var errs []error
	mode := modeCopy
	switch cfg.Mode {
	case "", "insert":
		if len(cfg.KeyColumns) > 0 {
			mode = modeInsertNew
		}
	case "upsert":
		mode = modeUpsert
		if len(cfg.KeyColumns) == 0 {
			errs = append(errs, errors.New("sink.postgres.key_columns: upsert mode needs key_columns (the conflict target)"))
		}
	default:
		errs = append(errs, fmt.Errorf("sink.postgres.mode: unknown mode %q (want insert or upsert)", cfg.Mode))
	}
	switch cfg.Delivery {
	case "", config.DeliveryAtLeastOnce, config.DeliveryExactlyOnce:
	default:
		errs = append(errs, fmt.Errorf("sink.postgres.delivery: unknown delivery %q (want at-least-once or exactly-once)", cfg.Delivery))
	}
	if !t.CanInsert {
		errs = append(errs, fmt.Errorf("sink.postgres.table: the database role may not INSERT into table %s", t))
	}
	if mode == modeUpsert && !t.CanUpdate {
		errs = append(errs, fmt.Errorf("sink.postgres.table: upsert mode needs UPDATE on table %s, which the database role may not do", t))
	}
	if mode != modeCopy && !t.CanTemp {
		errs = append(errs, fmt.Errorf("sink.postgres.key_columns: with key_columns the sink stages batches in a temporary table, and the database role may not create one (grant TEMPORARY on the database)"))
	}

	m, err := newMapper(t, cfg.Columns)
	if err != nil {
		errs = append(errs, err)
	}
	if m != nil && mode != modeCopy && len(cfg.KeyColumns) > 0 {
		if err := checkKeys(t, cfg.Columns, cfg.KeyColumns); err != nil {
			errs = append(errs, err)
		}
		if _, ok := cfg.Columns[ordColumn]; ok {
			errs = append(errs, fmt.Errorf("%s: the column name %q is reserved for the sink's staging table", columnKey(ordColumn), ordColumn))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	p := &plan{
		table:     pgx.Identifier{t.Schema, t.Name},
		tableName: t.String(),
		mapper:    m,
		columns:   m.columns(),
		mode:      mode,
	}
	if mode != modeCopy {
		p.keys = slices.Clone(cfg.KeyColumns)
		p.stagingColumns = append(slices.Clone(p.columns), ordColumn)
		p.createStaging = createStagingSQL(p.table, p.columns)
		p.merge = mergeSQL(p.table, p.columns, p.keys, mode)
		p.copyInto = newCopyTarget(stagingIdent, p.stagingColumns, m.fields, true)
	} else {
		p.copyInto = newCopyTarget(p.table, p.columns, m.fields, false)
	}
	return p, nil
}

// checkKeys checks that every key column is mapped and that a unique index or
// constraint covers exactly the key columns, which ON CONFLICT needs.
func checkKeys(t *tableDef, mapping map[string]string, keys []string) error {
	var errs []error
	seen := map[string]bool{}
	for _, k := range keys {
		switch {
		case seen[k]:
			errs = append(errs, fmt.Errorf("sink.postgres.key_columns: column %q is listed twice", k))
		case mapping[k] == "":
			errs = append(errs, fmt.Errorf("sink.postgres.key_columns: column %q is not mapped in sink.postgres.columns", k))
		}
		seen[k] = true
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	want := slices.Sorted(slices.Values(keys))
	for _, u := range t.UniqueKeys {
		if slices.Equal(slices.Sorted(slices.Values(u)), want) {
			return nil
		}
	}
	have := "it has none"
	if len(t.UniqueKeys) > 0 {
		sets := make([]string, len(t.UniqueKeys))
		for i, u := range t.UniqueKeys {
			sets[i] = "(" + strings.Join(u, ", ") + ")"
		}
		have = "it has " + strings.Join(sets, ", ")
	}
	return fmt.Errorf("sink.postgres.key_columns: table %s has no unique index or constraint on exactly (%s), which ON CONFLICT needs (%s; partial, expression and deferrable ones do not count)",
		t, strings.Join(keys, ", "), have)
}

// createStagingSQL creates the connection's staging table: the mapped columns
// with the target's types and no constraints (a bad row fails in the merge,
// where the lane can bisect it), and the row's index in its batch.
func createStagingSQL(table pgx.Identifier, cols []string) string {
	return fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s ON COMMIT DELETE ROWS AS SELECT %s, 0::integer AS %s FROM %s WITH NO DATA",
		stagingIdent.Sanitize(), quoteList(cols), quote(ordColumn), table.Sanitize())
}

// mergeSQL moves a staged batch into the table. Upsert keeps, per key, the row
// latest in the batch (rows of a partition are in offset order) and updates the
// non-key columns of an existing row; insert with keys keeps the first and skips
// keys already there.
func mergeSQL(table pgx.Identifier, cols, keys []string, mode writeMode) string {
	order := "DESC"
	if mode == modeInsertNew {
		order = "ASC"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "INSERT INTO %s (%s) SELECT DISTINCT ON (%s) %s FROM %s ORDER BY %s, %s %s ON CONFLICT (%s) ",
		table.Sanitize(), quoteList(cols), quoteList(keys), quoteList(cols), stagingIdent.Sanitize(),
		quoteList(keys), quote(ordColumn), order, quoteList(keys))
	var set []string
	if mode == modeUpsert {
		for _, c := range cols {
			if !slices.Contains(keys, c) {
				set = append(set, quote(c)+" = EXCLUDED."+quote(c))
			}
		}
	}
	if len(set) == 0 {
		b.WriteString("DO NOTHING")
	} else {
		b.WriteString("DO UPDATE SET " + strings.Join(set, ", "))
	}
	return b.String()
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quote(n)
	}
	return strings.Join(q, ", ")
}
