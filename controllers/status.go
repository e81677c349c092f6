package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// requiredConditions must all be True for Ready. MonitoringReady is left out on
// purpose: a cluster without prometheus-operator still gets a working stack.
var requiredConditions = []string{
	tradingv1alpha1.ConditionDatabaseReady,
	tradingv1alpha1.ConditionCacheReady,
	tradingv1alpha1.ConditionMigrationsSucceeded,
	tradingv1alpha1.ConditionRuntimeAvailable,
}

// componentConditions are the conditions the steps set, one per component.
var componentConditions = append(slices.Clone(requiredConditions), tradingv1alpha1.ConditionMonitoringReady)

// summarize derives Ready, Progressing, Degraded and the phase from the
// component conditions the steps set.
func summarize(p *pass) {
	st := &p.stack.Status
	conds := st.Conditions
	// notReady names the required conditions that are not True; waitingFor says them with
	// their reasons, so that Ready's message alone tells what the stack waits for.
	var notReady, named []string
	for _, t := range requiredConditions {
		c := meta.FindStatusCondition(conds, t)
		switch {
		case c == nil:
			notReady, named = append(notReady, t), append(named, t)
		case c.Status != metav1.ConditionTrue:
			notReady, named = append(notReady, t), append(named, t+" ("+c.Reason+")")
		}
	}
	waitingFor := strings.Join(named, ", ")

	migration := meta.FindStatusCondition(conds, tradingv1alpha1.ConditionMigrationsSucceeded)
	// A failed Job, not a Job the API server would not take (ApplyFailed: a transient
	// error, or an invalid spec, which failedInvalid covers).
	migrationFailed := migration != nil && migration.Status == metav1.ConditionFalse && migration.Reason == tradingv1alpha1.ReasonMigrationFailed
	migrating := migration != nil && migration.Reason == tradingv1alpha1.ReasonMigrationRunning
	database := meta.FindStatusCondition(conds, tradingv1alpha1.ConditionDatabaseReady)
	databaseBroken := database != nil && database.Status == metav1.ConditionFalse &&
		(database.Reason == tradingv1alpha1.ReasonExternalSecretNotFound || database.Reason == tradingv1alpha1.ReasonExternalSecretKeyAbsent ||
			database.Reason == tradingv1alpha1.ReasonInvalidCertificate || database.Reason == tradingv1alpha1.ReasonSecretKeyMissing)
	cache := meta.FindStatusCondition(conds, tradingv1alpha1.ConditionCacheReady)
	cacheBroken := cache != nil && cache.Status == metav1.ConditionFalse &&
		(cache.Reason == tradingv1alpha1.ReasonCacheSecretMissing || cache.Reason == tradingv1alpha1.ReasonInvalidCertificate)
	// A user's Secret the runtime reads lacks a key: it waits for the user like the two above.
	runtimeCond := meta.FindStatusCondition(conds, tradingv1alpha1.ConditionRuntimeAvailable)
	runtimeSecretBroken := runtimeCond != nil && runtimeCond.Status == metav1.ConditionFalse && runtimeCond.Reason == tradingv1alpha1.ReasonSecretKeyMissing
	userAction := databaseBroken || cacheBroken || runtimeSecretBroken
	runtimeUp := meta.IsStatusConditionTrue(conds, tradingv1alpha1.ConditionRuntimeAvailable)
	// Serving while the Deployment replaces its pods (an upgrade, a settings change): the
	// stack is Ready, but still progressing (runbook: Progressing True while children are
	// rolled out), so a tool waiting for Progressing False does not go on mid-rollout. Fewer
	// ready pods than desired is no rollout (maxUnavailable 0 keeps them all): that is
	// Degraded's ReplicasUnavailable, which would otherwise read Progressing True for good.
	rollingOut := runtimeUp && runtimeCond.Reason == tradingv1alpha1.ReasonRollingOut && st.Runtime.ReadyReplicas >= st.Runtime.Replicas
	// The Deployment gave up on the rollout: still serving, but it needs a look (Degraded),
	// and nothing progresses until the spec or the pods' cause changes.
	rolloutStuck := runtimeUp && runtimeCond.Reason == tradingv1alpha1.ReasonRolloutStuck
	// The Deployment gave up on a rollout with no pod serving: no wait ends it, someone must
	// act (the pods' image or crash). Outside a migration, which may bring the fix.
	runtimeStuck := runtimeCond != nil && runtimeCond.Status == metav1.ConditionFalse &&
		runtimeCond.Reason == tradingv1alpha1.ReasonRolloutStuck && !migrating
	serving := st.Migration.Image != ""
	// Has served: Ready or Degraded at the start of this pass. (A migrated image is not
	// enough: the runtime's first rollout follows its first migration.)
	before := p.original.Phase
	served := before == tradingv1alpha1.PhaseReady || before == tradingv1alpha1.PhaseDegraded

	switch {
	case p.failed != "":
		// The components may all be up, but not as this generation of the spec asks:
		// the conditions of the steps after the failed one describe an older pass.
		p.setCondition(tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonApplyFailed,
			"the spec could not be applied (the operator retries at least every 2 minutes; annotating the stack retries now): "+p.failed)
	case len(notReady) == 0:
		p.setCondition(tradingv1alpha1.ConditionReady, metav1.ConditionTrue, tradingv1alpha1.ReasonAllComponentsReady,
			"the database, cache, migrations and runtime are ready")
	default:
		p.setCondition(tradingv1alpha1.ConditionReady, metav1.ConditionFalse, tradingv1alpha1.ReasonComponentsNotReady,
			"not ready: "+waitingFor)
	}

	// Degraded: serving, but something needs a look.
	switch {
	case migrationFailed && serving && p.databaseMoved:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonOldRuntimeServing,
			fmt.Sprintf("the migration of image %s on the database the spec names now failed; the runtime's pods from before keep serving image %s from the database it used before", p.spec.RuntimeImage(), st.Migration.Image))
	case migrationFailed && serving:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonOldRuntimeServing,
			fmt.Sprintf("the migration of image %s failed; the runtime keeps serving image %s", p.spec.RuntimeImage(), st.Migration.Image))
	case p.failed != "" && runtimeUp:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonApplyFailed,
			"serving, but the spec could not be applied: "+p.failed)
	case rolloutStuck:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonRolloutStuck, runtimeCond.Message)
	case runtimeUp && st.Runtime.ReadyReplicas < st.Runtime.Replicas:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonReplicasUnavailable,
			fmt.Sprintf("%d of %d runtime replicas are ready%s%s", st.Runtime.ReadyReplicas, st.Runtime.Replicas, p.runtimePodsRefused(), p.runtimeWaiting))
	case userAction && (served || runtimeUp):
		// A user's Secret went missing under a stack that serves (its pods keep what they
		// read at start): Degraded, on every pass, not Failed from the second pass on.
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonComponentsNotReady,
			"the stack serves, and waits for a user's action: "+waitingFor)
	case brokeAfterServing(notReady, served, migrating):
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonComponentsNotReady,
			"the stack has served, and now not ready: "+waitingFor)
	default:
		p.setCondition(tradingv1alpha1.ConditionDegraded, metav1.ConditionFalse, tradingv1alpha1.ReasonStable, "nothing needs attention")
	}

	// Progressing: the operator is still working towards the spec.
	switch {
	case p.failed != "":
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionTrue, tradingv1alpha1.ReasonApplyFailed, p.failed)
	case len(notReady) == 0 && rolloutStuck:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonRolloutStuck, runtimeCond.Message)
	case len(notReady) == 0 && rollingOut:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionTrue, tradingv1alpha1.ReasonReconciling, runtimeCond.Message)
	case len(notReady) == 0:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonStable, "the stack matches its spec")
	case runtimeStuck:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonRolloutStuck, runtimeCond.Message)
	case migrationFailed || userAction:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonComponentsNotReady,
			"waiting for a user's action: "+waitingFor)
	default:
		p.setCondition(tradingv1alpha1.ConditionProgressing, metav1.ConditionTrue, tradingv1alpha1.ReasonReconciling,
			"waiting for: "+waitingFor)
	}

	switch {
	case p.failed != "" && len(notReady) == 0:
		st.Phase = tradingv1alpha1.PhaseDegraded // serving, but not as the spec asks
	case len(notReady) == 0 && meta.IsStatusConditionTrue(conds, tradingv1alpha1.ConditionDegraded):
		st.Phase = tradingv1alpha1.PhaseDegraded
	case len(notReady) == 0:
		st.Phase = tradingv1alpha1.PhaseReady
	case migrationFailed && serving:
		st.Phase = tradingv1alpha1.PhaseDegraded
	case userAction && (served || runtimeUp):
		st.Phase = tradingv1alpha1.PhaseDegraded
	case migrationFailed || userAction:
		st.Phase = tradingv1alpha1.PhaseFailed
	case p.failedInvalid && !served:
		st.Phase = tradingv1alpha1.PhaseFailed // the spec must change: not still provisioning
	case migrating:
		st.Phase = tradingv1alpha1.PhaseMigrating
	case runtimeStuck && !served:
		st.Phase = tradingv1alpha1.PhaseFailed // it never served, and no wait brings it up
	case brokeAfterServing(notReady, served, migrating):
		st.Phase = tradingv1alpha1.PhaseDegraded
	default:
		st.Phase = tradingv1alpha1.PhaseProvisioning
	}
}

