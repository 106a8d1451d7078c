package postgres

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/tidwall/gjson"
)

// scanDocs are JSON values, valid and not, that the one-pass reader must judge
// and read exactly as gjson.ValidBytes and gjson.Get do.
var scanDocs = []string{
	// valid
	`{}`, ` { } `, `[]`, `0`, `-0.5e+3`, `"s"`, `true`, `null`, "\t\r\n{\"a\":1}\n",
	`{"a":1,"b":"x","c":null,"d":true,"e":false,"f":[1,{"g":2}],"h":{"i":[]}}`,
	`{"a":{"b":{"c":"deep"}},"b":[[],[{}],[[1]]]}`,
	`{"a":1,"a":2}`,                                      // the first of a name
	`{"a":"x","a":{"b":2}}`,                              // a path below a goes on to the next a
	`{"a":{"c":1},"a":{"b":2},"a":{"b":3}}`,              // ... and stops at the first found
	`{"a":[{"b":1},{"b":2}],"a":{"b":3}}`,                // an array is not an object
	`{"a":{"b":null},"a":{"b":2}}`,                       // null is found
	`{"\u0061":1,"b\"":2,"a\\.b":3,"a.b":4}`,             // escaped keys are compared unescaped
	`{"a":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","b":"é"}`, // escaped and UTF-8 strings
	`{"é":"\u0000","a":"\\"}`,
	`{"a":-0,"b":0.0,"c":1E5,"d":-1e-5,"e":12345678901234567890123}`,
	`{ "a" : [ 1 , 2 ] , "b" : { "c" : 3 } }`,
	`[{"a":1},{"b":2}]`,    // a top-level array: paths index it (value.0.a)
	`"{\"a\":1}"`,          // a top-level string that looks like an object
	`{"":1,"a":{"":2}}`,    // empty keys
	"{\"a\":\"\xff\xfe\"}", // gjson does not check UTF-8
	`{"a":{"b":{"c":1}},"a":{"b":{"d":2}}}`,
	`{"a":{"b":{"x":1}},"a":{"b":{"c":2}}}`,          // a.b.c searches every a and b, in order
	`{"a":{"b":1,"b":{"c":3}}}`,                      // names given twice below the top
	`{"a":{"b":"s"},"a":{"b":{"c":1}}}`,              // a.b is the first b, a.b.c the first c
	`{"a":{"b":{"c":null}},"a":{"b":{"c":1}}}`,       // a null is found
	`{"a":{},"a":{"b":{}},"a":{"b":{"c":[1]}}}`,      // empty objects on the way
	`{"a":{"0":"zero","1":{"b":"one"}}}`,             // numeric keys of an object
	`{"a":{"\u0062":{"c":"escaped"}},"b":{"c":"x"}}`, // escaped keys below the top
	`{"a":{"b.c":1,"b":{"c":2}}}`,                    // a key with a dot below the top
	`{ "a" : { "b" : { "c" : 1 } } , "b" : [ ] }`,    // space everywhere
	`{"a":{"b":{"c":1},"b":[{"c":2}]}}`,              // an array is not searched by key
	`{"x":{"a":{"b":1}},"a":{"b":2}}`,                // a deeper a is not the top-level a
	// not valid
	`{"a":{"b":1,}}`, `{"a":{"b" 1}}`, `{"a":{"b":{"c":1}}`, `{"a":{"b":1}}}`, `{"a":{"b":{"c":1},}}`, `{"a":{"b":{"c":01}}}`,
	``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`, `{"a" 1}`, `{a:1}`,
	`[1,]`, `[,1]`, `[1 2]`, `[`, `]`, `{"a":[1}`, `{"a":{]}`, `{"a":1}}`, `{"a":1}x`, `{"a":1} {}`,
	`01`, `-`, `-a`, `1.`, `.5`, `1e`, `1e+`, `+1`, `0x1`, `1.5.2`, `NaN`, `Infinity`, `tru`, `nul`, `falsey`,
	`"abc`, `"a\"`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\tb\"", "\"a\x00\"", `{"a":"\q"}`, `{"a\q":1}`,
	`{"a":1}` + "\x00", `{"a":tru}`, `{"a":nulll}`, `{"a":[[[]]]`,
	strings.Repeat("[", 100) + strings.Repeat("]", 100),
	strings.Repeat("[", 100) + strings.Repeat("]", 99),
	strings.Repeat(`{"a":`, 50) + "1" + strings.Repeat("}", 50),
}

// scanPaths are the value paths read from every doc.
var scanPaths = []string{
	"a", "b", "c", "e", "é", "0", `a\.b`, `b"`, // top-level keys
	"a.b", "a.c", "a.x", "a.b.c", "a.b.d", `a.b\.c`, "b.c", "h.i", // keys through objects
	"a.0", "a.1.b", "0.a", "1.b", "f.1.g", "b.0", // numeric keys, which gjson also reads as array indexes
}

