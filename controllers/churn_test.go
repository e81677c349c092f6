package controllers

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// quietConfigs are the configurations other than the default one that a Ready stack can
// be in; each must be quiet at rest like the default (QuietAtRest).
var quietConfigs = []struct {
	name    string
	secrets map[string]map[string]string // Secrets the user makes first
	mutate  func(*tradingv1alpha1.TradingStack)
}{
	{"external-postgres", map[string]map[string]string{"db": {"dsn": "postgres://u:p@db.corp:5432/t"}},
		func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "db", Key: "dsn"}}
		}},
	{"external-postgres-ca", map[string]map[string]string{"db": {"dsn": "postgres://u:p@db.corp:5432/t"}, "db-ca": {"ca.pem": ""}},
		func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "db", Key: "dsn"},
				CASecretRef: &tradingv1alpha1.SecretKeyReference{Name: "db-ca", Key: "ca.pem"}}
		}},
	{"external-redis-tls-password", map[string]map[string]string{"rpw": {"password": "pw"}, "rca": {"ca.pem": ""}},
		func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
				PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "rpw", Key: "password"},
				TLS:               &tradingv1alpha1.RedisTLS{Enabled: true, CASecretRef: &tradingv1alpha1.SecretKeyReference{Name: "rca", Key: "ca.pem"}}}
		}},
	{"external-redis-plain", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis = tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6379"}
	}},
	{"redis-disabled-1", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled
		s.Spec.Runtime.Replicas = 1
	}},
	{"redis-disabled-3", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled
		s.Spec.Runtime.Replicas = 3
	}},
	{"autoscaling", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 5, TargetCPUUtilizationPercentage: 70}
	}},
	{"autoscaling-min1", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 1, MaxReplicas: 3}
	}},
	{"monitoring-off", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Monitoring.ServiceMonitor.Enabled = ptr.To(false)
		s.Spec.Monitoring.PrometheusRule.Enabled = ptr.To(false)
	}},
	{"monitoring-labels", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Monitoring.ServiceMonitor.Labels = map[string]string{"release": "prom", "team": "a", "b": "c"}
		s.Spec.Monitoring.ServiceMonitor.Interval = "1m"
		s.Spec.Monitoring.PrometheusRule.Labels = map[string]string{"release": "prom", "z": "y", "a": "b"}
	}},
	{"custom", nil, func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Replicas = 1
		s.Spec.Runtime.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("0.5"), corev1.ResourceMemory: resource.MustParse("1024Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1000m"), corev1.ResourceMemory: resource.MustParse("1Gi")}}
		s.Spec.Runtime.TrustedProxies = []string{"10.0.0.0/8", "192.168.1.0/24", "fd00::/8"}
		s.Spec.Runtime.Symbols = []string{"ETH/USD", "BTC/USD", "SOL/USD"}
		s.Spec.Runtime.RateLimits = tradingv1alpha1.RateLimits{Login: ptr.To[int32](0), Trading: ptr.To[int32](7), GlobalPerDay: ptr.To[int32](50000)}
		s.Spec.Runtime.MaxDailyLoss = amount("2500.50")
		s.Spec.Runtime.Limits.MaxQuantity = amount("10")
		s.Spec.Runtime.DemoUsers = true
		s.Spec.Runtime.Cache.PositionsTTL = "1m30s"
		s.Spec.Runtime.Auth.AccessTokenTTL = "2h"
		s.Spec.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{Storage: tradingv1alpha1.StorageSpec{Size: "2Gi"},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("0.5Gi")}}}
		s.Spec.Postgres.Pool = tradingv1alpha1.PoolSpec{MaxConns: 5, MinConns: ptr.To[int32](0), MaxConnLifetime: "90m"}
		s.Spec.Redis.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256M")}}
	}},
	{"retain-false", nil, func(s *tradingv1alpha1.TradingStack) { s.Spec.RetainDataOnDelete = ptr.To(false) }},
}

// testQuietEveryConfig: QuietAtRest for every configuration: once Ready, passes of the
// manager's reconciler and of a fresh one (a restarted operator) send no write at all.
func testQuietEveryConfig(t *testing.T) {
	for _, tc := range quietConfigs {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNamespace(t)
			for name, data := range tc.secrets {
				for k, v := range data {
					if v == "" {
						data[k] = testCAPEM(t)
					}
				}
				if err := k8s.Create(bg, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}); err != nil {
					t.Fatal(err)
				}
			}
			createStack(t, newStack(ns, "q", tc.mutate))
			makeReady(t, ns, "q")
			assertQuiet(t, ns, "q")
		})
	}
}

