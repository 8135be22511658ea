#!/usr/bin/env bash
# The standard benchmark (make bench): a fresh dev stack, a pool sized for the load, then
#   0. the latency floor: pool claims at 20/s through REST and over NATS;
#   1. pool claims through REST, 200/s for 30 s, a new tenant per claim, with the API server's
#      write requests per claim counted from its metrics, fsync latency on the NATS store's disk,
#      the JetStream system calls that blocked 10 ms or more and the garbage collections (from an
#      execution trace of the stack), and how long each claim's Pod tenant label and
#      BoilerhouseClaim object trail its answer (loadgen watches them);
#   1a. existing claims through REST, 200/s for 10 s over 100 tenants already claimed, before run 1;
#   2. the same right after run 1, while the stack still works off its tail (CR mirroring, labels);
#   3. pool claims over NATS (claim-router directly), 200/s for 10 s;
#   4. overlays: 20 tenants write 10 MiB, release (extract), claim again (restore), release.
# The idle-release lag has a script of its own (loadtest/idle.sh, make bench-idle).
# Figures replace this script's marked block of docs/benchmarks.md, with the command lines that
# produced them; the rest of the file (notes, the idle block) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
RATE=${RATE:-200}
SECONDS_POOL=${SECONDS_POOL:-30}
POOL=${POOL:-$((RATE * (SECONDS_POOL + 10) + 600))}
out=docs/benchmarks.md
# NOSYNC=1 runs the same on a stack without per-write flushing, into a block of its own.
variant=${NOSYNC:+ -no-sync}
begin="<!-- begin bench.sh$variant: written by loadtest/bench.sh (make bench); keep these markers -->"
end="<!-- end bench.sh$variant -->"
work=$(mktemp -d)
sec=$work/section.md
# The stack serves pprof so that run 1 can be traced: its tail is explained by the system calls
# that blocked the NATS server (loadtest/stalls).
PPROF=${PPROF:-127.0.0.1:6061}
start_stack "$work" 3000 -examples=true -pprof "$PPROF" ${NOSYNC:+-no-sync}
go build -o "$work/stalls" ./loadtest/cmd/stalls
kubectl=$work/.devstack/bin/kubectl
kubeconfig=$work/.devstack/kubeconfig
store=$work/.devstack/nats # JetStream's store: loadgen measures fsync on its disk during runs
# A workload of its own with a slow readiness period: the dev node probes every Pod for real,
# and thousands of Pods probed every 2 s would measure the dev node, not the claim path.
curl -sf -X POST localhost:3000/api/v1/workloads -H 'Content-Type: application/json' -d '{"name":"bench","spec":{
  "version":"1","image":{"ref":"boilerhouse/demo:1"},"resources":{"vcpus":1,"memoryMb":64,"diskGb":0},
  "network":{"expose":[{"guest":8080}]},
  "health":{"intervalSeconds":60,"unhealthyThreshold":3,"httpGet":{"path":"/health","port":8080}}}}' >/dev/null
echo "bench: filling pool 'bench' to $POOL Pods"
curl -sf -X POST localhost:3000/api/v1/pools -H 'Content-Type: application/json' \
  -d "{\"name\":\"bench\",\"spec\":{\"workloadRef\":\"bench\",\"size\":$POOL,\"maxFillConcurrency\":200}}" >/dev/null
start=$(date +%s)
while :; do
  ready=$(curl -sf localhost:3000/api/v1/pools/bench | jq .status.ready)
  [ "$ready" -ge "$POOL" ] && break
  echo "bench: $ready/$POOL ready after $(( $(date +%s) - start ))s"
  sleep 5
done
fill=$(( $(date +%s) - start ))
# Refill slowly while measuring: on this one machine the API server, etcd and the dev node share
# the two cores with the claim path, and a refill storm of 200 Pod creations/s starves it.
curl -sf -X PUT localhost:3000/api/v1/pools/bench -H 'Content-Type: application/json' \
  -d "{\"name\":\"bench\",\"spec\":{\"workloadRef\":\"bench\",\"size\":$POOL,\"maxFillConcurrency\":${REFILL:-4}}}" >/dev/null
