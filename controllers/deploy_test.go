package controllers

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testDeployManifests: what `make deploy` (config/default) and `kubectl apply -k
// config/prometheus` send is accepted by the API server (server-side apply, dry run: nothing
// is kept), and its parts point at each other: the metrics Service selects the manager's pods
// and names a port the container has, the ServiceMonitor selects that Service and names its
// port, and every binding's service account is the one the manager runs as. A field spelled
// wrong or a port renamed on one side fails here, not on a user's cluster.
func testDeployManifests(t *testing.T) {
	installMonitoringCRDs(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "trading-operator-system"}}
	if err := k8s.Create(bg, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, dir := range []string{"default", "prometheus"} {
		for _, u := range kustomize(t, dir) {
			if err := k8s.Apply(bg, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("deploy-test"),
				client.ForceOwnership, client.DryRunAll); err != nil {
				t.Errorf("config/%s: %s %s refused: %v", dir, u.GetKind(), u.GetName(), err)
			}
			objs = append(objs, u)
		}
	}

	find := func(kind, nameSuffix string) *unstructured.Unstructured {
		t.Helper()
		for _, u := range objs {
			if u.GetKind() == kind && strings.HasSuffix(u.GetName(), nameSuffix) {
				return u
			}
		}
		t.Fatalf("no %s *%s in config/", kind, nameSuffix)
		return nil
	}
	deploy := find("Deployment", "controller-manager")
	svc := find("Service", "controller-manager-metrics-service")
	mon := find("ServiceMonitor", "controller-manager-metrics-monitor")

	podLabels, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "template", "metadata", "labels")
	svcSelector, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector")
	if len(svcSelector) == 0 || !labels.SelectorFromSet(svcSelector).Matches(labels.Set(podLabels)) {
		t.Errorf("metrics Service selector %v does not select the manager's pods %v", svcSelector, podLabels)
	}
	containers, _, _ := unstructured.NestedSlice(deploy.Object, "spec", "template", "spec", "containers")
	containerPorts := map[string]bool{}
	for _, c := range containers {
		ports, _, _ := unstructured.NestedSlice(c.(map[string]any), "ports")
		for _, p := range ports {
			containerPorts[p.(map[string]any)["name"].(string)] = true
		}
	}
	svcPorts, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	svcPortNames := map[string]bool{}
	for _, p := range svcPorts {
		pm := p.(map[string]any)
		svcPortNames[pm["name"].(string)] = true
		if target, ok := pm["targetPort"].(string); ok && !containerPorts[target] {
			t.Errorf("metrics Service targets port %q, the container has %v", target, containerPorts)
		}
	}
	monSelector, _, _ := unstructured.NestedStringMap(mon.Object, "spec", "selector", "matchLabels")
	if len(monSelector) == 0 || !labels.SelectorFromSet(monSelector).Matches(labels.Set(svc.GetLabels())) {
		t.Errorf("ServiceMonitor selector %v does not select the metrics Service %v", monSelector, svc.GetLabels())
	}
	endpoints, _, _ := unstructured.NestedSlice(mon.Object, "spec", "endpoints")
	for _, e := range endpoints {
		if port := e.(map[string]any)["port"]; !svcPortNames[port.(string)] {
			t.Errorf("ServiceMonitor scrapes port %q, the Service has %v", port, svcPortNames)
		}
	}
	if mon.GetNamespace() != svc.GetNamespace() {
		t.Errorf("ServiceMonitor in %q, the Service in %q (a ServiceMonitor selects Services of its own namespace by default)", mon.GetNamespace(), svc.GetNamespace())
	}

	sa, _, _ := unstructured.NestedString(deploy.Object, "spec", "template", "spec", "serviceAccountName")
	for _, u := range objs {
		if u.GetKind() != "ClusterRoleBinding" && u.GetKind() != "RoleBinding" {
			continue
		}
		subjects, _, _ := unstructured.NestedSlice(u.Object, "subjects")
		for _, s := range subjects {
			sm := s.(map[string]any)
			if sm["kind"] == "ServiceAccount" && (sm["name"] != sa || sm["namespace"] != deploy.GetNamespace()) {
				t.Errorf("%s %s binds %s/%s, the manager runs as %s/%s", u.GetKind(), u.GetName(), sm["namespace"], sm["name"], deploy.GetNamespace(), sa)
			}
		}
	}
}

// kustomize renders config/dir with the kubectl built next to the API server.
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", filepath.Join("..", "config", dir))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize config/%s: %v: %s", dir, err, stderr.String())
	}
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(string(out), "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("config/%s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	if len(objs) == 0 {
		t.Fatalf("config/%s renders nothing", dir)
	}
	return objs
}

// testSamplesValid: the samples a user starts from (config/samples, each applied with -f)
// are accepted by the API server as written (strict: a field spelled wrong is refused, not
// dropped), and none asks for more database connections than the managed database takes
// (the pools' warning; the full sample's autoscaling once did).
func testSamplesValid(t *testing.T) {
	ns := newNamespace(t)
	files, err := filepath.Glob(filepath.Join("..", "config", "samples", "trading_*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("samples %v, %v: want the minimal, full and external ones", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(raw, &u.Object); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u.SetNamespace(ns)
		if err := k8s.Create(bg, u, client.DryRunAll, client.FieldValidation("Strict")); err != nil {
			t.Errorf("%s refused: %v", filepath.Base(f), err)
			continue
		}
		s := &tradingv1alpha1.TradingStack{} // as stored: the schema's defaults filled in
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, s); err != nil {
			t.Fatal(err)
		}
		if w := poolsWarning(s); w != "" {
			t.Errorf("%s: %s", filepath.Base(f), w)
		}
	}
}
