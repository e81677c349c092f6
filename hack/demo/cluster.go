package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// readSample decodes the TradingStack manifest at path.
func readSample(path, namespace string) (*tradingv1alpha1.TradingStack, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &tradingv1alpha1.TradingStack{}
	if err := yaml.UnmarshalStrict(raw, s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.Kind != "TradingStack" || s.Name == "" {
		return nil, fmt.Errorf("%s: not a named TradingStack", path)
	}
	if s.Namespace == "" {
		s.Namespace = namespace
	}
	return s, nil
}

// kubelet plays the parts of a cluster that envtest does not run: the kubelet (pods of the
// StatefulSet and Deployments become ready) and the Job controller (the migration Job
// succeeds). It only ever writes status, as those would; the operator reads it like on a
// real cluster.
type kubelet struct {
	c     client.Client
	stack *tradingv1alpha1.TradingStack
	p     printer
	clock func() string
}

// tick marks every child that exists and is not ready yet.
func (k *kubelet) tick(ctx context.Context) error {
	ns, name := k.stack.Namespace, k.stack.Name
	if err := k.statefulSet(ctx, ns, name+"-postgres"); err != nil {
		return err
	}
	if err := k.deployment(ctx, ns, name+"-redis"); err != nil {
		return err
	}
	if err := k.migrationJobs(ctx, ns, name); err != nil {
		return err
	}
	return k.deployment(ctx, ns, name+"-api")
}

// ignoreRace treats the object being absent or changed under us as "try again next tick".
func ignoreRace(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (k *kubelet) statefulSet(ctx context.Context, ns, name string) error {
	sts := &appsv1.StatefulSet{}
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, sts); err != nil {
		return ignoreRace(err)
	}
	n := int32(1)
	if sts.Spec.Replicas != nil {
		n = *sts.Spec.Replicas
	}
	st := sts.Status
	if st.ObservedGeneration == sts.Generation && st.ReadyReplicas == n && st.UpdatedReplicas == n {
		return nil
	}
	sts.Status = appsv1.StatefulSetStatus{
		ObservedGeneration: sts.Generation, Replicas: n, ReadyReplicas: n, CurrentReplicas: n,
		UpdatedReplicas: n, AvailableReplicas: n,
	}
	if err := k.c.Status().Update(ctx, sts); err != nil {
		return ignoreRace(err)
	}
	k.p.line("%s  kubelet stand-in: StatefulSet %s has %d/%d pods ready, as a kubelet would report", k.clock(), name, n, n)
	return nil
}

func (k *kubelet) deployment(ctx context.Context, ns, name string) error {
	d := &appsv1.Deployment{}
	if err := k.c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
		return ignoreRace(err)
	}
	n := int32(1)
	if d.Spec.Replicas != nil {
		n = *d.Spec.Replicas
	}
	st := d.Status
	if st.ObservedGeneration == d.Generation && st.ReadyReplicas == n && st.UpdatedReplicas == n && st.AvailableReplicas == n {
		return nil
	}
	now := metav1.Now()
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation, Replicas: n, ReadyReplicas: n, AvailableReplicas: n, UpdatedReplicas: n,
		Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now},
			{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", LastUpdateTime: now, LastTransitionTime: now},
		},
	}
	if err := k.c.Status().Update(ctx, d); err != nil {
		return ignoreRace(err)
	}
	k.p.line("%s  kubelet stand-in: Deployment %s has %d/%d pods ready, as a kubelet would report", k.clock(), name, n, n)
	return nil
}

// migrationJobs finishes every running migration Job of the stack (NAME-migrate-HASH). The
// demo runs `tradingd migrate` itself afterwards, against the local database.
func (k *kubelet) migrationJobs(ctx context.Context, ns, stack string) error {
	list := &batchv1.JobList{}
	if err := k.c.List(ctx, list, client.InNamespace(ns)); err != nil {
		return err
	}
	for i := range list.Items {
		j := &list.Items[i]
		if !strings.HasPrefix(j.Name, stack+"-migrate-") || jobFinished(j) {
			continue
		}
		start := metav1.NewTime(time.Now().Add(-time.Second))
		now := metav1.Now()
		j.Status = batchv1.JobStatus{
			StartTime: &start, CompletionTime: &now, Succeeded: 1,
			Conditions: []batchv1.JobCondition{
				{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods", LastProbeTime: now, LastTransitionTime: now},
				{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, Reason: "CompletionsReached", Message: "Reached expected number of succeeded pods", LastProbeTime: now, LastTransitionTime: now},
			},
		}
		if err := k.c.Status().Update(ctx, j); err != nil {
			return ignoreRace(err)
		}
		k.p.line("%s  kubelet stand-in: Job %s succeeded, as the kubelet and the Job controller would report once its pod ran `tradingd migrate`", k.clock(), j.Name)
	}
	return nil
}

func jobFinished(j *batchv1.Job) bool {
	for _, c := range j.Status.Conditions {
		if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
			return true
		}
	}
	return false
}

