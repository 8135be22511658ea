package loadgen

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// FsyncProbe measures the disk under a run: every interval it appends a small record to a file
// in a directory and fsyncs it, as JetStream does for each write with SyncAlways. A KV write on
// the claim path cannot answer before its fsync, so this bounds what the run can reach.
type FsyncProbe struct {
	stop     context.CancelFunc
	done     chan struct{}
	interval time.Duration
	lat      []time.Duration
	err      error
}

// StartFsyncProbe starts probing in dir until ctx ends or Stop.
func StartFsyncProbe(ctx context.Context, dir string, interval time.Duration) *FsyncProbe {
	ctx, stop := context.WithCancel(ctx)
	p := &FsyncProbe{stop: stop, done: make(chan struct{}), interval: interval}
	go func() {
		defer close(p.done)
		f, err := os.CreateTemp(dir, "fsync-probe-*")
		if err != nil {
			p.err = err
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		rec := make([]byte, 256)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			start := time.Now()
			if _, err := f.Write(rec); err != nil {
				p.err = err
				return
			}
			if err := f.Sync(); err != nil {
				p.err = err
				return
			}
			p.lat = append(p.lat, time.Since(start))
		}
	}()
	return p
}

// Stop ends the probe and writes its latency line.
func (p *FsyncProbe) Stop(w io.Writer) error {
	p.stop()
	<-p.done
	if p.err != nil {
		return fmt.Errorf("fsync probe: %w", p.err)
	}
	if len(p.lat) == 0 {
		return fmt.Errorf("fsync probe: no samples")
	}
	slices.Sort(p.lat)
	fmt.Fprintf(w, "fsync of a 256-byte append on the NATS store's disk during the run (%d, one per %s): p50 %s, p99 %s, max %s\n",
		len(p.lat), p.interval, ms(Percentile(p.lat, 50)), ms(Percentile(p.lat, 99)), ms(p.lat[len(p.lat)-1]))
	return nil
}