// brokeAfterServing reports a stack that has served and now has components that are not
// ready, outside a migration: Degraded, not Provisioning, which would read as a stack still
// being set up.
func brokeAfterServing(notReady []string, served, migrating bool) bool {
	return len(notReady) > 0 && served && !migrating
}

// writeStatus finishes a pass: derives the summary conditions (unless paused),
// records events for conditions that changed, and writes the status only if
// it differs from what was read. SetStatusCondition keeps lastTransitionTime
// when a condition's status is unchanged, so an unchanged pass compares equal.
func (r *TradingStackReconciler) writeStatus(ctx context.Context, p *pass) error {
	st := &p.stack.Status
	// Every condition type is present from the first status on: one that no step has
	// evaluated yet is Unknown and says why, rather than missing. One evaluated in an
	// earlier pass keeps what it said then, with the generation it said it for.
	for _, t := range componentConditions {
		// Also one still NotChecked from an earlier pass: its message says why as of now
		// (paused then, stopped at a step now).
		if c := meta.FindStatusCondition(st.Conditions, t); c == nil || c.Reason == tradingv1alpha1.ReasonNotChecked {
			why := "an earlier step stopped this pass; see the other conditions"
			if p.stack.Spec.Paused {
				why = "spec.paused is true"
			}
			p.setCondition(t, metav1.ConditionUnknown, tradingv1alpha1.ReasonNotChecked, "not checked yet: "+why)
		}
	}
	// Last, after what later steps add to a message (a managed backend kept), and whatever
	// the condition says: the database takes the credentials' keys at its next start and the
	// API pods the dsn at theirs, ready or not.
	for t, ws := range p.warnings {
		if c := meta.FindStatusCondition(st.Conditions, t); c != nil && p.evaluated[t] {
			for _, w := range ws {
				c.Message += w.suffix
			}
		}
	}
	if !p.stack.Spec.Paused {
		summarize(p)
	} else {
		if st.Phase == "" {
			st.Phase = tradingv1alpha1.PhasePending
		}
		// Paused from its creation: READY says Unknown rather than nothing.
		if meta.FindStatusCondition(st.Conditions, tradingv1alpha1.ConditionReady) == nil {
			p.setCondition(tradingv1alpha1.ConditionReady, metav1.ConditionUnknown, tradingv1alpha1.ReasonPaused,
				"spec.paused is true: nothing is checked or changed until it is false")
		}
	}
	// Before the runtime's Deployment exists (it records the image it runs) the REPLICAS
	// column shows 0 of the desired count, following the spec.
	if st.Runtime.Image == "" {
		st.Runtime.Replicas = p.spec.Spec.Runtime.Replicas
		if as := p.spec.Spec.Runtime.Autoscaling; as != nil {
			st.Runtime.Replicas = max(as.MinReplicas, 1)
		}
		st.Runtime.ReplicasText = fmt.Sprintf("0/%d", st.Runtime.Replicas)
	}
	st.ObservedGeneration = p.stack.Generation

	if equality.Semantic.DeepEqual(*p.original, *st) {
		return nil
	}

	// A merge patch of the status subresource, which carries the whole conditions list and
	// the resourceVersion the pass read. Without that lock, a pass that started from a stack
	// the cache had not caught up with (the previous pass's write still on its way) had its
	// patch merged into the newer status: the patch holds only what differs from what the
	// pass read, so a phase it left alone kept the newer pass's value beside its own
	// conditions ("Migrating" with the migration succeeded and the runtime rolling out, seen
	// in CI). Now such a write is refused with a conflict, and the pass runs again
	// (errStaleStack).
	base := p.stack.DeepCopy()
	base.Status = *p.original
	from := p.stack.ResourceVersion
	if err := r.Status().Patch(ctx, p.stack, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}),
		client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsConflict(err) {
			return errStaleStack
		}
		if apierrors.IsNotFound(err) {
			// Deleted while the pass ran: nobody is left to read the status, and it is no
			// failure to log or count (the deletion's event brings a pass that forgets it).
			return nil
		}
		return fmt.Errorf("write status: %w", err)
	}
	if p.stack.ResourceVersion != from { // the API server took a change (a no-op keeps the version)
		r.writtenFrom.Store(client.ObjectKeyFromObject(p.stack).String(), from)
	}
	// Announced once written: a refused write's changes are found again by the next pass.
	r.conditionEvents(p)
	for _, t := range componentConditions { // in a fixed order
		for _, w := range p.warnings[t] {
			r.warnOnce(p, t, w)
		}
	}
	return nil
}

