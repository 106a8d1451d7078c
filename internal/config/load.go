package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts the name of every environment variable that overrides a key:
// the key's path upper-cased with dots as underscores, so kafka.brokers is
// SLUICE_KAFKA_BROKERS and sink.postgres.dsn is SLUICE_SINK_POSTGRES_DSN.
const EnvPrefix = "SLUICE_"

// EnvName returns the environment variable that overrides the key at path,
// for example EnvName("flow.max_buffered_bytes") is SLUICE_FLOW_MAX_BUFFERED_BYTES.
func EnvName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// Load reads the YAML file at path, applies the defaults and the SLUICE_<PATH>
// environment overrides from the process environment, resolves secrets and
// validates the result. It is LoadWith(path, os.LookupEnv).
func Load(path string) (*Config, error) {
	return LoadWith(path, os.LookupEnv)
}

// LoadWith is Load with the environment given as a lookup function (a map in
// tests); a nil env is an empty environment.
//
// In order, later steps winning: Default, the file at path (none when path is
// ""), then one SLUICE_<PATH> variable per key. String values from the file may
// reference ${VAR} from env; "$${" writes a literal "${" and any other "$" is
// literal. Values of environment overrides are taken as written. A list key
// accepts a YAML list or a comma-separated string (the only form in the
// environment); a map key (sink.postgres.columns, sink.http.headers,
// sink.file.columns) is overridden whole by "name=value,name=value". A key with
// a "_file" twin (sink.postgres.dsn_file, kafka.sasl.password_file) is read from
// that file, without its trailing newline. dlq.topic defaults to
// "<kafka.group>.dlq" and a zero flow.rate_limit.burst to the rate rounded up.
//
// An unreadable file or invalid YAML is returned as a plain error. Every other
// problem (unknown keys, values that do not parse, missing variables, then
// everything Validate finds) is collected into one *ValidationError. On error the
// Config is nil.
func LoadWith(path string, env func(string) (string, bool)) (*Config, error) {
	c, err := load(path, env)
	var loadErr *ValidationError
	if err != nil && !errors.As(err, &loadErr) {
		return nil, err
	}
	// Validate even when the load had problems (the failed keys keep their
	// defaults), so that the operator sees every problem in one round.
	problems := loadErr.list()
	var ve *ValidationError
	if errors.As(c.Validate(), &ve) {
		for _, p := range ve.Problems {
			if !relatedToAny(p.Path, loadErr.list()) {
				problems = append(problems, p)
			}
		}
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}
	return c, nil
}

// LoadUnvalidated is LoadWith without Validate: it reports the problems of
// reading the configuration (unknown keys, values that do not parse, missing
// variables and secret files) and nothing else. It is for callers that fill in
// keys in code, such as the embedded demo, and then call Validate themselves.
func LoadUnvalidated(path string, env func(string) (string, bool)) (*Config, error) {
	c, err := load(path, env)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// load does the work of LoadUnvalidated and returns the Config even when it
// also returns a *ValidationError, with the failed keys at their defaults.
func load(path string, env func(string) (string, bool)) (*Config, error) {
	if env == nil {
		env = func(string) (string, bool) { return "", false }
	}
	c := Default()
	root := reflect.ValueOf(c).Elem()
	l := &loader{env: env, overrides: map[string]string{}}

	eachLeaf(root, "", func(p string, _ reflect.Value) {
		if v, ok := env(EnvName(p)); ok {
			l.overrides[p] = v
		}
	})
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
			l.section(doc.Content[0], root, "")
		}
	}
	eachLeaf(root, "", func(p string, fv reflect.Value) {
		if v, ok := l.overrides[p]; ok {
			l.fromEnv(fv, p, v)
		}
	})
	l.readSecretFiles(root, "")
	c.deriveDefaults()

	if len(l.problems) > 0 {
		return c, &ValidationError{Problems: l.problems}
	}
	return c, nil
}

// deriveDefaults fills the defaults that depend on other keys.
func (c *Config) deriveDefaults() {
	if c.DLQ.Topic == "" && c.Kafka.Group != "" {
		c.DLQ.Topic = c.Kafka.Group + ".dlq"
	}
	if rl := &c.Flow.RateLimit; rl.RecordsPerSecond > 0 && rl.Burst == 0 {
		rl.Burst = int(min(math.Ceil(rl.RecordsPerSecond), math.MaxInt32))
	}
}

// loader collects the problems of one load.
type loader struct {
	env       func(string) (string, bool)
	overrides map[string]string // key path -> value of its SLUICE_ variable
	problems  []Problem
}

