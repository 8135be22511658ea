package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/messages"
	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/bus"
)

// Requests the HTTP decoders hand to the endpoints. They are validated
// already: tenant ids, workload and resource names follow the contract's
// rules.
type (
	claimRequest struct {
		msg  messages.ClaimRequest
		wait time.Duration
	}
	tenantRequest struct{ tenant string }
	nameRequest   struct{ name string }
	workloadWrite struct {
		name string
		spec v1alpha1.WorkloadSpec
	}
	poolWrite struct {
		name string
		spec v1alpha1.PoolSpec
	}
	instanceRequest struct{ id string }
	logsRequest     struct {
		id        string
		container string
		tail      *int64
	}
	execRequest struct {
		id   string
		body execBody
	}
)

// endpoints are the edge's operations, one per route.
type endpoints struct {
	Claim, Release, GetClaim, GetTenant, ListTenants                           endpoint.Endpoint
	Activity                                                                   endpoint.Endpoint
	Health, Stats                                                              endpoint.Endpoint
	CreateWorkload, ListWorkloads, GetWorkload, UpdateWorkload, DeleteWorkload endpoint.Endpoint
	CreatePool, ListPools, GetPool, UpdatePool, DeletePool                     endpoint.Endpoint
	ListSnapshots                                                              endpoint.Endpoint
	ListInstances, GetInstance, InstanceLogs, InstanceExec, DestroyInstance    endpoint.Endpoint
}

// backend does the edge's I/O: NATS requests to the claim-router (one
// request per claim, through clients built once) and Kubernetes CRUD on
// workloads and pools.
type backend struct {
	nc             *nats.Conn
	kube           client.Client
	namespace      string
	requestTimeout time.Duration
	execTimeout    time.Duration
	// restConfig and clientset reach pods/log and pods/exec; nil without
	// Config.RestConfig.
	restConfig *rest.Config
	clientset  kubernetes.Interface

	claim       bus.Handler[messages.ClaimRequest, messages.ClaimView]
	release     bus.Handler[messages.ReleaseRequest, messages.ClaimView]
	getClaim    bus.Handler[messages.ClaimGetRequest, messages.ClaimView]
	getTenant   bus.Handler[messages.TenantGetRequest, messages.TenantView]
	listTenants bus.Handler[messages.TenantListRequest, messages.TenantList]
	// listOverlays asks the overlay-store.
	listOverlays bus.Handler[messages.OverlayListRequest, messages.SnapshotList]
}

func newBackend(cfg *Config) (*backend, error) {
	nc := cfg.NATS
	var cs kubernetes.Interface
	if cfg.RestConfig != nil {
		var err error
		if cs, err = kubernetes.NewForConfig(cfg.RestConfig); err != nil {
			return nil, fmt.Errorf("edge: Kubernetes clientset: %w", err)
		}
	}
	return &backend{
		nc:             nc,
		kube:           cfg.Client,
		namespace:      cfg.Namespace,
		requestTimeout: cfg.RequestTimeout,
		execTimeout:    cfg.ExecTimeout,
		restConfig:     cfg.RestConfig,
		clientset:      cs,
		// The claim and release clients' own timeout is the longest
		// allowed; each request narrows it to its wait plus a margin
		// through its context.
		claim:        bus.Client[messages.ClaimRequest, messages.ClaimView](nc, messages.SubjectClaimsClaim, MaxWait+replyMargin),
		release:      bus.Client[messages.ReleaseRequest, messages.ClaimView](nc, messages.SubjectClaimsRelease, MaxWait+replyMargin),
		getClaim:     bus.Client[messages.ClaimGetRequest, messages.ClaimView](nc, messages.SubjectClaimsGet, cfg.RequestTimeout),
		getTenant:    bus.Client[messages.TenantGetRequest, messages.TenantView](nc, messages.SubjectTenantsGet, cfg.RequestTimeout),
		listTenants:  bus.Client[messages.TenantListRequest, messages.TenantList](nc, messages.SubjectTenantsList, cfg.RequestTimeout),
		listOverlays: bus.Client[messages.OverlayListRequest, messages.SnapshotList](nc, messages.SubjectOverlaysList, cfg.RequestTimeout),
	}, nil
}

