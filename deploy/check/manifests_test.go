package check

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// deployDir is deploy/, seen from deploy/check where the tests run.
const deployDir = ".."

// object is one resource of a kustomize build.
type object struct {
	gvk  schema.GroupVersionKind
	name string
	yaml []byte
}

func (o object) String() string { return o.gvk.Kind + "/" + o.name }

// build runs kustomize (its Go API, as `kustomize build` does) on deploy/<dir>.
func build(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(deployDir, dir))
	if err != nil {
		t.Fatalf("kustomize build deploy/%s: %v", dir, err)
	}
	var objs []object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		g := r.GetGvk()
		objs = append(objs, object{gvk: schema.GroupVersionKind{Group: g.Group, Version: g.Version, Kind: g.Kind}, name: r.GetName(), yaml: y})
	}
	return objs
}

// strict decodes y into v, rejecting unknown and duplicate fields.
func strict(y []byte, v any) error { return yaml.UnmarshalStrict(y, v) }

// manifests is one build decoded into the upstream API types.
type manifests struct {
	namespace      string
	deployment     *appsv1.Deployment
	configMap      *corev1.ConfigMap
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	serviceMonitor *monitoringv1.ServiceMonitor
	prometheusRule *monitoringv1.PrometheusRule
	scaledObject   *kedav1alpha1.ScaledObject
	triggerAuth    *kedav1alpha1.TriggerAuthentication
	config         sluiceConfig
}

