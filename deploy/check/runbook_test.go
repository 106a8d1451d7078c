package check

import (
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

const (
	runbookFile    = "../docs/runbook.md" // from deploy/
	alertTestsFile = "prometheus/sluice-alerts_test.yaml"
)

// runbookSection is one heading of docs/runbook.md.
type runbookSection struct {
	level  int
	text   string
	anchor string
	body   string // the text up to the next heading of any level
}

var atxHeading = regexp.MustCompile(`^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$`)

// readRunbook splits docs/runbook.md into its headings, outside fenced code
// blocks (where "# ..." is a shell comment), with GitHub's anchor of each.
func readRunbook(t *testing.T) []runbookSection {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, runbookFile))
	if err != nil {
		t.Fatalf("the runbook every alert links: %v", err)
	}
	var (
		out   []runbookSection
		fence string
		seen  = map[string]int{}
	)
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\r\n")
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case fence != "":
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]) == "" {
				fence = ""
			}
		case strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~"):
			fence = trimmed[:3]
		default:
			if m := atxHeading.FindStringSubmatch(line); m != nil {
				out = append(out, runbookSection{level: len(m[1]), text: m[2], anchor: githubAnchor(m[2], seen)})
				continue
			}
		}
		if len(out) > 0 {
			out[len(out)-1].body += line + "\n"
		}
	}
	return out
}

// githubAnchor is the id GitHub gives a heading (github-slugger): lowercase,
// every character that is not a letter, a digit, a space, '-' or '_'
// dropped (inline code's backticks included), spaces turned into '-'; a
// repeated anchor gets "-1", "-2", ... seen counts the anchors so far.
func githubAnchor(heading string, seen map[string]int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	a := b.String()
	n := seen[a]
	seen[a] = n + 1
	if n > 0 {
		a += "-" + strconv.Itoa(n)
	}
	return a
}

