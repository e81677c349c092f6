package controllers

import (
	"slices"
	"strconv"
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
