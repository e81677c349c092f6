package controllers

import (
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
	"github.com/findmy/trading-operator/runtime/jwt"
)

// stackWith returns a stack named "demo" in "prod" after edit, with the defaults the API server
// would have applied (the builders rely on them).
func stackWith(edit func(*tradingv1alpha1.TradingStackSpec)) *tradingv1alpha1.TradingStack {
	s := &tradingv1alpha1.TradingStack{ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "prod"}}
	if edit != nil {
		edit(&s.Spec)
	}
	return s.WithDefaults()
}

// allChildren builds every child of s, as the reconciler would for a fresh stack.
func allChildren(t *testing.T, s *tradingv1alpha1.TradingStack) []client.Object {
	t.Helper()
	creds, err := newPostgresCredentialsSecret(s)
	must(t, err)
	jwtSec, err := newJWTSecret(s)
	must(t, err)
	admin, err := newAdminSecret(s)
	must(t, err)
	cm := desiredRuntimeConfigMap(s)
	objs := []client.Object{
		creds, jwtSec, admin, cm,
		desiredPostgresStatefulSet(s, "hash"), desiredPostgresService(s),
		desiredRedisDeployment(s), desiredRedisService(s),
		desiredMigrationJob(s, s.RuntimeImage(), "managed"),
		desiredAPIDeployment(s, s.RuntimeImage(), configHash(cm, jwtSec, admin, creds)),
		desiredAPIService(s), desiredPDB(s),
		desiredServiceMonitor(s), desiredPrometheusRule(s),
	}
	for _, np := range desiredNetworkPolicies(s) {
		objs = append(objs, np)
	}
	return objs
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNamesLabelsAndTypeMeta(t *testing.T) {
	s := stackWith(nil)
	want := map[string]string{ // kind/name -> component
		"Secret/demo-postgres-credentials":                databaseComponent,
		"Secret/demo-jwt":                                 authComponent,
		"Secret/demo-admin":                               authComponent,
		"ConfigMap/demo-runtime":                          apiComponent,
		"StatefulSet/demo-postgres":                       databaseComponent,
		"Service/demo-postgres":                           databaseComponent,
		"Deployment/demo-redis":                           cacheComponent,
		"Service/demo-redis":                              cacheComponent,
		"Job/demo-migrate-" + imageHash(s.RuntimeImage()): migrationComponent,
		"Deployment/demo-api":                             apiComponent,
		"Service/demo-api":                                apiComponent,
		"PodDisruptionBudget/demo-api":                    apiComponent,
		"ServiceMonitor/demo-api":                         monitoringComponent,
		"PrometheusRule/demo-alerts":                      monitoringComponent,
		"NetworkPolicy/demo-postgres":                     databaseComponent,
		"NetworkPolicy/demo-redis":                        cacheComponent,
	}
	got := map[string]bool{}
	for _, o := range allChildren(t, s) {
		gvk := o.GetObjectKind().GroupVersionKind()
		key := gvk.Kind + "/" + o.GetName()
		got[key] = true
		comp, ok := want[key]
		if !ok {
			t.Errorf("unexpected child %s", key)
			continue
		}
		if gvk.Version == "" || gvk.Kind == "" {
			t.Errorf("%s: TypeMeta not set (%v)", key, gvk)
		}
		if o.GetNamespace() != "prod" {
			t.Errorf("%s: namespace %q", key, o.GetNamespace())
		}
		if len(o.GetOwnerReferences()) != 0 {
			t.Errorf("%s: builders must not set owner references", key)
		}
		l := o.GetLabels()
		for k, v := range map[string]string{
			instanceLabel: "demo", componentLabel: comp, managedByLabel: "trading-operator",
		} {
			if l[k] != v {
				t.Errorf("%s: label %s=%q, want %q", key, k, l[k], v)
			}
		}
		if l[nameLabel] == "" {
			t.Errorf("%s: no %s label", key, nameLabel)
		}
	}
	for key := range want {
		if !got[key] {
			t.Errorf("missing child %s", key)
		}
	}
}

func TestMigrationJobNameFollowsImage(t *testing.T) {
	s := stackWith(nil)
	a := migrationJobName(s, "ghcr.io/findmy/trading-operator:v1")
	b := migrationJobName(s, "ghcr.io/findmy/trading-operator:v2")
	if a == b {
		t.Fatalf("two images, one Job name %q", a)
	}
	if a != migrationJobName(s, "ghcr.io/findmy/trading-operator:v1") {
		t.Fatal("Job name not stable for one image")
	}
	if !strings.HasPrefix(a, "demo-migrate-") || len(a) != len("demo-migrate-")+10 {
		t.Fatalf("Job name %q, want demo-migrate- and 10 hex digits", a)
	}
	job := desiredMigrationJob(s, "img:v1", "managed")
	if job.Annotations[runtimeImageAnnotation] != "img:v1" {
		t.Errorf("runtime image annotation %q", job.Annotations[runtimeImageAnnotation])
	}
}

func TestEmptySpecGetsContractDefaults(t *testing.T) {
	s := stackWith(nil)
	cm := desiredRuntimeConfigMap(s)
	want := map[string]string{
		"SYMBOLS":                      "BTC/USD,ETH/USD,BNB/USD,XRP/USD,ADA/USD",
		"MAX_QUANTITY":                 "1000000",
		"MAX_PRICE":                    "1000000",
		"RATE_LIMIT_LOGIN":             "5",
		"RATE_LIMIT_TRADING":           "30",
		"RATE_LIMIT_DATA":              "60",
		"RATE_LIMIT_GLOBAL_PER_MINUTE": "100",
		"RATE_LIMIT_GLOBAL_PER_DAY":    "1000",
		"CACHE_POSITIONS_TTL":          "30s",
		"CACHE_SUMMARY_TTL":            "10s",
		"ACCESS_TOKEN_TTL":             "60m",
		"REFRESH_TOKEN_TTL":            "720h",
		"DB_MAX_CONNS":                 "30",
		"DB_MIN_CONNS":                 "2",
		"DB_MAX_CONN_LIFETIME":         "1h",
		"DB_HEALTH_CHECK_PERIOD":       "30s",
		"DEMO_USERS":                   "false",
		"LOG_FORMAT":                   "json",
		"LISTEN_ADDR":                  ":8080",
		"ADMIN_ADDR":                   ":9090",
		"REDIS_URL":                    "redis://demo-redis.prod.svc:6379/0",
	}
	for k, v := range want {
		if cm.Data[k] != v {
			t.Errorf("%s=%q, want %q", k, cm.Data[k], v)
		}
	}
	for _, k := range []string{"MAX_DAILY_LOSS", "TRUSTED_PROXIES", "DATABASE_URL", "JWT_KEYS"} {
		if _, ok := cm.Data[k]; ok {
			t.Errorf("%s set in the ConfigMap", k)
		}
	}

	dep := desiredAPIDeployment(s, s.RuntimeImage(), "h")
	if got := ptr.Deref(dep.Spec.Replicas, 0); got != 2 {
		t.Errorf("replicas %d, want 2", got)
	}
	if got := dep.Spec.Template.Spec.Containers[0].Image; got != tradingv1alpha1.DefaultRuntimeImage {
		t.Errorf("image %q, want DefaultRuntimeImage", got)
	}
	sts := desiredPostgresStatefulSet(s, "hash")
	if got := sts.Spec.Template.Spec.Containers[0].Image; got != tradingv1alpha1.DefaultPostgresImage {
		t.Errorf("postgres image %q", got)
	}
	size := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]
	if size.Cmp(resource.MustParse("10Gi")) != 0 {
		t.Errorf("volume size %s, want 10Gi", size.String())
	}
	if desiredHPA(s) != nil {
		t.Error("HPA without autoscaling")
	}
}

