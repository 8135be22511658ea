package devnode

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"time"

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

// HealthReply is the JSON body of GET /health.
type HealthReply struct {
	Status string `json:"status"`
}

// portServer is the demo server on one Pod IP and port, inside this process.
type portServer struct {
	srv  *http.Server
	done chan struct{} // closed when Serve has returned (the listener is closed)
}

func startPortServer(n *Node, namespace, name string, ip netip.Addr, port int32) (*portServer, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, uint16(port)).String())
	if err != nil {
		return nil, err
	}
	s := &portServer{
		srv: &http.Server{
			Handler:           &demoHandler{n: n, namespace: namespace, name: name, port: port},
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       60 * time.Second,
		},
		done: make(chan struct{}),
	}
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
}

// demoHandler answers for one Pod and port. Labels and annotations are read from the informer
// cache at request time, so a relabelled Pod (a pool Pod handed to a tenant) answers with its
// current tenant.
type demoHandler struct {
	n         *Node
	namespace string
	name      string
	port      int32
}

func (h *demoHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, HealthReply{Status: "method not allowed"})
		return
	}
	pod, _ := h.n.podLister.Pods(h.namespace).Get(h.name)
	if r.URL.Path == "/health" {
		if pod != nil && pod.Annotations[BehaviorAnnotation] == BehaviorNeverReady {
			writeJSON(w, http.StatusServiceUnavailable, HealthReply{Status: "not-ready"})
			return
		}
		writeJSON(w, http.StatusOK, HealthReply{Status: "ok"})
		return
	}
	reply := DemoReply{Pod: h.name, Namespace: h.namespace, Port: h.port}
	if pod != nil {
		reply.Workload = pod.Labels[v1alpha1.LabelWorkload]
		reply.Tenant = pod.Labels[v1alpha1.LabelTenant]
	}
	writeJSON(w, http.StatusOK, reply)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