// conditionWatcher prints one line per condition change: time, type, status, reason.
type conditionWatcher struct {
	seen map[string]string
}

func (w *conditionWatcher) print(p printer, clock string, s *tradingv1alpha1.TradingStack) {
	if w.seen == nil {
		w.seen = map[string]string{}
	}
	for _, c := range s.Status.Conditions {
		state := string(c.Status) + "/" + c.Reason
		if w.seen[c.Type] == state {
			continue
		}
		w.seen[c.Type] = state
		p.line("%s  %-20s %-8s %s", clock, c.Type, c.Status, c.Reason)
	}
}

// resolveEnv computes the environment of a pod template's container as the kubelet would:
// envFrom ConfigMaps and Secrets first, then env (values, ConfigMap and Secret keys, and
// $(VAR) references to variables defined before). It reads every object from the API server
// and reports where each setting came from, never printing a Secret's value.
func resolveEnv(ctx context.Context, c client.Client, ns string, ctr corev1.Container, p printer) (map[string]string, error) {
	env := map[string]string{}
	getCM := func(name string) (*corev1.ConfigMap, error) {
		cm := &corev1.ConfigMap{}
		return cm, c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cm)
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		s := &corev1.Secret{}
		return s, c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s)
	}
	for _, from := range ctr.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := getCM(from.ConfigMapRef.Name)
			if err != nil {
				return nil, fmt.Errorf("ConfigMap %s: %w", from.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				env[from.Prefix+k] = v
			}
			p.line("ConfigMap %s (envFrom): %d settings, e.g. RATE_LIMIT_TRADING=%s SYMBOLS=%s REDIS_URL=%s",
				cm.Name, len(cm.Data), cm.Data["RATE_LIMIT_TRADING"], cm.Data["SYMBOLS"], redacted(cm.Data["REDIS_URL"]))
		case from.SecretRef != nil:
			s, err := getSecret(from.SecretRef.Name)
			if err != nil {
				return nil, fmt.Errorf("Secret %s: %w", from.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				env[from.Prefix+k] = string(v)
			}
			p.line("Secret %s (envFrom): %d keys (values not shown)", s.Name, len(s.Data))
		}
	}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = expandRefs(e.Value, env)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, err := getSecret(ref.Name)
			if err != nil {
				return nil, fmt.Errorf("Secret %s for %s: %w", ref.Name, e.Name, err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				return nil, fmt.Errorf("Secret %s has no key %s (for %s)", ref.Name, ref.Key, e.Name)
			}
			env[e.Name] = string(v)
			p.line("Secret %s key %q -> %s (%s)", ref.Name, ref.Key, e.Name, describeSecret(e.Name, string(v)))
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := getCM(ref.Name)
			if err != nil {
				return nil, fmt.Errorf("ConfigMap %s for %s: %w", ref.Name, e.Name, err)
			}
			env[e.Name] = cm.Data[ref.Key]
		}
	}
	return env, nil
}

// describeSecret says what a secret setting holds without its value.
func describeSecret(name, v string) string {
	switch name {
	case "JWT_KEYS":
		var kids []string
		for _, pair := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '\n' }) {
			if kid, _, ok := strings.Cut(strings.TrimSpace(pair), ":"); ok {
				kids = append(kids, kid)
			}
		}
		return fmt.Sprintf("%d signing key(s), kid %s; secrets not shown", len(kids), strings.Join(kids, ","))
	case "DATABASE_URL":
		return "in-cluster DSN at " + dsnHost(v) + "; password not shown"
	default:
		return fmt.Sprintf("%d characters, not shown", len(v))
	}
}

// expandRefs replaces $(NAME) with NAME's value when NAME is defined, as the kubelet does.
func expandRefs(v string, env map[string]string) string {
	for name, val := range env {
		v = strings.ReplaceAll(v, "$("+name+")", val)
	}
	return v
}
