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
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// LabelWatch records when each tenant's label first shows on a Pod, as a watch of the API
// server delivers it: the claim path answers before pool-manager labels the Pod, and DESIGN.md
// wants the label within a second. It watches Pod metadata only, so it stays cheap at
// thousands of Pods.
type LabelWatch struct {
	prefix string

	mu      sync.Mutex
	seen    map[string]time.Time
	changed chan struct{} // closed and replaced whenever a tenant is first seen
}

// StartLabelWatch watches the Pods of all namespaces that carry a tenant label starting with
// prefix, and returns once the watch has listed them.
func StartLabelWatch(ctx context.Context, cfg *rest.Config, prefix string) (*LabelWatch, error) {
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	w := &LabelWatch{prefix: prefix, seen: map[string]time.Time{}, changed: make(chan struct{})}
	factory := metadatainformer.NewFilteredSharedInformerFactory(mc, 0, metav1.NamespaceAll,
		func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelTenant })
	inf := factory.ForResource(corev1.SchemeGroupVersion.WithResource("pods")).Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.saw,
		UpdateFunc: func(_, obj any) { w.saw(obj) },
	}); err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, errors.New("loadgen: the Pod label watch did not sync")
	}
	return w, nil
}

func (w *LabelWatch) saw(obj any) {
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
	if _, dup := w.seen[tenant]; dup {
		return
	}
	w.seen[tenant] = now
	close(w.changed)
	w.changed = make(chan struct{})
}

// LabelLag is how long tenant labels trailed the claims' answers.
type LabelLag struct {
	Claims  int       // new claims that answered
	Missing int       // of those, tenants whose label was not seen within the wait
	Lag     []Summary // one group, "tenant label", when any was seen
}

// Lags waits up to timeout until every tenant of answered (tenant -> when its claim answered)
// shows on a Pod, and summarises the lags of those seen.
func (w *LabelWatch) Lags(ctx context.Context, answered map[string]time.Time, timeout time.Duration) LabelLag {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		missing, changed := w.missing(answered)
		if missing == 0 {
			break
		}
		select {
		case <-changed:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		break
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	res := LabelLag{Claims: len(answered)}
	var lags Recorder
	for tenant, at := range answered {
		seen, ok := w.seen[tenant]
		if !ok {
			res.Missing++
			continue
		}
		// pool-manager labels after the answer, so an earlier sighting only means this
		// process read the answer late: count it as no lag.
		lags.Add(Sample{Op: "tenant label", Latency: max(0, seen.Sub(at))})
	}
	res.Lag = lags.Summarise(0).Groups
	return res
}

// missing counts the tenants of answered not seen yet, and returns the channel closed at the
// next sighting.
func (w *LabelWatch) missing(answered map[string]time.Time) (int, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for tenant := range answered {
		if _, ok := w.seen[tenant]; !ok {
			n++
		}
	}
	return n, w.changed
}

// WriteMarkdown prints the lags as a table, and how many labels were never seen.
func (l LabelLag) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "\ntenant labels, from each new claim's answer to a Pod watch showing the label on its Pod:\n\n")
	WriteTable(w, l.Lag)
	fmt.Fprintf(w, "\nseen %d of %d, missing %d\n", l.Claims-l.Missing, l.Claims, l.Missing)
}
