package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
)

func ordersTable() *tableDef {
	t := testTable(
		col("id", pgtype.Int8OID, true),
		col("region", pgtype.TextOID, true),
		col("amount", pgtype.NumericOID, false),
		col("Note", pgtype.TextOID, false),
	)
	t.UniqueKeys = [][]string{{"id"}, {"region", "id"}}
	return t
}

func ordersConfig(mode string, keys ...string) config.Postgres {
	return config.Postgres{
		Table: "orders", Mode: mode, KeyColumns: keys,
		Columns: map[string]string{"id": "value.id", "region": "value.region", "amount": "value.amount", "Note": "value.note"},
	}
}

func TestPlanSQL(t *testing.T) {
	tests := []struct {
		name       string
		cfg        config.Postgres
		mode       writeMode
		wantMerge  string
		wantCreate string
	}{
		{
			name: "insert copies straight into the table",
			cfg:  ordersConfig("insert"),
			mode: modeCopy,
		},
		{
			name: "upsert keeps the batch's last row per key and updates the rest",
			cfg:  ordersConfig("upsert", "id"),
			mode: modeUpsert,
			wantMerge: `INSERT INTO "public"."orders" ("id", "region", "amount", "Note") ` +
				`SELECT DISTINCT ON ("id") "id", "region", "amount", "Note" FROM "pg_temp"."sluice_staging" ` +
				`ORDER BY "id", "sluice_ord" DESC ` +
				`ON CONFLICT ("id") DO UPDATE SET "region" = EXCLUDED."region", "amount" = EXCLUDED."amount", "Note" = EXCLUDED."Note"`,
			wantCreate: `CREATE TEMP TABLE IF NOT EXISTS "pg_temp"."sluice_staging" ON COMMIT DELETE ROWS AS ` +
				`SELECT "id", "region", "amount", "Note", 0::integer AS "sluice_ord" FROM "public"."orders" WITH NO DATA`,
		},
		{
			name: "upsert on a composite key in any order",
			cfg:  ordersConfig("upsert", "id", "region"),
			mode: modeUpsert,
			wantMerge: `INSERT INTO "public"."orders" ("id", "region", "amount", "Note") ` +
				`SELECT DISTINCT ON ("id", "region") "id", "region", "amount", "Note" FROM "pg_temp"."sluice_staging" ` +
				`ORDER BY "id", "region", "sluice_ord" DESC ` +
				`ON CONFLICT ("id", "region") DO UPDATE SET "amount" = EXCLUDED."amount", "Note" = EXCLUDED."Note"`,
		},
		{
			name: "insert with key_columns keeps the first row per key and skips existing keys",
			cfg:  ordersConfig("insert", "id"),
			mode: modeInsertNew,
			wantMerge: `INSERT INTO "public"."orders" ("id", "region", "amount", "Note") ` +
				`SELECT DISTINCT ON ("id") "id", "region", "amount", "Note" FROM "pg_temp"."sluice_staging" ` +
				`ORDER BY "id", "sluice_ord" ASC ON CONFLICT ("id") DO NOTHING`,
		},
		{
			name: "upsert with only key columns mapped does nothing on conflict",
			cfg:  config.Postgres{Table: "orders", Mode: "upsert", KeyColumns: []string{"id"}, Columns: map[string]string{"id": "$offset"}},
			mode: modeUpsert,
			wantMerge: `INSERT INTO "public"."orders" ("id") SELECT DISTINCT ON ("id") "id" FROM "pg_temp"."sluice_staging" ` +
				`ORDER BY "id", "sluice_ord" DESC ON CONFLICT ("id") DO NOTHING`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newPlan(ordersTable(), tt.cfg)
			if err != nil {
				t.Fatalf("newPlan: %v", err)
			}
			if p.mode != tt.mode {
				t.Fatalf("mode = %v, want %v", p.mode, tt.mode)
			}
			if p.merge != tt.wantMerge {
				t.Errorf("merge =\n%s\nwant\n%s", p.merge, tt.wantMerge)
			}
			if tt.wantCreate != "" && p.createStaging != tt.wantCreate {
				t.Errorf("createStaging =\n%s\nwant\n%s", p.createStaging, tt.wantCreate)
			}
			if tt.mode == modeCopy {
				if p.createStaging != "" || p.stagingColumns != nil {
					t.Errorf("copy mode has a staging table: %q", p.createStaging)
				}
			} else if want := append(slices.Clone(p.columns), "sluice_ord"); !slices.Equal(p.stagingColumns, want) {
				t.Errorf("stagingColumns = %v, want %v", p.stagingColumns, want)
			}
		})
	}
}