func (b *backend) endpoints() endpoints {
	return endpoints{
		Claim:           b.claimEndpoint,
		Release:         b.releaseEndpoint,
		GetClaim:        b.getClaimEndpoint,
		GetTenant:       b.getTenantEndpoint,
		Activity:        b.activityEndpoint,
		ListTenants:     b.listTenantsEndpoint,
		Health:          b.healthEndpoint,
		Stats:           b.statsEndpoint,
		CreateWorkload:  b.createWorkload,
		ListWorkloads:   b.listWorkloads,
		GetWorkload:     b.getWorkload,
		UpdateWorkload:  b.updateWorkload,
		DeleteWorkload:  b.deleteWorkload,
		CreatePool:      b.createPool,
		ListPools:       b.listPools,
		GetPool:         b.getPool,
		UpdatePool:      b.updatePool,
		DeletePool:      b.deletePool,
		ListSnapshots:   b.listSnapshots,
		ListInstances:   b.listInstances,
		GetInstance:     b.getInstance,
		InstanceLogs:    b.instanceLogs,
		InstanceExec:    b.instanceExec,
		DestroyInstance: b.destroyInstance,
	}
}

// ---- claims (NATS only) ----------------------------------------------------

// claimEndpoint is the hot path: one NATS request, no Kubernetes call.
func (b *backend) claimEndpoint(ctx context.Context, request any) (any, error) {
	req := request.(claimRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, req.wait+replyMargin)
	defer cancel()
	view, err := b.claim(ctx, req.msg)
	if err != nil {
		return nil, err
	}
	fillView(&view, req.msg.TenantID, req.msg.Workload)
	status, retryAfter := claimStatus(&view)
	return viewReply(&view, status, retryAfter, "claim"), nil
}

func (b *backend) releaseEndpoint(ctx context.Context, request any) (any, error) {
	req := request.(releaseRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, req.wait+replyMargin)
	defer cancel()
	view, err := b.release(ctx, req.msg)
	if err != nil {
		return nil, err
	}
	fillView(&view, req.msg.TenantID, req.msg.Workload)
	return viewReply(&view, releaseStatus(&view), 0, "release"), nil
}

// fillView names the claim in a view whose sender left it out.
func fillView(v *messages.ClaimView, tenant, workload string) {
	if v.TenantID == "" {
		v.TenantID = tenant
	}
	if v.Workload == "" {
		v.Workload = workload
	}
}

