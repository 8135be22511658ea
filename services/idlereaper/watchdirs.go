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

// syncProbe keeps the probe timer of key in step with its claim: a new
// claim life is probed at once (its baseline), then every probeInterval.
// Loop only.
func (r *Reaper) syncProbe(key string) {
	id := timerID{key, timerProbe}
	rec, ok := r.claims[key]
	st := r.probes[key]
	if !ok || len(rec.WatchDirs) == 0 || rec.InstanceID == "" {
		r.timers.remove(id)
		if st != nil && !st.inFlight {
			delete(r.probes, key)
		}
		return
	}
	if r.exec == nil {
		if !r.warnedNoExec {
			r.warnedNoExec = true
			r.log.Info("no Kubernetes config: idle.watchDirs are ignored", "claim", rec.ID, "workload", rec.Workload)
		}
		return
	}
	if st == nil || st.claimID != rec.ID {
		if st != nil && st.inFlight {
			return // the old life's probe is still running; its result calls here again
		}
		r.probes[key] = &probeState{claimID: rec.ID}
		r.timers.set(id, r.cfg.Now())
		return
	}
	if !st.inFlight && !r.timers.has(id) {
		r.timers.set(id, st.next)
	}
}

// probeDue starts the probe of key whose timer ran out, unless
// ProbeConcurrency probes are running (then it tries again after
// RetryInterval). Loop only.
func (r *Reaper) probeDue(ctx context.Context, key string) {
	rec, ok := r.claims[key]
	st := r.probes[key]
	if !ok || st == nil || st.claimID != rec.ID || st.inFlight || r.exec == nil {
		r.syncProbe(key)
		return
	}
	now := r.cfg.Now()
	select {
	case r.probeSem <- struct{}{}:
	default:
		r.timers.set(timerID{key, timerProbe}, now.Add(r.cfg.RetryInterval))
		return
	}
	st.inFlight = true
	st.next = now.Add(probeInterval(rec))
	go r.probe(ctx, key, rec, now)
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

// probed handles one probe's result: a newer modification time than the
// previous probe of the same claim life counts as activity. Loop only.
func (r *Reaper) probed(res probeResult) {
	defer r.syncProbe(res.key) // the next probe (or the next life's first)
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
	if rec, ok := r.claims[res.key]; !ok || rec.ID != res.claimID {
		return
	}
	at := res.at
	if now := r.cfg.Now(); at.After(now) {
		at = now
	}
	r.noteActivity(res.key, at)
}