// decodeAll decodes every object of a build strictly into the type its
// apiVersion and kind name; an object of any other kind fails the test.
func decodeAll(t *testing.T, objs []object) *manifests {
	t.Helper()
	m := &manifests{}
	for _, o := range objs {
		var into any
		var want schema.GroupVersion
		switch o.gvk.Kind {
		case "Deployment":
			m.deployment, want = &appsv1.Deployment{}, appsv1.SchemeGroupVersion
			into = m.deployment
		case "ConfigMap":
			m.configMap, want = &corev1.ConfigMap{}, corev1.SchemeGroupVersion
			into = m.configMap
		case "Service":
			m.service, want = &corev1.Service{}, corev1.SchemeGroupVersion
			into = m.service
		case "ServiceAccount":
			m.serviceAccount, want = &corev1.ServiceAccount{}, corev1.SchemeGroupVersion
			into = m.serviceAccount
		case "PodDisruptionBudget":
			m.pdb, want = &policyv1.PodDisruptionBudget{}, policyv1.SchemeGroupVersion
			into = m.pdb
		case "ServiceMonitor":
			m.serviceMonitor, want = &monitoringv1.ServiceMonitor{}, monitoringv1.SchemeGroupVersion
			into = m.serviceMonitor
		case "PrometheusRule":
			m.prometheusRule, want = &monitoringv1.PrometheusRule{}, monitoringv1.SchemeGroupVersion
			into = m.prometheusRule
		case "ScaledObject":
			m.scaledObject, want = &kedav1alpha1.ScaledObject{}, kedav1alpha1.GroupVersion
			into = m.scaledObject
		case "TriggerAuthentication":
			m.triggerAuth, want = &kedav1alpha1.TriggerAuthentication{}, kedav1alpha1.GroupVersion
			into = m.triggerAuth
		default:
			t.Errorf("%s: a kind this test does not know; add it", o)
			continue
		}
		if got := o.gvk.GroupVersion(); got != want {
			t.Errorf("%s: apiVersion %s, want %s", o, got, want)
		}
		if err := strict(o.yaml, into); err != nil {
			t.Errorf("%s does not decode strictly into its API type: %v", o, err)
		}
		var meta struct {
			Metadata struct{ Namespace string } `json:"metadata"`
		}
		_ = yaml.Unmarshal(o.yaml, &meta)
		switch {
		case meta.Metadata.Namespace == "":
			t.Errorf("%s has no namespace", o)
		case m.namespace == "":
			m.namespace = meta.Metadata.Namespace
		case m.namespace != meta.Metadata.Namespace:
			t.Errorf("%s is in namespace %s, the others in %s", o, meta.Metadata.Namespace, m.namespace)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for what, missing := range map[string]bool{"Deployment": m.deployment == nil, "ConfigMap": m.configMap == nil,
		"Service": m.service == nil, "ServiceAccount": m.serviceAccount == nil, "PodDisruptionBudget": m.pdb == nil,
		"ServiceMonitor": m.serviceMonitor == nil, "PrometheusRule": m.prometheusRule == nil} {
		if missing {
			t.Errorf("the build has no %s", what)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	m.config = parseConfig(t, m.configMap)
	return m
}

// sluiceConfig is the part of sluice's configuration the manifests repeat.
// `sluice validate` (make deploy-check) checks the whole file.
type sluiceConfig struct {
	raw   string
	Kafka struct {
		Brokers     []string `json:"brokers"`
		Group       string   `json:"group"`
		Topics      []string `json:"topics"`
		StartOffset string   `json:"start_offset"`
		TLS         struct {
			Enabled bool `json:"enabled"`
		} `json:"tls"`
		SASL struct {
			Mechanism string `json:"mechanism"`
			Username  string `json:"username"`
			Password  string `json:"password"`
		} `json:"sasl"`
	} `json:"kafka"`
	ShutdownTimeout string `json:"shutdown_timeout"`
	Observability   struct {
		Listen string `json:"listen"`
	} `json:"observability"`
}

// configFile is the key of the ConfigMap that holds sluice.yaml.
const configFile = "sluice.yaml"

func parseConfig(t *testing.T, cm *corev1.ConfigMap) sluiceConfig {
	t.Helper()
	raw, ok := cm.Data[configFile]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s (keys: %v)", cm.Name, configFile, slices.Sorted(maps.Keys(cm.Data)))
	}
	var c sluiceConfig
	if err := yaml.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatalf("ConfigMap %s: %s: %v", cm.Name, configFile, err)
	}
	c.raw = raw
	if c.Kafka.StartOffset == "" {
		c.Kafka.StartOffset = "earliest" // sluice's default
	}
	if c.ShutdownTimeout == "" {
		c.ShutdownTimeout = "30s"
	}
	return c
}

// dockerCmd returns the JSON-form CMD of the Dockerfile at the root of the repository.
func dockerCmd(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var cmd []string
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "CMD "); ok {
			cmd = nil
			if err := json.Unmarshal([]byte(rest), &cmd); err != nil {
				t.Fatalf("Dockerfile CMD %s is not in JSON form: %v", rest, err)
			}
		}
	}
	if len(cmd) == 0 {
		t.Fatal("the Dockerfile has no CMD")
	}
	return cmd
}

func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	bad := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicaz: 2\n")
	if err := strict(bad, &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "replicaz") {
		t.Errorf("a Deployment with spec.replicaz decoded: %v", err)
	}
	bad = []byte("apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: x}\n  maxReplicas: 3\n  triggers: []\n")
	if err := strict(bad, &kedav1alpha1.ScaledObject{}); err == nil || !strings.Contains(err.Error(), "maxReplicas") {
		t.Errorf("a ScaledObject with spec.maxReplicas decoded: %v", err)
	}
}

func TestBase(t *testing.T) {
	m := decodeAll(t, build(t, "base"))
	if m.scaledObject != nil || m.triggerAuth != nil {
		t.Error("the base scales: scaling belongs to the overlays")
	}
	checkBase(t, m)
}

