// Package deploycheck_test applies deploy/base to a real kube-apiserver and checks that every
// object is accepted, that the workloads are hardened, and that each service's RBAC grants
// exactly the Kubernetes access its code uses: every permission in the tables below is
// allowed (SubjectAccessReview), a selection of others is denied, and the service account's
// rules (SelfSubjectRulesReview, impersonated) hold nothing beyond the table. It also runs
// each Deployment from its service's image under runc, with its Pod's security context and
// service account token, until it is ready (containers_test.go).
package deploycheck_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/kubeapply"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/svcmain"
	"boilerhouse.dev/tools/images"
)

// perm is one authorization check: verbs on group/resource[/sub] in the namespace (ns ""
// with cluster set: cluster-wide), optionally of one named object.
type perm struct {
	group, resource, sub string
	name                 string
	verbs                []string
	ns                   string // default: the kustomization's namespace
	cluster              bool
	why                  string // the code that needs it (needed) or why it must not be granted
}

const crdGroup = "boilerhouse.dev"

// needs is, per service account, the Kubernetes access its code uses.
var needs = map[string][]perm{
	// services/claimrouter speaks only NATS.
	"claim-router": nil,
	"edge": {
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"get", "list", "create", "update", "delete"},
			why: "services/edge/endpoints.go: workload routes (Create, List, Get, Get+Update in RetryOnConflict, Delete)"},
		{group: crdGroup, resource: "boilerhousepools", verbs: []string{"get", "list", "create", "update", "delete"},
			why: "services/edge/endpoints.go: pool routes (Create, List, Get, Get+Update, Delete)"},
		{resource: "pods", verbs: []string{"get", "list", "delete"},
			why: "services/edge/endpoints.go: stats/listInstances List, managedPod Get, destroyInstance Delete"},
		{resource: "pods", sub: "log", verbs: []string{"get"},
			why: "services/edge/endpoints.go instanceLogs: GetLogs(...).Stream"},
		{resource: "pods", sub: "exec", verbs: []string{"create"},
			why: "services/edge/endpoints.go instanceExec: remotecommand.NewSPDYExecutor POST"},
	},
	"pool-manager": {
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"get", "list", "watch"},
			why: "services/poolmanager/controllers.go informers; instances.go readyWorkload GetAPIReader().Get"},
		{group: crdGroup, resource: "boilerhousepools", verbs: []string{"get", "list", "watch"},
			why: "services/poolmanager/controllers.go: pools controller and informer"},
		{group: crdGroup, resource: "boilerhouseworkloads", sub: "status", verbs: []string{"patch"},
			why: "services/poolmanager/controllers.go: workload-status Status().Patch"},
		{group: crdGroup, resource: "boilerhousepools", sub: "status", verbs: []string{"patch"},
			why: "services/poolmanager/controllers.go: pool reconcile Status().Patch"},
		{resource: "pods", verbs: []string{"get", "list", "watch", "create", "update", "delete"},
			why: "services/poolmanager: Pod informer (events.go, controllers.go), Create (instances.go boot, controllers.go fill), Update (controllers.go syncInstance), Delete (deletePod, Retire)"},
		{group: "coordination.k8s.io", resource: "leases", verbs: []string{"create"},
			why: "manager.go LeaderElection: controller-runtime creates Lease boilerhouse-pool-manager"},
		{group: "coordination.k8s.io", resource: "leases", name: "boilerhouse-pool-manager", verbs: []string{"get", "update"},
			why: "manager.go LeaderElection: acquire and renew the Lease"},
		{resource: "events", verbs: []string{"create", "patch"},
			why: "leader election's core/v1 recorder (controller-runtime pkg/leaderelection GetEventRecorderFor)"},
	},
	"overlay-store": {
		{resource: "pods", verbs: []string{"get"},
			why: "services/overlaystore/overlaystore.go instance and execFailure: kube.Get Pod"},
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"get"},
			why: "services/overlaystore/overlaystore.go dirs: kube.Get workload"},
		{resource: "pods", sub: "exec", verbs: []string{"get", "create"},
			why: "services/overlaystore/exec.go KubeExecutor: WebSocket GET (get + create since 1.35), SPDY POST fallback (create)"},
	},
	"idle-reaper": {
		{resource: "pods", sub: "exec", verbs: []string{"get", "create"},
			why: "services/idlereaper/watchdirs.go probe through overlaystore.KubeExecutor (WebSocket GET, SPDY POST)"},
	},
	"cr-sync": {
		{group: crdGroup, resource: "boilerhouseclaims", verbs: []string{"get", "list", "watch", "create", "update"},
			why: "services/crsync/crsync.go: Watches/List (cache), createFor Create, finalizer Update"},
		{group: crdGroup, resource: "boilerhouseclaims", sub: "status", verbs: []string{"update"},
			why: "services/crsync/crsync.go: Status().Update"},
		{group: "events.k8s.io", resource: "events", verbs: []string{"create", "patch"},
			why: "services/crsync/crsync.go: mgr.GetEventRecorder (events.k8s.io/v1 sink)"},
		{resource: "events", verbs: []string{"create", "patch"},
			why: "leader election's core/v1 recorder (controller-runtime pkg/leaderelection GetEventRecorderFor)"},
		{group: "coordination.k8s.io", resource: "leases", verbs: []string{"create"},
			why: "crsync.go LeaderElection: controller-runtime creates Lease boilerhouse-cr-sync"},
		{group: "coordination.k8s.io", resource: "leases", name: "boilerhouse-cr-sync", verbs: []string{"get", "update"},
			why: "crsync.go LeaderElection: acquire and renew the Lease"},
	},
}

