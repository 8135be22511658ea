# Sourced by the benchmark scripts (bench.sh, idle.sh).

# start_stack WORK PORT [devstack flags...] builds the dev stack and loadgen into WORK, starts
# the stack on REST port PORT (state in WORK/.devstack, log in WORK/stack.log), stops it and
# removes WORK when the script exits, and returns once its REST API answers. Sets pid.
start_stack() {
  local work=$1 port=$2
  shift 2
  # Another stack on the port would answer the readiness check below and take the load.
  if curl -sf "localhost:$port/api/v1/health" >/dev/null; then
    echo "something already serves localhost:$port; stop it first" >&2
    return 1
  fi
  go build -o "$work/devstack" ./tools/cmd/devstack
  go build -o "$work/loadgen" ./loadtest/cmd/loadgen
  "$work/devstack" -state "$work/.devstack" -http ":$port" "$@" >"$work/stdout" 2>"$work/stack.log" &
  pid=$!
  trap "kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf '$work'" EXIT
  until curl -sf "localhost:$port/api/v1/health" >/dev/null; do
    kill -0 $pid 2>/dev/null || { tail -50 "$work/stack.log"; return 1; }
    sleep 0.5
  done
}

# Each script owns one marked block of docs/benchmarks.md.
# write_section FILE BEGIN END BLOCK replaces the lines from BEGIN to END in FILE with the
# contents of BLOCK (which includes both markers), or appends BLOCK when FILE has no BEGIN line.
# Everything outside the block, hand-written notes included, is left as it is.
write_section() {
  local out=$1 begin=$2 end=$3 block=$4
  if grep -qxF "$begin" "$out" 2>/dev/null; then
    awk -v b="$begin" -v e="$end" -v f="$block" '
      $0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
      skip && $0 == e { skip = 0; next }
      !skip' "$out" >"$out.tmp"
    mv "$out.tmp" "$out"
  else
    { [ -s "$out" ] && echo; cat "$block"; } >>"$out"
  fi
}

# api_writes KUBECTL KUBECONFIG prints the API server's count of write requests so far, one
# "verb resource[/subresource] count" line each, from its own metrics.
api_writes() {
  "$1" --kubeconfig "$2" get --raw /metrics | awk '
    /^apiserver_request_total\{/ && /verb="(POST|PUT|PATCH|DELETE|APPLY)"/ {
      match($0, /verb="[A-Z]+"/); v = substr($0, RSTART + 6, RLENGTH - 7)
      match($0, /resource="[^"]*"/); r = substr($0, RSTART + 10, RLENGTH - 11)
      s = ""; if (match($0, /subresource="[^"]+"/)) s = "/" substr($0, RSTART + 13, RLENGTH - 14)
      n[v " " r s] += $NF
    }
    END { for (k in n) print k, n[k] }' | sort
}

# api_writes_per_claim BEFORE AFTER CLAIMS prints a table of the writes between two api_writes
# outputs, per claim.
api_writes_per_claim() {
  join -a 2 -e 0 -o 0,1.2,2.2 <(awk '{print $1"_"$2, $3}' "$1" | sort) <(awk '{print $1"_"$2, $3}' "$2" | sort) |
    awk -v c="$3" 'BEGIN { print "| request | count | per claim |"; print "|---|---|---|" }
      { d = $3 - $2; if (d > 0) { sub("_", " ", $1); printf "| %s | %d | %.2f |\n", $1, d, d / c; t += d } }
      END { printf "| all writes | %d | %.2f |\n", t, t / c }'
}

# stacks_running prints how many dev stacks run on this machine (their dev node child processes,
# `devstack devnode ...`, not counted).
stacks_running() {
  pgrep -a -x devstack | grep -vc ' devnode ' || true
}
