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

// podRuntime is what the node runs for one Pod (one UID): its IP, its filesystem, its init
// container processes, its port servers, its probes, its exec sessions and its logs.
type podRuntime struct {
	n         *Node
	key       string
	namespace string
	name      string
	uid       types.UID
	ip        netip.Addr // invalid for a deleting or terminal Pod that never recorded one
	adopted   bool       // ip came from the Pod's recorded status (restart adoption)

	ctx    context.Context // cancelled by stop and by fail: ends probes, init and exec processes
	cancel context.CancelFunc
	wg     sync.WaitGroup // probe, fail and init goroutines
	execs  sync.WaitGroup // exec sessions

	firstProbes  chan struct{} // closed once every immediate first probe has a verdict
	pendingFirst atomic.Int32

	logsMu sync.Mutex
	logs   map[string]*containerLog // by container name, opened on first use

	mu          sync.Mutex
	fsReady     bool // the Pod's directories exist
	initStarted bool // init containers were started (or found completed)
	initDone    bool // every init container completed: the containers may start
	initFailed  bool // an init container failed: the Pod is Failed
	inits       []*initContainerState
	started     bool  // servers were started (possibly since stopped)
	stopped     bool  // stop was called: never start again
	startErr    error // last start attempt failed
	startTime   metav1.Time
	failed      bool // BehaviorFail fired
	finishedAt  metav1.Time
	containers  map[string]*containerState
	servers     []*portServer

	lastSent   *corev1.PodStatus // last status patched, and
	lastSentRV string            // the resourceVersion it was computed from
}

type containerState struct {
	startedAt metav1.Time
	probed    bool // has a readiness probe
	ready     bool // probe verdict (or seeded from recorded status on adoption)
}

// initContainerState is where one init container is: waiting (neither flag), running or
// terminated.
type initContainerState struct {
	name       string
	sidecar    bool // restartPolicy Always: "started" like a container, never run to completion
	running    bool
	terminated bool
	exitCode   int32
	reason     string
	message    string
	startedAt  metav1.Time
	finishedAt metav1.Time
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

// logFor returns the log of one of the Pod's containers.
func (rt *podRuntime) logFor(container string) *containerLog {
	rt.logsMu.Lock()
	defer rt.logsMu.Unlock()
	if rt.logs == nil {
		rt.logs = map[string]*containerLog{}
	}
	l := rt.logs[container]
	if l == nil {
		l = newContainerLog(rt.n.containerLogPath(rt.uid, container))
		rt.logs[container] = l
	}
	return l
}

// ensureStarted moves the Pod on: it creates its directories, starts its init containers (once)
// and, once they have all completed, starts its servers and probes unless they already run (or
// ran). On failure nothing is left listening and the next call tries again.
func (rt *podRuntime) ensureStarted(pod *corev1.Pod) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.started || rt.stopped || rt.initFailed {
		return nil
	}
	if !rt.ip.IsValid() {
		return errors.New("no pod IP")
	}
	if !rt.fsReady {
		if err := rt.n.preparePodFS(pod); err != nil {
			rt.startErr = fmt.Errorf("pod filesystem: %w", err)
			return rt.startErr
		}
		rt.fsReady = true
	}
	if rt.startTime.IsZero() {
		rt.startTime = now()
		if pod.Status.StartTime != nil {
			rt.startTime = *pod.Status.StartTime
		}
	}
	if !rt.initStarted {
		rt.startInits(pod)
	}
	if !rt.initDone {
		return nil // the init goroutine requeues the Pod when it is done
	}
	servers, err := rt.listen(pod)
	if err != nil {
		rt.startErr = err
		return err
	}
	t := now()
	rt.started, rt.startErr, rt.servers = true, nil, servers
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

// startInits sets up the init containers' states and starts the goroutine that runs them, from
// the first that has not completed. Init containers recorded as completed (a restarted node) are
// not run again; none are once the Pod was recorded Initialized. Called with rt.mu held.
func (rt *podRuntime) startInits(pod *corev1.Pod) {
	rt.initStarted = true
	recorded := map[string]corev1.ContainerStatus{}
	for _, cs := range pod.Status.InitContainerStatuses {
		recorded[cs.Name] = cs
	}
	initialized := podInitialized(pod)
	first := -1
	rt.inits = make([]*initContainerState, len(pod.Spec.InitContainers))
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		st := &initContainerState{name: c.Name, sidecar: c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways}
		rt.inits[i] = st
		rec, ok := recorded[c.Name]
		switch {
		case first >= 0:
			// waiting behind the first one to run
		case initialized && st.sidecar:
			st.running, st.startedAt = true, rt.startTime
			if ok && rec.State.Running != nil {
				st.startedAt = rec.State.Running.StartedAt
			}
		case !st.sidecar && ok && rec.State.Terminated != nil && rec.State.Terminated.ExitCode == 0:
			t := rec.State.Terminated
			st.terminated, st.reason, st.startedAt, st.finishedAt = true, "Completed", t.StartedAt, t.FinishedAt
		case initialized:
			st.terminated, st.reason, st.startedAt, st.finishedAt = true, "Completed", rt.startTime, rt.startTime
		default:
			first = i
		}
	}
	if first < 0 {
		rt.initDone = true
		return
	}
	pod = pod.DeepCopy()
	rt.wg.Go(func() { rt.runInits(pod, first) })
}