// assertQuiet fails the test on any write of passes of the manager's reconciler or of a
// fresh one.
func assertQuiet(t *testing.T, ns, name string) {
	t.Helper()
	reconcileDirectly(t, ns, name, 1)
	operatorWrites.settle(t, ns)
	before := resourceVersions(t, ns, name)
	mark := operatorWrites.mark()
	mgrMu.Lock()
	r := currentReconciler
	mgrMu.Unlock()
	for i := 0; i < 3; i++ {
		if _, err := r.Reconcile(bg, ctrl.Request{NamespacedName: key(ns, name)}); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
	}
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("the manager's reconciler wrote at rest: %s", w)
	}
	mark = operatorWrites.mark()
	res := reconcileDirectly(t, ns, name, 3)
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("a restarted operator wrote at rest: %s", w)
	}
	if res.RequeueAfter != 0 {
		t.Errorf("a Ready stack asks to be requeued after %s", res.RequeueAfter)
	}
	sameObjects(t, before, resourceVersions(t, ns, name))
}

// sameObjects fails the test on any object written or created between the two reads of
// resourceVersions.
func sameObjects(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s written at rest: resourceVersion %s -> %s", k, v, after[k])
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s created at rest", k)
		}
	}
}

// testOthersEditsNotFought: what other controllers and tools write to a Ready stack's
// children (the HPA's scale, `kubectl rollout restart`, the Deployment controller's revision
// annotation, a user's or Argo CD's labels and annotations on every child) is kept, and the
// passes after it write nothing more.
func testOthersEditsNotFought(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "of", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}
		s.Spec.Monitoring.ServiceMonitor.Labels = map[string]string{"release": "prom"}
	}))
	makeReady(t, ns, "of")
	assertQuiet(t, ns, "of")

	// The HPA scales through the scale subresource.
	scale := &autoscalingv1.Scale{}
	dep := objectNamed(&appsv1.Deployment{}, ns, "of-api")
	if err := k8s.SubResource("scale").Get(bg, dep, scale); err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 5
	if err := k8s.SubResource("scale").Update(bg, dep, client.WithSubResourceBody(scale), client.FieldOwner("kube-controller-manager")); err != nil {
		t.Fatal(err)
	}
	patch := func(obj client.Object, manager, p string) {
		t.Helper()
		if err := k8s.Patch(bg, obj, client.RawPatch(types.MergePatchType, []byte(p)), client.FieldOwner(manager)); err != nil {
			t.Fatalf("patch %T %s: %v", obj, obj.GetName(), err)
		}
	}
	patch(objectNamed(&appsv1.Deployment{}, ns, "of-api"), "kubectl-rollout",
		`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-01-01T00:00:00Z"}}}}}`)
	patch(objectNamed(&appsv1.Deployment{}, ns, "of-api"), "kube-controller-manager",
		`{"metadata":{"annotations":{"deployment.kubernetes.io/revision":"2"}}}`)
	marked := map[string]client.Object{}
	for _, o := range []client.Object{
		&appsv1.Deployment{}, &corev1.Service{}, &corev1.ConfigMap{}, &policyv1.PodDisruptionBudget{},
		&autoscalingv2.HorizontalPodAutoscaler{}, &monitoringv1.ServiceMonitor{},
	} {
		name := "of-api"
		if _, ok := o.(*corev1.ConfigMap); ok {
			name = "of-runtime"
		}
		marked[fmt.Sprintf("%T", o)] = objectNamed(o, ns, name)
	}
	marked["sts"] = objectNamed(&appsv1.StatefulSet{}, ns, "of-postgres")
	marked["np"] = objectNamed(&networkingv1.NetworkPolicy{}, ns, "of-postgres")
	marked["rule"] = objectNamed(&monitoringv1.PrometheusRule{}, ns, "of-alerts")
	marked["jwt"] = objectNamed(&corev1.Secret{}, ns, "of-jwt")
	marked["redis"] = objectNamed(&appsv1.Deployment{}, ns, "of-redis")
	for _, o := range marked {
		patch(o, "argocd-controller", `{"metadata":{"labels":{"team":"blue"},"annotations":{"argocd.argoproj.io/tracking-id":"x","note":"y"}}}`)
	}
	operatorWrites.settle(t, ns)
	assertQuiet(t, ns, "of")

	d := &appsv1.Deployment{}
	if err := k8s.Get(bg, key(ns, "of-api"), d); err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 5 {
		t.Errorf("the HPA's count was not kept: replicas %v", d.Spec.Replicas)
	}
	if d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" || d.Annotations["deployment.kubernetes.io/revision"] != "2" {
		t.Errorf("annotations not kept: template %v, object %v", d.Spec.Template.Annotations, d.Annotations)
	}
	for what, o := range marked {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		if o.GetLabels()["team"] != "blue" || o.GetAnnotations()["note"] != "y" || o.GetAnnotations()["argocd.argoproj.io/tracking-id"] != "x" {
			t.Errorf("%s %s: the user's label and annotations not kept: %v %v", what, o.GetName(), o.GetLabels(), o.GetAnnotations())
		}
	}
}