func TestRuntimeConfigFromSpec(t *testing.T) {
	s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Runtime.Symbols = []string{"BTC/USD", "SOL/USD"}
		sp.Runtime.MaxDailyLoss = amount("2500.5")
		sp.Runtime.TrustedProxies = []string{"10.0.0.0/8", "192.168.0.0/16"}
		sp.Runtime.RateLimits.Login = ptr.To[int32](0)
		sp.Runtime.DemoUsers = true
		sp.Postgres.Pool.MinConns = ptr.To[int32](0)
	})
	cm := desiredRuntimeConfigMap(s)
	for k, v := range map[string]string{
		"SYMBOLS":          "BTC/USD,SOL/USD",
		"MAX_DAILY_LOSS":   "2500.5",
		"TRUSTED_PROXIES":  "10.0.0.0/8,192.168.0.0/16",
		"RATE_LIMIT_LOGIN": "0", // 0 turns the class off; it must not become the default
		"DEMO_USERS":       "true",
		"DB_MIN_CONNS":     "0",
	} {
		if cm.Data[k] != v {
			t.Errorf("%s=%q, want %q", k, cm.Data[k], v)
		}
	}
}

func envByName(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func secretRef(t *testing.T, e corev1.EnvVar) (string, string) {
	t.Helper()
	if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Fatalf("%s is not from a Secret: %+v", e.Name, e)
	}
	return e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key
}

func TestDatabaseURLSource(t *testing.T) {
	tests := []struct {
		name             string
		edit             func(*tradingv1alpha1.TradingStackSpec)
		secret, key      string
		wantStatefulSets bool
	}{
		{"managed", nil, "demo-postgres-credentials", "dsn", true},
		{"external", func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Postgres.External = &tradingv1alpha1.ExternalPostgres{
				ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "url"},
			}
		}, "corp-db", "url", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := stackWith(tt.edit)
			api := desiredAPIDeployment(s, "img", "h").Spec.Template.Spec.Containers[0]
			job := desiredMigrationJob(s, "img", "managed").Spec.Template.Spec.Containers[0]
			for what, c := range map[string]corev1.Container{"api": api, "job": job} {
				name, key := secretRef(t, envByName(c)["DATABASE_URL"])
				if name != tt.secret || key != tt.key {
					t.Errorf("%s DATABASE_URL from %s/%s, want %s/%s", what, name, key, tt.secret, tt.key)
				}
			}
			hasDBPolicy := false
			for _, np := range desiredNetworkPolicies(s) {
				hasDBPolicy = hasDBPolicy || np.Name == "demo-postgres"
			}
			if hasDBPolicy != tt.wantStatefulSets {
				t.Errorf("postgres NetworkPolicy present=%v, want %v", hasDBPolicy, tt.wantStatefulSets)
			}
		})
	}
}

