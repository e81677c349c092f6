package controllers

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// userSecretRecheck is how often a stack waiting for a Secret its user must
// create (external database or Redis password) looks again. Those Secrets carry
// none of the operator's labels, so no watch reports them; this is the only
// timer besides a running migration Job, and it is slow on purpose.
const userSecretRecheck = time.Minute

// reconcileDatabase runs the managed PostgreSQL (StatefulSet and Service) or
// checks the external database's Secret.
func (r *TradingStackReconciler) reconcileDatabase(ctx context.Context, p *pass) (bool, error) {
	if p.spec.ExternalPostgres() {
		return r.reconcileExternalDatabase(ctx, p)
	}

	sts := desiredPostgresStatefulSet(p.spec)
	// The volume claim templates of a StatefulSet cannot change in place; once
	// it exists, keep the ones it was created with so a grown storage size does
	// not turn every apply into a rejected update.
	current := &appsv1.StatefulSet{}
	found, err := r.getCached(ctx, client.ObjectKeyFromObject(sts), current)
	if err != nil {
		return false, err
	}
	if found && len(current.Spec.VolumeClaimTemplates) > 0 {
		sts.Spec.VolumeClaimTemplates = keepClaimTemplates(current.Spec.VolumeClaimTemplates)
	}
	if err := r.applyChild(ctx, p, sts); err != nil {
		return false, err
	}
	if err := r.applyChild(ctx, p, desiredPostgresService(p.spec)); err != nil {
		return false, err
	}

	if sts.Status.ReadyReplicas >= 1 {
		p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable,
			fmt.Sprintf("StatefulSet %s has a ready PostgreSQL pod", sts.Name))
	} else {
		p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady,
			fmt.Sprintf("waiting for StatefulSet %s to have a ready pod", sts.Name))
	}
	return false, nil
}

// keepClaimTemplates returns the existing templates without their status, so
// that apply leaves them as they are.
func keepClaimTemplates(existing []corev1.PersistentVolumeClaim) []corev1.PersistentVolumeClaim {
	out := make([]corev1.PersistentVolumeClaim, len(existing))
	for i, t := range existing {
		out[i] = corev1.PersistentVolumeClaim{
			TypeMeta:   t.TypeMeta,
			ObjectMeta: metav1.ObjectMeta{Name: t.Name, Labels: t.Labels, Annotations: t.Annotations},
			Spec:       *t.Spec.DeepCopy(),
		}
	}
	return out
}

// reconcileExternalDatabase checks that the user's DSN Secret and key exist. A
// missing Secret is a condition the user can act on, not an error to retry hot:
// the later steps wait (they would hash and mount a Secret that is not there).
func (r *TradingStackReconciler) reconcileExternalDatabase(ctx context.Context, p *pass) (bool, error) {
	ref := p.spec.Spec.Postgres.External.ConnectionSecretRef
	secret, reason, msg, err := r.readUserSecret(ctx, p.stack.Namespace, ref, "spec.postgres.external.connectionSecretRef")
	if err != nil {
		return false, err
	}
	if secret == nil {
		status := metav1.ConditionFalse
		if reason == tradingv1alpha1.ReasonExternalSecretNotFound {
			p.setCondition(tradingv1alpha1.ConditionDatabaseReady, status, reason, msg)
		} else {
			p.setCondition(tradingv1alpha1.ConditionDatabaseReady, status, tradingv1alpha1.ReasonExternalSecretKeyAbsent, msg)
		}
		p.requeue(userSecretRecheck)
		return true, nil
	}
	p.runtimeSecrets = append(p.runtimeSecrets, secret)
	p.setCondition(tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonExternalDatabase,
		fmt.Sprintf("using the external database from Secret %s key %s", ref.Name, ref.Key))
	return false, nil
}

// readUserSecret reads a Secret the user made, directly from the API server
// (the cache holds only the operator's own Secrets). A nil Secret with a
// reason and message means it or its key is missing.
func (r *TradingStackReconciler) readUserSecret(ctx context.Context, namespace string, ref tradingv1alpha1.SecretKeyReference, field string) (*corev1.Secret, string, string, error) {
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, tradingv1alpha1.ReasonExternalSecretNotFound,
				fmt.Sprintf("Secret %s named by %s does not exist in namespace %s", ref.Name, field, namespace), nil
		}
		return nil, "", "", fmt.Errorf("read secret %s: %w", ref.Name, err)
	}
	if len(secret.Data[ref.Key]) == 0 {
		return nil, tradingv1alpha1.ReasonExternalSecretKeyAbsent,
			fmt.Sprintf("Secret %s named by %s has no key %s", ref.Name, field, ref.Key), nil
	}
	return secret, "", "", nil
}
