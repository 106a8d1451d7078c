package check

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
)

// scalerParam is one parameter a KEDA scaler reads, from the `keda:"..."`
// struct tag of its metadata type.
type scalerParam struct {
	orders []string // triggerMetadata, authParams, resolvedEnv
	enum   []string
}

// kedaScalerParams reads the parameters of a KEDA scaler from its source in
// the module cache (the same KEDA version as the API types): the trigger
// metadata keys have no Go type, so this is how unknown keys are rejected.
func kedaScalerParams(t *testing.T, file string) map[string]scalerParam {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kedacore/keda/v2").Output()
	if err != nil {
		t.Fatalf("go list -m github.com/kedacore/keda/v2: %v", err)
	}
	src, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "pkg", "scalers", file))
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]scalerParam{}
	for _, m := range regexp.MustCompile("keda:\"([^\"]*)\"").FindAllStringSubmatch(string(src), -1) {
		var name string
		var p scalerParam
		for _, part := range strings.Split(m[1], ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			switch k {
			case "name":
				name = v
			case "order":
				p.orders = strings.Split(v, ";")
			case "enum":
				p.enum = strings.Split(v, ";")
			}
		}
		if name != "" {
			params[name] = p
		}
	}
	if len(params) < 5 {
		t.Fatalf("found only %d parameters in KEDA's %s: has its source changed shape?", len(params), file)
	}
	return params
}

// checkTriggerMetadata rejects metadata keys the scaler does not read from
// trigger metadata, and values outside a parameter's enum.
func checkTriggerMetadata(t *testing.T, tr kedav1alpha1.ScaleTriggers, params map[string]scalerParam) {
	t.Helper()
	for k, v := range tr.Metadata {
		p, ok := params[k]
		switch {
		case !ok:
			t.Errorf("%s trigger: unknown metadata key %q", tr.Type, k)
		case !slices.Contains(p.orders, "triggerMetadata"):
			t.Errorf("%s trigger: %q is not read from trigger metadata (only from %v)", tr.Type, k, p.orders)
		case len(p.enum) > 0 && !slices.Contains(p.enum, v):
			t.Errorf("%s trigger: %s=%q, want one of %v", tr.Type, k, v, p.enum)
		}
	}
}

// checkKEDA runs the checks of KEDA's admission webhook that need no cluster.
func checkKEDA(t *testing.T, m *manifests) *kedav1alpha1.ScaledObject {
	t.Helper()
	so := m.scaledObject
	if so == nil {
		t.Fatal("the build has no ScaledObject")
	}
	if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
		t.Error(err)
	}
	if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
		t.Error(err)
	}
	if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
		t.Error(err)
	}
	ref := so.Spec.ScaleTargetRef
	if ref == nil || ref.Name != m.deployment.Name || (ref.Kind != "" && ref.Kind != "Deployment") {
		t.Errorf("the ScaledObject scales %+v, not Deployment %s", ref, m.deployment.Name)
	}
	if so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount < 1 {
		t.Fatal("no maxReplicaCount: set it to the partition count")
	}
	if len(so.Spec.Triggers) != 1 {
		t.Fatalf("%d triggers, want 1", len(so.Spec.Triggers))
	}
	return so
}

func intMeta(t *testing.T, tr kedav1alpha1.ScaleTriggers, key string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(tr.Metadata[key], 10, 64)
	if err != nil {
		t.Fatalf("%s trigger: %s=%q is not an integer", tr.Type, key, tr.Metadata[key])
	}
	return n
}

