package devnode

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultNodeName          = "boilerhouse-dev"
	DefaultWorkers           = 8
	DefaultQPS               = 500
	DefaultBurst             = 1000
	DefaultHeartbeatInterval = 10 * time.Second
)

// Pod annotation that makes the dev node simulate a misbehaving workload.
const (
	// BehaviorAnnotation selects a simulated failure for a Pod. Its value is read when the Pod
	// starts (BehaviorFail) or at request and status time (BehaviorNeverReady).
	BehaviorAnnotation = "devnode.boilerhouse.dev/behavior"
	// BehaviorFail: the Pod runs briefly, then ends in phase Failed with its container
	// terminated with exit code 1; its servers stop and it is never restarted.
	BehaviorFail = "fail"
	// BehaviorNeverReady: the Pod runs, but its /health endpoint answers 503, so an HTTP
	// readiness probe on it never passes. Containers without a readiness probe are also
	// reported not ready.
	BehaviorNeverReady = "never-ready"
)

// IPRange is an inclusive range of IPv4 loopback addresses handed to Pods. Addresses whose last
// octet is 0 or 255 are skipped. The range must lie in 127.0.0.0/8 and outside 127.0.0.0/24,
// where the host's own services listen.
type IPRange struct {
	First, Last netip.Addr
}

// DefaultIPRange is 127.1.0.1 through 127.254.255.254.
var DefaultIPRange = IPRange{
	First: netip.AddrFrom4([4]byte{127, 1, 0, 1}),
	Last:  netip.AddrFrom4([4]byte{127, 254, 255, 254}),
}

// ParseIPRange parses "FIRST-LAST", e.g. "127.1.0.1-127.1.255.254".
func ParseIPRange(s string) (IPRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return IPRange{}, fmt.Errorf("devnode: IP range %q: want FIRST-LAST", s)
	}
	first, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return IPRange{}, fmt.Errorf("devnode: IP range %q: %w", s, err)
	}
	last, err := netip.ParseAddr(strings.TrimSpace(b))
	if err != nil {
		return IPRange{}, fmt.Errorf("devnode: IP range %q: %w", s, err)
	}
	r := IPRange{First: first, Last: last}
	return r, r.validate()
}

func (r IPRange) String() string { return r.First.String() + "-" + r.Last.String() }

func (r IPRange) validate() error {
	for _, a := range []netip.Addr{r.First, r.Last} {
		if !podIPAllowed(a) {
			return fmt.Errorf("devnode: IP range %s: %s is not an IPv4 loopback address outside 127.0.0.0/24", r, a)
		}
	}
	if r.Last.Less(r.First) {
		return fmt.Errorf("devnode: IP range %s: last address before first", r)
	}
	return nil
}

// podIPAllowed reports whether a may ever be a Pod IP: IPv4, in 127.0.0.0/8, not in 127.0.0.0/24.
func podIPAllowed(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	return b[0] == 127 && (b[1] != 0 || b[2] != 0)
}

// Config configures a Node.
type Config struct {
	// RestConfig reaches the API server (required). The node works on a copy with QPS and Burst
	// raised and protobuf encoding.
	RestConfig *rest.Config
	// NodeName is the name of the Node object (default DefaultNodeName).
	NodeName string
	// IPRange is where Pod IPs come from (default DefaultIPRange).
	IPRange IPRange
	// Logger receives the node's logs (default slog.Default()).
	Logger *slog.Logger

	// Workers is the number of goroutines processing Pods (default DefaultWorkers).
	Workers int
	// QPS and Burst limit the node's own client (defaults DefaultQPS, DefaultBurst).
	QPS   float32
	Burst int
	// HeartbeatInterval is how often the node Lease is renewed (default
	// DefaultHeartbeatInterval); Node status is refreshed every sixth heartbeat.
	HeartbeatInterval time.Duration

	// StateDir holds the Pods' filesystems and container logs (see fs.go). It outlives the node
	// so that a restarted node finds its Pods' files; a Pod's directory is removed when the Pod
	// is deleted. Default: DefaultStateDir(NodeName).
	StateDir string
	// KubeletPort is the port of the kubelet API endpoint on 127.0.0.1 (exec, logs), published in
	// the Node's status.daemonEndpoints; 0 (the default) picks a free port at each start.
	KubeletPort int
}

// DefaultStateDir is <user cache dir>/boilerhouse/devnode/<nodeName> (under the temp dir if
// there is no cache dir).
func DefaultStateDir(nodeName string) string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "boilerhouse", "devnode", nodeName)
}

func (c *Config) setDefaults() error {
	if c.RestConfig == nil {
		return errors.New("devnode: Config.RestConfig is required")
	}
	if c.NodeName == "" {
		c.NodeName = DefaultNodeName
	}
	if errs := validation.IsDNS1123Subdomain(c.NodeName); len(errs) > 0 {
		return fmt.Errorf("devnode: node name %q: %s", c.NodeName, strings.Join(errs, "; "))
	}
	if c.IPRange == (IPRange{}) {
		c.IPRange = DefaultIPRange
	}
	if err := c.IPRange.validate(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.QPS <= 0 {
		c.QPS = DefaultQPS
	}
	if c.Burst <= 0 {
		c.Burst = DefaultBurst
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir(c.NodeName)
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return fmt.Errorf("devnode: state dir %q: %w", c.StateDir, err)
	}
	c.StateDir = abs
	if c.KubeletPort < 0 || c.KubeletPort > 65535 {
		return fmt.Errorf("devnode: kubelet port %d out of range", c.KubeletPort)
	}
	return nil
}
