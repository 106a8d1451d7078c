package postgres

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/tidwall/gjson"
)

// The mapper reads a record's JSON value in one pass: scanValue validates the
// whole value, accepting exactly what gjson.ValidBytes accepts up to a nesting
// depth of maxDepth, and notes where the members the value paths name lie,
// descending only into the objects the paths go through. A value path then
// reads its field from its member alone (pathResult) and returns what
// gjson.Get on the whole value would have: tests compare the two.
//
// A value is refused when an object sluice or PostgreSQL would read a field
// of has a key twice (RFC 8259 leaves the meaning of such an object to the
// reader: gjson takes the first, jsonb and most parsers the last). The
// objects the paths go through are checked for the paths' keys, so a path
// has at most one match and the scan notes it; the objects inside a member
// stored in a jsonb column or read with gjson (a path with a numeric key,
// items.0.sku, or any path into a value that is not an object), and the whole
// value stored in a jsonb column, are checked for every key, in the same pass
// (uniq). json and text columns keep the text as it is, duplicates included.

// maxDepth is how deeply arrays and objects may nest in a value the mapper
// reads as JSON: a deeper value is refused (reason decode). Real documents
// nest a few levels; the bound keeps a hostile one from costing stack in
// gjson or PostgreSQL's recursive JSON parser, and the scan's own stack of
// open containers fits in 64 bytes of its frame.
const maxDepth = 64

// scanStatus is the scan's verdict on a value.
type scanStatus uint8

const (
	scanOK      scanStatus = iota
	scanInvalid            // not JSON
	scanTooDeep            // valid so far, but nested deeper than maxDepth
	scanDupKey             // an object the mapping reads has a key twice
)

// member is where the scan met one of the mapper's path keys in a record's
// value.
type member struct {
	start, end int // the value of its match is value[start:end]; end == 0: none
}

// pathTree holds the keys of one level of objects that value paths end at or
// go on through. Immutable once built.
type pathTree struct {
	keys  keyTable
	nodes []pathNode // nodes[i] is keys.keys[i]'s
	at    string     // the path of this level's object, for messages: value, value.customer
}

