package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Optional sub-objects are value structs with `default={}` so that the API server applies the
// defaults of their fields even when a user leaves the whole object out; scalars whose zero
// value means something (a rate limit of 0 turns that class off) are pointers, so that a Go
// client that leaves them unset gets the schema default instead of an explicit zero.

// TradingStackSpec is what a platform team asks for. Every field is optional: an empty spec
// gives a working stack with a managed PostgreSQL, a managed Redis and two runtime replicas.
//
// A stack made without spec.postgres.managed (or external) has the managed database with the
// default 10Gi volume, and no stored size for the transition rule on storage.size to compare
// with: a size given later is held to that default here.
// +kubebuilder:validation:XValidation:rule="!has(self.postgres) || !has(self.postgres.managed) || !has(self.postgres.managed.storage) || !has(self.postgres.managed.storage.size) || !isQuantity(self.postgres.managed.storage.size) || (has(oldSelf.postgres) && (has(oldSelf.postgres.managed) || has(oldSelf.postgres.external))) || quantity(self.postgres.managed.storage.size).compareTo(quantity('10Gi')) >= 0",message="spec.postgres.managed.storage.size may only grow: this stack's volume has the default size, 10Gi",fieldPath=".postgres.managed.storage.size"
type TradingStackSpec struct {
	// Runtime configures tradingd, the trading API: its image, replicas, resources and every
	// non-secret setting it reads from the environment.
	// +kubebuilder:default={}
	// +optional
	Runtime RuntimeSpec `json:"runtime,omitempty"`

	// Postgres selects the database: a PostgreSQL the operator runs (managed, the default) or
	// one that exists already (external), and the runtime's connection pool.
	// +kubebuilder:default={}
	// +optional
	Postgres PostgresSpec `json:"postgres,omitempty"`

	// Redis selects the shared cache and rate-limit store: managed (the default), external, or
	// disabled (each runtime replica then rate-limits on its own; a single replica caches in
	// its memory, several, or autoscaling, keep no cache and read the database).
	// +kubebuilder:default={}
	// +optional
	Redis RedisSpec `json:"redis,omitempty"`

	// Monitoring controls the ServiceMonitor and PrometheusRule made for the runtime. They are
	// created only when the prometheus-operator CRDs are installed in the cluster.
	// +kubebuilder:default={}
	// +optional
	Monitoring MonitoringSpec `json:"monitoring,omitempty"`

	// RetainDataOnDelete keeps the database volume and the generated Secrets (orphaned and
	// labelled) when the TradingStack is deleted, so that a `kubectl delete` loses no data.
	// false deletes them together with the stack. Moving a stack to an external database
	// keeps its volume either way (delete the claim to free it). Defaults to true.
	// +kubebuilder:default=true
	// +optional
	RetainDataOnDelete *bool `json:"retainDataOnDelete,omitempty"`

	// Paused stops the operator from changing the stack's children, and from checking them:
	// while paused, only the Progressing condition is re-evaluated (False, reason Paused),
	// and status.observedGeneration still follows the spec. Ready, the phase and the other
	// conditions keep what the last unpaused pass found (a child deleted while paused leaves
	// Ready True); a stack paused before its first pass shows them Unknown. Setting it back
	// to false runs a full pass. Defaults to false.
	// +kubebuilder:default=false
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// RuntimeSpec configures tradingd. The settings map one to one onto tradingd's environment
// variables (named in each field's description).
// The HorizontalPodAutoscaler scales on CPU use as a share of the pods' CPU request: without
// one it cannot compute it ("missing request for cpu") and never scales. (Requests left out
// default to the limits; empty resources get the operator's, which have one.)
// +kubebuilder:validation:XValidation:rule="!has(self.autoscaling) || !has(self.resources) || ((!has(self.resources.requests) || size(self.resources.requests) == 0) && (!has(self.resources.limits) || size(self.resources.limits) == 0) && (!has(self.resources.claims) || size(self.resources.claims) == 0)) || (has(self.resources.requests) && 'cpu' in self.resources.requests) || (has(self.resources.limits) && 'cpu' in self.resources.limits)",message="spec.runtime.resources needs a cpu request (or limit) when spec.runtime.autoscaling is set: the HorizontalPodAutoscaler scales on CPU use relative to it"
type RuntimeSpec struct {
	// Image is the tradingd image (it must contain /tradingd). Empty means the runtime image
	// built together with the operator, of the same version: the operator's own image (read
	// from its pod at start; RUNTIME_IMAGE on the operator overrides it); the schema has no
	// default because that value depends on the operator's deployment. Changing it first runs `tradingd migrate` in a Job with the
	// new image; the runtime moves to the new image only after that Job succeeded.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// Replicas is the number of runtime pods when autoscaling is not set. Defaults to 2.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// Resources of the runtime container. Empty means requests of 100m CPU and 128Mi memory and
	// a memory limit of 512Mi.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Symbols is the whitelist of tradable symbols (SYMBOLS), each like BTC/USD.
	// Defaults to BTC/USD, ETH/USD, BNB/USD, XRP/USD and ADA/USD.
	// +kubebuilder:default={"BTC/USD","ETH/USD","BNB/USD","XRP/USD","ADA/USD"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=200
	// +kubebuilder:validation:items:Pattern=`^[A-Z]{2,10}/[A-Z]{2,10}$`
	// +listType=set
	// +optional
	Symbols []string `json:"symbols,omitempty"`

	// Limits are the upper bounds of an order's quantity and price.
	// +kubebuilder:default={}
	// +optional
	Limits OrderLimits `json:"limits,omitempty"`

	// MaxDailyLoss is the daily loss limit per user (MAX_DAILY_LOSS), a positive decimal: a
	// whole number up to 2147483647 such as 5000, or a string such as "2500.5" (YAML reads
	// 2500.5 unquoted as a floating-point number, which is not exact and is refused). Once a user's realized P&L of
	// the current UTC day is at or below minus this value, the user's new orders are refused.
	// Unset: no limit.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=21
	// +kubebuilder:validation:XValidation:rule="type(self) == int || self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$')",message="spec.runtime.maxDailyLoss must be a decimal with at most 12 digits before the point and 8 after, such as 5000 or 2500.5"
	// +kubebuilder:validation:XValidation:rule="type(self) != int || self <= 2147483647",message="spec.runtime.maxDailyLoss above 2147483647 must be written as a string, such as \"5000000000\""
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self > 0 : !self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$') || self.matches('[1-9]')",message="spec.runtime.maxDailyLoss must be more than 0"
	// +optional
	MaxDailyLoss *intstr.IntOrString `json:"maxDailyLoss,omitempty"`

	// RateLimits are the request limits per user (per client IP before login); 0 turns a class
	// off. Shared across replicas through Redis unless Redis is disabled.
	// +kubebuilder:default={}
	// +optional
	RateLimits RateLimits `json:"rateLimits,omitempty"`

	// Cache sets how long positions and summaries are cached.
	// +kubebuilder:default={}
	// +optional
	Cache CacheSpec `json:"cache,omitempty"`

	// Auth sets the lifetimes of access and refresh tokens.
	// +kubebuilder:default={}
	// +optional
	Auth AuthSpec `json:"auth,omitempty"`

	// Autoscaling, when set, creates a HorizontalPodAutoscaler for the runtime; the operator then
	// leaves the Deployment's replica count to it and ignores replicas.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`

	// TrustedProxies are CIDRs (TRUSTED_PROXIES) whose X-Forwarded-For header is believed when
	// finding a client's IP, e.g. the ingress controller's pod network. Empty: the TCP peer is
	// the client.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="spec.runtime.trustedProxies must contain only CIDRs such as 10.0.0.0/8"
	// +listType=set
	// +optional
	TrustedProxies []string `json:"trustedProxies,omitempty"`

	// DemoUsers creates the demo users trader1, trader2 and risk1 with well-known passwords
	// (DEMO_USERS). Never in production. Defaults to false.
	// +kubebuilder:default=false
	// +optional
	DemoUsers bool `json:"demoUsers,omitempty"`
}

// OrderLimits are the upper bounds of an order, decimals with at most 8 fractional digits.
// Written as numbers they are whole numbers that fit IntOrString's int32: a larger one, which
// the API server would store, could not be read back by any Go client (the operator's list of
// stacks would fail for every stack), so it is refused and goes as a string.
// Their product bounds the P&L of one trade, which the database stores below 1e22 (tradingd
// refuses to start otherwise). The rule computes in doubles: its bound is a hair under 1e22
// so that rounding can only make it stricter than tradingd's exact check.
// +kubebuilder:validation:XValidation:rule="!has(self.maxQuantity) || !has(self.maxPrice) || !(type(self.maxQuantity) == int || self.maxQuantity.matches('^[0-9]{1,12}([.][0-9]{1,8})?$')) || !(type(self.maxPrice) == int || self.maxPrice.matches('^[0-9]{1,12}([.][0-9]{1,8})?$')) || double(self.maxQuantity) * double(self.maxPrice) < 9.9999999999999e21",message="spec.runtime.limits.maxQuantity x maxPrice must be less than 1e22, the largest P&L of one trade the database stores"
type OrderLimits struct {
	// MaxQuantity is the largest quantity of one order (MAX_QUANTITY): a whole number up to
	// 2147483647 such as 5000, or a string such as "2500.5". Defaults to "1000000".
	// +kubebuilder:default="1000000"
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=21
	// +kubebuilder:validation:XValidation:rule="type(self) == int || self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$')",message="spec.runtime.limits.maxQuantity must be a decimal with at most 12 digits before the point and 8 after, such as 5000 or 2500.5"
	// +kubebuilder:validation:XValidation:rule="type(self) != int || self <= 2147483647",message="spec.runtime.limits.maxQuantity above 2147483647 must be written as a string, such as \"5000000000\""
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self > 0 : !self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$') || self.matches('[1-9]')",message="spec.runtime.limits.maxQuantity must be more than 0"
	// +optional
	MaxQuantity *intstr.IntOrString `json:"maxQuantity,omitempty"`

	// MaxPrice is the largest price of one order (MAX_PRICE): a whole number up to
	// 2147483647 such as 5000, or a string such as "2500.5". Defaults to "1000000".
	// +kubebuilder:default="1000000"
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=21
	// +kubebuilder:validation:XValidation:rule="type(self) == int || self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$')",message="spec.runtime.limits.maxPrice must be a decimal with at most 12 digits before the point and 8 after, such as 5000 or 2500.5"
	// +kubebuilder:validation:XValidation:rule="type(self) != int || self <= 2147483647",message="spec.runtime.limits.maxPrice above 2147483647 must be written as a string, such as \"5000000000\""
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self > 0 : !self.matches('^[0-9]{1,12}([.][0-9]{1,8})?$') || self.matches('[1-9]')",message="spec.runtime.limits.maxPrice must be more than 0"
	// +optional
	MaxPrice *intstr.IntOrString `json:"maxPrice,omitempty"`
}

// RateLimits are requests per minute per class, and global limits over all classes; 0 turns
// a limit off.
type RateLimits struct {
	// Login is login attempts per minute per client IP (RATE_LIMIT_LOGIN). Defaults to 5.
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=0
	// +optional
	Login *int32 `json:"login,omitempty"`

	// Trading is order submissions, approvals and rejections per minute per user
	// (RATE_LIMIT_TRADING). Defaults to 30.
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=0
	// +optional
	Trading *int32 `json:"trading,omitempty"`

	// Data is reads under /api per minute per user (RATE_LIMIT_DATA). Defaults to 60.
	// +kubebuilder:default=60
	// +kubebuilder:validation:Minimum=0
	// +optional
	Data *int32 `json:"data,omitempty"`

	// GlobalPerMinute is all requests per minute over every class, per user (logins per
	// client IP) (RATE_LIMIT_GLOBAL_PER_MINUTE). Defaults to 100.
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +optional
	GlobalPerMinute *int32 `json:"globalPerMinute,omitempty"`

	// GlobalPerDay is all requests per day over every class, per user (logins per client
	// IP) (RATE_LIMIT_GLOBAL_PER_DAY). Defaults to 1000.
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=0
	// +optional
	GlobalPerDay *int32 `json:"globalPerDay,omitempty"`
}

// CacheSpec sets cache lifetimes, as Go durations such as 30s or 1m30s.
type CacheSpec struct {
	// PositionsTTL is how long a user's positions are cached (CACHE_POSITIONS_TTL).
	// Defaults to 30s; more than 0, at most 24h.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) > duration('0s') && duration(self) <= duration('24h'))",message="spec.runtime.cache.positionsTTL must be more than 0 and at most 24h"
	// +optional
	PositionsTTL string `json:"positionsTTL,omitempty"`

	// SummaryTTL is how long a user's summary is cached (CACHE_SUMMARY_TTL). Defaults to 10s;
	// more than 0, at most 24h.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) > duration('0s') && duration(self) <= duration('24h'))",message="spec.runtime.cache.summaryTTL must be more than 0 and at most 24h"
	// +optional
	SummaryTTL string `json:"summaryTTL,omitempty"`
}

// AuthSpec sets token lifetimes, as Go durations such as 60m or 720h.
type AuthSpec struct {
	// AccessTokenTTL is the lifetime of an access token (ACCESS_TOKEN_TTL). Defaults to 60m;
	// at least 1s.
	// +kubebuilder:default="60m"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s'))",message="spec.runtime.auth.accessTokenTTL must be at least 1s (tokens carry whole seconds)"
	// +optional
	AccessTokenTTL string `json:"accessTokenTTL,omitempty"`

	// RefreshTokenTTL is the lifetime of a refresh token (REFRESH_TOKEN_TTL). Defaults to
	// 720h; at least 1s.
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s'))",message="spec.runtime.auth.refreshTokenTTL must be at least 1s (tokens carry whole seconds)"
	// +optional
	RefreshTokenTTL string `json:"refreshTokenTTL,omitempty"`
}

// AutoscalingSpec makes a HorizontalPodAutoscaler scale the runtime on CPU.
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",message="spec.runtime.autoscaling.minReplicas must be less than or equal to spec.runtime.autoscaling.maxReplicas (minReplicas defaults to 2)"
type AutoscalingSpec struct {
	// MinReplicas is the fewest runtime pods. Defaults to 2, so that one pod can be disrupted.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinReplicas int32 `json:"minReplicas,omitempty"`

	// MaxReplicas is the most runtime pods; at least minReplicas.
	// +kubebuilder:validation:Minimum=1
	// +required
	MaxReplicas int32 `json:"maxReplicas"`

	// TargetCPUUtilizationPercentage is the average CPU use, in percent of the request, that the
	// autoscaler aims at. Defaults to 80.
	// +kubebuilder:default=80
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	TargetCPUUtilizationPercentage int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// PostgresSpec selects the database and the runtime's connection pool. Set managed or
// external, not both; neither means managed with its defaults.
// +kubebuilder:validation:XValidation:rule="!(has(self.managed) && has(self.external))",message="spec.postgres.managed and spec.postgres.external are mutually exclusive: set only one"
// +kubebuilder:validation:XValidation:rule="has(self.managed) || has(self.external) || !has(oldSelf.managed)",message="spec.postgres.managed cannot be removed (its storage may only grow and its class is fixed); set spec.postgres.external instead to move to an external database"
type PostgresSpec struct {
	// Managed runs PostgreSQL 16 in a StatefulSet with one replica and a persistent volume.
	// This is what the stack uses when external is not set.
	// +optional
	Managed *ManagedPostgres `json:"managed,omitempty"`

	// External uses an existing PostgreSQL whose DSN is in a Secret; no database is created.
	// +optional
	External *ExternalPostgres `json:"external,omitempty"`

	// Pool configures the runtime's connection pool.
	// +kubebuilder:default={}
	// +optional
	Pool PoolSpec `json:"pool,omitempty"`
}

// ManagedPostgres is a PostgreSQL the operator runs.
type ManagedPostgres struct {
	// Image is the PostgreSQL 16 image, pinned to a fixed tag. The pod runs as the image's
	// postgres user (uid 999). Defaults to docker.io/library/postgres:16.6.
	// +kubebuilder:default="docker.io/library/postgres:16.6"
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// Storage is the database's persistent volume.
	// +kubebuilder:default={}
	// +optional
	Storage StorageSpec `json:"storage,omitempty"`

	// Resources of the PostgreSQL container. Empty means requests of 250m CPU and 256Mi memory
	// and a memory limit of 1Gi.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
}

// StorageSpec is the database's PersistentVolumeClaim.
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.storageClassName) || size(oldSelf.storageClassName) == 0 || (has(self.storageClassName) && self.storageClassName == oldSelf.storageClassName)",message="spec.postgres.managed.storage.storageClassName is immutable once set"
type StorageSpec struct {
	// Size of the volume, a quantity such as 10Gi. It may only grow (shrinking a volume would
	// lose data). Defaults to 10Gi.
	// +kubebuilder:default="10Gi"
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",message="spec.postgres.managed.storage.size must be a positive quantity such as 10Gi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0",message="spec.postgres.managed.storage.size may only grow"
	// +optional
	Size string `json:"size,omitempty"`

	// StorageClassName of the volume; empty uses the cluster's default class. Immutable once set.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	StorageClassName string `json:"storageClassName,omitempty"`
}

// ExternalPostgres is an existing PostgreSQL.
type ExternalPostgres struct {
	// ConnectionSecretRef names the Secret and key holding the DSN
	// (postgres://user:password@host:5432/db?sslmode=require) the runtime and the migration Job
	// connect with. The Secret must be in the stack's namespace.
	// +required
	ConnectionSecretRef SecretKeyReference `json:"connectionSecretRef"`

	// CASecretRef names the Secret and key holding the PEM certificates of the CAs that sign
	// the database server's certificate (a private CA, or a cloud provider's such as Amazon
	// RDS's). It is mounted into the runtime's and the migration Job's pods, and
	// PGSSLROOTCERT points at it: with sslmode=verify-full in the DSN they verify the server.
	// +optional
	CASecretRef *SecretKeyReference `json:"caSecretRef,omitempty"`
}

// SecretKeyReference names one key of a Secret in the stack's namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`

	// Key within the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Key string `json:"key"`
}

