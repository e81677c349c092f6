package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// applyChild applies a desired child with the stack as its controlling owner,
// records an event when the child did not exist before, and leaves in obj the
// object as stored (so the caller can read its status).
func (r *TradingStackReconciler) applyChild(ctx context.Context, p *pass, obj client.Object) error {
	if err := controllerutil.SetControllerReference(p.stack, obj, r.Scheme); err != nil {
		return err
	}
	return r.applyOwned(ctx, p, obj, true)
}

// refuseForeign fails when an object of the child's kind and name exists that is not this
// stack's: neither controlled by it nor labelled as its (managed-by and instance, as the
// children a deleted stack retained are). The forced apply would take it over and remove
// everything the spec does not set: a user's ConfigMap or Service that happens to have the
// name would lose its content. The operator leaves it alone and says so (the step fails
// with ApplyFailed, and a warning event); adding the two labels hands it over.
//
// applyOwned calls it for a child the stack is to control that the cache does not show (the
// cache holds only labelled objects): it reads the object's metadata from the API server, on
// creation and after a hand edit removed the label.
func (r *TradingStackReconciler) refuseForeign(ctx context.Context, p *pass, obj client.Object) error {
	gvk := obj.GetObjectKind().GroupVersionKind()
	live := &metav1.PartialObjectMetadata{}
	live.SetGroupVersionKind(gvk)
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(obj), live); err != nil {
		return client.IgnoreNotFound(err)
	}
	if isControlledBy(live, p.stack) ||
		(live.Labels[ManagedByLabel] == ManagedByValue && live.Labels[instanceLabel] == p.stack.Name) {
		return nil
	}
	msg := fmt.Sprintf("%s %s already exists and is not this stack's (no owner reference to it, no labels %s=%s and %s=%s): "+
		"the operator leaves it alone; delete or rename it, or add those labels to hand it over",
		gvk.Kind, obj.GetName(), ManagedByLabel, ManagedByValue, instanceLabel, p.stack.Name)
	r.Recorder.Eventf(p.stack, nil, corev1.EventTypeWarning, "NameConflict", "Apply", "%s", msg)
	return errors.New(msg)
}