func (b *backend) getClaimEndpoint(ctx context.Context, request any) (any, error) {
	req := request.(messages.ClaimGetRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	view, err := b.getClaim(ctx, req)
	if err != nil {
		return nil, err
	}
	return reply{Status: http.StatusOK, Body: &view}, nil
}

func (b *backend) getTenantEndpoint(ctx context.Context, request any) (any, error) {
	req := request.(tenantRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	view, err := b.getTenant(ctx, messages.TenantGetRequest{TenantID: req.tenant})
	if messages.CodeOf(err) == messages.CodeNotFound || err == nil && len(view.Claims) == 0 {
		return nil, notFound("tenant %q has no claims", req.tenant)
	}
	if err != nil {
		return nil, err
	}
	return reply{Status: http.StatusOK, Body: view}, nil
}

func (b *backend) listTenantsEndpoint(ctx context.Context, _ any) (any, error) {
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	list, err := b.listTenants(ctx, messages.TenantListRequest{})
	if err != nil {
		return nil, err
	}
	tenants := list.Tenants
	if tenants == nil {
		tenants = []messages.TenantView{}
	}
	return reply{Status: http.StatusOK, Body: tenants}, nil
}

// natsReady fails fast with 503 while the NATS connection is down: a
// request would otherwise sit in the reconnect buffer until its timeout.
func (b *backend) natsReady() error {
	if b.nc.IsConnected() {
		return nil
	}
	return unavailable("NATS connection is %s", strings.ToLower(b.nc.Status().String()))
}

// ---- health and stats -------------------------------------------------------

func (b *backend) healthEndpoint(context.Context, any) (any, error) {
	status, body := health(strings.ToLower(b.nc.Status().String()))
	r := reply{Status: status, Body: body}
	if status != http.StatusOK {
		r.RetryAfter = retryAfterUnavailable
	}
	return r, nil
}

// statsEndpoint counts managed Pods by phase (Kubernetes) and claims by
// phase (claim-router's tenants.list), both at once.
func (b *backend) statsEndpoint(ctx context.Context, _ any) (any, error) {
	if err := b.requireKube(); err != nil {
		return nil, err
	}
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	type claimsResult struct {
		list messages.TenantList
		err  error
	}
	claims := make(chan claimsResult, 1)
	go func() {
		l, err := b.listTenants(ctx, messages.TenantListRequest{})
		claims <- claimsResult{l, err}
	}()
	kctx, cancel := context.WithTimeout(ctx, b.requestTimeout)
	defer cancel()
	var pods corev1.PodList
	podErr := b.kube.List(kctx, &pods, client.InNamespace(b.namespace), client.MatchingLabels{v1alpha1.LabelManaged: "true"})
	c := <-claims
	if podErr != nil {
		return nil, kubeError("pods", "", podErr)
	}
	if c.err != nil {
		return nil, c.err
	}
	phases := make([]string, len(pods.Items))
	for i := range pods.Items {
		phases[i] = string(pods.Items[i].Status.Phase)
	}
	return reply{Status: http.StatusOK, Body: statsBody{
		Instances: countPhases(phases, "Unknown"),
		Claims:    countPhases(claimPhases(c.list.Tenants), string(messages.PhasePending)),
	}}, nil
}

// ---- workloads and pools (Kubernetes API) ----------------------------------

func (b *backend) requireKube() error {
	if b.kube == nil {
		return unavailable("this edge runs without a Kubernetes client")
	}
	return nil
}

// kubeContext bounds one Kubernetes call.
func (b *backend) kubeContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := b.requireKube(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.requestTimeout)
	return ctx, cancel, nil
}

func (b *backend) meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: b.namespace}
}

func (b *backend) createWorkload(ctx context.Context, request any) (any, error) {
	req := request.(workloadWrite)
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	w := &v1alpha1.BoilerhouseWorkload{ObjectMeta: b.meta(req.name), Spec: req.spec}
	if err := b.kube.Create(ctx, w); err != nil {
		return nil, kubeError("workload", req.name, err)
	}
	return reply{Status: http.StatusCreated, Body: newWorkloadView(w), Location: "/api/v1/workloads/" + req.name}, nil
}

func (b *backend) listWorkloads(ctx context.Context, _ any) (any, error) {
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var list v1alpha1.BoilerhouseWorkloadList
	if err := b.kube.List(ctx, &list, client.InNamespace(b.namespace)); err != nil {
		return nil, kubeError("workloads", "", err)
	}
	out := make([]workloadView, len(list.Items))
	for i := range list.Items {
		out[i] = newWorkloadView(&list.Items[i])
	}
	return reply{Status: http.StatusOK, Body: out}, nil
}

func (b *backend) getWorkload(ctx context.Context, request any) (any, error) {
	name := request.(nameRequest).name
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var w v1alpha1.BoilerhouseWorkload
	if err := b.kube.Get(ctx, client.ObjectKey{Namespace: b.namespace, Name: name}, &w); err != nil {
		return nil, kubeError("workload", name, err)
	}
	return reply{Status: http.StatusOK, Body: newWorkloadView(&w)}, nil
}

