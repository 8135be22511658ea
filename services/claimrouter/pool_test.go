package claimrouter

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
)

// testPool stands in for pool-manager in these tests: a small service on
// the real bus (its own connection, queue group pool-manager) that serves
// acquire, boot and retire from an in-memory pool. Like pool-manager,
// acquire and boot are idempotent per claim ID.
type testPool struct {
	mu        sync.Mutex
	ready     map[string]int               // workload -> warm instances left
	byClaim   map[string]messages.Instance // claim ID -> its instance
	instances map[string]string            // instance ID -> claim ID
	retired   map[string]int               // instance ID -> retire calls
	seq       int
	onBoot    func(context.Context, messages.BootRequest) error // nil: boot at once
	onRetire  func(messages.RetireRequest) error

	acquireCalls atomic.Int64
	bootCalls    atomic.Int64
	retireCalls  atomic.Int64
}

// startTestPool serves the pool-manager subjects for the given workloads
// and their warm pool sizes.
func startTestPool(t testing.TB, s *server.Server, workloads map[string]int) *testPool {
	t.Helper()
	p := &testPool{
		ready:     map[string]int{},
		byClaim:   map[string]messages.Instance{},
		instances: map[string]string{},
		retired:   map[string]int{},
	}
	for w, n := range workloads {
		p.ready[w] = n
	}
	nc, err := natsx.ConnectInProcess(s, nats.Name("test-pool-manager"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	opts := bus.ServeOptions{Queue: messages.QueuePoolManager, Workers: 4096, Logger: testLogger()}
	if _, err := bus.Serve[messages.AcquireRequest](nc, messages.SubjectPoolAcquire, bus.Endpoint(p.acquire), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Serve[messages.BootRequest](nc, messages.SubjectInstancesBoot, bus.Endpoint(p.boot), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Serve[messages.RetireRequest](nc, messages.SubjectInstancesRetire, bus.Endpoint(p.retire), opts); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPool) newInstance(workload, tenant, claimID, kind string) messages.Instance {
	p.seq++
	inst := messages.Instance{
		InstanceID: fmt.Sprintf("%s-%s-%d", workload, kind, p.seq),
		Workload:   workload,
		TenantID:   tenant,
		Endpoint:   &messages.Endpoint{Host: fmt.Sprintf("10.0.%d.%d", p.seq/250, p.seq%250+1), Port: 8080},
		Ready:      true,
		Phase:      "acquired",
	}
	p.byClaim[claimID] = inst
	p.instances[inst.InstanceID] = claimID
	return inst
}

func (p *testPool) acquire(_ context.Context, req messages.AcquireRequest) (messages.Instance, error) {
	p.acquireCalls.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	n, known := p.ready[req.Workload]
	if !known {
		return messages.Instance{}, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
	}
	if inst, ok := p.byClaim[req.ClaimID]; ok {
		return inst, nil
	}
	if n == 0 {
		return messages.Instance{}, messages.Errorf(messages.CodeCapacityExhausted, "pool of %q is empty", req.Workload)
	}
	p.ready[req.Workload] = n - 1
	return p.newInstance(req.Workload, req.TenantID, req.ClaimID, "pool"), nil
}

func (p *testPool) boot(ctx context.Context, req messages.BootRequest) (messages.Instance, error) {
	p.bootCalls.Add(1)
	p.mu.Lock()
	_, known := p.ready[req.Workload]
	hook := p.onBoot
	p.mu.Unlock()
	if !known {
		return messages.Instance{}, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
	}
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return messages.Instance{}, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if inst, ok := p.byClaim[req.ClaimID]; ok {
		return inst, nil
	}
	return p.newInstance(req.Workload, req.TenantID, req.ClaimID, "cold"), nil
}

func (p *testPool) retire(_ context.Context, req messages.RetireRequest) (messages.RetireReply, error) {
	p.retireCalls.Add(1)
	p.mu.Lock()
	hook := p.onRetire
	p.mu.Unlock()
	if hook != nil {
		if err := hook(req); err != nil {
			return messages.RetireReply{}, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retired[req.InstanceID]++
	_, existed := p.instances[req.InstanceID]
	return messages.RetireReply{Retired: existed && p.retired[req.InstanceID] == 1}, nil
}

func (p *testPool) setBoot(f func(context.Context, messages.BootRequest) error) {
	p.mu.Lock()
	p.onBoot = f
	p.mu.Unlock()
}

func (p *testPool) setRetire(f func(messages.RetireRequest) error) {
	p.mu.Lock()
	p.onRetire = f
	p.mu.Unlock()
}

// created is how many distinct instances were handed out or booted.
func (p *testPool) created() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.instances)
}

func (p *testPool) retiredCount(instanceID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.retired[instanceID]
}
