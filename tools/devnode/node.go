// Package devnode is a stand-in kubelet for development and tests, where no real kubelet runs.
//
// A Node registers a Node object and keeps it Ready (status heartbeat and a Lease in
// kube-node-lease), binds every unscheduled Pod to itself, and "runs" the Pods bound to it: each
// gets a distinct loopback IP, and each declared container port is served by a small demo HTTP
// server inside this process (GET / answers JSON naming the Pod, its workload and tenant labels;
// GET /health answers {"status":"ok"}; PUT and GET /files/<path> write and read files in the main
// container's overlay directories). HTTP and TCP readiness probes run for real against those
// servers. Deleting a Pod stops its servers and completes the deletion as a kubelet does. A
// restarted Node adopts the Pods already bound to it, keeping their recorded Pod IPs and files.
//
// Each container has a filesystem of its own on disk under Config.StateDir, and each Pod volume
// is a directory there. Init containers and exec sessions are real processes in a sandbox (see
// sandbox.go) that sees the container's root, its volume mounts and the host's system
// directories read-only. The node serves the kubelet API for exec and logs on 127.0.0.1 (see
// kubelet.go) and publishes it in the Node's status, so kubectl exec, kubectl logs and
// client-go's remotecommand work through the real API server. Containers' logs are files in the
// CRI format (see logs.go).
//
// It works against a real API server (client-go informers and a rate-limited workqueue) and is
// meant to carry thousands of Pods on a small machine.
package devnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// maxMovesPerSync bounds how many IPs one sync tries for a new Pod whose port is taken (another
// dev node on this machine may hold a run of the range); the next sync, after a backoff, goes on.
const maxMovesPerSync = 32

// Node is a running dev node. Create it with New and start it with Run (once).
type Node struct {
	cfg    Config
	name   string
	log    *slog.Logger
	client kubernetes.Interface
	alloc  *ipAllocator
	probe  *http.Client
	dialer net.Dialer

	factory   informers.SharedInformerFactory
	podLister corelisters.PodLister
	podSynced cache.InformerSynced
	queue     workqueue.TypedRateLimitingInterface[string]

	kubelet *kubeletServer // the exec and logs endpoint, from Run on

	mu   sync.Mutex
	pods map[string]*podRuntime // by namespace/name

	ran atomic.Bool

	statusPatches atomic.Int64 // status writes, for tests and logs
}

// New checks cfg and prepares a Node; nothing talks to the API server until Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rc := rest.CopyConfig(cfg.RestConfig)
	rc.QPS = cfg.QPS
	rc.Burst = cfg.Burst
	rc.UserAgent = "boilerhouse-devnode/" + cfg.NodeName
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("devnode: client: %w", err)
	}
	n := &Node{
		cfg:    cfg,
		name:   cfg.NodeName,
		log:    cfg.Logger.With("node", cfg.NodeName),
		client: client,
		alloc:  newIPAllocator(cfg.IPRange),
		pods:   map[string]*podRuntime{},
		// Probes only ever reach loopback addresses (see probeHost); no proxy, no keep-alive
		// (a probe is one request per period, as with the kubelet), no redirects followed.
		probe: &http.Client{
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, MaxIdleConns: -1},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
	// One informer for Pods of all namespaces: unscheduled ones to bind, ours to run. Managed
	// fields are dropped to keep thousands of cached Pods small.
	n.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(func(obj any) (any, error) {
			if a, err := meta.Accessor(obj); err == nil {
				a.SetManagedFields(nil)
			}
			return obj, nil
		}))
	pods := n.factory.Core().V1().Pods()
	n.podLister = pods.Lister()
	n.podSynced = pods.Informer().HasSynced
	n.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "devnode-" + cfg.NodeName})
	return n, nil
}

// Name returns the Node object's name.
func (n *Node) Name() string { return n.name }

// kubeletPort is the port of the running kubelet endpoint (0 before Run).
func (n *Node) kubeletPort() int {
	if n.kubelet == nil {
		return 0
	}
	return n.kubelet.port
}

