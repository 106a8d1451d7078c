package postgres

import (
	"strings"

	"github.com/tidwall/gjson"
)

// The mapper reads a record's JSON value in one pass: scanValue validates the
// whole value, accepting exactly what gjson.ValidBytes accepts, and notes where
// the members the value paths name lie, descending only into the objects the
// paths go through. A value path then reads its field from its member alone
// (pathResult) and returns what gjson.Get on the whole value would have: tests
// compare the two.
//
// gjson.Get finds the first match of a path in document order, and matches a
// key only in an object (an array only by index). So a path whose keys below
// the first are not numbers is found where the scan first meets its last key
// inside objects of the keys before it. A path with a numeric key (items.0.sku)
// is read with gjson.Get from the member of its first key instead.

// member is where the scan met one of the mapper's paths in a record's value.
type member struct {
	start, end int  // the value of its first match is value[start:end]; end == 0: none
	dup        bool // the path matches again further on
}

// pathTree holds the keys of one level of objects that value paths end at or
// go on through. Immutable once built.
type pathTree struct {
	keys  keyTable
	nodes []pathNode // nodes[i] is keys.keys[i]'s
}

type pathNode struct {
	slot  int       // the member the scan notes for a path ending at this key, or -1
	below *pathTree // the keys below, for paths that go on through an object; nil if none
}

// add adds a value path (as checkPath accepts it) and returns the member the
// scan notes for it, and the rest of the path below that member, left for
// gjson.Get ("" if none); n counts the members.
func (t *pathTree) add(path string, n *int) (slot int, rest string) {
	first, below := splitPath(path)
	keys := []string{first}
	for r := below; r != ""; {
		var key string
		if key, r = splitPath(r); isIndex(key) {
			return t.slot(keys[:1], n), below
		}
		keys = append(keys, key)
	}
	return t.slot(keys, n), ""
}

// slot returns the member noted for the path of keys (unescaped, not empty),
// adding it to the tree if it is not there yet; n counts the members.
func (t *pathTree) slot(keys []string, n *int) int {
	k := t.keys.add(keys[0])
	if k == len(t.nodes) {
		t.nodes = append(t.nodes, pathNode{slot: -1})
	}
	node := &t.nodes[k]
	if len(keys) > 1 {
		if node.below == nil {
			node.below = new(pathTree)
		}
		return node.below.slot(keys[1:], n)
	}
	if node.slot < 0 {
		node.slot = *n
		*n++
	}
	return node.slot
}

// keyTable finds a key among those of a pathTree level: an open-addressed hash
// table on a key's length and three of its bytes. For the short keys of a JSON
// object it looks up in about half the time of a map, which matters as every
// member the scan meets on the paths' levels is looked up. Immutable once built.
type keyTable struct {
	keys  []string
	slots []uint16 // 1 + the index in keys of the key hashed there, 0 for none (a table has at most 1600 columns)
	shift uint     // slot = hash >> shift
}

// add adds key (not empty) if it is not there yet, and returns its index.
func (t *keyTable) add(key string) int {
	if i := t.find(key); i >= 0 {
		return i
	}
	t.keys = append(t.keys, key)
	bits := uint(1)
	for 1<<bits < 2*len(t.keys) {
		bits++
	}
	t.slots, t.shift = make([]uint16, 1<<bits), 32-bits
	for i, k := range t.keys {
		s := t.slot(k)
		for t.slots[s] != 0 {
			s = (s + 1) & (len(t.slots) - 1)
		}
		t.slots[s] = uint16(i + 1)
	}
	return len(t.keys) - 1
}

// find returns the index of key, or -1.
func (t *keyTable) find(key string) int {
	if len(t.slots) == 0 || key == "" {
		return -1
	}
	for s := t.slot(key); ; s = (s + 1) & (len(t.slots) - 1) {
		i := int(t.slots[s]) - 1
		if i < 0 {
			return -1
		}
		if t.keys[i] == key {
			return i
		}
	}
}

func (t *keyTable) slot(key string) int {
	h := uint32(len(key))
	h = h*31 + uint32(key[0])
	h = h*31 + uint32(key[len(key)/2])
	h = h*31 + uint32(key[len(key)-1])
	return int(h * 0x9E3779B1 >> t.shift)
}

// maxStackMembers is how many members mapRecord notes without allocating; a
// mapping whose paths need more allocates them per record.
const maxStackMembers = 16