func TestPlanQuotesIdentifiers(t *testing.T) {
	tbl := &tableDef{Schema: `we"ird`, Name: "Orders", CanInsert: true, CanUpdate: true, CanTemp: true,
		Columns:    []column{col(`i"d`, pgtype.Int8OID, true), col("v", pgtype.TextOID, false)},
		UniqueKeys: [][]string{{`i"d`}}}
	p, err := newPlan(tbl, config.Postgres{Mode: "upsert", KeyColumns: []string{`i"d`}, Columns: map[string]string{`i"d`: "$offset", "v": "$topic"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`INSERT INTO "we""ird"."Orders" ("i""d", "v")`, `ON CONFLICT ("i""d")`, `"v" = EXCLUDED."v"`} {
		if !strings.Contains(p.merge, want) {
			t.Errorf("merge %q lacks %q", p.merge, want)
		}
	}
}

func TestPlanRefuses(t *testing.T) {
	noRights := ordersTable()
	noRights.CanInsert, noRights.CanUpdate, noRights.CanTemp = false, false, false
	noUnique := ordersTable()
	noUnique.UniqueKeys = nil
	tests := []struct {
		name  string
		table *tableDef
		cfg   config.Postgres
		want  string
	}{
		{"upsert without keys", ordersTable(), ordersConfig("upsert"),
			"sink.postgres.key_columns: upsert mode needs key_columns"},
		{"unknown mode", ordersTable(), ordersConfig("merge"),
			`sink.postgres.mode: unknown mode "merge"`},
		{"unknown delivery", ordersTable(), func() config.Postgres { c := ordersConfig("insert"); c.Delivery = "exactly-twice"; return c }(),
			`sink.postgres.delivery: unknown delivery "exactly-twice"`},
		{"key not mapped", ordersTable(), func() config.Postgres {
			c := ordersConfig("upsert", "id")
			delete(c.Columns, "id")
			return c
		}(), `sink.postgres.key_columns: column "id" is not mapped in sink.postgres.columns`},
		{"key twice", ordersTable(), ordersConfig("upsert", "id", "id"), `column "id" is listed twice`},
		{"no unique index on exactly the keys", ordersTable(), ordersConfig("upsert", "region"),
			"sink.postgres.key_columns: table public.orders has no unique index or constraint on exactly (region), which ON CONFLICT needs (it has (id), (region, id);"},
		{"no unique index at all", noUnique, ordersConfig("insert", "id"),
			"on exactly (id), which ON CONFLICT needs (it has none;"},
		{"no insert privilege", noRights, ordersConfig("insert"), "may not INSERT into table public.orders"},
		{"no update privilege", noRights, ordersConfig("upsert", "id"), "upsert mode needs UPDATE on table public.orders"},
		{"no temp privilege", noRights, ordersConfig("insert", "id"), "grant TEMPORARY on the database"},
		{"reserved column name", func() *tableDef {
			t := ordersTable()
			t.Columns = append(t.Columns, col("sluice_ord", pgtype.Int4OID, false))
			return t
		}(), func() config.Postgres {
			c := ordersConfig("upsert", "id")
			c.Columns["sluice_ord"] = "$partition"
			return c
		}(), `sink.postgres.columns.sluice_ord: the column name "sluice_ord" is reserved`},
		{"bad column with good keys", ordersTable(), func() config.Postgres {
			c := ordersConfig("upsert", "id")
			c.Columns["amount"] = "$timestamp"
			return c
		}(), `sink.postgres.columns.amount: source $timestamp cannot be converted to column "amount" of type numeric`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newPlan(tt.table, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("newPlan err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	s := &Sink{plan: &plan{tableName: "public.orders"}, secrets: []string{"postgres://u:hunter22@db/x", "hunter22"}}
	pg := func(code, where string) error {
		return &pgconn.PgError{Severity: "ERROR", Code: code, Message: "boom", Where: where}
	}
	tests := []struct {
		name   string
		err    error
		n      int
		copied bool
		class  flow.Class
		rows   []int
	}{
		{"check violation in COPY names the row", pg("23514", "COPY orders, line 8"), 10, true, flow.ClassRejected, []int{7}},
		{"not null in COPY with a column", pg("23502", "COPY orders, line 1, column amount: null input"), 10, true, flow.ClassRejected, []int{0}},
		{"COPY line under a trigger's context", pg("22003", "PL/pgSQL function f() line 3 at assignment\nCOPY orders, line 4"), 10, true, flow.ClassRejected, []int{3}},
		{"COPY line past the batch is ignored", pg("22001", "COPY orders, line 11"), 10, true, flow.ClassRejected, nil},
		{"merge errors do not name a row", pg("23505", ""), 10, false, flow.ClassRejected, nil},
		{"a line outside a COPY step is ignored", pg("23505", "COPY orders, line 2"), 10, false, flow.ClassRejected, nil},
		{"a one-row batch names its row", pg("23505", ""), 1, false, flow.ClassRejected, []int{0}},
		{"undefined column", pg("42703", ""), 10, false, flow.ClassFatal, nil},
		{"permission denied", pg("42501", ""), 10, false, flow.ClassFatal, nil},
		{"cardinality", pg("21000", ""), 10, false, flow.ClassFatal, nil},
		{"connection failure", pg("08006", ""), 10, false, flow.ClassTransient, nil},
		{"too many connections", pg("53300", ""), 10, false, flow.ClassTransient, nil},
		{"statement timeout", pg("57014", ""), 10, false, flow.ClassTransient, nil},
		{"terminated", pg("57P01", ""), 10, false, flow.ClassTransient, nil},
		{"serialization", pg("40001", ""), 10, false, flow.ClassTransient, nil},
		{"deadlock", pg("40P01", ""), 10, false, flow.ClassTransient, nil},
		{"lock not available", pg("55P03", ""), 10, false, flow.ClassTransient, nil},
		{"system error", pg("58030", ""), 10, false, flow.ClassTransient, nil},
		{"EOF", io.ErrUnexpectedEOF, 10, true, flow.ClassTransient, nil},
		{"deadline", context.DeadlineExceeded, 10, true, flow.ClassTransient, nil},
		{"wrapped PgError", fmt.Errorf("statement description failed: %w", pg("42P01", "")), 10, true, flow.ClassFatal, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.classify("copy into", tt.err, tt.n, tt.copied)
			if got := flow.Classify(err); got != tt.class {
				t.Fatalf("class = %v, want %v (err %v)", got, tt.class, err)
			}
			if !strings.Contains(err.Error(), "copy into public.orders") {
				t.Errorf("err %q does not say what failed", err)
			}
			var re *flow.RejectedError
			if errors.As(err, &re) {
				if !slices.Equal(re.Rows, tt.rows) || len(re.Causes) != len(re.Rows) {
					t.Fatalf("rows = %v, causes %d, want %v", re.Rows, len(re.Causes), tt.rows)
				}
				for _, c := range re.Causes {
					if c.Reason != flow.ReasonSinkRejected || c.Code != tt.err.(*pgconn.PgError).Code {
						t.Errorf("cause = %+v", c)
					}
				}
			}
			var pgErr *pgconn.PgError
			if _, isPg := errors.AsType[*pgconn.PgError](tt.err); isPg && !errors.As(err, &pgErr) {
				t.Errorf("the *pgconn.PgError is not reachable through %v", err)
			}
		})
	}
}

func TestScrubHidesTheDSN(t *testing.T) {
	s := &Sink{plan: &plan{tableName: "public.orders"}, secrets: []string{"postgres://u:hunter22@db/x", "hunter22"}}
	inner := &pgconn.PgError{Code: "08006", Message: `could not connect with postgres://u:hunter22@db/x or hunter22`}
	err := s.classify("begin a write to", inner, 3, false)
	if strings.Contains(err.Error(), "hunter22") || strings.Contains(err.Error(), "postgres://") {
		t.Fatalf("err leaks a secret: %q", err)
	}
	if !errors.Is(err, inner) || flow.Classify(err) != flow.ClassTransient {
		t.Fatalf("scrubbing lost the error's chain or class: %v", err)
	}
}