// An external database's CA bundle reaches both pods that connect to it, the runtime and the
// migration Job, as a read-only file that PGSSLROOTCERT names; without one, neither has it.
func TestExternalPostgresCA(t *testing.T) {
	for _, withCA := range []bool{false, true} {
		s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Postgres = tradingv1alpha1.PostgresSpec{External: &tradingv1alpha1.ExternalPostgres{
				ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "corp-db", Key: "dsn"}}}
			if withCA {
				sp.Postgres.External.CASecretRef = &tradingv1alpha1.SecretKeyReference{Name: "rds-ca", Key: "bundle.pem"}
			}
		})
		for what, pod := range map[string]corev1.PodSpec{
			"runtime":       desiredAPIDeployment(s, "img", "h").Spec.Template.Spec,
			"migration Job": desiredMigrationJob(s, "img", "db").Spec.Template.Spec,
		} {
			env := envByName(pod.Containers[0])
			root, hasRoot := env["PGSSLROOTCERT"]
			var vol *corev1.Volume
			for i, v := range pod.Volumes {
				if v.Secret != nil && v.Secret.SecretName == "rds-ca" {
					vol = &pod.Volumes[i]
				}
			}
			mounted := false
			for _, m := range pod.Containers[0].VolumeMounts {
				mounted = mounted || (vol != nil && m.Name == vol.Name && m.MountPath == "/etc/tradingd/postgres-ca" && m.ReadOnly)
			}
			if !withCA {
				if hasRoot || vol != nil {
					t.Errorf("%s without a CA: PGSSLROOTCERT %v, volume %+v", what, hasRoot, vol)
				}
				continue
			}
			if root.Value != "/etc/tradingd/postgres-ca/ca.crt" {
				t.Errorf("%s: PGSSLROOTCERT %q", what, root.Value)
			}
			if vol == nil || len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != "bundle.pem" || vol.Secret.Items[0].Path != "ca.crt" || !mounted {
				t.Errorf("%s: CA volume %+v mounted %v, want bundle.pem alone as ca.crt, read-only", what, vol, mounted)
			}
		}
	}
}

func TestRedisModes(t *testing.T) {
	tests := []struct {
		name       string
		redis      tradingv1alpha1.RedisSpec
		wantURL    string // in the ConfigMap; "" means absent
		wantPrefix string // REDIS_KEY_PREFIX in the ConfigMap; "" means absent
		password   bool   // REDIS_PASSWORD from the Secret
		wantNetPo  bool
	}{
		{"managed", tradingv1alpha1.RedisSpec{}, "redis://demo-redis.prod.svc:6379/0", "", false, true},
		{"disabled", tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisDisabled}, "", "", false, false},
		{"external", tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380"},
			"redis://cache.corp:6380/0", "prod/demo:", false, false},
		{"external with password", tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			PasswordSecretRef: &tradingv1alpha1.SecretKeyReference{Name: "corp-redis", Key: "pw"}},
			"redis://cache.corp:6380/0", "prod/demo:", true, false},
		{"external over TLS", tradingv1alpha1.RedisSpec{Mode: tradingv1alpha1.RedisExternal, Address: "cache.corp:6380",
			TLS: &tradingv1alpha1.RedisTLS{Enabled: true}},
			"rediss://cache.corp:6380/0", "prod/demo:", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) { sp.Redis = tt.redis })
			got, ok := desiredRuntimeConfigMap(s).Data["REDIS_URL"]
			if got != tt.wantURL || ok != (tt.wantURL != "") {
				t.Errorf("REDIS_URL=%q (present %v), want %q", got, ok, tt.wantURL)
			}
			// An external Redis may serve other stacks: this one's keys carry its name.
			if prefix, ok := desiredRuntimeConfigMap(s).Data["REDIS_KEY_PREFIX"]; prefix != tt.wantPrefix || ok != (tt.wantPrefix != "") {
				t.Errorf("REDIS_KEY_PREFIX=%q (present %v), want %q", prefix, ok, tt.wantPrefix)
			}
			// Several replicas (two by default) without Redis keep no L1: they could not
			// tell each other of a trade. One replica, or Redis, keeps it.
			l1, set := desiredRuntimeConfigMap(s).Data["CACHE_L1"]
			if want := tt.wantURL == ""; set != want || (set && l1 != "false") {
				t.Errorf("CACHE_L1=%q (present %v) with %d replicas and REDIS_URL %q", l1, set, s.Spec.Runtime.Replicas, tt.wantURL)
			}
			one := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) { sp.Redis = tt.redis; sp.Runtime.Replicas = 1 })
			if _, set := desiredRuntimeConfigMap(one).Data["CACHE_L1"]; set {
				t.Errorf("CACHE_L1 set for a single replica (%s)", tt.name)
			}
			if strings.Contains(got, "@") {
				t.Errorf("a password in the ConfigMap's REDIS_URL: %q", got)
			}
			// Without a CA Secret the image's public CAs verify the server: no file, no volume.
			if f, ok := desiredRuntimeConfigMap(s).Data["REDIS_CA_FILE"]; ok {
				t.Errorf("REDIS_CA_FILE=%q without spec.redis.tls.caSecretRef", f)
			}
			if n := len(desiredAPIDeployment(s, "img", "h").Spec.Template.Spec.Volumes); n != 1 {
				t.Errorf("%d volumes, want only tmp", n)
			}
			// The password goes as it is (REDIS_PASSWORD), never into a URL, where its "/" or
			// "@" would break it; the ConfigMap's REDIS_URL is not overridden.
			env := envByName(desiredAPIDeployment(s, "img", "h").Spec.Template.Spec.Containers[0])
			if u, ok := env["REDIS_URL"]; ok {
				t.Errorf("env REDIS_URL=%q overrides the ConfigMap's", u.Value)
			}
			if _, ok := env["REDIS_PASSWORD"]; ok != tt.password {
				t.Errorf("env REDIS_PASSWORD present %v, want %v", ok, tt.password)
			}
			if tt.password {
				if name, key := secretRef(t, env["REDIS_PASSWORD"]); name != "corp-redis" || key != "pw" {
					t.Errorf("REDIS_PASSWORD from %s/%s", name, key)
				}
			}
			hasPolicy := false
			for _, np := range desiredNetworkPolicies(s) {
				hasPolicy = hasPolicy || np.Name == "demo-redis"
			}
			if hasPolicy != tt.wantNetPo {
				t.Errorf("redis NetworkPolicy present=%v, want %v", hasPolicy, tt.wantNetPo)
			}
		})
	}
}

