package v1alpha1

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// applySchemaDefaults fills absent fields of obj from the schema's defaults, the way the API
// server does (a default applies when its field is absent, then the walk descends, so an
// object defaulted to {} gets its fields' defaults too).
func applySchemaDefaults(obj map[string]any, s apiextensionsv1.JSONSchemaProps) {
	for name, prop := range s.Properties {
		if _, ok := obj[name]; !ok && prop.Default != nil {
			var v any
			if err := json.Unmarshal(prop.Default.Raw, &v); err != nil {
				panic(err)
			}
			obj[name] = v
		}
		switch v := obj[name].(type) {
		case map[string]any:
			applySchemaDefaults(v, prop)
		}
	}
}

func crdSchema(t *testing.T) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	raw, err := os.ReadFile("../../config/crd/bases/trading.findmy.io_tradingstacks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	return *crd.Spec.Versions[0].Schema.OpenAPIV3Schema
}

// TestGoDefaultsMatchSchema keeps WithDefaults in step with the +kubebuilder:default markers:
// the controller builds children from WithDefaults, the API server stores the schema's.
func TestGoDefaultsMatchSchema(t *testing.T) {
	tests := map[string]string{
		"empty":             `{}`,
		"managed and HPA":   `{"spec":{"postgres":{"managed":{}},"runtime":{"autoscaling":{"maxReplicas":4}}}}`,
		"external postgres": `{"spec":{"postgres":{"external":{"connectionSecretRef":{"name":"db","key":"dsn"}}}}}`,
		"explicit zeros":    `{"spec":{"runtime":{"rateLimits":{"login":0,"data":0}},"postgres":{"pool":{"minConns":0}}}}`,
	}
	sch := crdSchema(t)
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			var obj map[string]any
			if err := json.Unmarshal([]byte(in), &obj); err != nil {
				t.Fatal(err)
			}
			applySchemaDefaults(obj, sch)
			raw, _ := json.Marshal(obj)
			var byServer TradingStack
			if err := json.Unmarshal(raw, &byServer); err != nil {
				t.Fatal(err)
			}

			var plain TradingStack
			if err := json.Unmarshal([]byte(in), &plain); err != nil {
				t.Fatal(err)
			}
			byGo := plain.WithDefaults()
			// Beyond the schema, Go fills the runtime image and "neither means managed".
			if byGo.Spec.Runtime.Image != DefaultRuntimeImage {
				t.Errorf("runtime image %q, want DefaultRuntimeImage", byGo.Spec.Runtime.Image)
			}
			byGo.Spec.Runtime.Image = ""
			if byServer.Spec.Postgres.Managed == nil && byServer.Spec.Postgres.External == nil {
				if byGo.Spec.Postgres.Managed == nil || byGo.Spec.Postgres.Managed.Image != DefaultPostgresImage ||
					byGo.Spec.Postgres.Managed.Storage.Size != DefaultStorageSize {
					t.Errorf("neither managed nor external: Go defaults give %+v", byGo.Spec.Postgres.Managed)
				}
				byGo.Spec.Postgres.Managed = nil
			}
			if !reflect.DeepEqual(byServer.Spec, byGo.Spec) {
				a, _ := json.MarshalIndent(byServer.Spec, "", " ")
				b, _ := json.MarshalIndent(byGo.Spec, "", " ")
				t.Errorf("schema defaults and WithDefaults differ:\nschema: %s\nGo:     %s", a, b)
			}
		})
	}
}

func TestWithDefaultsLeavesOriginal(t *testing.T) {
	s := &TradingStack{ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	_ = s.WithDefaults()
	if !reflect.DeepEqual(s.Spec, TradingStackSpec{}) {
		t.Errorf("WithDefaults changed its receiver: %+v", s.Spec)
	}
}

// status.runtime says 0 ready replicas as 0: a jsonpath or a dashboard reading an absent
// field sees nothing, not zero.
func TestRuntimeStatusWritesZeroReplicas(t *testing.T) {
	b, err := json.Marshal(RuntimeStatus{Replicas: 2, ReplicasText: "0/2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); got != `{"replicas":2,"readyReplicas":0,"replicasText":"0/2"}` {
		t.Fatalf("status.runtime = %s", got)
	}
}
