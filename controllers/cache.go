package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// reconcileCache runs the managed Redis (Deployment and Service), checks an
// external one's password Secret, or records that Redis is disabled. Leaving
// managed mode removes the managed Redis.
func (r *TradingStackReconciler) reconcileCache(ctx context.Context, p *pass) (bool, error) {
	spec := p.spec.Spec.Redis
	if spec.Mode != tradingv1alpha1.RedisManaged {
		if err := r.deleteIfExists(ctx, p, objectNamed(&appsv1.Deployment{}, p.stack.Namespace, redisName(p.stack))); err != nil {
			return false, err
		}
		if err := r.deleteIfExists(ctx, p, objectNamed(&corev1.Service{}, p.stack.Namespace, redisName(p.stack))); err != nil {
			return false, err
		}
	}

	switch spec.Mode {
	case tradingv1alpha1.RedisDisabled:
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheDisabled,
			"spec.redis.mode is disabled: each runtime replica caches and rate-limits on its own")
		return false, nil

	case tradingv1alpha1.RedisExternal:
		if ref := spec.PasswordSecretRef; ref != nil {
			secret, _, msg, err := r.readUserSecret(ctx, p.stack.Namespace, *ref, "spec.redis.passwordSecretRef")
			if err != nil {
				return false, err
			}
			if secret == nil {
				p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing, msg)
				return true, nil // its appearance triggers the next pass (usersecrets.go)
			}
			p.runtimeSecrets = append(p.runtimeSecrets, secretKey(secret, ref.Key))
		}
		// The CA bundle is mounted as a file; it is in the configuration hash too, so that a
		// renewed CA rolls the pods (tradingd reads it at start).
		if ref := redisCASecretRef(p.spec); ref != nil {
			secret, _, msg, err := r.readUserSecret(ctx, p.stack.Namespace, *ref, "spec.redis.tls.caSecretRef")
			if err != nil {
				return false, err
			}
			if secret == nil {
				p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheSecretMissing, msg)
				return true, nil // its appearance triggers the next pass (usersecrets.go)
			}
			if msg := caBundleProblem(secret, *ref, "spec.redis.tls.caSecretRef"); msg != "" {
				p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonInvalidCertificate, msg)
				return true, nil // an edit of the Secret triggers the next pass
			}
			p.runtimeSecrets = append(p.runtimeSecrets, secretKey(secret, ref.Key))
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
		p.setCondition(tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheNotReady,
			fmt.Sprintf("waiting for Deployment %s to become available", dep.Name))
	}
	return false, nil
}

// rolledOut reports whether d's status describes its current spec and every desired replica
// is updated and ready.
func rolledOut(d *appsv1.Deployment, desired int32) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= desired && d.Status.ReadyReplicas >= desired
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
