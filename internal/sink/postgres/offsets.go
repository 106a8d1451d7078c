package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// Exactly-once delivery: the offsets table (sink.postgres.offsets_table) holds
// the next offset of every partition the group has written, and every write
// moves the positions of its partitions in the same transaction as its rows,
// with a compare-and-set on the value this writer last read or wrote:
//
//	UPDATE offsets SET next_offset = <after the batch> ...
//	WHERE consumer_group = $1 AND topic = ... AND partition = ... AND next_offset = <expected>
//
// (an INSERT ... ON CONFLICT DO NOTHING for a partition that has no row yet).
// When the compare-and-set matches no row, another writer has moved the
// partition on since: the transaction is rolled back and the write fails with
// a *flow.FencedError, so a zombie writer after a rebalance never writes a
// record twice. The consumer reads the stored positions through Claim when it
// is assigned partitions and seeks to them.

// offsetsDDL creates the offsets table; %s is its name.
const offsetsDDL = `CREATE TABLE IF NOT EXISTS %s (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    generation     integer     NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, "partition")
)`

// offsetsColumns are the columns sluice reads and writes, with their type
// OIDs (text, integer, bigint, timestamptz).
var offsetsColumns = []struct {
	name string
	oid  uint32
	typ  string
}{
	{"consumer_group", 25, "text"},
	{"topic", 25, "text"},
	{"partition", 23, "integer"},
	{"next_offset", 20, "bigint"},
	{"generation", 23, "integer"},
	{"updated_at", 1184, "timestamptz"},
}

// offsetStore is the sink's exactly-once state: the offsets table's SQL and,
// per partition this member owns, the assignment it is claimed for and the
// next offset the table holds for it. Safe for concurrent use.
type offsetStore struct {
	tableName string // schema.table, for messages
	group     string // consumer_group of every row this sink reads and writes
	loadSQL   string
	casSQL    string

	mu     sync.Mutex
	claims map[record.Partition]*claim
}

// claim is one partition as this member owns it.
type claim struct {
	gen      uint64 // the assignment: record.Ticket.Generation of its records
	groupGen int32  // the consumer group's generation, stored with each write
	next     int64  // next_offset in the table as of the last read or write; -1: no row
	fenced   bool   // a compare-and-set failed: every further write is refused
}

func newOffsetStore(t *tableDef, group string) *offsetStore {
	table := pgx.Identifier{t.Schema, t.Name}
	return &offsetStore{tableName: t.String(), group: group, loadSQL: loadOffsetsSQL(table), casSQL: casSQL(table),
		claims: map[record.Partition]*claim{}}
}

// loadOffsetsSQL reads the stored next offsets of a set of partitions: $1
// the group, $2 and $3 the topics and partitions.
func loadOffsetsSQL(table pgx.Identifier) string {
	return fmt.Sprintf(`SELECT o.topic, o."partition", o.next_offset FROM %s AS o
JOIN unnest($2::text[], $3::integer[]) AS v(topic, part) ON o.topic = v.topic AND o."partition" = v.part
WHERE o.consumer_group = $1`, table.Sanitize())
}

// casSQL moves the positions of a batch's partitions: $1 the group; per
// partition, $2 topic, $3 partition, $4 the next offset the writer expects the
// table to hold (-1: no row yet), $5 the new next offset, $6 the group
// generation. It returns the partitions it moved; one that is missing was
// moved on by another writer (its next_offset is not the expected one, or its
// row exists when none was expected).
func casSQL(table pgx.Identifier) string {
	return fmt.Sprintf(`WITH v AS (
    SELECT * FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[], $6::integer[]) AS v(topic, part, expected, next, generation)
), updated AS (
    UPDATE %[1]s AS o SET next_offset = v.next, generation = v.generation, updated_at = now()
    FROM v
    WHERE o.consumer_group = $1 AND o.topic = v.topic AND o."partition" = v.part
      AND v.expected >= 0 AND o.next_offset = v.expected
    RETURNING o.topic, o."partition"
), inserted AS (
    INSERT INTO %[1]s (consumer_group, topic, "partition", next_offset, generation, updated_at)
    SELECT $1, v.topic, v.part, v.next, v.generation, now() FROM v WHERE v.expected < 0
    ON CONFLICT (consumer_group, topic, "partition") DO NOTHING
    RETURNING topic, "partition"
)
SELECT topic, "partition" FROM updated UNION ALL SELECT topic, "partition" FROM inserted`, table.Sanitize())
}

