// Package translate turns a BoilerhouseWorkload into the Pod that runs one instance of it, checks
// workload specs, and names instances.
//
// The Pod is hardened by default: no service-account token, no privilege escalation, every
// capability dropped, the RuntimeDefault seccomp profile, runAsNonRoot unless the workload opts
// out with spec.security.allowRoot, Guaranteed QoS (requests == limits), and size limits on the
// ephemeral storage and overlay volumes when the workload declares a disk size.
package translate

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// ContainerName is the name of the workload's container in every Pod.
const ContainerName = "main"

// TerminationGracePeriodSeconds is the grace period of every instance Pod.
const TerminationGracePeriodSeconds int64 = 3

// AnnotationPodAnnotations is a workload annotation whose value, a JSON object of strings, is
// copied onto every Pod of the workload as annotations (for example
// {"devnode.boilerhouse.dev/behavior":"fail"} in development and tests).
const AnnotationPodAnnotations = "boilerhouse.dev/pod-annotations"

// Options say which instance a Pod is built for.
type Options struct {
	// Namespace of the Pod (required).
	Namespace string
	// InstanceID is the Pod name and the boilerhouse.dev/instance label (required).
	InstanceID string
	// TenantID sets the boilerhouse.dev/tenant label; empty for pool Pods.
	TenantID string
	// Pool is the BoilerhousePool the Pod is warmed for: it sets boilerhouse.dev/pool and
	// boilerhouse.dev/pool-status=warming. Empty for cold-booted Pods.
	Pool string
}

// ErrInvalidSpec is matched (errors.Is) by every *SpecError.
var ErrInvalidSpec = errors.New("invalid workload spec")

// SpecError lists what is wrong with a workload spec, or with the options a Pod is built with.
type SpecError struct {
	Problems []string
}

// Error joins the problems with "; ".
func (e *SpecError) Error() string { return strings.Join(e.Problems, "; ") }

// Is makes errors.Is(err, ErrInvalidSpec) true.
func (e *SpecError) Is(target error) bool { return target == ErrInvalidSpec }