// mustNot is, per service account, access that it must not have, on top of forEveryone.
var mustNot = map[string][]perm{
	"claim-router": {
		{resource: "pods", verbs: []string{"get", "list"}, why: "speaks only NATS"},
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"get"}, why: "speaks only NATS"},
		{resource: "pods", sub: "exec", verbs: []string{"create"}, why: "speaks only NATS"},
	},
	"edge": {
		{resource: "pods", verbs: []string{"create", "update", "patch", "watch"}, why: "edge reads Pods directly (no cache) and writes them only by delete"},
		{resource: "pods", sub: "exec", verbs: []string{"get"}, why: "edge execs over SPDY (POST) only"},
		{resource: "pods", sub: "attach", verbs: []string{"create"}, why: "no attach"},
		{resource: "pods", sub: "portforward", verbs: []string{"create"}, why: "no port-forward"},
		{group: crdGroup, resource: "boilerhouseclaims", verbs: []string{"get", "create", "delete"}, why: "claims go over NATS"},
		{group: crdGroup, resource: "boilerhouseworkloads", sub: "status", verbs: []string{"update", "patch"}, why: "status is pool-manager's"},
		{resource: "pods", verbs: []string{"delete"}, ns: "default", why: "namespaced Role only"},
	},
	"pool-manager": {
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"create", "update", "delete"}, why: "spec is the user's (edge)"},
		{group: crdGroup, resource: "boilerhousepools", verbs: []string{"create", "update", "delete"}, why: "spec is the user's (edge)"},
		{resource: "pods", sub: "exec", verbs: []string{"create"}, why: "no exec"},
		{resource: "pods", verbs: []string{"patch"}, why: "labels change by Update"},
		{group: "coordination.k8s.io", resource: "leases", name: "boilerhouse-cr-sync", verbs: []string{"get", "update"}, why: "not its Lease"},
		{group: "coordination.k8s.io", resource: "leases", verbs: []string{"delete", "list"}, why: "leader election needs neither"},
		{resource: "pods", verbs: []string{"create", "delete"}, ns: "default", why: "namespaced Role only"},
	},
	"overlay-store": {
		{resource: "pods", verbs: []string{"list", "watch", "delete", "update"}, why: "reads single Pods only"},
		{resource: "pods", sub: "exec", verbs: []string{"create"}, ns: "default", why: "namespaced Role only"},
		{group: crdGroup, resource: "boilerhouseworkloads", verbs: []string{"list", "update"}, why: "reads single workloads only"},
	},
	"idle-reaper": {
		{resource: "pods", verbs: []string{"get", "list"}, why: "probes by exec only"},
		{resource: "pods", sub: "exec", verbs: []string{"create"}, ns: "default", why: "namespaced Role only"},
	},
	"cr-sync": {
		{group: crdGroup, resource: "boilerhouseclaims", verbs: []string{"delete", "patch"}, why: "the finalizer goes by Update"},
		{resource: "pods", verbs: []string{"get", "list"}, why: "cr-sync never reads Pods"},
		{group: "coordination.k8s.io", resource: "leases", name: "boilerhouse-pool-manager", verbs: []string{"update"}, why: "not its Lease"},
	},
}

