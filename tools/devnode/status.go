package devnode

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

const hostIP = "127.0.0.1"

// syncStatus writes the Pod status the runtime implies, if it differs from the cached one. It
// sends a strategic merge patch of the status subresource carrying the Pod's UID, so it never
// conflicts with label or spec writers and never lands on a newer Pod of the same name.
func (n *Node) syncStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	want := rt.desiredStatus(pod)
	if apiequality.Semantic.DeepEqual(&pod.Status, want) {
		return nil
	}
	rt.mu.Lock()
	dup := rt.lastSentRV == pod.ResourceVersion && apiequality.Semantic.DeepEqual(rt.lastSent, want)
	rt.mu.Unlock()
	if dup {
		return nil // already sent; the cache has not caught up yet
	}
	oldJSON, err := json.Marshal(corev1.Pod{Status: pod.Status})
	if err != nil {
		return err
	}
	newJSON, err := json.Marshal(corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: pod.UID}, Status: *want})
	if err != nil {
		return err
	}
	patch, err := strategicpatch.CreateTwoWayMergePatch(oldJSON, newJSON, corev1.Pod{})
	if err != nil {
		return fmt.Errorf("status patch: %w", err)
	}
	_, err = n.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType,
		patch, metav1.PatchOptions{}, "status")
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone or replaced (UID mismatch): the informer brings the news
	}
	if err != nil {
		return fmt.Errorf("patching status: %w", err)
	}
	n.statusPatches.Add(1)
	rt.mu.Lock()
	rt.lastSent, rt.lastSentRV = want, pod.ResourceVersion
	rt.mu.Unlock()
	return nil
}

// desiredStatus is the Pod's status as a kubelet running it would report it.
func (rt *podRuntime) desiredStatus(pod *corev1.Pod) *corev1.PodStatus {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	t := now()
	st := pod.Status.DeepCopy()
	st.HostIP = hostIP
	st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	if rt.ip.IsValid() && (rt.started || rt.adopted) { // an IP is published once it serves
		st.PodIP = rt.ip.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	st.Reason, st.Message = "", ""
	neverReady := pod.Annotations[BehaviorAnnotation] == BehaviorNeverReady

	failed := rt.failed || rt.initFailed
	running := rt.started && !failed
	switch {
	case failed:
		st.Phase = corev1.PodFailed
	case rt.started:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	active := rt.started || rt.initStarted
	if active && st.StartTime == nil {
		st.StartTime = rt.startTime.DeepCopy()
	}
	initializing := len(pod.Spec.InitContainers) > 0 && !rt.initDone

	allReady := running
	statuses := make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		s := corev1.ContainerStatus{
			Name:    c.Name,
			Image:   c.Image,
			ImageID: "devnode://" + c.Image,
			Started: new(false),
		}
		cs := rt.containers[c.Name]
		switch {
		case !rt.started && initializing:
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: "PodInitializing"}
		case !rt.started || cs == nil:
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
			if rt.startErr != nil {
				s.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CreateContainerError", Message: rt.startErr.Error()}
			}
		case rt.failed:
			s.ContainerID = containerID(pod, c.Name)
			s.State.Terminated = &corev1.ContainerStateTerminated{
				ExitCode: 1, Reason: "Error", Message: "devnode: " + BehaviorAnnotation + "=" + BehaviorFail,
				StartedAt: cs.startedAt, FinishedAt: rt.finishedAt, ContainerID: s.ContainerID,
			}
		default:
			s.ContainerID = containerID(pod, c.Name)
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: cs.startedAt}
			s.Started = new(true)
			// never-ready: the probe fails on /health by itself; a container with no probe
			// is held not ready here.
			s.Ready = cs.ready || (!cs.probed && !neverReady)
		}
		allReady = allReady && s.Ready
		statuses = append(statuses, s)
	}
	st.ContainerStatuses = statuses
	if len(pod.Spec.InitContainers) > 0 && rt.inits != nil {
		inits := make([]corev1.ContainerStatus, 0, len(pod.Spec.InitContainers))
		for i, c := range pod.Spec.InitContainers {
			s := corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: "devnode://" + c.Image, Started: new(false),
			}
			is := rt.inits[i]
			switch {
			case is.terminated:
				s.ContainerID = containerID(pod, c.Name)
				s.State.Terminated = &corev1.ContainerStateTerminated{
					ExitCode: is.exitCode, Reason: is.reason, Message: is.message,
					StartedAt: is.startedAt, FinishedAt: is.finishedAt, ContainerID: s.ContainerID,
				}
			case is.running && !failed:
				s.ContainerID = containerID(pod, c.Name)
				s.State.Running = &corev1.ContainerStateRunning{StartedAt: is.startedAt}
				s.Started = new(true)
				s.Ready = is.sidecar
			default:
				s.State.Waiting = &corev1.ContainerStateWaiting{Reason: "PodInitializing"}
			}
			inits = append(inits, s)
		}
		st.InitContainerStatuses = inits
	}

	setCondition(st, corev1.PodScheduled, true, "", t)
	setCondition(st, corev1.PodReadyToStartContainers, active && !failed, "", t)
	setCondition(st, corev1.PodInitialized, rt.started || (rt.initDone && active), "ContainersNotInitialized", t)
	notReady := "ContainersNotReady"
	if failed {
		notReady = "PodFailed"
	}
	setCondition(st, corev1.ContainersReady, allReady, notReady, t)
	ready, reason := allReady, notReady
	if allReady {
		for _, g := range pod.Spec.ReadinessGates {
			if c := findCondition(st, g.ConditionType); c == nil || c.Status != corev1.ConditionTrue {
				ready, reason = false, "ReadinessGatesNotReady"
			}
		}
	}
	setCondition(st, corev1.PodReady, ready, reason, t)
	return st
}

func containerID(pod *corev1.Pod, name string) string {
	return "devnode://" + string(pod.UID) + "/" + name
}

func findCondition(st *corev1.PodStatus, typ corev1.PodConditionType) *corev1.PodCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

// setCondition sets a condition, keeping its lastTransitionTime unless its status changes.
func setCondition(st *corev1.PodStatus, typ corev1.PodConditionType, ok bool, falseReason string, t metav1.Time) {
	status, reason := corev1.ConditionTrue, ""
	if !ok {
		status, reason = corev1.ConditionFalse, falseReason
	}
	c := findCondition(st, typ)
	if c == nil {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: typ})
		c = &st.Conditions[len(st.Conditions)-1]
	}
	if c.Status != status || c.LastTransitionTime.IsZero() {
		c.LastTransitionTime = t
	}
	c.Status, c.Reason, c.Message, c.LastProbeTime = status, reason, "", metav1.Time{}
}
