package v1alpha1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkloadSpec is the blueprint of one tenant container.
type WorkloadSpec struct {
	// Version is a free-form version string of the workload.
	// +kubebuilder:validation:MinLength=1
	Version string `json:"version"`
	// Image says where the container image comes from.
	Image ImageSpec `json:"image"`
	// Resources are applied as requests and limits alike (Guaranteed QoS).
	Resources ResourcesSpec `json:"resources"`
	// +optional
	Network *NetworkSpec `json:"network,omitempty"`
	// +optional
	Filesystem *FilesystemSpec `json:"filesystem,omitempty"`
	// +optional
	Idle *IdleSpec `json:"idle,omitempty"`
	// +optional
	Health *HealthSpec `json:"health,omitempty"`
	// +optional
	Entrypoint *EntrypointSpec `json:"entrypoint,omitempty"`
	// +optional
	APIAccess *APIAccessSpec `json:"apiAccess,omitempty"`
	// Security relaxes the hardened defaults where an image needs it.
	// +optional
	Security *SecuritySpec `json:"security,omitempty"`
}

// ImageSpec names the image: a reference, or a Dockerfile (exactly one).
type ImageSpec struct {
	// +optional
	Ref string `json:"ref,omitempty"`
	// +optional
	Dockerfile string `json:"dockerfile,omitempty"`
}

// ResourcesSpec sizes the container.
type ResourcesSpec struct {
	// +kubebuilder:validation:Minimum=1
	VCPUs int32 `json:"vcpus"`
	// +kubebuilder:validation:Minimum=1
	MemoryMb int32 `json:"memoryMb"`
	// +kubebuilder:validation:Minimum=0
	DiskGb int32 `json:"diskGb"`
}

// NetworkAccess is the egress mode of a workload.
// +kubebuilder:validation:Enum=none;restricted;unrestricted
type NetworkAccess string

const (
	NetworkAccessNone         NetworkAccess = "none"
	NetworkAccessRestricted   NetworkAccess = "restricted"
	NetworkAccessUnrestricted NetworkAccess = "unrestricted"
)

// NetworkSpec declares ports, egress and credential injection.
type NetworkSpec struct {
	// +optional
	Access NetworkAccess `json:"access,omitempty"`
	// +optional
	Expose []ExposeSpec `json:"expose,omitempty"`
	// +optional
	Allowlist []string `json:"allowlist,omitempty"`
	// +optional
	Credentials []CredentialSpec `json:"credentials,omitempty"`
	// +optional
	Websocket string `json:"websocket,omitempty"`
}

// ExposeSpec is one container port; the first is the claim endpoint's port.
type ExposeSpec struct {
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Guest int32 `json:"guest"`
}

// CredentialSpec injects headers into egress requests to one domain.
type CredentialSpec struct {
	Domain string `json:"domain"`
	// +optional
	Headers []HeaderEntry `json:"headers,omitempty"`
}

// HeaderEntry is one injected header: a literal value or a Secret reference.
type HeaderEntry struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +optional
	Value string `json:"value,omitempty"`
	// +optional
	ValueFrom *HeaderValueSource `json:"valueFrom,omitempty"`
}

// HeaderValueSource points a header at a Secret key.
type HeaderValueSource struct {
	SecretKeyRef SecretKeyRef `json:"secretKeyRef"`
}

// SecretKeyRef names one key of a Secret in the system's namespace.
type SecretKeyRef struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	Key string `json:"key"`
}

// FilesystemSpec lists the directories saved across hibernation.
type FilesystemSpec struct {
	// +optional
	OverlayDirs []string `json:"overlayDirs,omitempty"`
	// +optional
	EncryptOverlays *bool `json:"encryptOverlays,omitempty"`
}

// IdleAction is what release does with the instance.
// +kubebuilder:validation:Enum=hibernate;destroy
type IdleAction string

const (
	IdleActionHibernate IdleAction = "hibernate"
	IdleActionDestroy   IdleAction = "destroy"
)

// IdleSpec releases unused claims.
type IdleSpec struct {
	// +kubebuilder:validation:Minimum=0
	// +optional
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
	// +optional
	Action IdleAction `json:"action,omitempty"`
	// +optional
	WatchDirs []string `json:"watchDirs,omitempty"`
}

// HealthSpec becomes the container's readiness probe.
type HealthSpec struct {
	// +kubebuilder:validation:Minimum=1
	// +optional
	IntervalSeconds int32 `json:"intervalSeconds,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +optional
	UnhealthyThreshold int32 `json:"unhealthyThreshold,omitempty"`
	// +optional
	HTTPGet *HTTPGetHealth `json:"httpGet,omitempty"`
	// +optional
	Exec *ExecHealth `json:"exec,omitempty"`
}

// HTTPGetHealth probes an HTTP path on a port.
type HTTPGetHealth struct {
	// +optional
	Path string `json:"path,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// ExecHealth probes by running a command.
type ExecHealth struct {
	// +kubebuilder:validation:MinItems=1
	Command []string `json:"command"`
}

// EntrypointSpec overrides the image's command.
type EntrypointSpec struct {
	// +optional
	Cmd string `json:"cmd,omitempty"`
	// +optional
	Args []string `json:"args,omitempty"`
	// +optional
	Workdir string `json:"workdir,omitempty"`
	// Env is a map of variable name to value.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	Env *apiextensionsv1.JSON `json:"env,omitempty"`
}

// APIAccessSpec overrides the scopes of claim tokens; ["none"] disables them.
type APIAccessSpec struct {
	// +optional
	Scopes []string `json:"scopes,omitempty"`
}

// SecuritySpec holds opt-outs from the hardened Pod defaults.
type SecuritySpec struct {
	// AllowRoot lets the container run as root (runAsNonRoot is otherwise set).
	// +optional
	AllowRoot bool `json:"allowRoot,omitempty"`
}

// WorkloadPhase is the lifecycle phase of a workload.
// +kubebuilder:validation:Enum=Creating;Ready;Error
type WorkloadPhase string

const (
	WorkloadCreating WorkloadPhase = "Creating"
	WorkloadReady    WorkloadPhase = "Ready"
	WorkloadError    WorkloadPhase = "Error"
)

// WorkloadStatus reports whether the workload can be instantiated.
type WorkloadStatus struct {
	// +optional
	Phase WorkloadPhase `json:"phase,omitempty"`
	// +optional
	Detail string `json:"detail,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready (True when Pods can be made of the workload; False, reason Invalid,
	// with the problems as message).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ConditionReady is the condition type of workload and pool status.
const ConditionReady = "Ready"

// BoilerhouseWorkload is a container blueprint that tenants claim instances of.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bhw
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.spec.version`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image.ref`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BoilerhouseWorkload struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec WorkloadSpec `json:"spec"`
	// +optional
	Status WorkloadStatus `json:"status,omitempty"`
}

// BoilerhouseWorkloadList is a list of workloads.
//
// +kubebuilder:object:root=true
type BoilerhouseWorkloadList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BoilerhouseWorkload `json:"items"`
}
