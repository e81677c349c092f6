package controllers

import (
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// ManagedByLabel and ManagedByValue mark every object the operator creates. The
// informer cache is limited to objects carrying them, so the operator never holds
// every Secret and ConfigMap of the cluster in memory.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "trading-operator"
)

// NewScheme returns the scheme the manager needs: the built-in kinds, the
// TradingStack, the Prometheus Operator kinds and CustomResourceDefinitions (to
// notice when the monitoring CRDs are installed).
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	utilruntime.Must(monitoringv1.AddToScheme(s))
	utilruntime.Must(tradingv1alpha1.AddToScheme(s))
	return s
}

// ParseWatchNamespaces turns WATCH_NAMESPACE ("a,b", blanks ignored) into a list;
// an empty list means all namespaces.
func ParseWatchNamespaces(v string) []string {
	var out []string
	for _, ns := range strings.Split(v, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			out = append(out, ns)
		}
	}
	return out
}

// CacheOptions limits the informer cache to the watched namespaces and, for
// every kind of child the operator creates, to objects it manages. A referenced
// Secret the operator does not own (an external database DSN) is read with the
// manager's uncached API reader instead.
func CacheOptions(namespaces []string) cache.Options {
	opts := cache.Options{
		// Managed fields are never read from the cache; dropping them roughly
		// halves the memory an object takes.
		DefaultTransform: cache.TransformStripManagedFields(),
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	managed := labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedByValue})
	opts.ByObject = map[client.Object]cache.ByObject{}
	for _, obj := range []client.Object{
		&corev1.Secret{}, &corev1.ConfigMap{}, &corev1.Service{},
		&appsv1.StatefulSet{}, &appsv1.Deployment{}, &batchv1.Job{},
		&policyv1.PodDisruptionBudget{}, &autoscalingv2.HorizontalPodAutoscaler{},
		&networkingv1.NetworkPolicy{},
	} {
		opts.ByObject[obj] = cache.ByObject{Label: managed}
	}
	// The monitoring kinds are left out on purpose: the cache resolves every
	// ByObject kind at start, and their CRDs may not exist yet. Their informers
	// start only once the CRDs are there (see monitoring.go).
	return opts
}