// applyOwned applies obj as it is (owner references already decided) unless the
// memo shows the cached object is exactly what was last applied.
func (r *TradingStackReconciler) applyOwned(ctx context.Context, p *pass, obj client.Object, decode bool) error {
	gvk := obj.GetObjectKind().GroupVersionKind()
	u, err := applyContent(obj)
	if err != nil {
		return err
	}
	sum, err := contentSum(u)
	if err != nil {
		return err
	}
	current := obj.DeepCopyObject().(client.Object)
	existed, err := r.getCached(ctx, client.ObjectKeyFromObject(obj), current)
	if err != nil {
		return err
	}
	if !existed && isControlledBy(obj, p.stack) {
		if err := r.refuseForeign(ctx, p, obj); err != nil {
			return err
		}
	}
	k := memoKey(u)
	if existed && r.applied.unchanged(k, sum, current, gvk.Kind) {
		if decode {
			copyInto(current, obj, gvk)
		}
		return nil
	}
	if existed && !r.applied.known(k) {
		// No record: the operator restarted (or another instance made the child). One read
		// instead of an apply when the child already is as desired: a restart sends no
		// writes for a converged stack.
		if same, err := r.alreadyApplied(ctx, p, k, sum, u, current); err != nil {
			return err
		} else if same {
			if decode {
				copyInto(current, obj, gvk)
			}
			return nil
		}
	}
	canRevert := existed && hasComparedLists(gvk.Kind)
	if canRevert {
		if err := r.revertForeign(ctx, p, u, current); err != nil {
			return err
		}
	}
	// What was applied (the apply replaces u with the stored object). Also when the cache
	// did not show the child: a hand edit that removed the managed-by label hides it from the
	// cache, and the same edit's other changes must still go. On a real creation the
	// answer carries only the operator's fields, and nothing is removed.
	var desired *unstructured.Unstructured
	if revertsHandEdits(gvk.Kind) {
		desired = u.DeepCopy()
	}
	// Applied before by this process but not in the cache yet: the cache lags
	// our own write, and the same object (same UID) is no creation.
	uidBefore := r.applied.uid(k)
	err = applyRequest(ctx, r.Client, u)
	if cm, ok := current.(*corev1.ConfigMap); ok && err != nil && existed && apierrors.IsInvalid(err) && ptr.Deref(cm.Immutable, false) {
		// Made immutable by hand (the operator never sets it): none of its keys can change
		// any more, and `immutable` cannot be unset. It is made again; the runtime's pods
		// read it when they start, and its config hash rolls them when the data changed.
		if derr := r.Delete(ctx, cm, client.Preconditions{UID: ptr.To(cm.UID)}); client.IgnoreNotFound(derr) != nil {
			r.applied.forget(k)
			return fmt.Errorf("delete the immutable ConfigMap %s to make it again: %w", cm.Name, derr)
		}
		r.Recorder.Eventf(p.stack, cm, corev1.EventTypeNormal, "Reverted", "Recreate",
			"Made ConfigMap %s again: it was made immutable by hand, so the spec could not change it", cm.Name)
		err = applyRequest(ctx, r.Client, u)
	}
	if err != nil && existed && desired != nil && apierrors.IsInvalid(err) {
		// Refused as invalid: a field set by hand that the apply's fields cannot go with (a
		// Service turned into a load balancer keeps its source ranges). Remove what others
		// set that the spec does not, then apply again. (A default the API server added for
		// such an edit is nobody's and stays; patchBack below handles the one known case, a
		// Recreate strategy turned to RollingUpdate.)
		removed, rerr := r.removeForeignFieldsFresh(ctx, p, desired, current)
		if rerr != nil {
			r.applied.forget(k)
			return rerr
		}
		if removed {
			err = applyRequest(ctx, r.Client, u)
		}
	}
	if err != nil {
		if !canRevert || !apierrors.IsInvalid(err) {
			r.applied.forget(k)
			return err
		}
		// Refused as invalid: an entry of ours edited by hand so that the apply cannot
		// merge with it. Put the lists back whole (from obj, the desired object, which the
		// failed apply left as it was), then apply again.
		if perr := r.patchBack(ctx, p, obj, current, err); perr != nil {
			r.applied.forget(k)
			return perr
		}
		if err := applyRequest(ctx, r.Client, u); err != nil {
			r.applied.forget(k)
			return err
		}
		// The patch made the operator's Update entry own the lists it set; left there, it
		// would keep an entry the spec drops later (the apply removes only what no one
		// else owns). The applies own them now: drop that entry. That changes the
		// resourceVersion and nothing else: the next pass applies again once (a Service), or
		// finds generation and metadata as recorded (the kinds statusWritten names), which
		// they are.
		if err := r.dropPatchOwnership(ctx, current); err != nil {
			r.applied.forget(k)
			return err
		}
	}
	if desired != nil {
		if err := r.removeForeignFields(ctx, p, desired, u); err != nil {
			r.applied.forget(k)
			return err
		}
	}
	r.applied.record(k, sum, u, client.ObjectKeyFromObject(p.stack).String())
	if !existed && uidBefore != string(u.GetUID()) {
		r.Recorder.Eventf(p.stack, obj, corev1.EventTypeNormal, "Created", "Create",
			"Created %s %s", gvk.Kind, obj.GetName())
	}
	if decode {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
			return fmt.Errorf("decode %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		obj.GetObjectKind().SetGroupVersionKind(gvk)
	}
	return nil
}

// alreadyApplied reads a child the memo has no record of from the API server (the cache
// keeps no managedFields) and reports whether an apply would change nothing: the operator's
// fields as desired (appliedAsDesired) and nothing added by others that the apply would
// remove or the hand-edit reverts would (revertOps, foreignFieldOps). Then it records the
// child as applied.
func (r *TradingStackReconciler) alreadyApplied(ctx context.Context, p *pass, k string, sum [32]byte, desired *unstructured.Unstructured, cached client.Object) (bool, error) {
	types := builtinTypes
	if !clientgoscheme.Scheme.Recognizes(desired.GroupVersionKind()) {
		if types = r.crdTypes.converter(ctx, desired.GroupVersionKind().GroupVersion()); types == nil {
			return false, nil
		}
	}
	fresh := &unstructured.Unstructured{}
	fresh.SetGroupVersionKind(desired.GroupVersionKind())
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(cached), fresh); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if !appliedAsDesired(types, desired, fresh) {
		return false, nil
	}
	if ops, _ := revertOps(desired, fresh); ops != nil {
		return false, nil
	}
	if ops, _ := foreignFieldOps(desired, fresh); ops != nil {
		return false, nil
	}
	r.applied.record(k, sum, fresh, client.ObjectKeyFromObject(p.stack).String())
	return true, nil
}

