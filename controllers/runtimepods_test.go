package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// testRuntimePodsWaitSaid: the runtime's pods cannot start (an image that cannot be pulled, a
// crash loop). The Deployment controller reports that only at its progress deadline, ten
// minutes later (RolloutStuck); until then RuntimeAvailable says why the pods wait, and
// follows them (nothing watches pods: a change of the pod alone must show), during a first
// rollout and during a later one while the pods from before serve. Once the pods are ready it
// says nothing of waiting, and a pass at rest neither reads pods nor asks to run again.
func testRuntimePodsWaitSaid(t *testing.T) {
	const image = "registry.example.com/tradingd:v1"
	ns := newNamespace(t)
	createStack(t, newStack(ns, "rw", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Replicas = 1 }))
	api := untilRuntime(t, ns, "rw")

	// The ReplicaSet controller's pod, which the kubelet cannot start; the Deployment
	// controller counts it, and reports nothing else before its deadline.
	pod := createDeploymentPod(t, api, "rw-api-first")
	setPodStatus(t, pod, waitingStatus("ImagePullBackOff", `Back-off pulling image "`+image+`"`, nil))
	setDeploymentPods(t, ns, "rw-api", 1, 1, 0)
	waitConditionSays(t, ns, "rw", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonDeploymentUnavailable,
		`waiting for Deployment rw-api to become available; its pods wait: ImagePullBackOff: Back-off pulling image "`+image+`"`)

	// The image pulled, the process exits at start: only the pod changes (no event the operator
	// watches), and the condition follows it.
	setPodStatus(t, pod, waitingStatus("CrashLoopBackOff", "back-off 40s restarting failed container=tradingd pod=rw-api-first",
		&corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}))
	s := waitConditionSays(t, ns, "rw", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionFalse, tradingv1alpha1.ReasonDeploymentUnavailable,
		"its pods wait: CrashLoopBackOff: the container tradingd exited with code 2 (Error)")
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); strings.Contains(c.Message, "back-off 40s") {
		t.Errorf("the crash loop's message carries the kubelet's back-off, which changes at every restart: %s", c.Message)
	}

	// Ready: nothing is said of waiting any more.
	setPodStatus(t, pod, readyStatus())
	markDeploymentReady(t, ns, "rw-api")
	s = waitCondition(t, ns, "rw", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonDeploymentAvailable)
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); strings.Contains(c.Message, "wait") {
		t.Errorf("RuntimeAvailable once the pod is ready: %s", c.Message)
	}

	// A setting that makes the new pods crash: the pod from before serves (it is ready, and
	// not what the message is about), the new one crash-loops.
	updateStack(t, ns, "rw", func(s *tradingv1alpha1.TradingStack) { s.Spec.Runtime.Symbols = []string{"BTC/USD", "SOL/USD"} })
	eventually(t, "a new pod template for rw-api", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, "rw-api"), d); err != nil {
			return err
		}
		if d.Generation == api.Generation {
			return fmt.Errorf("still the template of generation %d", d.Generation)
		}
		api = d
		return nil
	})
	newPod := createDeploymentPod(t, api, "rw-api-second")
	setPodStatus(t, newPod, waitingStatus("CrashLoopBackOff", "back-off 10s restarting failed container=tradingd pod=rw-api-second",
		&corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error", Message: "SYMBOLS: SOL/USD is not traded here"}))
	setDeploymentPods(t, ns, "rw-api", 2, 1, 1)
	waitConditionSays(t, ns, "rw", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonRollingOut,
		"its pods wait: CrashLoopBackOff: the container tradingd exited with code 2 (Error): SYMBOLS: SOL/USD is not traded here")

	// Fixed: the new pod is ready, the old one gone.
	setPodStatus(t, newPod, readyStatus())
	if err := k8s.Delete(bg, pod); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	markDeploymentReady(t, ns, "rw-api")
	s = waitCondition(t, ns, "rw", tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionTrue, tradingv1alpha1.ReasonDeploymentAvailable)
	if c := condition(s, tradingv1alpha1.ConditionRuntimeAvailable); strings.Contains(c.Message, "wait") {
		t.Errorf("RuntimeAvailable once rolled out: %s", c.Message)
	}
	waitCondition(t, ns, "rw", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
	operatorWrites.settle(t, ns)

	// At rest: a pass reads no pods and asks for no poll.
	restReadsNoPods(t, ns, "rw")
}

// restReadsNoPods: a pass over the Ready stack name neither lists pods (they are read only
// while a component waits for them) nor asks to run again.
func restReadsNoPods(t *testing.T, ns, name string) {
	t.Helper()
	mgrMu.Lock()
	mgr := currentMgr
	mgrMu.Unlock()
	r := NewTradingStackReconciler(mgr, 1)
	reader := &podListCounter{Reader: r.APIReader}
	r.APIReader = reader
	var res ctrl.Result
	// A pass that met a cache behind the manager's last status write writes nothing and asks
	// to run again soon (staleStackRetry): it does not count.
	for tries := 0; tries == 0 || res.RequeueAfter == staleStackRetry && tries < 50; tries++ {
		waitCachedStack(t, mgr, ns, name)
		var err error
		if res, err = r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, name)}); err != nil {
			t.Fatal(err)
		}
	}
	if res.RequeueAfter != 0 {
		t.Errorf("a Ready stack asks to be requeued after %s", res.RequeueAfter)
	}
	if n := reader.lists.Load(); n != 0 {
		t.Errorf("a Ready stack's pass listed pods %d times", n)
	}
}

// podListCounter counts the pod lists made through it.
type podListCounter struct {
	client.Reader
	lists atomic.Int32
}

