package devstack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	clientrest "k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/naming"
	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/pkg/natsx/natstest"
	"boilerhouse.dev/services/claimrouter"
	"boilerhouse.dev/services/crsync"
	"boilerhouse.dev/services/poolmanager"
)

// TestChaos drives claims, writes and releases for a dozen tenants over REST and two more with
// BoilerhouseClaim objects (create, then delete), while two claim-routers, two pool-managers and
// two cr-syncs (both leader-elected), the overlay-store and the NATS server are killed and
// started again at random, then checks the invariants of DESIGN.md section 4 that the claim path
// owns:
//
//  1. an instance serves one tenant only, ever; a tenant's endpoint holds that tenant's data;
//     after the chaos every Active claim has its own Ready Pod, labelled with its tenant and workload,
//     and every tenant Pod belongs to a claim (the orphan sweep collected the rest);
//  2. a claim life moves only forward through the state machine (once Releasing, it ends
//     Released or ReleaseFailed, never Active again), and a ReleaseFailed one keeps its Pod;
//  3. a tenant's data never goes back: each life reads at least what the last release answered
//     Released had saved;
//  5. the pool never has more unheld live Pods than its size;
//  6. once the chaos ends every claim settles: none stays Pending or Releasing;
//
// and that every claim's object shows its record in the end.
//
// The NATS server is killed with SIGKILL, not shut down. (Invariant 4, NetworkPolicies before
// Pods, belongs to the policy-generator.) The seed is logged; BH_CHAOS_SEED replays the same
// choice of victims and pauses.
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BH_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BH_CHAOS_SEED: %v", err)
		}
	}
	t.Logf("seed %d (BH_CHAOS_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	const (
		workload    = "chaos"
		poolSize    = 4
		tenants     = 12
		kubeTenants = 2
		chaosFor    = 40 * time.Second
	)
	// The NATS server runs in a child process, so that stopping it is a crash (SIGKILL), and
	// flushes every write, as in the dev stack.
	s := startBaseOn(t, natstest.StartProcess(t, true))
	routerCfg := claimrouter.Config{StaleAfter: 2 * time.Second, SweepInterval: 500 * time.Millisecond,
		ClaimTimeout: 60 * time.Second, ExtractBackoff: []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}}
	pmCfg := poolmanager.Config{Namespace: ns, LeaderElection: true,
		OrphanGrace: 4 * time.Second, OrphanSweep: 500 * time.Millisecond}
	storeDir := t.TempDir()

	// The victims, each with a start function; kills[i] stops victim i (nil while stopped).
	type victim struct {
		name  string
		start func() func()
	}
	victims := []victim{
		{"claim-router 1", func() func() { return s.router(routerCfg) }},
		{"claim-router 2", func() func() { return s.router(routerCfg) }},
		{"pool-manager 1", func() func() { return s.poolManager(pmCfg) }},
		{"pool-manager 2", func() func() { return s.poolManager(pmCfg) }},
		{"overlay-store", func() func() { return s.store(storeDir) }},
		{"cr-sync 1", func() func() { return s.crsyncReplica() }},
		{"cr-sync 2", func() func() { return s.crsyncReplica() }},
	}
	kills := make([]func(), len(victims))
	for i, v := range victims {
		kills[i] = v.start()
	}
	s.workload(workload, poolSize, "/data")
	s.poolReady(workload, poolSize)

	nc := s.conn()
	js, _ := jetstream.New(nc)
	ledgerKV, err := js.KeyValue(s.ctx, messages.BucketInstances)
	if err != nil {
		t.Fatal(err)
	}
	lives := watchLives(t, s, nc)
	pool := watchPoolSize(t, s, ledgerKV, workload)

	// The tenants' loops run until stop is closed.
	stop := make(chan struct{})
	owners := &instanceOwners{byInstance: map[string]string{}}
	ts := make([]*chaosTenant, tenants+kubeTenants)
	var wg sync.WaitGroup
	for i := range ts {
		ts[i] = &chaosTenant{s: s, name: fmt.Sprintf("chaos-%d", i), workload: workload, owners: owners}
		loop := ts[i].loop
		if i >= tenants {
			ts[i].name = fmt.Sprintf("kube-%d", i-tenants)
			loop = ts[i].kubeLoop
		}
		wg.Add(1)
		go func() { defer wg.Done(); loop(stop, rand.New(rand.NewPCG(seed, uint64(i)))) }()
	}

	// The chaos: every 0.3-1.5 s a victim dies; it comes back 0-2 s later. The NATS server is
	// one victim too: stopped, and started again on the same store.
	end := time.Now().Add(chaosFor)
	down := map[int]time.Time{} // victim -> when it comes back
	natsBack := time.Time{}     // zero while the server runs
	natsUp := func() {          // services start only with NATS up
		if !natsBack.IsZero() {
			s.nats.Restart()
			natsBack = time.Time{}
		}
	}
	rounds := 0
	for time.Now().Before(end) && !t.Failed() {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		now := time.Now()
		if !natsBack.IsZero() && now.After(natsBack) {
			natsUp()
		}
		for i, at := range down {
			if now.After(at) {
				natsUp()
				kills[i] = victims[i].start()
				delete(down, i)
			}
		}
		rounds++
		back := now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		at := time.Since(end.Add(-chaosFor)).Round(time.Millisecond)
		if i := rng.IntN(len(victims) + 1); i == len(victims) {
			if natsBack.IsZero() {
				t.Logf("%s: NATS server killed", at)
				s.nats.Stop()
				natsBack = back
			}
		} else if _, isDown := down[i]; !isDown {
			t.Logf("%s: %s killed", at, victims[i].name)
			kills[i]()
			down[i] = back
		}
	}
	natsUp()
	for i := range down {
		kills[i] = victims[i].start()
	}
	close(stop)
	wg.Wait()
	t.Logf("%d rounds of chaos; the tenants' operations: %s", rounds, summarize(ts))

	// 6: every claim settles.
	var settled map[string]messages.ClaimRecord
	eventually(t, "every claim settled", 3*time.Minute, func() bool {
		settled = claimRecords(t, s)
		for _, rec := range settled {
			if rec.Phase == messages.PhasePending || rec.Phase == messages.PhaseReleasing {
				return false
			}
		}
		return true
	})
	// 2: the lives moved forward only (checked as the watch saw them).
	if bad := lives.violations(); len(bad) > 0 {
		t.Errorf("claim lives moved backwards:\n%s", strings.Join(bad, "\n"))
	}
	// 1: every Active claim has its own Pod with its labels; every tenant Pod has a claim.
	eventually(t, "tenant Pods match the claims", time.Minute, func() bool {
		return podsMatchClaims(t, s, workload, claimRecords(t, s)) == ""
	})
	// 5: the pool refilled to its size, never above it.
	s.poolReady(workload, poolSize)
	if n := pool.max(); n > poolSize {
		t.Errorf("the pool had %d unheld live Pods at once (size %d): %s", n, poolSize, pool.worst())
	}
	// 3 once more, without chaos: each tenant claims again and reads at least its data; and
	// 1 again once the orphan sweep has had time to look at those holds.
	finals := make([]messages.ClaimView, len(ts))
	for i, tn := range ts {
		finals[i] = tn.final(t)
	}
	time.Sleep(pmCfg.OrphanGrace + 3*pmCfg.OrphanSweep)
	for i, tn := range ts {
		tn.check(finals[i])
	}
	if msg := podsMatchClaims(t, s, workload, claimRecords(t, s)); msg != "" {
		t.Error(msg)
	}
	// cr-sync: each of those Active claims has its object, showing its instance.
	eventually(t, "the claim objects show the final claims", time.Minute, func() bool {
		for i, tn := range ts {
			c, ok := s.bhc(naming.ClaimName(tn.name, workload))
			if !ok || c.Status.Phase != v1alpha1.ClaimActive || c.Status.InstanceID != finals[i].InstanceID {
				return false
			}
		}
		return true
	})
}