// revertForeign removes what was added by hand to the lists of a child that the apply
// would keep (revertOps): one JSON patch of removals, and an event saying what went. It runs
// before the apply, which such an entry can make fail (two ports named "http").
func (r *TradingStackReconciler) revertForeign(ctx context.Context, p *pass, desired *unstructured.Unstructured, live client.Object) error {
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(live)
	if err != nil {
		return err
	}
	if ops, _ := revertOps(desired, &unstructured.Unstructured{Object: content}); ops == nil {
		return nil
	}
	// The cache keeps no managedFields (a memory saving), and they tell an entry added by
	// hand from one the operator applied before and the spec has dropped since (the apply
	// removes those). So the object is read again from the API server, only in this case.
	fresh := live.DeepCopyObject().(client.Object)
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(live), fresh); err != nil {
		return client.IgnoreNotFound(err)
	}
	if content, err = runtime.DefaultUnstructuredConverter.ToUnstructured(fresh); err != nil {
		return err
	}
	ops, foreign := revertOps(desired, &unstructured.Unstructured{Object: content})
	if ops == nil {
		return nil
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	if err := r.Patch(ctx, fresh, client.RawPatch(types.JSONPatchType, body), client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsInvalid(err) {
			// The removals leave a list the API server refuses (a Service without ports: every
			// port was added by hand, as on an object handed over with the labels). The apply
			// adds the spec's entries, and removeForeignFields takes these out after it.
			return nil
		}
		return fmt.Errorf("revert what was added by hand to %s %s: %w", desired.GetKind(), live.GetName(), err)
	}
	r.Recorder.Eventf(p.stack, fresh, corev1.EventTypeNormal, "Reverted", "Patch",
		"Removed from %s %s what the spec does not set: %s", desired.GetKind(), live.GetName(), strings.Join(foreign, ", "))
	return nil
}

// removeForeignFields removes from a child just applied (stored: the apply's answer, which
// carries its managedFields, so no read is needed) the fields another manager set that the
// spec does not (foreignFieldOps), and entries left in the compared lists (revertOps: one
// added by hand after the check before the apply). One JSON patch of removals; stored is
// replaced with the result. The event names what went, unless nothing changed (values that
// the API server defaults again, owned by a manager that sent a whole object).
func (r *TradingStackReconciler) removeForeignFields(ctx context.Context, p *pass, desired, stored *unstructured.Unstructured) error {
	// The fields first: they leave the compared lists' indices as they are.
	ops, what := foreignFieldOps(desired, stored)
	listOps, listWhat := revertOps(desired, stored)
	ops, what = append(ops, listOps...), append(what, listWhat...)
	if ops == nil {
		return nil
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	k := client.ObjectKeyFromObject(p.stack).String() + "/" + memoKey(desired)
	if said, ok := r.noopReverts.Load(k); ok && said.(string) == string(body) {
		return nil // the same removals changed nothing last time
	}
	before := stored.GetResourceVersion()
	if err := r.Patch(ctx, stored, client.RawPatch(types.JSONPatchType, body), client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("remove what was set by hand on %s %s: %w", desired.GetKind(), stored.GetName(), err)
	}
	if stored.GetResourceVersion() == before {
		// Only values the API server put back as its defaults, which another manager that
		// sends whole objects (a GitOps tool) keeps owning: remembered, so that every later
		// apply does not send the same patch for nothing.
		r.noopReverts.Store(k, string(body))
		return nil
	}
	r.noopReverts.Delete(k)
	r.Recorder.Eventf(p.stack, stored, corev1.EventTypeNormal, "Reverted", "Patch",
		"Removed from %s %s what the spec does not set: %s", desired.GetKind(), stored.GetName(), strings.Join(what, ", "))
	return nil
}

// removeForeignFieldsFresh is removeForeignFields on the object as the API server has it now
// (the cache keeps no managedFields), for an apply that was refused; it reports whether the
// object changed.
func (r *TradingStackReconciler) removeForeignFieldsFresh(ctx context.Context, p *pass, desired *unstructured.Unstructured, live client.Object) (bool, error) {
	fresh := &unstructured.Unstructured{}
	fresh.SetGroupVersionKind(desired.GroupVersionKind())
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(live), fresh); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	before := fresh.GetResourceVersion()
	if err := r.removeForeignFields(ctx, p, desired, fresh); err != nil {
		return false, err
	}
	return fresh.GetResourceVersion() != before, nil
}

