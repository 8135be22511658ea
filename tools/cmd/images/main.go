// Command images builds the Boilerhouse services' container images (package
// boilerhouse.dev/tools/images) without a container engine, and writes them to one tarball
// that `docker load`, `kind load image-archive` and `ctr images import` read, or pushes them
// to a registry, or both.
//
//	images [-out FILE] [-push REGISTRY] [-repo boilerhouse] [-tag dev] [-arch GOARCH] [service...]
//
// The images are named <repo>/<service>:<tag> (as deploy/base names them) in the tarball, and
// REGISTRY/<repo>/<service>:<tag> when pushed. Registry credentials come from the Docker
// config (~/.docker/config.json), as docker login leaves them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"boilerhouse.dev/pkg/localkube"
	"boilerhouse.dev/tools/images"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	out := fs.String("out", "", "write every image to this tarball")
	push := fs.String("push", "", "push every image to this registry (host[:port])")
	repo := fs.String("repo", "boilerhouse", "repository prefix of the image names")
	tag := fs.String("tag", "dev", "image tag")
	arch := fs.String("arch", runtime.GOARCH, "GOARCH of the binaries (amd64 or arm64)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" && *push == "" {
		return errors.New("nothing to do: give -out, -push or both")
	}
	services := fs.Args()
	if len(services) == 0 {
		services = images.Services
	}
	for _, s := range services {
		if !slices.Contains(images.Services, s) {
			return fmt.Errorf("unknown service %q (one of %v)", s, images.Services)
		}
	}
	root, err := localkube.RepoRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "boilerhouse-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	built := map[name.Reference]v1.Image{}
	for _, s := range services {
		bin := filepath.Join(tmp, s)
		if err := images.Build(ctx, filepath.Join(root, "services"), "./cmd/"+s, *arch, bin); err != nil {
			return err
		}
		img, err := images.Image(bin, s, *arch)
		if err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		ref, err := name.NewTag(fmt.Sprintf("%s/%s:%s", *repo, s, *tag))
		if err != nil {
			return err
		}
		built[ref] = img
		fmt.Fprintf(stdout, "%s %s\n", ref, digest)
		if *push != "" {
			dst, err := name.NewTag(fmt.Sprintf("%s/%s/%s:%s", *push, *repo, s, *tag))
			if err != nil {
				return err
			}
			if err := remote.Write(dst, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
				return fmt.Errorf("push %s: %w", dst, err)
			}
			fmt.Fprintf(stdout, "pushed %s\n", dst)
		}
	}
	if *out != "" {
		if err := tarball.MultiRefWriteToFile(*out, built); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", *out)
	}
	return nil
}