// ensureOffsetsTable creates the offsets table named name when it does not
// exist, and checks that it has the columns and the primary key sluice uses.
func ensureOffsetsTable(ctx context.Context, conn *pgx.Conn, name string) (*tableDef, error) {
	exists := func() (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, "SELECT pg_catalog.to_regclass($1) IS NOT NULL", name).Scan(&ok)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return false, fmt.Errorf("sink.postgres.offsets_table: %q is not a valid table name: %s", name, pgErr.Message)
		}
		return ok, err
	}
	ok, err := exists()
	if err != nil {
		return nil, err
	}
	if !ok {
		if _, err := conn.Exec(ctx, fmt.Sprintf(offsetsDDL, ddlName(name))); err != nil {
			// Another replica may have created it at the same moment.
			if again, err2 := exists(); err2 != nil || !again {
				return nil, fmt.Errorf("sink.postgres.offsets_table: create table %s: %w", name, err)
			}
		}
	}
	t, err := loadTable(ctx, conn, name)
	if err != nil {
		return nil, errors.New(strings.Replace(err.Error(), "sink.postgres.table", "sink.postgres.offsets_table", 1))
	}
	var problems []string
	for _, want := range offsetsColumns {
		c, ok := t.column(want.name)
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("it has no column %s", want.name))
		case c.TypeOID != want.oid:
			problems = append(problems, fmt.Sprintf("column %s is %s, not %s", want.name, c.Type, want.typ))
		}
	}
	key := false
	for _, u := range t.UniqueKeys {
		if len(u) == 3 && containsAll(u, "consumer_group", "topic", "partition") {
			key = true
		}
	}
	if !key {
		problems = append(problems, "it has no primary key or unique index on exactly (consumer_group, topic, partition)")
	}
	if !t.CanInsert || !t.CanUpdate {
		problems = append(problems, "the database role may not INSERT and UPDATE it")
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("sink.postgres.offsets_table: table %s cannot hold sluice's offsets: %s (sluice creates it when it is missing, as %s)",
			t, strings.Join(problems, "; "), fmt.Sprintf(offsetsDDL, t))
	}
	return t, nil
}