// updateWorkload replaces the spec of an existing workload, retrying when
// someone else wrote it in between.
func (b *backend) updateWorkload(ctx context.Context, request any) (any, error) {
	req := request.(workloadWrite)
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var w v1alpha1.BoilerhouseWorkload
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := b.kube.Get(ctx, client.ObjectKey{Namespace: b.namespace, Name: req.name}, &w); err != nil {
			return err
		}
		w.Spec = req.spec
		return b.kube.Update(ctx, &w)
	})
	if err != nil {
		return nil, kubeError("workload", req.name, err)
	}
	return reply{Status: http.StatusOK, Body: newWorkloadView(&w)}, nil
}

func (b *backend) deleteWorkload(ctx context.Context, request any) (any, error) {
	name := request.(nameRequest).name
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if err := b.kube.Delete(ctx, &v1alpha1.BoilerhouseWorkload{ObjectMeta: b.meta(name)}); err != nil {
		return nil, kubeError("workload", name, err)
	}
	return reply{Status: http.StatusOK, Body: deletedBody{Status: "deleted", Name: name}}, nil
}

func (b *backend) createPool(ctx context.Context, request any) (any, error) {
	req := request.(poolWrite)
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	p := &v1alpha1.BoilerhousePool{ObjectMeta: b.meta(req.name), Spec: req.spec}
	if err := b.kube.Create(ctx, p); err != nil {
		return nil, kubeError("pool", req.name, err)
	}
	return reply{Status: http.StatusCreated, Body: newPoolView(p), Location: "/api/v1/pools/" + req.name}, nil
}

func (b *backend) listPools(ctx context.Context, _ any) (any, error) {
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var list v1alpha1.BoilerhousePoolList
	if err := b.kube.List(ctx, &list, client.InNamespace(b.namespace)); err != nil {
		return nil, kubeError("pools", "", err)
	}
	out := make([]poolView, len(list.Items))
	for i := range list.Items {
		out[i] = newPoolView(&list.Items[i])
	}
	return reply{Status: http.StatusOK, Body: out}, nil
}

func (b *backend) getPool(ctx context.Context, request any) (any, error) {
	name := request.(nameRequest).name
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var p v1alpha1.BoilerhousePool
	if err := b.kube.Get(ctx, client.ObjectKey{Namespace: b.namespace, Name: name}, &p); err != nil {
		return nil, kubeError("pool", name, err)
	}
	return reply{Status: http.StatusOK, Body: newPoolView(&p)}, nil
}

func (b *backend) updatePool(ctx context.Context, request any) (any, error) {
	req := request.(poolWrite)
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var p v1alpha1.BoilerhousePool
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := b.kube.Get(ctx, client.ObjectKey{Namespace: b.namespace, Name: req.name}, &p); err != nil {
			return err
		}
		p.Spec = req.spec
		return b.kube.Update(ctx, &p)
	})
	if err != nil {
		return nil, kubeError("pool", req.name, err)
	}
	return reply{Status: http.StatusOK, Body: newPoolView(&p)}, nil
}

func (b *backend) deletePool(ctx context.Context, request any) (any, error) {
	name := request.(nameRequest).name
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if err := b.kube.Delete(ctx, &v1alpha1.BoilerhousePool{ObjectMeta: b.meta(name)}); err != nil {
		return nil, kubeError("pool", name, err)
	}
	return reply{Status: http.StatusOK, Body: deletedBody{Status: "deleted", Name: name}}, nil
}

// ---- snapshots (overlay-store over NATS) ------------------------------------

