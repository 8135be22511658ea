package devnode

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// DemoReply is the JSON body a Pod's demo server answers on GET /.
type DemoReply struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	Tenant    string `json:"tenant"`
	Port      int32  `json:"port"`
}

// HealthReply is the JSON body of GET /health (and of errors).
type HealthReply struct {
	Status string `json:"status"`
}

// FileReply is the JSON body of PUT /files/<path>.
type FileReply struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

const (
	// FilesPrefix is the demo server's file API: PUT and GET /files/<absolute path in main>.
	FilesPrefix = "/files"
	// MainContainer is the container whose overlay mounts the file API serves (the first
	// container when no container has this name).
	MainContainer = "main"
	// OverlayVolumePrefix starts the names of the volumes the file API may touch.
	OverlayVolumePrefix = "overlay-"
	// maxFileBytes bounds one PUT.
	maxFileBytes = 64 << 20
)

// portServer is the demo server on one Pod IP and port, inside this process.
type portServer struct {
	srv  *http.Server
	log  *containerLog
	addr string
	done chan struct{} // closed when Serve has returned (the listener is closed)
}

func startPortServer(rt *podRuntime, container string, port int32) (*portServer, error) {
	addr := netip.AddrPortFrom(rt.ip, uint16(port)).String()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	log := rt.logFor(container)
	s := &portServer{
		srv: &http.Server{
			Handler:           &demoHandler{rt: rt, port: port, log: log},
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       60 * time.Second,
		},
		log:  log,
		addr: addr,
		done: make(chan struct{}),
	}
	log.printf("devnode demo server listening on %s", addr)
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns once close has closed the listener
	}()
	return s, nil
}

// close closes the listener and every connection, and waits until Serve has returned.
func (s *portServer) close() {
	_ = s.srv.Close()
	<-s.done
	s.log.printf("devnode demo server on %s stopped", s.addr)
}

// demoHandler answers for one Pod and port. Labels and annotations are read from the informer
// cache at request time, so a relabelled Pod (a pool Pod handed to a tenant) answers with its
// current tenant. Every request is logged to the container's log.
type demoHandler struct {
	rt   *podRuntime
	port int32
	log  *containerLog
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (h *demoHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w}
	h.serve(rec, r)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	h.log.printf("%s %s %d", r.Method, r.URL.RequestURI(), rec.code)
}

func (h *demoHandler) serve(w http.ResponseWriter, r *http.Request) {
	pod, _ := h.rt.n.podLister.Pods(h.rt.namespace).Get(h.rt.name)
	if pod != nil && pod.UID != h.rt.uid {
		pod = nil // a newer Pod of the same name
	}
	if p, ok := strings.CutPrefix(r.URL.Path, FilesPrefix+"/"); ok {
		h.serveFile(w, r, pod, "/"+p)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, HealthReply{Status: "method not allowed"})
		return
	}
	if r.URL.Path == "/health" {
		if pod != nil && pod.Annotations[BehaviorAnnotation] == BehaviorNeverReady {
			writeJSON(w, http.StatusServiceUnavailable, HealthReply{Status: "not-ready"})
			return
		}
		writeJSON(w, http.StatusOK, HealthReply{Status: "ok"})
		return
	}
	reply := DemoReply{Pod: h.rt.name, Namespace: h.rt.namespace, Port: h.port}
	if pod != nil {
		reply.Workload = pod.Labels[v1alpha1.LabelWorkload]
		reply.Tenant = pod.Labels[v1alpha1.LabelTenant]
	}
	writeJSON(w, http.StatusOK, reply)
}

