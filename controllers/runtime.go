package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// removeForeignKeys deletes the keys of the runtime ConfigMap that the spec does not set
// (added by hand): server-side apply keeps fields another manager owns, and tradingd reads
// every key as a setting at its next start, so an added MAX_DAILY_LOSS would quietly change
// the service. The ConfigMap converges to the spec like every other child.
func (r *TradingStackReconciler) removeForeignKeys(ctx context.Context, p *pass, desired, live *corev1.ConfigMap) error {
	remove := map[string]any{}
	for k := range live.Data {
		if _, ok := desired.Data[k]; !ok {
			remove[k] = nil
		}
	}
	if len(remove) == 0 {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"data": remove})
	if err != nil {
		return err
	}
	if err := r.Patch(ctx, live, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("remove keys set by hand from ConfigMap %s: %w", live.Name, err)
	}
	r.Recorder.Eventf(p.stack, live, corev1.EventTypeNormal, "Reverted", "Patch",
		"Removed %s from ConfigMap %s: the spec does not set them", strings.Join(slices.Sorted(maps.Keys(remove)), ", "), live.Name)
	return nil
}

// reconcileRuntime applies the runtime's ConfigMap, Service and Deployment. The
// Deployment runs the image whose migration succeeded (never an unmigrated
// one), and its pod template carries a hash of the ConfigMap and the Secrets
// the runtime reads, so a change to either rolls the pods. While the stack moves
// to a database whose migration has not succeeded, the pod template is kept as it is.
func (r *TradingStackReconciler) reconcileRuntime(ctx context.Context, p *pass) (stop bool, err error) {
	defer func() {
		if err != nil && !p.databaseMoved {
			unsayHeld(p)
		}
	}()
	cm := desiredRuntimeConfigMap(p.spec)
	live := cm.DeepCopy()
	if err := r.applyChild(ctx, p, live); err != nil {
		return false, err
	}
	if err := r.removeForeignKeys(ctx, p, cm, live); err != nil {
		return false, err
	}
	if err := r.applyChild(ctx, p, desiredAPIService(p.spec)); err != nil {
		return false, err
	}
	p.stack.Status.Endpoints = tradingv1alpha1.EndpointsStatus{API: apiEndpoint(p.stack), Metrics: metricsEndpoint(p.stack)}

	if p.servingImage == "" {
		p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonWaitingForMigration,
			fmt.Sprintf("the runtime starts once the migration for image %s succeeded", p.spec.RuntimeImage()))
		return false, nil
	}

	dep := desiredAPIDeployment(p.spec, p.servingImage, configHash(cm, p.runtimeSecrets...))
	// The Deployment as it is now, read from the API server, not the cache (managedFields
	// included), and only when this pass needs it: a template the cache has not seen yet (the
	// previous pass applied it just before this one) would be applied back while held, and
	// with autoscaling the owners of spec.replicas decide whether it must be handed over.
	var cur *appsv1.Deployment
	if p.spec.Spec.Runtime.Autoscaling != nil || p.databaseMoved {
		cur = &appsv1.Deployment{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(dep), cur); apierrors.IsNotFound(err) {
			cur = nil
		} else if err != nil {
			return false, err
		}
	}
	if as := p.spec.Spec.Runtime.Autoscaling; as != nil {
		// The HorizontalPodAutoscaler decides the count, and the operator never writes it
		// once the Deployment exists (it is made with minReplicas): an apply of a count read
		// earlier would undo a scale the HPA made in between. The operator's apply leaves
		// spec.replicas out, after handing it over if that apply owned it.
		if cur == nil {
			dep.Spec.Replicas = ptr.To(max(as.MinReplicas, 1))
		} else if cur, err = r.handOverReplicas(ctx, cur); err != nil {
			return false, err
		}
	}
	held := ""
	if p.databaseMoved {
		// The stack names another database, whose migration has not succeeded: pods started
		// on it would find no schema (or, with a wrong DSN, no database) and crash-loop, and
		// the rollout would stall with the pods from before serving alone. The pod template
		// stays as it is, so every pod keeps the database it was migrated for: the
		// DATABASE_URL Secret and key, the CA volume, and the config hash (a DSN edited in
		// place to another host keeps its Secret's name; only the hash would roll the pods
		// onto it). The rest of the template (image, resources, settings, Secrets) waits with
		// it; the replica count is outside the template and follows the spec (or the HPA) as
		// ever: pods added meanwhile start from the held template.
		if cur == nil {
			// Gone (deleted by hand during the move): made once the migration succeeded, on
			// the new database, rather than now, where its pods could not start.
			p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonWaitingForMigration,
				fmt.Sprintf("Deployment %s is made again once the migration for image %s on the database the spec names now succeeded", dep.Name, p.spec.RuntimeImage()))
			return false, nil
		}
		dep.Spec.Template = *cur.Spec.Template.DeepCopy()
		p.runtimeHeld = true
		held = runtimeHeldText
	}
	// A ProgressDeadlineExceeded the Deployment controller has not judged again
	// (observedGeneration behind) is about the template it last saw: it still holds through a
	// scale (the HPA's), not once this pass applied a new template; then the stack reads
	// rolling out until the controller judges that one. Only a stack that read stuck before
	// can stay so: only then is the template from before this pass read (from the cache).
	var before *appsv1.Deployment
	if prev := meta.FindStatusCondition(p.original.Conditions, tradingv1alpha1.ConditionRuntimeAvailable); prev != nil && prev.Reason == tradingv1alpha1.ReasonRolloutStuck {
		before = &appsv1.Deployment{}
		if found, err := r.getCached(ctx, client.ObjectKeyFromObject(dep), before); err != nil {
			return false, err
		} else if !found {
			before = nil
		}
	}
	if err := r.applyChild(ctx, p, dep); err != nil {
		return false, err
	}
	stuck := rolloutStuck(dep)
	if stuck && dep.Status.ObservedGeneration < dep.Generation {
		stuck = before != nil && equality.Semantic.DeepEqual(before.Spec.Template, dep.Spec.Template)
	}

	refused := podsRefused(dep)

	desired := p.spec.Spec.Runtime.Replicas
	if dep.Spec.Replicas != nil {
		desired = *dep.Spec.Replicas
	}
	p.runtime = dep
	p.stack.Status.Runtime = tradingv1alpha1.RuntimeStatus{
		Replicas:      desired,
		ReadyReplicas: dep.Status.ReadyReplicas,
		ReplicasText:  fmt.Sprintf("%d/%d", dep.Status.ReadyReplicas, desired),
		Image:         p.servingImage,
	}

	// Why the pods that are not ready wait, read only while the Deployment has not rolled out:
	// a stack at rest reads no pods.
	waiting := ""
	if !deploymentAvailable(dep) || !rolledOut(dep, desired) {
		waiting = r.deploymentPodsWaiting(ctx, p, dep, runtimeContainer)
	}
	p.runtimeWaiting = waiting

	switch {
	case deploymentAvailable(dep) && rolledOut(dep, desired):
		p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonDeploymentAvailable,
			fmt.Sprintf("Deployment %s is available with image %s%s", dep.Name, p.servingImage, held))
	case stuck:
		// The Deployment controller gave up on the rollout (a crash loop, an image the nodes
		// cannot pull): no wait ends that. With the pods from before serving, available but
		// stuck (Degraded); with none, the stack must not read as waiting (Progressing True,
		// phase Provisioning) for good. A pod that becomes ready resets the verdict, and the
		// Deployment's status change brings the next pass.
		status, state, pods := metav1.ConditionFalse, "has no available pod, and its rollout", "its pods"
		if deploymentAvailable(dep) {
			status, state, pods = metav1.ConditionTrue, "serves, but its rollout", "the new pods"
		}
		why := fmt.Sprintf("%s do not become ready; see kubectl rollout status deployment/%s and the pods' events", pods, dep.Name)
		if refused != "" {
			// The deadline passes as well when the new pods were never created (a quota used
			// up by the old ones): there are no pods to look at, and no wait ends it.
			why = strings.TrimPrefix(refused, "; ")
		}
		p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, status, tradingv1alpha1.ReasonRolloutStuck,
			fmt.Sprintf("Deployment %s %s (image %s) made no progress within its deadline (ProgressDeadlineExceeded): %s%s%s", dep.Name, state, p.servingImage, why, waiting, held))
	case deploymentAvailable(dep):
		// Serving, but a rollout or a scale-up is under way.
		p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonRollingOut,
			fmt.Sprintf("Deployment %s is available and rolling out image %s%s%s%s", dep.Name, p.servingImage, refused, waiting, held))
	default:
		p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonDeploymentUnavailable,
			fmt.Sprintf("waiting for Deployment %s to become available%s%s%s", dep.Name, refused, waiting, held))
	}
	return false, nil
}

