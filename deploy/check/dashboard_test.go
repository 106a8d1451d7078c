package check

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const dashboardFile = "grafana/sluice.json"

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr         string         `json:"expr"`
		RefID        string         `json:"refId"`
		LegendFormat string         `json:"legendFormat"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// templateValues stand in for the dashboard's variables when promtool parses
// its queries.
var templateValues = strings.NewReplacer("$__rate_interval", "5m", "$namespace", ".*", "$job", ".*", "$pod", ".*")

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q, title %q, schemaVersion %d: all are needed to import it", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}
	for _, v := range []string{"namespace", "job", "pod"} {
		if vars[v] != "query" {
			t.Errorf("no %s variable", v)
		}
	}

	var all []panel
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	ids := map[int]string{}
	exprs := map[string]string{}
	byPanel := map[string]string{} // title -> its expressions, joined
	for i, p := range all {
		if other, ok := ids[p.ID]; ok || p.ID == 0 {
			t.Errorf("panel %q: id %d (also %q)", p.Title, p.ID, other)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, g)
		}
		for _, q := range all[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", p.Title, q.Title)
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.Description == "" {
			t.Errorf("panel %d: a title and a description say what it shows", p.ID)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		refs := map[string]bool{}
		for j, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: query %d has no expr or a missing or repeated refId", p.Title, j)
			}
			refs[q.RefID] = true
			if q.Datasource == nil || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %s does not use the ${datasource} variable", p.Title, q.RefID)
			}
			if !strings.Contains(q.Expr, `namespace=~"$namespace", job=~"$job", pod=~"$pod"`) {
				t.Errorf("panel %q: query %s ignores the namespace, job and pod variables: %s", p.Title, q.RefID, q.Expr)
			}
			exprs[fmt.Sprintf("panel %q query %s", p.Title, q.RefID)] = templateValues.Replace(q.Expr)
			byPanel[p.Title] += q.Expr + "\n"
		}
	}

	// What the observability issue asks the dashboard to show.
	wants := []struct {
		what string
		all  []string // in one panel
	}{
		{"lag per partition", []string{"sluice_consumer_lag_records", "by (topic, partition)"}},
		{"buffer utilization", []string{"sluice_buffer_utilization_ratio"}},
		{"pauses", []string{"sluice_partitions_paused", "rate(sluice_partition_pauses_total"}},
		{"breaker state", []string{"sluice_circuit_breaker_state"}},
		{"DLQ rate", []string{"rate(sluice_records_dlq_total"}},
		{"throughput in and out", []string{"rate(sluice_records_consumed_total", "rate(sluice_records_written_total"}},
		{"processing latency quantiles", []string{"histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,", "sluice_processing_duration_seconds_bucket"}},
	}
	for _, w := range wants {
		found := false
		for _, e := range byPanel {
			ok := true
			for _, s := range w.all {
				ok = ok && strings.Contains(e, s)
			}
			found = found || ok
		}
		if !found {
			t.Errorf("no panel shows %s (one panel with %q)", w.what, w.all)
		}
	}
	variable := regexp.MustCompile(`\$\w+`)
	for where, e := range exprs {
		if v := variable.FindString(e); v != "" {
			t.Errorf("%s: variable %s has no stand-in for promtool", where, v)
		}
	}
	checkQueries(t, exprs)
}
