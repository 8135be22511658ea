package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// ClaimSpec asks for one instance of a workload for one tenant. The pair is fixed for the
// object's life: cr-sync maps one object to one claim.
type ClaimSpec struct {
	// TenantID is a Kubernetes label value: letters, digits, '.', '_' and '-',
	// at most 63 characters, alphanumeric at both ends.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="tenantId cannot be changed; delete the claim and create another"
	TenantID string `json:"tenantId"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="workloadRef cannot be changed; delete the claim and create another"
	WorkloadRef string `json:"workloadRef"`
	// Resume restores the tenant's saved overlay when one exists (default true).
	// +optional
	Resume *bool `json:"resume,omitempty"`
}

// ClaimPhase is where a claim is in its lifecycle.
// +kubebuilder:validation:Enum=Pending;Active;Releasing;Released;ReleaseFailed;Error
type ClaimPhase string

const (
	ClaimPending       ClaimPhase = "Pending"
	ClaimActive        ClaimPhase = "Active"
	ClaimReleasing     ClaimPhase = "Releasing"
	ClaimReleased      ClaimPhase = "Released"
	ClaimReleaseFailed ClaimPhase = "ReleaseFailed"
	ClaimError         ClaimPhase = "Error"
)

// ClaimSource says how a claim got its instance.
// +kubebuilder:validation:Enum=existing;cold;cold+data;pool;pool+data
type ClaimSource string

const (
	SourceExisting ClaimSource = "existing"
	SourceCold     ClaimSource = "cold"
	SourceColdData ClaimSource = "cold+data"
	SourcePool     ClaimSource = "pool"
	SourcePoolData ClaimSource = "pool+data"
)

// Endpoint is where the claimed instance answers.
type Endpoint struct {
	// +optional
	Host string `json:"host,omitempty"`
	// +optional
	Port int32 `json:"port,omitempty"`
}

// ClaimStatus mirrors the claim's state in the claims KV bucket.
type ClaimStatus struct {
	// +optional
	Phase ClaimPhase `json:"phase,omitempty"`
	// +optional
	InstanceID string `json:"instanceId,omitempty"`
	// +optional
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// +optional
	Source ClaimSource `json:"source,omitempty"`
	// +optional
	ClaimedAt *metav1.Time `json:"claimedAt,omitempty"`
	// +optional
	Detail string `json:"detail,omitempty"`
}

// BoilerhouseClaim is a tenant's lease on an instance of a workload.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bhc
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenantId`
// +kubebuilder:printcolumn:name="Workload",type=string,JSONPath=`.spec.workloadRef`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.source`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint.host`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BoilerhouseClaim struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ClaimSpec `json:"spec"`
	// +optional
	Status ClaimStatus `json:"status,omitempty"`
}

// BoilerhouseClaimList is a list of claims.
//
// +kubebuilder:object:root=true
type BoilerhouseClaimList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BoilerhouseClaim `json:"items"`
}