// podInitialized reports whether the Pod's recorded status says its init containers completed.
func podInitialized(pod *corev1.Pod) bool {
	if pod.Status.Phase == corev1.PodRunning || pod.Status.Phase == corev1.PodSucceeded {
		return true
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodInitialized {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// runInits runs the init containers from first on, one after the other, each a real process in
// its sandbox; it ends the Pod (Failed) at the first that fails, and marks the Pod initialized
// when all have completed. A stopping runtime kills the running one.
func (rt *podRuntime) runInits(pod *corev1.Pod, first int) {
	for i := first; i < len(pod.Spec.InitContainers); i++ {
		c := &pod.Spec.InitContainers[i]
		rt.mu.Lock()
		st := rt.inits[i]
		rt.mu.Unlock()
		if st.sidecar {
			rt.mu.Lock()
			st.running, st.startedAt = true, now()
			rt.mu.Unlock()
			rt.logFor(c.Name).printf("devnode: sidecar %s started (not run: the dev node runs no images)", c.Name)
			rt.n.queue.Add(rt.key)
			continue
		}
		code, reason, msg := rt.runInit(pod, c, st)
		if rt.ctx.Err() != nil {
			return // stopping: the process was killed
		}
		rt.mu.Lock()
		st.running, st.terminated = false, true
		st.exitCode, st.reason, st.message, st.finishedAt = code, reason, msg, now()
		if st.startedAt.IsZero() {
			st.startedAt = st.finishedAt
		}
		if code != 0 {
			rt.initFailed, rt.finishedAt = true, st.finishedAt
		}
		rt.mu.Unlock()
		rt.n.log.Debug("init container ended", "pod", rt.key, "container", c.Name, "exitCode", code, "reason", reason)
		rt.n.queue.Add(rt.key)
		if code != 0 {
			return
		}
	}
	rt.mu.Lock()
	rt.initDone = true
	rt.mu.Unlock()
	rt.n.queue.Add(rt.key)
}

// runInit runs one init container's command and returns its exit code, reason and message.
func (rt *podRuntime) runInit(pod *corev1.Pod, c *corev1.Container, st *initContainerState) (int32, string, string) {
	log := rt.logFor(c.Name)
	log.touch()
	setRunning := func() {
		rt.mu.Lock()
		st.running, st.startedAt = true, now()
		rt.mu.Unlock()
		rt.n.queue.Add(rt.key)
	}
	args := containerCommand(c)
	if len(args) == 0 {
		setRunning()
		log.printf("devnode: init container %s has no command and the dev node runs no image entrypoints: counted as completed", c.Name)
		return 0, "Completed", ""
	}
	spec, err := rt.n.sandboxFor(pod, c, args)
	if err != nil {
		log.entry("stderr", false, []byte("devnode: "+err.Error()))
		return 128, "StartError", err.Error()
	}
	stdout, stderr := log.streamWriter("stdout"), log.streamWriter("stderr")
	code, err := runSandboxed(rt.ctx, spec, sandboxIO{Stdout: stdout, Stderr: stderr}, setRunning)
	_ = stdout.Close()
	_ = stderr.Close()
	if err != nil {
		log.entry("stderr", false, []byte("devnode: "+err.Error()))
		return 128, "StartError", err.Error()
	}
	if code != 0 {
		return int32(code), "Error", ""
	}
	return 0, "Completed", ""
}

// initState returns the state of the named init container, nil if there is none (yet).
func (rt *podRuntime) initState(name string) *initContainerState {
	for _, st := range rt.inits {
		if st.name == name {
			return st
		}
	}
	return nil
}

// execTarget checks that the container runs and describes an exec of cmd in it. The returned
// context ends with ctx or when the runtime stops; release must be called when the exec ended.
func (rt *podRuntime) execTarget(ctx context.Context, pod *corev1.Pod, container string, cmd []string) (*sandboxSpec, context.Context, func(), error) {
	c, isInit := findContainer(pod, container)
	if c == nil {
		return nil, nil, nil, fmt.Errorf("container %q not found in pod %s", container, rt.key)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	notRunning := fmt.Errorf("container %q in pod %s is not running", container, rt.key)
	if rt.stopped || rt.ctx.Err() != nil || rt.initFailed {
		return nil, nil, nil, notRunning
	}
	if isInit {
		if st := rt.initState(container); st == nil || !st.running {
			return nil, nil, nil, notRunning
		}
	} else if !rt.started || rt.failed {
		return nil, nil, nil, notRunning
	}
	spec, err := rt.n.sandboxFor(pod, c, cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	rt.execs.Add(1)
	runCtx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(rt.ctx, cancel)
	return spec, runCtx, func() {
		stop()
		cancel()
		rt.execs.Done()
	}, nil
}

// containerFinished reports whether the container will write no more log.
func (rt *podRuntime) containerFinished(container string) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.stopped || rt.failed || rt.initFailed {
		return true
	}
	if st := rt.initState(container); st != nil {
		return st.terminated
	}
	return false
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

// listen opens one demo server for each distinct TCP port any container declares; it logs to
// the first container declaring the port.
func (rt *podRuntime) listen(pod *corev1.Pod) ([]*portServer, error) {
	var servers []*portServer
	seen := map[int32]bool{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if (p.Protocol != "" && p.Protocol != corev1.ProtocolTCP) || seen[p.ContainerPort] {
				continue
			}
			seen[p.ContainerPort] = true
			s, err := startPortServer(rt, c.Name, p.ContainerPort)
			if err != nil {
				for _, s := range servers {
					s.close()
				}
				return nil, err
			}
			servers = append(servers, s)
		}
	}
	for _, c := range pod.Spec.Containers {
		rt.logFor(c.Name).touch() // a container without ports has an (empty) log too
	}
	return servers, nil
}

// stop ends probes, init and exec processes, closes every server and the logs; the runtime never
// starts again. Idempotent.
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
	rt.execs.Wait()
	rt.logsMu.Lock()
	for _, l := range rt.logs {
		l.close()
	}
	rt.logsMu.Unlock()
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
	rt.cancel() // probes and exec sessions end; wg is not waited here (fail runs in it)
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
