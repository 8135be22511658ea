package poolmanager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/overlay"
	"boilerhouse.dev/pkg/translate"
)

// This file holds pool-manager's decisions: pure functions of their arguments, no I/O.

// LedgerState is what a ledger entry holds a Pod for.
type LedgerState string

// Ledger states.
const (
	// StateAcquired: the Pod belongs to a claim (a pool Pod handed out, or a cold-booted Pod).
	StateAcquired LedgerState = "acquired"
	// StateRetiring: the Pod is being deleted (scale down, failure, pool deletion) and must not
	// be handed out in the meantime.
	StateRetiring LedgerState = "retiring"
)

// LedgerEntry is the value under a Pod's name in the KV bucket messages.BucketInstances. Its
// existence is what takes a Pod out of its pool: Create on the key succeeds once across every
// replica, so a Pod is handed out exactly once.
type LedgerEntry struct {
	ClaimKey string      `json:"claimKey,omitempty"`
	ClaimID  string      `json:"claimId,omitempty"`
	TenantID string      `json:"tenantId,omitempty"`
	Workload string      `json:"workload"`
	Pool     string      `json:"pool,omitempty"`
	State    LedgerState `json:"state"`
	At       time.Time   `json:"at"`
	// By is the replica that wrote the entry.
	By string `json:"by,omitempty"`
	// RestoreGeneration is the overlay generation a cold boot was asked to restore (its Pod
	// carries the restore init container); 0 for none.
	RestoreGeneration int64 `json:"restoreGeneration,omitempty"`
	// RestoreOffered is set once a boot answered awaiting-restore for the Pod: later boots of
	// the claim wait for Ready instead (see Manager.Boot).
	RestoreOffered bool `json:"restoreOffered,omitempty"`
}

// PodInfo is what the pool planner needs to know about one Pod of a pool.
type PodInfo struct {
	Name string
	// Ready: the Pod passes its readiness checks and has an IP, so it can be handed out.
	Ready bool
	// Failed: the Pod ended (phase Failed or Succeeded) and will never be ready.
	Failed bool
	// Stuck: the Pod has been warming for longer than the pool manager allows.
	Stuck bool
	// Stale: the Pod runs another workload than the pool's (workloadRef changed).
	Stale bool
	// Terminating: deletion has begun; the Pod no longer counts and needs nothing.
	Terminating bool
	Created     time.Time
}

// Plan is what one pool reconcile should do.
type Plan struct {
	// Create is the number of Pods to create.
	Create int
	// Delete names the Pods to delete (each is first held as retiring in the ledger).
	Delete []string
	// Status is the pool's status after the plan (Detail left for the caller).
	Status v1alpha1.PoolStatus
}

// PlanPool decides how to bring a pool to its size. Only Pods that are not held (no ledger
// entry, no tenant) and not terminating count; of those it deletes failed, stuck and stale ones,
// then keeps warming + ready <= size by deleting the excess (warming first, newest first), and
// creates Pods (only when the workload is Ready) up to size with at most
// spec.FillConcurrency() warming at once. The status phase is Error when the workload is not
// Ready, Healthy when ready >= size, Degraded otherwise.
func PlanPool(spec v1alpha1.PoolSpec, workloadReady bool, pods []PodInfo, held map[string]bool) Plan {
	var plan Plan
	var ready, warming []PodInfo
	for _, p := range pods {
		switch {
		case held[p.Name] || p.Terminating:
		case p.Failed || p.Stale || (p.Stuck && !p.Ready):
			plan.Delete = append(plan.Delete, p.Name)
		case p.Ready:
			ready = append(ready, p)
		default:
			warming = append(warming, p)
		}
	}
	size := max(int(spec.Size), 0)
	newestFirst := func(s []PodInfo) {
		sort.SliceStable(s, func(i, j int) bool {
			if !s[i].Created.Equal(s[j].Created) {
				return s[i].Created.After(s[j].Created)
			}
			return s[i].Name > s[j].Name
		})
	}
	if excess := len(ready) + len(warming) - size; excess > 0 {
		newestFirst(warming)
		n := min(excess, len(warming))
		for _, p := range warming[:n] {
			plan.Delete = append(plan.Delete, p.Name)
		}
		warming, excess = warming[n:], excess-n
		newestFirst(ready)
		for _, p := range ready[:excess] {
			plan.Delete = append(plan.Delete, p.Name)
		}
		ready = ready[excess:]
	}
	if workloadReady {
		fill := max(int(spec.FillConcurrency()), 1)
		plan.Create = max(min(size-len(ready)-len(warming), fill-len(warming)), 0)
	}
	plan.Status = v1alpha1.PoolStatus{Ready: int32(len(ready)), Warming: int32(len(warming))}
	switch {
	case !workloadReady:
		plan.Status.Phase = v1alpha1.PoolError
	case len(ready) >= size:
		plan.Status.Phase = v1alpha1.PoolHealthy
	default:
		plan.Status.Phase = v1alpha1.PoolDegraded
	}
	return plan
}