// checkBase checks what every build shares: the Deployment against sluice's
// configuration and image, and the objects that refer to it.
func checkBase(t *testing.T, m *manifests) {
	t.Helper()
	d := m.deployment
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)

	sel, err := metav1LabelSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("the Deployment's selector does not select its pods (%v)", err)
	}
	if d.Spec.Replicas != nil {
		t.Error("the Deployment sets replicas: an autoscaler owns them, and an apply would reset them")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	// The image's CMD reads the configuration where the ConfigMap is mounted.
	cmd := dockerCmd(t)
	if len(c.Command) > 0 {
		t.Errorf("the container overrides the image's ENTRYPOINT: %v", c.Command)
	}
	if len(c.Args) > 0 && !slices.Equal(c.Args, cmd) {
		t.Errorf("container args %q differ from the Dockerfile's CMD %q", c.Args, cmd)
	}
	i := slices.Index(cmd, "-c")
	if i < 0 || i+1 >= len(cmd) {
		t.Fatalf("the Dockerfile's CMD %q names no -c file", cmd)
	}
	configPath := cmd[i+1]
	if !mountsConfig(pod, c, m.configMap.Name, configPath) {
		t.Errorf("no volume mount puts key %s of ConfigMap %s at %s (the Dockerfile's CMD)", configFile, m.configMap.Name, configPath)
	}

	// Secrets referenced by the configuration come from the environment.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for _, ref := range regexp.MustCompile(`(?:^|[^$])\$\{([A-Za-z_][A-Za-z0-9_]*)\}`).FindAllStringSubmatch(m.config.raw, -1) {
		e, ok := env[ref[1]]
		switch {
		case !ok:
			t.Errorf("%s references ${%s}, which the container's environment lacks", configFile, ref[1])
		case e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil:
			t.Errorf("${%s} does not come from a Secret (secretKeyRef)", ref[1])
		}
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Error("enableServiceLinks is not false: service links add SLUICE_* variables, sluice's configuration namespace")
	}

	// Security.
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("the pod does not run as a non-root user (runAsNonRoot, runAsUser)")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("the container's root filesystem is not read-only, or it may escalate privileges, or keeps capabilities")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it does not use")
	}

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Error("no memory limit")
	} else if e, ok := env["GOMEMLIMIT"]; ok {
		soft := parseGoMemLimit(t, e.Value)
		if soft >= q.Value() {
			t.Errorf("GOMEMLIMIT %s is not below the memory limit %s", e.Value, q.String())
		}
	}

	// Probes on observability.listen's port.
	_, portStr, err := splitHostPort(m.config.Observability.Listen)
	if err != nil {
		t.Fatalf("observability.listen %q: %v", m.config.Observability.Listen, err)
	}
	port, _ := strconv.Atoi(portStr)
	var portName string
	for _, p := range c.Ports {
		if int(p.ContainerPort) == port {
			portName = p.Name
		}
	}
	if portName == "" {
		t.Fatalf("no container port %d (observability.listen %s)", port, m.config.Observability.Listen)
	}
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		switch {
		case p.probe == nil || p.probe.HTTPGet == nil:
			t.Errorf("no HTTP %s probe", p.what)
		case p.probe.HTTPGet.Path != p.path:
			t.Errorf("%s probe on %s, want %s", p.what, p.probe.HTTPGet.Path, p.path)
		case p.probe.HTTPGet.Port.String() != portName && p.probe.HTTPGet.Port.IntValue() != port:
			t.Errorf("%s probe on port %s, want %s (%d)", p.what, p.probe.HTTPGet.Port.String(), portName, port)
		}
	}

	// SIGTERM: drain for shutdown_timeout, then the final commit (at most 10s,
	// consumer.Run) and the HTTP server's stop (obs.ShutdownTimeout, 5s).
	st, err := time.ParseDuration(m.config.ShutdownTimeout)
	if err != nil {
		t.Fatalf("shutdown_timeout %q: %v", m.config.ShutdownTimeout, err)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil {
		t.Errorf("no terminationGracePeriodSeconds: the default 30s does not cover shutdown_timeout %s + 15s", st)
	} else if time.Duration(*g)*time.Second < st+15*time.Second {
		t.Errorf("terminationGracePeriodSeconds %d does not cover shutdown_timeout %s + 15s", *g, st)
	}

	// The Service, the PDB and the ServiceMonitor find the pods.
	s := m.service
	if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
		t.Error("the Service does not select the Deployment's pods")
	}
	if !s.Spec.PublishNotReadyAddresses {
		t.Error("the Service drops not-ready pods: Prometheus would stop scraping a pod whose breaker is open")
	}
	var svcPort string
	for _, p := range s.Spec.Ports {
		if p.TargetPort.String() == portName || p.TargetPort.IntValue() == port {
			svcPort = p.Name
		}
	}
	if svcPort == "" {
		t.Errorf("no Service port targets the container's %s port", portName)
	}
	if sel, err := metav1LabelSelector(m.pdb.Spec.Selector); err != nil || !sel.Matches(podLabels) {
		t.Error("the PodDisruptionBudget does not select the pods")
	}
	if m.pdb.Spec.MaxUnavailable == nil {
		t.Error("the PodDisruptionBudget should use maxUnavailable (minAvailable blocks draining a single replica)")
	}
	sm := m.serviceMonitor
	if sel, err := metav1LabelSelector(&sm.Spec.Selector); err != nil || !sel.Matches(labels.Set(s.Labels)) {
		t.Error("the ServiceMonitor does not select the Service")
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svcPort || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("the ServiceMonitor does not scrape /metrics on Service port %q: %+v", svcPort, sm.Spec.Endpoints)
	}
	if pod.ServiceAccountName != m.serviceAccount.Name {
		t.Errorf("the pod runs as service account %q, the build has %q", pod.ServiceAccountName, m.serviceAccount.Name)
	}
}

