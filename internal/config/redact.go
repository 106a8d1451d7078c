package config

import (
	"bytes"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// redactedText stands in for a secret's value.
const redactedText = "[redacted]"

// Redacted returns c as YAML with the keys of the configuration file, in the
// order of the reference configuration: durations as 30s, sizes as 64MiB. Every
// Secret (sink.postgres.dsn, kafka.sasl.password, the values of
// sink.http.headers) is written as "[redacted]", and of sink.http.url only the
// scheme, user name and host are shown (the password as "xxxxx", a path, query
// or fragment as "[redacted]"), so the output is safe to print; `sluice
// validate` prints it as the effective configuration.
func Redacted(c *Config) ([]byte, error) {
	if c == nil {
		return nil, fmt.Errorf("config: Redacted of a nil Config")
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(encodeSection(reflect.ValueOf(c).Elem(), "")); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	return buf.Bytes(), nil
}

func encodeSection(v reflect.Value, path string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	t := v.Type()
	for i := range t.NumField() {
		k := keyOf(t.Field(i))
		if k == "" || k == "-" {
			continue
		}
		fv, p := v.Field(i), join(path, k)
		var val *yaml.Node
		if fv.Kind() == reflect.Struct {
			val = encodeSection(fv, p)
		} else {
			val = encodeValue(fv, p)
		}
		n.Content = append(n.Content, str(k), val)
	}
	return n
}

func encodeValue(v reflect.Value, path string) *yaml.Node {
	switch t := v.Type(); {
	case t == secretType:
		return secret(v.String())
	case t == durationType:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: formatDuration(time.Duration(v.Int()))}
	case t == byteSizeType:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: ByteSize(v.Int()).String()}
	case path == "sink.http.url":
		return str(redactURL(v.String()))
	}
	switch v.Kind() {
	case reflect.String:
		return str(v.String())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return plain(strconv.FormatInt(v.Int(), 10))
	case reflect.Float32, reflect.Float64:
		return plain(strconv.FormatFloat(v.Float(), 'g', -1, 64))
	case reflect.Bool:
		return plain(strconv.FormatBool(v.Bool()))
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for i := range v.Len() {
			n.Content = append(n.Content, encodeValue(v.Index(i), path))
		}
		return n
	case reflect.Map:
		n := &yaml.Node{Kind: yaml.MappingNode}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		for _, k := range keys {
			n.Content = append(n.Content, str(k), encodeValue(v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key())), path))
		}
		if len(n.Content) == 0 {
			n.Style = yaml.FlowStyle
		}
		return n
	}
	panic("config: cannot encode a key of type " + v.Type().String())
}

func str(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// plain is a number or a bool, written without a tag: the loader parses a
// key's text by the key's type.
func plain(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Value: s}
}

func secret(s string) *yaml.Node {
	if s == "" {
		return str("")
	}
	return str(redactedText)
}

// redactURL shows a URL's scheme, user name and host, and hides what may be a
// credential, as the http sink does in its errors: the password (as "xxxxx"),
// the path (a webhook's token), the query (an api_key=) and the fragment, each
// as "[redacted]" when present. A URL that does not parse is hidden whole,
// since it may be a credential written wrong.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return redactedText
	}
	path, query, fragment := u.EscapedPath(), u.RawQuery != "" || u.ForceQuery, u.Fragment != ""
	u.Path, u.RawPath, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", "", "", false, "", ""
	out := u.Redacted()
	if len(path) > 1 {
		out += "/" + redactedText
	} else {
		out += path
	}
	if query {
		out += "?" + redactedText
	}
	if fragment {
		out += "#" + redactedText
	}
	return out
}

// formatDuration writes d as time.Duration.String does without the zero
// units that String leaves: 1m0s is 1m, 1h30m0s is 1h30m.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
