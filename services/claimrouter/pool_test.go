package claimrouter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/bus"
	"boilerhouse.dev/pkg/natsx"
)

// testPool stands in for pool-manager in these tests: a small service on
// the real bus (its own connection, queue group pool-manager) that serves
// acquire, boot and retire from an in-memory pool. Like pool-manager,
// acquire and boot are idempotent per claim ID; instances of a workload
// with overlays say so (Overlays, ReleaseAction), and a cold boot with a
// RestoreGeneration first answers awaiting-restore, then (asked again)
// waits until the overlay-store marked the instance restored, answering
// awaiting-restore again if that takes longer than restoreGrace. A
// RestoreGeneration for a workload without overlays is invalid_argument.
type testPool struct {
	mu        sync.Mutex
	ready     map[string]int               // workload -> warm instances left
	overlays  map[string]string            // workload with overlays -> its release action
	byClaim   map[string]messages.Instance // claim ID -> its instance
	byID      map[string]messages.Instance // instance ID -> instance
	instances map[string]string            // instance ID -> claim ID
	retired   map[string]int               // instance ID -> retire calls
	awaiting  map[string]bool              // instance ID -> its restore init container waits
	boots     []messages.BootRequest
	seq       int
	onBoot    func(context.Context, messages.BootRequest) error // nil: boot at once
	onRetire  func(messages.RetireRequest) error
	ops       *opLog
	// terseReady leaves Overlays and ReleaseAction out of the Ready
	// answer to a boot that awaited its restore.
	terseReady bool

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
		overlays:  map[string]string{},
		byID:      map[string]messages.Instance{},
		awaiting:  map[string]bool{},
		ops:       &opLog{},
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
	if action, ok := p.overlays[workload]; ok {
		inst.Overlays, inst.ReleaseAction = true, action
	}
	p.byClaim[claimID] = inst
	p.byID[inst.InstanceID] = inst
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
	_, overlays := p.overlays[req.Workload]
	hook := p.onBoot
	p.boots = append(p.boots, req)
	p.mu.Unlock()
	if !known {
		return messages.Instance{}, messages.Errorf(messages.CodeNotFound, "workload %q not found", req.Workload)
	}
	if req.RestoreGeneration > 0 && !overlays {
		return messages.Instance{}, messages.Errorf(messages.CodeInvalidArgument, "workload %q has no overlay directories to restore into", req.Workload)
	}
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return messages.Instance{}, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	inst, ok := p.byClaim[req.ClaimID]
	if !ok {
		inst = p.newInstance(req.Workload, req.TenantID, req.ClaimID, "cold")
		if inst.Overlays && req.RestoreGeneration > 0 {
			// The restore init container runs: answer at once.
			p.awaiting[inst.InstanceID] = true
			p.ops.add("boot-awaiting:" + inst.InstanceID)
			return awaitingRestore(inst), nil
		}
		return inst, nil
	}
	// Asked again: wait for Ready, i.e. for the restore; when it still
	// waits after the grace, the restore is needed (again).
	for wait := time.Now().Add(restoreGrace); p.awaiting[inst.InstanceID]; {
		if ctx.Err() != nil {
			return messages.Instance{}, messages.Errorf(messages.CodeDeadlineExceeded, "instance %s not ready: waiting for its restore", inst.InstanceID)
		}
		if time.Now().After(wait) {
			p.ops.add("boot-awaiting:" + inst.InstanceID)
			return awaitingRestore(inst), nil
		}
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		p.mu.Lock()
	}
	if p.terseReady && req.RestoreGeneration > 0 {
		inst.Overlays, inst.ReleaseAction = false, ""
	}
	return inst, nil
}

// restoreGrace is how long a repeated boot waits for the restore before
// answering awaiting-restore again (pool-manager's RestoreRepeatGrace).
const restoreGrace = 200 * time.Millisecond

func awaitingRestore(inst messages.Instance) messages.Instance {
	inst.Ready = false
	inst.Phase = messages.InstancePhaseAwaitingRestore
	return inst
}

// markRestored releases an instance's restore init container (what the
// overlay-store's restore does to a Pod that waits for its data).
func (p *testPool) markRestored(instanceID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.awaiting, instanceID)
}

// instance is the instance instanceID and whether it still runs.
func (p *testPool) instance(instanceID string) (messages.Instance, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	inst, ok := p.byID[instanceID]
	return inst, ok && p.retired[instanceID] == 0
}

// setOverlays declares that workload has overlay dirs and releases with
// action ("", "hibernate" or "destroy").
func (p *testPool) setOverlays(workload, action string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.overlays[workload] = action
}

func (p *testPool) setReady(workload string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready[workload] = n
}

// bootRequests is every boot request received, in order.
func (p *testPool) bootRequests() []messages.BootRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.boots)
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
	p.ops.add("retire:" + req.InstanceID)
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

// opLog records, in order, the calls the stand-ins served that matter for
// ordering checks ("retire:<instance>", "extract:<instance>", ...).
type opLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *opLog) add(op string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, op)
}

// list is the ops recorded so far, keeping those with one of the
// prefixes (all when none is given).
func (l *opLog) list(prefixes ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, op := range l.ops {
		if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(op, p) }) {
			out = append(out, op)
		}
	}
	return out
}
