package postgres

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/record"
)

// column is one column of the target table as the catalog describes it.
type column struct {
	Name      string
	TypeOID   uint32 // the column's type, or a domain's base type
	Type      string // as format_type prints it, for messages
	NotNull   bool   // the column or its domain is NOT NULL
	Generated bool   // a generated column, which cannot be written
}

// tableDef is the target table as the catalog describes it.
type tableDef struct {
	Schema, Name string
	Columns      []column   // in table order
	UniqueKeys   [][]string // column sets of unique indexes ON CONFLICT can use
	CanInsert    bool
	CanUpdate    bool
	CanTemp      bool // the role may create temporary tables (the staging table)
}

func (t *tableDef) String() string { return t.Schema + "." + t.Name }

func (t *tableDef) column(name string) (column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return column{}, false
}

// field is one mapped column: where its value comes from and what it must be.
type field struct {
	col  column
	kind kind
	src  source
	// A value path's member (see pathTree) is found[slot]; rest is the path
	// below it left for gjson.Get, "" if none.
	slot int
	rest string
}

// mapper turns records into rows for one table. It is immutable after
// newMapper and safe for concurrent use.
type mapper struct {
	fields   []field  // in table order, which is the row order
	needJSON bool     // some field reads the value as JSON
	paths    pathTree // the keys of the value paths
	members  int      // how many members a scan of the value notes
	// The objects whose every key the scan checks for duplicates, besides
	// those inside the paths' unique members: all of them when the whole value
	// is stored as jsonb, or all of them in a value that is not an object,
	// which value paths read with gjson.
	uniqAll, uniqNonObject bool
	checksKeys             bool // the scan needs a uniq
	keySets                keySetPool
}

// columnKey is the configuration path of a mapped column, for messages.
func columnKey(name string) string { return "sink.postgres.columns." + name }

