package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func statusCmd() *cobra.Command {
	var addr string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running sluice's state (its /status) as a table",
		Long: "status reads GET /status from a running sluice (its observability.listen address) and prints\n" +
			"a summary line (group, sink, readiness, uptime, buffer use, records written and dead-lettered,\n" +
			"the circuit breaker) and one row per assigned partition: committed offset, high watermark,\n" +
			"lag in records and in seconds, records in flight, and whether fetching is paused and by what.\n" +
			"It exits 1 when sluice cannot be reached. For scripts, read /status itself (JSON).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := statusURL(addr)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			st, err := fetchStatus(cmd.Context(), u, timeout)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9108", "sluice's observability.listen address: host:port, or an http(s) URL")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for the answer")
	return cmd
}

// statusURL turns --addr (host:port, :port or a URL) into the /status URL.
func statusURL(addr string) (string, error) {
	if !strings.Contains(addr, "://") {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("--addr %q: want host:port or a URL: %w", addr, err)
		}
		if host == "" {
			host = "127.0.0.1" // ":9108", as observability.listen may read
		}
		addr = "http://" + net.JoinHostPort(host, port)
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--addr %q: want host:port or an http(s) URL", addr)
	}
	if !strings.HasSuffix(u.Path, "/status") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/status"
	}
	return u.String(), nil
}