// pathReader reads paths the way the mapper does, into columns of type oid.
func pathReader(t testing.TB, paths []string, oid uint32) *mapper {
	t.Helper()
	cols := make([]column, len(paths))
	mapping := make(map[string]string, len(paths))
	for i, p := range paths {
		name := fmt.Sprintf("c%d", i)
		cols[i] = col(name, oid, false)
		mapping[name] = "value." + p
	}
	return mustMapper(t, testTable(cols...), mapping)
}

// checkScan checks the one-pass reader against gjson on doc: the verdict is
// gjson.ValidBytes's but for values nested deeper than maxDepth (too deep)
// and keys given twice in an object the mapping reads (duplicate), and every
// path reads what gjson.Get reads.
func checkScan(t *testing.T, m *mapper, doc string) {
	t.Helper()
	found := make([]member, m.members)
	u := &uniq{pool: &m.keySets, all: m.uniqAll, nonObject: m.uniqNonObject}
	if !m.checksKeys {
		u = nil
	}
	res := scanValue([]byte(doc), &m.paths, found, u)
	valid, depth := gjson.ValidBytes([]byte(doc)), nesting(doc)
	switch {
	case !valid:
		if res.status != scanInvalid && (res.status != scanTooDeep || depth <= maxDepth) {
			t.Fatalf("scanValue(%q) = %+v, want invalid (gjson.ValidBytes is false)", doc, res)
		}
		return
	case depth > maxDepth:
		if res.status != scanTooDeep {
			t.Fatalf("scanValue(%q) = %+v, want too deep (%d levels)", doc, res, depth)
		}
		return
	}
	v := gjson.Parse(doc)
	if res.object != v.IsObject() {
		t.Fatalf("scanValue(%q) object = %v, want %v", doc, res.object, v.IsObject())
	}
	var dups []string
	switch {
	case !v.IsObject() && m.uniqNonObject, m.uniqAll:
		dups = anyDuplicates(v)
	case v.IsObject():
		dups = pathDuplicates(v, &m.paths)
	}
	if len(dups) > 0 {
		if res.status != scanDupKey || !slices.Contains(dups, res.dupKey) {
			t.Fatalf("scanValue(%q) = %+v, want a duplicate of one of %q", doc, res, dups)
		}
		return
	}
	if res.status != scanOK {
		t.Fatalf("scanValue(%q) = %+v, want valid", doc, res)
	}
	for i := range m.fields {
		f := &m.fields[i]
		got, want := f.pathResult(doc, res.object, found), gjson.Get(doc, f.src.arg)
		// Num is not compared: a top-level number's is left zero, as nothing reads it.
		if got.Type != want.Type || got.Raw != want.Raw || got.Str != want.Str || got.Index != want.Index {
			t.Errorf("in %q, %s = %+v, gjson.Get = %+v", doc, f.src, got, want)
		}
	}
}

// nesting returns how deeply arrays and objects nest in doc, counting the
// brackets outside strings (for a valid doc, its depth).
func nesting(doc string) int {
	depth, deepest := 0, 0
	for i := 0; i < len(doc); i++ {
		switch doc[i] {
		case '"':
			for i++; i < len(doc) && doc[i] != '"'; i++ {
				if doc[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
			deepest = max(deepest, depth)
		case '}', ']':
			depth--
		}
	}
	return deepest
}

// pathDuplicates returns the keys of tree that an object of v along the
// tree gives twice, and every key given twice inside a unique member, read
// with gjson: the oracle of scanValue's duplicates.
func pathDuplicates(v gjson.Result, tree *pathTree) []string {
	if !v.IsObject() {
		return nil
	}
	var dups []string
	seen := map[string]bool{}
	v.ForEach(func(key, value gjson.Result) bool {
		k := tree.keys.find(key.String())
		if k < 0 {
			return true
		}
		if seen[key.String()] {
			dups = append(dups, key.String())
		}
		seen[key.String()] = true
		node := &tree.nodes[k]
		if node.unique {
			dups = append(dups, anyDuplicates(value)...)
		}
		if node.below != nil {
			dups = append(dups, pathDuplicates(value, node.below)...)
		}
		return true
	})
	return dups
}

// anyDuplicates returns every key given twice in one object of v, read with
// gjson: the oracle of documentDuplicate.
func anyDuplicates(v gjson.Result) []string {
	if !v.IsObject() && !v.IsArray() {
		return nil
	}
	var dups []string
	seen := map[string]bool{}
	v.ForEach(func(key, value gjson.Result) bool {
		if v.IsObject() {
			if seen[key.String()] {
				dups = append(dups, key.String())
			}
			seen[key.String()] = true
		}
		dups = append(dups, anyDuplicates(value)...)
		return true
	})
	return dups
}

// scanReaders read scanPaths into jsonb columns, whose members are checked
// for duplicate keys whole, and into json columns, whose are not (but for the
// paths read with gjson).
func scanReaders(tb testing.TB) []*mapper {
	return []*mapper{pathReader(tb, scanPaths, pgtype.JSONBOID), pathReader(tb, scanPaths, pgtype.JSONOID)}
}

func TestScanMatchesGjson(t *testing.T) {
	for _, m := range scanReaders(t) {
		for _, doc := range scanDocs {
			checkScan(t, m, doc)
		}
	}
}

func FuzzScanMatchesGjson(f *testing.F) {
	for _, doc := range scanDocs {
		f.Add([]byte(doc))
	}
	ms := scanReaders(f)
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, m := range ms {
			checkScan(t, m, string(doc))
		}
	})
}