// testEditsOfEveryKindReverted: hand edits of what the spec decides, on the kinds
// HandEditsReverted does not edit, are put back, and the stack is quiet after.
func testEditsOfEveryKindReverted(t *testing.T) {
	ns := newNamespace(t)
	createStack(t, newStack(ns, "ek", func(s *tradingv1alpha1.TradingStack) {
		s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}
	}))
	makeReady(t, ns, "ek")
	want := map[string]client.Object{
		"pdb":   objectNamed(&policyv1.PodDisruptionBudget{}, ns, "ek-api"),
		"hpa":   objectNamed(&autoscalingv2.HorizontalPodAutoscaler{}, ns, "ek-api"),
		"np":    objectNamed(&networkingv1.NetworkPolicy{}, ns, "ek-postgres"),
		"sm":    objectNamed(&monitoringv1.ServiceMonitor{}, ns, "ek-api"),
		"rule":  objectNamed(&monitoringv1.PrometheusRule{}, ns, "ek-alerts"),
		"svc":   objectNamed(&corev1.Service{}, ns, "ek-api"),
		"dep":   objectNamed(&appsv1.Deployment{}, ns, "ek-api"),
		"redis": objectNamed(&appsv1.Deployment{}, ns, "ek-redis"),
	}
	specs := map[string]string{}
	for what, o := range want {
		if err := k8s.Get(bg, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		specs[what] = specJSON(t, o)
	}
	patch := func(o client.Object, p string) {
		t.Helper()
		if err := k8s.Patch(bg, o, client.RawPatch(types.StrategicMergePatchType, []byte(p)), client.FieldOwner("kubectl-edit")); err != nil {
			t.Fatalf("patch %T %s: %v", o, o.GetName(), err)
		}
	}
	patch(objectNamed(&policyv1.PodDisruptionBudget{}, ns, "ek-api"), `{"spec":{"selector":{"matchLabels":{"extra":"x"}}}}`)
	patch(objectNamed(&autoscalingv2.HorizontalPodAutoscaler{}, ns, "ek-api"),
		`{"spec":{"maxReplicas":9,"behavior":{"scaleDown":{"stabilizationWindowSeconds":1}}}}`)
	patch(objectNamed(&networkingv1.NetworkPolicy{}, ns, "ek-postgres"), `{"spec":{"podSelector":{"matchLabels":{"extra":"x"}},"policyTypes":["Ingress","Egress"]}}`)
	if err := k8s.Patch(bg, objectNamed(&monitoringv1.ServiceMonitor{}, ns, "ek-api"), client.RawPatch(types.MergePatchType,
		[]byte(`{"spec":{"sampleLimit":10,"selector":{"matchLabels":{"extra":"x"}}}}`)), client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Patch(bg, objectNamed(&monitoringv1.PrometheusRule{}, ns, "ek-alerts"), client.RawPatch(types.MergePatchType,
		[]byte(`{"spec":{"groups":[]}}`)), client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	patch(objectNamed(&corev1.Service{}, ns, "ek-api"), `{"spec":{"selector":{"extra":"x"}}}`)
	patch(objectNamed(&appsv1.Deployment{}, ns, "ek-redis"), `{"spec":{"template":{"spec":{"containers":[{"name":"redis","image":"redis:evil"}]}}}}`)
	d := want["dep"].(*appsv1.Deployment)
	c := d.Spec.Template.Spec.Containers[0]
	envName := ""
	for _, e := range c.Env {
		if e.Value != "" {
			envName = e.Name
		}
	}
	if envName == "" {
		envName = "ADDED_BY_HAND"
	}
	patch(objectNamed(&appsv1.Deployment{}, ns, "ek-api"), fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":%q,"image":"evil:1","env":[{"name":%q,"value":"x"}]}]}}}}`,
		c.Name, envName))

	eventually(t, "every edit put back", func() error {
		var errs []error
		for what, o := range want {
			cur := o.DeepCopyObject().(client.Object)
			if err := k8s.Get(bg, client.ObjectKeyFromObject(o), cur); err != nil {
				return err
			}
			if got := specJSON(t, cur); got != specs[what] {
				errs = append(errs, fmt.Errorf("%s %s:\n got %s\nwant %s", what, o.GetName(), got, specs[what]))
			}
		}
		return errors.Join(errs...)
	})
	passesWriteNothing(t, ns, "ek")
}

// specJSON is obj's spec (data for other kinds) as JSON, the replicas left out.
func specJSON(t *testing.T, obj client.Object) string {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := u["spec"].(map[string]any)
	delete(spec, "replicas")
	b, _ := json.Marshal(spec)
	return string(b)
}

// testQuietInOtherStates: a stack that is paused, that waits for the user (a missing
// Secret, a failed migration), or that has just moved between configurations (fewer
// replicas, autoscaling off) writes nothing on a resync either.
func testQuietInOtherStates(t *testing.T) {
	t.Run("paused", func(t *testing.T) {
		ns := newNamespace(t)
		createStack(t, newStack(ns, "p"))
		makeReady(t, ns, "p")
		updateStack(t, ns, "p", func(s *tradingv1alpha1.TradingStack) { s.Spec.Paused = true })
		waitCondition(t, ns, "p", tradingv1alpha1.ConditionProgressing, metav1.ConditionFalse, tradingv1alpha1.ReasonPaused)
		assertQuietNoRequeue(t, ns, "p")
	})
	t.Run("missing-secret", func(t *testing.T) {
		ns := newNamespace(t)
		createStack(t, newStack(ns, "m", func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "nope", Key: "dsn"}}
		}))
		waitCondition(t, ns, "m", tradingv1alpha1.ConditionDatabaseReady, metav1.ConditionFalse, tradingv1alpha1.ReasonExternalSecretNotFound)
		assertQuietNoRequeue(t, ns, "m")
	})
	t.Run("failed-migration", func(t *testing.T) {
		ns := newNamespace(t)
		createStack(t, newStack(ns, "f"))
		markStatefulSetReady(t, ns, "f-postgres")
		markDeploymentReady(t, ns, "f-redis")
		job := waitMigrationJob(t, ns, "f", "registry.example.com/tradingd:v1")
		finishJob(t, ns, job.Name, false)
		waitCondition(t, ns, "f", tradingv1alpha1.ConditionMigrationsSucceeded, metav1.ConditionFalse, "")
		assertQuietNoRequeue(t, ns, "f")
	})
	t.Run("fewer-replicas-autoscaling-off", func(t *testing.T) {
		ns := newNamespace(t)
		createStack(t, newStack(ns, "r", func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Redis.Mode = tradingv1alpha1.RedisDisabled
			s.Spec.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 3, MaxReplicas: 5}
		}))
		makeReady(t, ns, "r")
		updateStack(t, ns, "r", func(s *tradingv1alpha1.TradingStack) {
			s.Spec.Runtime.Autoscaling = nil
			s.Spec.Runtime.Replicas = 1
		})
		eventually(t, "PDB and HPA gone", func() error {
			for _, o := range []client.Object{&policyv1.PodDisruptionBudget{}, &autoscalingv2.HorizontalPodAutoscaler{}} {
				if err := k8s.Get(bg, key(ns, "r-api"), o); err == nil {
					return fmt.Errorf("%T still there", o)
				}
			}
			return nil
		})
		markDeploymentReady(t, ns, "r-api")
		waitCondition(t, ns, "r", tradingv1alpha1.ConditionReady, metav1.ConditionTrue, "")
		assertQuiet(t, ns, "r")
	})
}

// assertQuietNoRequeue is assertQuiet for a stack that is not Ready (a requeue is allowed).
func assertQuietNoRequeue(t *testing.T, ns, name string) {
	t.Helper()
	reconcileDirectly(t, ns, name, 1)
	operatorWrites.settle(t, ns)
	before := resourceVersions(t, ns, name)
	mark := operatorWrites.mark()
	reconcileDirectly(t, ns, name, 3)
	for _, w := range operatorWrites.since(mark, ns) {
		t.Errorf("wrote at rest: %s", w)
	}
	if after := resourceVersions(t, ns, name); !maps.Equal(before, after) {
		t.Errorf("passes still write: %v -> %v", before, after)
	}
}
