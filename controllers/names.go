package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// Labels on every child. The instance and component labels select pods (Deployments,
// StatefulSet, Services, NetworkPolicies, PDB); managed-by limits the operator's cache of
// Secrets and ConfigMaps to its own.
const (
	nameLabel      = "app.kubernetes.io/name"
	instanceLabel  = "app.kubernetes.io/instance"
	componentLabel = "app.kubernetes.io/component"
	managedByLabel = "app.kubernetes.io/managed-by"
	partOfLabel    = "app.kubernetes.io/part-of"

	// managedByValue is the managed-by label of every child.
	managedByValue = "trading-operator"
	partOfValue    = "tradingstack"
)

// Values of the component label.
const (
	databaseComponent   = "database"
	cacheComponent      = "cache"
	migrationComponent  = "migration"
	apiComponent        = "api"
	authComponent       = "auth"
	monitoringComponent = "monitoring"
)

// Values of the name label: the application a child belongs to.
const (
	postgresApp = "postgresql"
	redisApp    = "redis"
	tradingdApp = "tradingd"
)

// Annotations the operator writes.
const (
	// configHashAnnotation on the runtime's pod template holds configHash of its ConfigMap and
	// Secrets; a change of either changes the template and so rolls the pods.
	configHashAnnotation = "trading.findmy.io/config-hash"
	// runtimeImageAnnotation on a migration Job records the runtime image it migrates for.
	runtimeImageAnnotation = "trading.findmy.io/runtime-image"
	// databaseAnnotation on a migration Job records the database it migrates
	// (MigrationStatus.Database).
	databaseAnnotation = "trading.findmy.io/database"
	// userSecretAnnotation marks a Secret with a generated Secret's name that a user made
	// before the operator could: used as it is, never owned, so never deleted with the stack.
	userSecretAnnotation = "trading.findmy.io/made-by-user"
)

// Keys of the generated Secrets.
const (
	postgresUserKey     = "user"
	postgresPasswordKey = "password"
	postgresDSNKey      = "dsn"
	jwtKeysKey          = "keys"
	adminPasswordKey    = "password"
)

// Ports and fixed settings of the children.
const (
	httpPortName    = "http"
	metricsPortName = "metrics"
	httpPort        = 8080
	metricsPort     = 9090
	postgresPort    = 5432
	redisPort       = 6379
	postgresUser    = "trading"
	postgresDB      = "trading"
	postgresDataDir = "/var/lib/postgresql/data"
)

func postgresCredentialsSecretName(s *tradingv1alpha1.TradingStack) string {
	return s.Name + "-postgres-credentials"
}
func jwtSecretName(s *tradingv1alpha1.TradingStack) string        { return s.Name + "-jwt" }
func adminSecretName(s *tradingv1alpha1.TradingStack) string      { return s.Name + "-admin" }
func postgresName(s *tradingv1alpha1.TradingStack) string         { return s.Name + "-postgres" }
func redisName(s *tradingv1alpha1.TradingStack) string            { return s.Name + "-redis" }
func runtimeConfigMapName(s *tradingv1alpha1.TradingStack) string { return s.Name + "-runtime" }

// apiName names the runtime Deployment, its Service, PDB, HPA and ServiceMonitor.
func apiName(s *tradingv1alpha1.TradingStack) string    { return s.Name + "-api" }
func alertsName(s *tradingv1alpha1.TradingStack) string { return s.Name + "-alerts" }

// migrationJobName is NAME-migrate-HASH, HASH the first 10 hex digits of the image's sha256:
// one Job per runtime image, so a new image gets a new Job and the same image never migrates
// twice.
func migrationJobName(s *tradingv1alpha1.TradingStack, image string) string {
	return s.Name + "-migrate-" + imageHash(image)
}

func imageHash(image string) string {
	sum := sha256.Sum256([]byte(image))
	return hex.EncodeToString(sum[:])[:10]
}

// postgresHost is the in-cluster DNS name of the managed database's Service.
func postgresHost(s *tradingv1alpha1.TradingStack) string {
	return fmt.Sprintf("%s.%s.svc", postgresName(s), s.Namespace)
}

// redisURL is the runtime's REDIS_URL without a password: the managed Redis's Service, the
// external address, or "" when Redis is disabled.
func redisURL(s *tradingv1alpha1.TradingStack) string {
	switch s.Spec.Redis.Mode {
	case tradingv1alpha1.RedisDisabled:
		return ""
	case tradingv1alpha1.RedisExternal:
		if redisTLS(s) {
			return "rediss://" + s.Spec.Redis.Address + "/0"
		}
		return "redis://" + s.Spec.Redis.Address + "/0"
	default:
		return fmt.Sprintf("redis://%s.%s.svc:%d/0", redisName(s), s.Namespace, redisPort)
	}
}

// redisTLS reports whether the runtime speaks TLS to an external Redis.
func redisTLS(s *tradingv1alpha1.TradingStack) bool {
	r := s.Spec.Redis
	return r.Mode == tradingv1alpha1.RedisExternal && r.TLS != nil && r.TLS.Enabled
}

// redisCASecretRef is the Secret key holding the external Redis's CA bundle, or nil (the
// runtime image's public CAs).
func redisCASecretRef(s *tradingv1alpha1.TradingStack) *tradingv1alpha1.SecretKeyReference {
	if !redisTLS(s) {
		return nil
	}
	return s.Spec.Redis.TLS.CASecretRef
}

// postgresCASecretRef is the Secret key holding the external database's CA bundle, or nil.
func postgresCASecretRef(s *tradingv1alpha1.TradingStack) *tradingv1alpha1.SecretKeyReference {
	if ext := s.Spec.Postgres.External; ext != nil {
		return ext.CASecretRef
	}
	return nil
}

// Where the pods mount the CA bundles of an external Redis and an external database, each as
// caFile.
const (
	redisCADir    = "/etc/tradingd/redis-ca"
	postgresCADir = "/etc/tradingd/postgres-ca"
	caFile        = "ca.crt"
)

// redisKeyPrefix is the runtime's REDIS_KEY_PREFIX on an external Redis: the stack's namespace
// and name, which no other stack has at the same time.
func redisKeyPrefix(s *tradingv1alpha1.TradingStack) string {
	return s.Namespace + "/" + s.Name + ":"
}

// apiEndpoint and metricsEndpoint are the in-cluster URLs reported in status.endpoints.
func apiEndpoint(s *tradingv1alpha1.TradingStack) string {
	return fmt.Sprintf("http://%s.%s.svc:%d", apiName(s), s.Namespace, httpPort)
}

func metricsEndpoint(s *tradingv1alpha1.TradingStack) string {
	return fmt.Sprintf("http://%s.%s.svc:%d/metrics", apiName(s), s.Namespace, metricsPort)
}

// labelsFor returns the labels of a child of s: the selector labels plus name, managed-by and
// part-of. Every call returns a new map, so callers may add to it.
func labelsFor(s *tradingv1alpha1.TradingStack, app, component string) map[string]string {
	l := selectorLabels(s, component)
	l[nameLabel] = app
	l[managedByLabel] = managedByValue
	l[partOfLabel] = partOfValue
	return l
}

// selectorLabels selects the pods of one component of one stack. Selectors of Deployments and
// StatefulSets are immutable, so this set never changes.
func selectorLabels(s *tradingv1alpha1.TradingStack, component string) map[string]string {
	return map[string]string{
		instanceLabel:  s.Name,
		componentLabel: component,
	}
}
