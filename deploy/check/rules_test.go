package check

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

var update = flag.Bool("update", false, "rewrite deploy/base/prometheusrule.yaml from deploy/prometheus/sluice-alerts.yaml")

const (
	alertsFile         = "prometheus/sluice-alerts.yaml"
	prometheusRuleFile = "base/prometheusrule.yaml"
	runbook            = "https://github.com/sluicehq/sluice/blob/main/docs/runbook.md"
)

const prometheusRuleHeader = `# The alert rules of deploy/prometheus/sluice-alerts.yaml for the Prometheus
# Operator. The groups are a copy of that file, which promtool tests: edit that
# file and copy its groups here (make deploy-check fails while they differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sluice
  labels:
    app.kubernetes.io/name: sluice
spec:
`

// alertRules reads the rule file promtool checks, strictly, into the
// Prometheus Operator's rule group type (the same fields as Prometheus's).
func alertRules(t *testing.T) ([]monitoringv1.RuleGroup, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, alertsFile))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	if err := strict(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return f.Groups, b
}

func TestPrometheusRuleIsTheAlertRules(t *testing.T) {
	groups, src := alertRules(t)
	if *update {
		body := string(src[strings.Index(string(src), "groups:"):])
		var out strings.Builder
		out.WriteString(prometheusRuleHeader)
		for line := range strings.Lines(body) {
			if strings.TrimSpace(line) != "" {
				out.WriteString("  ")
			}
			out.WriteString(line)
		}
		if err := os.WriteFile(filepath.Join(deployDir, prometheusRuleFile), []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote deploy/%s", prometheusRuleFile)
	}
	m := decodeAll(t, build(t, "base"))
	if !reflect.DeepEqual(groups, m.prometheusRule.Spec.Groups) {
		t.Errorf("deploy/%s differs from deploy/%s; after editing the latter, run (in deploy/check) go test -run TestPrometheusRuleIsTheAlertRules -update", prometheusRuleFile, alertsFile)
	}
}

func TestAlertConventions(t *testing.T) {
	groups, _ := alertRules(t)
	n := 0
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !strings.HasPrefix(r.Alert, "Sluice") {
				t.Errorf("%s: alert names start with Sluice", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s", r.Alert, a)
				}
			}
			// The runbook (docs/runbook.md) has one section per alert, titled
			// with the alert's name; this is GitHub's anchor for it.
			if got, want := r.Annotations["runbook_url"], runbook+"#"+strings.ToLower(r.Alert); got != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, got, want)
			}
			if r.For == nil || *r.For == "" {
				t.Errorf("%s: no for: a single bad evaluation should not page", r.Alert)
			}
		}
	}
	if n != 6 {
		t.Errorf("%d alerts, want the six of the observability issue", n)
	}
}
