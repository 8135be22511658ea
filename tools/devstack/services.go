package devstack

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/oklog/run"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"boilerhouse.dev/pkg/natsx"
	"boilerhouse.dev/services/claimrouter"
	"boilerhouse.dev/services/crsync"
	"boilerhouse.dev/services/edge"
	"boilerhouse.dev/services/idlereaper"
	"boilerhouse.dev/services/overlaystore"
	"boilerhouse.dev/services/poolmanager"
)

// services are the Boilerhouse services, each on its own NATS connection over TCP as in a
// cluster. Not in-process: an in-process connection is a synchronous net.Pipe, and under load a
// client blocked writing to it (holding its connection lock) while the server blocked delivering
// to that same client stalled the claim path for seconds; a socket's buffers decouple the two.
type services struct {
	conns  []*nats.Conn
	actors []func(context.Context) error
}

func newServices(_ context.Context, cfg Config, rc *rest.Config, kc client.Client, ns *server.Server) (*services, error) {
	s := &services{}
	conn := func(name string) (*nats.Conn, error) {
		nc, err := natsx.Connect(ns.ClientURL(), nats.Name(name))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		s.conns = append(s.conns, nc)
		return nc, nil
	}
	log := cfg.Logger

	nc, err := conn("pool-manager")
	if err != nil {
		return nil, err
	}
	pm, err := poolmanager.New(poolmanager.Config{RestConfig: rc, NATS: nc, Namespace: cfg.Namespace, Logger: log.With("service", "pool-manager")})
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, pm.Run)

	if nc, err = conn("claim-router"); err != nil {
		return nil, err
	}
	cr, err := claimrouter.New(claimrouter.Config{Conn: nc, Logger: log.With("service", "claim-router")})
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, cr.Run)

	// overlay-store: archives under the stack's state dir, so they outlive a restart.
	if nc, err = conn("overlay-store"); err != nil {
		return nil, err
	}
	store, err := overlaystore.New(overlaystore.Config{RestConfig: rc, NATS: nc, Namespace: cfg.Namespace,
		StoreDir: filepath.Join(cfg.StateDir, "snapshots"), Logger: log}) // it names itself "overlay-store"
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, store.Run)

	if nc, err = conn("idle-reaper"); err != nil {
		return nil, err
	}
	reaper, err := idlereaper.New(idlereaper.Config{Conn: nc, Logger: log, RestConfig: rc, Namespace: cfg.Namespace})
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, reaper.Run)

	if nc, err = conn("edge"); err != nil {
		return nil, err
	}
	ed, err := edge.New(edge.Config{NATS: nc, Client: kc, RestConfig: rc, Namespace: cfg.Namespace, Addr: cfg.HTTPAddr,
		Logger: log.With("service", "edge")})
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, ed.Run)

	// cr-sync: one BoilerhouseClaim per claim, kept in step with the claims bucket.
	if nc, err = conn("cr-sync"); err != nil {
		return nil, err
	}
	sync, err := crsync.New(crsync.Config{RestConfig: rc, NATS: nc, Namespace: cfg.Namespace, Logger: log})
	if err != nil {
		return nil, err
	}
	s.actors = append(s.actors, sync.Run)
	return s, nil
}

// add puts every service into g; any one failing stops the stack.
func (s *services) add(g *run.Group, ctx context.Context, cancel context.CancelFunc) {
	for _, actor := range s.actors {
		g.Add(func() error { return actor(ctx) }, func(error) { cancel() })
	}
	g.Add(func() error { <-ctx.Done(); return nil }, func(error) {
		for _, nc := range s.conns {
			nc.Close()
		}
	})
}