// WorkloadStatus is the status a workload deserves: Ready when WorkloadProblem finds nothing,
// Error with every problem otherwise.
func WorkloadStatus(w *v1alpha1.BoilerhouseWorkload) v1alpha1.WorkloadStatus {
	st := v1alpha1.WorkloadStatus{Phase: v1alpha1.WorkloadReady, ObservedGeneration: w.Generation}
	reason := "Valid"
	if err := WorkloadProblem(w); err != nil {
		st.Phase, st.Detail, reason = v1alpha1.WorkloadError, err.Error(), "Invalid"
	}
	st.Conditions = WithReady(w.Status.Conditions, st.Phase == v1alpha1.WorkloadReady, reason, st.Detail, w.Generation)
	return st
}

// WithReady returns a copy of conds with the Ready condition set; its transition time changes
// only when its status does, so an unchanged status compares equal and is not written again.
func WithReady(conds []metav1.Condition, ready bool, reason, message string, generation int64) []metav1.Condition {
	out := slices.Clone(conds)
	status := metav1.ConditionFalse
	if ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&out, metav1.Condition{Type: v1alpha1.ConditionReady, Status: status,
		Reason: reason, Message: message, ObservedGeneration: generation})
	return out
}

// WorkloadProblem says why Pods cannot be made of a workload (translate.Validate on its spec,
// and its Pod annotations), or nil. A workload is Ready exactly when this is nil.
func WorkloadProblem(w *v1alpha1.BoilerhouseWorkload) error {
	var problems []string
	if err := translate.Validate(w.Spec); err != nil {
		problems = append(problems, err.Error())
	}
	if _, err := translate.PodAnnotations(w); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) == 0 {
		return nil
	}
	return &translate.SpecError{Problems: problems}
}

// FailureBackoff is how long a pool waits before replacing Pods again after its n-th round of
// failed Pods in a row: the first failure is replaced at once, then 0.5s, 1s, 2s, ... up to 30s.
func FailureBackoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := 500 * time.Millisecond << min(n-2, 10)
	return min(d, 30*time.Second)
}

// PodReady reports whether a Pod can serve: not being deleted, Running, with an IP and its
// Ready condition true. Acquisition uses this, never the pool-status label.
func PodReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodFinished reports whether a Pod has ended for good (restartPolicy Never).
func PodFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded
}

// RestoreWaiting reports whether the Pod's restore init container (overlay.RestoreInitContainer)
// is running, i.e. waiting for the overlay-store to restore into it.
func RestoreWaiting(p *corev1.Pod) bool {
	for _, s := range p.Status.InitContainerStatuses {
		if s.Name == overlay.RestoreInitContainer {
			return s.State.Running != nil
		}
	}
	return false
}

// RestoreGated reports whether the Pod has the restore init container.
func RestoreGated(p *corev1.Pod) bool {
	for _, c := range p.Spec.InitContainers {
		if c.Name == overlay.RestoreInitContainer {
			return true
		}
	}
	return false
}

