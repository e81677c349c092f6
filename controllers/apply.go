package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FieldOwner is the one field manager every write of the operator uses, so that
// Server-Side Apply compares only the fields this operator set and never fights
// over fields the API server or other controllers default.
const FieldOwner = "trading-operator"

// applyObject writes obj with Server-Side Apply. obj is a typed object built by a
// desired* function (TypeMeta set). It is converted to an apply configuration
// without the fields a Go struct cannot leave out (nulls such as
// metadata.creationTimestamp, and the status, which belongs to other writers),
// so the operator claims only what it actually specified. An apply that changes
// nothing does not bump the resourceVersion, which keeps a converged stack quiet.
//
// It returns the object as the API server stored it.
func applyObject(ctx context.Context, c client.Client, obj client.Object) (*unstructured.Unstructured, error) {
	if obj.GetObjectKind().GroupVersionKind().Kind == "" {
		return nil, fmt.Errorf("apply %T %s: TypeMeta not set", obj, obj.GetName())
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("apply %T %s: %w", obj, obj.GetName(), err)
	}
	delete(content, "status")
	pruneNulls(content)
	if md, ok := content["metadata"].(map[string]any); ok {
		delete(md, "resourceVersion")
		delete(md, "managedFields")
		delete(md, "uid")
		delete(md, "generation")
	}
	u := &unstructured.Unstructured{Object: content}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return nil, fmt.Errorf("apply %s %s/%s: %w", u.GetKind(), obj.GetNamespace(), obj.GetName(), err)
	}
	return u, nil
}

// pruneNulls removes nil values from maps (and maps inside lists): in a typed Go
// object nil means "not specified", while in an apply configuration an explicit
// null would mean "remove this field".
func pruneNulls(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if e == nil {
				delete(t, k)
				continue
			}
			pruneNulls(e)
		}
	case []any:
		for _, e := range t {
			pruneNulls(e)
		}
	}
}