// PoolSpec is the runtime's PostgreSQL connection pool, per replica.
// +kubebuilder:validation:XValidation:rule="!has(self.minConns) || !has(self.maxConns) || self.minConns <= self.maxConns",message="spec.postgres.pool.minConns must be less than or equal to spec.postgres.pool.maxConns"
type PoolSpec struct {
	// MaxConns is the most connections per runtime pod (DB_MAX_CONNS). Defaults to 30.
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxConns int32 `json:"maxConns,omitempty"`

	// MinConns is the connections each runtime pod keeps open (DB_MIN_CONNS). Defaults to 2.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +optional
	MinConns *int32 `json:"minConns,omitempty"`

	// MaxConnLifetime is how long a connection is reused before it is replaced
	// (DB_MAX_CONN_LIFETIME), a Go duration. Defaults to 1h.
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) > duration('0s'))",message="spec.postgres.pool.maxConnLifetime must be more than 0"
	// +optional
	MaxConnLifetime string `json:"maxConnLifetime,omitempty"`

	// HealthCheckPeriod is how often idle connections are checked (DB_HEALTH_CHECK_PERIOD), a
	// Go duration. Defaults to 30s.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') || (duration(self) > duration('0s'))",message="spec.postgres.pool.healthCheckPeriod must be more than 0"
	// +optional
	HealthCheckPeriod string `json:"healthCheckPeriod,omitempty"`
}