// TestScanDepth checks the nesting bound at its edge, through arrays, plain
// objects and the objects the paths descend into, and that a value nested a
// million deep is refused at once, without allocating.
func TestScanDepth(t *testing.T) {
	m := pathReader(t, []string{"a.a.a", "b"}, pgtype.Int8OID)
	nest := func(open, close string, n int, inner string) string {
		return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
	}
	tests := []struct {
		name string
		doc  string
		want scanStatus
	}{
		{"arrays at the bound", nest("[", "]", maxDepth, "1"), scanOK},
		{"arrays past the bound", nest("[", "]", maxDepth+1, "1"), scanTooDeep},
		{"empty arrays past the bound", nest("[", "]", maxDepth, "[]"), scanTooDeep}, // an empty container is a level too
		{"empty object past the bound", nest(`{"a":`, "}", maxDepth, "{}"), scanTooDeep},
		{"objects at the bound", nest(`{"x":`, "}", maxDepth, "1"), scanOK},
		{"objects past the bound", nest(`{"x":`, "}", maxDepth+1, "1"), scanTooDeep},
		{"path objects at the bound", nest(`{"a":`, "}", maxDepth, "1"), scanOK},
		{"path objects past the bound", nest(`{"a":`, "}", maxDepth+1, "1"), scanTooDeep},
		{"mixed past the bound", `{"b":` + nest(`[{"x":`, "}]", maxDepth/2, "1") + `}`, scanTooDeep},
		{"mixed at the bound", `{"b":` + nest(`[{"x":`, "}]", maxDepth/2-1, "[1]") + `}`, scanOK},
		{"invalid before the bound", nest("[", "}", 10, "1"), scanInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			found := make([]member, m.members)
			if got := scanValue([]byte(tt.doc), &m.paths, found, nil); got.status != tt.want {
				t.Fatalf("scanValue = %+v, want status %d", got, tt.want)
			}
			checkScan(t, m, tt.doc)
		})
	}
	deep := []byte(`{"a":` + strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20) + `}`)
	found := make([]member, m.members)
	allocs := testing.AllocsPerRun(10, func() {
		clear(found)
		if got := scanValue(deep, &m.paths, found, nil); got.status != scanTooDeep {
			t.Fatalf("a million levels deep: %+v, want too deep", got)
		}
	})
	if allocs != 0 {
		t.Errorf("refusing a deep value allocated %v times, want 0", allocs)
	}
}

// documentDuplicate is a key scanValue finds twice in one object of v when
// it checks every object, as for a value stored in a jsonb column.
func documentDuplicate(v []byte, pool *keySetPool) (string, bool) {
	res := scanValue(v, &pathTree{}, nil, &uniq{pool: pool, all: true, nonObject: true})
	return res.dupKey, res.status == scanDupKey
}

