package controllers

import (
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// pgIsReady checks the local server through its TCP socket, as the database's clients would.
// It runs in a shell because probes do not expand $(VAR) references.
var pgIsReady = []string{"sh", "-c", `exec pg_isready -q -h 127.0.0.1 -p 5432 -U "$POSTGRES_USER" -d "$POSTGRES_DB"`}

// syncPassword is the database container's postStart hook: it sets the password of
// POSTGRES_USER to POSTGRES_PASSWORD on every start. The image reads POSTGRES_PASSWORD only
// when it initializes an empty volume, so a credentials Secret that was regenerated (deleted
// by hand) or edited would otherwise never reach the database, and every client would be
// refused; CloudNativePG applies its Secret with ALTER ROLE likewise. A change of the Secret
// restarts the pod (credentialsHash on its template). It connects through the local socket,
// which the image trusts, waits at most two minutes for the server, passes the values as
// psql variables (quoted by psql, never by the shell), and never fails the container.
var syncPassword = []string{"sh", "-c", `i=0
until pg_isready -q -h /var/run/postgresql; do
  i=$((i+1)); [ "$i" -ge 120 ] && exit 0; sleep 1
done
echo "ALTER ROLE :\"role\" PASSWORD :'password';" |
  psql -q -X -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 \
    -v role="$POSTGRES_USER" -v password="$POSTGRES_PASSWORD" >/dev/null 2>&1 || true`}

// postgresContainer is the container of the managed PostgreSQL's pod (NAME-postgres-0).
const postgresContainer = "postgres"

// desiredPostgresStatefulSet is NAME-postgres: one PostgreSQL pod with a PVC from the template
// "data". PGDATA is a subdirectory of the volume, so the entrypoint can create it with the
// owner and mode initdb insists on even when the volume's root holds lost+found. The claim
// retention follows retainDataOnDelete: Retain keeps the PVC when the stack (and so the
// StatefulSet) is deleted.
func desiredPostgresStatefulSet(s *tradingv1alpha1.TradingStack, credentialsHash string) *appsv1.StatefulSet {
	m := s.Spec.Postgres.Managed
	if m == nil {
		m = &tradingv1alpha1.ManagedPostgres{Image: tradingv1alpha1.DefaultPostgresImage,
			Storage: tradingv1alpha1.StorageSpec{Size: tradingv1alpha1.DefaultStorageSize}}
	}
	whenDeleted := appsv1.DeletePersistentVolumeClaimRetentionPolicyType
	if s.RetainData() {
		whenDeleted = appsv1.RetainPersistentVolumeClaimRetentionPolicyType
	}
	claim := corev1.PersistentVolumeClaim{
		TypeMeta:   typeMeta("v1", "PersistentVolumeClaim"),
		ObjectMeta: metav1.ObjectMeta{Name: "data", Labels: labelsFor(s, postgresApp, databaseComponent)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(m.Storage.Size),
			}},
		},
	}
	if m.Storage.StorageClassName != "" {
		claim.Spec.StorageClassName = ptr.To(m.Storage.StorageClassName)
	}
	probe := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: pgIsReady}},
			PeriodSeconds:    period,
			TimeoutSeconds:   5,
			FailureThreshold: failures,
		}
	}
	shm := corev1.Volume{Name: "dshm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("256Mi")),
	}}}
	return &appsv1.StatefulSet{
		TypeMeta:   typeMeta("apps/v1", "StatefulSet"),
		ObjectMeta: objectMeta(s, postgresName(s), postgresApp, databaseComponent),
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](1),
			ServiceName: postgresName(s),
			Selector:    &metav1.LabelSelector{MatchLabels: selectorLabels(s, databaseComponent)},
			// The API server's defaults, spelled out: left unset, the apply would send an empty
			// updateStrategy, which the server fills, and a restarted operator could not tell
			// that object from the one it applies (it applies instead of reading: see
			// appliedAsDesired).
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{
				Type:          appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr.To[int32](0)},
			},
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: whenDeleted,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{claim},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      labelsFor(s, postgresApp, databaseComponent),
					Annotations: map[string]string{configHashAnnotation: credentialsHash},
				},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken:  ptr.To(false),
					SecurityContext:               podSecurityContext(postgresUID),
					TerminationGracePeriodSeconds: ptr.To[int64](60),
					Containers: []corev1.Container{{
						Name:            postgresContainer,
						Image:           m.Image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Ports:           []corev1.ContainerPort{tcpPort("postgres", postgresPort)},
						Env: []corev1.EnvVar{
							secretEnv("POSTGRES_USER", postgresCredentialsSecretName(s), postgresUserKey),
							secretEnv("POSTGRES_PASSWORD", postgresCredentialsSecretName(s), postgresPasswordKey),
							{Name: "POSTGRES_DB", Value: postgresDB},
							{Name: "PGDATA", Value: postgresDataDir + "/pgdata"},
						},
						Resources: resourcesOr(m.Resources, defaultPostgresResources()),
						Lifecycle: &corev1.Lifecycle{
							PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: syncPassword}},
						},
						StartupProbe:    probe(5, 60),
						ReadinessProbe:  probe(10, 3),
						LivenessProbe:   probe(10, 6),
						SecurityContext: containerSecurityContext(),
						VolumeMounts: []corev1.VolumeMount{
							{Name: "data", MountPath: postgresDataDir},
							{Name: "run", MountPath: "/var/run/postgresql"},
							{Name: "tmp", MountPath: "/tmp"},
							{Name: "dshm", MountPath: "/dev/shm"},
						},
					}},
					Volumes: []corev1.Volume{emptyDirVolume("run"), emptyDirVolume("tmp"), shm},
				},
			},
		},
	}
}