type pathNode struct {
	slot  int       // the member the scan notes for this key
	below *pathTree // the keys below, for paths that go on through an object; nil if none
	// unique: every object inside the member must have distinct keys (it is
	// stored in jsonb, or read with gjson).
	unique bool
	path   string // value.customer.name, for messages
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
// adding it to the tree if it is not there yet; n counts the members, one per
// key of the tree.
func (t *pathTree) slot(keys []string, n *int) int {
	if t.at == "" {
		t.at = "value"
	}
	k := t.keys.add(keys[0])
	if k == len(t.nodes) {
		t.nodes = append(t.nodes, pathNode{slot: *n, path: t.at + "." + keys[0]})
		*n++
	}
	node := &t.nodes[k]
	if len(keys) > 1 {
		if node.below == nil {
			node.below = &pathTree{at: node.path}
		}
		return node.below.slot(keys[1:], n)
	}
	return node.slot
}

// markUnique sets unique on the nodes of the members in slots.
func (t *pathTree) markUnique(slots map[int]bool) {
	for i := range t.nodes {
		node := &t.nodes[i]
		node.unique = node.unique || slots[node.slot]
		if node.below != nil {
			node.below.markUnique(slots)
		}
	}
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

// scanResult is what scanValue found besides the members.
type scanResult struct {
	status scanStatus
	object bool // the value is an object (and the members are noted)
	// With scanDupKey: the key given twice (a view of the value, or its
	// unescaped copy) and the path of the part of the value that has it.
	dupKey, dupAt string
}

// scanValue judges v, exactly as gjson.ValidBytes does (RFC 8259 grammar; the
// bytes of strings are not checked for UTF-8) but for the nesting bound and
// duplicate keys, and says whether it is an object. For an object it notes in
// found the members of the paths in tree; found must be zeroed and hold every
// slot of tree. It checks the paths' keys in the objects they go through,
// and, with u, every key of the objects u asks for. An invalid or too deep
// value is reported as such even when it also has a duplicate key.
//
// The object scan has two forms: scanObject checks no key but the paths',
// and hands a member that must be checked whole to scanObjectChecked.
// skipValue checks every key of the value with u, and none with u nil.
func scanValue(v []byte, tree *pathTree, found []member, u *uniq) scanResult {
	i := skipSpace(v, 0)
	if i == len(v) {
		return scanResult{status: scanInvalid}
	}
	var (
		res scanResult
		end int
		st  scanStatus
	)
	if u != nil {
		u.v, u.where = v, "value"
		defer u.release()
	}
	switch {
	case v[i] != '{' && u != nil && (u.all || u.nonObject):
		end, st = skipValue(v, i, 0, u)
	case v[i] != '{':
		end, st = skipValue(v, i, 0, nil)
	case u != nil && u.all:
		res.object = true
		end, st = scanObjectChecked(v, i+1, tree, found, 1, &res, u)
	default:
		res.object = true
		end, st = scanObject(v, i+1, tree, found, 1, &res, u)
	}
	if st == scanOK && skipSpace(v, end) != len(v) {
		st = scanInvalid
	}
	switch {
	case st != scanOK:
		res.status = st
	case res.dupKey != "":
		res.status = scanDupKey
	case u != nil && u.dup:
		res.status, res.dupKey, res.dupAt = scanDupKey, u.dupKey, u.dupAt
	}
	return res
}

// scanObject validates the object whose brace is at v[i-1], at nesting depth
// depth, noting in found the members of the paths in tree and descending into
// the objects they go through, and returns where the object ends. The first
// path key it meets twice in one object goes to res. A member whose node is
// unique is checked whole with u (when u is not nil).
func scanObject(v []byte, i int, tree *pathTree, found []member, depth int, res *scanResult, u *uniq) (end int, st scanStatus) {
	if i = skipSpace(v, i); i < len(v) && v[i] == '}' {
		return i + 1, scanOK
	}
	for {
		if i == len(v) || v[i] != '"' {
			return i, scanInvalid
		}
		keyStart := i
		keyEnd, escaped, ok := skipString(v, i+1)
		if !ok {
			return keyEnd, scanInvalid
		}
		if i = skipSpace(v, keyEnd); i == len(v) || v[i] != ':' {
			return i, scanInvalid
		}
		start := skipSpace(v, i+1)
		var (
			node *pathNode
			m    *member
		)
		if len(tree.nodes) > 0 {
			key := unsafeString(v[keyStart+1 : keyEnd-1])
			if escaped {
				key = unescape(unsafeString(v[keyStart:keyEnd]))
			}
			if k := tree.keys.find(key); k >= 0 {
				node = &tree.nodes[k]
				if m = &found[node.slot]; m.end != 0 && res.dupKey == "" {
					res.dupKey, res.dupAt = key, tree.at
				}
			}
		}
		sub := u // checks the member's keys
		if node == nil || !node.unique {
			sub = nil
		} else if u != nil {
			u.where = node.path
		}
		// Below a member's first match only: below a second one the scan
		// would meet the first one's keys again.
		if node != nil && node.below != nil && start < len(v) && v[start] == '{' && m.end == 0 {
			if depth == maxDepth {
				return start, scanTooDeep
			}
			if sub != nil {
				i, st = scanObjectChecked(v, start+1, node.below, found, depth+1, res, sub)
			} else {
				i, st = scanObject(v, start+1, node.below, found, depth+1, res, u)
			}
		} else {
			i, st = skipValue(v, start, depth, sub) // sub nil: no key checked
		}
		if st != scanOK {
			return i, st
		}
		if m != nil && m.end == 0 {
			m.start, m.end = start, i
		}
		if i = skipSpace(v, i); i == len(v) {
			return i, scanInvalid
		}
		switch v[i] {
		case ',':
			i = skipSpace(v, i+1)
		case '}':
			return i + 1, scanOK
		default:
			return i, scanInvalid
		}
	}
}

// scanObjectChecked is scanObject for an object whose every key u checks,
// as those of every object inside it.
func scanObjectChecked(v []byte, i int, tree *pathTree, found []member, depth int, res *scanResult, u *uniq) (end int, st scanStatus) {
	u.open(depth)
	if i = skipSpace(v, i); i < len(v) && v[i] == '}' {
		return i + 1, scanOK
	}
	for {
		if i == len(v) || v[i] != '"' {
			return i, scanInvalid
		}
		keyStart := i
		keyEnd, escaped, ok := skipString(v, i+1)
		if !ok {
			return keyEnd, scanInvalid
		}
		if i = skipSpace(v, keyEnd); i == len(v) || v[i] != ':' {
			return i, scanInvalid
		}
		start := skipSpace(v, i+1)
		key := unsafeString(v[keyStart+1 : keyEnd-1])
		if escaped {
			key = unescape(unsafeString(v[keyStart:keyEnd]))
		}
		u.add(key, keyStart, keyEnd, escaped, depth)
		var (
			node *pathNode
			m    *member
		)
		if k := tree.keys.find(key); k >= 0 {
			node = &tree.nodes[k]
			if m = &found[node.slot]; m.end != 0 && res.dupKey == "" {
				res.dupKey, res.dupAt = key, tree.at
			}
		}
		if node != nil && node.below != nil && start < len(v) && v[start] == '{' && m.end == 0 {
			if depth == maxDepth {
				return start, scanTooDeep
			}
			i, st = scanObjectChecked(v, start+1, node.below, found, depth+1, res, u)
		} else {
			i, st = skipValue(v, start, depth, u)
		}
		if st != scanOK {
			return i, st
		}
		if m != nil && m.end == 0 {
			m.start, m.end = start, i
		}
		if i = skipSpace(v, i); i == len(v) {
			return i, scanInvalid
		}
		switch v[i] {
		case ',':
			i = skipSpace(v, i+1)
		case '}':
			u.close(depth)
			return i + 1, scanOK
		default:
			return i, scanInvalid
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

// skipValue validates the JSON value that starts at v[i], inside depth open
// arrays and objects, and returns where it ends. Nesting is tracked on a
// stack of its own rather than by recursion, so a deeply nested value costs
// neither goroutine stack nor heap: the stack has room for maxDepth levels.
// With u it also has u check every key of every object in the value.
func skipValue(v []byte, i, depth int, u *uniq) (end int, st scanStatus) {
	var buf [maxDepth]byte
	closers := buf[:0] // of the open arrays and objects, innermost last
	var ok bool
	for {
		if i == len(v) {
			return i, scanInvalid
		}
		switch c := v[i]; c {
		case '{', '[':
			if depth+len(closers) == maxDepth {
				return i, scanTooDeep // an empty one counts too, as in PostgreSQL
			}
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
				if u != nil {
					u.open(depth + len(closers))
					i, ok = u.skipKey(i, depth+len(closers))
				} else {
					i, ok = skipKey(v, i)
				}
				if !ok {
					return i, scanInvalid
				}
			}
			continue // at its first value
		case '"':
			if i, _, ok = skipString(v, i+1); !ok {
				return i, scanInvalid
			}
		case 't':
			if i, ok = skipLiteral(v, i, "true"); !ok {
				return i, scanInvalid
			}
		case 'f':
			if i, ok = skipLiteral(v, i, "false"); !ok {
				return i, scanInvalid
			}
		case 'n':
			if i, ok = skipLiteral(v, i, "null"); !ok {
				return i, scanInvalid
			}
		default:
			if i, ok = skipNumber(v, i); !ok {
				return i, scanInvalid
			}
		}
		// A value ended at i: close what it ends, or move to the next value.
		for {
			if len(closers) == 0 {
				return i, scanOK
			}
			if i = skipSpace(v, i); i == len(v) {
				return i, scanInvalid
			}
			closer := closers[len(closers)-1]
			if v[i] == closer {
				if closer == '}' && u != nil {
					u.close(depth + len(closers))
				}
				closers = closers[:len(closers)-1]
				i++
				continue
			}
			if v[i] != ',' {
				return i, scanInvalid
			}
			i = skipSpace(v, i+1)
			if closer == '}' {
				if u != nil {
					i, ok = u.skipKey(i, depth+len(closers))
				} else {
					i, ok = skipKey(v, i)
				}
				if !ok {
					return i, scanInvalid
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
		// Four bytes a turn: fewer turns of the hottest loop of the scan.
		for i+4 <= len(v) && plainString[v[i]] && plainString[v[i+1]] && plainString[v[i+2]] && plainString[v[i+3]] {
			i += 4
		}
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

// uniq is one scan's check for a key given twice in one object, among the
// objects the scan checks. It lives on its caller's stack; the keys of the
// open checked objects are kept in a keySet taken from the mapper's pool at
// the first checked object (a value without one costs nothing) and given
// back by release.
type uniq struct {
	pool      *keySetPool
	all       bool   // check every object of the value
	nonObject bool   // check every object when the value is not an object
	v         []byte // the value scanned
	ks        *keySet
	where     string // the path of the part of the value being checked
	dup       bool
	dupKey    string // the first key found twice, a copy
	dupAt     string
}

// keySet holds the keys of a uniq's open objects as keyRefs: each new key
// is compared with those before it in its object while it has at most
// dupLinear keys, and a larger object is sorted once it closes. Its time is
// linear in the value for small objects and O(k log k) for an object of k
// keys. A keyRef is 12 bytes, and a member takes at least 4 (`"":0,`), so
// the keys hold at most 3 bytes per byte of the value (a 1 MiB object of
// 100,000 keys allocated 3 MiB in all, as the room doubles).
type keySet struct {
	v         []byte
	starts    [maxDepth + 1]int32 // per depth: where its open object's keys start in keys
	many      [maxDepth + 1]bool  // that object has more keys than dupLinear
	keys      []keyRef
	unescaped []string
}

// keyRef is an object key a keySet holds: v[start:end], or for a key with
// escapes (start < 0) unescaped[-start-1]; fp is its fingerprint, or its
// hash in a large object being sorted, which tells most unequal keys apart
// without reading them.
type keyRef struct{ start, end, fp int32 }

// dupLinear is how many keys of one object a keySet compares one by one; it
// sorts the keys of a larger object instead.
const dupLinear = 16

// keySetRetain is the most keys a pooled keySet keeps room for.
const keySetRetain = 4096

func (ks *keySet) key(r keyRef) string {
	if r.start < 0 {
		return ks.unescaped[-r.start-1]
	}
	return unsafeString(ks.v[r.start:r.end])
}

// fingerprint is k's length and first and last bytes in one number: cheap,
// and enough to tell most keys of one small object apart.
func fingerprint(k string) int32 {
	if k == "" {
		return 0
	}
	return int32(len(k))<<16 ^ int32(k[0])<<8 ^ int32(k[len(k)-1])
}

// hashKey hashes k (FNV-1a over its first and last 16 bytes, where keys that
// share a prefix or a suffix differ), for sorting the keys of a large object.
func hashKey(k string) int32 {
	h := uint32(2166136261) ^ uint32(len(k))
	head, tail := k, ""
	if len(k) > 32 {
		head, tail = k[:16], k[len(k)-16:]
	}
	for i := 0; i < len(head); i++ {
		h = (h ^ uint32(head[i])) * 16777619
	}
	for i := 0; i < len(tail); i++ {
		h = (h ^ uint32(tail[i])) * 16777619
	}
	return int32(h)
}

// open starts the checked object at depth.
func (u *uniq) open(depth int) {
	if u.ks == nil {
		u.ks = u.pool.get()
		u.ks.v = u.v
	}
	u.ks.starts[depth], u.ks.many[depth] = int32(len(u.ks.keys)), false
}

// skipKey is skipKey that also adds the key to the object at depth.
func (u *uniq) skipKey(i, depth int) (int, bool) {
	v := u.v
	if i == len(v) || v[i] != '"' {
		return i, false
	}
	keyStart := i
	i, escaped, ok := skipString(v, i+1)
	if !ok {
		return i, false
	}
	key := unsafeString(v[keyStart+1 : i-1])
	if escaped {
		key = unescape(unsafeString(v[keyStart:i]))
	}
	u.add(key, keyStart, i, escaped, depth)
	if i = skipSpace(v, i); i == len(v) || v[i] != ':' {
		return i, false
	}
	return skipSpace(v, i+1), true
}

// add adds key, read from v[keyStart:keyEnd], to the object at depth.
func (u *uniq) add(key string, keyStart, keyEnd int, escaped bool, depth int) {
	ks := u.ks
	r := keyRef{start: int32(keyStart + 1), end: int32(keyEnd - 1), fp: fingerprint(key)}
	if escaped {
		ks.unescaped = append(ks.unescaped, key)
		r.start, r.end = -int32(len(ks.unescaped)), 0
	}
	s := int(ks.starts[depth])
	if len(ks.keys)-s < dupLinear {
		if !u.dup {
			for _, other := range ks.keys[s:] {
				if other.fp == r.fp && ks.key(other) == key {
					u.found(key)
					break
				}
			}
		}
	} else {
		ks.many[depth] = true
	}
	if len(ks.keys) == cap(ks.keys) {
		// Double the room, but never past one key per 4 bytes of the value
		// (the least a member takes, `"":0,`).
		grown := make([]keyRef, len(ks.keys), max(min(2*cap(ks.keys), len(ks.v)/4+1), len(ks.keys)+1, 2*dupLinear))
		copy(grown, ks.keys)
		ks.keys = grown
	}
	ks.keys = append(ks.keys, r)
}

// close ends the checked object at depth, checking it whole if it was large.
func (u *uniq) close(depth int) {
	ks := u.ks
	s := ks.starts[depth]
	if ks.many[depth] && !u.dup {
		keys := ks.keys[s:]
		// Equal keys have equal hashes: sorted by hash first, they end up next
		// to each other after few string comparisons.
		for i := range keys {
			keys[i].fp = hashKey(ks.key(keys[i]))
		}
		slices.SortFunc(keys, func(a, b keyRef) int {
			if c := cmp.Compare(a.fp, b.fp); c != 0 {
				return c
			}
			return strings.Compare(ks.key(a), ks.key(b))
		})
		for i := 1; i < len(keys); i++ {
			if k := ks.key(keys[i]); keys[i].fp == keys[i-1].fp && k == ks.key(keys[i-1]) {
				u.found(k)
				break
			}
		}
	}
	ks.keys = ks.keys[:s]
}

func (u *uniq) found(key string) {
	u.dup, u.dupKey, u.dupAt = true, strings.Clone(key), u.where
}

// release gives the keySet back to the pool.
func (u *uniq) release() {
	if u.ks != nil {
		u.pool.put(u.ks)
		u.ks = nil
	}
}

// keySetPool recycles the keySets of one mapper's scans.
type keySetPool struct{ p sync.Pool }

func (p *keySetPool) get() *keySet {
	if ks, _ := p.p.Get().(*keySet); ks != nil {
		return ks
	}
	return new(keySet)
}

func (p *keySetPool) put(ks *keySet) {
	if cap(ks.keys) > keySetRetain {
		ks.keys = nil
	}
	clear(ks.unescaped) // let the strings go
	ks.v, ks.keys, ks.unescaped = nil, ks.keys[:0], ks.unescaped[:0]
	p.p.Put(ks)
}

// pathResult returns what gjson.Get(doc, f.src.arg) returns, reading only the
// member scanValue noted for the path (or its first key) when doc is an
// object. A member read with gjson was checked for duplicate keys by the scan.
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
		if res.Exists() && res.Index > 0 {
			res.Index += m.start
		}
		return res
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
// unescape returns the text of a JSON string with escapes, as gjson reads it.
func unescape(raw string) string { return gjson.Parse(raw).Str }

// unsafeBytes views s as bytes without copying; they must not be written.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
