package overlaystore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/translate"
)

// This file holds overlay-store's decisions: pure functions of their arguments, no I/O.

// errUnlabelled: the Pod carries no tenant label yet (pool-manager labels an acquired pool Pod
// shortly after handing it out); the caller waits a little for it.
var errUnlabelled = errors.New("instance has no tenant label yet")

// CheckPod refuses a Pod that is not a managed instance of workload bound to tenant: the
// overlay-store only ever reads or writes a tenant's data in that tenant's own Pod.
func CheckPod(pod *corev1.Pod, tenant, workload string) error {
	l := pod.Labels
	if l[v1alpha1.LabelManaged] != "true" {
		return messages.Errorf(messages.CodeInvalidArgument, "instance %s is not managed by Boilerhouse (no %s=true label)", pod.Name, v1alpha1.LabelManaged)
	}
	if w := l[v1alpha1.LabelWorkload]; w != workload {
		return messages.Errorf(messages.CodeConflict, "instance %s runs workload %q, not %q", pod.Name, w, workload)
	}
	switch t := l[v1alpha1.LabelTenant]; t {
	case tenant:
		return nil
	case "":
		return errUnlabelled
	default:
		return messages.Errorf(messages.CodeConflict, "instance %s belongs to another tenant", pod.Name)
	}
}

// PodOverlayDirs returns the overlay dirs of a Pod as its volumes hold them: the mount paths
// of the volumes overlay-<i> in the workload's container, by index. The Pod's own spec is
// what the helper container sees under /overlay/<i>, whatever the workload says today.
func PodOverlayDirs(pod *corev1.Pod) ([]string, error) {
	byIndex := map[int]string{}
	for _, c := range pod.Spec.Containers {
		if c.Name != translate.ContainerName {
			continue
		}
		for _, m := range c.VolumeMounts {
			num, ok := strings.CutPrefix(m.Name, overlay.VolumePrefix)
			if !ok {
				continue
			}
			i, err := strconv.Atoi(num)
			if err != nil || i < 0 || strconv.Itoa(i) != num {
				continue
			}
			byIndex[i] = m.MountPath
		}
	}
	dirs := make([]string, len(byIndex))
	for i := range dirs {
		d, ok := byIndex[i]
		if !ok {
			return nil, messages.Errorf(messages.CodeInternal, "instance %s: overlay volumes are not numbered 0..%d (%s%d missing)", pod.Name, len(dirs)-1, overlay.VolumePrefix, i)
		}
		dirs[i] = d
	}
	if _, err := overlay.CheckDirs(dirs); err != nil {
		return nil, messages.Errorf(messages.CodeInternal, "instance %s: %v", pod.Name, err)
	}
	return dirs, nil
}

// ChooseDirs picks the overlay dirs to move: the Pod's (see PodOverlayDirs) when it has
// overlay volumes; none when neither it nor the workload declares any. A Pod without overlay
// volumes whose workload declares overlay dirs is an error: saving or restoring nothing there
// would pass silently for success.
func ChooseDirs(pod *corev1.Pod, workloadDirs []string) ([]string, error) {
	dirs, err := PodOverlayDirs(pod)
	if err != nil {
		return nil, err
	}
	if len(dirs) == 0 && len(workloadDirs) > 0 {
		return nil, messages.Errorf(messages.CodeInternal, "instance %s has no overlay volumes although its workload declares overlayDirs %v (created before they were added?)", pod.Name, workloadDirs)
	}
	return dirs, nil
}

// RestoreTarget says which container a restore execs tar in: the restore init container while
// it runs (a cold boot waiting for its data; the marker must then be created), else the
// helper container. A Pod whose init container has not started yet cannot be restored yet.
func RestoreTarget(pod *corev1.Pod) (container string, viaInit bool, err error) {
	if hasContainer(pod.Spec.InitContainers, overlay.RestoreInitContainer) {
		st := containerStatus(pod.Status.InitContainerStatuses, overlay.RestoreInitContainer)
		switch {
		case st != nil && st.State.Running != nil:
			return overlay.RestoreInitContainer, true, nil
		case st != nil && st.State.Terminated != nil:
			// Restored before (a retried request): the workload runs, restore through the helper.
		default:
			return "", false, messages.Errorf(messages.CodeUnavailable, "instance %s: init container %s is not running yet", pod.Name, overlay.RestoreInitContainer)
		}
	}
	if err := helperReady(pod); err != nil {
		return "", false, err
	}
	return overlay.HelperContainer, false, nil
}

// helperReady checks that the Pod has a running helper container to exec in.
func helperReady(pod *corev1.Pod) error {
	if !hasContainer(pod.Spec.Containers, overlay.HelperContainer) {
		return messages.Errorf(messages.CodeInternal, "instance %s has no %s container", pod.Name, overlay.HelperContainer)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return messages.Errorf(messages.CodeNotFound, "instance %s has ended (phase %s)", pod.Name, pod.Status.Phase)
	}
	if st := containerStatus(pod.Status.ContainerStatuses, overlay.HelperContainer); st != nil && st.State.Running == nil {
		return messages.Errorf(messages.CodeUnavailable, "instance %s: container %s is not running", pod.Name, overlay.HelperContainer)
	}
	return nil
}

func hasContainer(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

func containerStatus(sts []corev1.ContainerStatus, name string) *corev1.ContainerStatus {
	for i := range sts {
		if sts[i].Name == name {
			return &sts[i]
		}
	}
	return nil
}

// validateKey checks a request's tenant and workload.
func validateKey(tenant, workload string) error {
	if err := messages.ValidateTenantID(tenant); err != nil {
		return err
	}
	return messages.ValidateWorkloadName(workload)
}

func validateInstance(tenant, workload, instance string) error {
	if err := validateKey(tenant, workload); err != nil {
		return err
	}
	if instance == "" {
		return messages.Errorf(messages.CodeInvalidArgument, "instanceId must not be empty")
	}
	return nil
}

// packError turns a refusal of the Pod's stream by overlay.Pack into a contract error: limits
// are invalid_argument (retrying will not help; the tenant must free space), anything else
// internal.
func packError(instance string, err error) error {
	var e *overlay.Error
	if !errors.As(err, &e) {
		return err
	}
	if overlay.IsLimit(err) {
		return messages.Errorf(messages.CodeInvalidArgument, "overlay of instance %s is too large: %v", instance, err)
	}
	return messages.Errorf(messages.CodeInternal, "overlay of instance %s refused: %v", instance, err)
}

// restoreError turns a refusal of a stored archive into a contract error. A stored archive
// that fails validation or its checksum is damaged or hostile: internal, never retried into
// the Pod.
func restoreError(snap messages.Snapshot, err error) error {
	var e *overlay.Error
	if !errors.As(err, &e) {
		return err
	}
	return messages.Errorf(messages.CodeInternal, "stored overlay generation %d of tenant %q for workload %q refused, nothing restored: %v",
		snap.Generation, snap.TenantID, snap.Workload, err)
}

// describeSkipped summarises what Pack left out, for the log.
func describeSkipped(res overlay.PackResult) string {
	var b strings.Builder
	for i, s := range res.Skipped {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%s)", s.Entry, s.Rule)
	}
	if res.SkippedCount > len(res.Skipped) {
		fmt.Fprintf(&b, " and %d more", res.SkippedCount-len(res.Skipped))
	}
	return b.String()
}