// crsyncReplica starts a leader-elected cr-sync replica behind a proxy of its own, killed as
// poolManager's are. It is not waited for: only the leader watches the bucket (Ready).
func (s *system) crsyncReplica() (kill func()) {
	s.t.Helper()
	proxy := newAPIProxy(s.t)
	_, stop := killable(s, func(nc *nats.Conn) (*crsync.Syncer, error) {
		return crsync.New(crsync.Config{RestConfig: proxy.config(), NATS: nc, Namespace: ns,
			ResyncInterval: 5 * time.Second, LeaderElection: true})
	})
	return killBehind(proxy, stop)
}

// killBehind cuts the service's proxy, then stops it.
func killBehind(proxy *apiProxy, stop func()) func() {
	return func() {
		proxy.cut()
		done := make(chan struct{})
		go func() { stop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Killed while its caches were still syncing: controller-runtime v0.25.2's manager
			// then waits (spinning) for them to sync, however its context ends, so let it
			// reach the API server again to finish.
			proxy.t.Logf("a killed replica still waits for its caches after 5 s: its API proxy is restored")
			proxy.restore()
			<-done
		}
	}
}

// apiProxy forwards TCP connections to the API server until it is cut; then every connection
// drops and new ones are refused, as for a process that died.
type apiProxy struct {
	t      *testing.T
	addr   string // the proxy's, kept across cut and restore
	target string // the API server's
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool // nil while cut
}

