package devnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	// failDelay is how long a Pod with BehaviorFail runs before it fails.
	failDelay = 500 * time.Millisecond
	// firstProbeWait bounds how long a worker waits for a new Pod's first probes before it
	// writes the Pod's status, so that usually one write reports it Running and Ready.
	firstProbeWait = 250 * time.Millisecond
)

// podRuntime is what the node runs for one Pod (one UID): its IP, its port servers, its probes.
type podRuntime struct {
	n         *Node
	key       string
	namespace string
	name      string
	uid       types.UID
	ip        netip.Addr // invalid for a deleting or terminal Pod that never recorded one
	adopted   bool       // ip came from the Pod's recorded status (restart adoption)

	ctx    context.Context // cancelled by stop and by fail: ends probes and the fail timer
	cancel context.CancelFunc
	wg     sync.WaitGroup // probe and fail goroutines

	firstProbes  chan struct{} // closed once every immediate first probe has a verdict
	pendingFirst atomic.Int32

	mu         sync.Mutex
	started    bool  // servers were started (possibly since stopped)
	stopped    bool  // stop was called: never start again
	startErr   error // last start attempt failed
	startTime  metav1.Time
	failed     bool // BehaviorFail fired
	finishedAt metav1.Time
	containers map[string]*containerState
	servers    []*portServer

	lastSent   *corev1.PodStatus // last status patched, and
	lastSentRV string            // the resourceVersion it was computed from
}

type containerState struct {
	startedAt metav1.Time
	probed    bool // has a readiness probe
	ready     bool // probe verdict (or seeded from recorded status on adoption)
}

// now returns the current time at the API's (second) precision, so computed statuses compare
// equal to what comes back from the API server.
func now() metav1.Time { return metav1.NewTime(time.Now().Truncate(time.Second)) }

func newPodRuntime(n *Node, pod *corev1.Pod, ip netip.Addr, adopted bool) *podRuntime {
	ctx, cancel := context.WithCancel(context.Background())
	return &podRuntime{
		n: n, key: podKey(pod), namespace: pod.Namespace, name: pod.Name, uid: pod.UID,
		ip: ip, adopted: adopted, ctx: ctx, cancel: cancel,
	}
}

// ensureStarted starts the Pod's servers and probes unless they already run (or ran). On
// failure nothing is left listening and the next call tries again.
func (rt *podRuntime) ensureStarted(pod *corev1.Pod) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.started || rt.stopped {
		return nil
	}
	if !rt.ip.IsValid() {
		return errors.New("no pod IP")
	}
	servers, err := rt.listen(pod)
	if err != nil {
		rt.startErr = err
		return err
	}
	t := now()
	rt.started, rt.startErr, rt.servers = true, nil, servers
	rt.startTime = t
	if rt.adopted && pod.Status.StartTime != nil {
		rt.startTime = *pod.Status.StartTime
	}
	recorded := map[string]corev1.ContainerStatus{}
	if rt.adopted {
		for _, cs := range pod.Status.ContainerStatuses {
			recorded[cs.Name] = cs
		}
	}
	rt.containers = make(map[string]*containerState, len(pod.Spec.Containers))
	rt.firstProbes = make(chan struct{})
	rt.pendingFirst.Store(1) // released below, once every probe loop is counted
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		st := &containerState{startedAt: t, probed: c.ReadinessProbe != nil}
		// On adoption keep the recorded start time and readiness, so a node restart does
		// not flap Ready; the probe corrects a wrong verdict within failureThreshold periods.
		if rec, ok := recorded[c.Name]; ok && rec.State.Running != nil {
			st.startedAt = rec.State.Running.StartedAt
			st.ready = rec.Ready
		}
		rt.containers[c.Name] = st
		if c.ReadinessProbe != nil {
			probe, container := c.ReadinessProbe.DeepCopy(), c.DeepCopy()
			firstAt := st.startedAt.Add(time.Duration(probe.InitialDelaySeconds) * time.Second)
			immediate := !firstAt.After(time.Now())
			if immediate {
				rt.pendingFirst.Add(1)
			}
			rt.wg.Go(func() { rt.probeLoop(container, probe, firstAt, immediate) })
		}
	}
	rt.firstProbeDone()
	if pod.Annotations[BehaviorAnnotation] == BehaviorFail {
		rt.wg.Go(func() {
			t := time.NewTimer(failDelay)
			defer t.Stop()
			select {
			case <-rt.ctx.Done():
			case <-t.C:
				rt.fail()
			}
		})
	}
	rt.n.log.Debug("pod started", "pod", rt.key, "ip", rt.ip, "servers", len(servers), "adopted", rt.adopted)
	return nil
}

// firstProbeDone counts down one pending first probe.
func (rt *podRuntime) firstProbeDone() {
	if rt.pendingFirst.Add(-1) == 0 {
		close(rt.firstProbes)
	}
}

// awaitFirstProbes waits (at most firstProbeWait) until the readiness probes that were due at
// start have run once.
func (rt *podRuntime) awaitFirstProbes() {
	rt.mu.Lock()
	ch := rt.firstProbes
	rt.mu.Unlock()
	if ch == nil {
		return
	}
	t := time.NewTimer(firstProbeWait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-rt.ctx.Done():
	}
}

