package idlereaper

// Probing of idle.watchDirs.
//
// A claim whose record has WatchDirs is probed by exec into container
// "main" of its instance (through the API server, see
// overlaystore.KubeExecutor) every probeInterval: a shell command prints the
// newest modification time (seconds since the epoch, fractional) of any
// entry under the dirs. When the value grows compared to the previous probe
// of the same claim life, the probe counts as activity at the probe's time,
// through the same path as bh.v1.activity messages (so the debounce
// applies). The first probe of a claim life only sets the baseline.
//
// Every replica probes every claim it tracks (all replicas track all Active
// claims): this multiplies the exec load by the replica count, but activity
// is idempotent (the idle key write is a compare-and-set that only moves
// lastActivity forward), so the result is the same as with one prober.

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"time"

	"boilerhouse.dev/messages"
)

// Defaults of the watchDirs probing.
const (
	DefaultProbeConcurrency = 16
	DefaultProbeTimeout     = 10 * time.Second
	// ProbeContainer is the container the probe execs into.
	ProbeContainer = "main"

	minProbeInterval = 500 * time.Millisecond
	maxProbeInterval = 30 * time.Second
)

// probeInterval is timeout/4, at least 500 ms, at most 30 s.
func probeInterval(rec messages.ClaimRecord) time.Duration {
	d := timeout(rec) / 4
	if d < minProbeInterval {
		d = minProbeInterval
	}
	if d > maxProbeInterval {
		d = maxProbeInterval
	}
	return d
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// probeCommand prints the newest modification time under dirs (empty output
// when none of them exists).
func probeCommand(dirs []string) []string {
	var b strings.Builder
	b.WriteString("find")
	for _, d := range dirs {
		if strings.HasPrefix(d, "-") {
			d = "./" + d // never an option of find
		}
		b.WriteByte(' ')
		b.WriteString(shellQuote(d))
	}
	b.WriteString(` -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1`)
	return []string{"sh", "-c", b.String()}
}

// parseProbe reads the output of probeCommand: 0 for empty output.
func parseProbe(out []byte) (float64, error) {
	s := string(bytes.TrimSpace(out))
	if s == "" {
		return 0, nil
	}
	return strconv.ParseFloat(s, 64)
}

// probeState is the loop's knowledge of one claim's probing.
type probeState struct {
	claimID  string
	next     time.Time // when the next probe is due
	inFlight bool
	have     bool    // a baseline was read for this claim life
	newest   float64 // the newest modification time seen
}

type probeResult struct {
	key     string
	claimID string
	at      time.Time
	newest  float64
	err     error
}

// probeDirs starts the due probes (bounded by the semaphore; the rest stay
// due for the next scan) and forgets claims no longer tracked. Loop only.
func (r *Reaper) probeDirs(ctx context.Context, now time.Time) {
	for key, st := range r.probes {
		if rec, ok := r.claims[key]; !ok || rec.ID != st.claimID || len(rec.WatchDirs) == 0 {
			if !st.inFlight {
				delete(r.probes, key)
			}
		}
	}
	for key, rec := range r.claims {
		if len(rec.WatchDirs) == 0 || rec.InstanceID == "" {
			continue
		}
		if r.exec == nil {
			if !r.warnedNoExec {
				r.warnedNoExec = true
				r.log.Info("no Kubernetes config: idle.watchDirs are ignored", "claim", rec.ID, "workload", rec.Workload)
			}
			return
		}
		st, ok := r.probes[key]
		if !ok || st.claimID != rec.ID {
			if ok && st.inFlight {
				continue // the old life's probe is still running
			}
			st = &probeState{claimID: rec.ID}
			r.probes[key] = st
		}
		if st.inFlight || now.Before(st.next) {
			continue
		}
		select {
		case r.probeSem <- struct{}{}:
		default:
			return // at the concurrency bound: the rest are probed on a later scan
		}
		st.inFlight = true
		st.next = now.Add(probeInterval(rec))
		go r.probe(ctx, key, rec, now)
	}
}

func (r *Reaper) probe(ctx context.Context, key string, rec messages.ClaimRecord, at time.Time) {
	defer func() { <-r.probeSem }()
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	var out bytes.Buffer
	err := r.exec.Exec(pctx, r.cfg.Namespace, rec.InstanceID, ProbeContainer, probeCommand(rec.WatchDirs), nil, &out)
	cancel()
	res := probeResult{key: key, claimID: rec.ID, at: at, err: err}
	if err == nil {
		res.newest, res.err = parseProbe(out.Bytes())
	}
	select {
	case r.probeResults <- res:
	case <-ctx.Done():
	}
}

// probed handles one probe's result. Loop only.
func (r *Reaper) probed(ctx context.Context, res probeResult) {
	st, ok := r.probes[res.key]
	if !ok || st.claimID != res.claimID {
		return
	}
	st.inFlight = false
	if res.err != nil {
		r.log.Debug("watchDirs probe failed", "key", res.key, "claim", res.claimID, "err", res.err)
		return
	}
	grew := st.have && res.newest > st.newest
	if !st.have || res.newest > st.newest {
		st.newest = res.newest
	}
	st.have = true
	if !grew {
		return
	}
	if _, ok := r.claims[res.key]; !ok {
		return
	}
	at := res.at
	if now := r.cfg.Now(); at.After(now) {
		at = now
	}
	if cur, ok := r.pending[res.key]; !ok || at.After(cur) {
		r.pending[res.key] = at
	}
	r.flush(ctx, res.key, false)
}