// The managed Redis keeps within its container's memory limit: it evicts (maxmemory, a
// quarter below the limit, and an eviction policy) instead of growing until the kernel
// kills it, which lost every replica's L2 and the shared rate limits at once. Without a
// memory limit there is nothing to keep within.
func TestRedisMaxMemory(t *testing.T) {
	tests := []struct {
		name      string
		resources corev1.ResourceRequirements
		want      string // --maxmemory in bytes; "" means absent
	}{
		{"default 256Mi", corev1.ResourceRequirements{}, "201326592"},
		{"limit 1Gi", corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}, "805306368"},
		{"limit 500M", corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("500M")}}, "375000000"},
		{"requests without a limit", corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) { sp.Redis.Resources = tt.resources })
			args := desiredRedisDeployment(s).Spec.Template.Spec.Containers[0].Args
			if len(args) == 0 || args[0] != "redis-server" || len(args)%2 != 1 {
				t.Fatalf("args %q, want redis-server and --option value pairs", args)
			}
			flags := map[string]string{}
			for i := 1; i < len(args); i += 2 {
				flags[args[i]] = args[i+1]
			}
			if got, ok := flags["--maxmemory"]; got != tt.want || ok != (tt.want != "") {
				t.Errorf("--maxmemory %q (present %v), want %q; args %q", got, ok, tt.want, args)
			}
			if p := flags["--maxmemory-policy"]; p != "volatile-lru" {
				t.Errorf("--maxmemory-policy %q, want volatile-lru; args %q", p, args)
			}
			// Still a cache without persistence, reachable from the runtime's pods.
			for k, v := range map[string]string{"--save": "", "--appendonly": "no", "--protected-mode": "no"} {
				if got, ok := flags[k]; !ok || got != v {
					t.Errorf("%s %q (present %v), want %q", k, got, ok, v)
				}
			}
		})
	}
}

func TestReplicasPDBAndHPA(t *testing.T) {
	tests := []struct {
		name         string
		replicas     int32
		autoscaling  *tradingv1alpha1.AutoscalingSpec
		wantReplicas *int32
		wantPDB      bool
		wantHPA      bool
	}{
		{"one replica", 1, nil, ptr.To[int32](1), false, false},
		{"three replicas", 3, nil, ptr.To[int32](3), true, false},
		{"autoscaling from 2", 1, &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 6}, nil, true, true},
		{"autoscaling from 1", 3, &tradingv1alpha1.AutoscalingSpec{MinReplicas: 1, MaxReplicas: 6}, nil, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
				sp.Runtime.Replicas = tt.replicas
				sp.Runtime.Autoscaling = tt.autoscaling
			})
			dep := desiredAPIDeployment(s, "img", "h")
			if (dep.Spec.Replicas == nil) != (tt.wantReplicas == nil) ||
				(dep.Spec.Replicas != nil && *dep.Spec.Replicas != *tt.wantReplicas) {
				t.Errorf("replicas %v, want %v", dep.Spec.Replicas, tt.wantReplicas)
			}
			pdb := desiredPDB(s)
			if (pdb != nil) != tt.wantPDB {
				t.Errorf("PDB present=%v, want %v", pdb != nil, tt.wantPDB)
			}
			if pdb != nil && pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PDB maxUnavailable %v", pdb.Spec.MaxUnavailable)
			}
			// Pods that are not ready (all of them while the database is down) must not
			// block a node drain: the default policy refuses to evict them then.
			if pdb != nil && ptr.Deref(pdb.Spec.UnhealthyPodEvictionPolicy, "") != policyv1.AlwaysAllow {
				t.Errorf("PDB unhealthyPodEvictionPolicy %v, want AlwaysAllow", pdb.Spec.UnhealthyPodEvictionPolicy)
			}
			hpa := desiredHPA(s)
			if (hpa != nil) != tt.wantHPA {
				t.Fatalf("HPA present=%v, want %v", hpa != nil, tt.wantHPA)
			}
			if hpa != nil {
				if hpa.Spec.ScaleTargetRef.Name != "demo-api" || hpa.Spec.MaxReplicas != 6 ||
					*hpa.Spec.MinReplicas != tt.autoscaling.MinReplicas ||
					*hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 80 {
					t.Errorf("HPA spec %+v", hpa.Spec)
				}
			}
		})
	}
}

