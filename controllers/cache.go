package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// reconcileCache runs the managed Redis (Deployment and Service), checks an
// external one's password Secret, or records that Redis is disabled. A managed Redis the
// stack left is removed later, by retireManagedBackends.
func (r *TradingStackReconciler) reconcileCache(ctx context.Context, p *pass) (bool, error) {
	spec := p.spec.Spec.Redis
	p.warn(tradingv1alpha1.ConditionCacheReady, unusedRedisFields(&p.stack.Spec.Redis, spec.Mode), "UnusedFields", "CheckSpec")
	switch spec.Mode {
	case tradingv1alpha1.RedisDisabled:
		msg := "spec.redis.mode is disabled: the runtime caches in its memory and rate-limits on its own"
		if severalReplicas(p.spec) {
			msg = "spec.redis.mode is disabled: each runtime replica rate-limits on its own and keeps no cache (the replicas cannot tell each other of a trade), so reads go to the database"
		}
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheDisabled, msg)
		return false, nil

	case tradingv1alpha1.RedisExternal:
		// The CA bundle is mounted as a file (tradingd reads it at start); hashed too, a
		// renewed CA rolls the pods.
		for _, need := range []userSecret{
			{ref: spec.PasswordSecretRef, field: "spec.redis.passwordSecretRef"},
			{ref: redisCASecretRef(p.spec), field: "spec.redis.tls.caSecretRef", caBundle: true},
		} {
			if stop, err := r.needUserSecret(ctx, p, tradingv1alpha1.ConditionCacheReady, tradingv1alpha1.ReasonCacheSecretMissing, need); stop || err != nil {
				return stop, err
			}
		}
		how := ""
		if redisTLS(p.spec) {
			how = " over TLS"
		}
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheExternal,
			fmt.Sprintf("using the external Redis at %s%s", spec.Address, how))
		return false, nil
	}

	dep := desiredRedisDeployment(p.spec)
	if err := r.applyChild(ctx, p, dep); err != nil {
		return false, err
	}
	if err := r.applyChild(ctx, p, desiredRedisService(p.spec)); err != nil {
		return false, err
	}
	if deploymentAvailable(dep) {
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheAvailable,
			fmt.Sprintf("Deployment %s is available", dep.Name))
	} else {
		// Why its pod waits, read only while Redis is not available: a stack at rest reads no pods.
		waiting := r.deploymentPodsWaiting(ctx, p, dep, redisContainer)
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheNotReady,
			fmt.Sprintf("waiting for Deployment %s to become available%s%s", dep.Name, podsRefused(dep), waiting))
	}
	return false, nil
}

// unusedRedisFields is CacheReady's suffix naming the fields of spec.redis that mode does not
// use, in the spec's order, or "". Most likely an address (and password) written without mode
// external: the mode defaults to managed, the operator runs a Redis of its own, and a message
// saying only that it is available let the user believe the stack used theirs. Said, not
// refused: a rule would refuse a move from external back to managed by a merge patch that
// leaves the address, and every later edit of a stack stored with such a field. The image is
// left out: it is defaulted, so every stack has it. set is the spec as the user wrote it (the
// defaults add none of these), mode the mode in force.
func unusedRedisFields(set *tradingv1alpha1.RedisSpec, mode tradingv1alpha1.RedisMode) string {
	r := set.Resources
	fields := []struct {
		name    string
		set     bool
		managed bool // managed mode's alone; the others are external mode's
	}{
		{"spec.redis.resources", len(r.Limits) > 0 || len(r.Requests) > 0 || len(r.Claims) > 0, true},
		{"spec.redis.address", set.Address != "", false},
		{"spec.redis.passwordSecretRef", set.PasswordSecretRef != nil, false},
		{"spec.redis.tls", set.TLS != nil, false}, // refused by the schema outside external mode
	}
	var unused []string
	for _, f := range fields {
		if f.set && (mode == tradingv1alpha1.RedisDisabled || f.managed != (mode == tradingv1alpha1.RedisManaged)) {
			unused = append(unused, f.name)
		}
	}
	switch len(unused) {
	case 0:
		return ""
	case 1:
		return fmt.Sprintf("; warning: %s is not used: spec.redis.mode is %s", unused[0], mode)
	}
	return fmt.Sprintf("; warning: %s and %s are not used: spec.redis.mode is %s",
		strings.Join(unused[:len(unused)-1], ", "), unused[len(unused)-1], mode)
}

// rolledOut reports whether d's status describes its current spec, every desired replica
// is updated and ready, and no pod of an older template is left (as `kubectl rollout status`
// judges). readyReplicas counts the old pods too: with one replica the new pod is counted
// updated as soon as it is created, and the old one ready, so a new image whose pod never
// became ready read as rolled out; with more, the last old pod still served.
func rolledOut(d *appsv1.Deployment, desired int32) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= desired &&
		d.Status.Replicas <= d.Status.UpdatedReplicas && d.Status.ReadyReplicas >= desired
}