// saslNames maps kafka.sasl.mechanism to the kafka scaler's sasl values.
var saslNames = map[string]string{"": "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

func TestKEDAKafka(t *testing.T) {
	m := decodeAll(t, build(t, "keda-kafka"))
	checkBase(t, m)
	so := checkKEDA(t, m)
	tr := so.Spec.Triggers[0]
	if tr.Type != "kafka" {
		t.Fatalf("trigger type %q, want kafka", tr.Type)
	}
	params := kedaScalerParams(t, "kafka_scaler.go")
	checkTriggerMetadata(t, tr, params)
	md, cfg := tr.Metadata, m.config.Kafka

	// The trigger reads the group sluice is a member of.
	if got := strings.Split(md["bootstrapServers"], ","); !slices.Equal(got, cfg.Brokers) {
		t.Errorf("bootstrapServers %q, kafka.brokers %q", got, cfg.Brokers)
	}
	if md["consumerGroup"] != cfg.Group {
		t.Errorf("consumerGroup %q, kafka.group %q", md["consumerGroup"], cfg.Group)
	}
	if topic, ok := md["topic"]; ok && (len(cfg.Topics) != 1 || topic != cfg.Topics[0]) {
		t.Errorf("topic %q, kafka.topics %q: with several topics, leave topic out (KEDA then counts every topic of the group)", topic, cfg.Topics)
	}
	// A partition without a commit counts as KEDA thinks sluice will start.
	if got := md["offsetResetPolicy"]; got != cfg.StartOffset {
		t.Errorf("offsetResetPolicy %q, kafka.start_offset %q", got, cfg.StartOffset)
	}
	if got, want := cmpOr(md["sasl"], "none"), saslNames[cfg.SASL.Mechanism]; got != want {
		t.Errorf("sasl %q, want %q for kafka.sasl.mechanism %q", got, want, cfg.SASL.Mechanism)
	}
	if got, want := cmpOr(md["tls"], "disable"), map[bool]string{true: "enable", false: "disable"}[cfg.TLS.Enabled]; got != want {
		t.Errorf("tls %q, want %q for kafka.tls.enabled %v", got, want, cfg.TLS.Enabled)
	}

	// The KEDA facts of deploy/README.md.
	maxReplicas := int64(*so.Spec.MaxReplicaCount)
	if lag := intMeta(t, tr, "lagThreshold"); lag <= 0 {
		t.Errorf("lagThreshold %d", lag)
	}
	if act := intMeta(t, tr, "activationLagThreshold"); act < maxReplicas {
		t.Errorf("activationLagThreshold %d is below the partition count %d (maxReplicaCount): a fully read transactional topic lags 1 per partition, and it would never scale to zero", act, maxReplicas)
	}
	if md["allowIdleConsumers"] == "true" {
		t.Error("allowIdleConsumers: replicas beyond the partition count only sit idle")
	}
	if md["excludePersistentLag"] == "true" {
		t.Error("excludePersistentLag hides a stuck partition from scaling; sluice commits idle partitions, it needs none of it")
	}

	// The credentials are sluice's own.
	if cfg.SASL.Mechanism != "" {
		ta := m.triggerAuth
		if ta == nil || len(tr.AuthenticationRef.Name) == 0 || tr.AuthenticationRef.Name != ta.Name {
			t.Fatalf("SASL without a TriggerAuthentication that the trigger names (authenticationRef %+v)", tr.AuthenticationRef)
		}
		env := map[string][2]string{} // variable -> secret name, key
		for _, e := range m.deployment.Spec.Template.Spec.Containers[0].Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				env[e.Name] = [2]string{e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key}
			}
		}
		want := map[string][2]string{}
		for param, value := range map[string]string{"username": cfg.SASL.Username, "password": cfg.SASL.Password} {
			if v, ok := strings.CutPrefix(value, "${"); ok {
				want[param] = env[strings.TrimSuffix(v, "}")]
			}
		}
		got := map[string][2]string{}
		for _, ref := range ta.Spec.SecretTargetRef {
			got[ref.Parameter] = [2]string{ref.Name, ref.Key}
			if p, ok := params[ref.Parameter]; !ok || !slices.Contains(p.orders, "authParams") {
				t.Errorf("TriggerAuthentication parameter %q is not an auth parameter of the kafka scaler", ref.Parameter)
			}
		}
		for param, w := range want {
			if got[param] != w {
				t.Errorf("TriggerAuthentication %s from secret %v, sluice's from %v", param, got[param], w)
			}
		}
	}
	if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 0 {
		t.Log("minReplicaCount is not 0: the kafka trigger could scale sluice to zero")
	}
}

func TestKEDAPrometheus(t *testing.T) {
	m := decodeAll(t, build(t, "keda-prometheus"))
	checkBase(t, m)
	so := checkKEDA(t, m)
	if m.triggerAuth != nil {
		t.Error("a TriggerAuthentication the prometheus variant does not use")
	}
	tr := so.Spec.Triggers[0]
	if tr.Type != "prometheus" {
		t.Fatalf("trigger type %q, want prometheus", tr.Type)
	}
	checkTriggerMetadata(t, tr, kedaScalerParams(t, "prometheus_scaler.go"))
	q := tr.Metadata["query"]
	if !strings.Contains(q, "sum(sluice_consumer_lag_records{") {
		t.Errorf("the query %q does not sum sluice_consumer_lag_records", q)
	}
	// A ServiceMonitor names the job after the Service.
	for label, want := range map[string]string{"namespace": m.namespace, "job": m.service.Name} {
		if !strings.Contains(q, label+`="`+want+`"`) {
			t.Errorf("the query %q does not select %s=%q", q, label, want)
		}
	}
	if th, err := strconv.ParseFloat(tr.Metadata["threshold"], 64); err != nil || th <= 0 {
		t.Errorf("threshold %q", tr.Metadata["threshold"])
	}
	if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount < 1 {
		t.Error("minReplicaCount below 1: with no pod there is no lag metric, so it could never scale up again")
	}
	if mt := tr.MetricType; so.Spec.Fallback != nil && mt != "" && mt != "AverageValue" {
		t.Errorf("a fallback needs metricType AverageValue, not %s", mt)
	}
	kafka := decodeAll(t, build(t, "keda-kafka")).scaledObject
	if *so.Spec.MaxReplicaCount != *kafka.Spec.MaxReplicaCount {
		t.Errorf("maxReplicaCount %d, the kafka variant's %d: both are the partition count", *so.Spec.MaxReplicaCount, *kafka.Spec.MaxReplicaCount)
	}
	checkQueries(t, map[string]string{"keda-prometheus query": q})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