func TestRetentionPolicy(t *testing.T) {
	for _, tt := range []struct {
		retain *bool
		want   appsv1.PersistentVolumeClaimRetentionPolicyType
	}{
		{nil, appsv1.RetainPersistentVolumeClaimRetentionPolicyType},
		{ptr.To(true), appsv1.RetainPersistentVolumeClaimRetentionPolicyType},
		{ptr.To(false), appsv1.DeletePersistentVolumeClaimRetentionPolicyType},
	} {
		s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) { sp.RetainDataOnDelete = tt.retain })
		p := desiredPostgresStatefulSet(s, "hash").Spec.PersistentVolumeClaimRetentionPolicy
		if p.WhenDeleted != tt.want || p.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			t.Errorf("retain=%v: policy %+v, want WhenDeleted %s", tt.retain, p, tt.want)
		}
	}
}

func TestPostgresStatefulSet(t *testing.T) {
	s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Postgres.Managed = &tradingv1alpha1.ManagedPostgres{
			Storage: tradingv1alpha1.StorageSpec{Size: "50Gi", StorageClassName: "fast"},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("2"),
			}},
		}
	})
	sts := desiredPostgresStatefulSet(s, "hash")
	if *sts.Spec.Replicas != 1 || sts.Spec.ServiceName != "demo-postgres" {
		t.Errorf("replicas %d serviceName %q", *sts.Spec.Replicas, sts.Spec.ServiceName)
	}
	claim := sts.Spec.VolumeClaimTemplates[0]
	if q := claim.Spec.Resources.Requests[corev1.ResourceStorage]; q.String() != "50Gi" {
		t.Errorf("size %s", q.String())
	}
	if ptr.Deref(claim.Spec.StorageClassName, "") != "fast" {
		t.Errorf("storage class %v", claim.Spec.StorageClassName)
	}
	c := sts.Spec.Template.Spec.Containers[0]
	if c.Resources.Requests.Cpu().String() != "2" {
		t.Errorf("user resources not used: %v", c.Resources)
	}
	env := envByName(c)
	if name, key := secretRef(t, env["POSTGRES_PASSWORD"]); name != "demo-postgres-credentials" || key != "password" {
		t.Errorf("POSTGRES_PASSWORD from %s/%s", name, key)
	}
	if pgdata := env["PGDATA"].Value; !strings.HasPrefix(pgdata, postgresDataDir+"/") {
		t.Errorf("PGDATA %q is not a subdirectory of the volume", pgdata)
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.StartupProbe == nil {
		t.Error("postgres probes missing")
	}
	if !strings.Contains(strings.Join(c.ReadinessProbe.Exec.Command, " "), "pg_isready") {
		t.Errorf("readiness probe %v", c.ReadinessProbe.Exec.Command)
	}
	psc := sts.Spec.Template.Spec.SecurityContext
	if *psc.RunAsUser != 999 || *psc.FSGroup != 999 || !*psc.RunAsNonRoot {
		t.Errorf("pod security context %+v", psc)
	}
	if sel := sts.Spec.Selector.MatchLabels; sel[componentLabel] != databaseComponent || sel[instanceLabel] != "demo" {
		t.Errorf("selector %v", sel)
	}
}

// TestRestrictedSecurity checks every container the operator creates against the restricted
// Pod Security Standard and for resource requests.
func TestRestrictedSecurity(t *testing.T) {
	s := stackWith(nil)
	pods := map[string]corev1.PodSpec{
		"api":      desiredAPIDeployment(s, "img", "h").Spec.Template.Spec,
		"migrate":  desiredMigrationJob(s, "img", "managed").Spec.Template.Spec,
		"postgres": desiredPostgresStatefulSet(s, "hash").Spec.Template.Spec,
		"redis":    desiredRedisDeployment(s).Spec.Template.Spec,
	}
	for name, pod := range pods {
		if pod.SecurityContext == nil || !ptr.Deref(pod.SecurityContext.RunAsNonRoot, false) ||
			ptr.Deref(pod.SecurityContext.RunAsUser, 0) == 0 {
			t.Errorf("%s: pod not non-root: %+v", name, pod.SecurityContext)
		}
		if ptr.Deref(pod.AutomountServiceAccountToken, true) {
			t.Errorf("%s: service account token mounted", name)
		}
		for _, c := range pod.Containers {
			sc := c.SecurityContext
			if sc == nil || ptr.Deref(sc.AllowPrivilegeEscalation, true) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) ||
				sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" ||
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s/%s: security context %+v", name, c.Name, sc)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s/%s: no resource requests", name, c.Name)
			}
		}
	}
}

