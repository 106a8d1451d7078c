package postgres

import (
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sluicehq/sluice/internal/record"
)

// The screen's query costs PostgreSQL about as much as a third of the COPY it
// precedes (5000 rows: 2.5 ms against 7 ms here), and in a stream where every
// batch holds a few violators every batch pays it. The prescreen is a first
// pass in sluice for the commonest CHECK constraints, a column compared with a
// number, joined by AND and OR (amount >= 0, qty BETWEEN 1 AND 10): it flags
// the rows that could break one, only those go to the query, and a batch
// without any skips it. It never judges. A flagged row is tested by
// PostgreSQL like any other; a row it let through that PostgreSQL refuses
// fails the COPY, the write falls back to the full screen, and the sink stops
// prescreening (Sink.prescreenMissed). It errs towards flagging: a value
// within a column's rounding of the bound, of a type it does not know, NaN or
// an infinity is flagged.
//
// A table with any screened check it cannot read has no prescreen.

// prescreen is a parsed CHECK expression, or all of a table's, ANDed.
type prescreen struct {
	op    string // "and", "or", or a comparison: >=, >, <=, <, <>
	args  []*prescreen
	field int     // comparison: the row index of the column
	bound float64 // comparison: column op bound
	slack float64 // comparison: how near the bound a value is flagged (the column's rounding)
}

// newPrescreen parses the checks' expressions (pg_get_expr's form) over
// columns, the sink's columns in row order; it returns nil when one cannot be
// read.
func newPrescreen(t *tableDef, columns []string, checks []checkDef) *prescreen {
	all := &prescreen{op: "and"}
	for _, c := range checks {
		p := parseCheck(t, columns, c.Expr)
		if p == nil {
			return nil
		}
		all.args = append(all.args, p)
	}
	if len(all.args) == 0 {
		return nil
	}
	return all
}

// mayFail says whether the expression could be false for row: a NULL
// comparison is not (a CHECK passes on NULL), AND may be false when any part
// may, OR only when every part may.
func (p *prescreen) mayFail(row record.Row) bool {
	switch p.op {
	case "and":
		return slices.ContainsFunc(p.args, func(a *prescreen) bool { return a.mayFail(row) })
	case "or":
		return !slices.ContainsFunc(p.args, func(a *prescreen) bool { return !a.mayFail(row) })
	}
	v := row[p.field]
	if v == nil {
		return false
	}
	x, ok := floatOf(v)
	if !ok || math.IsNaN(x) || math.IsInf(x, 0) {
		return true
	}
	// margin is how far the comparison holds; the check may fail when it
	// is within the column's rounding and float64's error of the bound.
	margin := x - p.bound
	switch p.op {
	case "<=", "<":
		margin = -margin
	case "<>":
		margin = math.Abs(margin)
	}
	return margin <= p.slack+1e-9*max(1, math.Abs(x), math.Abs(p.bound))
}

// suspects returns the indexes of the rows that may break a check; empty,
// not nil, when none may.
func (p *prescreen) suspects(rows []record.Row) []int {
	out := []int{}
	for i, row := range rows {
		if p.mayFail(row) {
			out = append(out, i)
		}
	}
	return out
}

// floatOf returns a value of a numeric column as Map makes it.
func floatOf(v any) (float64, bool) {
	switch v := v.(type) {
	case int16:
		return float64(v), true
	case int32:
		return float64(v), true
	case int64:
		return float64(v), true
	case float32:
		return float64(v), true
	case float64:
		return v, true
	case numericValue:
		return v.float64(), true
	}
	return 0, false // *pgtype.Numeric: NaN, an infinity, or digits beyond numericValue's
}

// float64 is n's value, to float64's precision.
func (n numericValue) float64() float64 {
	var f float64
	for k := range int(n.ndigits) {
		f = f*numericBase + float64(n.digits[k])
	}
	f *= math.Pow(numericBase, float64(int(n.weight)-int(n.ndigits)+1))
	if n.sign == numericNegative {
		f = -f
	}
	return f
}

const numericBase = 10000

