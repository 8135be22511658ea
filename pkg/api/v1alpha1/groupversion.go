// Package v1alpha1 holds the Boilerhouse custom resources: workloads, pools and claims.
//
// +kubebuilder:object:generate=true
// +groupName=boilerhouse.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of every Boilerhouse resource.
	GroupVersion = schema.GroupVersion{Group: "boilerhouse.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&BoilerhouseWorkload{}, &BoilerhouseWorkloadList{},
		&BoilerhousePool{}, &BoilerhousePoolList{},
		&BoilerhouseClaim{}, &BoilerhouseClaimList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
