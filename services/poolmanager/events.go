package poolmanager

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
)

type eventMsg struct {
	msgID string
	ev    messages.Event
}

// watchPods keeps the Pod index current, wakes boot waiters on every Pod change and publishes
// instance events when a tenant's Pod fails or is deleted. It runs on every replica; the
// JetStream message id (Pod UID and transition) lets the stream drop the copies other replicas
// publish. Called before the cache starts, so that the index sees every Pod; the returned
// function reports when it has.
func (m *Manager) watchPods(ctx context.Context) (synced func() bool, err error) {
	inf, err := m.mgr.GetCache().GetInformer(ctx, &corev1.Pod{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, err
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				m.pods.update(p)
				m.waiters.notify(p.Name)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			p, ok := newObj.(*corev1.Pod)
			if !ok {
				return
			}
			m.pods.update(p)
			m.waiters.notify(p.Name)
			if old, ok := oldObj.(*corev1.Pod); ok && !PodFinished(old) && PodFinished(p) {
				m.instanceEvent(p, PhaseFailed, "pod-failed", FailureReason(p))
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return
			}
			m.pods.deleted(p.Name)
			m.waiters.notify(p.Name)
			m.instanceEvent(p, PhaseDeleted, "pod-deleted", "")
		},
	})
	if err != nil {
		return nil, err
	}
	return reg.HasSynced, nil
}

// instanceEvent queues an instance event for a tenant's Pod; pool Pods nobody holds have none.
func (m *Manager) instanceEvent(p *corev1.Pod, phase, reason, detail string) {
	tenant := p.Labels[v1alpha1.LabelTenant]
	if e, ok := m.ledger.Get(p.Name); ok && e.State == StateAcquired && e.TenantID != "" {
		tenant = e.TenantID
	}
	if tenant == "" {
		return
	}
	workload := p.Labels[v1alpha1.LabelWorkload]
	inst := instanceOf(p, nil, tenant, phase)
	inst.ReleaseAction = ""
	inst.Ready = false
	inst.Detail = detail
	msg := eventMsg{
		msgID: "instance-" + string(p.UID) + "-" + phase,
		ev: messages.Event{Kind: messages.EventInstance, TenantID: tenant, Workload: workload,
			Instance: &inst, Reason: reason, At: time.Now().UTC()},
	}
	select {
	case m.events <- msg:
	default:
		m.log.Error("instance event dropped: publish queue full", "instance", p.Name, "phase", phase)
	}
}

// publishEvents publishes queued events with JetStream async publish until ctx ends.
func (m *Manager) publishEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-m.events:
			b, err := json.Marshal(e.ev)
			if err != nil {
				m.log.Error("encoding event", "err", err)
				continue
			}
			msg := &nats.Msg{Subject: messages.EventSubject(e.ev.Kind, e.ev.TenantID, e.ev.Workload), Data: b}
			if _, err := m.js.PublishMsgAsync(msg, jetstream.WithMsgID(e.msgID)); err != nil {
				m.log.Warn("publishing instance event", "subject", msg.Subject, "err", err)
			}
		}
	}
}
