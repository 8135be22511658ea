package v1alpha1

// Label and annotation keys on the objects Boilerhouse manages.
const (
	LabelManaged    = "boilerhouse.dev/managed"
	LabelWorkload   = "boilerhouse.dev/workload"
	LabelInstance   = "boilerhouse.dev/instance"
	LabelTenant     = "boilerhouse.dev/tenant"
	LabelPool       = "boilerhouse.dev/pool"
	LabelPoolStatus = "boilerhouse.dev/pool-status"

	PoolStatusWarming  = "warming"
	PoolStatusReady    = "ready"
	PoolStatusAcquired = "acquired"

	AnnotationLastActivity = "boilerhouse.dev/last-activity"

	Finalizer = "boilerhouse.dev/cleanup"
)