// Run registers the Node, then binds and runs Pods until ctx is done. It returns after every
// server it started is closed and every goroutine it started has ended: nil after ctx is done, or
// the error that stopped the start-up. Run may be called once per Node.
func (n *Node) Run(ctx context.Context) error {
	if !n.ran.CompareAndSwap(false, true) {
		return errors.New("devnode: Run called twice")
	}
	defer n.queue.ShutDown()
	if err := os.MkdirAll(n.podsDir(), 0o755); err != nil {
		return fmt.Errorf("devnode: state dir: %w", err)
	}
	kubelet, err := n.startKubelet(n.cfg.KubeletPort)
	if err != nil {
		return err
	}
	n.kubelet = kubelet
	defer func() {
		// Exec sessions and log streams end with their Pods (stopAll), or here.
		kubelet.close()
		kubelet.wait()
	}()
	if err := n.register(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	inf := n.factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    n.onPod,
		UpdateFunc: func(_, obj any) { n.onPod(obj) },
		DeleteFunc: n.onPodDelete,
	}); err != nil {
		return fmt.Errorf("devnode: pod informer: %w", err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	n.factory.Start(runCtx.Done())
	defer func() {
		cancel()
		n.factory.Shutdown() // waits for the informer goroutines, which end on cancel
	}()
	if !cache.WaitForCacheSync(runCtx.Done(), n.podSynced) {
		return nil // ctx done before the cache synced; nothing started yet
	}
	n.adopt()

	var wg sync.WaitGroup
	for range n.cfg.Workers {
		wg.Go(func() {
			for n.processNext(runCtx) {
			}
		})
	}
	wg.Go(func() { n.heartbeat(runCtx) })
	n.log.Info("dev node running", "workers", n.cfg.Workers, "ipRange", n.cfg.IPRange.String(),
		"kubeletPort", kubelet.port, "stateDir", n.cfg.StateDir)

	<-ctx.Done()
	n.queue.ShutDown()
	cancel()
	wg.Wait()
	kubelet.close() // no new exec or log sessions
	n.stopAll()
	n.log.Info("dev node stopped", "statusPatches", n.statusPatches.Load())
	return nil
}

// adopt runs once the cache has synced, before any worker: it reserves the Pod IPs recorded in
// the status of Pods already bound to this node, so a new Pod can never be handed one of them.
// A Pod whose recorded IP cannot be reserved (taken, or not loopback) gets a new one when it runs.
// It also removes the directories of Pods that are gone (deleted while the node was down).
func (n *Node) adopt() {
	pods, err := n.podLister.List(labels.Everything())
	if err != nil {
		n.log.Error("listing cached pods", "err", err)
		return
	}
	keep := map[types.UID]bool{}
	for _, pod := range pods {
		if pod.Spec.NodeName == n.name {
			keep[pod.UID] = true
		}
	}
	n.collectPodDirs(keep)
	adopted := 0
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, pod := range pods {
		if pod.Spec.NodeName != n.name {
			continue
		}
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || !n.alloc.reserve(pod.UID, ip) {
			continue
		}
		key := podKey(pod)
		n.pods[key] = newPodRuntime(n, pod, ip, true)
		adopted++
	}
	if adopted > 0 {
		n.log.Info("adopted pods bound to this node", "pods", adopted)
	}
}

func podKey(pod *corev1.Pod) string { return pod.Namespace + "/" + pod.Name }

func (n *Node) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.Spec.NodeName == "" || pod.Spec.NodeName == n.name {
		n.queue.Add(podKey(pod))
	}
}

func (n *Node) onPodDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		n.queue.Add(t.Key)
		return
	}
	n.onPod(obj)
}

