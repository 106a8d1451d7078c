package postgres

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/internal/consumer"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// The sink is the consumer's offset store in exactly-once delivery.
var _ consumer.OffsetStore = (*Sink)(nil)

func TestOffsetsSQL(t *testing.T) {
	table := pgx.Identifier{"ops", "Offsets"}
	cas := casSQL(table)
	for _, want := range []string{
		// the compare-and-set: only the expected value moves on
		`UPDATE "ops"."Offsets" AS o SET next_offset = v.next, generation = v.generation, updated_at = now()`,
		`WHERE o.consumer_group = $1 AND o.topic = v.topic AND o."partition" = v.part`,
		`AND v.expected >= 0 AND o.next_offset = v.expected`,
		// the first write of a partition inserts its row; a row that is
		// there already means another writer was first
		`INSERT INTO "ops"."Offsets" (consumer_group, topic, "partition", next_offset, generation, updated_at)`,
		`WHERE v.expected < 0`,
		`ON CONFLICT (consumer_group, topic, "partition") DO NOTHING`,
		// the partitions moved come back; a missing one is fenced
		`SELECT topic, "partition" FROM updated UNION ALL SELECT topic, "partition" FROM inserted`,
		`unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[], $6::integer[])`,
	} {
		if !strings.Contains(cas, want) {
			t.Errorf("compare-and-set SQL lacks %q:\n%s", want, cas)
		}
	}
	load := loadOffsetsSQL(table)
	for _, want := range []string{`FROM "ops"."Offsets" AS o`, `WHERE o.consumer_group = $1`, `unnest($2::text[], $3::integer[])`} {
		if !strings.Contains(load, want) {
			t.Errorf("load SQL lacks %q:\n%s", want, load)
		}
	}
	if got, want := ddlName("Ops.Offsets"), `"ops"."offsets"`; got != want {
		t.Errorf("ddlName folds unquoted names as PostgreSQL does: got %s, want %s", got, want)
	}
	if got := ddlName(`"Ops".offsets`); got != `"Ops".offsets` {
		t.Errorf("ddlName keeps a quoted name as written: got %s", got)
	}
}

// claimed returns an offset store with each partition claimed for generation gen at next
// (-1: no row).
func claimed(claims map[record.Partition][2]int64) *offsetStore {
	o := newOffsetStore(&tableDef{Schema: "public", Name: "sluice_offsets"}, "g")
	for p, c := range claims {
		o.claims[p] = &claim{gen: uint64(c[0]), next: c[1], groupGen: 3}
	}
	return o
}

func ep(p int32) record.Partition { return record.Partition{Topic: "orders", Partition: p} }

func at(p int32, off int64, gen uint64) *record.Record {
	return &record.Record{Topic: "orders", Partition: p, Offset: off, Ticket: record.Ticket{Generation: gen}}
}

