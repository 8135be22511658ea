package poolmanager

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/natsx"
)

// startFollower runs a second replica with leader election on while someone else holds the
// lease, so it only serves NATS requests (which are not leader-gated).
func startFollower(t *testing.T) *Manager {
	t.Helper()
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: LeaderElectionID, Namespace: testNamespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: new("someone-else"), LeaseDurationSeconds: new(int32(3600)),
			AcquireTime: &now, RenewTime: &now},
	}
	if err := plane.Client.Create(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Client.Delete(context.Background(), lease) })

	conn, err := natsx.ConnectInProcess(srv, nats.Name("poolmanager-test-2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	m, err := New(Config{RestConfig: plane.Config, NATS: conn, Namespace: testNamespace, Logger: testLogger(),
		ReplicaID: "replica-2", LeaderElection: true, BootTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("replica-2 Run: %v", err)
		}
	})
	select {
	case <-m.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("replica-2 stopped: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("replica-2 not serving within a minute")
	}
	return m
}

// TestAcquireAcrossReplicas: two replicas share the acquire requests (queue group); the ledger
// still hands every Pod out once.
func TestAcquireAcrossReplicas(t *testing.T) {
	ctx := testContext(t)
	follower := startFollower(t)
	createWorkload(t, "multi", nil)
	six := int32(6)
	createPool(t, "multi-pool", "multi", 6, &six)
	waitPoolFull(t, "multi-pool", 6)
	// Both replicas see the pool's Pods before the race starts.
	waitFor(t, 10*time.Second, "follower cache", func() (bool, string) {
		pods := follower.pods.pool("multi-pool")
		return len(pods) == 6, fmt.Sprintf("%d pods", len(pods))
	})
	holdRefills(t, "multi")

	const n = 30
	var mu sync.Mutex
	got := map[string]string{}
	wins, exhausted := 0, 0
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			req := acquireReq("multi", fmt.Sprintf("tenant-%d", i), fmt.Sprintf("multi-claim-%d", i))
			// A third of the requests go through NATS (the queue group picks a replica), the
			// rest straight to one replica or the other, so that both surely race.
			var inst messages.Instance
			var err error
			switch i % 3 {
			case 0:
				inst, err = acquire(ctx, req)
			case 1:
				inst, err = pm.Acquire(ctx, req)
			default:
				inst, err = follower.Acquire(ctx, req)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				if prev, dup := got[inst.InstanceID]; dup {
					t.Errorf("instance %s handed to tenant-%d and %s", inst.InstanceID, i, prev)
				}
				got[inst.InstanceID] = fmt.Sprintf("tenant-%d", i)
				wins++
			case messages.CodeOf(err) == messages.CodeCapacityExhausted:
				exhausted++
			default:
				t.Errorf("acquire: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins != 6 || exhausted != n-6 {
		t.Fatalf("%d acquisitions succeeded and %d were capacity_exhausted, want 6 and %d", wins, exhausted, n-6)
	}
	by := map[string]int{}
	for id, tenant := range got {
		e, ok := ledgerEntry(t, id)
		if !ok || e.TenantID != tenant {
			t.Errorf("ledger entry of %s = %+v, %v", id, e, ok)
		}
		by[e.By]++
	}
	t.Logf("acquisitions by replica: %v", by)
	// Whichever replica acquired, the Pods get their labels.
	waitFor(t, 10*time.Second, "acquired pods labelled", func() (bool, string) {
		for id, tenant := range got {
			p, ok := getPod(t, id)
			if !ok || p.Labels[v1alpha1.LabelTenant] != tenant {
				return false, id
			}
		}
		return true, ""
	})
	for id, tenant := range got {
		if _, err := retire(ctx, messages.RetireRequest{InstanceID: id, TenantID: tenant, Workload: "multi"}); err != nil {
			t.Errorf("retire %s: %v", id, err)
		}
	}
}
