// Package check holds the tests of sluice's deploy/ folder: the kustomize
// base and the two KEDA overlays build and decode strictly (unknown fields
// rejected) into the upstream Kubernetes, Prometheus Operator and KEDA API
// types and agree with sluice's configuration and image; the Prometheus rules
// match their Operator copy; the Grafana dashboard is well formed and its
// queries parse (promtool).
//
// It is a module of its own so that the Kubernetes and KEDA dependencies stay
// out of sluice's go.mod. Run it with `make deploy-check`, which also runs
// promtool on the rules and their unit tests.
package check
