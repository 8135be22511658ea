package poolmanager

import (
	"sync"

	corev1 "k8s.io/api/core/v1"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// podIndex holds the managed Pods of the informer cache two ways: the Pods of each pool, for the
// pool walk, and the Ready, unclaimed pool Pods of each workload, for Acquire. It is kept
// current by the Pod informer's event handler and holds the informer's own objects, so nothing
// may modify them. A walk or an acquire so costs a map walk, where a list of the cache would
// copy every Pod of the pool, at the claim rate.
type podIndex struct {
	mu            sync.Mutex
	byPool        map[string]map[string]*corev1.Pod
	poolByPod     map[string]string                 // pod name -> pool
	ready         map[string]map[string]*corev1.Pod // workload -> acquirable Pods
	workloadByPod map[string]string                 // acquirable pod name -> workload
}

func newPodIndex() *podIndex {
	return &podIndex{
		byPool: map[string]map[string]*corev1.Pod{}, poolByPod: map[string]string{},
		ready: map[string]map[string]*corev1.Pod{}, workloadByPod: map[string]string{},
	}
}

// acquirable: a Ready pool Pod that no tenant holds by label and that is not going away. The
// ledger, the other half of "held", is checked at acquire time.
func acquirable(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Labels[v1alpha1.LabelPool] != "" &&
		p.Labels[v1alpha1.LabelTenant] == "" && p.Labels[v1alpha1.LabelPoolStatus] != v1alpha1.PoolStatusAcquired &&
		PodReady(p)
}

// update files the current version of a Pod.
func (x *podIndex) update(p *corev1.Pod) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.file(x.byPool, x.poolByPod, p.Labels[v1alpha1.LabelPool], p)
	if acquirable(p) {
		x.file(x.ready, x.workloadByPod, p.Labels[v1alpha1.LabelWorkload], p)
	} else {
		x.unfile(x.ready, x.workloadByPod, p.Name)
	}
}

// deleted forgets a Pod.
func (x *podIndex) deleted(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.unfile(x.byPool, x.poolByPod, name)
	x.unfile(x.ready, x.workloadByPod, name)
}

// taken drops a Pod from the acquirable ones: it was just acquired.
func (x *podIndex) taken(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.unfile(x.ready, x.workloadByPod, name)
}

// file puts p under group in sets (no group: in none), moving it from the group it was in.
func (x *podIndex) file(sets map[string]map[string]*corev1.Pod, groupOf map[string]string, group string, p *corev1.Pod) {
	if old, ok := groupOf[p.Name]; ok && old != group {
		x.unfile(sets, groupOf, p.Name)
	}
	if group == "" {
		return
	}
	set := sets[group]
	if set == nil {
		set = map[string]*corev1.Pod{}
		sets[group] = set
	}
	set[p.Name] = p
	groupOf[p.Name] = group
}

func (x *podIndex) unfile(sets map[string]map[string]*corev1.Pod, groupOf map[string]string, name string) {
	if g, ok := groupOf[name]; ok {
		delete(sets[g], name)
		if len(sets[g]) == 0 {
			delete(sets, g)
		}
		delete(groupOf, name)
	}
}

// poolOf returns the pool label of a Pod ("" when none, or unknown).
func (x *podIndex) poolOf(name string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.poolByPod[name]
}

// pool returns the Pods labelled with the pool, in no particular order (read-only).
func (x *podIndex) pool(name string) []*corev1.Pod {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(x.byPool[name]))
	for _, p := range x.byPool[name] {
		out = append(out, p)
	}
	return out
}

// candidates returns up to n acquirable Pods of the workload for which skip is false. Map
// order is random, so concurrent acquirers and replicas rarely try the same Pod.
func (x *podIndex) candidates(workload string, n int, skip func(*corev1.Pod) bool) []*corev1.Pod {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]*corev1.Pod, 0, n)
	for _, p := range x.ready[workload] {
		if skip(p) {
			continue
		}
		if out = append(out, p); len(out) == n {
			break
		}
	}
	return out
}