// TestDuplicateKey checks the duplicate finder on objects small and large,
// nested, escaped and in arrays, against gjson's reading.
func TestDuplicateKey(t *testing.T) {
	wide := func(n int, extra string) string {
		var sb strings.Builder
		sb.WriteString("{")
		for i := range n {
			fmt.Fprintf(&sb, `"k%d":%d,`, i, i)
		}
		sb.WriteString(extra + `"end":0}`)
		return sb.String()
	}
	tests := []struct {
		doc  string
		want string // the duplicate key, "" for none
	}{
		{`{}`, ""},
		{`[1,"a",{"a":1}]`, ""},
		{`{"a":1,"b":2}`, ""},
		{`{"a":1,"a":2}`, "a"},
		{`{"a":{"b":1},"b":{"a":1}}`, ""},                   // the same key in different objects
		{`[{"a":1},{"a":2}]`, ""},                           // in different elements
		{`{"a":[{"x":1,"y":2,"x":3}]}`, "x"},                // deep in an array
		{`{"a":"x","\u0061":"y"}`, "a"},                     // equal once unescaped
		{`{"a\"b":1,"a\u0022b":2}`, `a"b`},                  // escaped quotes
		{`{"\ud83d\ude00":1,"😀":2}`, "😀"},                   // a surrogate pair is its character
		{`{"a":"{\"b\":1,\"b\":2}"}`, ""},                   // an object in a string is text
		{`{"a":1,"b":{"c":{"d":1,"d":2}},"a":3}`, "d"},      // the inner object closes first
		{`{"":1,"":2}`, ""},                                 // the empty key twice (want "" cannot say so: the oracle does)
		{wide(dupLinear-1, `"k0":1,`), "k0"},                // found one by one
		{wide(1000, ""), ""},                                // sorted, none
		{wide(1000, `"k999":1,`), "k999"},                   // sorted, the last against the first
		{wide(1000, `"k0":{"k0":1,"k1":2},`), "k0"},         // sorted, with a nested object
		{`{"o":` + wide(40, `"k3":1,`) + `,"p":[1]}`, "k3"}, // a large object inside a small one
	}
	for _, tt := range tests {
		key, dup := documentDuplicate([]byte(tt.doc), new(keySetPool))
		want := anyDuplicates(gjson.Parse(tt.doc))
		if dup != (len(want) > 0) || dup && !slices.Contains(want, key) {
			t.Errorf("documentDuplicate(%.80q) = %q, %v; gjson sees duplicates %q", tt.doc, key, dup, want)
		}
		if tt.want != "" && key != tt.want {
			t.Errorf("documentDuplicate(%.80q) = %q, want %q", tt.doc, key, tt.want)
		}
	}
	// The keySet is handed in rather than taken from the pool, which under the
	// race detector drops some of what it is given.
	small, ks := []byte(`{"a":{"b":[1,2]},"c":"d","e":{"f":null}}`), new(keySet)
	u := &uniq{pool: new(keySetPool), all: true}
	check := func() {
		u.ks, ks.v = ks, small
		if res := scanValue(small, &pathTree{}, nil, u); res.status != scanOK {
			t.Fatalf("scanValue(%s) = %+v", small, res)
		}
	}
	check() // the first keys' room
	if allocs := testing.AllocsPerRun(100, check); allocs != 0 {
		t.Errorf("checking a small value allocated %v times, want 0", allocs)
	}
}

// FuzzDuplicateKey checks the duplicate finder against gjson on any valid
// value within the nesting bound.
func FuzzDuplicateKey(f *testing.F) {
	for _, doc := range scanDocs {
		f.Add([]byte(doc))
	}
	f.Add([]byte(`{"a":1,"b":{"a":2,"a":3}}`))
	f.Add([]byte(`{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":0,"k11":1,"k12":2,"k13":3,"k14":4,"k15":5,"k16":6,"k17":7,"k3":8}`)) // sorted once closed
	f.Add([]byte(`{"\u0061":1,"a":2}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		if !gjson.ValidBytes(doc) || nesting(string(doc)) > maxDepth {
			return
		}
		key, dup := documentDuplicate(doc, new(keySetPool))
		want := anyDuplicates(gjson.ParseBytes(doc))
		if dup != (len(want) > 0) || dup && !slices.Contains(want, key) {
			t.Fatalf("documentDuplicate(%q) = %q, %v; gjson sees duplicates %q", doc, key, dup, want)
		}
	})
}

func TestSplitPath(t *testing.T) {
	tests := []struct{ path, key, rest string }{
		{"id", "id", ""},
		{"customer.name", "customer", "name"},
		{"items.0.sku", "items", "0.sku"},
		{`a\.b`, "a.b", ""},
		{`a\.b.c\.d`, "a.b", `c\.d`},
		{`a\\.b`, `a\`, "b"},
		{`\*x`, "*x", ""},
	}
	for _, tt := range tests {
		key, rest := splitPath(tt.path)
		if key != tt.key || rest != tt.rest {
			t.Errorf("splitPath(%q) = %q, %q, want %q, %q", tt.path, key, rest, tt.key, tt.rest)
		}
	}
}

func TestKeyTable(t *testing.T) {
	var kt keyTable
	var keys []string
	for i := range 300 { // more keys than one byte of a slot could name, with collisions
		keys = append(keys, fmt.Sprintf("k%d", i%150), fmt.Sprintf("key_%03d_x", i))
	}
	want := map[string]int{}
	for _, k := range keys {
		i := kt.add(k)
		if w, ok := want[k]; ok && w != i {
			t.Fatalf("add(%q) again = %d, want %d", k, i, w)
		}
		want[k] = i
	}
	for k, w := range want {
		if got := kt.find(k); got != w {
			t.Errorf("find(%q) = %d, want %d", k, got, w)
		}
	}
	for _, k := range []string{"", "k", "k150", "key_300_x", "x"} {
		if got := kt.find(k); got != -1 {
			t.Errorf("find(%q) = %d, want -1", k, got)
		}
	}
}