func (n *Node) processNext(ctx context.Context) bool {
	key, shutdown := n.queue.Get()
	if shutdown {
		return false
	}
	defer n.queue.Done(key)
	if ctx.Err() != nil {
		return false
	}
	err := n.sync(ctx, key)
	if err == nil {
		n.queue.Forget(key)
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	n.log.Warn("syncing pod", "pod", key, "err", err, "retries", n.queue.NumRequeues(key))
	n.queue.AddRateLimited(key)
	return true
}

// sync brings one Pod to where it should be. Calls for one key never overlap (workqueue).
func (n *Node) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := n.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		n.forget(key, "")
		return nil
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp != nil {
			return nil
		}
		return n.bind(ctx, pod)
	}
	if pod.Spec.NodeName != n.name {
		n.forget(key, "")
		return nil
	}
	// A runtime left from an older Pod of the same name goes first.
	n.forget(key, pod.UID)

	// Deleting and terminal Pods are never (re)started, so they get no new IP, only their
	// recorded one reserved.
	terminal := pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
	rt, err := n.runtimeFor(pod, pod.DeletionTimestamp == nil && !terminal)
	if err != nil {
		return err
	}
	if pod.DeletionTimestamp != nil {
		return n.finishDeletion(ctx, pod, rt)
	}
	if terminal {
		// Terminal Pods keep their status and are not restarted; the IP stays reserved
		// until the Pod is gone, since its status still names it.
		rt.stop()
		return nil
	}
	err = rt.ensureStarted(pod)
	for moves := 0; errors.Is(err, syscall.EADDRINUSE) && !rt.adopted && moves < maxMovesPerSync; moves++ {
		// Someone else (another dev node on this machine, a host service on a wildcard
		// address) holds this IP:port: move the new Pod to the next IP and try again.
		if rerr := n.reallocate(rt); rerr != nil {
			return rerr
		}
		n.log.Info("pod port in use on its IP; moving the pod to another IP", "pod", key, "err", err, "ip", rt.ip)
		err = rt.ensureStarted(pod)
	}
	if err != nil {
		if perr := n.syncStatus(ctx, pod, rt); perr != nil {
			n.log.Warn("reporting start failure", "pod", key, "err", perr)
		}
		return fmt.Errorf("starting pod: %w", err)
	}
	rt.awaitFirstProbes()
	return n.syncStatus(ctx, pod, rt)
}

// runtimeFor returns the Pod's runtime, creating it (and reserving its IP) if needed. A recorded
// status.podIP is reused when free, so endpoints stay valid across restarts; otherwise, if
// allocate is set, a new IP is allocated.
func (n *Node) runtimeFor(pod *corev1.Pod, allocate bool) (*podRuntime, error) {
	key := podKey(pod)
	n.mu.Lock()
	defer n.mu.Unlock()
	if rt := n.pods[key]; rt != nil {
		return rt, nil
	}
	adopted := false
	var ip netip.Addr
	if rec, err := netip.ParseAddr(pod.Status.PodIP); err == nil && n.alloc.reserve(pod.UID, rec) {
		ip, adopted = rec, true
	} else if allocate {
		if ip, err = n.alloc.allocate(pod.UID); err != nil {
			return nil, err
		}
	}
	rt := newPodRuntime(n, pod, ip, adopted)
	n.pods[key] = rt
	return rt, nil
}

// reallocate gives a runtime that has not started a fresh IP.
func (n *Node) reallocate(rt *podRuntime) error {
	n.alloc.release(rt.uid)
	ip, err := n.alloc.allocate(rt.uid)
	if err != nil {
		return err
	}
	rt.mu.Lock()
	rt.ip = ip
	rt.mu.Unlock()
	return nil
}

// forget stops and drops the runtime under key, removes its Pod's directories and frees its IP,
// unless it belongs to keep.
func (n *Node) forget(key string, keep types.UID) {
	n.mu.Lock()
	rt := n.pods[key]
	if rt == nil || (keep != "" && rt.uid == keep) {
		n.mu.Unlock()
		return
	}
	delete(n.pods, key)
	n.mu.Unlock()
	rt.stop()
	n.removePodFS(rt.uid)
	n.alloc.release(rt.uid)
}

// stopAll stops every runtime; called once the workers have ended.
func (n *Node) stopAll() {
	n.mu.Lock()
	rts := make([]*podRuntime, 0, len(n.pods))
	for _, rt := range n.pods {
		rts = append(rts, rt)
	}
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, rt := range rts {
		wg.Go(rt.stop)
	}
	wg.Wait()
}

// bind assigns an unscheduled Pod to this node through the pods/binding subresource.
func (n *Node) bind(ctx context.Context, pod *corev1.Pod) error {
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: n.name},
	}
	err := n.client.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{})
	switch {
	case err == nil:
		n.log.Debug("bound pod", "pod", podKey(pod))
		return nil
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return nil // gone, or bound meanwhile: the informer brings the news
	default:
		return fmt.Errorf("binding: %w", err)
	}
}

// finishDeletion stops the Pod's servers, then deletes it for good the way a kubelet does
// (grace period 0, UID precondition). The IP stays reserved until the Pod has left the API.
func (n *Node) finishDeletion(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	rt.stop()
	n.removePodFS(pod.UID)
	if g := pod.DeletionGracePeriodSeconds; g != nil && *g == 0 {
		return nil // already finished; only finalizers keep it
	}
	zero := int64(0)
	uid := pod.UID
	err := n.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting: %w", err)
	}
	n.log.Debug("pod deleted", "pod", podKey(pod))
	return nil
}