// warnOnce records one Warning event when cond's message starts carrying warning (a
// "; warning: ..." suffix this pass gave it: the dsn of the database's credentials that does
// not carry their password, fields of spec.redis the mode does not use): the message says it
// on every pass while it holds, the event only when it appears or changes, so that kubectl
// describe and an event-based alert see it without a new event every pass. A warning names
// keys and fields, never values.
func (r *TradingStackReconciler) warnOnce(p *pass, cond string, w conditionWarning) {
	warning := w.suffix
	if now := meta.FindStatusCondition(p.stack.Status.Conditions, cond); now == nil || !strings.Contains(now.Message, warning) {
		return // not said this pass (its step did not set the condition)
	}
	if old := meta.FindStatusCondition(p.original.Conditions, cond); old != nil && strings.Contains(old.Message, warning) {
		return
	}
	r.Recorder.Eventf(p.stack, nil, corev1.EventTypeWarning, w.reason, w.action, "%s", strings.TrimPrefix(warning, "; warning: "))
}

// errStaleStack: the stack changed since the pass read it (the cache was behind, or a user
// edited it meanwhile), so its status was not written; Reconcile runs the pass again after
// staleStackRetry, quietly: a conflict is not a failure worth a log line or a backoff.
var errStaleStack = errors.New("the stack changed since this pass read it")