// ddlName writes a configured table name for CREATE TABLE as PostgreSQL reads
// it in a query: unquoted parts fold to lower case; a name with quotes is
// taken as written.
func ddlName(name string) string {
	if strings.Contains(name, `"`) {
		return name
	}
	return pgx.Identifier(strings.Split(strings.ToLower(name), ".")).Sanitize()
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// Claim reads the stored next offsets of the partitions in ps, which this
// member was just assigned (or must seek again after a fence), and claims
// them for the assignments given (record.Ticket.Generation of the records the
// consumer will admit for them): from now on the sink writes a partition only
// for its claimed assignment, with a compare-and-set on the offset read here.
// groupGeneration is the consumer group's generation, stored with each write.
// It returns the next offsets of the partitions that have a row; the others
// have none yet (their first write inserts it). It may be called from any
// goroutine; ctx bounds the read.
func (s *Sink) Claim(ctx context.Context, groupGeneration int32, ps map[record.Partition]uint64) (map[record.Partition]int64, error) {
	o := s.offsets
	if o == nil {
		return nil, errors.New("postgres sink: Claim needs sink.postgres.delivery exactly-once")
	}
	topics := make([]string, 0, len(ps))
	parts := make([]int32, 0, len(ps))
	for p := range ps {
		topics = append(topics, p.Topic)
		parts = append(parts, p.Partition)
	}
	rows, err := s.pool.Query(ctx, o.loadSQL, o.group, topics, parts)
	if err != nil {
		return nil, s.scrub(fmt.Errorf("read the stored offsets from %s: %w", o.tableName, err))
	}
	stored := map[record.Partition]int64{}
	for rows.Next() {
		var p record.Partition
		var next int64
		if err := rows.Scan(&p.Topic, &p.Partition, &next); err != nil {
			rows.Close()
			return nil, s.scrub(fmt.Errorf("read the stored offsets from %s: %w", o.tableName, err))
		}
		stored[p] = next
	}
	if err := rows.Err(); err != nil {
		return nil, s.scrub(fmt.Errorf("read the stored offsets from %s: %w", o.tableName, err))
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for p, gen := range ps {
		next, ok := stored[p]
		if !ok {
			next = -1
		}
		o.claims[p] = &claim{gen: gen, groupGen: groupGeneration, next: next}
	}
	return stored, nil
}

// Release forgets the partitions in ps claimed for the assignments given:
// their assignment has ended, and the sink refuses any write of it still in
// a lane with a *flow.FencedError, without asking the database. A partition
// claimed since for another assignment is left alone. Any goroutine.
func (s *Sink) Release(ps map[record.Partition]uint64) {
	o := s.offsets
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for p, gen := range ps {
		if c := o.claims[p]; c != nil && c.gen == gen {
			delete(o.claims, p)
		}
	}
}

// casPlan is the compare-and-set of one write.
type casPlan struct {
	claims     []*claim
	parts      []record.Partition
	topics     []string
	partitions []int32
	expected   []int64
	next       []int64
	groupGens  []int32
}

// prepare checks a batch's positions against the claims and returns the
// compare-and-set to run with its rows. It fails with a *flow.FencedError,
// before any database work, for partitions whose assignment here is not the
// claimed one any more (revoked, lost, fenced) or whose rows the table
// already passed; and with a *flow.FatalError for a batch that breaks the
// contract of record.Position.
func (o *offsetStore) prepare(b *record.Batch) (*casPlan, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	plan := &casPlan{}
	type entry struct {
		pos   record.Position
		c     *claim
		stale bool
	}
	byPart := make(map[record.Partition]*entry, len(b.Positions))
	var fenced []record.Partition
	for _, ps := range b.Positions {
		if byPart[ps.Partition] != nil {
			return nil, &flow.FatalError{Err: fmt.Errorf("write to %s: partition %s has two positions in one batch", o.tableName, ps.Partition)}
		}
		e := &entry{pos: ps, c: o.claims[ps.Partition]}
		byPart[ps.Partition] = e
		if e.c == nil || e.c.gen != ps.Generation || e.c.fenced || (e.c.next >= 0 && ps.Next < e.c.next) {
			e.stale = true
			fenced = append(fenced, ps.Partition)
		}
	}
	var last record.Partition
	var e *entry
	for i, r := range b.Records {
		if p := r.Part(); i == 0 || p != last {
			last, e = p, byPart[p]
		}
		switch {
		case e == nil:
			return nil, &flow.FatalError{Err: fmt.Errorf("write to %s: row %d (%s@%d) has no position in an exactly-once batch", o.tableName, i, r.Part(), r.Offset)}
		case r.Offset >= e.pos.Next:
			return nil, &flow.FatalError{Err: fmt.Errorf("write to %s: the position %d of %s does not pass its row at offset %d", o.tableName, e.pos.Next, r.Part(), r.Offset)}
		case !e.stale && e.c.next >= 0 && r.Offset < e.c.next:
			// The table is past this row already: written before. The
			// batch belongs to a past of this partition.
			e.stale = true
			fenced = append(fenced, e.pos.Partition)
		}
	}
	if len(fenced) > 0 {
		return nil, &flow.FencedError{Partitions: fenced,
			Err: errors.New("their assignment here has ended, or another writer moved them on")}
	}
	for _, ps := range b.Positions {
		e := byPart[ps.Partition]
		if ps.Next == e.c.next {
			continue // nothing to move; the batch has no row of it (checked above)
		}
		plan.claims = append(plan.claims, e.c)
		plan.parts = append(plan.parts, ps.Partition)
		plan.topics = append(plan.topics, ps.Topic)
		plan.partitions = append(plan.partitions, ps.Partition.Partition)
		plan.expected = append(plan.expected, e.c.next)
		plan.next = append(plan.next, ps.Next)
		plan.groupGens = append(plan.groupGens, e.c.groupGen)
	}
	return plan, nil
}

// store runs the compare-and-set in the write's transaction. A partition it
// did not move is fenced: its claim refuses every further write, and store
// returns a *flow.FencedError (the caller rolls back).
func (o *offsetStore) store(ctx context.Context, tx pgx.Tx, plan *casPlan) error {
	rows, err := tx.Query(ctx, o.casSQL, o.group, plan.topics, plan.partitions, plan.expected, plan.next, plan.groupGens)
	if err != nil {
		return err
	}
	moved := make(map[record.Partition]bool, len(plan.parts))
	for rows.Next() {
		var p record.Partition
		if err := rows.Scan(&p.Topic, &p.Partition); err != nil {
			rows.Close()
			return err
		}
		moved[p] = true
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var fenced []record.Partition
	var detail []string
	for i, p := range plan.parts {
		if !moved[p] {
			fenced = append(fenced, p)
			if plan.expected[i] < 0 {
				detail = append(detail, fmt.Sprintf("%s: a row exists, none was expected", p))
			} else {
				detail = append(detail, fmt.Sprintf("%s: next_offset is not %d", p, plan.expected[i]))
			}
		}
	}
	if len(fenced) == 0 {
		return nil
	}
	o.mu.Lock()
	for i, p := range plan.parts {
		if !moved[p] {
			plan.claims[i].fenced = true
		}
	}
	o.mu.Unlock()
	return &flow.FencedError{Partitions: fenced,
		Err: fmt.Errorf("compare-and-set in %s matched no row (%s): another writer moved them on", o.tableName, strings.Join(detail, ", "))}
}

// advance records the positions a committed write stored.
func (o *offsetStore) advance(plan *casPlan) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, c := range plan.claims {
		c.next = plan.next[i]
	}
}

// classifyOffsets classifies an error of the offsets table's statements. The
// rows are not at fault whatever the SQLSTATE: a data or integrity error there
// means the offsets table is not as sluice made it.
func (s *Sink) classifyOffsets(err error) error {
	var fe *flow.FencedError
	if errors.As(err, &fe) {
		return err
	}
	wrapped := s.scrub(fmt.Errorf("store the positions in %s: %w", s.offsets.tableName, err))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return &flow.TransientError{Err: wrapped}
	}
	switch code := pgErr.Code; {
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"), strings.HasPrefix(code, "42"), code == "21000":
		return &flow.FatalError{Err: wrapped}
	default:
		return &flow.TransientError{Err: wrapped}
	}
}

// setUpOffsets creates the offsets table when it is missing and checks it,
// for delivery exactly-once.
func setUpOffsets(ctx context.Context, conn *pgx.Conn, cfg config.Postgres, target *tableDef, group string) (*tableDef, error) {
	if group == "" {
		return nil, errors.New("sink.postgres.delivery: exactly-once needs the consumer group (kafka.group), the offsets table's consumer_group")
	}
	name := cfg.OffsetsTable
	if name == "" {
		name = config.DefaultOffsetsTable
	}
	t, err := ensureOffsetsTable(ctx, conn, name)
	if err != nil {
		return nil, err
	}
	if t.Schema == target.Schema && t.Name == target.Name {
		return nil, fmt.Errorf("sink.postgres.offsets_table: %s is the target table (sink.postgres.table); name a table of its own", t)
	}
	return t, nil
}
