package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// The builders in desired_*.go are pure: they take a stack whose spec went through
// WithDefaults (the reconciler's pass.spec) and return typed objects with TypeMeta set, as
// Server-Side Apply needs, and without owner references, which the reconciler adds (and
// leaves off retained Secrets). They read nothing from the cluster, so table tests cover them.

// objectMeta is the metadata of a child: name, namespace and labels.
func objectMeta(s *tradingv1alpha1.TradingStack, name, app, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: s.Namespace,
		Labels:    labelsFor(s, app, component),
	}
}

// resourcesOr returns r, or def when r asks for nothing. Every container the operator creates
// has requests, so the scheduler can place it and a namespace quota admits it.
func resourcesOr(r corev1.ResourceRequirements, def corev1.ResourceRequirements) corev1.ResourceRequirements {
	if len(r.Requests) == 0 && len(r.Limits) == 0 && len(r.Claims) == 0 {
		return def
	}
	return *r.DeepCopy()
}

func requirements(cpu, memory, memoryLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(cpu),
			corev1.ResourceMemory: resource.MustParse(memory),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse(memoryLimit),
		},
	}
}

// Defaults of spec.*.resources when left empty (the field descriptions state them).
func defaultRuntimeResources() corev1.ResourceRequirements {
	return requirements("100m", "128Mi", "512Mi")
}
func defaultMigrationResources() corev1.ResourceRequirements {
	return requirements("50m", "64Mi", "256Mi")
}
func defaultPostgresResources() corev1.ResourceRequirements {
	return requirements("250m", "256Mi", "1Gi")
}
func defaultRedisResources() corev1.ResourceRequirements {
	return requirements("50m", "64Mi", "256Mi")
}

// podSecurityContext runs a pod as uid (non-root) with the runtime's default seccomp profile;
// fsGroup makes mounted volumes writable for that group.
func podSecurityContext(uid int64) *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr.To(true),
		RunAsUser:      ptr.To(uid),
		RunAsGroup:     ptr.To(uid),
		FSGroup:        ptr.To(uid),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// containerSecurityContext is the restricted Pod Security Standard for a container: no
// privilege escalation, every capability dropped, a read-only root filesystem.
func containerSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		RunAsNonRoot:             ptr.To(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// runtimeUID is the distroless nonroot user the operator image runs as.
const runtimeUID int64 = 65532

// postgresUID is the postgres user of the official PostgreSQL and Redis Debian images.
const postgresUID int64 = 999

func emptyDirVolume(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{
		Name: name,
		ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret},
			Key:                  key,
		}},
	}
}

// databaseURLEnv is DATABASE_URL from the generated credentials (managed) or from the Secret
// the user named (external).
func databaseURLEnv(s *tradingv1alpha1.TradingStack) corev1.EnvVar {
	if ext := s.Spec.Postgres.External; ext != nil {
		return secretEnv("DATABASE_URL", ext.ConnectionSecretRef.Name, ext.ConnectionSecretRef.Key)
	}
	return secretEnv("DATABASE_URL", postgresCredentialsSecretName(s), postgresDSNKey)
}

func tcpPort(name string, port int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: corev1.ProtocolTCP}
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}