func TestAPIDeployment(t *testing.T) {
	s := stackWith(nil)
	dep := desiredAPIDeployment(s, "ghcr.io/findmy/trading-operator:v9", "abc123")
	if dep.Spec.Template.Annotations[configHashAnnotation] != "abc123" {
		t.Errorf("config hash annotation %v", dep.Spec.Template.Annotations)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/findmy/trading-operator:v9" || strings.Join(c.Command, " ") != "/tradingd serve" {
		t.Errorf("image %q command %v", c.Image, c.Command)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["http"] != 8080 || ports["metrics"] != 9090 {
		t.Errorf("ports %v", ports)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.ReadinessProbe.HTTPGet.Port.String() != "metrics" {
		t.Errorf("probes %+v %+v", c.LivenessProbe.HTTPGet, c.ReadinessProbe.HTTPGet)
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef.Name != "demo-runtime" {
		t.Errorf("envFrom %+v", c.EnvFrom)
	}
	env := envByName(c)
	for v, want := range map[string][2]string{
		"JWT_KEYS":                 {"demo-jwt", "keys"},
		"BOOTSTRAP_ADMIN_PASSWORD": {"demo-admin", "password"},
	} {
		if name, key := secretRef(t, env[v]); name != want[0] || key != want[1] {
			t.Errorf("%s from %s/%s, want %v", v, name, key, want)
		}
	}
	// SIGTERM makes tradingd stop accepting at once, while kube-proxy on every node and the
	// ingress controllers still send new connections to the pod until they see it leave the
	// EndpointSlice: a preStop sleep holds SIGTERM back until they have, and the whole of it
	// (sleep, SHUTDOWN_GRACE 20s, closing the pool 3s) fits the termination grace period.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil ||
		c.Lifecycle.PreStop.Sleep.Seconds < 5 {
		t.Errorf("preStop %+v, want a sleep of at least 5s before SIGTERM", c.Lifecycle)
	} else if grace := *dep.Spec.Template.Spec.TerminationGracePeriodSeconds; c.Lifecycle.PreStop.Sleep.Seconds+20+3 > grace {
		t.Errorf("preStop sleep %ds + drain 20s + pool 3s exceed terminationGracePeriodSeconds %d", c.Lifecycle.PreStop.Sleep.Seconds, grace)
	}
	svc := desiredAPIService(s)
	if len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[1].Name != "metrics" {
		t.Errorf("service ports %+v", svc.Spec.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %s=%s does not match the pods", k, v)
		}
	}
}

func TestGeneratedSecrets(t *testing.T) {
	s := stackWith(nil)
	jwtA, err := newJWTSecret(s)
	must(t, err)
	jwtB, err := newJWTSecret(s)
	must(t, err)
	keys := string(jwtA.Data["keys"])
	if keys == string(jwtB.Data["keys"]) {
		t.Fatal("two JWT Secrets with the same key")
	}
	if _, err := jwt.ParseKeys(keys); err != nil {
		t.Fatalf("tradingd rejects the generated JWT_KEYS: %v", err)
	}

	creds, err := newPostgresCredentialsSecret(s)
	must(t, err)
	u, err := url.Parse(string(creds.Data["dsn"]))
	must(t, err)
	pw, _ := u.User.Password()
	if u.User.Username() != string(creds.Data["user"]) || pw != string(creds.Data["password"]) ||
		u.Host != "demo-postgres.prod.svc:5432" || u.Path != "/trading" {
		t.Errorf("dsn %q does not match user/password/host", creds.Data["dsn"])
	}
	if len(pw) < 32 {
		t.Errorf("password of %d characters", len(pw))
	}
	admin, err := newAdminSecret(s)
	must(t, err)
	if len(admin.Data["password"]) < 24 {
		t.Errorf("admin password %q too short", admin.Data["password"])
	}
}

func TestConfigHash(t *testing.T) {
	s := stackWith(nil)
	cm := desiredRuntimeConfigMap(s)
	jwtSec, err := newJWTSecret(s)
	must(t, err)
	admin, err := newAdminSecret(s)
	must(t, err)
	base := configHash(cm, jwtSec, admin)

	if configHash(desiredRuntimeConfigMap(s), jwtSec.DeepCopy(), admin.DeepCopy()) != base {
		t.Error("hash changed with nothing changed")
	}
	if configHash(cm, admin, jwtSec) != base {
		t.Error("hash depends on the order of the Secrets")
	}
	labelled := jwtSec.DeepCopy()
	labelled.Labels["extra"] = "x"
	labelled.ResourceVersion = "42"
	if configHash(cm, labelled, admin) != base {
		t.Error("hash changed with metadata only")
	}

	rotated := admin.DeepCopy()
	rotated.Data["password"] = []byte("something-else")
	if configHash(cm, jwtSec, rotated) == base {
		t.Error("hash unchanged after a secret changed")
	}
	other := desiredRuntimeConfigMap(stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Runtime.Limits.MaxPrice = amount("500")
	}))
	if configHash(other, jwtSec, admin) == base {
		t.Error("hash unchanged after a setting changed")
	}
	if configHash(cm, jwtSec) == base {
		t.Error("hash unchanged after a secret went away")
	}
}

func TestMonitoring(t *testing.T) {
	s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Monitoring.ServiceMonitor.Labels = map[string]string{"release": "prom"}
		sp.Monitoring.ServiceMonitor.Interval = "15s"
		sp.Runtime.MaxDailyLoss = amount("1000")
	})
	sm := desiredServiceMonitor(s)
	if sm.Labels["release"] != "prom" || sm.Labels[instanceLabel] != "demo" {
		t.Errorf("labels %v", sm.Labels)
	}
	ep := sm.Spec.Endpoints[0]
	if ep.Port != "metrics" || ep.Path != "/metrics" || ep.Interval != "15s" {
		t.Errorf("endpoint %+v", ep)
	}
	// job="tradingd" on every runtime series, from the Service's name label: what the
	// cluster-wide alerts of config/prometheus select, so that another application's
	// Service that happens to end in -api is not taken for a trading runtime.
	if sm.Spec.JobLabel != nameLabel || desiredAPIService(s).Labels[nameLabel] != tradingdApp {
		t.Errorf("jobLabel %q (Service labels %v), want %s=%s", sm.Spec.JobLabel, desiredAPIService(s).Labels, nameLabel, tradingdApp)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if desiredAPIService(s).Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not match the Service", k, v)
		}
	}
	rule := desiredPrometheusRule(s)
	alerts := map[string]bool{}
	for _, r := range rule.Spec.Groups[0].Rules {
		alerts[r.Alert] = true
		if !strings.Contains(r.Expr.String(), `service="demo-api"`) {
			t.Errorf("%s not scoped to the stack: %s", r.Alert, r.Expr.String())
		}
	}
	for _, a := range []string{"TradingAPIHighErrorRate", "TradingAPIHighLatency", "TradingDatabaseUnavailable",
		"TradingPendingOrdersPiling", "TradingDailyLossNearLimit"} {
		if !alerts[a] {
			t.Errorf("alert %s missing", a)
		}
	}

	// Without the operator's ServiceMonitor nothing produces up{service="demo-api"}: an
	// absent() of it would page TradingAPIDown (critical) for as long as the stack lives.
	unscraped := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Monitoring.ServiceMonitor.Enabled = ptr.To(false)
	})
	for _, r := range desiredPrometheusRule(unscraped).Spec.Groups[0].Rules {
		if strings.Contains(r.Expr.String(), "absent(") {
			t.Errorf("%s fires on absent series although no ServiceMonitor makes them: %s", r.Alert, r.Expr.String())
		}
	}

	off := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
		sp.Monitoring.ServiceMonitor.Enabled = ptr.To(false)
		sp.Monitoring.PrometheusRule.Enabled = ptr.To(false)
	})
	if desiredServiceMonitor(off) != nil || desiredPrometheusRule(off) != nil {
		t.Error("monitoring objects built although disabled")
	}
}