// serveFile writes (PUT) or reads (GET) the file at p, an absolute path inside the main
// container, which must lie in one of its overlay volume mounts. All access goes through an
// os.Root opened on the volume's directory, so neither ".." nor a symlink can reach outside it.
func (h *demoHandler) serveFile(w http.ResponseWriter, r *http.Request, pod *corev1.Pod, p string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPut {
		w.Header().Set("Allow", "GET, HEAD, PUT")
		writeJSON(w, http.StatusMethodNotAllowed, HealthReply{Status: "method not allowed"})
		return
	}
	if pod == nil {
		writeJSON(w, http.StatusServiceUnavailable, HealthReply{Status: "pod unknown"})
		return
	}
	for _, elem := range strings.Split(p, "/") {
		if elem == ".." || elem == "." || strings.ContainsRune(elem, 0) {
			writeJSON(w, http.StatusForbidden, HealthReply{Status: "path traversal refused"})
			return
		}
	}
	p = path.Clean(p)
	dir, sub, rel, ok := h.rt.n.overlayLocation(pod, p)
	if !ok {
		writeJSON(w, http.StatusForbidden, HealthReply{Status: "not inside an overlay directory of the main container"})
		return
	}
	if rel == "." {
		writeJSON(w, http.StatusBadRequest, HealthReply{Status: "a file path inside the overlay directory is required"})
		return
	}
	root, err := os.OpenRoot(dir)
	if err == nil && sub != "" {
		var subRoot *os.Root
		subRoot, err = root.OpenRoot(sub)
		root.Close()
		root = subRoot
	}
	if err != nil {
		writeFileError(w, err)
		return
	}
	defer root.Close()
	if r.Method == http.MethodPut {
		h.putFile(w, r, root, rel, p, pod)
		return
	}
	f, err := root.Open(rel)
	if err != nil {
		writeFileError(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeFileError(w, err)
		return
	}
	if !fi.Mode().IsRegular() {
		writeJSON(w, http.StatusBadRequest, HealthReply{Status: "not a regular file"})
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

func (h *demoHandler) putFile(w http.ResponseWriter, r *http.Request, root *os.Root, rel, p string, pod *corev1.Pod) {
	uid, gid := -1, -1 // files belong to the main container's user, when it names one
	if c := mainContainer(pod); c != nil {
		if u, g := runAs(pod, c); u != nil {
			uid, gid = int(*u), int(*g)
		}
	}
	// Create the parent directories one by one, each owned like the file.
	parent := path.Dir(rel)
	if parent != "." {
		cur := ""
		for _, elem := range strings.Split(parent, "/") {
			cur = path.Join(cur, elem)
			err := root.Mkdir(cur, 0o755)
			if err == nil && (uid >= 0 || gid >= 0) {
				_ = root.Lchown(cur, uid, gid)
			}
			if err != nil && !errors.Is(err, fs.ErrExist) {
				writeFileError(w, err)
				return
			}
		}
	}
	_, statErr := root.Lstat(rel)
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		writeFileError(w, err)
		return
	}
	n, err := io.Copy(f, http.MaxBytesReader(w, r.Body, maxFileBytes))
	cerr := f.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, HealthReply{Status: "file too large"})
			return
		}
		writeFileError(w, err)
		return
	}
	if uid >= 0 || gid >= 0 {
		_ = root.Lchown(rel, uid, gid)
	}
	code := http.StatusOK
	if statErr != nil {
		code = http.StatusCreated
	}
	writeJSON(w, code, FileReply{Path: p, Size: n})
}

// writeFileError maps a file system error to a status: 404 missing, 403 escaping the volume
// (os.Root refuses it) or not permitted, 400 for a directory in the way, else 500.
func writeFileError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		writeJSON(w, http.StatusNotFound, HealthReply{Status: "no such file"})
	case errors.Is(err, fs.ErrPermission) || strings.Contains(err.Error(), "path escapes"):
		writeJSON(w, http.StatusForbidden, HealthReply{Status: "refused: outside the overlay directory"})
	case errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTDIR):
		writeJSON(w, http.StatusBadRequest, HealthReply{Status: err.Error()})
	default:
		writeJSON(w, http.StatusInternalServerError, HealthReply{Status: err.Error()})
	}
}

// mainContainer is the container named MainContainer, else the first one.
func mainContainer(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == MainContainer {
			return &pod.Spec.Containers[i]
		}
	}
	if len(pod.Spec.Containers) > 0 {
		return &pod.Spec.Containers[0]
	}
	return nil
}

// overlayLocation finds the overlay volume mount of the main container holding the absolute path
// p (the deepest mount wins) and returns the volume's directory, the mount's subPath in it, and p
// relative to the mount.
func (n *Node) overlayLocation(pod *corev1.Pod, p string) (dir, sub, rel string, ok bool) {
	c := mainContainer(pod)
	if c == nil {
		return "", "", "", false
	}
	best := ""
	var m *corev1.VolumeMount
	for i := range c.VolumeMounts {
		vm := &c.VolumeMounts[i]
		if !strings.HasPrefix(vm.Name, OverlayVolumePrefix) {
			continue
		}
		mp := path.Clean(vm.MountPath)
		if !path.IsAbs(mp) || len(mp) <= len(best) {
			continue
		}
		if p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/") {
			best, m = mp, vm
		}
	}
	if m == nil {
		return "", "", "", false
	}
	dir, sub, err := n.mountSource(pod, m)
	if err != nil {
		return "", "", "", false
	}
	rel = strings.TrimPrefix(strings.TrimPrefix(p, best), "/")
	if rel == "" {
		rel = "."
	}
	return dir, sub, rel, true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