func (l *loader) add(path string, line int, msg string) {
	if line > 0 {
		msg = fmt.Sprintf("%s (line %d)", msg, line)
	}
	l.problems = append(l.problems, Problem{Path: path, Message: msg})
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
	secretType   = reflect.TypeFor[Secret]()
)

// keyOf returns the YAML key of a struct field: its mapstructure tag.
func keyOf(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
	return name
}

// fieldIndex maps the keys of a section to field indexes.
func fieldIndex(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		if k := keyOf(t.Field(i)); k != "" && k != "-" {
			m[k] = i
		}
	}
	return m
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// eachLeaf calls fn for every key of the struct v that is not a section, in
// declaration order, with its path.
func eachLeaf(v reflect.Value, path string, fn func(path string, fv reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		k := keyOf(t.Field(i))
		if k == "" || k == "-" {
			continue
		}
		if fv := v.Field(i); fv.Kind() == reflect.Struct {
			eachLeaf(fv, join(path, k), fn)
		} else {
			fn(join(path, k), fv)
		}
	}
}

// keyPaths lists the paths of every section and key of t.
func keyPaths(t reflect.Type, path string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		k := keyOf(f)
		if k == "" || k == "-" {
			continue
		}
		out = append(out, join(path, k))
		if f.Type.Kind() == reflect.Struct {
			out = append(out, keyPaths(f.Type, join(path, k))...)
		}
	}
	return out
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a section of keys"
	default:
		return "a single value"
	}
}

// section decodes the mapping n into the struct v at path.
func (l *loader) section(n *yaml.Node, v reflect.Value, path string) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			l.add("", n.Line, "the file must be a mapping of sections (kafka, flow, sink, ...), not "+describe(n))
		} else {
			l.add(path, n.Line, "must be a section of keys, not "+describe(n))
		}
		return
	}
	fields := fieldIndex(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := deref(n.Content[i]), n.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			l.add(path, kn.Line, "keys must be plain names, not "+describe(kn))
			continue
		}
		key := kn.Value
		p := join(path, key)
		if kn.ShortTag() == "!!merge" {
			l.add(p, kn.Line, "YAML merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[key]; dup {
			l.add(p, kn.Line, fmt.Sprintf("is set twice (first at line %d); keep one", first))
			continue
		}
		seen[key] = kn.Line
		idx, ok := fields[key]
		if !ok {
			l.add(p, kn.Line, unknownKeyMessage(path, key, v.Type()))
			continue
		}
		fv := v.Field(idx)
		if fv.Kind() == reflect.Struct {
			l.section(vn, fv, p)
			continue
		}
		if _, overridden := l.overrides[p]; overridden {
			continue // the environment wins; do not expand or parse the file's value
		}
		l.value(vn, fv, p)
	}
}

// value decodes the YAML value n into the key fv at path. A null value (key:
// with nothing after it, or ~) leaves the default.
func (l *loader) value(n *yaml.Node, fv reflect.Value, path string) {
	n = deref(n)
	if isNull(n) {
		return
	}
	switch fv.Kind() {
	case reflect.Slice:
		var items []string
		switch n.Kind {
		case yaml.SequenceNode:
			ok := true
			for i, it := range n.Content {
				ip := fmt.Sprintf("%s[%d]", path, i)
				it = deref(it)
				if it.Kind != yaml.ScalarNode || isNull(it) {
					l.add(ip, it.Line, "must be a single value, not "+describe(it))
					ok = false
					continue
				}
				s, good := l.expand(it.Value, ip, it.Line)
				ok = ok && good
				items = append(items, s)
			}
			if !ok {
				return
			}
		case yaml.ScalarNode:
			s, ok := l.expand(n.Value, path, n.Line)
			if !ok {
				return
			}
			items = splitList(s)
		default:
			l.add(path, n.Line, "must be a list, like [a, b], not "+describe(n))
			return
		}
		setList(fv, items)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			l.add(path, n.Line, "must be a mapping of name: value, not "+describe(n))
			return
		}
		m := map[string]string{}
		ok := true
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := deref(n.Content[i]), deref(n.Content[i+1])
			if kn.Kind != yaml.ScalarNode {
				l.add(path, kn.Line, "names must be plain strings, not "+describe(kn))
				ok = false
				continue
			}
			ep := join(path, kn.Value)
			if _, dup := m[kn.Value]; dup {
				l.add(ep, kn.Line, "is set twice; keep one")
				ok = false
				continue
			}
			if isNull(vn) {
				m[kn.Value] = ""
				continue
			}
			if vn.Kind != yaml.ScalarNode {
				l.add(ep, vn.Line, "must be a single value, not "+describe(vn))
				ok = false
				continue
			}
			s, good := l.expand(vn.Value, ep, vn.Line)
			ok = ok && good
			m[kn.Value] = s
		}
		if ok {
			setMap(fv, m)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			l.add(path, n.Line, "must be a single value, not "+describe(n))
			return
		}
		s, ok := l.expand(n.Value, path, n.Line)
		if !ok {
			return
		}
		if err := setScalar(fv, s); err != nil {
			l.add(path, n.Line, err.Error())
		}
	}
}

