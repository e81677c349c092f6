package controllers

import (
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testBackendPodsWaitSaid: the managed PostgreSQL's or Redis's pod cannot start. The first day
// of a managed database fails most often on a cluster without a default StorageClass (the
// volume claim stays unbound, the pod unschedulable), an image that cannot be pulled, or a
// crash loop; DatabaseReady and CacheReady said only that they waited. They say why, as
// RuntimeAvailable does for the runtime's pods, and follow the pod (nothing watches pods: a
// change of the pod alone must show); a ready pod clears it, and a Ready stack reads no pods.
func testBackendPodsWaitSaid(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "bw"))

	// No default StorageClass: the claim the StatefulSet controller made stays unbound, and the
	// scheduler finds no node for the pod.
	sts := waitFor(t, &appsv1.StatefulSet{}, ns, "bw-postgres")
	pg := createStatefulSetPod(t, sts)
	setPodStatus(t, pg, corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, LastTransitionTime: metav1.Now(),
		Message: "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
	}}})
	setStatefulSetPods(t, ns, "bw-postgres", 1, 0)
	waitConditionSays(t, ns, "bw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady,
		"waiting for StatefulSet bw-postgres to have a ready pod; its pods wait: Unschedulable: 0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims.")

	// The claim bound, PostgreSQL exits at start: only the pod changes.
	setPodStatus(t, pg, ofContainer(waitingStatus("CrashLoopBackOff", "back-off 20s restarting failed container=postgres pod=bw-postgres-0",
		&corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}), "postgres", sts.Spec.Template.Spec.Containers[0].Image))
	waitConditionSays(t, ns, "bw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonDatabaseNotReady,
		"waiting for StatefulSet bw-postgres to have a ready pod; its pods wait: CrashLoopBackOff: the container postgres exited with code 1 (Error)")

	// Ready: nothing is said of waiting any more.
	setPodStatus(t, pg, readyStatus())
	markStatefulSetReady(t, ns, "bw-postgres")
	s := waitCondition(t, ns, "bw", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionTrue, tradingv1alpha1.ReasonDatabaseAvailable)
	if c := condition(s, tradingv1alpha1.ConditionDatabaseReady); strings.Contains(c.Message, "wait") {
		t.Errorf("DatabaseReady once the pod is ready: %s", c.Message)
	}
	makeReady(t, ns, "bw")
	operatorWrites.settle(t, ns)
	restReadsNoPods(t, ns, "bw")

	// A Redis image that cannot be pulled: the Deployment replaces its pod (Recreate), and the
	// new one waits for its image; the pod changes after the Deployment's status did.
	const typo = "docker.io/library/redis:7.4.l"
	updateStack(t, ns, "bw", func(s *tradingv1alpha1.TradingStack) { s.Spec.Redis.Image = typo })
	var redis *appsv1.Deployment
	eventually(t, "Deployment bw-redis with image "+typo, func() error {
		redis = &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "bw-redis"), redis); err != nil {
			return err
		}
		if image := redis.Spec.Template.Spec.Containers[0].Image; image != typo {
			return fmt.Errorf("image %s", image)
		}
		return nil
	})
	pod := createDeploymentPod(t, redis, "bw-redis-second")
	setDeploymentPods(t, ns, "bw-redis", 1, 1, 0)
	waitConditionSays(t, ns, "bw", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheNotReady,
		"waiting for Deployment bw-redis to become available")
	setPodStatus(t, pod, ofContainer(waitingStatus("ImagePullBackOff", `Back-off pulling image "`+typo+`"`, nil), "redis", typo))
	waitConditionSays(t, ns, "bw", tradingv1alpha1.ConditionCacheReady, metav1.ConditionFalse, tradingv1alpha1.ReasonCacheNotReady,
		`waiting for Deployment bw-redis to become available; its pods wait: ImagePullBackOff: Back-off pulling image "`+typo+`"`)

	// Pulled after all (the registry was down): Redis is available, and says nothing of waiting.
	setPodStatus(t, pod, readyStatus())
	markDeploymentReady(t, ns, "bw-redis")
	s = waitCondition(t, ns, "bw", tradingv1alpha1.ConditionCacheReady, metav1.ConditionTrue, tradingv1alpha1.ReasonCacheAvailable)
	if c := condition(s, tradingv1alpha1.ConditionCacheReady); strings.Contains(c.Message, "wait") {
		t.Errorf("CacheReady once the pod is ready: %s", c.Message)
	}
	waitCondition(t, ns, "bw", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	operatorWrites.settle(t, ns)
	restReadsNoPods(t, ns, "bw")
}

