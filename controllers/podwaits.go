package controllers

import (
	"context"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
)

// podWaiting says why pod's container named container does not run, when the kubelet or the
// scheduler says it cannot (an image that cannot be pulled, a Secret or key its environment
// names that is missing, a crash at start, no node for it), or "". A crash loop says how the
// last run ended rather than the kubelet's message, whose back-off grows at every restart: the
// condition would change, and be written, with each.
func podWaiting(pod *corev1.Pod, container string) string {
	for _, c := range pod.Status.ContainerStatuses {
		w := c.State.Waiting
		if c.Name != container || w == nil || w.Reason == "" || w.Reason == "ContainerCreating" || w.Reason == "PodInitializing" {
			continue
		}
		if t := c.LastTerminationState.Terminated; w.Reason == "CrashLoopBackOff" && t != nil {
			return shortReason(w.Reason, containerExited(c.Name, t, t.Message))
		}
		return shortReason(w.Reason, w.Message)
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return shortReason(c.Reason, c.Message)
		}
	}
	return ""
}

// containerExited says how a run of the container named name ended: its exit code, the
// kubelet's reason and message (the termination message: tradingd's error line).
func containerExited(name string, t *corev1.ContainerStateTerminated, message string) string {
	s := fmt.Sprintf("the container %s exited with code %d", name, t.ExitCode)
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	if message != "" {
		s += ": " + message
	}
	return s
}

// sortNewestFirst orders pods from the most recently created: the newest attempt, or the
// newest template's pods, tell what happens now.
func sortNewestFirst(pods []corev1.Pod) {
	slices.SortFunc(pods, func(a, b corev1.Pod) int {
		return b.CreationTimestamp.Compare(a.CreationTimestamp.Time)
	})
}

// podReady: the kubelet reports pod ready (it serves).
func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// unreadyPodWaiting says why the newest of pods that is neither ready nor done and whose
// container waits for a reason (podWaiting) waits, or ""; and returns the newest pod that is
// neither ready nor done (nil: none). Ready pods are left out: during a rollout those from
// before serve, and are no reason for anything.
func unreadyPodWaiting(pods []corev1.Pod, container string) (string, *corev1.Pod) {
	sortNewestFirst(pods)
	var newest *corev1.Pod
	for i := range pods {
		pod := &pods[i]
		if podDone(pod) || podReady(pod) {
			continue
		}
		if newest == nil {
			newest = pod
		}
		if why := podWaiting(pod, container); why != "" {
			return why, newest
		}
	}
	return "", newest
}

// deploymentPodsWaiting says, after "; ", why dep's pods that are not ready wait (an image that
// cannot be pulled, a crash loop, no node for them), from their container named container, or
// "". The Deployment controller tells nothing of it until its progress deadline, ten minutes
// later (RolloutStuck), and Redis's never; until then the stack only said it waited. Read
// uncached, like a migration's pods (no informer on pods), and only while dep is not ready (the
// runtime's: has not rolled out): a stack at rest reads no pods.
func (r *TradingStackReconciler) deploymentPodsWaiting(ctx context.Context, p *pass, dep *appsv1.Deployment, container string) string {
	pods, err := r.selectedPods(ctx, dep.Namespace, dep.Spec.Selector)
	if err != nil {
		// The condition says only that it waits, as before; the next poll reads again.
		ctrl.LoggerFrom(ctx).Error(err, "cannot read a Deployment's pods to say why they wait", "deployment", dep.Name)
		p.requeue(pollMax)
		return ""
	}
	return podsWaiting(p, pods, container)
}

// podsWaiting says, after "; ", why those of pods (one workload's) that are not ready wait,
// from their container named container (unreadyPodWaiting), or "". A pod's state changes no
// object the operator watches, so while one is not ready the pass asks to run again, backing
// off with that pod's age, and the message follows it; pods created or becoming ready change
// the workload's status, which brings a pass anyway.
func podsWaiting(p *pass, pods []corev1.Pod, container string) string {
	why, newest := unreadyPodWaiting(pods, container)
	if newest != nil {
		p.requeue(waitPoll(newest))
	}
	if why == "" {
		return ""
	}
	return "; its pods wait: " + why
}
