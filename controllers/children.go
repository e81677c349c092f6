package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// applyChild applies a desired child with the stack as its controlling owner
// and records an event when the child did not exist before. It returns the
// object as stored.
func (r *TradingStackReconciler) applyChild(ctx context.Context, p *pass, obj client.Object) (*unstructured.Unstructured, error) {
	if err := controllerutil.SetControllerReference(p.stack, obj, r.Scheme); err != nil {
		return nil, err
	}
	existed, err := r.getCached(ctx, client.ObjectKeyFromObject(obj), obj.DeepCopyObject().(client.Object))
	if err != nil {
		return nil, err
	}
	stored, err := applyObject(ctx, r.Client, obj)
	if err != nil {
		return nil, err
	}
	if !existed && stored.GetGeneration() <= 1 {
		r.Recorder.Eventf(p.stack, obj, corev1.EventTypeNormal, "Created", "Create",
			"Created %s %s", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName())
	}
	return stored, nil
}

// applyChildInto applies obj and decodes the stored object back into it, so
// the caller can read the status the API server holds.
func (r *TradingStackReconciler) applyChildInto(ctx context.Context, p *pass, obj client.Object) error {
	stored, err := r.applyChild(ctx, p, obj)
	if err != nil {
		return err
	}
	gvk := obj.GetObjectKind().GroupVersionKind()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(stored.Object, obj); err != nil {
		return fmt.Errorf("decode %s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	return nil
}

// deleteIfExists removes a child that is no longer wanted (a PDB after scaling
// to one replica, an HPA after autoscaling was turned off). It reads the cache
// first, so an absent child costs no API call.
func (r *TradingStackReconciler) deleteIfExists(ctx context.Context, p *pass, obj client.Object) error {
	found, err := r.getCached(ctx, client.ObjectKeyFromObject(obj), obj)
	if err != nil || !found {
		return err
	}
	if !metav1IsControlledBy(obj, p.stack) {
		return nil // not ours: leave it alone
	}
	if err := r.Delete(ctx, obj, client.PropagationPolicy("Background")); client.IgnoreNotFound(err) != nil {
		return err
	}
	r.Recorder.Eventf(p.stack, obj, corev1.EventTypeNormal, "Deleted", "Delete",
		"Deleted %T %s: no longer wanted", obj, obj.GetName())
	return nil
}

func metav1IsControlledBy(obj client.Object, owner client.Object) bool {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.UID == owner.GetUID() {
			return true
		}
	}
	return false
}

// objectNamed sets obj's namespace and name, for a lookup or a delete by key.
func objectNamed[T client.Object](obj T, namespace, name string) T {
	obj.SetNamespace(namespace)
	obj.SetName(name)
	return obj
}