// testReplicasUnavailableWaitSaid: a stack that serves on one of its two runtime pods, the
// other made anew and finding no node. Degraded ReplicasUnavailable says why it waits, as
// RuntimeAvailable does; once it is ready, the stack is Stable.
func testReplicasUnavailableWaitSaid(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ru"))
	makeReady(t, ns, "ru")
	api := waitFor(t, &appsv1.Deployment{}, ns, "ru-api")
	pod := createDeploymentPod(t, api, "ru-api-replaced")
	setPodStatus(t, pod, corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, LastTransitionTime: metav1.Now(),
		Message: "0/3 nodes are available: 3 Insufficient memory.",
	}}})
	// Available still, as PodsRefusedSaid's serving stack: the Deployment controller judges
	// availability after the pod count (with maxUnavailable 0 it then reads unavailable, and
	// RuntimeAvailable says why the pod waits).
	eventually(t, "Deployment ru-api serving on one pod of two", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "ru-api"), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1, AvailableReplicas: 1,
			UnavailableReplicas: 1, Conditions: deploymentConditions(true, "ReplicaSetUpdated")}
		return k8s.Status().Update(bg, d)
	})
	waitConditionSays(t, ns, "ru", tradingv1alpha1.ConditionDegraded, metav1.ConditionTrue, tradingv1alpha1.ReasonReplicasUnavailable,
		"1 of 2 runtime replicas are ready; its pods wait: Unschedulable: 0/3 nodes are available: 3 Insufficient memory.")

	setPodStatus(t, pod, readyStatus())
	markDeploymentReady(t, ns, "ru-api")
	waitCondition(t, ns, "ru", tradingv1alpha1.ConditionDegraded, metav1.ConditionFalse, tradingv1alpha1.ReasonStable)
}

// createStatefulSetPod plays the StatefulSet controller: sts's first pod, with the volume of
// each claim template (the claims themselves need not exist).
func createStatefulSetPod(t *testing.T, sts *appsv1.StatefulSet) *corev1.Pod {
	t.Helper()
	tmpl := *sts.Spec.Template.DeepCopy()
	name := sts.Name + "-0"
	for _, claim := range sts.Spec.VolumeClaimTemplates {
		tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{Name: claim.Name, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name + "-" + name}}})
	}
	return createTemplatePod(t, sts.Namespace, name, tmpl)
}

// setStatefulSetPods plays the StatefulSet controller: replicas pods, ready of them ready.
func setStatefulSetPods(t *testing.T, ns, name string, replicas, ready int32) {
	t.Helper()
	eventually(t, "StatefulSet "+name+" with pods that are not ready", func() error {
		sts := &appsv1.StatefulSet{}
		if err := k8s.Get(bg, key(ns, name), sts); err != nil {
			return err
		}
		sts.Status = appsv1.StatefulSetStatus{ObservedGeneration: sts.Generation, Replicas: replicas, CurrentReplicas: replicas,
			UpdatedReplicas: replicas, ReadyReplicas: ready, AvailableReplicas: ready}
		return k8s.Status().Update(bg, sts)
	})
}

// ofContainer is st (waitingStatus's, of one container) for the container named name, of image.
func ofContainer(st corev1.PodStatus, name, image string) corev1.PodStatus {
	for i := range st.ContainerStatuses {
		st.ContainerStatuses[i].Name, st.ContainerStatuses[i].Image = name, image
	}
	return st
}
