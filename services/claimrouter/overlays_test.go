package claimrouter

import (
	"context"
	"fmt"
	"slices"
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

// testOverlays stands in for the overlay-store in these tests: a service on
// the real bus (its own connection, queue group overlay-store) serving
// extract, restore, list and delete from memory. An instance's overlay
// dirs are a string (files); a stored version is a generation holding one.
// Like the overlay-store it reads and writes only instances that run and
// belong to the tenant, refuses an extract whose restoredGeneration is not
// the newest stored one (unless forced), and releases the restore init
// container of a cold instance (testPool.markRestored) once restored.
// Switches make extract or restore fail and block, and every call is
// recorded.
type testOverlays struct {
	pool *testPool
	ops  *opLog

	mu       sync.Mutex
	stored   map[string][]storedOverlay // ClaimKey -> versions, oldest first
	files    map[string]string          // instance ID -> its overlay dirs
	extracts []messages.ExtractRequest
	restores []messages.RestoreRequest
	lists    []messages.OverlayListRequest
	deletes  []messages.OverlayDeleteRequest
	commits  int

	failExtract  int   // the next failExtract extracts fail (unavailable)
	extractErr   error // every extract fails with it
	restoreErr   error // every restore fails with it
	failRestore  int   // the next failRestore restores fail (unavailable)
	noMark       int   // the next noMark restores do not release the init container
	listErr      error // every list fails with it
	onExtract    func(context.Context, messages.ExtractRequest) error
	onRestore    func(messages.RestoreRequest) error
	extractCalls atomic.Int64
	restoreCalls atomic.Int64
}

type storedOverlay struct {
	generation   int64
	data         string
	restoredFrom int64
	force        bool
}

func startTestOverlays(t testing.TB, s *server.Server, pool *testPool) *testOverlays {
	t.Helper()
	o := &testOverlays{pool: pool, ops: pool.ops, stored: map[string][]storedOverlay{}, files: map[string]string{}}
	nc, err := natsx.ConnectInProcess(s, nats.Name("test-overlay-store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	opts := bus.ServeOptions{Queue: messages.QueueOverlayStore, Workers: 4096, Logger: testLogger(), Progress: messages.ProgressInterval}
	if _, err := bus.Serve[messages.ExtractRequest](nc, messages.SubjectOverlaysExtract, bus.Endpoint(o.extract), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Serve[messages.RestoreRequest](nc, messages.SubjectOverlaysRestore, bus.Endpoint(o.restore), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Serve[messages.OverlayListRequest](nc, messages.SubjectOverlaysList, bus.Endpoint(o.list), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Serve[messages.OverlayDeleteRequest](nc, messages.SubjectOverlaysDelete, bus.Endpoint(o.delete), opts); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return o
}

// checkInstance refuses an instance that is gone or is not the tenant's.
func (o *testOverlays) checkInstance(tenant, workload, instanceID string) error {
	inst, alive := o.pool.instance(instanceID)
	switch {
	case !alive:
		return messages.Errorf(messages.CodeNotFound, "instance %s not found", instanceID)
	case inst.TenantID != tenant || inst.Workload != workload:
		return messages.Errorf(messages.CodeConflict, "instance %s belongs to another tenant", instanceID)
	}
	return nil
}

func (o *testOverlays) newest(key string) int64 {
	v := o.stored[key]
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1].generation
}

func (o *testOverlays) extract(ctx context.Context, req messages.ExtractRequest) (messages.Snapshot, error) {
	o.extractCalls.Add(1)
	o.mu.Lock()
	o.extracts = append(o.extracts, req)
	hook := o.onExtract
	o.mu.Unlock()
	o.ops.add("extract:" + req.InstanceID)
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return messages.Snapshot{}, err
		}
	}
	if err := o.checkInstance(req.TenantID, req.Workload, req.InstanceID); err != nil {
		return messages.Snapshot{}, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.extractErr != nil {
		return messages.Snapshot{}, o.extractErr
	}
	if o.failExtract > 0 {
		o.failExtract--
		return messages.Snapshot{}, messages.Errorf(messages.CodeUnavailable, "instance %s: exec: connection reset", req.InstanceID)
	}
	key := messages.ClaimKey(req.TenantID, req.Workload)
	newest := o.newest(key)
	if !req.Force && req.RestoredGeneration != newest {
		return messages.Snapshot{}, messages.Errorf(messages.CodeConflict, "stored generation %d is newer than restoredGeneration %d", newest, req.RestoredGeneration)
	}
	v := storedOverlay{generation: newest + 1, data: o.files[req.InstanceID], restoredFrom: req.RestoredGeneration, force: req.Force}
	o.stored[key] = append(o.stored[key], v)
	o.commits++
	o.ops.add(fmt.Sprintf("commit:%s:%d", req.InstanceID, v.generation))
	return messages.Snapshot{TenantID: req.TenantID, Workload: req.Workload, Generation: v.generation, Size: int64(len(v.data)), CreatedAt: time.Now().UTC()}, nil
}

func (o *testOverlays) restore(_ context.Context, req messages.RestoreRequest) (messages.RestoreReply, error) {
	o.restoreCalls.Add(1)
	o.mu.Lock()
	o.restores = append(o.restores, req)
	restoreErr := o.restoreErr
	hook := o.onRestore
	fail := o.failRestore > 0
	if fail {
		o.failRestore--
	}
	o.mu.Unlock()
	o.ops.add("restore:" + req.InstanceID)
	if hook != nil {
		if err := hook(req); err != nil {
			return messages.RestoreReply{}, err
		}
	}
	if restoreErr != nil {
		return messages.RestoreReply{}, restoreErr
	}
	if fail {
		return messages.RestoreReply{}, messages.Errorf(messages.CodeUnavailable, "instance %s: init container overlay-restore is not running yet", req.InstanceID)
	}
	if err := o.checkInstance(req.TenantID, req.Workload, req.InstanceID); err != nil {
		return messages.RestoreReply{}, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	versions := o.stored[messages.ClaimKey(req.TenantID, req.Workload)]
	var v *storedOverlay
	for i := range versions {
		if req.Generation == 0 || versions[i].generation == req.Generation {
			v = &versions[i]
		}
	}
	if v == nil {
		if req.Generation != 0 {
			return messages.RestoreReply{}, messages.Errorf(messages.CodeNotFound, "generation %d not stored", req.Generation)
		}
		o.pool.markRestored(req.InstanceID)
		return messages.RestoreReply{}, nil
	}
	o.files[req.InstanceID] = v.data
	if o.noMark > 0 {
		o.noMark--
		return messages.RestoreReply{Generation: v.generation, Restored: true}, nil
	}
	o.pool.markRestored(req.InstanceID)
	return messages.RestoreReply{Generation: v.generation, Restored: true}, nil
}

func (o *testOverlays) list(_ context.Context, req messages.OverlayListRequest) (messages.SnapshotList, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lists = append(o.lists, req)
	o.ops.add("list:" + req.TenantID)
	if o.listErr != nil {
		return messages.SnapshotList{}, o.listErr
	}
	var out messages.SnapshotList
	versions := o.stored[messages.ClaimKey(req.TenantID, req.Workload)]
	for i := len(versions) - 1; i >= 0; i-- {
		out.Snapshots = append(out.Snapshots, messages.Snapshot{TenantID: req.TenantID, Workload: req.Workload, Generation: versions[i].generation, Size: int64(len(versions[i].data))})
	}
	return out, nil
}

func (o *testOverlays) delete(_ context.Context, req messages.OverlayDeleteRequest) (messages.OverlayDeleteReply, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deletes = append(o.deletes, req)
	o.ops.add("delete:" + req.TenantID + "/" + req.Workload)
	key := messages.ClaimKey(req.TenantID, req.Workload)
	n := len(o.stored[key])
	delete(o.stored, key)
	return messages.OverlayDeleteReply{Deleted: n}, nil
}

// seed stores data as the next generation of the pair, as an earlier
// claim would have.
func (o *testOverlays) seed(tenant, workload, data string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	key := messages.ClaimKey(tenant, workload)
	g := o.newest(key) + 1
	o.stored[key] = append(o.stored[key], storedOverlay{generation: g, data: data})
	return g
}

// write sets an instance's overlay dirs, as the tenant's workload would.
func (o *testOverlays) write(instanceID, data string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.files[instanceID] = data
}

func (o *testOverlays) read(instanceID string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.files[instanceID]
}

// versions is the pair's stored versions, oldest first.
func (o *testOverlays) versions(tenant, workload string) []storedOverlay {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.stored[messages.ClaimKey(tenant, workload)])
}

// newestData is the data of the pair's newest stored version.
func (o *testOverlays) newestData(tenant, workload string) (int64, string) {
	v := o.versions(tenant, workload)
	if len(v) == 0 {
		return 0, ""
	}
	return v[len(v)-1].generation, v[len(v)-1].data
}

func (o *testOverlays) set(f func(o *testOverlays)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f(o)
}

func (o *testOverlays) extractRequests() []messages.ExtractRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.extracts)
}

func (o *testOverlays) restoreRequests() []messages.RestoreRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.restores)
}

func (o *testOverlays) listRequests() []messages.OverlayListRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.lists)
}

func (o *testOverlays) committed() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.commits
}