func TestGitHubAnchor(t *testing.T) {
	seen := map[string]int{}
	for _, tc := range []struct{ heading, want string }{
		{"SluiceConsumerLagGrowing", "sluiceconsumerlaggrowing"},
		{"  How to confirm it  ", "how-to-confirm-it"},
		{"What `sluice status` shows", "what-sluice-status-shows"},
		{"Causes, in order (most likely first)!", "causes-in-order-most-likely-first"},
		{"flow.max_buffered_bytes - the byte budget", "flowmax_buffered_bytes---the-byte-budget"},
		{"Über die Lücke", "über-die-lücke"},
		{"Actions", "actions"},
		{"Actions", "actions-1"},
		{"Actions", "actions-2"},
	} {
		if got := githubAnchor(tc.heading, seen); got != tc.want {
			t.Errorf("githubAnchor(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

// alertLink is an alert name and the runbook_url it carries, and where.
type alertLink struct{ where, alert, url string }

// runbookLinks collects the runbook_url of every alert in the plain rule
// file, in the PrometheusRule copy of the base, and in the promtool tests'
// expected annotations.
func runbookLinks(t *testing.T) []alertLink {
	t.Helper()
	var links []alertLink
	groups, _ := alertRules(t)
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				links = append(links, alertLink{alertsFile, r.Alert, r.Annotations["runbook_url"]})
			}
		}
	}

	b, err := os.ReadFile(filepath.Join(deployDir, prometheusRuleFile))
	if err != nil {
		t.Fatal(err)
	}
	var pr monitoringv1.PrometheusRule
	if err := strict(b, &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRuleFile, err)
	}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				links = append(links, alertLink{prometheusRuleFile, r.Alert, r.Annotations["runbook_url"]})
			}
		}
	}

	b, err = os.ReadFile(filepath.Join(deployDir, alertTestsFile))
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			Name      string `json:"name"`
			AlertRule []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []struct {
					ExpAnnotations map[string]string `json:"exp_annotations"`
				} `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatalf("%s: %v", alertTestsFile, err)
	}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRule {
			for _, e := range a.ExpAlerts {
				if u, ok := e.ExpAnnotations["runbook_url"]; ok {
					links = append(links, alertLink{alertTestsFile + " (" + tc.Name + ")", a.Alertname, u})
				}
			}
		}
	}
	return links
}

// TestEveryAlertLinksARunbookSection: each runbook_url points into
// docs/runbook.md at a heading that exists (GitHub's anchor), titled with
// the alert's name, and the section says something.
func TestEveryAlertLinksARunbookSection(t *testing.T) {
	sections := readRunbook(t)
	byAnchor := map[string]runbookSection{}
	for _, s := range sections {
		byAnchor[s.anchor] = s
	}
	links := runbookLinks(t)
	alerts := map[string]bool{}
	for _, l := range links {
		if !strings.HasPrefix(l.where, alertTestsFile) {
			alerts[l.alert] = true
		}
		u, err := url.Parse(l.url)
		if err != nil || l.url == "" {
			t.Errorf("%s: %s: runbook_url %q is not a URL", l.where, l.alert, l.url)
			continue
		}
		frag := u.Fragment
		u.Fragment = ""
		if u.String() != runbook {
			t.Errorf("%s: %s: runbook_url %q does not point at %s", l.where, l.alert, l.url, runbook)
		}
		s, ok := byAnchor[frag]
		if !ok {
			t.Errorf("%s: %s: runbook_url's #%s is no heading of docs/runbook.md (anchors: %v)", l.where, l.alert, frag, slices.Sorted(maps.Keys(byAnchor)))
			continue
		}
		if s.text != l.alert {
			t.Errorf("%s: %s: runbook_url's #%s is the section %q, not the alert's", l.where, l.alert, frag, s.text)
		}
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts found in the rule files")
	}
	// Every alert's section has content, and no section names an alert that
	// no longer exists.
	for _, s := range sections {
		if s.level != 2 || !regexp.MustCompile(`^Sluice[A-Za-z]+$`).MatchString(s.text) {
			continue
		}
		if !alerts[s.text] {
			t.Errorf("docs/runbook.md: section %q names no alert of %s", s.text, alertsFile)
		}
	}
	for a := range alerts {
		s, ok := byAnchor[strings.ToLower(a)]
		if !ok {
			continue // reported above
		}
		body := sectionText(sections, s)
		if len(strings.Fields(body)) < 50 {
			t.Errorf("docs/runbook.md: the section of %s has %d words; say what it means, how to confirm it, the causes and the actions", a, len(strings.Fields(body)))
		}
	}
}

// sectionText is s's body with its subsections (deeper headings up to the
// next heading of s's level or higher).
func sectionText(all []runbookSection, s runbookSection) string {
	var b strings.Builder
	in := false
	for _, x := range all {
		switch {
		case x.anchor == s.anchor:
			in = true
		case in && x.level <= s.level:
			return b.String()
		}
		if in {
			b.WriteString(x.text + "\n" + x.body)
		}
	}
	return b.String()
}

// TestRunbookNamesDashboardPanelsThatExist: a "Dashboard:" line of the
// runbook quotes panel titles of deploy/grafana/sluice.json.
func TestRunbookNamesDashboardPanelsThatExist(t *testing.T) {
	titles := map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			titles[p.Title] = true
			walk(p.Panels)
		}
	}
	walk(readDashboard(t).Panels)
	quoted := regexp.MustCompile(`"([^"]+)"`)
	n := 0
	for _, s := range readRunbook(t) {
		for line := range strings.Lines(s.body) {
			l := strings.TrimSpace(line)
			if !strings.HasPrefix(strings.TrimLeft(l, "-* "), "Dashboard:") {
				continue
			}
			for _, m := range quoted.FindAllStringSubmatch(l, -1) {
				n++
				if !titles[m[1]] {
					t.Errorf("docs/runbook.md, %s: no panel titled %q in %s", s.text, m[1], dashboardFile)
				}
			}
		}
	}
	if n == 0 {
		t.Error(`docs/runbook.md names no dashboard panel (a line "- Dashboard: "Panel title", ...")`)
	}
}

// TestLinksIntoTheRunbookResolve: links to a section of the runbook from
// deploy/README.md, the docs and the README, and the runbook's links to its
// own sections, name anchors that exist.
func TestLinksIntoTheRunbookResolve(t *testing.T) {
	anchors := map[string]bool{}
	for _, s := range readRunbook(t) {
		anchors[s.anchor] = true
	}
	files, err := filepath.Glob(filepath.Join(deployDir, "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(deployDir, "README.md"), filepath.Join(deployDir, "..", "README.md"))
	toRunbook := regexp.MustCompile(`runbook\.md#([^)\s"]+)`)
	self := regexp.MustCompile(`\]\(#([^)\s"]+)\)`)
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found := toRunbook.FindAllStringSubmatch(string(b), -1)
		if filepath.Base(f) == "runbook.md" {
			found = append(found, self.FindAllStringSubmatch(string(b), -1)...)
		}
		for _, m := range found {
			n++
			if !anchors[m[1]] {
				t.Errorf("%s links runbook.md#%s, which is no heading of the runbook", f, m[1])
			}
		}
	}
	if n == 0 {
		t.Error("found no link into the runbook (deploy/README.md's alert table has some)")
	}
}