func metav1LabelSelector(s *metav1.LabelSelector) (labels.Selector, error) {
	return metav1.LabelSelectorAsSelector(s)
}

func mountsConfig(pod corev1.PodSpec, c corev1.Container, configMap, path string) bool {
	for _, vm := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil || v.ConfigMap.Name != configMap {
				continue
			}
			if vm.SubPath != "" {
				if vm.MountPath == path && vm.SubPath == configFile {
					return true
				}
				continue
			}
			file := configFile
			for _, it := range v.ConfigMap.Items {
				if it.Key == configFile {
					file = it.Path
				}
			}
			if len(v.ConfigMap.Items) > 0 && !slices.ContainsFunc(v.ConfigMap.Items, func(it corev1.KeyToPath) bool { return it.Key == configFile }) {
				continue
			}
			if filepath.Join(vm.MountPath, file) == path {
				return true
			}
		}
	}
	return false
}

func parseGoMemLimit(t *testing.T, v string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			x, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("GOMEMLIMIT %q: %v", v, err)
			}
			return x * u.mult
		}
	}
	x, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("GOMEMLIMIT %q: %v", v, err)
	}
	return x
}

func splitHostPort(listen string) (host, port string, err error) {
	i := strings.LastIndexByte(listen, ':')
	if i < 0 {
		return "", "", fmt.Errorf("no port")
	}
	if _, err := strconv.Atoi(listen[i+1:]); err != nil {
		return "", "", fmt.Errorf("port %q: %w", listen[i+1:], err)
	}
	return listen[:i], listen[i+1:], nil
}

// promtool returns the path of promtool, skipping the test when it is
// missing outside CI (make deploy-check and test/env/up.sh install it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("promtool is not on PATH (test/env/up.sh installs it)")
		}
		t.Skip("promtool is not on PATH: run test/env/up.sh (or apt-get install --no-install-recommends prometheus)")
	}
	return p
}

// checkQueries has promtool parse the PromQL expressions (named by where they
// come from), as recording rules of a throw-away rule file.
func checkQueries(t *testing.T, exprs map[string]string) {
	t.Helper()
	bin := promtool(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	names := slices.Sorted(maps.Keys(exprs))
	for i, n := range names {
		rules = append(rules, rule{Record: fmt.Sprintf("check:query_%d", i), Expr: exprs[n]})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "check", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "queries.yaml")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the queries failed: %v\n%s\nqueries (check:query_N is the N-th):\n%s", err, out, strings.Join(names, "\n"))
	}
}
