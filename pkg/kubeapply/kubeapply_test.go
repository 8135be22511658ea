package kubeapply_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/api/v1alpha1"
	"boilerhouse.dev/pkg/kubeapply"
	"boilerhouse.dev/pkg/localkube"
)

const manifests = `
apiVersion: v1
kind: Namespace
metadata:
  name: apply-test
---
# comment-only documents are skipped
---
apiVersion: boilerhouse.dev/v1alpha1
kind: BoilerhouseWorkload
metadata:
  name: demo
spec:
  version: "1"
  image: {ref: "demo:1"}
  resources: {vcpus: 1, memoryMb: 128, diskGb: 0}
`

func TestApplyIsIdempotentAndFillsNamespace(t *testing.T) {
	ctx := context.Background()
	plane, err := localkube.Start(ctx, localkube.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plane.Stop()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		objs, err := kubeapply.Files(ctx, plane.Client, dir, "apply-test")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 2 {
			t.Fatalf("applied %d objects, want 2", len(objs))
		}
	}
	var w v1alpha1.BoilerhouseWorkload
	if err := plane.Client.Get(ctx, client.ObjectKey{Namespace: "apply-test", Name: "demo"}, &w); err != nil {
		t.Fatalf("workload not applied into the namespace: %v", err)
	}
	if w.Spec.Resources.MemoryMb != 128 {
		t.Fatalf("spec not applied: %+v", w.Spec)
	}
	if _, err := kubeapply.Decode(strings.NewReader("kind: [")); err == nil {
		t.Fatal("malformed YAML accepted")
	}
	if _, err := kubeapply.Decode(strings.NewReader("metadata: {name: x}")); err == nil {
		t.Fatal("object without kind accepted")
	}
}