func TestNetworkPolicyPeers(t *testing.T) {
	s := stackWith(nil)
	for _, np := range desiredNetworkPolicies(s) {
		from := map[string]bool{}
		for _, peer := range np.Spec.Ingress[0].From {
			if peer.PodSelector.MatchLabels[instanceLabel] != "demo" || peer.NamespaceSelector != nil {
				t.Errorf("%s admits pods beyond the stack: %+v", np.Name, peer)
			}
			from[peer.PodSelector.MatchLabels[componentLabel]] = true
		}
		port := np.Spec.Ingress[0].Ports[0].Port.IntValue()
		switch np.Name {
		case "demo-postgres":
			if !from[apiComponent] || !from[migrationComponent] || len(from) != 2 || port != 5432 {
				t.Errorf("postgres policy from %v port %d", from, port)
			}
		case "demo-redis":
			if !from[apiComponent] || len(from) != 1 || port != 6379 {
				t.Errorf("redis policy from %v port %d", from, port)
			}
		default:
			t.Errorf("unexpected policy %s", np.Name)
		}
	}

	// The selectors match the operator's own pods, and not another chart's pod that carries
	// the same instance and component labels.
	api := desiredAPIDeployment(s, "img", "h").Spec.Template.Labels
	migration := desiredMigrationJob(s, "img", "db").Spec.Template.Labels
	postgresPods := desiredPostgresStatefulSet(s, "h").Spec.Template.Labels
	redisPods := desiredRedisDeployment(s).Spec.Template.Labels
	impostor := map[string]string{instanceLabel: "demo", componentLabel: apiComponent}
	for _, np := range desiredNetworkPolicies(s) {
		target := postgresPods
		admitted := []map[string]string{api, migration}
		if np.Name == "demo-redis" {
			target, admitted = redisPods, []map[string]string{api}
		}
		if !labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(target)) {
			t.Errorf("%s does not select its pods %v", np.Name, target)
		}
		matches := func(pod map[string]string) bool {
			for _, peer := range np.Spec.Ingress[0].From {
				if labels.SelectorFromSet(peer.PodSelector.MatchLabels).Matches(labels.Set(pod)) {
					return true
				}
			}
			return false
		}
		for _, pod := range admitted {
			if !matches(pod) {
				t.Errorf("%s does not admit %v", np.Name, pod)
			}
		}
		if matches(impostor) {
			t.Errorf("%s admits a pod with only the instance and component labels", np.Name)
		}
	}
}