var (
	// a number as pg_get_expr writes a constant: 0, 0.5, (0)::numeric,
	// '-5'::integer, (3.5)::double precision
	checkConstant = regexp.MustCompile(`^(?:\(([0-9]+(?:\.[0-9]+)?)\)|'(-?[0-9]+(?:\.[0-9]+)?)'|(-?[0-9]+(?:\.[0-9]+)?))(?:::(?:numeric|integer|bigint|smallint|double precision|real))?$`)
	checkIdent    = regexp.MustCompile(`^(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")$`)
	// the scale of numeric(p,s)
	numericScale = regexp.MustCompile(`^numeric\(\d+,(\d+)\)$`)
)

// parseCheck parses one expression; nil when it is not a comparison of a
// written numeric column with a constant, or AND and OR of such.
func parseCheck(t *tableDef, columns []string, expr string) *prescreen {
	expr = strings.TrimSpace(expr)
	for _, op := range []string{"or", "and"} {
		if parts := splitTop(expr, " "+strings.ToUpper(op)+" "); len(parts) > 1 {
			p := &prescreen{op: op}
			for _, part := range parts {
				a := parseCheck(t, columns, part)
				if a == nil {
					return nil
				}
				p.args = append(p.args, a)
			}
			return p
		}
	}
	if inner, ok := unwrap(expr); ok {
		return parseCheck(t, columns, inner)
	}
	for _, op := range []string{">=", "<=", "<>", ">", "<"} {
		parts := splitTop(expr, " "+op+" ")
		if len(parts) != 2 {
			continue
		}
		if p := comparison(t, columns, parts[0], op, parts[1]); p != nil {
			return p
		}
		// constant op column: turn it round
		flip := map[string]string{">=": "<=", "<=": ">=", ">": "<", "<": ">", "<>": "<>"}[op]
		return comparison(t, columns, parts[1], flip, parts[0])
	}
	return nil
}

// comparison is column op constant, or nil.
func comparison(t *tableDef, columns []string, ident, op, constant string) *prescreen {
	if !checkIdent.MatchString(ident) {
		return nil
	}
	name := ident
	if strings.HasPrefix(ident, `"`) {
		name = strings.ReplaceAll(ident[1:len(ident)-1], `""`, `"`)
	}
	field := slices.Index(columns, name)
	col, ok := t.column(name)
	if field < 0 || !ok {
		return nil
	}
	m := checkConstant.FindStringSubmatch(constant)
	if m == nil {
		return nil
	}
	bound, err := strconv.ParseFloat(m[1]+m[2]+m[3], 64)
	if err != nil {
		return nil
	}
	p := &prescreen{op: op, field: field, bound: bound}
	switch col.TypeOID {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.Float8OID:
	case pgtype.Float4OID:
		p.slack = 1e-6 * max(1, math.Abs(bound)) // a real's precision
	case pgtype.NumericOID:
		switch s := numericScale.FindStringSubmatch(col.Type); {
		case s != nil:
			scale, _ := strconv.Atoi(s[1])
			p.slack = math.Pow(10, -float64(scale)) // the value is rounded to the scale
		case col.Type != "numeric":
			return nil // a domain: its scale, if any, is not in the name
		}
	default:
		return nil
	}
	return p
}

// walkTop calls f with the index of each byte of s outside quotes and the
// parenthesis depth after it, until f returns false.
func walkTop(s string, f func(i, depth int) bool) {
	var (
		depth int
		quote byte
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quote != 0:
			if c == quote {
				quote = 0
			}
			continue
		case c == '\'' || c == '"':
			quote = c
			continue
		case c == '(':
			depth++
		case c == ')':
			depth--
		}
		if !f(i, depth) {
			return
		}
	}
}

// splitTop splits s at sep (which holds no quote or parenthesis) where sep is
// outside parentheses and quotes.
func splitTop(s, sep string) []string {
	var parts []string
	start := 0
	walkTop(s, func(i, depth int) bool {
		if depth == 0 && i >= start && strings.HasPrefix(s[i:], sep) {
			parts = append(parts, s[start:i])
			start = i + len(sep)
		}
		return true
	})
	return append(parts, s[start:])
}

// unwrap returns s without the parentheses around the whole of it.
func unwrap(s string) (string, bool) {
	if len(s) < 2 || s[0] != '(' || s[len(s)-1] != ')' {
		return s, false
	}
	whole := false
	walkTop(s, func(i, depth int) bool {
		if depth == 0 { // the first parenthesis closes here: at the end, or early as in "(0)::numeric"
			whole = i == len(s)-1
			return false
		}
		return true
	})
	if !whole {
		return s, false
	}
	return s[1 : len(s)-1], true
}
