package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/localkube"
)

var plane *localkube.Plane

const ns = "default"

func TestMain(m *testing.M) {
	var err error
	plane, err = localkube.Start(context.Background(), localkube.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = plane.Stop()
	os.Exit(code)
}

func claim(name, tenant string) *v1alpha1.BoilerhouseClaim {
	return &v1alpha1.BoilerhouseClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       v1alpha1.ClaimSpec{TenantID: tenant, WorkloadRef: "my-agent", Resume: ptr.To(true)},
	}
}

func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("want the API server to reject it as Invalid, got %v", err)
	}
	if !strings.Contains(err.Error(), field) {
		t.Errorf("rejection %q does not name %s", err, field)
	}
}

func TestClaimTenantIDValidatedByAPIServer(t *testing.T) {
	ctx := context.Background()
	for i, tenant := range []string{"user-123", "tg-jane", "org.acme", "A_b.c-9", "x", strings.Repeat("a", 63)} {
		if err := plane.Client.Create(ctx, claim(fmt.Sprintf("ok-%d", i), tenant)); err != nil {
			t.Errorf("tenant %q rejected: %v", tenant, err)
		}
	}
	for i, tenant := range []string{"Bad Tenant!", strings.Repeat("a", 64), "-abc", "abc.", "", "a/b", "ünï"} {
		err := plane.Client.Create(ctx, claim(fmt.Sprintf("bad-%d", i), tenant))
		wantInvalid(t, err, "spec.tenantId")
	}
}

// TestClaimPairImmutable: a claim's tenant and workload cannot be edited; resume can.
func TestClaimPairImmutable(t *testing.T) {
	ctx := context.Background()
	c := claim("immutable", "alice")
	if err := plane.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	edit := c.DeepCopy()
	edit.Spec.TenantID = "mallory"
	if err := plane.Client.Update(ctx, edit); err == nil || !strings.Contains(err.Error(), "tenantId cannot be changed") {
		t.Errorf("tenantId edit: %v, want rejected", err)
	}
	edit = c.DeepCopy()
	edit.Spec.WorkloadRef = "other"
	if err := plane.Client.Update(ctx, edit); err == nil || !strings.Contains(err.Error(), "workloadRef cannot be changed") {
		t.Errorf("workloadRef edit: %v, want rejected", err)
	}
	edit = c.DeepCopy()
	edit.Spec.Resume = new(false)
	if err := plane.Client.Update(ctx, edit); err != nil {
		t.Errorf("resume edit rejected: %v", err)
	}
}

func TestClaimStatusEnums(t *testing.T) {
	ctx := context.Background()
	c := claim("status-enums", "alice")
	if err := plane.Client.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Status = v1alpha1.ClaimStatus{Phase: v1alpha1.ClaimActive, Source: v1alpha1.SourcePoolData,
		InstanceID: "i-1", Endpoint: &v1alpha1.Endpoint{Host: "127.1.0.1", Port: 8080}}
	if err := plane.Client.Status().Update(ctx, c); err != nil {
		t.Fatalf("valid status rejected: %v", err)
	}
	bad := c.DeepCopy()
	bad.Status.Phase = "Running"
	wantInvalid(t, plane.Client.Status().Update(ctx, bad), "status.phase")
	bad = c.DeepCopy()
	bad.Status.Source = "warm"
	wantInvalid(t, plane.Client.Status().Update(ctx, bad), "status.source")
}

func TestPoolBounds(t *testing.T) {
	ctx := context.Background()
	pool := func(name string, size int32, fill *int32) *v1alpha1.BoilerhousePool {
		return &v1alpha1.BoilerhousePool{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: v1alpha1.PoolSpec{WorkloadRef: "my-agent", Size: size, MaxFillConcurrency: fill}}
	}
	if err := plane.Client.Create(ctx, pool("empty", 0, nil)); err != nil {
		t.Errorf("size 0 rejected: %v", err)
	}
	if err := plane.Client.Create(ctx, pool("fill-1", 3, ptr.To[int32](1))); err != nil {
		t.Errorf("maxFillConcurrency 1 rejected: %v", err)
	}
	wantInvalid(t, plane.Client.Create(ctx, pool("negative", -1, nil)), "spec.size")
	wantInvalid(t, plane.Client.Create(ctx, pool("fill-0", 1, ptr.To[int32](0))), "spec.maxFillConcurrency")
}

func TestWorkloadSchema(t *testing.T) {
	ctx := context.Background()
	workload := func(name string, mutate func(*v1alpha1.WorkloadSpec)) *v1alpha1.BoilerhouseWorkload {
		w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: v1alpha1.WorkloadSpec{Version: "1", Image: v1alpha1.ImageSpec{Ref: "demo:1"},
				Resources: v1alpha1.ResourcesSpec{VCPUs: 1, MemoryMb: 128}}}
		mutate(&w.Spec)
		return w
	}
	ok := workload("ok", func(s *v1alpha1.WorkloadSpec) {
		s.Network = &v1alpha1.NetworkSpec{Access: v1alpha1.NetworkAccessRestricted, Expose: []v1alpha1.ExposeSpec{{Guest: 8080}}}
		s.Idle = &v1alpha1.IdleSpec{TimeoutSeconds: 300, Action: v1alpha1.IdleActionDestroy}
		s.Entrypoint = &v1alpha1.EntrypointSpec{Cmd: "serve"}
	})
	if err := plane.Client.Create(ctx, ok); err != nil {
		t.Fatalf("valid workload rejected: %v", err)
	}
	wantInvalid(t, plane.Client.Create(ctx, workload("zero-cpu", func(s *v1alpha1.WorkloadSpec) { s.Resources.VCPUs = 0 })), "spec.resources.vcpus")
	wantInvalid(t, plane.Client.Create(ctx, workload("bad-access", func(s *v1alpha1.WorkloadSpec) {
		s.Network = &v1alpha1.NetworkSpec{Access: "open"}
	})), "spec.network.access")
	wantInvalid(t, plane.Client.Create(ctx, workload("bad-action", func(s *v1alpha1.WorkloadSpec) {
		s.Idle = &v1alpha1.IdleSpec{Action: "sleep"}
	})), "spec.idle.action")
}
