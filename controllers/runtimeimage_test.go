package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The default runtime image is the operator's own: read from its pod's manager container
// (what `make deploy IMG=...` or a test harness set), unless RUNTIME_IMAGE says otherwise;
// outside a pod, the image stamped in at build time.
func TestRuntimeImage(t *testing.T) {
	ns := newNamespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "controller-manager-abc"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "istio-proxy", Image: "istio/proxyv2:1.0"},
			{Name: ManagerContainer, Image: "registry.example.com/trading-operator:e2e-123"},
		}},
	}
	if err := k8s.Create(bg, pod); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, explicit, podNS, podName, want string
	}{
		{"own pod", "", ns, pod.Name, "registry.example.com/trading-operator:e2e-123"},
		{"RUNTIME_IMAGE wins", "registry.example.com/tradingd:pinned", ns, pod.Name, "registry.example.com/tradingd:pinned"},
		{"outside a pod", "", "", "", "built:in"},
	} {
		got, err := RuntimeImage(bg, k8s, c.explicit, c.podNS, c.podName, "built:in")
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	// A pod that cannot be read is an error at start, not a silent fall back to an image
	// that may not exist.
	if got, err := RuntimeImage(bg, k8s, "", ns, "gone", "built:in"); err == nil {
		t.Errorf("missing pod: %q, want an error", got)
	}
}
