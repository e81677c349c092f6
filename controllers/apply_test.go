package controllers

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

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

func TestAppliedMemo(t *testing.T) {
	var m appliedMemo
	sum := [32]byte{1}
	if m.unchanged("k", sum, "5") {
		t.Error("unknown key reported unchanged")
	}
	m.record("k", sum, "5", "uid-1", "ns/a")
	if !m.unchanged("k", sum, "5") {
		t.Error("same content and resourceVersion not unchanged")
	}
	if m.unchanged("k", sum, "6") {
		t.Error("an object changed since (new resourceVersion) reported unchanged")
	}
	if m.unchanged("k", [32]byte{2}, "5") {
		t.Error("changed desired content reported unchanged")
	}
	m.record("other", sum, "9", "uid-2", "ns/b")
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
