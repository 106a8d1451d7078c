package postgres

import (
	"fmt"
	"strings"
)

// sourceKind says where a column's value comes from in a record.
type sourceKind uint8

const (
	srcKey       sourceKind = iota + 1 // $key: the record key, as bytes
	srcTopic                           // $topic
	srcPartition                       // $partition
	srcOffset                          // $offset
	srcTimestamp                       // $timestamp: the record timestamp
	srcHeader                          // $headers.<name>: the last header of that name
	srcValue                           // $value: the whole value, as bytes
	srcPath                            // value.<path>: a field of the JSON value
)

// source is one parsed value of sink.postgres.columns.
type source struct {
	kind sourceKind
	arg  string // header name for srcHeader, gjson path for srcPath
	text string // as configured, for messages
}

func (s source) String() string { return s.text }

const sourceHelp = "want $key, $topic, $partition, $offset, $timestamp, $headers.<name>, $value or value.<json.path>"

// parseSource parses a column's source as written in the configuration.
func parseSource(s string) (source, error) {
	switch s {
	case "$key":
		return source{kind: srcKey, text: s}, nil
	case "$topic":
		return source{kind: srcTopic, text: s}, nil
	case "$partition":
		return source{kind: srcPartition, text: s}, nil
	case "$offset":
		return source{kind: srcOffset, text: s}, nil
	case "$timestamp":
		return source{kind: srcTimestamp, text: s}, nil
	case "$value":
		return source{kind: srcValue, text: s}, nil
	case "":
		return source{}, fmt.Errorf("empty source (%s)", sourceHelp)
	case "value":
		return source{}, fmt.Errorf("unknown source %q (use $value for the whole value, or value.<json.path> for a field)", s)
	}
	if name, ok := strings.CutPrefix(s, "$headers."); ok {
		if name == "" {
			return source{}, fmt.Errorf("source %q names no header (want $headers.<name>)", s)
		}
		return source{kind: srcHeader, arg: name, text: s}, nil
	}
	if path, ok := strings.CutPrefix(s, "value."); ok {
		if err := checkPath(path); err != nil {
			return source{}, fmt.Errorf("source %q: %w", s, err)
		}
		return source{kind: srcPath, arg: path, text: s}, nil
	}
	if strings.HasPrefix(s, "$value.") {
		return source{}, fmt.Errorf("unknown source %q (a field of the value is written value.%s)", s, strings.TrimPrefix(s, "$value."))
	}
	if strings.HasPrefix(s, "$header.") {
		return source{}, fmt.Errorf("unknown source %q (headers are written $headers.<name>)", s)
	}
	return source{}, fmt.Errorf("unknown source %q (%s)", s, sourceHelp)
}

// checkPath accepts a plain dot path in gjson syntax: keys separated by dots,
// array elements by their index (items.0.sku), and a backslash to escape a dot or
// another special character in a key (a\.b). Wildcards, queries, modifiers and
// multipaths are refused: a column takes exactly one field.
func checkPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty JSON path")
	}
	segLen := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '\\':
			if i+1 == len(p) {
				return fmt.Errorf("JSON path ends with a lone backslash")
			}
			i++
			segLen++
		case '.':
			if segLen == 0 {
				return fmt.Errorf("JSON path has an empty key")
			}
			segLen = 0
		case '*', '?', '#', '@', '|', '!', '{', '[':
			return fmt.Errorf("JSON path may not contain %q unescaped (only plain dot paths are supported)", c)
		default:
			segLen++
		}
	}
	if segLen == 0 {
		return fmt.Errorf("JSON path has an empty key")
	}
	return nil
}