// fromEnv sets the key fv at path from the value of its SLUICE_ variable.
func (l *loader) fromEnv(fv reflect.Value, path, val string) {
	name := EnvName(path)
	switch fv.Kind() {
	case reflect.Slice:
		setList(fv, splitList(val))
	case reflect.Map:
		m := map[string]string{}
		for _, pair := range splitList(val) {
			k, v, ok := strings.Cut(pair, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				l.add(path, 0, fmt.Sprintf("%s must be name=value pairs separated by commas", name))
				return
			}
			m[k] = strings.TrimSpace(v)
		}
		setMap(fv, m)
	default:
		if err := setScalar(fv, val); err != nil {
			l.add(path, 0, fmt.Sprintf("from %s: %v", name, err))
		}
	}
}

// splitList splits a comma-separated list, trimming spaces and dropping empty
// items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// setList sets a list key; an empty list is nil, as if never set.
func setList(fv reflect.Value, items []string) {
	if len(items) == 0 {
		fv.SetZero()
		return
	}
	out := reflect.MakeSlice(fv.Type(), len(items), len(items))
	for i, s := range items {
		out.Index(i).SetString(s)
	}
	fv.Set(out)
}

// setMap sets a map key; an empty map is nil, as if never set.
func setMap(fv reflect.Value, m map[string]string) {
	if len(m) == 0 {
		fv.SetZero()
		return
	}
	t := fv.Type()
	out := reflect.MakeMapWithSize(t, len(m))
	for k, v := range m {
		out.SetMapIndex(reflect.ValueOf(k).Convert(t.Key()), reflect.ValueOf(v).Convert(t.Elem()))
	}
	fv.Set(out)
}

// setScalar parses text into fv by fv's type. Its errors quote the text, so it
// must not be given a secret's value: secrets are strings and never fail.
func setScalar(fv reflect.Value, text string) error {
	t := fv.Type()
	trimmed := strings.TrimSpace(text)
	switch t {
	case durationType:
		d, err := time.ParseDuration(trimmed)
		if err != nil {
			if _, nerr := strconv.ParseFloat(trimmed, 64); nerr == nil {
				return fmt.Errorf("%q has no unit: write a duration like %sms or %ss", text, trimmed, trimmed)
			}
			return fmt.Errorf("%q is not a duration: write a number with a unit, like 200ms, 30s or 5m", text)
		}
		fv.SetInt(int64(d))
		return nil
	case byteSizeType:
		b, err := ParseByteSize(text)
		if err != nil {
			return err
		}
		fv.SetInt(int64(b))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(text)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(trimmed, 10, t.Bits())
		if err != nil {
			return fmt.Errorf("%q is not a whole number", text)
		}
		fv.SetInt(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(trimmed, t.Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%q is not a number", text)
		}
		fv.SetFloat(f)
	case reflect.Bool:
		b, err := strconv.ParseBool(trimmed)
		if err != nil {
			return fmt.Errorf("%q is not true or false", text)
		}
		fv.SetBool(b)
	default:
		panic("config: no parser for a key of type " + t.String())
	}
	return nil
}

// expand replaces each ${NAME} in s with the value of the environment variable
// NAME. "$${" is a literal "${"; any other "$" is literal, so column sources
// such as $offset are kept. The problems name the variable, never the value
// around it, which may be a secret.
func (l *loader) expand(s, path string, line int) (string, bool) {
	if !strings.Contains(s, "${") {
		return s, true
	}
	var b strings.Builder
	var missing []string
	ok := true
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' { // "$${": a literal "${"
			b.WriteString(s[:i])
			b.WriteString("{")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			l.add(path, line, `has a "${" without a closing "}"; write "$${" for a literal "${"`)
			return "", false
		}
		name := s[i+2 : i+end]
		s = s[i+end+1:]
		if !isEnvName(name) {
			l.add(path, line, `has a malformed ${...} reference: write ${NAME} with letters, digits and _ only`)
			ok = false
			continue
		}
		v, found := l.env(name)
		if !found {
			if !slices.Contains(missing, name) {
				missing = append(missing, name)
			}
			continue
		}
		b.WriteString(v)
	}
	switch len(missing) {
	case 0:
		return b.String(), ok
	case 1:
		l.add(path, line, fmt.Sprintf("references ${%s}, but %s is not set in the environment; set it, or write the value", missing[0], missing[0]))
	default:
		l.add(path, line, fmt.Sprintf("references variables that are not set in the environment: %s; set them, or write the value", strings.Join(missing, ", ")))
	}
	return "", false
}

