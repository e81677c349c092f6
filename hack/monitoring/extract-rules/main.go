// Command extract-rules prints the rule groups of a PrometheusRule manifest as a plain
// Prometheus rule file, which is what promtool reads (hack/promtool.sh). Decoding into the
// prometheus-operator type, strictly, also rejects a field the operator would not know.
package main

import (
	"fmt"
	"os"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: extract-rules PROMETHEUSRULE.yaml > rules.yaml")
		os.Exit(2)
	}
	out, err := extract(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "extract-rules:", err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

func extract(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pr monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(data, &pr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if pr.Kind != monitoringv1.PrometheusRuleKind || len(pr.Spec.Groups) == 0 {
		return nil, fmt.Errorf("%s: not a PrometheusRule with groups", path)
	}
	return yaml.Marshal(struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}{pr.Spec.Groups})
}