func (c *podListCounter) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if _, ok := list.(*corev1.PodList); ok {
		c.lists.Add(1)
	}
	return c.Reader.List(ctx, list, opts...)
}

// createDeploymentPod plays the ReplicaSet controller: a pod of d's current template named name.
func createDeploymentPod(t *testing.T, d *appsv1.Deployment, name string) *corev1.Pod {
	t.Helper()
	return createTemplatePod(t, d.Namespace, name, d.Spec.Template)
}

// createTemplatePod makes the pod named name of tmpl, as a workload's controller would.
func createTemplatePod(t *testing.T, ns, name string, tmpl corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}
	if err := k8s.Create(bg, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec:       tmpl.Spec,
	}
	if err := k8s.Create(bg, pod); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return pod
}

// setPodStatus plays the kubelet.
func setPodStatus(t *testing.T, pod *corev1.Pod, st corev1.PodStatus) {
	t.Helper()
	eventually(t, "status of pod "+pod.Name, func() error {
		cur := &corev1.Pod{}
		if err := k8s.Get(bg, client.ObjectKeyFromObject(pod), cur); err != nil {
			return err
		}
		cur.Status = st
		return k8s.Status().Update(bg, cur)
	})
}

// waitingStatus is a pending runtime pod whose container waits for reason; last is how its
// previous run ended (a crash loop), if it ran.
func waitingStatus(reason, message string, last *corev1.ContainerStateTerminated) corev1.PodStatus {
	cs := corev1.ContainerStatus{Name: "tradingd", Image: "registry.example.com/tradingd:v1",
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}}
	phase := corev1.PodPending
	if last != nil {
		now := metav1.Now()
		last.StartedAt, last.FinishedAt = now, now
		cs.LastTerminationState = corev1.ContainerState{Terminated: last}
		cs.RestartCount = 3
		phase = corev1.PodRunning
	}
	return corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{cs},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"}}}
}

// readyStatus is a runtime pod that runs and is ready.
func readyStatus() corev1.PodStatus {
	now := metav1.Now()
	return corev1.PodStatus{Phase: corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{{Name: "tradingd", Image: "registry.example.com/tradingd:v1", Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
}

// setDeploymentPods plays the Deployment controller before its progress deadline: replicas
// pods, updated of them of the current template, ready of them ready (the rest not).
func setDeploymentPods(t *testing.T, ns, name string, replicas, updated, ready int32) {
	t.Helper()
	eventually(t, "Deployment "+name+" with pods that are not ready", func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(bg, key(ns, name), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: updated, ReadyReplicas: ready, AvailableReplicas: ready,
			UnavailableReplicas: replicas - ready,
			Conditions:          deploymentConditions(ready >= *d.Spec.Replicas, "ReplicaSetUpdated"),
		}
		return k8s.Status().Update(bg, d)
	})
}

// TestUnreadyPodWaiting: which of the runtime's pods tells why they wait, and what it says.
func TestUnreadyPodWaiting(t *testing.T) {
	at := func(sec int) metav1.Time { return metav1.NewTime(time.Unix(1_700_000_000+int64(sec), 0)) }
	pod := func(name string, created int, st corev1.PodStatus) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: at(created)}, Status: st}
	}
	pull := waitingStatus("ImagePullBackOff", `Back-off pulling image "x:typo"`, nil)
	creating := waitingStatus("ContainerCreating", "", nil)
	unschedulable := corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: "0/3 nodes are available: 3 Insufficient cpu."}}}
	oom := waitingStatus("CrashLoopBackOff", "back-off 5m0s restarting failed container", &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"})
	sidecar := waitingStatus("ImagePullBackOff", "not ours", nil)
	sidecar.ContainerStatuses[0].Name = "istio-proxy"
	terminating := pod("going", 9, pull)
	terminating.DeletionTimestamp = ptr.To(at(10))

	for _, tc := range []struct {
		name       string
		pods       []corev1.Pod
		want       string
		wantNewest string
	}{
		{"none", nil, "", ""},
		{"ready pods say nothing", []corev1.Pod{pod("old", 1, readyStatus())}, "", ""},
		{"a pod without a verdict yet is polled", []corev1.Pod{pod("old", 1, readyStatus()), pod("new", 2, corev1.PodStatus{Phase: corev1.PodPending})}, "", "new"},
		{"image", []corev1.Pod{pod("old", 1, readyStatus()), pod("new", 2, pull)}, `ImagePullBackOff: Back-off pulling image "x:typo"`, "new"},
		{"unschedulable", []corev1.Pod{pod("new", 2, unschedulable)}, "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.", "new"},
		{"crash loop says the last exit", []corev1.Pod{pod("new", 2, oom)}, "CrashLoopBackOff: the container tradingd exited with code 137 (OOMKilled)", "new"},
		{"the newest pod with a reason tells", []corev1.Pod{pod("a", 1, pull), pod("b", 3, oom), pod("c", 5, creating)}, "CrashLoopBackOff: the container tradingd exited with code 137 (OOMKilled)", "c"},
		{"terminating pods are history", []corev1.Pod{pod("old", 1, readyStatus()), terminating}, "", ""},
		{"another container's wait is not the runtime's", []corev1.Pod{pod("new", 2, sidecar)}, "", "new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, newest := unreadyPodWaiting(tc.pods, runtimeContainer)
			if got != tc.want {
				t.Errorf("says %q, want %q", got, tc.want)
			}
			if name := ptr.Deref(newest, corev1.Pod{}).Name; name != tc.wantNewest {
				t.Errorf("polls for pod %q, want %q", name, tc.wantNewest)
			}
		})
	}
}