// DecodeEnv decodes entrypoint.env, which must be a JSON object of string values. A nil or
// JSON-null env is an empty map.
func DecodeEnv(env *apiextensionsv1.JSON) (map[string]string, error) {
	if env == nil || len(env.Raw) == 0 || string(env.Raw) == "null" {
		return map[string]string{}, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(env.Raw, &raw); err != nil {
		return nil, &SpecError{Problems: []string{"entrypoint.env must be an object of string values"}}
	}
	out := make(map[string]string, len(raw))
	var problems []string
	for _, k := range sortedKeys(raw) {
		var v string
		if err := json.Unmarshal(raw[k], &v); err != nil || !isJSONString(raw[k]) {
			problems = append(problems, fmt.Sprintf("entrypoint.env[%q] must be a string, got %s", k, abbreviate(string(raw[k]))))
			continue
		}
		if k == "" {
			problems = append(problems, "entrypoint.env has an empty variable name")
			continue
		}
		if strings.ContainsRune(k, '=') {
			problems = append(problems, fmt.Sprintf("entrypoint.env variable name %q must not contain '='", k))
			continue
		}
		out[k] = v
	}
	if len(problems) > 0 {
		return nil, &SpecError{Problems: problems}
	}
	return out, nil
}

// Validate checks everything the Pod translation relies on and returns a *SpecError listing
// every problem (joined with "; "), or nil. A workload is Ready exactly when Validate passes.
func Validate(spec v1alpha1.WorkloadSpec) error {
	var p []string
	switch ref, df := spec.Image.Ref != "", spec.Image.Dockerfile != ""; {
	case ref && df:
		p = append(p, "image.ref and image.dockerfile are mutually exclusive")
	case df:
		p = append(p, "image.dockerfile is not supported: build and push the image, then set image.ref")
	case !ref:
		p = append(p, "either image.ref or image.dockerfile must be set")
	}
	if spec.Resources.VCPUs <= 0 {
		p = append(p, "resources.vcpus must be > 0")
	}
	if spec.Resources.MemoryMb <= 0 {
		p = append(p, "resources.memoryMb must be > 0")
	}
	if spec.Resources.DiskGb < 0 {
		p = append(p, "resources.diskGb must be >= 0")
	}
	if spec.Entrypoint != nil {
		if _, err := DecodeEnv(spec.Entrypoint.Env); err != nil {
			var se *SpecError
			if errors.As(err, &se) {
				p = append(p, se.Problems...)
			} else {
				p = append(p, err.Error())
			}
		}
		if wd := spec.Entrypoint.Workdir; wd != "" && !path.IsAbs(wd) {
			p = append(p, fmt.Sprintf("entrypoint.workdir %q must be an absolute path", wd))
		}
	}
	if spec.Filesystem != nil {
		seen := map[string]bool{}
		for i, d := range spec.Filesystem.OverlayDirs {
			switch {
			case !path.IsAbs(d):
				p = append(p, fmt.Sprintf("filesystem.overlayDirs[%d] %q must be an absolute path", i, d))
			case path.Clean(d) != d:
				p = append(p, fmt.Sprintf("filesystem.overlayDirs[%d] %q must be a clean path (%q)", i, d, path.Clean(d)))
			case d == "/":
				p = append(p, fmt.Sprintf("filesystem.overlayDirs[%d] must not be the root directory", i))
			case seen[d]:
				p = append(p, fmt.Sprintf("filesystem.overlayDirs[%d] %q is listed twice", i, d))
			}
			seen[d] = true
		}
	}
	if n := spec.Network; n != nil {
		ports := map[int32]bool{}
		for i, e := range n.Expose {
			switch {
			case e.Guest < 1 || e.Guest > 65535:
				p = append(p, fmt.Sprintf("network.expose[%d].guest %d must be between 1 and 65535", i, e.Guest))
			case ports[e.Guest]:
				p = append(p, fmt.Sprintf("network.expose[%d].guest %d is exposed twice", i, e.Guest))
			}
			ports[e.Guest] = true
		}
		for i, c := range n.Credentials {
			for j, h := range c.Headers {
				switch {
				case h.Value != "" && h.ValueFrom != nil:
					p = append(p, fmt.Sprintf("network.credentials[%d].headers[%d] (%s): value and valueFrom are mutually exclusive", i, j, h.Name))
				case h.Value == "" && h.ValueFrom == nil:
					p = append(p, fmt.Sprintf("network.credentials[%d].headers[%d] (%s): one of value or valueFrom must be set", i, j, h.Name))
				}
			}
		}
	}
	if h := spec.Health; h != nil && h.HTTPGet != nil && (h.HTTPGet.Port < 1 || h.HTTPGet.Port > 65535) {
		p = append(p, fmt.Sprintf("health.httpGet.port %d must be between 1 and 65535", h.HTTPGet.Port))
	}
	if h := spec.Health; h != nil && h.HTTPGet == nil && h.Exec != nil && len(h.Exec.Command) == 0 {
		p = append(p, "health.exec.command must not be empty")
	}
	if len(p) == 0 {
		return nil
	}
	return &SpecError{Problems: p}
}

// Pod builds the Pod of one instance of w. It fails with a *SpecError when w's spec does not
// pass Validate or opts are incomplete.
func Pod(w *v1alpha1.BoilerhouseWorkload, opts Options) (*corev1.Pod, error) {
	if w == nil {
		return nil, &SpecError{Problems: []string{"no workload"}}
	}
	var p []string
	if opts.Namespace == "" {
		p = append(p, "namespace must be set")
	}
	if errs := validation.IsDNS1123Label(opts.InstanceID); len(errs) > 0 {
		p = append(p, fmt.Sprintf("instance id %q: %s", opts.InstanceID, strings.Join(errs, ", ")))
	}
	if errs := validation.IsValidLabelValue(w.Name); w.Name == "" || len(errs) > 0 {
		p = append(p, fmt.Sprintf("workload name %q is not a label value", w.Name))
	}
	if opts.TenantID != "" {
		if errs := validation.IsValidLabelValue(opts.TenantID); len(errs) > 0 {
			p = append(p, fmt.Sprintf("tenant id %q: %s", opts.TenantID, strings.Join(errs, ", ")))
		}
	}
	if opts.Pool != "" {
		if errs := validation.IsValidLabelValue(opts.Pool); len(errs) > 0 {
			p = append(p, fmt.Sprintf("pool name %q: %s", opts.Pool, strings.Join(errs, ", ")))
		}
	}
	if err := Validate(w.Spec); err != nil {
		p = append(p, err.(*SpecError).Problems...)
	}
	annotations, err := PodAnnotations(w)
	if err != nil {
		p = append(p, err.(*SpecError).Problems...)
	}
	if len(p) > 0 {
		return nil, &SpecError{Problems: p}
	}
	spec := w.Spec

	labels := map[string]string{
		v1alpha1.LabelManaged:  "true",
		v1alpha1.LabelWorkload: w.Name,
		v1alpha1.LabelInstance: opts.InstanceID,
	}
	if opts.TenantID != "" {
		labels[v1alpha1.LabelTenant] = opts.TenantID
	}
	if opts.Pool != "" {
		labels[v1alpha1.LabelPool] = opts.Pool
		labels[v1alpha1.LabelPoolStatus] = v1alpha1.PoolStatusWarming
	}

	res := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(int64(spec.Resources.VCPUs)*1000, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(spec.Resources.MemoryMb)*1024*1024, resource.BinarySI),
	}
	var disk *resource.Quantity
	if spec.Resources.DiskGb > 0 {
		disk = resource.NewQuantity(int64(spec.Resources.DiskGb)*1024*1024*1024, resource.BinarySI)
		res[corev1.ResourceEphemeralStorage] = *disk
	}

	c := corev1.Container{
		Name:            ContainerName,
		Image:           spec.Image.Ref,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Resources:       corev1.ResourceRequirements{Requests: res, Limits: res.DeepCopy()},
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			AllowPrivilegeEscalation: new(false),
			RunAsNonRoot:             new(spec.Security == nil || !spec.Security.AllowRoot),
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if n := spec.Network; n != nil {
		for _, e := range n.Expose {
			c.Ports = append(c.Ports, corev1.ContainerPort{ContainerPort: e.Guest, Protocol: corev1.ProtocolTCP})
		}
	}
	if ep := spec.Entrypoint; ep != nil {
		if ep.Cmd != "" {
			c.Command = []string{ep.Cmd}
		}
		c.Args = append([]string(nil), ep.Args...)
		c.WorkingDir = ep.Workdir
		env, _ := DecodeEnv(ep.Env) // checked by Validate
		for _, k := range sortedKeys(env) {
			c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: env[k]})
		}
	}
	c.ReadinessProbe = readinessProbe(spec.Health)

	var volumes []corev1.Volume
	if fs := spec.Filesystem; fs != nil {
		for i, dir := range fs.OverlayDirs {
			name := fmt.Sprintf("overlay-%d", i)
			volumes = append(volumes, corev1.Volume{
				Name:         name,
				VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: copyQuantity(disk)}},
			})
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: name, MountPath: dir})
		}
	}

	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        opts.InstanceID,
			Namespace:   opts.Namespace,
			Labels:      labels,
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{c},
			Volumes:                       volumes,
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  new(false),
			EnableServiceLinks:            new(false),
			TerminationGracePeriodSeconds: new(TerminationGracePeriodSeconds),
			SecurityContext: &corev1.PodSecurityContext{
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
				RunAsNonRoot:   new(spec.Security == nil || !spec.Security.AllowRoot),
			},
		},
	}
	return pod, nil
}

