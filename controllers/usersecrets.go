package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// Secrets that users make (the external database's DSN and CA, the external Redis's password and CA) carry
// none of the operator's labels, so the label-limited cache never sees them. A cache of their
// metadata only (name, namespace, resourceVersion: no data, so it stays small however many
// Secrets the namespaces hold) reports them: a stack waiting for its Secret proceeds as soon
// as the Secret appears, and an edited DSN rolls the runtime, without any timer.

// userSecretWatch starts a metadata-only Secret informer in its own cache (the manager's
// cache filters Secrets by label) and maps each event to the stacks that reference the Secret.
func (r *TradingStackReconciler) userSecretWatch(mgr ctrl.Manager) (source.Source, error) {
	opts := cache.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()}
	if len(r.WatchNamespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range r.WatchNamespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	c, err := cache.New(mgr.GetConfig(), opts)
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(c); err != nil {
		return nil, err
	}
	meta := &metav1.PartialObjectMetadata{}
	meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return source.Kind(c, meta, handler.TypedEnqueueRequestsFromMapFunc(r.stacksReferencingSecret)), nil
}

// stacksReferencingSecret returns the stacks of the Secret's namespace whose spec names it.
func (r *TradingStackReconciler) stacksReferencingSecret(ctx context.Context, s *metav1.PartialObjectMetadata) []reconcile.Request {
	if s.GetLabels()[ManagedByLabel] == ManagedByValue {
		return nil // the operator's own Secrets are watched through the main cache
	}
	var stacks tradingv1alpha1.TradingStackList
	if err := r.List(ctx, &stacks, client.InNamespace(s.GetNamespace())); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, st := range stacks.Items {
		if references(&st, s.GetName()) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&st)})
		}
	}
	return reqs
}

func references(s *tradingv1alpha1.TradingStack, secret string) bool {
	if ext := s.Spec.Postgres.External; ext != nil && ext.ConnectionSecretRef.Name == secret {
		return true
	}
	if ref := postgresCASecretRef(s); ref != nil && ref.Name == secret {
		return true
	}
	if ref := s.Spec.Redis.PasswordSecretRef; ref != nil && ref.Name == secret {
		return true
	}
	ref := redisCASecretRef(s)
	return ref != nil && ref.Name == secret
}
