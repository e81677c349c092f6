package controllers

import (
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// desiredPDB is NAME-api allowing one runtime pod down at a time, or nil when the runtime
// can have a single pod (a PDB on one pod would block every node drain). Pods that are not
// ready may always be evicted (AlwaysAllow): readiness follows the database, so while it is
// down (evicted by the same drain, say) every runtime pod is unready, and the default policy
// (IfHealthyBudget) would refuse to evict any of them, stalling the drain until it is back.
func desiredPDB(s *tradingv1alpha1.TradingStack) *policyv1.PodDisruptionBudget {
	r := s.Spec.Runtime
	min := r.Replicas
	if r.Autoscaling != nil {
		min = r.Autoscaling.MinReplicas
		if min == 0 {
			min = tradingv1alpha1.DefaultAutoscalingMinReplicas
		}
	} else if min == 0 {
		min = tradingv1alpha1.DefaultReplicas
	}
	if min <= 1 {
		return nil
	}
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   typeMeta("policy/v1", "PodDisruptionBudget"),
		ObjectMeta: objectMeta(s, apiName(s), tradingdApp, apiComponent),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable:             ptr.To(intstr.FromInt32(1)),
			Selector:                   &metav1.LabelSelector{MatchLabels: selectorLabels(s, apiComponent)},
			UnhealthyPodEvictionPolicy: ptr.To(policyv1.AlwaysAllow),
		},
	}
}

// desiredHPA is NAME-api scaling the runtime Deployment on CPU, or nil without autoscaling.
func desiredHPA(s *tradingv1alpha1.TradingStack) *autoscalingv2.HorizontalPodAutoscaler {
	a := s.Spec.Runtime.Autoscaling
	if a == nil {
		return nil
	}
	min, target := a.MinReplicas, a.TargetCPUUtilizationPercentage
	if min == 0 {
		min = tradingv1alpha1.DefaultAutoscalingMinReplicas
	}
	if target == 0 {
		target = tradingv1alpha1.DefaultTargetCPUUtilization
	}
	return &autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   typeMeta("autoscaling/v2", "HorizontalPodAutoscaler"),
		ObjectMeta: objectMeta(s, apiName(s), tradingdApp, apiComponent),
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: apiName(s)},
			MinReplicas:    ptr.To(min),
			MaxReplicas:    a.MaxReplicas,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{
					Name:   corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: ptr.To(target)},
				},
			}},
		},
	}
}

// desiredNetworkPolicies admits only the stack's own runtime pods (and, for the database, its
// migration Job's pods) to its managed PostgreSQL (NAME-postgres, port 5432) and managed Redis
// (NAME-redis, port 6379). External and disabled backends get none. Peers and targets are
// selected by every label the operator puts on its pods (name and managed-by included), so
// another chart's pod that happens to carry the same instance and component labels is not
// let in.
func desiredNetworkPolicies(s *tradingv1alpha1.TradingStack) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	if !s.ExternalPostgres() {
		out = append(out, ingressOnlyFrom(s, postgresName(s), postgresApp, databaseComponent, postgresPort,
			labelsFor(s, tradingdApp, apiComponent), labelsFor(s, tradingdApp, migrationComponent)))
	}
	if s.ManagedRedis() {
		out = append(out, ingressOnlyFrom(s, redisName(s), redisApp, cacheComponent, redisPort, labelsFor(s, tradingdApp, apiComponent)))
	}
	return out
}

func ingressOnlyFrom(s *tradingv1alpha1.TradingStack, name, app, component string, port int32, from ...map[string]string) *networkingv1.NetworkPolicy {
	peers := make([]networkingv1.NetworkPolicyPeer, 0, len(from))
	for _, labels := range from {
		peers = append(peers, networkingv1.NetworkPolicyPeer{
			PodSelector: &metav1.LabelSelector{MatchLabels: labels},
		})
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   typeMeta("networking.k8s.io/v1", "NetworkPolicy"),
		ObjectMeta: objectMeta(s, name, app, component),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: labelsFor(s, app, component)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: peers,
				Ports: []networkingv1.NetworkPolicyPort{{
					Protocol: ptr.To(corev1.ProtocolTCP),
					Port:     ptr.To(intstr.FromInt32(port)),
				}},
			}},
		},
	}
}