func newAPIProxy(t *testing.T) *apiProxy {
	t.Helper()
	target, err := url.Parse(plane.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	p := &apiProxy{t: t, addr: "127.0.0.1:0", target: target.Host}
	p.restore()
	t.Cleanup(p.cut)
	return p
}

// restore listens (again) and forwards.
func (p *apiProxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Errorf("API proxy: %v", err)
		return
	}
	p.mu.Lock()
	p.ln, p.addr, p.conns = ln, ln.Addr().String(), map[net.Conn]bool{}
	p.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", p.target)
			if err != nil || !p.track(in, out) {
				in.Close()
				if out != nil {
					out.Close()
				}
				continue
			}
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

// track records a connection pair; false once the proxy is cut.
func (p *apiProxy) track(in, out net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[in], p.conns[out] = true, true
	return true
}

// config is the API server's client configuration, through the proxy (the serving
// certificate names 127.0.0.1, whatever the port).
func (p *apiProxy) config() *clientrest.Config {
	c := clientrest.CopyConfig(plane.Config)
	c.Host = "https://" + p.addr
	return c
}

func (p *apiProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return
	}
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// kubeLoop is loop through a BoilerhouseClaim object named after the tenant: create it, wait
// for Active, use the instance, delete the object and wait for it to go (the release). A
// release that fails keeps the object; it is retried over REST, as an operator would.
func (c *chaosTenant) kubeLoop(stop <-chan struct{}, rng *rand.Rand) {
	t, s := c.s.t, c.s
	name := c.name
	gone := func() bool { _, ok := s.bhc(name); return !ok }
	for nextOp(stop, rng) {
		obj := newBHC(name, c.name, c.workload)
		if err := s.client.Create(s.ctx, obj); err != nil {
			t.Errorf("%s: create its claim object: %v", c.name, err)
			return
		}
		c.count("kubectl create")
		var status v1alpha1.ClaimStatus
		deadline := time.Now().Add(90 * time.Second)
		for {
			cur, ok := s.bhc(name)
			if ok {
				status = cur.Status
			}
			if status.Phase == v1alpha1.ClaimActive || status.Phase == v1alpha1.ClaimError || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if status.Phase == v1alpha1.ClaimActive && status.Endpoint != nil {
			v := messages.ClaimView{TenantID: c.name, Workload: c.workload, Phase: messages.PhaseActive, InstanceID: status.InstanceID,
				Endpoint: &messages.Endpoint{Host: status.Endpoint.Host, Port: status.Endpoint.Port}, Source: messages.ClaimSource(status.Source)}
			if !c.use(v) || !c.check(v) {
				return
			}
		} else {
			c.count("kubectl " + string(status.Phase))
		}
		if err := s.client.Delete(s.ctx, obj); err != nil {
			t.Errorf("%s: delete its claim object: %v", c.name, err)
			return
		}
		for deadline := time.Now().Add(2 * time.Minute); !gone(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("%s: its claim object is still there 2 minutes after its deletion", c.name)
				return
			}
			if cur, ok := s.bhc(name); ok && cur.Status.Phase == v1alpha1.ClaimReleaseFailed {
				c.count("kubectl retry")
				c.post("/release/retry")
			}
		}
		c.count("kubectl deleted")
		// Gone once Released, Error or absent: only Released saved the data.
		if e, err := s.kv.Get(s.ctx, messages.ClaimKey(c.name, c.workload)); err == nil {
			var rec messages.ClaimRecord
			if json.Unmarshal(e.Value(), &rec) == nil && rec.Phase == messages.PhaseReleased && rec.InstanceID == c.instance {
				c.confirmed, c.instance = c.value, ""
			}
		}
	}
}

// poolManager starts a pool-manager replica that reaches the API server through a proxy of its
// own; the returned function cuts the proxy, then kills it (killable), so that it cannot hand
// its leader lease over on the way out: the next leader waits for the lease to expire, as
// after a crash.
func (s *system) poolManager(cfg poolmanager.Config) (kill func()) {
	s.t.Helper()
	proxy := newAPIProxy(s.t)
	cfg.RestConfig = proxy.config()
	pm, stop := killable(s, func(nc *nats.Conn) (*poolmanager.Manager, error) {
		cfg.NATS = nc
		return poolmanager.New(cfg)
	})
	s.ready("pool-manager", pm.Ready())
	return killBehind(proxy, stop)
}

// instanceOwners maps every instance ever answered to its tenant.
type instanceOwners struct {
	mu         sync.Mutex
	byInstance map[string]string
}

// claim records that tenant was answered instance; false if another tenant was before.
func (o *instanceOwners) claim(instance, tenant string) (other string, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if prev, seen := o.byInstance[instance]; seen && prev != tenant {
		return prev, false
	}
	o.byInstance[instance] = tenant
	return "", true
}

// chaosTenant claims, writes a counter into /data/n, and releases, over and over. Each life
// reads the counter (0 without a file), checks it, and writes it plus one.
type chaosTenant struct {
	s        *system
	name     string
	workload string
	owners   *instanceOwners

	instance  string // of the life we hold or may still hold ("" none)
	value     int    // written in that life
	confirmed int    // written in the last life whose release answered Released
	written   int    // the largest value written
	ops       map[string]int
}

func (c *chaosTenant) count(what string) {
	if c.ops == nil {
		c.ops = map[string]int{}
	}
	c.ops[what]++
}

// nextOp pauses up to 100 ms before a tenant's next operation; false once stop is closed.
func nextOp(stop <-chan struct{}, rng *rand.Rand) bool {
	select {
	case <-stop:
		return false
	default:
	}
	time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
	return true
}

func (c *chaosTenant) loop(stop <-chan struct{}, rng *rand.Rand) {
	t := c.s.t
	for nextOp(stop, rng) {
		code, v, err := c.post("/claim?wait=20s")
		switch {
		case err != nil:
			t.Errorf("%s: claim: %v", c.name, err)
			return
		case code == http.StatusOK || code == http.StatusCreated:
			c.count(string(v.Source))
			if !c.use(v) {
				return
			}
			// Some lives last long enough for the orphan sweep to look at their holds.
			hold := time.Duration(rng.IntN(100)) * time.Millisecond
			if rng.IntN(4) == 0 {
				hold = time.Duration(5000+rng.IntN(3000)) * time.Millisecond
			}
			time.Sleep(hold)
			if !c.check(v) {
				return
			}
		case code == http.StatusConflict: // ReleaseFailed: release it again
			c.count("conflict")
			if _, _, err := c.post("/release/retry"); err != nil {
				t.Errorf("%s: retry release: %v", c.name, err)
				return
			}
			continue
		case code == http.StatusAccepted || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout ||
			code == http.StatusTooManyRequests:
			c.count(strconv.Itoa(code))
			time.Sleep(200 * time.Millisecond)
			continue
		default:
			t.Errorf("%s: claim answered %d %+v", c.name, code, v)
			return
		}
		code, v, err = c.post("/release?wait=20s")
		switch {
		case err != nil:
			t.Errorf("%s: release: %v", c.name, err)
			return
		case code == http.StatusOK && v.Phase == messages.PhaseReleased:
			c.count("released")
			c.confirmed, c.instance = c.value, ""
		case code == http.StatusAccepted || code == http.StatusBadGateway || code == http.StatusServiceUnavailable ||
			code == http.StatusGatewayTimeout:
			// Releasing, ReleaseFailed, or not known: the next claim tells.
			c.count("release " + strconv.Itoa(code))
		default:
			t.Errorf("%s: release answered %d %+v", c.name, code, v)
			return
		}
	}
}

// use checks an Active claim's instance and data, and writes the next value.
func (c *chaosTenant) use(v messages.ClaimView) bool {
	t := c.s.t
	if other, ok := c.owners.claim(v.InstanceID, c.name); !ok {
		t.Errorf("%s was answered instance %s, which was %s's", c.name, v.InstanceID, other)
		return false
	}
	status, body, err := httpGet(endpointURL(v, "/files/data/n"))
	if err != nil {
		t.Errorf("%s: read from %s (%s): %v", c.name, v.InstanceID, v.Source, err)
		return false
	}
	got := 0
	switch status {
	case http.StatusNotFound:
	case http.StatusOK:
		tenant, n, _ := strings.Cut(string(body), " ")
		if got, err = strconv.Atoi(n); err != nil || tenant != c.name {
			t.Errorf("%s read %q from its instance %s", c.name, body, v.InstanceID)
			return false
		}
	default:
		t.Errorf("%s: read from %s: %d", c.name, v.InstanceID, status)
		return false
	}
	switch {
	case v.InstanceID == c.instance && got != c.value:
		t.Errorf("%s: its instance %s holds %d, but it wrote %d there", c.name, v.InstanceID, got, c.value)
		return false
	case got < c.confirmed:
		t.Errorf("%s: %s claim on %s read %d; a release answered Released after %d was written", c.name, v.Source, v.InstanceID, got, c.confirmed)
		return false
	case got > c.written:
		t.Errorf("%s read %d, more than it ever wrote (%d)", c.name, got, c.written)
		return false
	}
	next := got + 1
	req, _ := http.NewRequest(http.MethodPut, endpointURL(v, "/files/data/n"), strings.NewReader(fmt.Sprintf("%s %d", c.name, next)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s: write to %s: %v", c.name, v.InstanceID, err)
		return false
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Errorf("%s: write to %s: %d", c.name, v.InstanceID, resp.StatusCode)
		return false
	}
	c.instance, c.value, c.written = v.InstanceID, next, max(c.written, next)
	return true
}

// check reads back what this life wrote: the instance is still the tenant's.
func (c *chaosTenant) check(v messages.ClaimView) bool {
	status, body, err := httpGet(endpointURL(v, "/files/data/n"))
	if want := fmt.Sprintf("%s %d", c.name, c.value); err != nil || status != http.StatusOK || string(body) != want {
		c.s.t.Errorf("%s: its instance %s, held, answered %d %q %v; want %q", c.name, v.InstanceID, status, body, err, want)
		return false
	}
	return true
}

// final claims once more, the system being whole again, and checks the data.
func (c *chaosTenant) final(t *testing.T) messages.ClaimView {
	for range 10 {
		code, v, err := c.post("/claim")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if code == http.StatusConflict {
			if _, _, err := c.post("/release/retry"); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			continue
		}
		if code != http.StatusOK && code != http.StatusCreated {
			t.Fatalf("%s: final claim answered %d %+v", c.name, code, v)
		}
		if !c.use(v) {
			t.FailNow()
		}
		return v
	}
	t.Fatalf("%s: the final claim kept conflicting", c.name)
	return messages.ClaimView{}
}

func (c *chaosTenant) post(path string) (int, messages.ClaimView, error) {
	var v messages.ClaimView
	url := c.s.rest + "/api/v1/tenants/" + c.name + path
	resp, err := http.Post(url, "application/json", strings.NewReader(`{"workload":"`+c.workload+`"}`))
	if err != nil {
		return 0, v, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, v, err
	}
	if resp.StatusCode < 300 || resp.StatusCode == http.StatusBadGateway {
		if err := json.Unmarshal(b, &v); err != nil {
			return 0, v, fmt.Errorf("%s answered %d %s: %w", url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode, v, nil
}

func httpGet(url string) (int, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func summarize(ts []*chaosTenant) string {
	sum := map[string]int{}
	for _, c := range ts {
		for k, n := range c.ops {
			sum[k] += n
		}
	}
	b, _ := json.Marshal(sum)
	return string(b)
}

// reachable lists, per phase, the phases a claim life may be in later (DESIGN.md section 3);
// a watch may skip some.
var reachable = map[messages.ClaimPhase][]messages.ClaimPhase{
	messages.PhasePending:       {messages.PhasePending, messages.PhaseActive, messages.PhaseError, messages.PhaseReleasing, messages.PhaseReleaseFailed, messages.PhaseReleased},
	messages.PhaseActive:        {messages.PhaseActive, messages.PhaseReleasing, messages.PhaseReleaseFailed, messages.PhaseReleased},
	messages.PhaseReleasing:     {messages.PhaseReleasing, messages.PhaseReleaseFailed, messages.PhaseReleased},
	messages.PhaseReleaseFailed: {messages.PhaseReleaseFailed, messages.PhaseReleasing, messages.PhaseReleased},
	messages.PhaseReleased:      {messages.PhaseReleased},
	messages.PhaseError:         {messages.PhaseError},
}

// lifeWatch follows the claims bucket (across NATS restarts) and checks every claim life's
// phases against reachable.
type lifeWatch struct {
	mu   sync.Mutex
	last map[string]messages.ClaimRecord // claim id -> latest record seen
	bad  []string
}

func watchLives(t *testing.T, s *system, nc *nats.Conn) *lifeWatch {
	w := &lifeWatch{last: map[string]messages.ClaimRecord{}}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		natsx.Follow(ctx, nc, slog.Default(), s.kv.WatchAll, func(e jetstream.KeyValueEntry) {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				return
			}
			var rec messages.ClaimRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				w.fail("%s: malformed record at revision %d: %v", e.Key(), e.Revision(), err)
				return
			}
			w.see(e.Key(), e.Revision(), rec)
		})
	}()
	return w
}

func (w *lifeWatch) see(key string, rev uint64, rec messages.ClaimRecord) {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev, seen := w.last[rec.ID]
	w.last[rec.ID] = rec
	if !seen {
		return
	}
	for _, p := range reachable[prev.Phase] {
		if p == rec.Phase {
			if prev.InstanceID != "" && rec.InstanceID != "" && prev.InstanceID != rec.InstanceID && prev.Phase != messages.PhasePending {
				w.bad = append(w.bad, fmt.Sprintf("%s life %s changed instance %s -> %s at revision %d", key, rec.ID, prev.InstanceID, rec.InstanceID, rev))
			}
			return
		}
	}
	w.bad = append(w.bad, fmt.Sprintf("%s life %s: %s -> %s at revision %d", key, rec.ID, prev.Phase, rec.Phase, rev))
}

func (w *lifeWatch) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bad = append(w.bad, fmt.Sprintf(format, args...))
}

func (w *lifeWatch) violations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.bad...)
}

