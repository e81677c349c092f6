package v1alpha1

import (
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// DefaultRuntimeImage is the tradingd image used when spec.runtime.image is empty: the image
// built together with the operator, which holds both /manager and /tradingd. The build sets it
// (the Dockerfile and `make build` pass
// -ldflags "-X github.com/findmy/trading-operator/api/v1alpha1.DefaultRuntimeImage=$IMG"),
// so that an operator of version X runs runtimes of version X. It is a Go variable rather than
// a schema default because the CRD schema is static and does not know the operator build.
var DefaultRuntimeImage = "ghcr.io/findmy/trading-operator:dev"

// The schema's defaults, repeated for Go: the API server applies the schema defaults to every
// stored object, but a stack that leaves spec.postgres.managed out (meaning "managed with its
// defaults") has no managed object to default, and pure tests build stacks without an API
// server. Keep these in step with the +kubebuilder:default markers.
const (
	DefaultReplicas               int32 = 2
	DefaultMaxQuantity                  = "1000000"
	DefaultMaxPrice                     = "1000000"
	DefaultRateLimitLogin         int32 = 5
	DefaultRateLimitTrading       int32 = 30
	DefaultRateLimitData          int32 = 60
	DefaultRateLimitGlobalPerMin  int32 = 100
	DefaultRateLimitGlobalPerDay  int32 = 1000
	DefaultPositionsTTL                 = "30s"
	DefaultSummaryTTL                   = "10s"
	DefaultAccessTokenTTL               = "60m"
	DefaultRefreshTokenTTL              = "720h"
	DefaultAutoscalingMinReplicas int32 = 2
	DefaultTargetCPUUtilization   int32 = 80
	DefaultPostgresImage                = "docker.io/library/postgres:16.6"
	DefaultStorageSize                  = "10Gi"
	DefaultPoolMaxConns           int32 = 30
	DefaultPoolMinConns           int32 = 2
	DefaultPoolMaxConnLifetime          = "1h"
	DefaultPoolHealthCheckPeriod        = "30s"
	DefaultRedisImage                   = "docker.io/library/redis:7.4.1"
	DefaultScrapeInterval               = "30s"
)

// DefaultSymbols is the default whitelist of spec.runtime.symbols.
var DefaultSymbols = []string{"BTC/USD", "ETH/USD", "BNB/USD", "XRP/USD", "ADA/USD"}

// WithDefaults returns a deep copy of the stack with every unset field of the spec given its
// default, exactly as the schema would, plus managed PostgreSQL when external is not set and
// the runtime image when it is empty. The controller's builders work on this copy, so they
// never see an unset field.
func (in *TradingStack) WithDefaults() *TradingStack {
	out := in.DeepCopy()
	out.Spec.setDefaults()
	return out
}

func (s *TradingStackSpec) setDefaults() {
	r := &s.Runtime
	if r.Image == "" {
		r.Image = DefaultRuntimeImage
	}
	if r.Replicas == 0 {
		r.Replicas = DefaultReplicas
	}
	if len(r.Symbols) == 0 {
		r.Symbols = append([]string(nil), DefaultSymbols...)
	}
	setAmount(&r.Limits.MaxQuantity, DefaultMaxQuantity)
	setAmount(&r.Limits.MaxPrice, DefaultMaxPrice)
	setInt32(&r.RateLimits.Login, DefaultRateLimitLogin)
	setInt32(&r.RateLimits.Trading, DefaultRateLimitTrading)
	setInt32(&r.RateLimits.Data, DefaultRateLimitData)
	setInt32(&r.RateLimits.GlobalPerMinute, DefaultRateLimitGlobalPerMin)
	setInt32(&r.RateLimits.GlobalPerDay, DefaultRateLimitGlobalPerDay)
	setString(&r.Cache.PositionsTTL, DefaultPositionsTTL)
	setString(&r.Cache.SummaryTTL, DefaultSummaryTTL)
	setString(&r.Auth.AccessTokenTTL, DefaultAccessTokenTTL)
	setString(&r.Auth.RefreshTokenTTL, DefaultRefreshTokenTTL)
	if a := r.Autoscaling; a != nil {
		if a.MinReplicas == 0 {
			a.MinReplicas = DefaultAutoscalingMinReplicas
		}
		if a.TargetCPUUtilizationPercentage == 0 {
			a.TargetCPUUtilizationPercentage = DefaultTargetCPUUtilization
		}
	}

	p := &s.Postgres
	if p.External == nil && p.Managed == nil {
		p.Managed = &ManagedPostgres{}
	}
	if m := p.Managed; m != nil {
		setString(&m.Image, DefaultPostgresImage)
		setString(&m.Storage.Size, DefaultStorageSize)
	}
	if p.Pool.MaxConns == 0 {
		p.Pool.MaxConns = DefaultPoolMaxConns
	}
	setInt32(&p.Pool.MinConns, DefaultPoolMinConns)
	setString(&p.Pool.MaxConnLifetime, DefaultPoolMaxConnLifetime)
	setString(&p.Pool.HealthCheckPeriod, DefaultPoolHealthCheckPeriod)

	if s.Redis.Mode == "" {
		s.Redis.Mode = RedisManaged
	}
	setString(&s.Redis.Image, DefaultRedisImage)

	if s.Monitoring.ServiceMonitor.Enabled == nil {
		s.Monitoring.ServiceMonitor.Enabled = ptr.To(true)
	}
	setString(&s.Monitoring.ServiceMonitor.Interval, DefaultScrapeInterval)
	if s.Monitoring.PrometheusRule.Enabled == nil {
		s.Monitoring.PrometheusRule.Enabled = ptr.To(true)
	}
	if s.RetainDataOnDelete == nil {
		s.RetainDataOnDelete = ptr.To(true)
	}
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setAmount(p **intstr.IntOrString, v string) {
	if *p == nil {
		*p = ptr.To(intstr.FromString(v))
	}
}

// Amount is the text of a decimal field (maxQuantity, maxPrice, maxDailyLoss), written as a
// number or a string: "" when unset.
func Amount(v *intstr.IntOrString) string {
	if v == nil {
		return ""
	}
	return v.String()
}

func setInt32(p **int32, v int32) {
	if *p == nil {
		*p = ptr.To(v)
	}
}

// RuntimeImage is the image the runtime should run: spec.runtime.image, or DefaultRuntimeImage
// when that is empty.
func (in *TradingStack) RuntimeImage() string {
	if in.Spec.Runtime.Image != "" {
		return in.Spec.Runtime.Image
	}
	return DefaultRuntimeImage
}

// ExternalPostgres reports whether the stack uses an existing database instead of a managed one.
func (in *TradingStack) ExternalPostgres() bool { return in.Spec.Postgres.External != nil }

// ManagedRedis reports whether the operator runs Redis for the stack (managed is the default).
func (in *TradingStack) ManagedRedis() bool {
	return in.Spec.Redis.Mode == "" || in.Spec.Redis.Mode == RedisManaged
}

// RetainData reports whether the database volume and generated Secrets outlive the stack
// (the default).
func (in *TradingStack) RetainData() bool {
	return in.Spec.RetainDataOnDelete == nil || *in.Spec.RetainDataOnDelete
}

// ServiceMonitorEnabled reports whether a ServiceMonitor is wanted (the default).
func (in *TradingStack) ServiceMonitorEnabled() bool {
	e := in.Spec.Monitoring.ServiceMonitor.Enabled
	return e == nil || *e
}

// PrometheusRuleEnabled reports whether a PrometheusRule is wanted (the default).
func (in *TradingStack) PrometheusRuleEnabled() bool {
	e := in.Spec.Monitoring.PrometheusRule.Enabled
	return e == nil || *e
}
