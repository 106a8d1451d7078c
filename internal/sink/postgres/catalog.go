package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// loadTable reads the target table from the catalog: its columns and types,
// the unique indexes ON CONFLICT can use, and the role's privileges. name is
// as configured: schema.table, or table found through the search_path.
func loadTable(ctx context.Context, conn *pgx.Conn, name string) (*tableDef, error) {
	var (
		oid        uint32
		t          tableDef
		relkind    string
		searchPath string
	)
	err := conn.QueryRow(ctx, `
SELECT c.oid, n.nspname, c.relname, c.relkind::text,
       has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'UPDATE'),
       has_database_privilege(current_database(), 'TEMPORARY')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1)`, name).Scan(
		&oid, &t.Schema, &t.Name, &relkind, &t.CanInsert, &t.CanUpdate, &t.CanTemp)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		msg := fmt.Sprintf("sink.postgres.table: table %s does not exist", name)
		if !strings.Contains(name, ".") {
			_ = conn.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&searchPath)
			msg += fmt.Sprintf(" in the search_path (%s); name it schema.table", searchPath)
		}
		return nil, errors.New(msg)
	case errors.As(err, &pgErr):
		return nil, fmt.Errorf("sink.postgres.table: %q is not a valid table name: %s", name, pgErr.Message)
	case err != nil:
		return nil, fmt.Errorf("read table %s from the catalog: %w", name, err)
	}
	switch relkind {
	case "r", "p": // table, partitioned table
	case "v", "m":
		return nil, fmt.Errorf("sink.postgres.table: %s is a view, not a table", &t)
	default:
		return nil, fmt.Errorf("sink.postgres.table: %s is not a table (relkind %s)", &t, relkind)
	}

	rows, err := conn.Query(ctx, `
WITH RECURSIVE base(attnum, typ, domain_not_null, depth) AS (
    SELECT a.attnum, a.atttypid, false, 0
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT b.attnum, t.typbasetype, t.typnotnull, b.depth + 1
    FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.typ
    WHERE t.typtype = 'd'
)
SELECT a.attname,
       (SELECT b.typ FROM base b WHERE b.attnum = a.attnum ORDER BY b.depth DESC LIMIT 1),
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attnotnull OR EXISTS (SELECT 1 FROM base b WHERE b.attnum = a.attnum AND b.domain_not_null),
       a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("read the columns of table %s: %w", &t, err)
	}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.Type, &c.NotNull, &c.Generated); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the columns of table %s: %w", &t, err)
		}
		t.Columns = append(t.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of table %s: %w", &t, err)
	}

	rows, err = conn.Query(ctx, `
SELECT ARRAY(
    SELECT a.attname
    FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE k.n <= i.indnkeyatts
    ORDER BY k.n)
FROM pg_catalog.pg_index i
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL
ORDER BY i.indisprimary DESC, i.indexrelid`, oid)
	if err != nil {
		return nil, fmt.Errorf("read the unique indexes of table %s: %w", &t, err)
	}
	t.UniqueKeys, err = pgx.CollectRows(rows, pgx.RowTo[[]string])
	if err != nil {
		return nil, fmt.Errorf("read the unique indexes of table %s: %w", &t, err)
	}
	return &t, nil
}
