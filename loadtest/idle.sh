#!/usr/bin/env bash
# Idle release lag on the full stack (make bench-idle, issue 5): a fresh dev stack (make run's
# binary), a workload with idle.timeoutSeconds=$TIMEOUT and action destroy (release is a Pod
# delete), $N tenants claim it at $RATE/s, each on its own Pod, and nobody touches them; loadgen
# -idle-claims watches the claims and idle buckets and reports, per claim, the lag from the idle
# deadline to the stored Releasing write. $RUNS runs, one after the other on the same stack.
# The result replaces the marked idle section of docs/benchmarks.md (appended when absent);
# nothing else in the file is touched.
#
# Env: N (10000), RATE (claims/s, 60: every claim boots its Pod cold, and on 2 cores 100/s fell
# behind), TIMEOUT (s, 240: longer than the claim phase, so all N are Active before the first
# deadline), RUNS (2), PPROF (address for the stack's pprof), OUT (docs/benchmarks.md),
# HTTP_PORT (3100) and NATS_PORT (4322): not make run's ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
N=${N:-10000}
RATE=${RATE:-60}
TIMEOUT=${TIMEOUT:-240}
RUNS=${RUNS:-2}
HTTP_PORT=${HTTP_PORT:-3100}
NATS_PORT=${NATS_PORT:-4322}
out=${OUT:-docs/benchmarks.md}
api=http://localhost:$HTTP_PORT/api/v1
begin='<!-- begin idle.sh: written by loadtest/idle.sh (make bench-idle); keep these markers -->'
end='<!-- end idle.sh -->'

# Other dev stacks on this machine share the cores: say so with the figures.
others=$(stacks_running)
# The dev node's Pods hold files in its process, and JetStream's file store is the first thing to
# fail when none can be opened: raise the open-file limit where allowed; record the stack's peak.
ulimit -Hn 262144 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
work=$(mktemp -d)
start_stack "$work" "$HTTP_PORT" -examples=false -nats-port "$NATS_PORT" ${PPROF:+-pprof $PPROF}
( while kill -0 $pid 2>/dev/null; do ls /proc/$pid/fd | wc -l; sleep 2; done ) >"$work/fds" 2>/dev/null &
# The Pods serve no port: a port plays no part in an idle release, and the dev node holds an open
# listener per Pod with a port, which for 10,000 Pods comes close to the 20,000 open files this
# machine allows a process (root cannot raise it).
curl -sf -X POST "$api/workloads" -H 'Content-Type: application/json' -d "{\"name\":\"idle\",\"spec\":{
  \"version\":\"1\",\"image\":{\"ref\":\"boilerhouse/demo:1\"},\"resources\":{\"vcpus\":1,\"memoryMb\":64,\"diskGb\":0},
  \"idle\":{\"timeoutSeconds\":$TIMEOUT,\"action\":\"destroy\"}}}" >/dev/null

res=$work/result.md
: >"$res"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
for run in $(seq 1 "$RUNS"); do
  echo "idle: run $run of $RUNS: $N claims at $RATE/s, timeout ${TIMEOUT}s" >&2
  { echo; echo "### Run $run"; echo; } >>"$res"
  "$work/loadgen" -target rest -url "http://localhost:$HTTP_PORT" -nats "nats://127.0.0.1:$NATS_PORT" -workload idle \
    -rate "$RATE" -idle-claims "$N" -prefix "idle$run" >>"$res" || status=1
  rss=$(ps -o rss= -p $pid --ppid $pid | awk '{s+=$1} END{printf "%.1f GB", s/1048576}')
  fds=$(sort -n "$work/fds" | tail -1)
  echo "After the run: the stack (with kube-apiserver and etcd) $rss resident; its open files peaked at $fds (limit $(ulimit -n)); load average $(cut -d' ' -f1-3 /proc/loadavg)." >>"$res"
done

# p99 of every run against the target (the table row is "| deadline to Releasing | n | p50 | p90 | p99 | max |").
verdict=$(awk -F'|' '/^\| deadline to Releasing /{p=$6; gsub(/^ +| +$/,"",p); if (p+0 > 1000) miss=1; v=v (v?", ":"") p}
  END{print (v == "" ? "**not measured**" : miss ? "**missed**" : "met") " (p99 per run: " v ")"}' "$res")
section=$work/section.md
{
  echo "$begin"
  echo "## Idle release lag, $(echo "$N" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta') claims (full stack)"
  echo
  echo "\`N=$N RATE=$RATE TIMEOUT=$TIMEOUT RUNS=$RUNS loadtest/idle.sh\` (\`make bench-idle\`), written"
  echo "$(date -u +%Y-%m-%dT%H:%MZ): $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GB RAM, $(go version | cut -d' ' -f3); load average $load_before"
  echo "when the first run began; $others other dev stack(s) running when the script started."
  echo "\`make run\`'s binary runs embedded NATS with SyncAlways and all services, and as its child processes a"
  echo "local kube-apiserver and etcd and the dev node (one Pod per claim). Workload \`idle\`:"
  echo "idle.timeoutSeconds $TIMEOUT, action destroy, no overlays and no ports (see idle.sh), so a release"
  echo "is a Pod delete. Each run claims $N new tenants through REST at $RATE/s, every claim booting"
  echo "its own Pod (no pool), then sends no activity. Lag = when the claims bucket stored the claim's"
  echo "Releasing record (server timestamp) minus the idle deadline idle-reaper recorded for it"
  echo "(lastActivity + timeout, full precision). \"Deadline to Released\" is when the release (the Pod"
  echo "delete) finished. Runs follow each other on one stack."
  echo
  echo "Target p99 <= 1 s: $verdict."
  cat "$res"
  echo "$end"
} >"$section"
write_section "$out" "$begin" "$end" "$section"
echo "idle: wrote the idle section of $out (target p99 <= 1 s: $verdict)" >&2
exit $status