// newMapper checks the configured mapping (column -> source) against the table
// and returns the mapper, or every problem found, each naming its key.
func newMapper(t *tableDef, mapping map[string]string) (*mapper, error) {
	if len(mapping) == 0 {
		return nil, errors.New("sink.postgres.columns: no columns are mapped")
	}
	var errs []error
	byName := make(map[string]field, len(mapping))
	for _, name := range slices.Sorted(maps.Keys(mapping)) {
		f, err := newField(t, name, mapping[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", columnKey(name), err))
			continue
		}
		byName[name] = f
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	m := &mapper{fields: make([]field, 0, len(byName))}
	// A key given twice is refused wherever sluice or PostgreSQL would pick
	// one of its values: on a value path, in what gjson reads, and in what a
	// jsonb column stores (jsonb keeps the last). json and text columns store
	// the text as it is, both members kept.
	unique := map[int]bool{} // the members stored in jsonb or read with gjson
	for _, c := range t.Columns {
		if f, ok := byName[c.Name]; ok {
			switch {
			case f.src.kind == srcPath:
				f.slot, f.rest = m.paths.add(f.src.arg, &m.members)
				if f.rest != "" || f.kind == kindJSONB {
					unique[f.slot] = true
				}
				m.needJSON, m.uniqNonObject = true, true
			case f.src.kind == srcValue && f.kind == kindJSONB:
				m.needJSON, m.uniqAll = true, true
			case f.src.kind == srcValue && f.kind == kindJSON:
				m.needJSON = true
			}
			m.fields = append(m.fields, f)
		}
	}
	m.paths.markUnique(unique)
	m.checksKeys = m.uniqAll || m.uniqNonObject || len(unique) > 0
	return m, nil
}

func newField(t *tableDef, name, src string) (field, error) {
	c, ok := t.column(name)
	if !ok {
		msg := fmt.Sprintf("column %q does not exist in table %s", name, t)
		for _, other := range t.Columns {
			if strings.EqualFold(other.Name, name) {
				msg += fmt.Sprintf(" (did you mean %q?)", other.Name)
				break
			}
		}
		return field{}, errors.New(msg)
	}
	if c.Generated {
		return field{}, fmt.Errorf("column %q of table %s is a generated column and cannot be written", name, t)
	}
	k, ok := kindOf(c.TypeOID)
	if !ok {
		return field{}, fmt.Errorf("column %q has type %s, which the postgres sink cannot write (supported: %s)", name, c.Type, supportedTypes)
	}
	s, err := parseSource(src)
	if err != nil {
		return field{}, err
	}
	if !k.accepts(s.kind) {
		return field{}, fmt.Errorf("source %s cannot be converted to column %q of type %s", s, name, c.Type)
	}
	return field{col: c, kind: k, src: s}, nil
}

// mapRecord converts one record to a row. The JSON value is read once: one
// pass validates it and finds the members the value paths name.
// Errors are *flow.PoisonError: decode when the value is not JSON, is nested
// deeper than maxDepth or gives a key twice in an object the mapping reads;
// mapping when a field is missing or does not fit its column.
func (m *mapper) mapRecord(r *record.Record) (record.Row, error) {
	var (
		doc    string
		object bool
		found  []member
	)
	if m.needJSON {
		if len(r.Value) == 0 {
			return nil, flow.Decode(errors.New("the record value is empty; the mapped columns need a JSON document"))
		}
		var buf [maxStackMembers]member
		if m.members <= len(buf) {
			found = buf[:m.members]
		} else {
			found = make([]member, m.members)
		}
		var (
			u  *uniq
			us uniq
		)
		if m.checksKeys {
			us = uniq{pool: &m.keySets, all: m.uniqAll, nonObject: m.uniqNonObject}
			u = &us
		}
		res := scanValue(r.Value, &m.paths, found, u)
		if err := res.err(); err != nil {
			return nil, err
		}
		object = res.object
		// gjson reads the value in place; fromJSON copies what a row keeps.
		doc = unsafeString(r.Value)
	}
	row := make(record.Row, len(m.fields))
	for i := range m.fields {
		f := &m.fields[i]
		var (
			v   any
			err error
		)
		if f.src.kind == srcPath {
			v, err = f.fromPath(f.pathResult(doc, object, found), r.Value)
		} else {
			v, err = f.value(r, &m.keySets)
		}
		if err != nil {
			return nil, err
		}
		row[i] = v
	}
	return row, nil
}

// err returns the decode error of a value the scan refused, or nil.
func (res *scanResult) err() error {
	switch res.status {
	case scanInvalid:
		return flow.Decode(errors.New("the record value is not valid JSON"))
	case scanTooDeep:
		return flow.Decode(errTooDeep)
	case scanDupKey:
		return flow.Decode(fmt.Errorf("the record value gives the key %s twice in one object, in %s; "+
			"sluice refuses a value whose fields are ambiguous", snippet(res.dupKey, true), res.dupAt))
	}
	return nil
}

// errTooDeep is the cause of a JSON value nested deeper than maxDepth.
var errTooDeep = fmt.Errorf("the record value nests arrays and objects more than %d levels deep, the most sluice reads", maxDepth)

// fromPath converts this field's value read from the JSON value (res, as
// gjson.Get finds it in value).
func (f *field) fromPath(res gjson.Result, value []byte) (any, error) {
	switch {
	case !res.Exists():
		return f.null("is missing")
	case res.Type == gjson.Null:
		return f.null("is null")
	}
	v, p := fromJSON(f.kind, res, value)
	if p != "" {
		return nil, f.fail(describe(res), p)
	}
	return v, nil
}

// value reads and converts this field's value from r when it is not a value
// path; JSON in the key or a header is checked for duplicate keys with
// keySets.
func (f *field) value(r *record.Record, keySets *keySetPool) (any, error) {
	var (
		v any
		p problem
	)
	switch f.src.kind {
	case srcValue:
		if r.Value == nil {
			return f.null("is null (a tombstone)")
		}
		if f.kind == kindJSON || f.kind == kindJSONB {
			// Validated as JSON and its depth (and for jsonb its keys) by mapRecord.
			if p = checkJSON(f.kind, r.Value); p != "" {
				return nil, f.fail("the value", p)
			}
			return r.Value, nil
		}
		if v, p = fromBytes(f.kind, r.Value); p != "" {
			return nil, f.fail(snippet(unsafeString(r.Value), true), p)
		}
	case srcKey:
		if r.Key == nil {
			return f.null("is null")
		}
		if err := f.checkBytesJSON(r.Key, keySets); err != nil {
			return nil, err
		}
		if v, p = fromBytes(f.kind, r.Key); p != "" {
			return nil, f.fail(snippet(unsafeString(r.Key), true), p)
		}
	case srcHeader:
		h, ok := r.Header(f.src.arg)
		switch {
		case !ok:
			return f.null("is missing")
		case h == nil:
			return f.null("is null")
		}
		if err := f.checkBytesJSON(h, keySets); err != nil {
			return nil, err
		}
		if v, p = fromBytes(f.kind, h); p != "" {
			return nil, f.fail(snippet(unsafeString(h), true), p)
		}
	case srcTopic:
		return r.Topic, nil // only text columns accept $topic
	case srcPartition:
		if v, p = fromInt64(f.kind, int64(r.Partition)); p != "" {
			return nil, f.fail(strconv.FormatInt(int64(r.Partition), 10), p)
		}
	case srcOffset:
		if v, p = fromInt64(f.kind, r.Offset); p != "" {
			return nil, f.fail(strconv.FormatInt(r.Offset, 10), p)
		}
	case srcTimestamp:
		if r.Timestamp.IsZero() {
			return f.null("is not set")
		}
		if v, p = fromTime(f.kind, r.Timestamp); p != "" {
			return nil, f.fail("timestamp", p)
		}
	}
	return v, nil
}

// checkBytesJSON refuses, for a json or jsonb column, bytes ($key, a header)
// that are JSON nested deeper than maxDepth or, for jsonb, giving a key twice
// in one object, with reason decode as for the value. Bytes that are not JSON
// at all are fromBytes's to refuse.
func (f *field) checkBytesJSON(b []byte, keySets *keySetPool) error {
	var u *uniq
	switch f.kind {
	case kindJSONB:
		u = &uniq{pool: keySets, all: true, nonObject: true}
	case kindJSON:
	default:
		return nil
	}
	switch res := scanValue(b, &pathTree{}, nil, u); res.status {
	case scanTooDeep:
		return flow.Decode(fmt.Errorf("column %q from %s: %w", f.col.Name, f.src, errNestedTooDeep))
	case scanDupKey:
		return flow.Decode(fmt.Errorf("column %q from %s: the JSON gives the key %s twice in one object; "+
			"sluice refuses a value whose fields are ambiguous", f.col.Name, f.src, snippet(res.dupKey, true)))
	}
	return nil
}

// errNestedTooDeep is the cause of JSON in a key or header nested deeper than maxDepth.
var errNestedTooDeep = fmt.Errorf("the JSON nests arrays and objects more than %d levels deep, the most sluice reads", maxDepth)

// null returns NULL for a nullable column, and a mapping error for a NOT NULL one.
func (f *field) null(why string) (any, error) {
	if !f.col.NotNull {
		return nil, nil
	}
	return nil, flow.Mapping(fmt.Errorf("column %q is NOT NULL but %s %s", f.col.Name, f.src, why))
}

// fail returns the mapping error for a value that does not fit the column.
func (f *field) fail(found string, p problem) error {
	why := string(p)
	if p == wrongType {
		why = "want " + f.kind.want()
	}
	return flow.Mapping(fmt.Errorf("column %q (%s) from %s: found %s, %s", f.col.Name, f.col.Type, f.src, found, why))
}

// columns returns the names of the mapped columns in row order.
func (m *mapper) columns() []string {
	names := make([]string, len(m.fields))
	for i, f := range m.fields {
		names[i] = f.col.Name
	}
	return names
}
