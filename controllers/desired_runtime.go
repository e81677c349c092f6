package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// tradingdBinary is where the operator image (the default runtime image) holds tradingd.
const tradingdBinary = "/tradingd"

// desiredRuntimeConfigMap is NAME-runtime: every non-secret setting of tradingd under the
// environment names of its contract, loaded with envFrom. Unset optional settings are left
// out, so tradingd's own defaults apply.
func desiredRuntimeConfigMap(s *tradingv1alpha1.TradingStack) *corev1.ConfigMap {
	r := s.Spec.Runtime
	p := s.Spec.Postgres.Pool
	i32 := func(v *int32, def int32) string {
		if v == nil {
			return strconv.Itoa(int(def))
		}
		return strconv.Itoa(int(*v))
	}
	data := map[string]string{
		"SYMBOLS":                      strings.Join(r.Symbols, ","),
		"MAX_QUANTITY":                 tradingv1alpha1.Amount(r.Limits.MaxQuantity),
		"MAX_PRICE":                    tradingv1alpha1.Amount(r.Limits.MaxPrice),
		"RATE_LIMIT_LOGIN":             i32(r.RateLimits.Login, tradingv1alpha1.DefaultRateLimitLogin),
		"RATE_LIMIT_TRADING":           i32(r.RateLimits.Trading, tradingv1alpha1.DefaultRateLimitTrading),
		"RATE_LIMIT_DATA":              i32(r.RateLimits.Data, tradingv1alpha1.DefaultRateLimitData),
		"RATE_LIMIT_GLOBAL_PER_MINUTE": i32(r.RateLimits.GlobalPerMinute, tradingv1alpha1.DefaultRateLimitGlobalPerMin),
		"RATE_LIMIT_GLOBAL_PER_DAY":    i32(r.RateLimits.GlobalPerDay, tradingv1alpha1.DefaultRateLimitGlobalPerDay),
		"CACHE_POSITIONS_TTL":          r.Cache.PositionsTTL,
		"CACHE_SUMMARY_TTL":            r.Cache.SummaryTTL,
		"ACCESS_TOKEN_TTL":             r.Auth.AccessTokenTTL,
		"REFRESH_TOKEN_TTL":            r.Auth.RefreshTokenTTL,
		"DB_MAX_CONNS":                 strconv.Itoa(int(p.MaxConns)),
		"DB_MIN_CONNS":                 i32(p.MinConns, tradingv1alpha1.DefaultPoolMinConns),
		"DB_MAX_CONN_LIFETIME":         p.MaxConnLifetime,
		"DB_HEALTH_CHECK_PERIOD":       p.HealthCheckPeriod,
		"DEMO_USERS":                   strconv.FormatBool(r.DemoUsers),
		"LOG_FORMAT":                   "json",
		"LISTEN_ADDR":                  fmt.Sprintf(":%d", httpPort),
		"ADMIN_ADDR":                   fmt.Sprintf(":%d", metricsPort),
	}
	if loss := tradingv1alpha1.Amount(r.MaxDailyLoss); loss != "" {
		data["MAX_DAILY_LOSS"] = loss
	}
	if len(r.TrustedProxies) > 0 {
		data["TRUSTED_PROXIES"] = strings.Join(r.TrustedProxies, ",")
	}
	if u := redisURL(s); u != "" {
		data["REDIS_URL"] = u
		if s.Spec.Redis.Mode == tradingv1alpha1.RedisExternal {
			// An external Redis may serve several stacks: each keeps its keys and its
			// invalidation channel under its own name, so that they share neither the login
			// limit of a client IP nor each other's invalidations. A managed Redis serves one.
			data["REDIS_KEY_PREFIX"] = redisKeyPrefix(s)
			if redisCASecretRef(s) != nil {
				data["REDIS_CA_FILE"] = redisCADir + "/" + caFile
			}
		}
	} else if severalReplicas(s) {
		// Without Redis the replicas cannot tell each other of a trade: each caching on its
		// own, one would serve a trader's positions from before a trade approved on another
		// (api.md: read-your-writes, whichever replica answers). They read the database.
		data["CACHE_L1"] = "false"
	}
	// Drop values an undefaulted spec left empty, so tradingd's defaults apply to them.
	for k, v := range data {
		if v == "" {
			delete(data, k)
		}
	}
	return &corev1.ConfigMap{
		TypeMeta:   typeMeta("v1", "ConfigMap"),
		ObjectMeta: objectMeta(s, runtimeConfigMapName(s), tradingdApp, apiComponent),
		Data:       data,
	}
}