// poolWatch samples a pool's unheld live Pods: a Pod with the pool's label, not deleted or
// finished, without a tenant label and without a hold in the ledger. The ledger is read before
// and after the Pod list and a hold in either counts: an acquisition writes its hold before
// the refill is created, and a retirement deletes the Pod before its hold.
type poolWatch struct {
	mu       sync.Mutex
	most     int
	mostPods []string
}

func watchPoolSize(t *testing.T, s *system, ledger jetstream.KeyValue, pool string) *poolWatch {
	w := &poolWatch{}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	holds := func() (map[string]bool, bool) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		keys, err := ledger.ListKeys(rctx)
		if err != nil {
			return nil, false
		}
		held := map[string]bool{}
		for k := range keys.Keys() {
			held[k] = true
		}
		return held, rctx.Err() == nil
	}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			before, ok := holds()
			if !ok {
				continue
			}
			var pods corev1.PodList
			if err := s.client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.LabelPool: pool}); err != nil {
				continue
			}
			after, ok := holds()
			if !ok {
				continue
			}
			var unheld []string
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp == nil && !poolmanager.PodFinished(p) && p.Labels[v1alpha1.LabelTenant] == "" && !before[p.Name] && !after[p.Name] {
					unheld = append(unheld, p.Name)
				}
			}
			w.mu.Lock()
			if len(unheld) > w.most {
				w.most, w.mostPods = len(unheld), unheld
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *poolWatch) max() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.most
}