// PodAnnotations decodes the workload's AnnotationPodAnnotations; nil when it has none.
func PodAnnotations(w *v1alpha1.BoilerhouseWorkload) (map[string]string, error) {
	raw, ok := w.Annotations[AnnotationPodAnnotations]
	if !ok {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, &SpecError{Problems: []string{fmt.Sprintf("annotation %s must be a JSON object of strings: %v", AnnotationPodAnnotations, err)}}
	}
	var p []string
	for _, k := range sortedKeys(m) {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			p = append(p, fmt.Sprintf("annotation %s: key %q: %s", AnnotationPodAnnotations, k, strings.Join(errs, ", ")))
		}
	}
	if len(p) > 0 {
		return nil, &SpecError{Problems: p}
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}

func readinessProbe(h *v1alpha1.HealthSpec) *corev1.Probe {
	if h == nil {
		return nil
	}
	p := &corev1.Probe{PeriodSeconds: h.IntervalSeconds, FailureThreshold: h.UnhealthyThreshold}
	switch {
	case h.HTTPGet != nil:
		p.HTTPGet = &corev1.HTTPGetAction{Path: h.HTTPGet.Path, Port: intstr.FromInt32(h.HTTPGet.Port), Scheme: corev1.URISchemeHTTP}
		if p.HTTPGet.Path == "" {
			p.HTTPGet.Path = "/"
		}
	case h.Exec != nil:
		p.Exec = &corev1.ExecAction{Command: append([]string(nil), h.Exec.Command...)}
	default:
		return nil
	}
	return p
}

func copyQuantity(q *resource.Quantity) *resource.Quantity {
	if q == nil {
		return nil
	}
	c := q.DeepCopy()
	return &c
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// isJSONString reports whether b is a JSON string (json.Unmarshal accepts null for a string).
func isJSONString(b json.RawMessage) bool {
	s := strings.TrimSpace(string(b))
	return len(s) >= 2 && s[0] == '"'
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
