// Package v1alpha1 holds the TradingStack API: one resource from which the operator builds
// the whole trading service (database, cache, migrations, runtime, policy and monitoring).
//
// Validation and defaulting live in the CRD schema (markers and CEL rules), not in a webhook,
// so there is no certificate to manage and no admission outage that could block users.
//
// +kubebuilder:object:generate=true
// +groupName=trading.findmy.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "trading.findmy.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
