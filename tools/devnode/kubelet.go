package devnode

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet API endpoint: the API server proxies pods/exec and pods/log here, to
// https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>. It serves
//
//	/exec/{namespace}/{pod}/{container}        (and /exec/{namespace}/{pod}/{uid}/{container})
//	/containerLogs/{namespace}/{pod}/{container}
//	/healthz
//
// over TLS with a self-signed certificate made at start (the API server does not verify kubelet
// certificates unless given --kubelet-certificate-authority). It listens on 127.0.0.1 only and,
// since the API server sends no credentials unless it is given a kubelet client certificate,
// accepts a connection only from a socket owned by this process's user or root, held by a process
// of this PID namespace (see peerCheckListener): neither another user on the machine nor a
// sandboxed process can run commands through it.

const (
	kubeletHost = "127.0.0.1"
	// execIdleTimeout ends an exec session that moved no data for this long (the kubelet's
	// default streamingConnectionIdleTimeout).
	execIdleTimeout = 4 * time.Hour
)

type kubeletServer struct {
	n    *Node
	ln   net.Listener
	srv  *http.Server
	port int

	done     chan struct{} // closed when Serve returned
	handlers sync.WaitGroup
}

// startKubelet listens on kubeletHost:port (port 0: any free port) and serves in the background.
func (n *Node) startKubelet(port int) (*kubeletServer, error) {
	cert, err := selfSignedCert(n.name)
	if err != nil {
		return nil, fmt.Errorf("devnode: kubelet serving certificate: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(kubeletHost, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("devnode: kubelet endpoint: %w", err)
	}
	k := &kubeletServer{n: n, port: ln.Addr().(*net.TCPAddr).Port, done: make(chan struct{})}
	k.ln = &peerCheckListener{Listener: ln, log: n.log, allowed: map[uint32]bool{uint32(os.Geteuid()): true, 0: true}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", k.serveExec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", k.serveExec)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.serveLogs)
	k.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			k.handlers.Add(1)
			defer k.handlers.Done()
			mux.ServeHTTP(w, r)
		}),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"}, // exec upgrades the connection: no HTTP/2
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(k.done)
		_ = k.srv.ServeTLS(k.ln, "", "")
	}()
	return k, nil
}

// close stops accepting and closes idle and streaming (not upgraded) connections.
func (k *kubeletServer) close() {
	_ = k.srv.Close()
	<-k.done
}

// wait waits for the handlers still running (exec sessions end when their Pods stop).
func (k *kubeletServer) wait() { k.handlers.Wait() }

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), code)
}

// podFor returns the Pod named in the request if it runs on this node.
func (k *kubeletServer) podFor(w http.ResponseWriter, r *http.Request) *corev1.Pod {
	ns, name := r.PathValue("namespace"), r.PathValue("pod")
	pod, err := k.n.podLister.Pods(ns).Get(name)
	if err != nil || pod.Spec.NodeName != k.n.name {
		httpError(w, http.StatusNotFound, "pod %q does not exist", ns+"/"+name)
		return nil
	}
	if uid := r.PathValue("uid"); uid != "" && types.UID(uid) != pod.UID {
		httpError(w, http.StatusNotFound, "pod %q with UID %s does not exist", ns+"/"+name, uid)
		return nil
	}
	if c, _ := findContainer(pod, r.PathValue("container")); c == nil {
		httpError(w, http.StatusNotFound, "container %q not found in pod %q", r.PathValue("container"), ns+"/"+name)
		return nil
	}
	return pod
}

