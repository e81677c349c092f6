package controllers

import (
	"context"
	"errors"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// reconcilePolicy applies the PodDisruptionBudget (more than one replica) and the
// HorizontalPodAutoscaler (autoscaling set), and removes the ones, and the NetworkPolicies,
// the spec no longer asks for.
//
// Each of the three is tried whatever became of the others (none builds on another): a
// PodDisruptionBudget an admission policy refuses must not keep the HPA from scaling the
// runtime. The errors are returned together.
func (r *TradingStackReconciler) reconcilePolicy(ctx context.Context, p *pass) (bool, error) {
	ns, name := p.stack.Namespace, apiName(p.stack)
	var errs []error

	if pdb := desiredPDB(p.spec); pdb != nil {
		errs = append(errs, r.applyChild(ctx, p, pdb))
	} else {
		errs = append(errs, r.deleteIfExists(ctx, p, objectNamed(&policyv1.PodDisruptionBudget{}, ns, name)))
	}

	if hpa := desiredHPA(p.spec); hpa != nil {
		errs = append(errs, r.applyChild(ctx, p, hpa))
	} else {
		errs = append(errs, r.deleteIfExists(ctx, p, objectNamed(&autoscalingv2.HorizontalPodAutoscaler{}, ns, name)))
	}
	errs = append(errs, r.pruneNetworkPolicies(ctx, p))

	return false, errors.Join(errs...)
}

// reconcileNetworkPolicies runs first of all steps: the policies depend on the spec alone,
// and a later step that waits (for the database to start, for a user's Secret) must not
// leave the database or Redis it already started open to every pod of the namespace, or a
// policy deleted by hand missing, for as long as it waits.
func (r *TradingStackReconciler) reconcileNetworkPolicies(ctx context.Context, p *pass) (bool, error) {
	for _, np := range desiredNetworkPolicies(p.spec) {
		if err := r.applyChild(ctx, p, np); err != nil {
			return false, err
		}
	}
	return false, nil
}

// pruneNetworkPolicies deletes the policies the spec no longer asks for (a component moved
// to an external service). It runs in the policy step, after the database and cache steps:
// the component a policy protects may run until its own step removed it (a managed database
// is kept until its volume is released), and must stay protected until then.
func (r *TradingStackReconciler) pruneNetworkPolicies(ctx context.Context, p *pass) error {
	ns := p.stack.Namespace
	wanted := map[string]bool{}
	for _, np := range desiredNetworkPolicies(p.spec) {
		wanted[np.Name] = true
	}
	existing := &networkingv1.NetworkPolicyList{}
	if err := r.List(ctx, existing, client.InNamespace(ns), client.MatchingLabels{instanceLabel: p.stack.Name}); err != nil {
		return err
	}
	for i := range existing.Items {
		np := &existing.Items[i]
		if wanted[np.Name] {
			continue
		}
		// A policy is named after the workload it protects (NAME-postgres, NAME-redis): kept
		// while that still runs; its deletion brings the next pass.
		for _, workload := range []client.Object{&appsv1.StatefulSet{}, &appsv1.Deployment{}} {
			found, err := r.getCached(ctx, client.ObjectKey{Namespace: ns, Name: np.Name}, workload)
			if err != nil {
				return err
			}
			if found {
				wanted[np.Name] = true
			}
		}
		if wanted[np.Name] {
			continue
		}
		if err := r.deleteIfExists(ctx, p, objectNamed(&networkingv1.NetworkPolicy{}, ns, np.Name)); err != nil {
			return err
		}
	}
	return nil
}
