package poolmanager

import (
	"sync"

	corev1 "k8s.io/api/core/v1"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// readyIndex is the acquire path's inventory: the Ready, unclaimed pool Pods of each workload,
// kept current by the Pod informer. An acquire costs a map walk and one KV create, never a
// list of the cache (which copies every Pod of the workload).
type readyIndex struct {
	mu         sync.Mutex
	byWorkload map[string]map[string]*corev1.Pod
	workloadOf map[string]string // pod name -> workload, for removals
}

func newReadyIndex() *readyIndex {
	return &readyIndex{byWorkload: map[string]map[string]*corev1.Pod{}, workloadOf: map[string]string{}}
}

// acquirable: a Ready pool Pod that no tenant holds by label and that is not going away. The
// ledger, the other half of "held", is checked at acquire time.
func acquirable(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Labels[v1alpha1.LabelPool] != "" &&
		p.Labels[v1alpha1.LabelTenant] == "" && p.Labels[v1alpha1.LabelPoolStatus] != v1alpha1.PoolStatusAcquired &&
		PodReady(p)
}

// update files the Pod under its workload when acquirable, and removes it otherwise.
func (x *readyIndex) update(p *corev1.Pod) {
	if !acquirable(p) {
		x.remove(p.Name)
		return
	}
	w := p.Labels[v1alpha1.LabelWorkload]
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.workloadOf[p.Name]; ok && old != w {
		delete(x.byWorkload[old], p.Name)
	}
	pods := x.byWorkload[w]
	if pods == nil {
		pods = map[string]*corev1.Pod{}
		x.byWorkload[w] = pods
	}
	pods[p.Name] = p
	x.workloadOf[p.Name] = w
}

func (x *readyIndex) remove(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if w, ok := x.workloadOf[name]; ok {
		delete(x.byWorkload[w], name)
		delete(x.workloadOf, name)
	}
}

// candidates returns up to n acquirable Pods of the workload for which skip is false. Map
// order is random, so concurrent acquirers and replicas rarely try the same Pod.
func (x *readyIndex) candidates(workload string, n int, skip func(*corev1.Pod) bool) []*corev1.Pod {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]*corev1.Pod, 0, n)
	for _, p := range x.byWorkload[workload] {
		if skip(p) {
			continue
		}
		if out = append(out, p); len(out) == n {
			break
		}
	}
	return out
}
