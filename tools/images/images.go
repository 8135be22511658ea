// Package images builds the services' container images without a container engine. Each
// image is one layer on no base image: a static Go binary at /usr/local/bin/<service>, run as
// user 65532 (the deployments' runAsUser). A static binary needs nothing else from the image:
// it reaches the API server with the Pod's service account files, and NATS without TLS
// certificates. The layer's files carry a fixed time, so the same source gives the same digest.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Services are the commands under services/cmd that ship as images, named as they are.
var Services = []string{"claim-router", "cr-sync", "edge", "idle-reaper", "overlay-store", "pool-manager"}

// BinDir is where an image keeps its binary.
const BinDir = "/usr/local/bin"

// User is the image's default user, the deployments' runAsUser (nonroot by convention).
const User = "65532:65532"

// epoch is the time of every file in a layer, for reproducible digests.
var epoch = time.Unix(0, 0).UTC()

// Build compiles the main package pkg of the Go module in dir (e.g. "./cmd/edge" in
// services) into a static Linux binary for goarch at out.
func Build(ctx context.Context, dir, pkg, goarch, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("images: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Image wraps the binary at bin into an image whose entrypoint runs it as name. The binary
// must be a static Linux executable for goarch: the image has no libc or loader.
func Image(bin, name, goarch string) (v1.Image, error) {
	if err := checkStatic(bin, goarch); err != nil {
		return nil, err
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	layerTar, err := layerTar(path.Join(strings.TrimPrefix(BinDir, "/"), name), exe)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", goarch
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config = v1.Config{
		Entrypoint: []string{path.Join(BinDir, name)},
		User:       User,
		WorkingDir: "/",
		Env:        []string{"PATH=" + BinDir},
		Labels:     map[string]string{"org.opencontainers.image.title": "boilerhouse " + name},
	}
	return mutate.ConfigFile(img, cfg)
}

// layerTar is a tar stream with file (a path without leading slash) and its parent
// directories, owned by root, dated epoch.
func layerTar(file string, content []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirs []string
	for d := path.Dir(file); d != "."; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: file, Mode: 0o755, Size: int64(len(content)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ErrNotStatic is returned for a binary that needs a dynamic loader.
var ErrNotStatic = errors.New("images: binary is dynamically linked (build it with CGO_ENABLED=0)")

// checkStatic reports whether bin is a Linux executable for goarch that needs no loader.
func checkStatic(bin, goarch string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("images: %s is not a Linux executable: %w", filepath.Base(bin), err)
	}
	defer f.Close()
	if want, ok := machines[goarch]; !ok || f.Machine != want {
		return fmt.Errorf("images: %s is built for %s, not %s", filepath.Base(bin), f.Machine, goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s", ErrNotStatic, filepath.Base(bin))
		}
	}
	return nil
}

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
