package devnode

import (
	"context"
	"fmt"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

const (
	nodeLeaseNamespace = corev1.NamespaceNodeLease // "kube-node-lease"
	leaseDuration      = 40                        // seconds, as the kubelet
	statusEvery        = 6                         // node status refresh, in heartbeats
)

// Capacity the dev node advertises: generous, so nothing is ever unschedulable on it.
var nodeCapacity = corev1.ResourceList{
	corev1.ResourceCPU:    resource.MustParse("64"),
	corev1.ResourceMemory: resource.MustParse("256Gi"),
	corev1.ResourcePods:   resource.MustParse("10000"),
}

// Taints the API server's TaintNodesByCondition admission (or a node lifecycle controller) puts
// on a node that has not yet reported Ready; no controller-manager runs here to lift them.
var conditionTaints = map[string]bool{
	corev1.TaintNodeNotReady:    true,
	corev1.TaintNodeUnreachable: true,
}

// register creates or updates the Node, lifts the not-ready taint, reports it Ready and renews
// its Lease.
func (n *Node) register(ctx context.Context) error {
	node, err := n.ensureNode(ctx)
	if err != nil {
		return err
	}
	if err := n.updateNodeStatus(ctx); err != nil {
		return err
	}
	if err := n.renewLease(ctx, node); err != nil {
		return err
	}
	n.log.Info("node registered", "uid", node.UID)
	return nil
}

// ensureNode creates the Node if missing and makes its labels and taints right.
func (n *Node) ensureNode(ctx context.Context) (*corev1.Node, error) {
	nodes := n.client.CoreV1().Nodes()
	var out *corev1.Node
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			node, err = nodes.Create(ctx, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.nodeLabels()},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("nodes"), n.name, err) // retry with Get
			}
		}
		if err != nil {
			return err
		}
		changed := false
		if node.Labels == nil {
			node.Labels = map[string]string{}
		}
		for k, v := range n.nodeLabels() {
			if node.Labels[k] != v {
				node.Labels[k], changed = v, true
			}
		}
		taints := node.Spec.Taints[:0:0]
		for _, t := range node.Spec.Taints {
			if conditionTaints[t.Key] {
				changed = true
				continue
			}
			taints = append(taints, t)
		}
		if node.Spec.Unschedulable {
			// cordoned by hand: leave it, but say so
			n.log.Warn("node is cordoned (spec.unschedulable); the dev node still binds pods to itself")
		}
		if changed {
			node.Spec.Taints = taints
			if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
		out = node
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("devnode: registering node %s: %w", n.name, err)
	}
	return out, nil
}

func (n *Node) nodeLabels() map[string]string {
	return map[string]string{
		corev1.LabelHostname:      n.name,
		corev1.LabelOSStable:      "linux",
		corev1.LabelArchStable:    runtime.GOARCH,
		"boilerhouse.dev/devnode": "true",
	}
}

// updateNodeStatus reports capacity, addresses and Ready with a fresh heartbeat.
func (n *Node) updateNodeStatus(ctx context.Context) error {
	nodes := n.client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		t := metav1.NewTime(time.Now())
		st := &node.Status
		st.Capacity = nodeCapacity.DeepCopy()
		st.Allocatable = nodeCapacity.DeepCopy()
		st.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: hostIP},
			{Type: corev1.NodeHostName, Address: n.name},
		}
		// The API server proxies exec and logs to https://<address>:<this port>.
		st.DaemonEndpoints.KubeletEndpoint.Port = int32(n.kubeletPort())
		st.NodeInfo = corev1.NodeSystemInfo{
			MachineID: "boilerhouse-devnode", SystemUUID: string(node.UID), BootID: string(node.UID),
			KernelVersion: "devnode", OSImage: "boilerhouse devnode", OperatingSystem: "linux",
			Architecture: runtime.GOARCH, ContainerRuntimeVersion: "devnode://0.1",
			KubeletVersion: "v1.37.2",
		}
		st.Phase = corev1.NodeRunning
		setNodeCondition(st, corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "devnode is posting ready status", t)
		setNodeCondition(st, corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "", t)
		setNodeCondition(st, corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "", t)
		setNodeCondition(st, corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "", t)
		_, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("devnode: node status: %w", err)
	}
	return nil
}

func setNodeCondition(st *corev1.NodeStatus, typ corev1.NodeConditionType, status corev1.ConditionStatus, reason, msg string, t metav1.Time) {
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != typ {
			continue
		}
		if c.Status != status {
			c.LastTransitionTime = t
		}
		c.Status, c.Reason, c.Message, c.LastHeartbeatTime = status, reason, msg, t
		return
	}
	st.Conditions = append(st.Conditions, corev1.NodeCondition{
		Type: typ, Status: status, Reason: reason, Message: msg, LastHeartbeatTime: t, LastTransitionTime: t,
	})
}

// renewLease creates or renews the node's Lease in kube-node-lease.
func (n *Node) renewLease(ctx context.Context, node *corev1.Node) error {
	leases := n.client.CoordinationV1().Leases(nodeLeaseNamespace)
	renew := metav1.NewMicroTime(time.Now())
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		lease, err := leases.Get(ctx, n.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			lease = &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: n.name, Namespace: nodeLeaseNamespace},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity:       new(n.name),
					LeaseDurationSeconds: new(int32(leaseDuration)),
					RenewTime:            &renew,
				},
			}
			if node != nil {
				lease.OwnerReferences = []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				}}
			}
			_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
			if apierrors.IsNotFound(err) {
				// The API server creates kube-node-lease shortly after it starts.
				_, nsErr := n.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
					ObjectMeta: metav1.ObjectMeta{Name: nodeLeaseNamespace},
				}, metav1.CreateOptions{})
				if nsErr != nil && !apierrors.IsAlreadyExists(nsErr) {
					return nsErr
				}
				_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
			}
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(coordinationv1.Resource("leases"), n.name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		lease.Spec.HolderIdentity = new(n.name)
		lease.Spec.LeaseDurationSeconds = new(int32(leaseDuration))
		lease.Spec.RenewTime = &renew
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("devnode: node lease: %w", err)
	}
	return nil
}

// heartbeat renews the Lease every HeartbeatInterval and refreshes Node status (re-creating the
// Node if someone deleted it) every statusEvery heartbeats.
func (n *Node) heartbeat(ctx context.Context) {
	tick := time.NewTicker(n.cfg.HeartbeatInterval)
	defer tick.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var node *corev1.Node
		if i%statusEvery == 0 {
			var err error
			if node, err = n.ensureNode(ctx); err != nil {
				n.logHeartbeat(ctx, err)
				continue
			}
			if err := n.updateNodeStatus(ctx); err != nil {
				n.logHeartbeat(ctx, err)
				continue
			}
		}
		if err := n.renewLease(ctx, node); err != nil {
			n.logHeartbeat(ctx, err)
		}
	}
}

func (n *Node) logHeartbeat(ctx context.Context, err error) {
	if ctx.Err() == nil {
		n.log.Warn("heartbeat", "err", err)
	}
}