// forEveryone must be denied to every service account.
var forEveryone = []perm{
	{resource: "secrets", verbs: []string{"get", "list", "watch"}, cluster: true, why: "no Secret access anywhere"},
	{resource: "secrets", verbs: []string{"get", "list"}, why: "no Secret access in the namespace either"},
	{resource: "configmaps", verbs: []string{"get", "list"}, why: "no ConfigMap access"},
	{resource: "serviceaccounts", sub: "token", verbs: []string{"create"}, why: "no minting of tokens"},
	{group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", verbs: []string{"create", "update"}, cluster: true, why: "no RBAC writes"},
	{group: "rbac.authorization.k8s.io", resource: "rolebindings", verbs: []string{"create"}, why: "no RBAC writes"},
	{group: "rbac.authorization.k8s.io", resource: "roles", verbs: []string{"escalate", "bind"}, why: "no escalation"},
	{resource: "users", verbs: []string{"impersonate"}, cluster: true, why: "no impersonation"},
	{resource: "nodes", verbs: []string{"get", "list"}, cluster: true, why: "the product never touches nodes"},
	{resource: "nodes", sub: "proxy", verbs: []string{"get", "create"}, cluster: true, why: "no kubelet API"},
	{resource: "pods", verbs: []string{"list"}, cluster: true, why: "no cluster-wide reads"},
	{group: "apps", resource: "deployments", verbs: []string{"update", "patch"}, why: "services do not manage themselves"},
}

// TestMain gives controller-runtime a logger, so that its clients do not complain with a stack
// trace that they have none.
func TestMain(m *testing.M) {
	svcmain.UseLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

func TestDeployBase(t *testing.T) {
	ctx := context.Background()
	root, err := localkube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files := readKustomization(t, filepath.Join(root, "deploy"), "")
	var namespace string // the services' namespace, set by deploy/base
	for _, f := range files {
		switch {
		case f.namespace == "":
		case namespace == "":
			namespace = f.namespace
		case namespace != f.namespace:
			t.Fatalf("two namespaces: %s and %s", namespace, f.namespace)
		}
	}
	if namespace == "" {
		t.Fatal("no kustomization sets a namespace")
	}

	plane, err := localkube.Start(ctx, localkube.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plane.Stop() })

	// A client that keeps the API server's warnings: PodSecurity (namespace.yaml enforces
	// "restricted") warns about a Deployment whose Pods it would reject.
	warnings := &warningLog{}
	cfg := rest.CopyConfig(plane.Config)
	cfg.WarningHandlerWithContext = warnings
	c, err := client.New(cfg, client.Options{Scheme: plane.Scheme})
	if err != nil {
		t.Fatal(err)
	}

	var applied []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := kubeapply.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", f.path, err)
		}
		if len(objs) == 0 {
			t.Fatalf("%s: no objects", f.path)
		}
		for _, o := range objs {
			if err := kubeapply.Apply(ctx, c, o, f.namespace); err != nil {
				t.Fatalf("%s: %v", f.path, err)
			}
		}
		applied = append(applied, objs...)
	}
	if w := warnings.take(); len(w) > 0 {
		t.Errorf("API server warnings while applying deploy/base:\n  %s", strings.Join(w, "\n  "))
	}

	// What skaffold deploys is `kustomize build deploy`: it must build, to the same objects.
	t.Run("kustomize", func(t *testing.T) {
		out, err := exec.Command(plane.Kubectl(), "kustomize", filepath.Join(root, "deploy")).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize deploy: %v", err)
		}
		built, err := kubeapply.Decode(bytes.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		if len(built) != len(applied) {
			t.Errorf("kustomize builds %d objects, the kustomization files list %d", len(built), len(applied))
		}
		for _, o := range built {
			if o.GetNamespace() != "" && o.GetNamespace() != namespace {
				t.Errorf("%s %s in namespace %s, want %s", o.GetKind(), o.GetName(), o.GetNamespace(), namespace)
			}
		}
	})

	t.Run("accepted", func(t *testing.T) {
		kinds := map[string][]string{}
		for _, o := range applied {
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(o.GroupVersionKind())
			if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
				t.Errorf("%s %s/%s not stored: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				continue
			}
			kinds[o.GetKind()] = append(kinds[o.GetKind()], o.GetName())
		}
		services := slices.Sorted(maps.Keys(needs))
		if !slices.Equal(services, images.Services) { // make images builds what the Deployments run
			t.Errorf("services deployed %v, images built %v", services, images.Services)
		}
		want := map[string][]string{
			"Deployment":          services,
			"ServiceAccount":      append(slices.Clone(services), "nats"),
			"Role":                without(services, "claim-router"),
			"RoleBinding":         without(services, "claim-router"),
			"StatefulSet":         {"nats"},
			"Service":             {"edge", "nats", "nats-headless"},
			"PodDisruptionBudget": append(slices.Clone(services), "nats"),
		}
		for kind, names := range want {
			got := slices.Sorted(slices.Values(kinds[kind]))
			if !slices.Equal(got, slices.Sorted(slices.Values(names))) {
				t.Errorf("%s objects: got %v, want %v", kind, got, names)
			}
		}
		for _, kind := range []string{"ClusterRole", "ClusterRoleBinding"} {
			if len(kinds[kind]) > 0 {
				t.Errorf("cluster-scoped RBAC %s %v: nothing needs cluster scope", kind, kinds[kind])
			}
		}
	})

	// A node drain evicts at most one replica of each workload: every Deployment and
	// StatefulSet has one PodDisruptionBudget selecting its Pods, allowing one disruption.
	t.Run("disruption-budgets", func(t *testing.T) {
		var pdbs []policyv1.PodDisruptionBudget
		for _, o := range applied {
			if o.GetKind() == "PodDisruptionBudget" {
				var b policyv1.PodDisruptionBudget
				fromUnstructured(t, o, &b)
				pdbs = append(pdbs, b)
			}
		}
		for _, o := range applied {
			var template map[string]string
			switch o.GetKind() {
			case "Deployment":
				var d appsv1.Deployment
				fromUnstructured(t, o, &d)
				template = d.Spec.Template.Labels
			case "StatefulSet":
				var st appsv1.StatefulSet
				fromUnstructured(t, o, &st)
				template = st.Spec.Template.Labels
			default:
				continue
			}
			var covering []string
			for _, b := range pdbs {
				sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
				if err != nil {
					t.Fatalf("PodDisruptionBudget %s: %v", b.Name, err)
				}
				if !sel.Empty() && sel.Matches(labels.Set(template)) {
					covering = append(covering, b.Name)
					if b.Spec.MaxUnavailable == nil || b.Spec.MaxUnavailable.String() != "1" || b.Spec.MinAvailable != nil {
						t.Errorf("PodDisruptionBudget %s: maxUnavailable %v, minAvailable %v; want maxUnavailable 1 only",
							b.Name, b.Spec.MaxUnavailable, b.Spec.MinAvailable)
					}
				}
			}
			if len(covering) != 1 {
				t.Errorf("%s %s: its Pods are selected by the disruption budgets %v, want exactly one", o.GetKind(), o.GetName(), covering)
			}
		}
	})

	// The PodSecurity check above must be able to fail: a privileged Deployment, dry run,
	// draws warnings.
	t.Run("podsecurity-active", func(t *testing.T) {
		bad := &appsv1.Deployment{}
		bad.Name, bad.Namespace = "privileged-probe", namespace
		labels := map[string]string{"app": "privileged-probe"}
		bad.Spec.Selector = &metav1.LabelSelector{MatchLabels: labels}
		bad.Spec.Template.Labels = labels
		bad.Spec.Template.Spec.Containers = []corev1.Container{{Name: "c", Image: "x",
			SecurityContext: &corev1.SecurityContext{Privileged: new(true)}}}
		if err := c.Create(ctx, bad, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		if len(warnings.take()) == 0 {
			t.Fatal("no PodSecurity warning for a privileged Deployment: the warnings check proves nothing")
		}
	})

	t.Run("hardened", func(t *testing.T) {
		for _, o := range applied {
			var spec *corev1.PodSpec
			var replicas *int32
			switch o.GetKind() {
			case "Deployment":
				var d appsv1.Deployment
				fromUnstructured(t, o, &d)
				spec, replicas = &d.Spec.Template.Spec, d.Spec.Replicas
				if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
					t.Errorf("Deployment %s: replicas %v, want 2", o.GetName(), replicas)
				}
				if want := "boilerhouse/" + o.GetName() + ":dev"; spec.Containers[0].Image != want {
					t.Errorf("Deployment %s: image %s, want %s", o.GetName(), spec.Containers[0].Image, want)
				}
				if spec.ServiceAccountName != o.GetName() {
					t.Errorf("Deployment %s runs as service account %q", o.GetName(), spec.ServiceAccountName)
				}
			case "StatefulSet":
				var s appsv1.StatefulSet
				fromUnstructured(t, o, &s)
				spec = &s.Spec.Template.Spec
				if s.Spec.Replicas == nil || *s.Spec.Replicas != 3 {
					t.Errorf("StatefulSet %s: replicas %v, want 3", o.GetName(), s.Spec.Replicas)
				}
			default:
				continue
			}
			checkPodSpec(t, o.GetKind()+" "+o.GetName(), spec)
		}
	})

	// A service account with no bindings must be denied, or the reviews below prove nothing
	// (the API server authorizes with RBAC).
	// Each Deployment runs from its image as its Pod would: see runDeployments.
	t.Run("containers", func(t *testing.T) { runDeployments(ctx, t, plane, namespace) })

	t.Run("rbac-enforced", func(t *testing.T) {
		if allowed(ctx, t, plane.Client, namespace, "nobody", perm{resource: "pods"}, "get") {
			t.Fatal("an unbound service account may get pods: the API server does not enforce RBAC")
		}
	})
	baseline := rulesOf(ctx, t, plane.Config, namespace, "nobody")

	for sa, needed := range needs {
		t.Run("rbac/"+sa, func(t *testing.T) {
			for _, p := range needed {
				for _, v := range p.verbs {
					if !allowed(ctx, t, plane.Client, namespace, sa, p, v) {
						t.Errorf("%s cannot %s %s (needed by %s)", sa, v, p, p.why)
					}
				}
			}
			for _, p := range append(slices.Clone(mustNot[sa]), forEveryone...) {
				for _, v := range p.verbs {
					if allowed(ctx, t, plane.Client, namespace, sa, p, v) {
						t.Errorf("%s may %s %s, but must not: %s", sa, v, p, p.why)
					}
				}
			}
			// Nothing granted beyond the table: the account's rules in the namespace, less
			// what every authenticated account gets, are exactly the needed permissions.
			granted := rulesOf(ctx, t, plane.Config, namespace, sa)
			want := map[string]bool{}
			for _, p := range needed {
				for _, v := range p.verbs {
					want[tuple(p.group, p.resourcePath(), v, p.name)] = true
				}
			}
			for g := range granted {
				if !baseline[g] && !want[g] {
					t.Errorf("%s is granted %s, which no code needs", sa, g)
				}
			}
			for w := range want {
				if !granted[w] {
					t.Errorf("%s: rules review lacks %s", sa, w)
				}
			}
		})
	}
}

