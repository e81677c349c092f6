package controllers

import (
	"context"
	"errors"
	"fmt"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/runtime/postgres"
)

func TestApplyContentLeavesOutUnsetFields(t *testing.T) {
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "x-api", Namespace: "ns", ResourceVersion: "7"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
	}
	u, err := applyContent(svc)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Object["status"]; ok {
		t.Error("status is part of the apply")
	}
	if _, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "metadata", "creationTimestamp"); ok {
		t.Error("metadata.creationTimestamp: null is part of the apply (it would claim the field)")
	}
	if rv := u.GetResourceVersion(); rv != "" {
		t.Errorf("resourceVersion %q is part of the apply (it would make the apply conditional)", rv)
	}
	if u.GetKind() != "Service" || u.GetName() != "x-api" {
		t.Errorf("apply lost kind or name: %v", u.Object)
	}
	if _, err := applyContent(&corev1.Service{}); err == nil {
		t.Error("an object without TypeMeta was accepted")
	}
}

func TestParseWatchNamespaces(t *testing.T) {
	for in, want := range map[string][]string{
		"":             nil,
		" , ":          nil,
		"a":            {"a"},
		" a, b ,,c , ": {"a", "b", "c"},
	} {
		if got := ParseWatchNamespaces(in); !slices.Equal(got, want) {
			t.Errorf("ParseWatchNamespaces(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSchemaVersionOf(t *testing.T) {
	for in, want := range map[string]string{
		"ghcr.io/findmy/trading-operator:v1.2.3":  "v1.2.3",
		"registry.example.com:5000/tradingd:v2":   "v2",
		"registry.example.com:5000/tradingd":      "latest",
		"tradingd@sha256:0123456789abcdef0123456": "sha256:0123456789ab",
		// the operator's own runtime image: the schema version compiled into this build
		tradingv1alpha1.DefaultRuntimeImage: strconv.FormatInt(postgres.SchemaVersion, 10),
	} {
		if got := schemaVersionOf(in); got != want {
			t.Errorf("schemaVersionOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// deniedReader answers every read as the API server does without the RBAC for it.
type deniedReader struct{}

func (deniedReader) Get(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("denied"))
}

func (deniedReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("denied"))
}

// Pods that cannot be read (an operator upgraded before its ClusterRole) fall back to the
// image's tag: SCHEMA informs, it never holds the migration gate closed.
func TestAppliedSchemaVersionWithoutPods(t *testing.T) {
	r := &TradingStackReconciler{APIReader: deniedReader{}}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x-migrate-1"},
		Spec: batchv1.JobSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"batch.kubernetes.io/controller-uid": "u"}}}}
	if got := r.appliedSchemaVersion(context.Background(), job, "registry.example.com/tradingd:v7"); got != "v7" {
		t.Errorf("schema version with pods unreadable = %q, want the tag v7", got)
	}
}

// A stack whose passes keep failing is retried at least every maxRetryDelay, however long it
// failed (the default backoff grew to 1000 s).
func TestRetryLimiterCapped(t *testing.T) {
	l := retryLimiter()
	req := reconcile.Request{NamespacedName: client.ObjectKey{Namespace: "ns", Name: "s"}}
	var d time.Duration
	for range 40 {
		d = l.When(req)
	}
	if d != maxRetryDelay {
		t.Errorf("backoff after 40 failures = %v, want %v", d, maxRetryDelay)
	}
	if l.Forget(req); l.When(req) > time.Second {
		t.Errorf("a stack that succeeded starts its backoff again from the bottom")
	}
}

func TestAppliedMemo(t *testing.T) {
	var m appliedMemo
	sum := [32]byte{1}
	hpa := func(rv string, edit func(*autoscalingv2.HorizontalPodAutoscaler)) *autoscalingv2.HorizontalPodAutoscaler {
		h := &autoscalingv2.HorizontalPodAutoscaler{
			ObjectMeta: metav1.ObjectMeta{Name: "s-api", Namespace: "ns", ResourceVersion: rv, UID: "uid-1", Generation: 1},
			Spec:       autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: ptr.To[int32](2), MaxReplicas: 4},
		}
		if edit != nil {
			edit(h)
		}
		return h
	}
	const kind = "HorizontalPodAutoscaler"
	if m.unchanged("k", sum, hpa("5", nil), kind) {
		t.Error("unknown key reported unchanged")
	}
	m.record("k", sum, hpa("5", nil), "ns/a")
	if !m.unchanged("k", sum, hpa("5", nil), kind) {
		t.Error("same content and resourceVersion not unchanged")
	}
	if m.unchanged("k", [32]byte{2}, hpa("5", nil), kind) {
		t.Error("changed desired content reported unchanged")
	}
	// The autoscaler wrote its status: nothing to apply, and the record follows.
	statusWrite := func(h *autoscalingv2.HorizontalPodAutoscaler) {
		h.Status.CurrentReplicas, h.Status.DesiredReplicas = 3, 3
		h.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}
	}
	if !m.unchanged("k", sum, hpa("6", statusWrite), kind) {
		t.Error("a status-only change (new resourceVersion) reported changed")
	}
	if !m.unchanged("k", sum, hpa("6", nil), kind) {
		t.Error("the record did not move to the status write's resourceVersion")
	}
	// Kinds whose status nobody writes (and whose generation does not follow the spec)
	// apply again on any new resourceVersion.
	if m.unchanged("k", sum, hpa("7", statusWrite), "Service") {
		t.Error("a Service with a new resourceVersion reported unchanged")
	}
	for name, edit := range map[string]func(*autoscalingv2.HorizontalPodAutoscaler){
		"spec": func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Spec.MaxReplicas, h.Generation = 10, 2 },
		// An API server without the HPAGeneration feature gate does not bump it.
		"spec, same generation": func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Spec.MaxReplicas = 10 },
		"label":                 func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Labels = map[string]string{"x": "y"} },
		"annotation":            func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Annotations = map[string]string{"x": "y"} },
		"finalizers":            func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Finalizers = []string{"x"} },
		"owners": func(h *autoscalingv2.HorizontalPodAutoscaler) {
			h.OwnerReferences = []metav1.OwnerReference{{Name: "other", UID: "uid-9"}}
		},
		"made again": func(h *autoscalingv2.HorizontalPodAutoscaler) { h.UID = "uid-2" },
	} {
		if m.unchanged("k", sum, hpa("7-"+name, edit), kind) { // a resourceVersion of its own: a wrong "unchanged" moves the record
			t.Errorf("an edit of the %s (new resourceVersion) reported unchanged", name)
		}
	}
	// The kinds whose generation always follows the spec are judged by it.
	m.record("d", sum, hpa("5", nil), "ns/a")
	if !m.unchanged("d", sum, hpa("6", statusWrite), "Deployment") {
		t.Error("a Deployment's status write (same generation) reported changed")
	}
	if m.unchanged("d", sum, hpa("7", func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Generation = 2 }), "Deployment") {
		t.Error("a Deployment with a new generation reported unchanged")
	}
	m.record("other", sum, hpa("9", func(h *autoscalingv2.HorizontalPodAutoscaler) { h.UID = "uid-2" }), "ns/b")
	m.forgetStack("ns/a")
	if m.uid("k") != "" || m.uid("other") != "uid-2" {
		t.Error("forgetStack removed the wrong records")
	}
}