// rolloutStuck reports whether the Deployment controller gave up waiting for d's rollout
// (its Progressing condition's ProgressDeadlineExceeded, which `kubectl rollout status`
// reports as an error): the new pods do not become ready (an image that cannot be pulled, a
// crash loop) and the old ones keep serving. Not gated on observedGeneration here: a scale
// (the HPA's) moves the generation without resetting the verdict. A new template that the
// controller has not judged yet is the caller's to tell (reconcileRuntime): until then the
// verdict is the old template's.
func rolloutStuck(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing {
			return c.Reason == "ProgressDeadlineExceeded"
		}
	}
	return false
}

// deploymentAvailable reports whether the Deployment reports itself Available with at least
// one ready pod.
func deploymentAvailable(d *appsv1.Deployment) bool {
	// Not ObservedGeneration: right after a change of the pod template the status still
	// describes the pods from before, which serve (maxUnavailable 0) until the new ones are
	// ready; a stack that serves must not read unavailable for that moment. Whether the
	// rollout is done is the caller's question (rolledOut).
	if d.Status.ReadyReplicas < 1 {
		return false
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podsRefused says, after "; ", why d's controller cannot create its pods (its ReplicaFailure
// condition: the API server refused them, most often for a namespace's ResourceQuota or
// LimitRange, an admission policy, or a missing ServiceAccount), or "". Waiting ends no such
// refusal, and `kubectl describe tstack` is where a platform team looks first.
func podsRefused(d *appsv1.Deployment) string {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
			return "; its pods cannot be created: " + shortReason(c.Reason, c.Message)
		}
	}
	return ""
}

// createRefused is podsRefused for a Job or a StatefulSet (obj), whose controllers keep no
// condition of it: they record a FailedCreate warning event on obj for each pod (or a
// StatefulSet's volume claim) the API server refuses, and the Job controller retries until the
// Job's deadline, the StatefulSet controller for ever; "running" or "waiting" alone sent the
// platform team looking at pods that do not exist. pods are obj's (its selector's). The newest
// refusal tells, unless one of pods was created since (the refusal is over) or is still live
// (no pod is wanted: nothing is refused now). Events are read uncached, and only when no pod
// is live: the operator keeps no informer on events, which every component of a cluster writes.
func (r *TradingStackReconciler) createRefused(ctx context.Context, obj client.Object, pods []corev1.Pod) string {
	if obj.GetUID() == "" {
		return ""
	}
	var progress time.Time
	for i := range pods {
		if !podDone(&pods[i]) {
			return ""
		}
		if t := pods[i].CreationTimestamp.Time; t.After(progress) {
			progress = t
		}
	}
	events := &eventsv1.EventList{}
	if err := r.APIReader.List(ctx, events, client.InNamespace(obj.GetNamespace()),
		client.MatchingFields{"regarding.uid": string(obj.GetUID())}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "cannot read the events of a child waiting for its pods", "name", obj.GetName())
		return "" // the condition says what it said before; the next pass reads again
	}
	var newest *eventsv1.Event
	var newestAt time.Time
	for i := range events.Items {
		e := &events.Items[i]
		if e.Type != corev1.EventTypeWarning || e.Reason != failedCreate {
			continue
		}
		// Whole seconds (the controllers' events keep only those): a pod created in the
		// second of the refusal is taken as later, the refusal as over.
		if at := eventTime(e); at.After(progress) && (newest == nil || at.After(newestAt)) {
			newest, newestAt = e, at
		}
	}
	if newest == nil {
		return ""
	}
	return "; its pods cannot be created: " + shortReason(newest.Reason, newest.Note)
}

// failedCreate is the reason the Job, StatefulSet and ReplicaSet controllers give a pod (or a
// volume claim) the API server refused.
const failedCreate = "FailedCreate"

// eventTime is when e was last seen: the Job and StatefulSet controllers write core/v1 events,
// counted up in place when the same refusal repeats (deprecatedLastTimestamp here), an
// events.k8s.io writer a series. Not its creation unless nothing else is set: a recorder
// writes its events in the background, maybe after a pod created since.
func eventTime(e *eventsv1.Event) time.Time {
	var at time.Time
	for _, t := range []time.Time{e.EventTime.Time, e.DeprecatedFirstTimestamp.Time, e.DeprecatedLastTimestamp.Time} {
		if t.After(at) {
			at = t
		}
	}
	if e.Series != nil && e.Series.LastObservedTime.After(at) {
		at = e.Series.LastObservedTime.Time
	}
	if at.IsZero() {
		return e.CreationTimestamp.Time
	}
	return at
}