func TestPrepareComputesTheCompareAndSet(t *testing.T) {
	// Offsets are not dense: expected is what the table holds (6, past a
	// gap), not the first offset of the batch (9); next is the last + 1.
	o := claimed(map[record.Partition][2]int64{ep(0): {1, 6}, ep(1): {2, -1}, ep(2): {2, 40}})
	b := &record.Batch{
		Records: []*record.Record{at(0, 9, 1), at(1, 0, 2), at(0, 12, 1), at(1, 3, 2)},
		Positions: []record.Position{
			{Partition: ep(0), Next: 13, Generation: 1},
			{Partition: ep(1), Next: 4, Generation: 2},
			{Partition: ep(2), Next: 40, Generation: 2}, // nothing to move: left out
		},
	}
	plan, err := o.prepare(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(plan.parts, []record.Partition{ep(0), ep(1)}) ||
		!slices.Equal(plan.expected, []int64{6, -1}) || !slices.Equal(plan.next, []int64{13, 4}) ||
		!slices.Equal(plan.groupGens, []int32{3, 3}) || !slices.Equal(plan.partitions, []int32{0, 1}) {
		t.Errorf("plan = %+v, want orders/0 6->13 and orders/1 (no row)->4", plan)
	}
	o.advance(plan)
	if o.claims[ep(0)].next != 13 || o.claims[ep(1)].next != 4 {
		t.Errorf("after the commit the claims expect %d and %d, want 13 and 4", o.claims[ep(0)].next, o.claims[ep(1)].next)
	}
	// The next batch expects what this one stored: the halves of a
	// bisection chain this way.
	plan, err = o.prepare(&record.Batch{Records: []*record.Record{at(0, 20, 1)}, Positions: []record.Position{{Partition: ep(0), Next: 21, Generation: 1}}})
	if err != nil || !slices.Equal(plan.expected, []int64{13}) {
		t.Errorf("second batch: plan %+v, err %v; want expected 13", plan, err)
	}
}

func TestPrepareFencesWithoutTheDatabase(t *testing.T) {
	tests := []struct {
		name string
		b    *record.Batch
	}{
		{"not claimed (revoked or lost)", &record.Batch{Positions: []record.Position{{Partition: ep(5), Next: 3, Generation: 1}}}},
		{"an earlier assignment", &record.Batch{Records: []*record.Record{at(0, 10, 0)}, Positions: []record.Position{{Partition: ep(0), Next: 11}}}},
		{"a row the table has passed", &record.Batch{Records: []*record.Record{at(0, 5, 1)}, Positions: []record.Position{{Partition: ep(0), Next: 11, Generation: 1}}}},
		{"a position behind the table", &record.Batch{Positions: []record.Position{{Partition: ep(0), Next: 4, Generation: 1}}}},
		{"a claim fenced before", &record.Batch{Positions: []record.Position{{Partition: ep(1), Next: 50, Generation: 1}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := claimed(map[record.Partition][2]int64{ep(0): {1, 6}, ep(1): {1, 40}})
			o.claims[ep(1)].fenced = true
			_, err := o.prepare(tt.b)
			var fe *flow.FencedError
			if !errors.As(err, &fe) || len(fe.Partitions) != 1 {
				t.Fatalf("prepare = %v, want a *flow.FencedError for one partition", err)
			}
		})
	}
}

func TestPrepareRefusesABrokenBatch(t *testing.T) {
	for name, b := range map[string]*record.Batch{
		"row without position":      {Records: []*record.Record{at(0, 7, 1)}},
		"position not past its row": {Records: []*record.Record{at(0, 7, 1)}, Positions: []record.Position{{Partition: ep(0), Next: 7, Generation: 1}}},
		"two positions":             {Positions: []record.Position{{Partition: ep(0), Next: 8, Generation: 1}, {Partition: ep(0), Next: 9, Generation: 1}}},
	} {
		t.Run(name, func(t *testing.T) {
			o := claimed(map[record.Partition][2]int64{ep(0): {1, 6}})
			if _, err := o.prepare(b); flow.Classify(err) != flow.ClassFatal {
				t.Fatalf("prepare = %v, want a fatal error", err)
			}
		})
	}
}

func TestReleaseLeavesANewerClaim(t *testing.T) {
	s := &Sink{offsets: claimed(map[record.Partition][2]int64{ep(0): {2, 6}, ep(1): {1, 6}})}
	s.Release(map[record.Partition]uint64{ep(0): 1, ep(1): 1})
	if s.offsets.claims[ep(0)] == nil || s.offsets.claims[ep(1)] != nil {
		t.Errorf("Release of generation 1 must drop orders/1 (claimed for 1) and keep orders/0 (claimed for 2): %v", s.offsets.claims)
	}
}

func TestOffsetsDDLHasTheCheckedColumns(t *testing.T) {
	// The columns sluice checks are the ones the DDL creates.
	for _, c := range offsetsColumns {
		if !strings.Contains(offsetsDDL, c.name) || !strings.Contains(offsetsDDL, c.typ) {
			t.Errorf("offsetsDDL lacks column %s %s", c.name, c.typ)
		}
	}
}