// staleStackRetry gives the cache time to catch up with the write that made the pass stale.
const staleStackRetry = 200 * time.Millisecond

// conditionEvents records one event per condition whose status or reason changed.
func (r *TradingStackReconciler) conditionEvents(p *pass) {
	for _, c := range p.stack.Status.Conditions {
		old := meta.FindStatusCondition(p.original.Conditions, c.Type)
		if old != nil && old.Status == c.Status && old.Reason == c.Reason {
			continue
		}
		eventType := corev1.EventTypeNormal
		bad := (c.Type == tradingv1alpha1.ConditionDegraded && c.Status == metav1.ConditionTrue) ||
			(c.Type != tradingv1alpha1.ConditionDegraded && c.Type != tradingv1alpha1.ConditionProgressing && c.Status == metav1.ConditionFalse &&
				old != nil && old.Status == metav1.ConditionTrue) ||
			c.Reason == tradingv1alpha1.ReasonApplyFailed || c.Reason == tradingv1alpha1.ReasonExternalSecretNotFound || c.Reason == tradingv1alpha1.ReasonSecretKeyMissing ||
			c.Reason == tradingv1alpha1.ReasonCRDNotInstalled || c.Reason == tradingv1alpha1.ReasonRolloutStuck || (c.Type == tradingv1alpha1.ConditionMigrationsSucceeded && c.Status == metav1.ConditionFalse)
		if bad {
			eventType = corev1.EventTypeWarning
		}
		// The action names the condition: the events library folds events with the same
		// reason, action and object into one series (the first note kept), and conditions
		// that change in one pass often share a reason (ComponentsNotReady, NotChecked).
		r.Recorder.Eventf(p.stack, nil, eventType, c.Reason, "Set"+c.Type, "%s is %s: %s", c.Type, c.Status, c.Message)
	}
}