// TestAlertsLinkTheRunbook: every alert of NAME-alerts points at a section of docs/runbook.md
// that exists (a heading whose lower-cased text is the alert's name).
func TestAlertsLinkTheRunbook(t *testing.T) {
	runbook, err := os.ReadFile("../docs/runbook.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(runbook), "\n") {
		if h, ok := strings.CutPrefix(line, "### "); ok {
			anchors[strings.ToLower(strings.TrimSpace(h))] = true
		}
	}
	for _, r := range desiredPrometheusRule(stackWith(nil)).Spec.Groups[0].Rules {
		u := r.Annotations["runbook_url"]
		anchor, ok := strings.CutPrefix(u, runbookBaseURL)
		if !ok || !anchors[anchor] {
			t.Errorf("%s: runbook_url %q has no section in docs/runbook.md", r.Alert, u)
		}
	}
}

// The database pod syncs the role's password on every start (TestSyncPasswordHook runs the
// hook), and its template carries the credentials' hash, so a regenerated or edited Secret
// restarts it and the new password reaches the database.
func TestPostgresFollowsItsCredentials(t *testing.T) {
	s := stackWith(nil)
	secret := func(password string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: postgresCredentialsSecretName(s)},
			Data: map[string][]byte{postgresPasswordKey: []byte(password)}}
	}
	a := desiredPostgresStatefulSet(s, configHash(nil, secret("one")))
	b := desiredPostgresStatefulSet(s, configHash(nil, secret("two")))
	if a.Spec.Template.Annotations[configHashAnnotation] == b.Spec.Template.Annotations[configHashAnnotation] {
		t.Error("a new password does not change the database pod's template")
	}
	c := a.Spec.Template.Spec.Containers[0]
	if c.Lifecycle == nil || c.Lifecycle.PostStart == nil || c.Lifecycle.PostStart.Exec == nil ||
		!slices.Equal(c.Lifecycle.PostStart.Exec.Command, syncPassword) {
		t.Errorf("postStart %+v, want the password sync", c.Lifecycle)
	}
}

// The database a migration ran against is named by the server and database of the DSN, not
// its password: a rotated password is the same database, another host is not.
func TestMigrationDatabase(t *testing.T) {
	id := func(dsn string) string {
		s := stackWith(func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Postgres.External = &tradingv1alpha1.ExternalPostgres{ConnectionSecretRef: tradingv1alpha1.SecretKeyReference{Name: "db", Key: "dsn"}}
		})
		p := &pass{stack: s, spec: s.WithDefaults(), runtimeSecrets: []*corev1.Secret{{
			ObjectMeta: metav1.ObjectMeta{Name: "db"}, Data: map[string][]byte{"dsn": []byte(dsn)},
		}}}
		return migrationDatabase(p)
	}
	a := id("postgres://app:one@db.example.com:5432/trading")
	if b := id("postgres://app:two@db.example.com:5432/trading?sslmode=require"); a != b {
		t.Errorf("a new password is another database: %s vs %s", a, b)
	}
	if c := id("host=db2.example.com port=5432 dbname=trading user=app password=one"); a == c {
		t.Errorf("another host is the same database: %s", c)
	}
	if !strings.HasPrefix(a, "external:db/dsn:") || strings.Contains(a, "one") {
		t.Errorf("id %q", a)
	}
	if m := migrationDatabase(&pass{stack: stackWith(nil), spec: stackWith(nil).WithDefaults()}); m != "managed" {
		t.Errorf("managed database id %q", m)
	}
}

// The managed database takes 100 connections: the defaults (2 replicas, 30 each, 3 pods during
// a rollout) fit; 4 replicas, or autoscaling to 5, do not, and the warning says what fits.
func TestPoolsWarning(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*tradingv1alpha1.TradingStackSpec)
		want string // "" for no warning
	}{
		{"defaults", func(*tradingv1alpha1.TradingStackSpec) {}, ""},
		{"three replicas", func(sp *tradingv1alpha1.TradingStackSpec) { sp.Runtime.Replicas = 3 }, "may open 122 connections (4 pods at most"},
		{"three replicas, small pools", func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Runtime.Replicas = 3
			sp.Postgres.Pool.MaxConns = 24
		}, ""},
		{"autoscaling to 5", func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 5}
		}, "set maxConns to 16 or less"},
		{"autoscaling to 100", func(sp *tradingv1alpha1.TradingStackSpec) {
			sp.Runtime.Autoscaling = &tradingv1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 100}
			sp.Postgres.Pool.MaxConns = 1
		}, "at most 98 pods (97 replicas), or an external database"},
	} {
		got := poolsWarning(stackWith(tt.edit))
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
