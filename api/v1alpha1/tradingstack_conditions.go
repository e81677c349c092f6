package v1alpha1

// Condition types on a TradingStack. All are metav1.Condition with True, False or Unknown and
// the observedGeneration they describe.
const (
	// ConditionDatabaseReady: the managed PostgreSQL StatefulSet is ready, or the external
	// database's Secret and key exist.
	ConditionDatabaseReady = "DatabaseReady"
	// ConditionCacheReady: the managed Redis is available, the external address is set, or Redis
	// is disabled (then True with reason CacheDisabled).
	ConditionCacheReady = "CacheReady"
	// ConditionMigrationsSucceeded: the migration Job of the desired runtime image succeeded.
	ConditionMigrationsSucceeded = "MigrationsSucceeded"
	// ConditionRuntimeAvailable: the runtime Deployment is available with the desired image.
	ConditionRuntimeAvailable = "RuntimeAvailable"
	// ConditionMonitoringReady: the ServiceMonitor and PrometheusRule exist as asked, or are
	// disabled; False with reason CRDNotInstalled when prometheus-operator's CRDs are absent.
	// Not required for Ready.
	ConditionMonitoringReady = "MonitoringReady"
	// ConditionProgressing: children are being created or rolled out, or a migration runs.
	ConditionProgressing = "Progressing"
	// ConditionDegraded: the stack serves but something needs attention (failed migration of a
	// new image, fewer ready replicas than desired).
	ConditionDegraded = "Degraded"
	// ConditionReady: DatabaseReady, CacheReady, MigrationsSucceeded and RuntimeAvailable are True.
	ConditionReady = "Ready"
)

// Condition reasons (CamelCase, as metav1.Condition requires).
const (
	// Shared.
	ReasonReconciling = "Reconciling"
	ReasonPaused      = "Paused"
	ReasonApplyFailed = "ApplyFailed"
	// ReasonNotChecked: a component condition the operator has not evaluated yet (Unknown):
	// an earlier step stopped the pass (a Secret the spec names is missing, say), or the
	// stack was paused before its first pass.
	ReasonNotChecked = "NotChecked"

	// DatabaseReady.
	ReasonDatabaseAvailable       = "DatabaseAvailable"
	ReasonDatabaseNotReady        = "DatabaseNotReady"
	ReasonExternalDatabase        = "ExternalDatabase"
	ReasonExternalSecretNotFound  = "ExternalSecretNotFound"
	ReasonExternalSecretKeyAbsent = "ExternalSecretKeyMissing"
	// ReasonInvalidCertificate (DatabaseReady, CacheReady): a CA Secret's key holds no PEM
	// certificate, which the runtime would refuse at start.
	ReasonInvalidCertificate = "InvalidCertificate"

	// ReasonSecretKeyMissing (DatabaseReady, RuntimeAvailable): a Secret with a generated
	// Secret's name that the user made (used as it is, so the operator adds no key to it)
	// lacks a key the component's pods read, which could not start without it.
	ReasonSecretKeyMissing = "SecretKeyMissing"

	// CacheReady.
	ReasonCacheAvailable     = "CacheAvailable"
	ReasonCacheNotReady      = "CacheNotReady"
	ReasonCacheExternal      = "ExternalCache"
	ReasonCacheDisabled      = "CacheDisabled"
	ReasonCacheSecretMissing = "CacheSecretNotFound"

	// MigrationsSucceeded.
	ReasonMigrationSucceeded = "MigrationSucceeded"
	ReasonMigrationRunning   = "MigrationRunning"
	ReasonMigrationFailed    = "MigrationFailed"
	ReasonWaitingForDatabase = "WaitingForDatabase"

	// RuntimeAvailable.
	ReasonDeploymentAvailable   = "DeploymentAvailable"
	ReasonDeploymentUnavailable = "DeploymentUnavailable"
	ReasonRollingOut            = "RollingOut"
	// RolloutStuck: the Deployment gave up waiting for its new pods (its progress deadline
	// passed). RuntimeAvailable True while the old pods serve (Degraded's reason too), False
	// when no pod serves (a first rollout: phase Failed); Progressing False either way.
	ReasonRolloutStuck        = "RolloutStuck"
	ReasonWaitingForMigration = "WaitingForMigration"

	// MonitoringReady.
	ReasonCRDNotInstalled      = "CRDNotInstalled"
	ReasonMonitoringDisabled   = "MonitoringDisabled"
	ReasonMonitoringConfigured = "MonitoringConfigured"

	// Ready, Progressing, Degraded.
	ReasonAllComponentsReady  = "AllComponentsReady"
	ReasonComponentsNotReady  = "ComponentsNotReady"
	ReasonStable              = "Stable"
	ReasonOldRuntimeServing   = "OldRuntimeServing"
	ReasonReplicasUnavailable = "ReplicasUnavailable"
)