// RedisMode selects where the shared cache lives.
// +kubebuilder:validation:Enum=managed;external;disabled
type RedisMode string

const (
	// RedisManaged runs Redis in a Deployment next to the runtime.
	RedisManaged RedisMode = "managed"
	// RedisExternal uses an existing Redis at spec.redis.address.
	RedisExternal RedisMode = "external"
	// RedisDisabled runs without Redis: each replica caches and rate-limits on its own.
	RedisDisabled RedisMode = "disabled"
)

// RedisSpec selects the shared cache and rate-limit store.
// +kubebuilder:validation:XValidation:rule="!has(self.mode) || self.mode != 'external' || (has(self.address) && size(self.address) > 0)",message="spec.redis.address is required when spec.redis.mode is external"
// +kubebuilder:validation:XValidation:rule="!has(self.tls) || (has(self.mode) && self.mode == 'external')",message="spec.redis.tls is for spec.redis.mode external only"
type RedisSpec struct {
	// Mode is managed (the operator runs Redis, the default), external (an existing Redis at
	// address) or disabled (no Redis: caches and rate limits are per replica).
	// +kubebuilder:default=managed
	// +optional
	Mode RedisMode `json:"mode,omitempty"`

	// Image of the managed Redis, pinned to a fixed tag. Defaults to
	// docker.io/library/redis:7.4.1. Managed mode only.
	// +kubebuilder:default="docker.io/library/redis:7.4.1"
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// Resources of the managed Redis container. Empty means requests of 50m CPU and 64Mi memory
	// and a memory limit of 256Mi. Redis keeps to three quarters of the memory limit
	// (maxmemory, evicting the least recently used keys that expire); without a limit it is
	// not bounded. Managed mode only.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Address of the external Redis as host:port. Required in external mode. The stack uses
	// database 0 and keeps its keys and its invalidation channel under the prefix
	// NAMESPACE/NAME:, so several stacks may share one Redis.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s/@]+:[0-9]{1,5}$`
	// +kubebuilder:validation:XValidation:rule="!self.matches(':[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",message="spec.redis.address must end with a port from 1 to 65535"
	// +optional
	Address string `json:"address,omitempty"`

	// PasswordSecretRef names the Secret and key holding the external Redis's password, if it
	// has one; any characters (the runtime takes it as it is, REDIS_PASSWORD). External mode
	// only.
	// +optional
	PasswordSecretRef *SecretKeyReference `json:"passwordSecretRef,omitempty"`

	// TLS connects to the external Redis over TLS (rediss://), as cloud Redis services ask.
	// External mode only.
	// +optional
	TLS *RedisTLS `json:"tls,omitempty"`
}