// listSnapshots asks the overlay-store for the stored overlay versions; 503
// when no overlay-store answers.
func (b *backend) listSnapshots(ctx context.Context, request any) (any, error) {
	req := request.(messages.OverlayListRequest)
	if err := b.natsReady(); err != nil {
		return nil, err
	}
	list, err := b.listOverlays(ctx, req)
	if err != nil {
		return nil, err
	}
	snaps := list.Snapshots
	if snaps == nil {
		snaps = []messages.Snapshot{}
	}
	return reply{Status: http.StatusOK, Body: snaps}, nil
}

// ---- instances (managed Pods; Kubernetes API) --------------------------------

// managedPod reads a Pod and answers 404 unless it is managed by Boilerhouse,
// so that the instance routes never touch anything else in the namespace.
func (b *backend) managedPod(ctx context.Context, id string) (*corev1.Pod, error) {
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	var p corev1.Pod
	if err := b.kube.Get(ctx, client.ObjectKey{Namespace: b.namespace, Name: id}, &p); err != nil {
		return nil, kubeError("instance", id, err)
	}
	if !managed(&p) {
		return nil, notFound("instance %q not found", id)
	}
	return &p, nil
}

// claimTimesOf asks the claim-router, best effort, when the claims holding
// instances became Active (the tenant's claims, or every tenant's when tenant
// is empty). Failures leave claimedAt out rather than failing the read.
func (b *backend) claimTimesOf(ctx context.Context, tenant string) map[string]*time.Time {
	if !b.nc.IsConnected() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.requestTimeout)
	defer cancel()
	if tenant != "" {
		v, err := b.getTenant(ctx, messages.TenantGetRequest{TenantID: tenant})
		if err != nil {
			return nil
		}
		return claimTimes([]messages.TenantView{v})
	}
	l, err := b.listTenants(ctx, messages.TenantListRequest{})
	if err != nil {
		return nil
	}
	return claimTimes(l.Tenants)
}