// HasOverlayHelper reports whether the Pod carries the overlay helper container, which the
// overlay-store needs to extract and restore (messages.Instance.Overlays).
func HasOverlayHelper(p *corev1.Pod) bool {
	for _, c := range p.Spec.Containers {
		if c.Name == overlay.HelperContainer {
			return true
		}
	}
	return false
}

// ReleaseAction is the workload's idle.action, "hibernate" when unset or when the workload is
// unknown (nil).
func ReleaseAction(w *v1alpha1.BoilerhouseWorkload) string {
	if w != nil && w.Spec.Idle != nil && w.Spec.Idle.Action != "" {
		return string(w.Spec.Idle.Action)
	}
	return string(v1alpha1.IdleActionHibernate)
}

// IdleTimeoutSeconds is the workload's idle.timeoutSeconds, 0 (never idle) when unset or
// when the workload is unknown (nil).
func IdleTimeoutSeconds(w *v1alpha1.BoilerhouseWorkload) int32 {
	if w != nil && w.Spec.Idle != nil && w.Spec.Idle.TimeoutSeconds > 0 {
		return w.Spec.Idle.TimeoutSeconds
	}
	return 0
}

// WatchDirs is the workload's idle.watchDirs (nil when unset or when the workload is unknown).
func WatchDirs(w *v1alpha1.BoilerhouseWorkload) []string {
	if w == nil || w.Spec.Idle == nil || len(w.Spec.Idle.WatchDirs) == 0 {
		return nil
	}
	return append([]string(nil), w.Spec.Idle.WatchDirs...)
}

// Endpoint is where a Pod serves: its IP and the first port of its main container; nil while
// it has no IP.
func Endpoint(p *corev1.Pod) *messages.Endpoint {
	if p.Status.PodIP == "" {
		return nil
	}
	ep := &messages.Endpoint{Host: p.Status.PodIP}
	for _, c := range p.Spec.Containers {
		if c.Name == translate.ContainerName && len(c.Ports) > 0 {
			ep.Port = c.Ports[0].ContainerPort
		}
	}
	return ep
}

// FailureReason explains why a Pod failed, from its status and container states.
func FailureReason(p *corev1.Pod) string {
	var parts []string
	if p.Status.Reason != "" || p.Status.Message != "" {
		parts = append(parts, strings.TrimSpace(p.Status.Reason+" "+p.Status.Message))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			s := fmt.Sprintf("container %s exited with code %d", cs.Name, t.ExitCode)
			if t.Reason != "" {
				s += " (" + t.Reason + ")"
			}
			if t.Message != "" {
				s += ": " + t.Message
			}
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return "phase " + string(p.Status.Phase)
	}
	return strings.Join(parts, "; ")
}

// Unschedulable returns the scheduler's message when the Pod cannot be placed.
func Unschedulable(p *corev1.Pod) (string, bool) {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return c.Message, true
		}
	}
	return "", false
}

// HeldBy reports whether a Pod is out of its pool: a ledger entry holds it, or it carries a
// tenant (or acquired) label from an earlier acquisition.
func HeldBy(p *corev1.Pod, inLedger bool) bool {
	return inLedger || p.Labels[v1alpha1.LabelTenant] != "" || p.Labels[v1alpha1.LabelPoolStatus] == v1alpha1.PoolStatusAcquired
}

// kubeError turns a Kubernetes API error into a typed contract error.
func kubeError(op string, err error) error {
	if err == nil {
		return nil
	}
	var code messages.Code
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code = messages.CodeDeadlineExceeded
	case apierrors.IsNotFound(err):
		code = messages.CodeNotFound
	case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
		code = messages.CodeConflict
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		code = messages.CodeInvalidArgument
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		code = messages.CodeInternal
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err):
		code = messages.CodeUnavailable
	default:
		code = messages.CodeUnavailable
	}
	return messages.Errorf(code, "%s: %v", op, err)
}
