package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// labelled are the objects that follow a claim asynchronously, as DESIGN.md wants them within a
// second: the claim's Pod, which pool-manager labels with the tenant after the answer, and the
// BoilerhouseClaim that cr-sync creates with that label.
var labelled = []struct {
	group string
	gvr   schema.GroupVersionResource
}{
	{"Pod tenant label", corev1.SchemeGroupVersion.WithResource("pods")},
	{"BoilerhouseClaim", v1alpha1.GroupVersion.WithResource("boilerhouseclaims")},
}

// LabelWatch records when each tenant's label first shows on each kind of object of
// [labelled], as a watch of the API server delivers it. It watches metadata only, so it stays
// cheap at thousands of objects.
type LabelWatch struct {
	prefix string

	mu   sync.Mutex
	seen []map[string]time.Time // per entry of labelled: tenant -> first seen
}

// StartLabelWatch watches the objects of all namespaces that carry a tenant label starting with
// prefix, and returns once the watches have listed them.
func StartLabelWatch(ctx context.Context, cfg *rest.Config, prefix string) (*LabelWatch, error) {
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	w := &LabelWatch{prefix: prefix}
	factory := metadatainformer.NewFilteredSharedInformerFactory(mc, 0, metav1.NamespaceAll,
		func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelTenant })
	var synced []cache.InformerSynced
	for i, l := range labelled {
		w.seen = append(w.seen, map[string]time.Time{})
		inf := factory.ForResource(l.gvr).Informer()
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { w.saw(i, obj) },
			UpdateFunc: func(_, obj any) { w.saw(i, obj) },
		}); err != nil {
			return nil, err
		}
		synced = append(synced, inf.HasSynced)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil, errors.New("loadgen: the label watches did not sync")
	}
	return w, nil
}

func (w *LabelWatch) saw(kind int, obj any) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return
	}
	tenant := m.Labels[v1alpha1.LabelTenant]
	if !strings.HasPrefix(tenant, w.prefix) {
		return
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, dup := w.seen[kind][tenant]; dup {
		return
	}
	w.seen[kind][tenant] = now
}

// LabelLag is how long the labelled objects trailed the claims' answers.
type LabelLag struct {
	Claims  int            // new claims that answered
	Missing map[string]int // per group: tenants not seen within the wait
	Lag     []Summary      // per group, of the tenants seen
}

// Lags waits up to timeout until every tenant of answered (tenant -> when its claim answered)
// shows on every kind of object, and summarises the lags of those seen.
func (w *LabelWatch) Lags(ctx context.Context, answered map[string]time.Time, timeout time.Duration) LabelLag {
	// Sightings are timed as they arrive; this only decides when to stop waiting, so it
	// counts a few times a second rather than at each of thousands of sightings.
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(labelPoll)
	defer tick.Stop()
wait:
	for w.missing(answered) > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	res := LabelLag{Claims: len(answered), Missing: map[string]int{}}
	var lags Recorder
	for kind, l := range labelled {
		for tenant, at := range answered {
			seen, ok := w.seen[kind][tenant]
			if !ok {
				res.Missing[l.group]++
				continue
			}
			// Both follow the answer, so an earlier sighting only means this process read
			// the answer late: count it as no lag.
			lags.Add(Sample{Op: l.group, Latency: max(0, seen.Sub(at))})
		}
	}
	res.Lag = lags.Summarise(0).Groups
	return res
}

// labelPoll is how often Lags checks whether every sighting is in.
const labelPoll = 100 * time.Millisecond

// missing counts the sightings still due for answered.
func (w *LabelWatch) missing(answered map[string]time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, seen := range w.seen {
		for tenant := range answered {
			if _, ok := seen[tenant]; !ok {
				n++
			}
		}
	}
	return n
}

// WriteMarkdown prints the lags as a table, and what was never seen.
func (l LabelLag) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "\nwhat follows each new claim, from its answer to a watch of the API server showing it: the tenant label on its Pod, its BoilerhouseClaim object:\n\n")
	WriteTable(w, l.Lag)
	fmt.Fprintf(w, "\nnew claims %d;", l.Claims)
	for _, g := range labelled {
		fmt.Fprintf(w, " %s missing %d;", g.group, l.Missing[g.group])
	}
	fmt.Fprintln(w)
}