// RedisTLS is TLS to an external Redis. The runtime verifies the server's certificate and
// host name; it never connects unverified.
// +kubebuilder:validation:XValidation:rule="!has(self.caSecretRef) || (has(self.enabled) && self.enabled)",message="spec.redis.tls.caSecretRef needs spec.redis.tls.enabled: true"
type RedisTLS struct {
	// Enabled turns TLS on.
	// +optional
	Enabled bool `json:"enabled,omitempty"`

	// CASecretRef names the Secret and key holding the PEM certificates of the CAs that sign
	// the server's certificate (REDIS_CA_FILE). Unset: the public CAs the runtime image
	// trusts, which is what cloud providers' Redis services use.
	// +optional
	CASecretRef *SecretKeyReference `json:"caSecretRef,omitempty"`
}

// MonitoringSpec controls the prometheus-operator objects made for the runtime.
type MonitoringSpec struct {
	// ServiceMonitor makes Prometheus scrape the runtime's metrics port.
	// +kubebuilder:default={}
	// +optional
	ServiceMonitor ServiceMonitorSpec `json:"serviceMonitor,omitempty"`

	// PrometheusRule holds alerts on the runtime's metrics (error ratio, latency, database
	// availability, pending orders, daily loss).
	// +kubebuilder:default={}
	// +optional
	PrometheusRule PrometheusRuleSpec `json:"prometheusRule,omitempty"`
}