func isEnvName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// readSecretFiles fills each Secret key that has a "<key>_file" twin from the
// file the twin names.
func (l *loader) readSecretFiles(v reflect.Value, path string) {
	t := v.Type()
	fields := fieldIndex(t)
	for i := range t.NumField() {
		key, fv := keyOf(t.Field(i)), v.Field(i)
		if fv.Kind() == reflect.Struct {
			l.readSecretFiles(fv, join(path, key))
			continue
		}
		j, ok := fields[key+"_file"]
		if ok && fv.Kind() == reflect.Map && fv.Type().Elem() == secretType {
			l.readSecretFileMap(fv, v.Field(j), join(path, key), join(path, key+"_file"))
			continue
		}
		if fv.Type() != secretType || !ok {
			continue
		}
		file, fp := v.Field(j).String(), join(path, key+"_file")
		switch {
		case file == "":
			continue
		case fv.String() != "":
			l.add(fp, 0, fmt.Sprintf("both %s and %s are set; keep one", join(path, key), fp))
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			l.add(fp, 0, fmt.Sprintf("cannot read the secret: %v", err))
			continue
		}
		s := strings.TrimRight(string(data), "\r\n")
		if s == "" {
			l.add(fp, 0, fmt.Sprintf("%s is empty", file))
			continue
		}
		fv.SetString(s)
	}
}

// readSecretFileMap fills the secrets of a map (sink.http.headers) from the
// files its "_file" twin names per entry.
func (l *loader) readSecretFileMap(secrets, files reflect.Value, path, filesPath string) {
	for _, k := range files.MapKeys() {
		name, file := k.String(), files.MapIndex(k).String()
		fp := join(filesPath, name)
		if secrets.IsValid() && !secrets.IsNil() && secrets.MapIndex(k).IsValid() {
			l.add(fp, 0, fmt.Sprintf("both %s and %s are set; keep one", join(path, name), fp))
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			l.add(fp, 0, fmt.Sprintf("cannot read the secret: %v", err))
			continue
		}
		s := strings.TrimRight(string(data), "\r\n")
		if s == "" {
			l.add(fp, 0, fmt.Sprintf("%s is empty", file))
			continue
		}
		if secrets.IsNil() {
			secrets.Set(reflect.MakeMap(secrets.Type()))
		}
		secrets.SetMapIndex(k, reflect.ValueOf(Secret(s)))
	}
}

// unknownKeyMessage says that key is not a key of the section t at path, and
// suggests the key that was probably meant.
func unknownKeyMessage(path, key string, t reflect.Type) string {
	siblings := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		if k := keyOf(t.Field(i)); k != "" && k != "-" {
			siblings = append(siblings, k)
		}
	}
	if s := closest(key, siblings); s != "" {
		return fmt.Sprintf("unknown key; did you mean %s?", join(path, s))
	}
	// The right key in the wrong section, such as kafka.password.
	norm := normalizeKey(key)
	for _, p := range keyPaths(reflect.TypeFor[Config](), "") {
		if normalizeKey(p[strings.LastIndexByte(p, '.')+1:]) == norm {
			return fmt.Sprintf("unknown key; did you mean %s?", p)
		}
	}
	if path == "" {
		return "unknown key; the sections are " + strings.Join(siblings, ", ")
	}
	return fmt.Sprintf("unknown key; the keys of %s are %s", path, strings.Join(siblings, ", "))
}

func normalizeKey(s string) string {
	return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
}

// closest returns the candidate nearest to key if it is near enough to be a
// typo of it, or "".
func closest(key string, candidates []string) string {
	best, bestDist := "", math.MaxInt
	norm := normalizeKey(key)
	for _, c := range candidates {
		if normalizeKey(c) == norm {
			return c
		}
		if d := editDistance(key, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	if bestDist <= min(3, max(1, len(key)/3)) {
		return best
	}
	return ""
}

// editDistance is the optimal string alignment distance between a and b: the
// edits are inserting, deleting or replacing a byte and swapping two adjacent
// bytes, the usual typos.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// relatedToAny reports whether path is, contains or is contained by the path of
// one of problems.
func relatedToAny(path string, problems []Problem) bool {
	return slices.ContainsFunc(problems, func(p Problem) bool {
		return related(path, p.Path)
	})
}

func related(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	return a == b || a == "" || strings.HasPrefix(b, a+".") || strings.HasPrefix(b, a+"[")
}