func (k *kubeletServer) serveExec(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		httpError(w, http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		return
	}
	pod := k.podFor(w, r)
	if pod == nil {
		return
	}
	cmd := r.URL.Query()[corev1.ExecCommandParam]
	if len(cmd) == 0 {
		httpError(w, http.StatusBadRequest, "no command given")
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	container := r.PathValue("container")
	k.n.log.Debug("exec", "pod", podKey(pod), "container", container, "command", cmd)
	remotecommand.ServeExec(w, r, &execAdapter{n: k.n, pod: pod}, pod.Name, string(pod.UID), container, cmd,
		opts, execIdleTimeout, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// execAdapter runs exec sessions for one Pod (remotecommand.Executor).
type execAdapter struct {
	n   *Node
	pod *corev1.Pod
}

func (a *execAdapter) ExecInContainer(ctx context.Context, _, _ string, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	a.n.mu.Lock()
	rt := a.n.pods[podKey(a.pod)]
	a.n.mu.Unlock()
	if rt == nil || rt.uid != a.pod.UID {
		return fmt.Errorf("pod %s is not running on this node", podKey(a.pod))
	}
	spec, runCtx, release, err := rt.execTarget(ctx, a.pod, container, cmd)
	if err != nil {
		return err
	}
	defer release()
	sio := sandboxIO{TTY: tty, Resize: resize}
	if in != nil {
		sio.Stdin = in
	}
	if out != nil {
		sio.Stdout = out
	}
	if errOut != nil {
		sio.Stderr = errOut
	}
	code, err := runSandboxed(runCtx, spec, sio, nil)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

func (k *kubeletServer) serveLogs(w http.ResponseWriter, r *http.Request) {
	pod := k.podFor(w, r)
	if pod == nil {
		return
	}
	query := r.URL.Query()
	if tail := query.Get("tail"); tail != "" { // the kubelet's older spelling
		query["tailLines"] = []string{tail}
		if tail == "all" {
			delete(query, "tailLines")
		}
	}
	opts, err := parseLogOptions(query)
	if err != nil {
		httpError(w, http.StatusBadRequest, "unable to decode query: %v", err)
		return
	}
	if opts.Previous {
		httpError(w, http.StatusBadRequest, "previous terminated container %q in pod %q not found", r.PathValue("container"), pod.Name)
		return
	}
	container := r.PathValue("container")
	path := k.n.containerLogPath(pod.UID, container)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		httpError(w, http.StatusBadRequest, "container %q in pod %q is waiting to start", container, pod.Name)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	finished := func() bool { return k.n.containerFinished(pod, container) }
	if err := streamLog(r.Context(), w, flusher(w), path, opts, finished); err != nil {
		k.n.log.Debug("streaming logs", "pod", podKey(pod), "container", container, "err", err)
	}
}

// parseLogOptions reads the PodLogOptions query parameters the API server sends the kubelet.
func parseLogOptions(q url.Values) (*corev1.PodLogOptions, error) {
	opts := &corev1.PodLogOptions{}
	boolean := func(name string, dst *bool) error {
		if v := q.Get(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			*dst = b
		}
		return nil
	}
	integer := func(name string, dst **int64, min int64) error {
		if v := q.Get(name); v != "" {
			i, err := strconv.ParseInt(v, 10, 64)
			if err != nil || i < min {
				return fmt.Errorf("%s: invalid value %q", name, v)
			}
			*dst = &i
		}
		return nil
	}
	for _, err := range []error{
		boolean("follow", &opts.Follow), boolean("previous", &opts.Previous), boolean("timestamps", &opts.Timestamps),
		integer("sinceSeconds", &opts.SinceSeconds, 1), integer("tailLines", &opts.TailLines, 0),
		integer("limitBytes", &opts.LimitBytes, 1),
	} {
		if err != nil {
			return nil, err
		}
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, fmt.Errorf("sinceTime: %w", err)
		}
		opts.SinceTime = &metav1.Time{Time: t}
	}
	if v := q.Get("stream"); v != "" {
		s := v
		if s != corev1.LogStreamAll && s != corev1.LogStreamStdout && s != corev1.LogStreamStderr {
			return nil, fmt.Errorf("invalid stream type %q", v)
		}
		opts.Stream = &s
	}
	return opts, nil
}

// containerFinished reports whether a container will write no more log: its Pod is not running
// here any more, or it is an init container that has ended.
func (n *Node) containerFinished(pod *corev1.Pod, container string) bool {
	n.mu.Lock()
	rt := n.pods[podKey(pod)]
	n.mu.Unlock()
	if rt == nil || rt.uid != pod.UID {
		return true
	}
	return rt.containerFinished(container)
}

// selfSignedCert makes an ECDSA serving certificate for 127.0.0.1, localhost and the node name.
func selfSignedCert(nodeName string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: nodeName, Organization: []string{"boilerhouse devnode"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost", nodeName},
		IPAddresses:           []net.IP{net.ParseIP(kubeletHost)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// peerCheckListener accepts only connections whose client socket belongs to an allowed user and
// to a process of this PID namespace: the API server, not a sandboxed process (which runs as
// root in a PID namespace of its own, and shares the host's network).
type peerCheckListener struct {
	net.Listener
	log     interface{ Warn(string, ...any) }
	allowed map[uint32]bool
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, inode, err := peerSocket(c)
		if err == nil && !l.allowed[uid] {
			err = fmt.Errorf("user %d not allowed", uid)
		}
		if err == nil {
			err = checkSocketOwner(inode)
		}
		if err == nil {
			return c, nil
		}
		l.log.Warn("kubelet endpoint: refusing a connection", "remote", c.RemoteAddr().String(), "err", err)
		_ = c.Close()
	}
}

// peerSocket finds the other end of a loopback TCP connection in /proc/net/tcp (the socket whose
// local address is our peer and whose remote address is us) and returns its owner and inode.
func peerSocket(c net.Conn) (uid uint32, inode uint64, err error) {
	local, err1 := netip.ParseAddrPort(c.LocalAddr().String())
	remote, err2 := netip.ParseAddrPort(c.RemoteAddr().String())
	if err1 != nil || err2 != nil || !remote.Addr().Unmap().IsLoopback() {
		return 0, 0, fmt.Errorf("not a loopback connection: %s", c.RemoteAddr())
	}
	want := procNetAddr(remote) + " " + procNetAddr(local)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[1]+" "+fields[2] != want {
			continue
		}
		u, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, 0, err
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		return uint32(u), ino, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, errors.New("peer socket not found")
}

// checkSocketOwner finds a process holding the socket and checks that it is in this process's
// PID namespace.
func checkSocketOwner(inode uint64) error {
	ours, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return err
	}
	link := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	self := strconv.Itoa(os.Getpid())
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	holds := func(pid string) bool {
		fds, err := os.ReadDir("/proc/" + pid + "/fd")
		if err != nil {
			return false
		}
		for _, fd := range fds {
			if l, err := os.Readlink("/proc/" + pid + "/fd/" + fd.Name()); err == nil && l == link {
				return true
			}
		}
		return false
	}
	// This process last: it holds many sockets and is rarely the client.
	pids := make([]string, 0, len(procs))
	for _, p := range procs {
		if name := p.Name(); name != self && name[0] >= '0' && name[0] <= '9' {
			pids = append(pids, name)
		}
	}
	for _, pid := range append(pids, self) {
		if !holds(pid) {
			continue
		}
		ns, err := os.Readlink("/proc/" + pid + "/ns/pid")
		if err != nil {
			return err
		}
		if ns != ours {
			return fmt.Errorf("client process %s is in another PID namespace (a sandbox)", pid)
		}
		return nil
	}
	return errors.New("no process holds the client socket")
}

// procNetAddr formats an IPv4 address and port as /proc/net/tcp does ("0100007F:1F90").
func procNetAddr(ap netip.AddrPort) string {
	a := ap.Addr().Unmap().As4() // the kernel prints the address's four bytes as a host-order word
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
}