// desiredPostgresService is NAME-postgres, the database's address in the DSN.
func desiredPostgresService(s *tradingv1alpha1.TradingStack) *corev1.Service {
	return clusterService(s, postgresName(s), postgresApp, databaseComponent,
		corev1.ServicePort{Name: "postgres", Port: postgresPort, TargetPort: intstr.FromString("postgres"), Protocol: corev1.ProtocolTCP})
}

// redisContainer is the container of the managed Redis's pod (NAME-redis).
const redisContainer = "redis"

// desiredRedisDeployment is NAME-redis: one Redis used as a cache and rate-limit store, without
// persistence (its contents are rebuilt from the database and lost limits reset gracefully).
func desiredRedisDeployment(s *tradingv1alpha1.TradingStack) *appsv1.Deployment {
	tcp := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("redis")}},
			PeriodSeconds:    period,
			TimeoutSeconds:   3,
			FailureThreshold: failures,
		}
	}
	readiness := tcp(5, 3)
	readiness.ProbeHandler = corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"redis-cli", "-p", "6379", "ping"}}}
	resources := resourcesOr(s.Spec.Redis.Resources, defaultRedisResources())
	return &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: objectMeta(s, redisName(s), redisApp, cacheComponent),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(s, cacheComponent)},
			// One instance at a time: two would split the rate-limit counters.
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labelsFor(s, redisApp, cacheComponent)},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext:              podSecurityContext(postgresUID),
					Containers: []corev1.Container{{
						Name:            redisContainer,
						Image:           s.Spec.Redis.Image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            redisArgs(resources),
						Ports:           []corev1.ContainerPort{tcpPort("redis", redisPort)},
						Resources:       resources,
						ReadinessProbe:  readiness,
						LivenessProbe:   tcp(10, 6),
						SecurityContext: containerSecurityContext(),
						VolumeMounts:    []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
					}},
					Volumes: []corev1.Volume{emptyDirVolume("data")},
				},
			},
		},
	}
}

// redisArgs runs Redis as a cache within its container's memory limit. Without maxmemory it
// grew until the kernel killed the container, and every replica lost its L2 and the shared
// rate limits at once (then again whenever it filled up: a crash loop). Its keys are the
// traders' cached views and their version counters and the rate-limit buckets, which grow
// with the traders and with the client addresses that call (a request that authentication
// refuses has buckets per address), so it fills up in time whatever its size.
//
// maxmemory is three quarters of the limit (192Mi of the default 256Mi). It bounds what
// Redis's allocator counts (the data and the clients' buffers), not the memory the kernel
// charges the container: jemalloc's fragmentation as keys of many sizes come and go with
// their TTLs (INFO memory's mem_fragmentation_ratio), the process itself (a few MiB) and
// buffers beyond that count come on top, and the last quarter is for them (Amazon
// ElastiCache reserves the same quarter by default, its reserved-memory-percent). Nothing
// else needs room: there is no replica (no replication backlog or replica buffers) and no
// persistence (no fork for a snapshot or AOF rewrite, whose copy-on-write could double the
// memory).
//
// When it is full Redis evicts volatile-lru: the least recently used of the keys that have
// a TTL. Every key the runtime writes has one except the deployment's cache epoch (runtime/
// redis/store.go), and losing any of them is survivable: an evicted L2 value or version
// counter is a miss, a read from the database (a lost counter starts again at random, so no
// older value is taken for the current one), and an evicted rate-limit bucket lets its user
// or address through early once (a fresh bucket's burst). The epoch is the one key that
// volatile-lru never evicts (allkeys-lru may): its loss is survivable too, but it makes
// every L2 value of the deployment a miss at once, a burst of database reads just when
// Redis is under pressure. Least recently used goes first: the counters of traders gone
// for days and the buckets of addresses that called once, not the summaries (10 s by
// default) being read now, which volatile-ttl would take first. noeviction would refuse
// the runtime's writes once full (OOM command not allowed): every replica then counts Redis
// as refusing writes, reads the database instead of either cache level and limits on its
// own, so the cache would be off for as long as Redis stays full (cmd/tradingd's
// TestReplicasOnAFullRedis shows both policies).
//
// Resources without a memory limit (requests only) leave Redis without maxmemory: nothing
// bounds the container, and there is no limit to take a share of. (A default limit that a
// LimitRange adds at admission is not seen here: set spec.redis.resources.limits then.)
func redisArgs(resources corev1.ResourceRequirements) []string {
	args := []string{"redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no",
		"--maxmemory-policy", "volatile-lru"}
	if limit, ok := resources.Limits[corev1.ResourceMemory]; ok && !limit.IsZero() {
		args = append(args, "--maxmemory", strconv.FormatInt(limit.Value()/4*3, 10))
	}
	return args
}

// desiredRedisService is NAME-redis, the address in REDIS_URL.
func desiredRedisService(s *tradingv1alpha1.TradingStack) *corev1.Service {
	return clusterService(s, redisName(s), redisApp, cacheComponent,
		corev1.ServicePort{Name: "redis", Port: redisPort, TargetPort: intstr.FromString("redis"), Protocol: corev1.ProtocolTCP})
}

func clusterService(s *tradingv1alpha1.TradingStack, name, app, component string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   typeMeta("v1", "Service"),
		ObjectMeta: objectMeta(s, name, app, component),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: selectorLabels(s, component),
			Ports:    ports,
		},
	}
}
