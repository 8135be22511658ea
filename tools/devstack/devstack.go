// Package devstack runs the whole of Boilerhouse from one process: embedded NATS and every
// service in it; a local control plane (or the cluster KUBECONFIG names) and the dev node in it
// or as its child processes (Config.DevNodeCommand). It is what `make run` starts and what the
// end-to-end tests drive.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/kubeapply"
	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/pkg/natsx"
)

// Config says where the stack keeps its state and which ports it serves.
type Config struct {
	// Root is the repository (deploy/ is read from it); default: found from the working directory.
	Root string
	// StateDir holds the kubeconfig, the NATS store and tool links; default Root/.devstack.
	StateDir string
	// HTTPAddr is the REST listener (default ":3000").
	HTTPAddr string
	// NATSPort is the embedded NATS client port (default 4222).
	NATSPort int
	// Namespace of every managed object (default "boilerhouse").
	Namespace string
	// Kubeconfig of a real cluster; empty starts the local control plane and the dev node.
	Kubeconfig string
	// NoSync turns off the flush of every JetStream write (faster, loses acknowledged writes on
	// power loss); only for measuring what durability costs.
	NoSync bool
	// Examples applies deploy/examples once the services run.
	Examples bool
	// ControlPlaneNice is the nice value of the local etcd and kube-apiserver (0: unchanged).
	ControlPlaneNice int
	// DevNodeCommand runs the dev node of the local control plane as a child process: the
	// program and its first arguments, to which -kubeconfig, -state-dir and -log-part are
	// added. Empty runs it in this process. Like a kubelet, the dev node is better off in a
	// process of its own: its Pod cache and every Pod's server are then not marked by the
	// collections of the process that answers claims.
	DevNodeCommand []string
	Logger         *slog.Logger
	// Ready, if set, is called once everything serves.
	Ready func(Info)
}

// Info tells where the running stack answers.
type Info struct {
	REST       string
	NATS       string
	Kubeconfig string
	StateDir   string
	Local      bool
}

