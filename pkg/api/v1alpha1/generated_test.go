package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// controllerGen finds the pinned controller-gen that `make tools` installs.
func controllerGen(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CONTROLLER_GEN"); p != "" {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(cache, "boilerhouse", "bin", "controller-gen-v0.23.0")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("controller-gen not installed at %s: run `make tools` (make test does)", p)
	}
	return p
}

// TestGeneratedFilesAreCurrent fails when the committed deepcopy code or CRD manifests
// differ from what controller-gen makes of the types: run `make generate`.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	cg := controllerGen(t)
	objDir, crdDir := t.TempDir(), t.TempDir()
	cmd := exec.Command(cg, "object", "paths=./...", "output:object:dir="+objDir,
		"crd:crdVersions=v1", "paths=./...", "output:crd:artifacts:config="+crdDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, out)
	}
	compare := func(fresh, committed string) {
		want, err := os.ReadFile(fresh)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(committed)
		if err != nil {
			t.Fatalf("%s: %v (run `make generate`)", committed, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate`", committed)
		}
	}
	compare(filepath.Join(objDir, "zz_generated.deepcopy.go"), "zz_generated.deepcopy.go")
	fresh, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil || len(fresh) != 3 {
		t.Fatalf("controller-gen made %d CRDs (%v), want 3", len(fresh), err)
	}
	for _, f := range fresh {
		compare(f, filepath.Join("..", "..", "..", "deploy", "crds", filepath.Base(f)))
	}
	committed, _ := filepath.Glob(filepath.Join("..", "..", "..", "deploy", "crds", "*.yaml"))
	if len(committed) != len(fresh) {
		t.Errorf("deploy/crds holds %d files, controller-gen makes %d: run `make generate`", len(committed), len(fresh))
	}
}
