package postgres

import (
	"fmt"
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

// pathReader reads scanPaths the way the mapper does.
func pathReader(t testing.TB, paths []string) *mapper {
	t.Helper()
	cols := make([]column, len(paths))
	mapping := make(map[string]string, len(paths))
	for i, p := range paths {
		name := fmt.Sprintf("c%d", i)
		cols[i] = col(name, pgtype.JSONOID, false)
		mapping[name] = "value." + p
	}
	return mustMapper(t, testTable(cols...), mapping)
}

// checkScan checks the one-pass reader against gjson on doc.
func checkScan(t *testing.T, m *mapper, doc string) {
	t.Helper()
	found := make([]member, m.members)
	object, valid := scanValue([]byte(doc), &m.paths, found)
	if want := gjson.ValidBytes([]byte(doc)); valid != want {
		t.Fatalf("scanValue(%q) valid = %v, gjson.ValidBytes = %v", doc, valid, want)
	}
	if !valid {
		return
	}
	for i := range m.fields {
		f := &m.fields[i]
		got, want := f.pathResult(doc, object, found), gjson.Get(doc, f.src.arg)
		// Num is not compared: a top-level number's is left zero, as nothing reads it.
		if got.Type != want.Type || got.Raw != want.Raw || got.Str != want.Str || got.Index != want.Index {
			t.Errorf("in %q, %s = %+v, gjson.Get = %+v", doc, f.src, got, want)
		}
	}
}

func TestScanMatchesGjson(t *testing.T) {
	m := pathReader(t, scanPaths)
	for _, doc := range scanDocs {
		checkScan(t, m, doc)
	}
}

func FuzzScanMatchesGjson(f *testing.F) {
	for _, doc := range scanDocs {
		f.Add([]byte(doc))
	}
	m := pathReader(f, scanPaths)
	f.Fuzz(func(t *testing.T, doc []byte) {
		checkScan(t, m, string(doc))
	})
}

// TestScanDeepNesting checks that nesting costs no recursion: a value nested a
// million deep is judged like any other.
func TestScanDeepNesting(t *testing.T) {
	const depth = 1 << 20
	doc := []byte(`{"a":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`)
	if _, valid := scanValue(doc, &pathTree{}, nil); !valid {
		t.Fatal("deeply nested valid JSON judged invalid")
	}
	if _, valid := scanValue(doc[:len(doc)-2], &pathTree{}, nil); valid {
		t.Fatal("deeply nested unclosed JSON judged valid")
	}
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