func (w *poolWatch) worst() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.mostPods, " ")
}

// claimRecords reads every claim of the bucket: key -> record.
func claimRecords(t *testing.T, s *system) map[string]messages.ClaimRecord {
	t.Helper()
	keys, err := s.kv.ListKeys(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]messages.ClaimRecord{}
	for k := range keys.Keys() {
		e, err := s.kv.Get(s.ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var rec messages.ClaimRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatal(err)
		}
		out[k] = rec
	}
	return out
}

// podsMatchClaims describes the first mismatch between workload's tenant Pods and the claims
// that hold instances ("" when they match): each Active or ReleaseFailed claim has its own live
// Pod labelled with its tenant (Ready, for an Active one), and no other tenant Pod lives.
func podsMatchClaims(t *testing.T, s *system, workload string, claims map[string]messages.ClaimRecord) string {
	t.Helper()
	var pods corev1.PodList
	if err := s.client.List(s.ctx, &pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.LabelWorkload: workload}); err != nil {
		t.Fatal(err)
	}
	live := map[string]*corev1.Pod{}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && p.Labels[v1alpha1.LabelTenant] != "" {
			live[p.Name] = p
		}
	}
	holder := map[string]string{}
	for key, rec := range claims {
		if rec.Workload != workload || (rec.Phase != messages.PhaseActive && rec.Phase != messages.PhaseReleaseFailed) {
			continue
		}
		if other, dup := holder[rec.InstanceID]; dup {
			t.Fatalf("instance %s held by the claims %s and %s", rec.InstanceID, other, key)
		}
		holder[rec.InstanceID] = key
		p, ok := live[rec.InstanceID]
		if !ok {
			return fmt.Sprintf("%s claim %s has no live Pod %s", rec.Phase, key, rec.InstanceID)
		}
		if p.Labels[v1alpha1.LabelTenant] != rec.TenantID {
			return fmt.Sprintf("Pod %s of %s is labelled for tenant %q", p.Name, key, p.Labels[v1alpha1.LabelTenant])
		}
		if rec.Phase == messages.PhaseActive && !poolmanager.PodReady(p) {
			return fmt.Sprintf("Pod %s of the Active claim %s is not Ready", p.Name, key)
		}
		delete(live, rec.InstanceID)
	}
	for name, p := range live {
		return fmt.Sprintf("tenant Pod %s (%s) belongs to no claim", name, p.Labels[v1alpha1.LabelTenant])
	}
	return ""
}