func (b *backend) listInstances(ctx context.Context, _ any) (any, error) {
	if err := b.requireKube(); err != nil {
		return nil, err
	}
	times := make(chan map[string]*time.Time, 1)
	go func() { times <- b.claimTimesOf(ctx, "") }()
	kctx, cancel := context.WithTimeout(ctx, b.requestTimeout)
	defer cancel()
	var pods corev1.PodList
	err := b.kube.List(kctx, &pods, client.InNamespace(b.namespace), client.MatchingLabels{v1alpha1.LabelManaged: "true"})
	claimed := <-times
	if err != nil {
		return nil, kubeError("instances", "", err)
	}
	out := make([]instanceView, 0, len(pods.Items))
	for i := range pods.Items {
		if managed(&pods.Items[i]) {
			out = append(out, newInstanceView(&pods.Items[i], claimed))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return reply{Status: http.StatusOK, Body: out}, nil
}

func (b *backend) getInstance(ctx context.Context, request any) (any, error) {
	id := request.(instanceRequest).id
	p, err := b.managedPod(ctx, id)
	if err != nil {
		return nil, err
	}
	var claimed map[string]*time.Time
	if t := p.Labels[v1alpha1.LabelTenant]; t != "" {
		claimed = b.claimTimesOf(ctx, t)
	}
	return reply{Status: http.StatusOK, Body: newInstanceView(p, claimed)}, nil
}

// requireStreams fails with 503 when the edge has no REST config for
// pods/log and pods/exec.
func (b *backend) requireStreams() error {
	if b.clientset == nil || b.restConfig == nil {
		return unavailable("this edge runs without a Kubernetes REST config: logs and exec are unavailable")
	}
	return nil
}

// instanceLogs returns the log of a container (main by default) of a
// managed Pod through the API server's pods/log, as text/plain.
func (b *backend) instanceLogs(ctx context.Context, request any) (any, error) {
	req := request.(logsRequest)
	if err := b.requireStreams(); err != nil {
		return nil, err
	}
	p, err := b.managedPod(ctx, req.id)
	if err != nil {
		return nil, err
	}
	container, err := podContainer(p, req.container)
	if err != nil {
		return nil, err
	}
	if err := containerReady(p, container, false); err != nil {
		return nil, err
	}
	b.podActivity(p)
	ctx, cancel := context.WithTimeout(ctx, b.requestTimeout)
	defer cancel()
	limit := maxLogBytes
	stream, err := b.clientset.CoreV1().Pods(b.namespace).
		GetLogs(req.id, &corev1.PodLogOptions{Container: container, TailLines: req.tail, LimitBytes: &limit}).Stream(ctx)
	if err != nil {
		return nil, kubeError("logs of instance", req.id, err)
	}
	defer stream.Close()
	text, err := io.ReadAll(io.LimitReader(stream, maxLogBytes))
	if err != nil {
		return nil, classify(fmt.Errorf("reading the logs of instance %q: %w", req.id, err))
	}
	return reply{Status: http.StatusOK, Body: plainText(text)}, nil
}

// instanceExec runs a command in a container (main by default) of a managed
// Pod through the API server's pods/exec (SPDY), bounded by ExecTimeout. A
// command that exits non-zero is still a 200 with its exit code.
func (b *backend) instanceExec(ctx context.Context, request any) (any, error) {
	req := request.(execRequest)
	if err := b.requireStreams(); err != nil {
		return nil, err
	}
	p, err := b.managedPod(ctx, req.id)
	if err != nil {
		return nil, err
	}
	container, err := podContainer(p, req.body.Container)
	if err != nil {
		return nil, err
	}
	if err := containerReady(p, container, true); err != nil {
		return nil, err
	}
	b.podActivity(p)
	u := b.clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace(b.namespace).Name(req.id).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: req.body.Command, Stdout: true, Stderr: true},
			scheme.ParameterCodec).URL()
	ex, err := remotecommand.NewSPDYExecutor(b.restConfig, http.MethodPost, u)
	if err != nil {
		return nil, fmt.Errorf("exec in instance %q: %w", req.id, err)
	}
	ectx, cancel := context.WithTimeout(ctx, b.execTimeout)
	defer cancel()
	stdout, stderr := &cappedBuffer{limit: maxExecOutput}, &cappedBuffer{limit: maxExecOutput}
	err = ex.StreamWithContext(ectx, remotecommand.StreamOptions{Stdout: stdout, Stderr: stderr})
	var exit utilexec.ExitError
	switch {
	case err == nil:
		return reply{Status: http.StatusOK, Body: newExecReply(stdout, stderr, 0)}, nil
	case errors.As(err, &exit) && exit.Exited():
		return reply{Status: http.StatusOK, Body: newExecReply(stdout, stderr, exit.ExitStatus())}, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case ectx.Err() != nil:
		return nil, &apiError{Status: http.StatusGatewayTimeout, Code: string(messages.CodeDeadlineExceeded),
			Message: fmt.Sprintf("exec in instance %q did not finish within %s", req.id, b.execTimeout)}
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return nil, kubeError("instance", req.id, err)
	}
	return nil, &apiError{Status: http.StatusBadGateway, Code: string(messages.CodeInternal), Message: "exec failed: " + err.Error()}
}

// destroyInstance deletes a managed Pod (the one just read: a UID
// precondition). Nothing is saved and the claim is left alone; the
// claim-router learns of the deletion from pool-manager's instance event.
func (b *backend) destroyInstance(ctx context.Context, request any) (any, error) {
	id := request.(instanceRequest).id
	p, err := b.managedPod(ctx, id)
	if err != nil {
		return nil, err
	}
	ctx, cancel, err := b.kubeContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	uid := p.UID
	if err := b.kube.Delete(ctx, &corev1.Pod{ObjectMeta: b.meta(id)}, client.Preconditions{UID: &uid}); err != nil {
		return nil, kubeError("instance", id, err)
	}
	return reply{Status: http.StatusOK, Body: destroyedBody{Status: "destroyed", Instance: id}}, nil
}