// runtimeHeldText ends RuntimeAvailable's message while the runtime's pod template is held.
const runtimeHeldText = "; it keeps serving from the database it used before until the migration on the new one succeeds (its pod template waits until then)"

// unsayHeld takes runtimeHeldText off RuntimeAvailable, left from an earlier pass, when this
// pass ended the hold (the migration succeeded, or the spec names the database the pods use)
// but failed before judging the Deployment: a condition that is True is left as it was (the
// pods serve), and would go on saying they wait for a migration that is done, while they stay
// on the database from before for another reason (a template the API server refuses, which
// Ready says). Only the ending goes: the rest is still what the pods from before do, for the
// generation that condition describes.
func unsayHeld(p *pass) {
	if c := meta.FindStatusCondition(p.stack.Status.Conditions, tradingv1alpha1.ConditionRuntimeAvailable); c != nil {
		c.Message = strings.TrimSuffix(c.Message, runtimeHeldText)
	}
}

// handOverReplicas makes sure the operator's apply can leave spec.replicas out without the
// API server removing it (a field an applier stops sending is removed when no other manager
// owns it, and the Deployment's count then defaults to 1: a serving Deployment would drop to
// one pod before the HPA acts). While the apply owns the count (autoscaling just turned on, a
// Deployment just made with minReplicas, or one an operator that applied the count left), the
// count is first applied as it is under handoverFieldOwner, without force: the field is then
// shared, and stays when the apply lets go, until the HPA's first scale takes it over
// (Kubernetes' "Transferring ownership" between managers). The handover carries the
// resourceVersion it read: a conflict means the count (or anything else) changed since,
// perhaps by the HPA, which then owns it; the Deployment is read again and judged anew. It
// returns the Deployment as last read.
func (r *TradingStackReconciler) handOverReplicas(ctx context.Context, cur *appsv1.Deployment) (*appsv1.Deployment, error) {
	for attempt := 1; ; attempt++ {
		if cur.Spec.Replicas == nil || !appliedOwns(cur, fieldpath.MakePathOrDie("spec", "replicas")) {
			return cur, nil
		}
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("Deployment"))
		u.SetNamespace(cur.Namespace)
		u.SetName(cur.Name)
		u.SetResourceVersion(cur.ResourceVersion)
		if err := unstructured.SetNestedField(u.Object, int64(*cur.Spec.Replicas), "spec", "replicas"); err != nil {
			return nil, err
		}
		err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(handoverFieldOwner))
		if err == nil {
			return cur, nil
		}
		if !apierrors.IsConflict(err) || attempt == 3 {
			return nil, fmt.Errorf("hand the replica count of Deployment %s over to the autoscaler: %w", cur.Name, err)
		}
		fresh := &appsv1.Deployment{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(cur), fresh); err != nil {
			// Gone meanwhile: fail the pass rather than make it again without a count.
			return nil, err
		}
		cur = fresh
	}
}
