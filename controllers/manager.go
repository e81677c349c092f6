package controllers

import (
	"crypto/tls"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

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
	// Every kind is cached only as far as the operator manages it (its children carry the
	// managed-by label), the monitoring kinds included: their informers start later (see
	// monitoring.go) and take this default, so a cluster's other ServiceMonitors and
	// PrometheusRules (kube-prometheus alone ships dozens of large rule objects) are never
	// held in memory. The stacks themselves and the CRDs (metadata only, to notice the
	// monitoring CRDs) carry no such label and are cached whole.
	opts.DefaultLabelSelector = labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedByValue})
	opts.ByObject = map[client.Object]cache.ByObject{
		&tradingv1alpha1.TradingStack{}:             {Label: labels.Everything()},
		&apiextensionsv1.CustomResourceDefinition{}: {Label: labels.Everything()},
	}
	return opts
}

// MetricsOptions is how the manager serves its metrics on addr. Secure (the default of
// cmd/manager): HTTPS, and only a caller whose token the API server accepts (TokenReview) and
// who may get the non-resource URL /metrics (SubjectAccessReview) reads them; the metrics name
// every stack and namespace the operator works on, which is not for every pod of the cluster
// to read. The certificate is tls.crt and tls.key in certDir when they exist there (watched,
// so a renewal by cert-manager needs no restart), else one made up at start. HTTP/2 is off:
// a scraper needs only HTTP/1.1 and HTTP/2's stream resets were a denial of service
// (CVE-2023-44487). Not secure: plain HTTP to anyone who reaches the port.
func MetricsOptions(addr string, secure bool, certDir string) metricsserver.Options {
	o := metricsserver.Options{BindAddress: addr}
	if !secure {
		return o
	}
	o.SecureServing = true
	o.FilterProvider = filters.WithAuthenticationAndAuthorization
	o.CertDir = certDir
	o.TLSOpts = []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
	return o
}
