package edge

import (
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

// Pure decisions of the instance, snapshot and release-with-reason routes.

func TestParseTail(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want int64 // -1: nil
		err  bool
	}{
		{"", -1, false}, {"0", 0, false}, {"25", 25, false},
		{"-1", 0, true}, {"x", 0, true}, {"1.5", 0, true}, {"99999999999999999999", 0, true},
	} {
		got, err := parseTail(tc.raw)
		if (err != nil) != tc.err {
			t.Errorf("parseTail(%q) err = %v, want error %v", tc.raw, err, tc.err)
			continue
		}
		if err != nil {
			if a := classify(err); a.Status != http.StatusBadRequest {
				t.Errorf("parseTail(%q): status %d", tc.raw, a.Status)
			}
			continue
		}
		if (got == nil) != (tc.want == -1) || got != nil && *got != tc.want {
			t.Errorf("parseTail(%q) = %v, want %d", tc.raw, got, tc.want)
		}
	}
}

func TestValidateInstanceID(t *testing.T) {
	for id, ok := range map[string]bool{
		"agent-c-0123456789ab": true, "a": true, "a.b": true,
		"": false, "Agent": false, "a_b": false, strings.Repeat("a", 254): false, "-a": false,
	} {
		if err := validateInstanceID(id); (err == nil) != ok {
			t.Errorf("validateInstanceID(%q) = %v, want ok %v", id, err, ok)
		}
	}
}

func TestContainerChecks(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "overlay-restore"}},
			Containers:     []corev1.Container{{Name: "main"}, {Name: "overlay"}},
		},
		Status: corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "overlay-restore", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "main", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
				{Name: "overlay", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}},
			},
		},
	}
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"", "main", true}, {"main", "main", true}, {"overlay", "overlay", true}, {"overlay-restore", "overlay-restore", true}, {"nope", "", false},
	} {
		got, err := podContainer(pod, tc.name)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("podContainer(%q) = %q, %v", tc.name, got, err)
		}
	}
	for _, tc := range []struct {
		container string
		exec      bool
		status    int // 0: allowed
		why       string
	}{
		{"main", true, 0, ""},
		{"main", false, 0, ""},
		{"overlay", true, 409, "has not started: PodInitializing"},
		{"overlay", false, 409, "has not started: PodInitializing"},
		{"overlay-restore", true, 409, "it ended"},
		{"overlay-restore", false, 0, ""},
		{"unknown-status", true, 409, "has not started"},
	} {
		err := containerReady(pod, tc.container, tc.exec)
		if tc.status == 0 {
			if err != nil {
				t.Errorf("containerReady(%s, exec %v) = %v", tc.container, tc.exec, err)
			}
			continue
		}
		if a := classify(err); err == nil || a.Status != tc.status || a.Code != "conflict" || !strings.Contains(a.Message, tc.why) {
			t.Errorf("containerReady(%s, exec %v) = %v, want %d %q", tc.container, tc.exec, err, tc.status, tc.why)
		}
	}
}

func TestNewInstanceView(t *testing.T) {
	at := time.Date(2026, 4, 20, 10, 0, 0, 500, time.UTC)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "i", CreationTimestamp: metav1.NewTime(at),
			Labels: map[string]string{v1alpha1.LabelManaged: "true", v1alpha1.LabelTenant: "t", v1alpha1.LabelWorkload: "w"}},
		Status: corev1.PodStatus{PodIP: "10.0.0.1"},
	}
	claimed := messages.Timestamp(at.Add(time.Minute))
	v := newInstanceView(p, claimTimes([]messages.TenantView{{TenantID: "t", Claims: []messages.ClaimView{
		{InstanceID: "i", ClaimedAt: claimed}, {InstanceID: "other", ClaimedAt: claimed}, {Phase: messages.PhasePending}}}}))
	if v.Name != "i" || v.Phase != "Unknown" || v.TenantID != "t" || v.Workload != "w" || v.IP != "10.0.0.1" ||
		!v.CreatedAt.Equal(at.Truncate(time.Second)) || v.ClaimedAt != claimed || len(v.Labels) != 3 {
		t.Errorf("view %+v", v)
	}
	if !managed(p) || managed(&corev1.Pod{}) || managed(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{v1alpha1.LabelManaged: "True"}}}) {
		t.Error("managed wrong")
	}
}

func TestCappedBufferAndExecReply(t *testing.T) {
	out := &cappedBuffer{limit: 5}
	for _, s := range []string{"abc", "defg", "hij"} {
		if n, err := out.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	errs := &cappedBuffer{limit: 100}
	errs.Write([]byte("warn\r\n\n"))
	r := newExecReply(out, errs, 2)
	if r.Stdout != "abcde" || !r.Truncated || r.Stderr != "warn" || r.ExitCode != 2 {
		t.Errorf("reply %+v", r)
	}
	if err := validateExec(&execBody{}); err == nil || classify(err).Message != "command is required" {
		t.Errorf("empty command: %v", err)
	}
}

func TestReasonReleaseRequest(t *testing.T) {
	r, err := newReasonReleaseRequest("alice", &claimBody{WorkloadRef: "agent"}, messages.ReasonForce, DefaultWait)
	if err != nil || r != (releaseRequest{wait: DefaultWait, msg: messages.ReleaseRequest{TenantID: "alice", Workload: "agent",
		Reason: messages.ReasonForce, Force: true, WaitMillis: 30000}}) {
		t.Errorf("force = %+v, %v", r, err)
	}
	r, err = newReasonReleaseRequest("alice", &claimBody{Workload: "agent", Force: true}, messages.ReasonRetry, 0)
	if err != nil || r != (releaseRequest{msg: messages.ReleaseRequest{TenantID: "alice", Workload: "agent",
		Reason: messages.ReasonRetry, WaitMillis: 1}}) {
		t.Errorf("retry = %+v, %v", r, err)
	}
	if _, err := newReasonReleaseRequest("alice", &claimBody{}, messages.ReasonRetry, DefaultWait); err == nil {
		t.Error("no workload accepted")
	}
}