// dropPatchOwnership removes the operator's Update entry (from patchBack) from obj's
// managedFields, guarded by a test of what it removes.
func (r *TradingStackReconciler) dropPatchOwnership(ctx context.Context, obj client.Object) error {
	fresh := obj.DeepCopyObject().(client.Object)
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(obj), fresh); err != nil {
		return client.IgnoreNotFound(err)
	}
	for i, mf := range fresh.GetManagedFields() {
		if mf.Manager != FieldOwner || mf.Operation != metav1.ManagedFieldsOperationUpdate {
			continue
		}
		path := fmt.Sprintf("/metadata/managedFields/%d", i)
		body, err := json.Marshal([]map[string]any{
			{"op": "test", "path": path + "/manager", "value": FieldOwner},
			{"op": "test", "path": path + "/operation", "value": string(metav1.ManagedFieldsOperationUpdate)},
			{"op": "remove", "path": path},
		})
		if err != nil {
			return err
		}
		if err := r.Patch(ctx, fresh, client.RawPatch(types.JSONPatchType, body)); err != nil {
			return fmt.Errorf("drop the put-back patch's ownership of %s: %w", obj.GetName(), err)
		}
		return nil
	}
	return nil
}

// patchBack sends desired's lists (replaceListsPatch) to live, with an event saying why.
func (r *TradingStackReconciler) patchBack(ctx context.Context, p *pass, desired, live client.Object, refused error) error {
	u, err := applyContent(desired)
	if err != nil {
		return err
	}
	kind := u.GetKind()
	body, err := json.Marshal(replaceListsPatch(u))
	if err != nil {
		return err
	}
	before := live.GetResourceVersion()
	if err := r.Patch(ctx, live, client.RawPatch(types.MergePatchType, body), client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsInvalid(err) {
			// The spec's own lists are refused too (a value the schema lets through, such as
			// requests above limits): no hand edit is at fault, and the apply's refusal says
			// what is wrong.
			return refused
		}
		return fmt.Errorf("put back %s %s after the apply was refused (%v): %w", kind, live.GetName(), refused, err)
	}
	if live.GetResourceVersion() == before {
		// The lists were as the spec sets them: the refusal is about something else, and
		// another apply would meet it again. Report the refusal, not a put-back.
		return refused
	}
	r.Recorder.Eventf(p.stack, live, corev1.EventTypeNormal, "Reverted", "Patch",
		"Put back the containers, ports or strategy of %s %s as the spec sets them: the apply was refused after an edit by hand (%v)", kind, live.GetName(), refused)
	return nil
}

// copyInto replaces dst's content with src's (the same Go type) and keeps
// dst's kind, which objects read from the cache do not carry.
func copyInto(src, dst client.Object, gvk schema.GroupVersionKind) {
	reflect.ValueOf(dst).Elem().Set(reflect.ValueOf(src).Elem())
	dst.GetObjectKind().SetGroupVersionKind(gvk)
}

// deleteIfExists removes a child that is no longer wanted (a PDB after scaling
// to one replica, an HPA after autoscaling was turned off). It reads the cache
// first, so an absent child costs no API call, and leaves alone an object the
// stack does not control.
func (r *TradingStackReconciler) deleteIfExists(ctx context.Context, p *pass, obj client.Object) error {
	found, err := r.getCached(ctx, client.ObjectKeyFromObject(obj), obj)
	if err != nil || !found {
		return err
	}
	if !isControlledBy(obj, p.stack) {
		return nil
	}
	if deleted, err := r.deleteOnce(ctx, obj); err != nil || !deleted {
		return err
	}
	kind := fmt.Sprintf("%T", obj)
	if gvk, err := apiutil.GVKForObject(obj, r.Scheme); err == nil {
		kind = gvk.Kind
	}
	r.Recorder.Eventf(p.stack, obj, corev1.EventTypeNormal, "Deleted", "Delete", "Deleted %s %s: no longer wanted", kind, obj.GetName())
	return nil
}

// deleteOnce deletes obj (its dependents in the background), unless it is being deleted
// already: held by a finalizer (another tool's), deleting it again changes nothing, and done
// on every pass it broke quiet at rest (and said "Deleted" again). Its removal's event brings
// the next pass. deleted: a DELETE was sent (an object gone meanwhile included).
func (r *TradingStackReconciler) deleteOnce(ctx context.Context, obj client.Object) (deleted bool, err error) {
	if obj.GetDeletionTimestamp() != nil {
		return false, nil
	}
	if err := r.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
		return false, err
	}
	return true, nil
}

func isControlledBy(obj client.Object, owner client.Object) bool {
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