func (p perm) resourcePath() string {
	if p.sub != "" {
		return p.resource + "/" + p.sub
	}
	return p.resource
}

func (p perm) String() string {
	s := p.resourcePath()
	if p.group != "" {
		s += "." + p.group
	}
	if p.name != "" {
		s += " " + p.name
	}
	switch {
	case p.cluster:
		s += " (cluster-wide)"
	case p.ns != "":
		s += " in " + p.ns
	}
	return s
}

func tuple(group, resource, verb, name string) string {
	return fmt.Sprintf("%s %s.%s name=%q", verb, resource, group, name)
}

func saGroups(namespace string) []string {
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
}

// allowed asks a SubjectAccessReview whether service account sa may verb p.
func allowed(ctx context.Context, t *testing.T, c client.Client, namespace, sa string, p perm, verb string) bool {
	t.Helper()
	ns := namespace
	if p.ns != "" {
		ns = p.ns
	}
	if p.cluster {
		ns = ""
	}
	r := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:" + namespace + ":" + sa,
		Groups: saGroups(namespace),
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Group: p.group, Resource: p.resource, Subresource: p.sub, Name: p.name,
		},
	}}
	if err := c.Create(ctx, r); err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return r.Status.Allowed
}

// rulesOf is the set of (verb, resource, name) tuples service account sa holds in namespace,
// from a SelfSubjectRulesReview made as sa.
func rulesOf(ctx context.Context, t *testing.T, admin *rest.Config, namespace, sa string) map[string]bool {
	t.Helper()
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + namespace + ":" + sa, Groups: saGroups(namespace)}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: namespace}}
	if err := c.Create(ctx, r); err != nil {
		t.Fatalf("SelfSubjectRulesReview as %s: %v", sa, err)
	}
	if r.Status.Incomplete {
		t.Fatalf("rules review of %s incomplete: %s", sa, r.Status.EvaluationError)
	}
	out := map[string]bool{}
	for _, rule := range r.Status.ResourceRules {
		names := rule.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					for _, n := range names {
						out[tuple(g, res, v, n)] = true
					}
				}
			}
		}
	}
	return out
}

