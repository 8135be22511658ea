// Package kubeapply applies YAML manifests with server-side apply, the way `kubectl apply
// --server-side` would, so that tools never shell out to kubectl.
package kubeapply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FieldOwner is the field manager of everything applied here.
const FieldOwner = "boilerhouse"

// Decode splits a multi-document YAML stream into objects, skipping empty documents.
func Decode(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := yaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("manifest without kind or apiVersion: %v", u.Object)
		}
		objs = append(objs, u)
	}
}

// Files applies every *.yaml file of dir in name order; namespace fills in objects without one
// (cluster-scoped objects ignore it on the server).
func Files(ctx context.Context, c client.Client, dir, namespace string) ([]*unstructured.Unstructured, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var all []*unstructured.Unstructured
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		objs, err := Decode(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		for _, o := range objs {
			if err := Apply(ctx, c, o, namespace); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
		all = append(all, objs...)
	}
	return all, nil
}

// Apply server-side applies one object.
func Apply(ctx context.Context, c client.Client, u *unstructured.Unstructured, namespace string) error {
	if u.GetNamespace() == "" && namespace != "" {
		namespaced, err := c.IsObjectNamespaced(u)
		if err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
		if namespaced {
			u.SetNamespace(namespace)
		}
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return nil
}
