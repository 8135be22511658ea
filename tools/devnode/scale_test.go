package devnode

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	scalePods    = 1000
	scaleCreator = 16
	scaleBound   = 3 * time.Minute
)

// rssKiB is this process's resident set size (VmRSS) in KiB.
func rssKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kib); err != nil {
				t.Fatal(err)
			}
			return kib
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// TestScale creates 1000 Pods concurrently and waits for all of them to be Ready, then deletes
// them all. It logs the times and the memory and goroutines the node takes (measured in this
// test process, so the test's own client is included).
func TestScale(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "scale")
	rc := rest.CopyConfig(plane.Config)
	rc.QPS, rc.Burst = 1000, 2000
	c, err := client.New(rc, client.Options{Scheme: plane.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	goroutines0, rss0, heap0, files0 := runtime.NumGoroutine(), rssKiB(t), heapMiB(), openFiles(t)
	n := startNode(t, Config{NodeName: uniq("dn-scale")})

	start := time.Now()
	var wg sync.WaitGroup
	var createErrs atomic.Int64
	next := atomic.Int64{}
	for range scaleCreator {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= scalePods {
					return
				}
				p := demoPod(ns, fmt.Sprintf("p%04d", i), fmt.Sprintf("tenant-%d", i%50))
				p.Spec.Containers[0].ReadinessProbe.PeriodSeconds = 10
				p.Spec.Containers[0].ReadinessProbe.FailureThreshold = 3
				if err := c.Create(ctx, p); err != nil {
					if createErrs.Add(1) < 5 {
						t.Errorf("create %s: %v", p.Name, err)
					}
				}
			}
		})
	}
	wg.Wait()
	created := time.Since(start)
	if createErrs.Load() > 0 {
		t.Fatalf("%d creates failed", createErrs.Load())
	}
	t.Logf("created %d pods with %d goroutines in %s", scalePods, scaleCreator, created.Round(time.Millisecond))

	var pods corev1.PodList
	ready := 0
	deadline := start.Add(scaleBound)
	for {
		if err := c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		ready = 0
		for i := range pods.Items {
			if p := &pods.Items[i]; p.Status.Phase == corev1.PodRunning && isReady(p) {
				ready++
			}
		}
		if ready == scalePods {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d pods Ready after %s", ready, scalePods, scaleBound)
		}
		time.Sleep(250 * time.Millisecond)
	}
	allReady := time.Since(start)
	goroutines1, rss1, heap1, files1 := runtime.NumGoroutine(), rssKiB(t), heapMiB(), openFiles(t)
	t.Logf("all %d pods Ready %s after the first create (%.0f pods/s)", scalePods,
		allReady.Round(time.Millisecond), float64(scalePods)/allReady.Seconds())
	t.Logf("process with node: goroutines %d -> %d (+%d), RSS %.1f -> %.1f MiB (+%.1f), Go heap %.1f -> %.1f MiB; status patches %d",
		goroutines0, goroutines1, goroutines1-goroutines0, float64(rss0)/1024, float64(rss1)/1024,
		float64(rss1-rss0)/1024, heap0, heap1, n.statusPatches.Load())
	// One listener a Pod; its log is not held open (10,000 Pods fit a 20,000-file limit).
	t.Logf("open files %d -> %d (+%d)", files0, files1, files1-files0)
	if files1-files0 > scalePods+scalePods/4 {
		t.Errorf("%d more open files for %d pods with one port each, want about one each", files1-files0, scalePods)
	}

	ips := map[string]string{}
	for i := range pods.Items {
		p := &pods.Items[i]
		checkPodIP(t, p.Status.PodIP)
		if other, dup := ips[p.Status.PodIP]; dup {
			t.Fatalf("pods %s and %s share IP %s", other, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
	}
	for _, i := range []int{0, scalePods / 2, scalePods - 1} {
		p := &pods.Items[i]
		got, err := demoGet(p.Status.PodIP, 8080)
		if err != nil || got.Pod != p.Name || got.Tenant != p.Labels["boilerhouse.dev/tenant"] {
			t.Errorf("GET / on %s = %+v, %v", p.Name, got, err)
		}
	}
	// Each pod needs one status write, two if the first probe lands after the first write;
	// more would mean the node fights its own writes.
	if got := n.statusPatches.Load(); got > 2*scalePods+scalePods/10 {
		t.Errorf("%d status patches for %d pods", got, scalePods)
	}

	// Delete them all; the node completes every deletion and frees every IP and listener.
	start = time.Now()
	if err := c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, scaleBound, "all pods deleted", func() (bool, error) {
		var left corev1.PodList
		err := c.List(ctx, &left, client.InNamespace(ns))
		return err == nil && len(left.Items) == 0, err
	})
	t.Logf("deleted %d pods in %s", scalePods, time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "node tracks no pods", func() (bool, error) {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.pods) == 0 && n.alloc.len() == 0, fmt.Errorf("%d runtimes, %d IPs", len(n.pods), n.alloc.len())
	})
	p := &pods.Items[0]
	if ok, err := refused(p.Status.PodIP, 8080); !ok {
		t.Errorf("deleted pod %s still accepts connections: %v", p.Name, err)
	}
}