// splitPath splits a value path (as checkPath accepts it) into its first key,
// with escapes removed as gjson removes them, and the rest of the path, still
// in gjson syntax ("" when the path is a single key).
func splitPath(p string) (key, rest string) {
	if !strings.Contains(p, `\`) {
		key, rest, _ = strings.Cut(p, ".")
		return key, rest
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '\\':
			i++ // checkPath: a backslash is never last
			b.WriteByte(p[i])
		case '.':
			return b.String(), p[i+1:]
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), ""
}

// isIndex says whether gjson may read key as an array index.
func isIndex(key string) bool {
	for i := 0; i < len(key); i++ {
		if key[i] < '0' || key[i] > '9' {
			return false
		}
	}
	return key != ""
}

// scanValue reports whether v is valid JSON, exactly as gjson.ValidBytes does
// (RFC 8259 grammar; the bytes of strings are not checked for UTF-8), and
// whether it is an object. For an object it notes in found the members of the
// paths in tree; found must be zeroed and hold every slot of tree.
func scanValue(v []byte, tree *pathTree, found []member) (object, valid bool) {
	i := skipSpace(v, 0)
	if i == len(v) {
		return false, false
	}
	if v[i] != '{' {
		end, ok := skipValue(v, i)
		return false, ok && skipSpace(v, end) == len(v)
	}
	end, ok := scanObject(v, i+1, tree, found)
	return true, ok && skipSpace(v, end) == len(v)
}

// scanObject validates the object whose brace is at v[i-1], noting in found
// the members of the paths in tree and descending into the objects they go
// through, and returns where the object ends.
func scanObject(v []byte, i int, tree *pathTree, found []member) (end int, ok bool) {
	if i = skipSpace(v, i); i < len(v) && v[i] == '}' {
		return i + 1, true
	}
	for {
		if i == len(v) || v[i] != '"' {
			return i, false
		}
		keyStart := i
		keyEnd, escaped, ok := skipString(v, i+1)
		if !ok {
			return keyEnd, false
		}
		if i = skipSpace(v, keyEnd); i == len(v) || v[i] != ':' {
			return i, false
		}
		start := skipSpace(v, i+1)
		var node *pathNode
		if len(tree.nodes) > 0 {
			key := unsafeString(v[keyStart+1 : keyEnd-1])
			if escaped {
				key = unescape(unsafeString(v[keyStart:keyEnd]))
			}
			if k := tree.keys.find(key); k >= 0 {
				node = &tree.nodes[k]
			}
		}
		if node != nil && node.below != nil && start < len(v) && v[start] == '{' {
			i, ok = scanObject(v, start+1, node.below, found)
		} else {
			i, ok = skipValue(v, start)
		}
		if !ok {
			return i, false
		}
		if node != nil && node.slot >= 0 {
			if m := &found[node.slot]; m.end == 0 {
				m.start, m.end = start, i
			} else {
				m.dup = true
			}
		}
		if i = skipSpace(v, i); i == len(v) {
			return i, false
		}
		switch v[i] {
		case ',':
			i = skipSpace(v, i+1)
		case '}':
			return i + 1, true
		default:
			return i, false
		}
	}
}

func skipSpace(v []byte, i int) int {
	for i < len(v) {
		switch v[i] {
		case ' ', '\t', '\n', '\r':
			i++
			continue
		}
		break
	}
	return i
}

// skipValue validates the JSON value that starts at v[i] and returns where it
// ends. Nesting is tracked on a stack of its own rather than by recursion, so
// a deeply nested value costs bytes, not goroutine stack.
func skipValue(v []byte, i int) (end int, ok bool) {
	var buf [32]byte
	closers := buf[:0] // of the open arrays and objects, innermost last
	for {
		if i == len(v) {
			return i, false
		}
		switch c := v[i]; c {
		case '{', '[':
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			if i = skipSpace(v, i+1); i < len(v) && v[i] == closer {
				i++
				break // an empty array or object is a complete value
			}
			closers = append(closers, closer)
			if closer == '}' {
				if i, ok = skipKey(v, i); !ok {
					return i, false
				}
			}
			continue // at its first value
		case '"':
			if i, _, ok = skipString(v, i+1); !ok {
				return i, false
			}
		case 't':
			if i, ok = skipLiteral(v, i, "true"); !ok {
				return i, false
			}
		case 'f':
			if i, ok = skipLiteral(v, i, "false"); !ok {
				return i, false
			}
		case 'n':
			if i, ok = skipLiteral(v, i, "null"); !ok {
				return i, false
			}
		default:
			if i, ok = skipNumber(v, i); !ok {
				return i, false
			}
		}
		// A value ended at i: close what it ends, or move to the next value.
		for {
			if len(closers) == 0 {
				return i, true
			}
			if i = skipSpace(v, i); i == len(v) {
				return i, false
			}
			closer := closers[len(closers)-1]
			if v[i] == closer {
				closers = closers[:len(closers)-1]
				i++
				continue
			}
			if v[i] != ',' {
				return i, false
			}
			i = skipSpace(v, i+1)
			if closer == '}' {
				if i, ok = skipKey(v, i); !ok {
					return i, false
				}
			}
			break
		}
	}
}

// skipKey skips an object member's key and colon, and the space after them.
func skipKey(v []byte, i int) (int, bool) {
	if i == len(v) || v[i] != '"' {
		return i, false
	}
	i, _, ok := skipString(v, i+1)
	if !ok {
		return i, false
	}
	if i = skipSpace(v, i); i == len(v) || v[i] != ':' {
		return i, false
	}
	return skipSpace(v, i+1), true
}

// plainString marks the bytes a JSON string holds as they are: not a control
// character, a quote or a backslash.
var plainString = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipString validates the string whose opening quote is at v[i-1] and returns
// where it ends (after the closing quote) and whether it holds escapes.
func skipString(v []byte, i int) (end int, escaped, ok bool) {
	for {
		for i < len(v) && plainString[v[i]] {
			i++
		}
		if i == len(v) {
			return i, escaped, false
		}
		switch v[i] {
		case '"':
			return i + 1, escaped, true
		case '\\':
			escaped = true
			i++
			if i == len(v) {
				return i, escaped, false
			}
			switch v[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+5 > len(v) || !isHex(v[i+1]) || !isHex(v[i+2]) || !isHex(v[i+3]) || !isHex(v[i+4]) {
					return i, escaped, false
				}
				i += 5
			default:
				return i, escaped, false
			}
		default: // a control character
			return i, escaped, false
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipNumber validates the number that starts at v[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(v []byte, i int) (int, bool) {
	if v[i] == '-' {
		i++
	}
	switch {
	case i == len(v) || !isDigit(v[i]):
		return i, false
	case v[i] == '0':
		i++
	default:
		i = skipDigits(v, i)
	}
	if i < len(v) && v[i] == '.' {
		i++
		if i == len(v) || !isDigit(v[i]) {
			return i, false
		}
		i = skipDigits(v, i)
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if i == len(v) || !isDigit(v[i]) {
			return i, false
		}
		i = skipDigits(v, i)
	}
	return i, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func skipDigits(v []byte, i int) int {
	for i < len(v) && isDigit(v[i]) {
		i++
	}
	return i
}

func skipLiteral(v []byte, i int, lit string) (int, bool) {
	if len(v)-i < len(lit) || unsafeString(v[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// pathResult returns what gjson.Get(doc, f.src.arg) returns, reading only the
// member scanValue noted for the path (or its first key) when doc is an object.
func (f *field) pathResult(doc string, object bool, found []member) gjson.Result {
	if object && f.rest == "" {
		if m := found[f.slot]; m.end > 0 {
			return resultAt(doc, m.start, m.end)
		}
		return gjson.Result{}
	}
	return f.indexedResult(doc, object, found)
}

// indexedResult is pathResult for a path with a numeric key, read below its
// first key, or for a value that is not an object.
func (f *field) indexedResult(doc string, object bool, found []member) gjson.Result {
	if !object {
		return gjson.Get(doc, f.src.arg) // an array (value.0.id) or a scalar (no field)
	}
	m := found[f.slot]
	if m.end == 0 {
		return gjson.Result{}
	}
	if c := doc[m.start]; c == '{' || c == '[' {
		res := gjson.Get(doc[m.start:m.end], f.rest)
		if res.Exists() {
			if res.Index > 0 {
				res.Index += m.start
			}
			return res
		}
	}
	if m.dup {
		// gjson goes on to the next member of the same name when the path is
		// not found in the first: rare enough to let it.
		return gjson.Get(doc, f.src.arg)
	}
	return gjson.Result{}
}

// resultAt returns the gjson.Result of the valid JSON value doc[start:end], as
// gjson.Get returns it for a member of an object but for a number's Num, which
// is left zero: fromJSON reads numbers from Raw, exactly, and parsing a float
// nothing reads costs more than finding the member.
func resultAt(doc string, start, end int) gjson.Result {
	raw := doc[start:end]
	var t gjson.Type
	str := ""
	switch raw[0] {
	case '"':
		t = gjson.String
		if str = raw[1 : len(raw)-1]; strings.IndexByte(str, '\\') >= 0 {
			str = unescape(raw)
		}
	case '{', '[':
		t = gjson.JSON
	case 't':
		t = gjson.True
	case 'f':
		t = gjson.False
	case 'n':
		t = gjson.Null
	default:
		t = gjson.Number
	}
	return gjson.Result{Type: t, Raw: raw, Str: str, Index: start}
}

// unescape returns the text of a JSON string with escapes, as gjson reads it.
func unescape(raw string) string { return gjson.Parse(raw).Str }