// checkPodSpec requires the hardened security context on the Pod and every container.
func checkPodSpec(t *testing.T, what string, spec *corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: Pod not runAsNonRoot", what)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: Pod seccompProfile is not RuntimeDefault", what)
	}
	for _, ctr := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := ctr.SecurityContext
		name := what + " container " + ctr.Name
		switch {
		case sc == nil:
			t.Errorf("%s: no securityContext", name)
			continue
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: root filesystem writable", name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: privilege escalation allowed", name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s: capabilities %+v, want drop [ALL] and no add", name, sc.Capabilities)
		}
		if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Requests.Cpu().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: needs cpu and memory requests and a memory limit", name)
		}
	}
}

// manifest is a file a kustomization lists, with the namespace that kustomization sets.
type manifest struct{ path, namespace string }

// readKustomization returns the files dir/kustomization.yaml lists, in order, following a
// listed directory (a base) into its own kustomization.yaml, as kustomize does.
func readKustomization(t *testing.T, dir, namespace string) []manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubeapply.Decode(bytes.NewReader(b))
	if err != nil || len(objs) != 1 {
		t.Fatalf("%s/kustomization.yaml: %d objects, %v", dir, len(objs), err)
	}
	if ns, _, _ := unstructured.NestedString(objs[0].Object, "namespace"); ns != "" {
		namespace = ns
	}
	resources, _, err := unstructured.NestedStringSlice(objs[0].Object, "resources")
	if err != nil || len(resources) == 0 {
		t.Fatalf("%s/kustomization.yaml: resources %v, %v", dir, resources, err)
	}
	var out []manifest
	for _, r := range resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.IsDir() {
			out = append(out, readKustomization(t, p, namespace)...)
			continue
		}
		out = append(out, manifest{path: p, namespace: namespace})
	}
	return out
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// warningLog collects the API server's warnings.
type warningLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningLog) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warningLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

func without(list []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(s string) bool { return s == drop })
}