// fetchStatus GETs u and decodes the JSON object it serves. The object is
// kept generic: a field added to /status does not break this command, and a
// missing one prints as "-".
func fetchStatus(ctx context.Context, u string, timeout time.Duration) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var hint string
		if errors.Is(err, context.DeadlineExceeded) {
			hint = fmt.Sprintf("no answer within %s", timeout)
		} else {
			hint = "is sluice running, and is --addr its observability.listen?"
		}
		return nil, fmt.Errorf("cannot reach sluice at %s (%s): %w", u, hint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s: %s", u, resp.Status, firstLine(body))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var st map[string]any
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%s did not answer with a JSON object (is --addr sluice's observability.listen?): %w", u, err)
	}
	return st, nil
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// printStatus writes the summary line and the partition table.
func printStatus(w io.Writer, st map[string]any) error {
	obj := func(m map[string]any, k string) map[string]any { v, _ := m[k].(map[string]any); return v }

	ready := "READY"
	if b, ok := st["ready"].(bool); !ok {
		ready = "readiness unknown"
	} else if !b {
		ready = "NOT READY"
		if why := str(st, "not_ready"); why != "" {
			ready += ": " + why
		}
	}
	head := []string{"group " + orDash(str(st, "group")), "sink " + orDash(str(st, "sink")), ready}
	if secs, ok := num(st, "uptime_seconds"); ok {
		head = append(head, "up "+(time.Duration(secs)*time.Second).String())
	}
	line2 := []string{"buffer " + bufferUse(obj(st, "buffer"))}
	for _, f := range []struct{ key, label string }{
		{"records_consumed", "consumed"}, {"records_written", "written"}, {"records_dead_lettered", "dead-lettered"},
	} {
		if n, ok := num(st, f.key); ok {
			line2 = append(line2, fmt.Sprintf("%s %s", f.label, thousands(n)))
		}
	}
	if b, ok := st["breaker"]; ok && b != nil {
		line2 = append(line2, "breaker "+breaker(b))
	}
	fmt.Fprintln(w, strings.Join(head, " · "))
	fmt.Fprintln(w, strings.Join(line2, " · "))
	fmt.Fprintln(w)

	parts, _ := st["partitions"].([]any)
	if len(parts) == 0 {
		fmt.Fprintln(w, "no partitions assigned")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tCOMMITTED\tHIGH WATERMARK\tLAG\tLAG SECONDS\tIN FLIGHT\tPAUSED")
	var totalLag, paused int64
	lagKnown := true
	for _, p := range parts {
		pm, _ := p.(map[string]any)
		if pm == nil {
			continue
		}
		if n, ok := num(pm, "lag"); ok && n >= 0 {
			totalLag += n
		} else {
			lagKnown = false
		}
		pz := "no"
		if b, _ := pm["paused"].(bool); b {
			paused++
			pz = "yes"
			if by := str(pm, "paused_by"); by != "" {
				pz = "yes (" + by + ")"
			}
		}
		secs := "-"
		if v, ok := pm["lag_seconds"].(json.Number); ok {
			if f, err := v.Float64(); err == nil {
				secs = strconv.FormatFloat(f, 'f', 1, 64)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(str(pm, "topic")), offset(pm, "partition"),
			offset(pm, "committed_offset"), offset(pm, "high_watermark"), offset(pm, "lag"), secs, offset(pm, "in_flight"), pz)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	total := thousands(totalLag) + " records"
	if !lagKnown {
		total += " (some partitions' lag not known yet)"
	}
	_, err := fmt.Fprintf(w, "\n%d partitions, %d paused, total lag %s\n", len(parts), paused, total)
	return err
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

// num returns m[k] as a whole number (rounded toward zero).
func num(m map[string]any, k string) (int64, bool) {
	v, ok := m[k].(json.Number)
	if !ok {
		return 0, false
	}
	if n, err := v.Int64(); err == nil {
		return n, true
	}
	f, err := v.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return int64(f), true
}

// offset prints m[k] as a number, "-" when missing or -1 (not known).
func offset(m map[string]any, k string) string {
	n, ok := num(m, k)
	if !ok || n < 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bufferUse prints the gate's use: the larger share of records and bytes.
func bufferUse(b map[string]any) string {
	if b == nil {
		return "-"
	}
	var pct string
	if v, ok := b["utilization"].(json.Number); ok {
		if f, err := v.Float64(); err == nil {
			pct = fmt.Sprintf("%.0f%%", 100*f)
		}
	}
	var detail []string
	if r, ok := num(b, "records"); ok {
		if mr, ok := num(b, "max_records"); ok {
			detail = append(detail, fmt.Sprintf("%s/%s records", thousands(r), thousands(mr)))
		}
	}
	if r, ok := num(b, "bytes"); ok {
		if mr, ok := num(b, "max_bytes"); ok {
			detail = append(detail, fmt.Sprintf("%.1f/%.1f MiB", float64(r)/(1<<20), float64(mr)/(1<<20)))
		}
	}
	if full, _ := b["full"].(bool); full {
		detail = append(detail, "full")
	}
	switch {
	case pct == "" && len(detail) == 0:
		return "-"
	case pct == "":
		return strings.Join(detail, ", ")
	case len(detail) == 0:
		return pct
	}
	return pct + " (" + strings.Join(detail, ", ") + ")"
}

// breaker prints the breaker as /status gives it: a state name, a number
// (0 closed, 1 half-open, 2 open, as the metric) or an object with a state,
// open_since, opens and last_error, and other scalar fields shown as k=v.
func breaker(v any) string {
	state := func(v any) string {
		if n, ok := v.(json.Number); ok {
			if i, err := n.Int64(); err == nil && i >= 0 && i <= 2 {
				return [...]string{"closed", "half-open", "open"}[i]
			}
		}
		return scalar(v)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return orDash(state(v))
	}
	out := orDash(state(m["state"]))
	if at := scalar(m["open_since"]); at != "" {
		out += " since " + at
	}
	var rest []string
	if n := scalar(m["opens"]); n != "" {
		rest = append(rest, "opens "+n)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "state", "open_since", "opens", "since", "last_error":
			continue
		}
		if s := scalar(m[k]); s != "" {
			rest = append(rest, k+"="+s)
		}
	}
	if e := scalar(m["last_error"]); e != "" {
		if len(e) > 120 {
			e = e[:120] + "..."
		}
		rest = append(rest, "last error: "+e)
	}
	if len(rest) > 0 {
		out += " (" + strings.Join(rest, ", ") + ")"
	}
	return out
}

// scalar prints a JSON string, number or boolean; "" for anything else.
func scalar(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case json.Number:
		return s.String()
	case bool:
		return strconv.FormatBool(s)
	}
	return ""
}

// thousands prints n with thin separators: 1234567 → 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