// configHash is a stable sha256 (hex) over the ConfigMap's data and each Secret's name and
// data, in sorted order. It goes into the runtime's pod template, so a changed setting or a
// rotated secret rolls the pods, and an unchanged one leaves the template as it is. Nil
// arguments are skipped.
func configHash(cm *corev1.ConfigMap, secrets ...*corev1.Secret) string {
	h := sha256.New()
	write := func(parts ...string) {
		for _, p := range parts {
			// Length-prefixed, so that no two different inputs hash the same bytes.
			fmt.Fprintf(h, "%d:%s;", len(p), p)
		}
	}
	if cm != nil {
		write("configmap", cm.Name)
		for _, k := range slices.Sorted(maps.Keys(cm.Data)) {
			write(k, cm.Data[k])
		}
		for _, k := range slices.Sorted(maps.Keys(cm.BinaryData)) {
			write(k, string(cm.BinaryData[k]))
		}
	}
	sorted := make([]*corev1.Secret, 0, len(secrets))
	for _, sec := range secrets {
		if sec != nil {
			sorted = append(sorted, sec)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, sec := range sorted {
		write("secret", sec.Name)
		for _, k := range slices.Sorted(maps.Keys(sec.Data)) {
			write(k, string(sec.Data[k]))
		}
		for _, k := range slices.Sorted(maps.Keys(sec.StringData)) {
			write(k, sec.StringData[k])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// caVolume is one key of a user's Secret (a CA bundle) as the file caFile in dir, read-only.
func caVolume(name, dir string, ref tradingv1alpha1.SecretKeyReference) (corev1.Volume, corev1.VolumeMount) {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  ref.Name,
			Items:       []corev1.KeyToPath{{Key: ref.Key, Path: caFile}},
			DefaultMode: ptr.To[int32](0o444),
		}}},
		corev1.VolumeMount{Name: name, MountPath: dir, ReadOnly: true}
}

// withPostgresCA adds the external database's CA bundle to a pod that connects to it (the
// runtime, the migration Job): the file, and PGSSLROOTCERT, which pgx reads as the DSN's
// sslrootcert unless the DSN names one itself.
func withPostgresCA(s *tradingv1alpha1.TradingStack, env []corev1.EnvVar, volumes []corev1.Volume, mounts []corev1.VolumeMount) ([]corev1.EnvVar, []corev1.Volume, []corev1.VolumeMount) {
	ref := postgresCASecretRef(s)
	if ref == nil {
		return env, volumes, mounts
	}
	v, m := caVolume("postgres-ca", postgresCADir, *ref)
	return append(env, corev1.EnvVar{Name: "PGSSLROOTCERT", Value: postgresCADir + "/" + caFile}), append(volumes, v), append(mounts, m)
}

// severalReplicas reports whether the runtime may run as more than one pod (replicas above
// one, or autoscaling): without Redis they cannot tell each other of a trade, so they keep no
// cache (CACHE_L1=false), and CacheReady says so.
func severalReplicas(s *tradingv1alpha1.TradingStack) bool {
	r := s.Spec.Runtime
	return r.Replicas > 1 || r.Autoscaling != nil
}

// migrateContainer is the migration Job's container, whose termination message reports the
// schema version (appliedSchemaVersion).
const migrateContainer = "migrate"

// runtimeContainer is the container of the runtime's pods (NAME-api).
const runtimeContainer = "tradingd"

// desiredMigrationJob is NAME-migrate-HASH: `tradingd migrate` with image against the stack's
// database. It never restarts in place (failed pods stay for their logs) and gives up after a
// few attempts or ten minutes; its last log lines become the termination message, so a failure
// reason can be read from the pod. ttlSecondsAfterFinished is left unset: the reconciler reads
// the finished Job to know the image migrated.
func desiredMigrationJob(s *tradingv1alpha1.TradingStack, image, database string) *batchv1.Job {
	meta := objectMeta(s, migrationJobName(s, image), tradingdApp, migrationComponent)
	meta.Annotations = map[string]string{runtimeImageAnnotation: image, databaseAnnotation: database}
	env, volumes, mounts := withPostgresCA(s,
		[]corev1.EnvVar{databaseURLEnv(s), {Name: "LOG_FORMAT", Value: "json"}},
		[]corev1.Volume{emptyDirVolume("tmp")}, []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}})
	return &batchv1.Job{
		TypeMeta:   typeMeta("batch/v1", "Job"),
		ObjectMeta: meta,
		Spec: batchv1.JobSpec{
			BackoffLimit:          ptr.To[int32](3),
			ActiveDeadlineSeconds: ptr.To[int64](600),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labelsFor(s, tradingdApp, migrationComponent)},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext:              podSecurityContext(runtimeUID),
					Containers: []corev1.Container{{
						Name:                     migrateContainer,
						Image:                    image,
						ImagePullPolicy:          corev1.PullIfNotPresent,
						Command:                  []string{tradingdBinary, "migrate"},
						Env:                      env,
						Resources:                defaultMigrationResources(),
						SecurityContext:          containerSecurityContext(),
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
						VolumeMounts:             mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// preStopSleep is how long a terminating runtime pod keeps serving before its SIGTERM.
const preStopSleep = 5

// desiredAPIDeployment is NAME-api: `tradingd serve` with image (the last image whose
// migration succeeded), settings from NAME-runtime, secrets from their Secrets, and
// configHash on the pod template. With autoscaling, replicas is left unset: the
// HorizontalPodAutoscaler decides it (reconcileRuntime sets minReplicas for the creation).
func desiredAPIDeployment(s *tradingv1alpha1.TradingStack, image string, configHash string) *appsv1.Deployment {
	r := s.Spec.Runtime
	var replicas *int32
	if r.Autoscaling == nil {
		replicas = ptr.To(r.Replicas)
		if r.Replicas == 0 {
			replicas = ptr.To(tradingv1alpha1.DefaultReplicas)
		}
	}
	env := []corev1.EnvVar{
		databaseURLEnv(s),
		secretEnv("JWT_KEYS", jwtSecretName(s), jwtKeysKey),
		secretEnv("BOOTSTRAP_ADMIN_PASSWORD", adminSecretName(s), adminPasswordKey),
	}
	// The Redis password comes from its Secret, never through the ConfigMap; tradingd takes
	// it as it is (REDIS_PASSWORD), where inside REDIS_URL a "/", "?", "#", "%" or "@" of it
	// would have to be percent-encoded, which a variable taken from a Secret cannot be.
	if rs := s.Spec.Redis; rs.Mode == tradingv1alpha1.RedisExternal && rs.PasswordSecretRef != nil {
		env = append(env, secretEnv("REDIS_PASSWORD", rs.PasswordSecretRef.Name, rs.PasswordSecretRef.Key))
	}
	mounts := []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}}
	volumes := []corev1.Volume{emptyDirVolume("tmp")}
	// The external Redis's CA bundle as a file (REDIS_CA_FILE in the ConfigMap).
	if ref := redisCASecretRef(s); ref != nil {
		v, m := caVolume("redis-ca", redisCADir, *ref)
		volumes, mounts = append(volumes, v), append(mounts, m)
	}
	env, volumes, mounts = withPostgresCA(s, env, volumes, mounts)
	httpProbe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString(metricsPortName), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			TimeoutSeconds:   3,
			FailureThreshold: failures,
		}
	}
	return &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: objectMeta(s, apiName(s), tradingdApp, apiComponent),
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas,
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(s, apiComponent)},
			// Surge, never drop below the desired count: a rollout keeps full capacity.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(0)),
					MaxSurge:       ptr.To(intstr.FromInt32(1)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      labelsFor(s, tradingdApp, apiComponent),
					Annotations: map[string]string{configHashAnnotation: configHash},
				},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext:              podSecurityContext(runtimeUID),
					// preStopSleep, then SHUTDOWN_GRACE (20s) of draining on SIGTERM, then at most
					// 3s closing the pool.
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					Containers: []corev1.Container{{
						Name:            runtimeContainer,
						Image:           image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Command:         []string{tradingdBinary, "serve"},
						EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: runtimeConfigMapName(s)},
						}}},
						Env: env,
						Ports: []corev1.ContainerPort{
							tcpPort(httpPortName, httpPort),
							tcpPort(metricsPortName, metricsPort),
						},
						Resources: resourcesOr(r.Resources, defaultRuntimeResources()),
						// On SIGTERM tradingd stops accepting at once, but a deleted pod leaves the
						// EndpointSlice, and so kube-proxy's rules on every node and the ingress
						// controllers' upstreams, only a moment later: connections sent to it
						// meanwhile would be refused (every rollout, scale-down and drain). The
						// sleep (the image has no shell) holds SIGTERM back until they have let go.
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
							Sleep: &corev1.SleepAction{Seconds: preStopSleep},
						}},
						LivenessProbe:   httpProbe("/healthz", 10, 3),
						ReadinessProbe:  httpProbe("/readyz", 5, 3),
						SecurityContext: containerSecurityContext(),
						VolumeMounts:    mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// desiredAPIService is NAME-api with ports http (8080) and metrics (9090); the ServiceMonitor
// selects it by its labels.
func desiredAPIService(s *tradingv1alpha1.TradingStack) *corev1.Service {
	return clusterService(s, apiName(s), tradingdApp, apiComponent,
		corev1.ServicePort{Name: httpPortName, Port: httpPort, TargetPort: intstr.FromString(httpPortName), Protocol: corev1.ProtocolTCP},
		corev1.ServicePort{Name: metricsPortName, Port: metricsPort, TargetPort: intstr.FromString(metricsPortName), Protocol: corev1.ProtocolTCP},
	)
}
