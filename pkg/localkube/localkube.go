// Package localkube starts a real etcd and kube-apiserver on this machine, installs the
// Boilerhouse CRDs and hands back clients. Tests and the dev stack use it; the binaries
// come from tools/controlplane/install.sh, built from the Go module proxy.
package localkube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"boilerhouse.dev/pkg/api/v1alpha1"
)

// K8sVersion is the version of the binaries that tools/controlplane/install.sh builds.
const K8sVersion = "1.37.2"

// Options configure a Plane. The zero value is fine inside this repository.
type Options struct {
	// CRDDir holds the CRD manifests; default: deploy/crds of the repository.
	CRDDir string
	// Kubeconfig, if set, is where an admin kubeconfig is written; default: a file in a temp dir.
	Kubeconfig string
	// Namespaces are created once the API server is up.
	Namespaces []string
	// Output shows the control plane's own logs on stdout/stderr.
	Output bool
}

// Plane is a running etcd + kube-apiserver.
type Plane struct {
	Config     *rest.Config
	Client     client.Client
	Scheme     *runtime.Scheme
	Kubeconfig string

	env    *envtest.Environment
	tmpDir string
}

// Scheme returns a scheme with the core Kubernetes types and the Boilerhouse CRDs.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// AssetsDir is where kube-apiserver, etcd and kubectl are: $KUBEBUILDER_ASSETS, else the
// install script's cache directory. It fails with the command to run when they are missing.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "boilerhouse", "k8s-v"+K8sVersion)
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("localkube: %s not found in %s: run tools/controlplane/install.sh (make assets) first", bin, dir)
		}
	}
	return dir, nil
}

// RepoRoot walks up from the working directory to the directory holding go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("localkube: go.work not found above the working directory")
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver, installs the CRDs and waits until they are served.
func Start(ctx context.Context, opts Options) (*Plane, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	if opts.CRDDir == "" {
		root, err := RepoRoot()
		if err != nil {
			return nil, err
		}
		opts.CRDDir = filepath.Join(root, "deploy", "crds")
	}
	scheme := NewScheme()
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{opts.CRDDir},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   scheme,
		AttachControlPlaneOutput: opts.Output,
		ControlPlaneStartTimeout: 2 * time.Minute,
	}
	// The dev node (tools/devnode) serves the kubelet API (exec, logs) on 127.0.0.1 and
	// publishes it as the Node's InternalIP; its Hostname address (the node name) does not
	// resolve, so the API server must try InternalIP first. With no kubelet CA and client
	// certificate flags it dials the kubelet endpoint without verifying its certificate.
	env.ControlPlane.GetAPIServer().Configure().
		Set("kubelet-preferred-address-types", "InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP")
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("localkube: start control plane: %w", err)
	}
	p := &Plane{Config: cfg, Scheme: scheme, env: env, Kubeconfig: opts.Kubeconfig}
	if p.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		_ = p.Stop()
		return nil, err
	}
	if err := p.writeKubeconfig(); err != nil {
		_ = p.Stop()
		return nil, err
	}
	for _, ns := range opts.Namespaces {
		err := p.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		if client.IgnoreAlreadyExists(err) != nil {
			_ = p.Stop()
			return nil, fmt.Errorf("localkube: create namespace %s: %w", ns, err)
		}
	}
	return p, nil
}

func (p *Plane) writeKubeconfig() error {
	if p.Kubeconfig == "" {
		dir, err := os.MkdirTemp("", "localkube-")
		if err != nil {
			return err
		}
		p.tmpDir = dir
		p.Kubeconfig = filepath.Join(dir, "kubeconfig")
	}
	if err := os.MkdirAll(filepath.Dir(p.Kubeconfig), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p.Kubeconfig, p.env.KubeConfig, 0o600)
}

// Renice lowers the CPU priority of etcd and kube-apiserver to this nice value (Linux; a no-op
// elsewhere). The dev stack uses it so that, on a small machine, the product it runs comes
// before the control plane, as on a cluster whose API server has machines of its own.
func (p *Plane) Renice(nice int) error { return renice(p.env.BinaryAssetsDirectory, nice) }

// PauseAPIServer freezes kube-apiserver (SIGSTOP) until resume is called (SIGCONT): it still
// accepts connections but answers nothing, as in a partition or a hung server, while etcd keeps
// its data. Outage tests use it; Linux only.
func (p *Plane) PauseAPIServer() (resume func() error, err error) {
	dir := p.env.BinaryAssetsDirectory
	if err := signalAPIServer(dir, syscall.SIGSTOP); err != nil {
		return nil, err
	}
	return func() error { return signalAPIServer(dir, syscall.SIGCONT) }, nil
}

// Kubectl is the path of the kubectl built next to the control plane.
func (p *Plane) Kubectl() string { return filepath.Join(p.env.BinaryAssetsDirectory, "kubectl") }

// Stop shuts the control plane down and removes its temporary files.
func (p *Plane) Stop() error {
	err := p.env.Stop()
	if p.tmpDir != "" {
		_ = os.RemoveAll(p.tmpDir)
	}
	return err
}
