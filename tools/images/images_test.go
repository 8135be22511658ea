package images

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// hello builds testdata/hello (a small static program) the way the services are built.
func hello(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "hello")
	if err := Build(ctx, ".", "./testdata/hello", runtime.GOARCH, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// files reads the image's only layer: name -> header and content.
func files(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, content := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, content
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name] = h
		if content[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func configName(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestImage(t *testing.T) {
	bin := hello(t)
	img, err := Image(bin, "hello", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != "/usr/local/bin/hello" {
		t.Errorf("entrypoint %q", got)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q, want the deployments' runAsUser", cfg.Config.User)
	}

	hdrs, content := files(t, img)
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if h := hdrs[d]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("directory %s missing: %+v", d, h)
		}
	}
	h := hdrs["usr/local/bin/hello"]
	if h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 || h.Uid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
		t.Fatalf("binary entry %+v", h)
	}
	if string(content["usr/local/bin/hello"]) != string(exe) {
		t.Fatal("the layer's binary differs from the one built")
	}
	if len(hdrs) != 4 {
		t.Errorf("layer holds %d entries, want the binary and its 3 directories", len(hdrs))
	}

	// What the layer holds runs by itself.
	run := filepath.Join(t.TempDir(), "run")
	if err := os.WriteFile(run, content["usr/local/bin/hello"], 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(run, "from", "the", "layer").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hello from the layer" {
		t.Fatalf("running the layer's binary: %q %v", out, err)
	}

	// The same source gives the same image.
	again, err := Image(hello(t), "hello", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := digest(t, img), digest(t, again); d1 != d2 {
		t.Errorf("two builds of the same source: %s and %s", d1, d2)
	}
}

// The tarball holds the images under their names, and a registry serves what was pushed.
func TestTarballAndRegistry(t *testing.T) {
	img, err := Image(hello(t), "hello", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	want := digest(t, img)

	ref, err := name.NewTag("boilerhouse/hello:dev")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "images.tar")
	if err := tarball.MultiRefWriteToFile(file, map[name.Reference]v1.Image{ref: img}); err != nil {
		t.Fatal(err)
	}
	loaded, err := tarball.ImageFromPath(file, &ref)
	if err != nil {
		t.Fatal(err)
	}
	// The tarball keeps the config and the layers; a reader rebuilds the manifest.
	if got, want := configName(t, loaded), configName(t, img); got != want {
		t.Errorf("tarball image config %s, want %s", got, want)
	}
	if _, content := files(t, loaded); len(content["usr/local/bin/hello"]) == 0 {
		t.Error("tarball image without the binary")
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	dst, err := name.NewTag(strings.TrimPrefix(srv.URL, "http://") + "/boilerhouse/hello:dev")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(dst)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest(t, pulled); got != want {
		t.Errorf("pulled %s, want %s", got, want)
	}
}

// An image has no loader or libc: a dynamically linked binary, or one for another
// architecture, is refused.
func TestImageRefusesWhatCannotRun(t *testing.T) {
	ls, err := exec.LookPath("ls") // dynamically linked on Debian
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Image(ls, "ls", runtime.GOARCH); !errors.Is(err, ErrNotStatic) {
		t.Errorf("Image(ls) = %v, want ErrNotStatic", err)
	}
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if _, err := Image(hello(t), "hello", other); err == nil || !strings.Contains(err.Error(), "not "+other) {
		t.Errorf("Image(hello built for %s, %s) = %v, want a wrong-architecture error", runtime.GOARCH, other, err)
	}
	if _, err := Image(filepath.Join("testdata", "hello", "main.go"), "hello", runtime.GOARCH); err == nil {
		t.Error("Image(a Go source file) succeeded")
	}
}
