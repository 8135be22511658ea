// Package translate turns a BoilerhouseWorkload into the Pod that runs one instance of it, checks
// workload specs, and names instances.
//
// The Pod is hardened by default: no service-account token, no privilege escalation, every
// capability dropped, the RuntimeDefault seccomp profile, runAsNonRoot unless the workload opts
// out with spec.security.allowRoot, Guaranteed QoS (requests == limits), and size limits on the
// ephemeral storage and overlay volumes when the workload declares a disk size.
//
// # Overlay helper
//
// A workload with overlay directories (spec.filesystem.overlayDirs) gets, besides one emptyDir
// overlay-<i> per directory mounted at the directory in the main container (see
// docs/overlays.md and pkg/overlay):
//
//   - the container "overlay" (Options.HelperImage, default overlay.DefaultHelperImage, a
//     busybox), which only waits (a shell loop around sleep that exits on SIGTERM) so that the
//     overlay-store can exec tar in it. It mounts overlay-<i> at /overlay/<i> and the emptyDir
//     "bh-control" at /bh, requests and limits 10m CPU and 16Mi memory (the Pod stays
//     Guaranteed), and is hardened at least like main: every capability dropped, no privilege
//     escalation, a read-only root filesystem, RuntimeDefault seccomp (Pod level);
//   - with Options.Restore (a cold boot that restores), the init container "overlay-restore"
//     with the same image, mounts and hardening, running
//     `until [ -e /bh/restored ]; do sleep 0.1; done`, so the workload starts only once the
//     overlay-store has restored the tenant's data and created /bh/restored.
//
// Users. busybox images run as root by default; the helper and the init container never need
// root, so they always run as uid and gid 65534 ("nobody"/"nogroup", runAsNonRoot true, even for
// an allowRoot workload). The Pod gets fsGroup 65534: Kubernetes then makes every container's
// processes (main included) members of group 65534 and gives the overlay emptyDirs that group
// with the setgid bit, so what main writes there is group 65534 and what the helper restores is
// too. emptyDirs are world-writable (0777), so the helper can create entries at the top of every
// overlay volume. The consequences, by design:
//   - extract reads main's files as "other" or through group 65534: files main makes private
//     (mode 0600, directories 0700) without the group bits cannot be read, so the extract fails
//     loudly (the claim goes ReleaseFailed and keeps the Pod) instead of saving a partial copy;
//   - restored files belong to uid 65534 and group 65534 with the archive's permission bits:
//     main can write them where those bits grant the group write access, and can always replace
//     them where the directory does. The codec strips owners anyway (pkg/overlay), so owners
//     never round-trip.
//
// A workload needing exact ownership should run as uid 65534 itself, or have its overlay
// directories group-writable (umask 002).
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
	"boilerhouse.dev/pkg/overlay"
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
	// HelperImage is the image of the overlay helper and restore init containers (default
	// overlay.DefaultHelperImage). It needs sh, sleep, tar and touch.
	HelperImage string
	// Restore adds the init container overlay.RestoreInitContainer, which holds the workload
	// back until the overlay-store has restored into the Pod (a cold boot with data). Only
	// for a workload with overlay directories.
	Restore bool
}

// Overlay helper shape (see the package documentation).
const (
	// HelperUID is the user and group of the overlay helper and restore init containers, and
	// the Pod's fsGroup when it has overlay directories.
	HelperUID int64 = 65534
	// ControlVolumeSizeLimit bounds the control emptyDir (it only holds a marker file).
	ControlVolumeSizeLimit = "1Mi"
)

// HelperCommand is the overlay helper's command: wait forever, exit at once on SIGTERM (as
// PID 1 the shell would otherwise ignore it and hold the Pod's deletion for the grace period).
var HelperCommand = []string{"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"}

// RestoreWaitCommand is the restore init container's command: wait until the overlay-store
// creates overlay.RestoredMarker. A SIGTERM (the Pod is being deleted) ends it unsuccessfully,
// so the workload never starts without its data.
var RestoreWaitCommand = []string{"sh", "-c", "trap 'exit 143' TERM; until [ -e " + overlay.RestoredMarker + " ]; do sleep 0.1; done"}

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
	if opts.Restore && !HasOverlays(w.Spec) {
		p = append(p, "a restore was asked for but the workload has no overlay directories")
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
	var helperMounts []corev1.VolumeMount
	if HasOverlays(spec) {
		for i, dir := range spec.Filesystem.OverlayDirs {
			name := fmt.Sprintf("%s%d", overlay.VolumePrefix, i)
			volumes = append(volumes, corev1.Volume{
				Name:         name,
				VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: copyQuantity(disk)}},
			})
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: name, MountPath: dir})
			helperMounts = append(helperMounts, corev1.VolumeMount{Name: name, MountPath: fmt.Sprintf("%s/%d", overlay.MountRoot, i)})
		}
		volumes = append(volumes, corev1.Volume{
			Name: overlay.ControlVolume,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
				SizeLimit: new(resource.MustParse(ControlVolumeSizeLimit))}},
		})
		helperMounts = append(helperMounts, corev1.VolumeMount{Name: overlay.ControlVolume, MountPath: overlay.ControlDir})
	}

	podSecurity := &corev1.PodSecurityContext{
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		RunAsNonRoot:   new(spec.Security == nil || !spec.Security.AllowRoot),
	}
	containers := []corev1.Container{c}
	var initContainers []corev1.Container
	if helperMounts != nil {
		podSecurity.FSGroup = new(HelperUID)
		image := opts.HelperImage
		if image == "" {
			image = overlay.DefaultHelperImage
		}
		containers = append(containers, helperContainer(overlay.HelperContainer, image, HelperCommand, helperMounts))
		if opts.Restore {
			initContainers = append(initContainers, helperContainer(overlay.RestoreInitContainer, image, RestoreWaitCommand, helperMounts))
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
			InitContainers:                initContainers,
			Containers:                    containers,
			Volumes:                       volumes,
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  new(false),
			EnableServiceLinks:            new(false),
			TerminationGracePeriodSeconds: new(TerminationGracePeriodSeconds),
			SecurityContext:               podSecurity,
		},
	}
	return pod, nil
}

// HasOverlays reports whether a workload declares overlay directories, so that its Pods carry
// the overlay helper.
func HasOverlays(spec v1alpha1.WorkloadSpec) bool {
	return spec.Filesystem != nil && len(spec.Filesystem.OverlayDirs) > 0
}

// helperContainer builds the overlay helper or the restore init container: tiny Guaranteed
// resources, uid/gid HelperUID, no capabilities, no privilege escalation, read-only root.
func helperContainer(name, image string, command []string, mounts []corev1.VolumeMount) corev1.Container {
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("10m"),
		corev1.ResourceMemory: resource.MustParse("16Mi"),
	}
	return corev1.Container{
		Name:            name,
		Image:           image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         append([]string(nil), command...),
		Resources:       corev1.ResourceRequirements{Requests: res, Limits: res.DeepCopy()},
		VolumeMounts:    append([]corev1.VolumeMount(nil), mounts...),
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			AllowPrivilegeEscalation: new(false),
			RunAsNonRoot:             new(true),
			RunAsUser:                new(HelperUID),
			RunAsGroup:               new(HelperUID),
			ReadOnlyRootFilesystem:   new(true),
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
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
