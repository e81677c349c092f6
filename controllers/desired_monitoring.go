package controllers

import (
	"fmt"
	"maps"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// desiredServiceMonitor is NAME-api scraping the runtime Service's metrics port at /metrics,
// or nil when spec.monitoring.serviceMonitor.enabled is false. The user's labels are added to
// the operator's (which win on a clash, since selectors depend on them). The job label of the
// series is the Service's name label, tradingd, for every stack (namespace and service tell
// the stacks apart): the cluster-wide alerts of config/prometheus select job="tradingd", since
// a Service name ending in -api is no sign of a trading runtime in a shared Prometheus.
func desiredServiceMonitor(s *tradingv1alpha1.TradingStack) *monitoringv1.ServiceMonitor {
	if !s.ServiceMonitorEnabled() {
		return nil
	}
	sm := s.Spec.Monitoring.ServiceMonitor
	interval := sm.Interval
	if interval == "" {
		interval = tradingv1alpha1.DefaultScrapeInterval
	}
	meta := objectMeta(s, apiName(s), tradingdApp, monitoringComponent)
	meta.Labels = withUserLabels(meta.Labels, sm.Labels)
	return &monitoringv1.ServiceMonitor{
		TypeMeta:   typeMeta(monitoringv1.SchemeGroupVersion.String(), monitoringv1.ServiceMonitorsKind),
		ObjectMeta: meta,
		Spec: monitoringv1.ServiceMonitorSpec{
			Selector: metav1.LabelSelector{MatchLabels: selectorLabels(s, apiComponent)},
			JobLabel: nameLabel,
			Endpoints: []monitoringv1.Endpoint{{
				Port:     metricsPortName,
				Path:     "/metrics",
				Interval: monitoringv1.Duration(interval),
			}},
		},
	}
}

func withUserLabels(own, user map[string]string) map[string]string {
	out := make(map[string]string, len(own)+len(user))
	maps.Copy(out, user)
	maps.Copy(out, own)
	return out
}

// runbookBaseURL is where the alerts' runbook_url annotations point (docs/runbook.md).
const runbookBaseURL = "https://github.com/findmy/trading-operator/blob/main/docs/runbook.md#"

// desiredPrometheusRule is NAME-alerts with alerts on the runtime's metrics, scoped to this
// stack by namespace and Service, or nil when spec.monitoring.prometheusRule.enabled is false.
func desiredPrometheusRule(s *tradingv1alpha1.TradingStack) *monitoringv1.PrometheusRule {
	if !s.PrometheusRuleEnabled() {
		return nil
	}
	sel := fmt.Sprintf(`namespace=%q,service=%q`, s.Namespace, apiName(s))
	alert := func(name, expr, forDur, severity, summary, description string) monitoringv1.Rule {
		return monitoringv1.Rule{
			Alert: name,
			Expr:  intstr.FromString(expr),
			For:   ptr.To(monitoringv1.Duration(forDur)),
			Labels: map[string]string{
				"severity":     severity,
				"tradingstack": s.Name,
			},
			Annotations: map[string]string{
				"summary":     summary,
				"description": description,
				// Every alert has a section of the runbook, under its lower-cased name.
				"runbook_url": runbookBaseURL + strings.ToLower(name),
			},
		}
	}
	// No scraped pod at all is down too, but only when the operator's ServiceMonitor makes the
	// series: without it (spec.monitoring.serviceMonitor.enabled false, scraped some other way
	// or not at all) up{service="NAME-api"} never exists, and absent() would page for good.
	down := fmt.Sprintf(`max(up{%s}) == 0`, sel)
	if s.ServiceMonitorEnabled() {
		down += fmt.Sprintf(` or absent(up{%s})`, sel)
	}
	rules := []monitoringv1.Rule{
		alert("TradingAPIDown", down, "5m", "critical",
			"No runtime of TradingStack "+s.Name+" is scraped successfully",
			"Prometheus cannot scrape any pod of "+apiName(s)+" in "+s.Namespace+" for 5 minutes."),
		alert("TradingAPIHighErrorRate",
			fmt.Sprintf(`sum(rate(api_requests_total{%s,status=~"5.."}[5m])) / sum(rate(api_requests_total{%s}[5m])) > 0.05`, sel, sel),
			"10m", "warning",
			"More than 5% of requests to TradingStack "+s.Name+" fail with 5xx",
			"The share of 5xx responses of "+apiName(s)+" is {{ $value | humanizePercentage }}."),
		alert("TradingAPIHighLatency",
			fmt.Sprintf(`histogram_quantile(0.99, sum by (le) (rate(api_request_duration_seconds_bucket{%s}[5m]))) > 1`, sel),
			"10m", "warning",
			"p99 latency of TradingStack "+s.Name+" is above 1s",
			"The 99th percentile request duration of "+apiName(s)+" is {{ $value | humanizeDuration }}."),
		alert("TradingDatabaseUnavailable",
			fmt.Sprintf(`sum(increase(health_check_failures_total{%s}[5m])) > 0`, sel), "5m", "critical",
			"The runtime of TradingStack "+s.Name+" cannot reach its database",
			"Readiness checks of "+apiName(s)+" have been failing for 5 minutes; the API answers 503."),
		alert("TradingPendingOrdersPiling",
			fmt.Sprintf(`max(orders_pending_total{%s}) > 100`, sel), "15m", "warning",
			"More than 100 orders of TradingStack "+s.Name+" wait for approval",
			"{{ $value }} orders have been pending for 15 minutes; the risk desk may be short-handed."),
	}
	if loss := tradingv1alpha1.Amount(s.Spec.Runtime.MaxDailyLoss); loss != "" {
		rules = append(rules, alert("TradingDailyLossNearLimit",
			fmt.Sprintf(`max(daily_loss_total{%s}) >= 0.8 * %s`, sel, loss), "5m", "warning",
			"Daily loss of TradingStack "+s.Name+" is at 80% of the per-user limit",
			"The desk's realized loss today (UTC, all users) is {{ $value }}, at least 80% of "+loss+
				", the loss at which one user's new orders stop: a trader may be at their limit."))
	}
	meta := objectMeta(s, alertsName(s), tradingdApp, monitoringComponent)
	meta.Labels = withUserLabels(meta.Labels, s.Spec.Monitoring.PrometheusRule.Labels)
	return &monitoringv1.PrometheusRule{
		TypeMeta:   typeMeta(monitoringv1.SchemeGroupVersion.String(), monitoringv1.PrometheusRuleKind),
		ObjectMeta: meta,
		Spec: monitoringv1.PrometheusRuleSpec{
			Groups: []monitoringv1.RuleGroup{{Name: "tradingstack." + s.Name, Rules: rules}},
		},
	}
}