// ServiceMonitorSpec configures the runtime's ServiceMonitor.
type ServiceMonitorSpec struct {
	// Enabled creates a ServiceMonitor NAME-api when the ServiceMonitor CRD is installed.
	// Defaults to true.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// Interval between scrapes, a Prometheus duration such as 30s or 1m. Defaults to 30s.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Pattern=`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`
	// +optional
	Interval string `json:"interval,omitempty"`

	// Labels added to the ServiceMonitor, e.g. the release label a Prometheus selects on.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// PrometheusRuleSpec configures the runtime's PrometheusRule.
type PrometheusRuleSpec struct {
	// Enabled creates a PrometheusRule NAME-alerts when the PrometheusRule CRD is installed.
	// Defaults to true.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// Labels added to the PrometheusRule, e.g. the label a Prometheus's ruleSelector matches.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// Phase summarizes the conditions in one word for `kubectl get`.
// +kubebuilder:validation:Enum=Pending;Provisioning;Migrating;Ready;Degraded;Failed
type Phase string

const (
	// PhasePending: the stack was accepted and nothing has been created yet (or it is paused
	// before its first pass).
	PhasePending Phase = "Pending"
	// PhaseProvisioning: children are being created or are not ready yet, before the stack
	// first served (after that, a component that is not ready makes it Degraded).
	PhaseProvisioning Phase = "Provisioning"
	// PhaseMigrating: a migration Job for the desired runtime image is running.
	PhaseMigrating Phase = "Migrating"
	// PhaseReady: every required condition is True.
	PhaseReady Phase = "Ready"
	// PhaseDegraded: the stack has served, but something is wrong (a failed migration of a
	// new image while the old runtime keeps serving, fewer ready replicas than desired, a
	// component no longer ready).
	PhaseDegraded Phase = "Degraded"
	// PhaseFailed: the stack cannot serve and needs a user's action (e.g. the external
	// database's Secret is missing, the first migration failed, the first rollout of the
	// runtime passed its progress deadline, the API server refuses a child as invalid). A
	// stack that serves and needs one is Degraded.
	PhaseFailed Phase = "Failed"
)

// TradingStackStatus is what the operator observed in its last pass.
type TradingStackStatus struct {
	// ObservedGeneration is the metadata.generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Phase summarizes the conditions: Pending, Provisioning, Migrating, Ready, Degraded or Failed.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// SchemaVersion is the database schema version applied by the last successful migration,
	// as the migration Job's pod reported it (its termination message); the migrated image's
	// tag when it did not (an image from before that report, or the pods already gone).
	// +optional
	SchemaVersion string `json:"schemaVersion,omitempty"`

	// Runtime describes the runtime Deployment.
	// +optional
	Runtime RuntimeStatus `json:"runtime,omitempty"`

	// Migration records the last runtime image whose migration Job succeeded; the runtime
	// Deployment runs that image.
	// +optional
	Migration MigrationStatus `json:"migration,omitempty"`

	// Endpoints are the in-cluster URLs of the runtime.
	// +optional
	Endpoints EndpointsStatus `json:"endpoints,omitempty"`

	// Secrets are the names of the Secrets the operator generated for this stack.
	// +optional
	Secrets SecretsStatus `json:"secrets,omitempty"`

	// Conditions: DatabaseReady, CacheReady, MigrationsSucceeded, RuntimeAvailable,
	// MonitoringReady, Progressing, Degraded and Ready (True when every required one is True).
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// RuntimeStatus describes the runtime Deployment.
type RuntimeStatus struct {
	// Replicas is the desired number of runtime pods. Written even when 0, like
	// ReadyReplicas: "0 ready" is an answer, an absent field is not.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas is the number of runtime pods that are ready.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// ReplicasText is "ready/desired", for the REPLICAS column of `kubectl get tstack`.
	// +optional
	ReplicasText string `json:"replicasText,omitempty"`

	// Image is the image the runtime Deployment runs.
	// +optional
	Image string `json:"image,omitempty"`
}

// MigrationStatus records the last runtime image whose migration succeeded.
type MigrationStatus struct {
	// Image is the last runtime image whose `tradingd migrate` Job succeeded. The runtime
	// Deployment moves to a new image only once that image's Job has succeeded.
	// +optional
	Image string `json:"image,omitempty"`

	// JobName is the migration Job that succeeded for image.
	// +optional
	JobName string `json:"jobName,omitempty"`

	// Database identifies the database that Job migrated (managed, or the external DSN's
	// Secret and a hash of its value): pointing the stack at another database runs the
	// migration again, for the same image.
	// +optional
	Database string `json:"database,omitempty"`
}

// EndpointsStatus are in-cluster URLs of the runtime.
type EndpointsStatus struct {
	// API is the trading API, e.g. http://NAME-api.NAMESPACE.svc:8080.
	// +optional
	API string `json:"api,omitempty"`

	// Metrics is the Prometheus endpoint, e.g. http://NAME-api.NAMESPACE.svc:9090/metrics.
	// +optional
	Metrics string `json:"metrics,omitempty"`
}

// SecretsStatus names the generated Secrets.
type SecretsStatus struct {
	// PostgresCredentials holds the managed database's user, password and dsn (managed
	// PostgreSQL only).
	// +optional
	PostgresCredentials string `json:"postgresCredentials,omitempty"`

	// JWT holds the runtime's token signing keys (key "keys", kid:base64 lines).
	// +optional
	JWT string `json:"jwt,omitempty"`

	// Admin holds the bootstrap admin's password (key "password"); log in as user "admin".
	// +optional
	Admin string `json:"admin,omitempty"`
}

// TradingStack is one trading service: a PostgreSQL (managed or external), an optional Redis,
// schema migrations, the tradingd runtime, its policies and its monitoring.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tstack,categories=trading
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`,description="The Ready condition's status"
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`,description="Phase derived from the conditions"
// +kubebuilder:printcolumn:name="Replicas",type=string,JSONPath=`.status.runtime.replicasText`,description="Ready/desired runtime replicas"
// +kubebuilder:printcolumn:name="Schema",type=string,JSONPath=`.status.schemaVersion`,description="Applied database schema version"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 40",message="metadata.name must be at most 40 characters: child names add suffixes such as -migrate-0123456789 and must stay valid label values"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must start with a letter and contain only lowercase letters, digits and '-' (it names Services)"
type TradingStack struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired stack. Every field is optional; an empty spec gives a working stack.
	// +kubebuilder:default={}
	// +optional
	Spec TradingStackSpec `json:"spec,omitempty"`

	// Status is what the operator observed.
	// +optional
	Status TradingStackStatus `json:"status,omitempty"`
}

// TradingStackList is a list of TradingStacks.
// +kubebuilder:object:root=true
type TradingStackList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TradingStack `json:"items"`
}

func init() {
	SchemeBuilder.Register(&TradingStack{}, &TradingStackList{})
}