func (c *Config) defaults() error {
	if c.Root == "" {
		root, err := localkube.RepoRoot()
		if err != nil {
			return err
		}
		c.Root = root
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join(c.Root, ".devstack")
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":3000"
	}
	if c.NATSPort == 0 {
		c.NATSPort = 4222
	}
	if c.Namespace == "" {
		c.Namespace = "boilerhouse"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return os.MkdirAll(c.StateDir, 0o755)
}

// Run starts the stack and blocks until ctx ends or a part fails; it stops everything it started.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	log := cfg.Logger
	started := time.Now()

	// Ports first: failing after a 7 s control-plane start for a busy port helps nobody.
	if err := portsFree(cfg.HTTPAddr, cfg.NATSPort); err != nil {
		return err
	}

	kube, err := startKube(ctx, cfg)
	if err != nil {
		return err
	}
	defer kube.stop()

	ns, err := natsx.StartEmbedded(natsx.EmbeddedOptions{
		StoreDir: filepath.Join(cfg.StateDir, "nats"), Port: cfg.NATSPort, ServerName: "boilerhouse-dev",
		SyncAlways: !cfg.NoSync, Logger: log.With("part", "nats"),
	})
	if err != nil {
		return err
	}
	defer natsx.Shutdown(ns)
	nc, err := natsx.ConnectInProcess(ns, nats.Name("devstack"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := natsx.Provision(ctx, js, natsx.ProvisionConfig{}); err != nil {
		return err
	}
	if err := kube.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cfg.Namespace}}); client.IgnoreAlreadyExists(err) != nil {
		return fmt.Errorf("namespace %s: %w", cfg.Namespace, err)
	}
	if err := linkTools(cfg.StateDir, kube.plane); err != nil {
		log.Warn("tool links", "err", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var g run.Group
	g.Add(func() error { <-ctx.Done(); return nil }, func(error) { cancel() })
	if kube.plane != nil {
		if err := addDevNode(&g, ctx, cancel, cfg, kube); err != nil {
			return err
		}
	}
	svc, err := newServices(ctx, cfg, kube.config, kube.client, ns)
	if err != nil {
		return err
	}
	svc.add(&g, ctx, cancel)

	info := Info{REST: restURL(cfg.HTTPAddr), NATS: ns.ClientURL(), Kubeconfig: kube.kubeconfig, StateDir: cfg.StateDir, Local: kube.plane != nil}
	g.Add(func() error {
		if cfg.Examples {
			objs, err := kubeapply.Files(ctx, kube.client, filepath.Join(cfg.Root, "deploy", "examples"), cfg.Namespace)
			if err != nil {
				return fmt.Errorf("examples: %w", err)
			}
			log.Info("applied examples", "objects", len(objs))
		}
		if err := waitHTTP(ctx, info.REST+"/api/v1/health"); err != nil {
			return err
		}
		log.Info("boilerhouse is up", "rest", info.REST, "nats", info.NATS, "kubeconfig", info.Kubeconfig,
			"localControlPlane", info.Local, "startup", time.Since(started).Round(time.Millisecond))
		if cfg.Ready != nil {
			cfg.Ready(info)
		}
		<-ctx.Done()
		return nil
	}, func(error) { cancel() })
	err = g.Run()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

type kube struct {
	plane      *localkube.Plane
	config     *rest.Config
	client     client.Client
	kubeconfig string
}

func (k *kube) stop() {
	if k.plane != nil {
		_ = k.plane.Stop()
	}
}

// startKube uses the cluster cfg.Kubeconfig names, else starts a local control plane.
func startKube(ctx context.Context, cfg Config) (*kube, error) {
	if cfg.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
		c, err := client.New(rc, client.Options{Scheme: localkube.NewScheme()})
		if err != nil {
			return nil, err
		}
		if _, err := kubeapply.Files(ctx, c, filepath.Join(cfg.Root, "deploy", "crds"), ""); err != nil {
			return nil, fmt.Errorf("install CRDs: %w", err)
		}
		return &kube{config: rc, client: c, kubeconfig: cfg.Kubeconfig}, nil
	}
	plane, err := localkube.Start(ctx, localkube.Options{
		CRDDir:     filepath.Join(cfg.Root, "deploy", "crds"),
		Kubeconfig: filepath.Join(cfg.StateDir, "kubeconfig"),
	})
	if err != nil {
		return nil, err
	}
	if cfg.ControlPlaneNice > 0 {
		// Only a matter of speed: the stack runs the same without it.
		if err := plane.Renice(cfg.ControlPlaneNice); err != nil {
			cfg.Logger.Warn("control plane keeps its CPU priority", "err", err)
		}
	}
	return &kube{plane: plane, config: plane.Config, client: plane.Client, kubeconfig: plane.Kubeconfig}, nil
}

// linkTools puts kubectl and nats into StateDir/bin so the README's commands work with
// PATH=$PWD/.devstack/bin:$PATH.
func linkTools(stateDir string, plane *localkube.Plane) error {
	bin := filepath.Join(stateDir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return err
	}
	links := map[string]string{"nats": filepath.Join(cache, "boilerhouse", "bin", "nats-"+NATSCLIVersion)}
	if plane != nil {
		links["kubectl"] = plane.Kubectl()
	}
	for name, target := range links {
		link := filepath.Join(bin, name)
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	return nil
}

// NATSCLIVersion is the nats CLI that `make tools` installs.
const NATSCLIVersion = "v0.5.0"

func portsFree(httpAddr string, natsPort int) error {
	for _, addr := range []string{httpAddr, net.JoinHostPort("127.0.0.1", strconv.Itoa(natsPort))} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("devstack: %s is busy (another `make run`?): %w", addr, err)
		}
		l.Close()
	}
	return nil
}

func restURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}
