package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// PoolSpec sizes a warm pool of one workload.
type PoolSpec struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	WorkloadRef string `json:"workloadRef"`
	// Size is the number of warming plus ready Pods the pool keeps.
	// +kubebuilder:validation:Minimum=0
	Size int32 `json:"size"`
	// MaxFillConcurrency bounds the Pods warming at once (default 2).
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxFillConcurrency *int32 `json:"maxFillConcurrency,omitempty"`
}

// DefaultMaxFillConcurrency applies when a pool does not set maxFillConcurrency.
const DefaultMaxFillConcurrency int32 = 2

// FillConcurrency is the pool's bound on warming Pods.
func (s PoolSpec) FillConcurrency() int32 {
	if s.MaxFillConcurrency == nil {
		return DefaultMaxFillConcurrency
	}
	return *s.MaxFillConcurrency
}

// PoolPhase summarises a pool's health.
// +kubebuilder:validation:Enum=Healthy;Degraded;Error
type PoolPhase string

const (
	PoolHealthy  PoolPhase = "Healthy"
	PoolDegraded PoolPhase = "Degraded"
	PoolError    PoolPhase = "Error"
)

// PoolStatus counts the pool's Pods.
type PoolStatus struct {
	// +optional
	Ready int32 `json:"ready"`
	// +optional
	Warming int32 `json:"warming"`
	// +optional
	Phase PoolPhase `json:"phase,omitempty"`
	// +optional
	Detail string `json:"detail,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready (True when the pool is Healthy; False with the phase as reason).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// BoilerhousePool keeps Pods of a workload warm for fast claims.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bhp
// +kubebuilder:printcolumn:name="Workload",type=string,JSONPath=`.spec.workloadRef`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.spec.size`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.ready`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
type BoilerhousePool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PoolSpec `json:"spec"`
	// +optional
	Status PoolStatus `json:"status,omitempty"`
}

// BoilerhousePoolList is a list of pools.
//
// +kubebuilder:object:root=true
type BoilerhousePoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BoilerhousePool `json:"items"`
}