// listen opens one demo server for each distinct TCP port any container declares.
func (rt *podRuntime) listen(pod *corev1.Pod) ([]*portServer, error) {
	var servers []*portServer
	seen := map[int32]bool{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if (p.Protocol != "" && p.Protocol != corev1.ProtocolTCP) || seen[p.ContainerPort] {
				continue
			}
			seen[p.ContainerPort] = true
			s, err := startPortServer(rt.n, rt.namespace, rt.name, rt.ip, p.ContainerPort)
			if err != nil {
				for _, s := range servers {
					s.close()
				}
				return nil, err
			}
			servers = append(servers, s)
		}
	}
	return servers, nil
}

// stop ends probes and closes every server; the runtime never starts again. Idempotent.
func (rt *podRuntime) stop() {
	rt.cancel()
	rt.mu.Lock()
	rt.stopped = true
	servers := rt.servers
	rt.servers = nil
	rt.mu.Unlock()
	for _, s := range servers {
		s.close()
	}
	rt.wg.Wait()
}

// fail ends the Pod as BehaviorFail asks: servers closed, containers terminated with exit code 1.
func (rt *podRuntime) fail() {
	rt.mu.Lock()
	if rt.failed || rt.stopped {
		rt.mu.Unlock()
		return
	}
	rt.failed = true
	rt.finishedAt = now()
	servers := rt.servers
	rt.servers = nil
	rt.mu.Unlock()
	rt.cancel() // probes end; wg is not waited here (fail runs in it)
	for _, s := range servers {
		s.close()
	}
	rt.n.log.Debug("pod failed by behavior annotation", "pod", rt.key)
	rt.n.queue.Add(rt.key)
}

// probeLoop runs one container's readiness probe every periodSeconds until the runtime stops,
// turning the container ready after successThreshold passes in a row and not ready after
// failureThreshold failures in a row. The first probe runs at firstAt (container start plus
// initialDelaySeconds); if immediate, its verdict counts down rt.pendingFirst. Each probe is
// bounded by timeoutSeconds.
func (rt *podRuntime) probeLoop(c *corev1.Container, p *corev1.Probe, firstAt time.Time, immediate bool) {
	period := seconds(p.PeriodSeconds, 10)
	timeout := seconds(p.TimeoutSeconds, 1)
	successThreshold := max(int(p.SuccessThreshold), 1)
	failureThreshold := int(p.FailureThreshold)
	if failureThreshold <= 0 {
		failureThreshold = 3
	}
	timer := time.NewTimer(time.Until(firstAt))
	defer timer.Stop()
	successes, failures := 0, 0
	for {
		select {
		case <-rt.ctx.Done():
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithTimeout(rt.ctx, timeout)
		err := rt.n.runProbe(ctx, rt.ip, c, p)
		cancel()
		if rt.ctx.Err() != nil {
			return
		}
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
		}
		rt.mu.Lock()
		st := rt.containers[c.Name]
		changed := false
		switch {
		case !st.ready && successes >= successThreshold:
			st.ready, changed = true, true
		case st.ready && failures >= failureThreshold:
			st.ready, changed = false, true
		}
		rt.mu.Unlock()
		if immediate {
			immediate = false
			rt.firstProbeDone()
		}
		if changed {
			rt.n.log.Debug("readiness changed", "pod", rt.key, "container", c.Name, "ready", err == nil, "err", err)
			rt.n.queue.Add(rt.key)
		}
		timer.Reset(period)
	}
}

func seconds(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

// runProbe runs one probe against the Pod's IP; nil means it passed.
func (n *Node) runProbe(ctx context.Context, podIP netip.Addr, c *corev1.Container, p *corev1.Probe) error {
	switch {
	case p.HTTPGet != nil:
		h := p.HTTPGet
		host, err := probeHost(h.Host, podIP)
		if err != nil {
			return err
		}
		port, err := resolvePort(h.Port, c)
		if err != nil {
			return err
		}
		scheme := "http"
		if h.Scheme == corev1.URISchemeHTTPS {
			scheme = "https" // our demo servers speak plain HTTP, so this fails, as it would
		}
		path := h.Path
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/1.37 (boilerhouse-devnode)")
		for _, hdr := range h.HTTPHeaders {
			if http.CanonicalHeaderKey(hdr.Name) == "Host" {
				req.Host = hdr.Value
			} else {
				req.Header.Add(hdr.Name, hdr.Value)
			}
		}
		resp, err := n.probe.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe: status %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		host, err := probeHost(p.TCPSocket.Host, podIP)
		if err != nil {
			return err
		}
		port, err := resolvePort(p.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		conn, err := n.dialer.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	default:
		// Exec (and gRPC) probes count as passing for now: the dev node has no processes to
		// exec into yet. Exec support arrives with the kubelet exec API in a later issue.
		return nil
	}
}

// probeHost returns the address a probe dials: the Pod IP, or an explicit host only if it is a
// loopback address (the dev node never sends traffic off the machine).
func probeHost(host string, podIP netip.Addr) (string, error) {
	if host == "" {
		if !podIP.IsValid() {
			return "", errors.New("no pod IP")
		}
		return podIP.String(), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() {
		return "", fmt.Errorf("probe host %q: the dev node only probes loopback addresses", host)
	}
	return a.String(), nil
}

// resolvePort turns a probe port (number or container port name) into a number.
func resolvePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		if v := port.IntValue(); v > 0 && v <= 65535 {
			return v, nil
		}
		return 0, fmt.Errorf("probe port %d out of range", port.IntValue())
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("probe port %q: no such container port", port.StrVal)
}