sleep 5
{
  echo "$begin"
  echo "## Claim path (${NOSYNC:+NOSYNC=1 }make bench)"
  echo
  echo "Written by \`make bench\` (loadtest/bench.sh) on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(go version | cut -d' ' -f3)."
  echo "\`make run\`'s binary runs embedded NATS with $([ -n "${NOSYNC:-}" ] && echo "periodic flushing (-no-sync)" || echo SyncAlways) and all services in one process, the"
  echo "services connected to NATS over TCP; its child processes run a local kube-apiserver and etcd at"
  echo "nice 19 (the dev stack's -control-plane-nice: a cluster's API server has machines of its own) and"
  echo "the dev node (a stand-in kubelet); GOGC 400 (the dev stack's default). The load"
  echo "generator is open-loop: latency counts from each claim's scheduled start. The pool's $POOL Pods"
  echo "filled in ${fill}s before the runs (maxFillConcurrency 200), then its maxFillConcurrency was set"
  echo "to ${REFILL:-4} so that refills do not starve the claim path of CPU on this shared machine."
  echo "Load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg); other dev stacks running: $(( $(stacks_running) - 1 ))."
  echo
  echo "### 0. Latency floor: pool claims at 20/s (REST, then NATS), a new tenant each"
  echo
} >"$sec"
"$work/loadgen" -target rest -workload bench -rate 20 -duration 5s -prefix floor -fsync-probe "$store" -out "$sec"
echo >>"$sec"
"$work/loadgen" -target nats -workload bench -rate 20 -duration 5s -prefix natsfloor -out "$sec"
{ echo; echo "### 1a. Existing claims through REST on a steady stack ($RATE/s for 10s over 100 tenants)"; echo; } >>"$sec"
"$work/loadgen" -target rest -workload bench -rate 20 -duration 5s -prefix steady >/dev/null
"$work/loadgen" -target rest -workload bench -rate "$RATE" -duration 10s -tenants 100 -prefix steady -out "$sec"
sleep 5
{ echo; echo "### 1. Pool claims through REST ($RATE/s for ${SECONDS_POOL}s, a new tenant each)"; echo; } >>"$sec"
api_writes "$kubectl" "$kubeconfig" >"$work/api.before"
curl -sfo "$work/run1.trace" "http://$PPROF/debug/pprof/trace?seconds=$SECONDS_POOL" &
tracer=$!
"$work/loadgen" -target rest -workload bench -rate "$RATE" -duration "${SECONDS_POOL}s" -prefix pool -fsync-probe "$store" -timeline 5s \
  -label-lag "$kubeconfig" -out "$sec"
api_writes "$kubectl" "$kubeconfig" >"$work/api.after"
wait $tracer
{ echo; echo "What held the stack up during run 1 (\`stalls -min 10ms -match nats-server\` on an execution trace of"
  echo "the stack taken during the run): the NATS server's system calls that blocked, then the stack's garbage"
  echo "collections. A file store write with SyncAlways fsyncs while it holds its stream's lock, so each fsync"
  echo "held up every claim that used that stream meanwhile; assists are the marking that allocating goroutines"
  echo "(claims among them) had to do during a collection, added up:"; echo
  "$work/stalls" -min 10ms -match nats-server "$work/run1.trace"; } >>"$sec"
{ echo; echo "API server write requests from the start of run 1 until its loadgen returned (claims, cr-sync mirroring, refills):"; echo;
  api_writes_per_claim "$work/api.before" "$work/api.after" $((RATE * SECONDS_POOL)); } >>"$sec"
{ echo; echo "### 2. Existing claims through REST right after run 1 ($RATE/s for 10s over 100 tenants)"; echo;
  echo "Run 1's loadgen returned once its claims' Pod labels and BoilerhouseClaim objects showed (or after 5 minutes)."; echo; } >>"$sec"
"$work/loadgen" -target rest -workload bench -rate 20 -duration 5s -prefix warm >/dev/null
"$work/loadgen" -target rest -workload bench -rate "$RATE" -duration 10s -tenants 100 -prefix warm -out "$sec"
{ echo; echo "### 3. Pool claims over NATS ($RATE/s for 10s, a new tenant each)"; echo; } >>"$sec"
"$work/loadgen" -target nats -workload bench -rate "$RATE" -duration 10s -prefix natspool -fsync-probe "$store" -out "$sec"
{ echo; echo "### 4. Overlays: 10 MiB per tenant (20 tenants, 2/s): release with extraction, then the restoring claim"; echo; } >>"$sec"
curl -sf -X PUT localhost:3000/api/v1/pools/demo -H 'Content-Type: application/json' \
  -d '{"name":"demo","spec":{"workloadRef":"demo","size":25,"maxFillConcurrency":10}}' >/dev/null
until [ "$(curl -sf localhost:3000/api/v1/pools/demo | jq .status.ready)" -ge 25 ]; do sleep 1; done
"$work/loadgen" -target rest -workload demo -rate 2 -data-bytes 10485760 -data-tenants 20 -prefix data -out "$sec"
echo "$end" >>"$sec"
write_section "$out" "$begin" "$end" "$sec"
echo "bench: wrote its block of $out"