// revertOps removes only entries the operator neither specifies nor owns, keyed as
// Server-Side Apply keys them: nothing for a child as desired (so a converged stack sends no
// patch), a guarded removal for a port edited or a container, env var or init container added
// by hand, nothing for an entry the operator applied itself and the spec dropped since.
func TestRevertOps(t *testing.T) {
	svc := func(ports ...any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"kind": "Service", "spec": map[string]any{"ports": ports}}}
	}
	port := func(name string, n int64, proto string) map[string]any {
		p := map[string]any{"name": name, "port": n}
		if proto != "" {
			p["protocol"] = proto
		}
		return p
	}
	paths := func(ops []map[string]any) string {
		var out []string
		for _, op := range ops {
			out = append(out, fmt.Sprint(op["op"], " ", op["path"], " ", op["value"]))
		}
		return strings.Join(out, "; ")
	}
	desired := svc(port("http", 8080, ""), port("metrics", 9090, ""))
	if ops, _ := revertOps(desired, svc(port("http", 8080, "TCP"), port("metrics", 9090, "TCP"))); ops != nil {
		t.Errorf("a Service as desired (protocol defaulted) gets a patch: %s", paths(ops))
	}
	ops, what := revertOps(desired, svc(port("http", 8081, "TCP"), port("metrics", 9090, "TCP")))
	if got := paths(ops); got != "test /spec/ports/0/port 8081; remove /spec/ports/0 <nil>" || len(what) != 1 || what[0] != "port 8081/TCP" {
		t.Errorf("edited port: %s, removed %v", got, what)
	}

	dep := func(containers ...any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"kind": "Deployment",
			"spec": map[string]any{"template": map[string]any{"spec": map[string]any{"containers": containers}}}}}
	}
	api := func(env ...string) map[string]any {
		var e []any
		for _, n := range env {
			e = append(e, map[string]any{"name": n, "value": "x"})
		}
		return map[string]any{"name": "api", "image": "i", "env": e}
	}
	want := dep(api("DATABASE_URL"))
	if ops, _ := revertOps(want, dep(api("DATABASE_URL"))); ops != nil {
		t.Errorf("a Deployment as desired gets a patch: %s", paths(ops))
	}
	ops, what = revertOps(want, dep(api("DATABASE_URL", "RATE_LIMIT_LOGIN"), map[string]any{"name": "sidecar"}))
	if got := paths(ops); got != "test /spec/template/spec/containers/0/env/1/name RATE_LIMIT_LOGIN; remove /spec/template/spec/containers/0/env/1 <nil>; "+
		"test /spec/template/spec/containers/1/name sidecar; remove /spec/template/spec/containers/1 <nil>" || len(what) != 2 {
		t.Errorf("added env and sidecar: %s, removed %v", got, what)
	}

	// An env var the operator applied before and the spec dropped since (its own, by
	// managedFields) is left to the apply, which removes it: no patch, no Reverted event.
	dropped := dep(api("DATABASE_URL", "REDIS_URL"))
	dropped.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: FieldOwner, Operation: metav1.ManagedFieldsOperationApply,
		FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"api\"}":{".":{},"f:env":{"k:{\"name\":\"REDIS_URL\"}":{".":{}}}}}}}}}`)}}})
	if ops, what := revertOps(want, dropped); ops != nil {
		t.Errorf("an env var the operator set itself is reverted as a hand edit: %v", what)
	}
	dropped.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kubectl-edit", Operation: metav1.ManagedFieldsOperationUpdate,
		FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"api\"}":{"f:env":{"k:{\"name\":\"REDIS_URL\"}":{".":{}}}}}}}}}`)}}})
	if ops, _ := revertOps(want, dropped); ops == nil {
		t.Error("an env var kubectl edit added is kept")
	}
	// A Service port the operator set itself, dropped from the spec: left to the apply.
	svcDropped := svc(port("http", 8080, "TCP"), port("metrics", 9090, "TCP"), port("old", 7070, "TCP"))
	svcDropped.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: FieldOwner, Operation: metav1.ManagedFieldsOperationApply,
		FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:ports":{"k:{\"port\":7070,\"protocol\":\"TCP\"}":{".":{}}}}}`)}}})
	if ops, what := revertOps(desired, svcDropped); ops != nil {
		t.Errorf("a port the operator set itself is reverted as a hand edit: %v", what)
	}

	withInit := dep(api("DATABASE_URL"))
	_ = unstructured.SetNestedSlice(withInit.Object, []any{map[string]any{"name": "init"}}, "spec", "template", "spec", "initContainers")
	ops, what = revertOps(want, withInit)
	if got := paths(ops); got != "test /spec/template/spec/initContainers/0/name init; remove /spec/template/spec/initContainers/0 <nil>" || len(what) != 1 {
		t.Errorf("an init container added by hand: %s, removed %v", got, what)
	}
}

// foreignFieldOps removes what other managers set and neither the operator owns nor the spec
// sets, and leaves alone what others may set (replicas, the pod template's metadata), the
// lists revert.go handles, fields nobody owns (defaults) and the status.
func TestForeignFieldOps(t *testing.T) {
	entry := func(manager string, op metav1.ManagedFieldsOperationType, subresource, fields string) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Subresource: subresource, FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
	}
	container := func(extra map[string]any) map[string]any {
		c := map[string]any{"name": "tradingd", "image": "i", "env": []any{map[string]any{"name": "A", "value": "1"}}}
		maps.Copy(c, extra)
		return c
	}
	desired := &unstructured.Unstructured{Object: map[string]any{"kind": "Deployment", "spec": map[string]any{
		"replicas": int64(2),
		"template": map[string]any{"spec": map[string]any{
			"containers": []any{container(nil)},
			"volumes":    []any{map[string]any{"name": "tmp", "emptyDir": map[string]any{}}},
		}}}}}
	live := &unstructured.Unstructured{Object: map[string]any{"kind": "Deployment", "spec": map[string]any{
		"replicas":                int64(5),
		"progressDeadlineSeconds": int64(600), // defaulted: nobody's
		"template": map[string]any{
			"metadata": map[string]any{"annotations": map[string]any{"kubectl.kubernetes.io/restartedAt": "now"}},
			"spec": map[string]any{
				"hostNetwork": true,
				"containers": []any{
					container(map[string]any{"args": []any{"--debug"}, "env": []any{map[string]any{"name": "A", "value": "1"}, map[string]any{"name": "B", "value": "2"}}}),
					map[string]any{"name": "sidecar", "image": "s"},
				},
				"volumes": []any{
					map[string]any{"name": "host", "hostPath": map[string]any{"path": "/"}},
					map[string]any{"name": "tmp", "emptyDir": map[string]any{}},
					map[string]any{"name": "host2", "hostPath": map[string]any{"path": "/etc"}},
				},
			}}},
		"status": map[string]any{"replicas": int64(5)}}}
	live.SetManagedFields([]metav1.ManagedFieldsEntry{
		entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", `{"f:spec":{"f:replicas":{},"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"tradingd\"}":{".":{},"f:image":{},"f:name":{},"f:env":{"k:{\"name\":\"A\"}":{".":{},"f:name":{},"f:value":{}}}}},"f:volumes":{"k:{\"name\":\"tmp\"}":{".":{},"f:emptyDir":{},"f:name":{}}}}}}}`),
		entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", `{"f:spec":{"f:replicas":{},"f:template":{"f:metadata":{"f:annotations":{"f:kubectl.kubernetes.io/restartedAt":{}}},"f:spec":{"f:hostNetwork":{},`+
			`"f:containers":{"k:{\"name\":\"tradingd\"}":{"f:args":{},"f:env":{"k:{\"name\":\"B\"}":{".":{},"f:name":{},"f:value":{}}}},"k:{\"name\":\"sidecar\"}":{".":{},"f:image":{},"f:name":{}}},`+
			`"f:volumes":{"k:{\"name\":\"host\"}":{".":{},"f:hostPath":{"f:path":{}},"f:name":{}},"k:{\"name\":\"host2\"}":{".":{},"f:hostPath":{"f:path":{}},"f:name":{}}}}}}}`),
		entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "status", `{"f:status":{"f:replicas":{}}}`),
		entry("hpa", metav1.ManagedFieldsOperationUpdate, "scale", `{"f:spec":{"f:replicas":{}}}`),
	})
	ops, what := foreignFieldOps(desired, live)
	var got []string
	for _, op := range ops {
		if op["op"] == "remove" {
			got = append(got, op["path"].(string))
		}
	}
	want := []string{
		"/spec/template/spec/hostNetwork",
		"/spec/template/spec/containers/0/args",
		"/spec/template/spec/volumes/2", // from the end of the list
		"/spec/template/spec/volumes/0",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("removed %v, want %v (described as %v)", got, want, what)
	}
	// Each removal is guarded by a test of the value it removes, and list entries go from the
	// end, so the indices hold while the patch runs.
	var volumes []string
	for i, op := range ops {
		if op["op"] == "remove" && (i == 0 || ops[i-1]["op"] != "test" || ops[i-1]["path"] != op["path"]) {
			t.Errorf("removal of %s is not guarded by a test", op["path"])
		}
		if p, _ := op["path"].(string); op["op"] == "remove" && strings.HasPrefix(p, "/spec/template/spec/volumes/") {
			volumes = append(volumes, p)
		}
	}
	if !slices.Equal(volumes, []string{"/spec/template/spec/volumes/2", "/spec/template/spec/volumes/0"}) {
		t.Errorf("volumes removed in the order %v, want from the end", volumes)
	}
	if !slices.Contains(what, "spec.template.spec.hostNetwork") || !slices.Contains(what, "spec.template.spec.volumes[name=host]") {
		t.Errorf("described as %v", what)
	}

	// A ConfigMap: a key added by hand goes, one the operator set and a hand edited stays (the
	// apply takes it back).
	cmDesired := &unstructured.Unstructured{Object: map[string]any{"kind": "ConfigMap", "data": map[string]any{"A": "1"}}}
	cm := &unstructured.Unstructured{Object: map[string]any{"kind": "ConfigMap", "data": map[string]any{"A": "0", "EXTRA": "x"}}}
	cm.SetManagedFields([]metav1.ManagedFieldsEntry{
		entry("kubectl-edit", metav1.ManagedFieldsOperationUpdate, "", `{"f:data":{"f:A":{},"f:EXTRA":{}}}`),
	})
	ops, _ = foreignFieldOps(cmDesired, cm)
	if len(ops) != 2 || ops[1]["path"] != "/data/EXTRA" {
		t.Errorf("ConfigMap ops %v, want only /data/EXTRA removed", ops)
	}
	// Secrets are never touched: a value edited by hand is kept.
	sec := cm.DeepCopy()
	sec.SetKind("Secret")
	if ops, _ := foreignFieldOps(&unstructured.Unstructured{Object: map[string]any{"kind": "Secret"}}, sec); ops != nil {
		t.Errorf("Secret ops %v", ops)
	}
}

// A deleted stack's records are dropped: the memo of applies and
// the removal patches that changed nothing; another stack's, even one whose name the deleted
// one's starts with, are kept.
func TestForgetStack(t *testing.T) {
	r := &TradingStackReconciler{}
	r.applied.m.Store("v1/Service/ns/s-api", appliedRecord{stack: "ns/s"})
	r.applied.m.Store("v1/Service/ns/s2-api", appliedRecord{stack: "ns/s2"})
	for _, stack := range []string{"ns/s", "ns/s2"} {
		r.noopReverts.Store(stack+"/v1/Service/ns/x-api", `[{"op":"remove"}]`)
	}
	r.forgetStack("ns/s")
	var left []string
	for _, m := range []*sync.Map{&r.applied.m, &r.noopReverts} {
		m.Range(func(k, _ any) bool {
			left = append(left, k.(string))
			return true
		})
	}
	slices.Sort(left)
	want := []string{"ns/s2/v1/Service/ns/x-api", "v1/Service/ns/s2-api"}
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
}

// A step whose Job the API server did not take for a passing reason (a timeout) leaves a
// stack that never served provisioning, retried: only a failed Job, or a spec the API server
// refuses as invalid, is Failed.
func TestPhaseAfterFailedMigrationsStep(t *testing.T) {
	for _, tc := range []struct {
		name    string
		reason  string
		invalid bool
		want    tradingv1alpha1.Phase
	}{
		{"transient error creating the Job", tradingv1alpha1.ReasonApplyFailed, false, tradingv1alpha1.PhaseProvisioning},
		{"Job refused as invalid", tradingv1alpha1.ReasonApplyFailed, true, tradingv1alpha1.PhaseFailed},
		{"Job failed", tradingv1alpha1.ReasonMigrationFailed, false, tradingv1alpha1.PhaseFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &tradingv1alpha1.TradingStack{}
			p := &pass{stack: s, original: &tradingv1alpha1.TradingStackStatus{Phase: tradingv1alpha1.PhaseProvisioning}}
			p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, "Ready", "")
			p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, "Ready", "")
			p.setCondition(tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, tc.reason, "x")
			if tc.reason == tradingv1alpha1.ReasonApplyFailed {
				p.failed, p.failedInvalid = "migrations: etcdserver: request timed out", tc.invalid
			}
			summarize(p)
			if s.Status.Phase != tc.want {
				t.Errorf("phase %s, want %s", s.Status.Phase, tc.want)
			}
		})
	}
}

// An HPA's spec edited on an API server without the HPAGeneration feature gate keeps its
// generation: the watch must still wake a pass, and a status write must not.
func TestHPASpecOrMetadataChanged(t *testing.T) {
	old := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "s-api", Generation: 1, Labels: map[string]string{"a": "b"}},
		Spec:       autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: ptr.To[int32](2), MaxReplicas: 4},
	}
	for name, tc := range map[string]struct {
		edit func(*autoscalingv2.HorizontalPodAutoscaler)
		want bool
	}{
		"spec, same generation": {func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Spec.MaxReplicas = 40 }, true},
		"label":                 {func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Labels["a"] = "c" }, true},
		"status":                {func(h *autoscalingv2.HorizontalPodAutoscaler) { h.Status.CurrentReplicas = 3 }, false},
	} {
		updated := old.DeepCopy()
		tc.edit(updated)
		if got := hpaSpecOrMetadataChanged.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: updated}); got != tc.want {
			t.Errorf("%s: passes %v, want %v", name, got, tc.want)
		}
	}
}

// A condition's message is one line: errors.Join's and a webhook's several lines are joined
// with "; ", blank lines and surrounding spaces dropped.
func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                               "plain",
		"policy: a\nmonitoring: b":            "policy: a; monitoring: b",
		"denied:\r\n  line one\n\nline two\n": "denied:; line one; line two",
	} {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAppliedOwns: only the operator's apply entry on the object itself decides whether its
// next apply may drop a field: a handover manager's or a scale write's ownership of the count
// is not the apply's.
func TestAppliedOwns(t *testing.T) {
	replicas := fieldpath.MakePathOrDie("spec", "replicas")
	entry := func(manager string, op metav1.ManagedFieldsOperationType, subresource, fields string) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Subresource: subresource, FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
	}
	const withReplicas, without = `{"f:spec":{"f:replicas":{},"f:template":{}}}`, `{"f:spec":{"f:template":{}}}`
	for _, tc := range []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		want    bool
	}{
		{"the apply owns it", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", withReplicas)}, true},
		{"handed over", []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", without),
			entry(handoverFieldOwner, metav1.ManagedFieldsOperationApply, "", `{"f:spec":{"f:replicas":{}}}`)}, false},
		{"the HPA's scale", []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", without),
			entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "scale", `{"f:spec":{"f:replicas":{}}}`)}, false},
		{"an update of the operator's (a put-back patch) is no apply", []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", without),
			entry(FieldOwner, metav1.ManagedFieldsOperationUpdate, "", withReplicas)}, false},
		{"unreadable: taken as owned", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", `{`)}, true},
		{"no entry", nil, false},
	} {
		obj := &metav1.ObjectMeta{ManagedFields: tc.entries}
		if got := appliedOwns(obj, replicas); got != tc.want {
			t.Errorf("%s: appliedOwns = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Ready, Progressing and Degraded name each required condition that is not True with its
// reason, so that Ready's message alone says what the stack waits for ("not ready:
// DatabaseReady" sent the reader to a second query for every wait).
func TestSummaryNamesWhatIsNotReady(t *testing.T) {
	type cond struct {
		status metav1.ConditionStatus
		reason string
	}
	for _, tc := range []struct {
		name   string
		served bool
		conds  map[string]cond
		want   map[string]string // condition type -> its message
	}{
		{"provisioning", false,
			map[string]cond{
				tradingv1alpha1.ConditionDatabaseReady:       {metav1.ConditionFalse, "DatabaseNotReady"},
				tradingv1alpha1.ConditionCacheReady:          {metav1.ConditionTrue, "CacheAvailable"},
				tradingv1alpha1.ConditionMigrationsSucceeded: {metav1.ConditionUnknown, "WaitingForDatabase"},
				tradingv1alpha1.ConditionRuntimeAvailable:    {metav1.ConditionFalse, "WaitingForMigration"},
			},
			map[string]string{
				tradingv1alpha1.ConditionReady:       "not ready: DatabaseReady (DatabaseNotReady), MigrationsSucceeded (WaitingForDatabase), RuntimeAvailable (WaitingForMigration)",
				tradingv1alpha1.ConditionProgressing: "waiting for: DatabaseReady (DatabaseNotReady), MigrationsSucceeded (WaitingForDatabase), RuntimeAvailable (WaitingForMigration)",
			}},
		{"broke after serving", true,
			map[string]cond{
				tradingv1alpha1.ConditionDatabaseReady:       {metav1.ConditionTrue, "DatabaseAvailable"},
				tradingv1alpha1.ConditionCacheReady:          {metav1.ConditionTrue, "CacheAvailable"},
				tradingv1alpha1.ConditionMigrationsSucceeded: {metav1.ConditionTrue, "MigrationSucceeded"},
				tradingv1alpha1.ConditionRuntimeAvailable:    {metav1.ConditionFalse, "DeploymentUnavailable"},
			},
			map[string]string{
				tradingv1alpha1.ConditionReady:    "not ready: RuntimeAvailable (DeploymentUnavailable)",
				tradingv1alpha1.ConditionDegraded: "the stack has served, and now not ready: RuntimeAvailable (DeploymentUnavailable)",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &tradingv1alpha1.TradingStack{}
			phase := tradingv1alpha1.PhaseProvisioning
			if tc.served {
				phase = tradingv1alpha1.PhaseReady
			}
			p := &pass{stack: s, original: &tradingv1alpha1.TradingStackStatus{Phase: phase}}
			for typ, c := range tc.conds {
				p.setCondition(typ, c.status, c.reason, "")
			}
			summarize(p)
			for typ, want := range tc.want {
				if c := apimeta.FindStatusCondition(s.Status.Conditions, typ); c == nil || c.Message != want {
					t.Errorf("%s: %+v, want the message %q", typ, c, want)
				}
			}
		})
	}
}
