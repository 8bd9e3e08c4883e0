#!/usr/bin/env bash
# Runs tools/sanitize.py (every jaxbatmobile CUDA kernel, forward and derivatives, small problems) under
# compute-sanitizer's memcheck, racecheck, initcheck and synccheck: each (tool, part) pair in its own
# process, JBM_SANITIZE_JOBS of them at a time on the one GPU. Logs in $OUT/sanitize-logs[-TAG].tgz (TOOL-PART[.tryN].txt)
# and the matrix in $OUT/sanitize-matrix[-TAG].txt; exits non-zero if any tool reports an error, a case differs
# from the CPU reference, or a pair never ran to its end.
# Usage (GPU machine, after the build): bash tools/sanitize.sh [tools] [parts]   (comma-separated lists)
# JBM_SANITIZE_TAG names the matrix and log tarball of a run (several runs in one call keep theirs).
#
# A process that dies with neither a tool report nor a failed case (a segfault of the instrumented
# python/XLA process: sessions 10-12 saw them at random cases, each of which then passed in another run,
# most often around XLA's cuBLAS GEMMs and autotuner) is run again, up to JBM_SANITIZE_TRIES times; the
# matrix records how many tries each pair took. A report or a failed case is never retried.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# No preallocated pool: buffers are allocated as needed, so memcheck sees accesses past them. (With
# XLA_PYTHON_CLIENT_ALLOCATOR=platform, the exact bounds of each buffer, python segfaulted under the
# sanitizer on the H100 machine, 2026-11-23.)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# No autotuning of XLA's GEMMs: under compute-sanitizer the autotuner crashed the process before any
# case ran (H100, 2026-11-23). Our kernels are not autotuned, so nothing under test changes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
TOOLS=${1:-memcheck,racecheck,initcheck,synccheck}
# The force steps (sh_conv, three convs deep) one per process: the tool crashed most often in them.
PARTS=${2:-sh,tp,batmobile,conv-uvu-float32,conv-uvu-float64,conv-uvw-float32,conv-uvw-float64,shaped-conv,$(
  echo force-step-float{32,64}-{atomic,det} | tr ' ' ,)}
TAG=${JBM_SANITIZE_TAG:+-$JBM_SANITIZE_TAG}
export TRIES=${JBM_SANITIZE_TRIES:-3} LOGS="$OUT/sanitize$TAG" REF="$OUT/sanitize$TAG/reference.pkl"
mkdir -p "$LOGS"
# The CPU results, computed once without the sanitizer: the sanitized processes then run the GPU only
# (JAX_PLATFORMS=cuda), with python's faulthandler on so a crash names the case and the call it died in.
JAX_PLATFORMS=cpu python3 tools/sanitize.py --save-reference "$REF" "$PARTS" > "$LOGS/reference.txt" 2>&1 ||
  { tail -20 "$LOGS/reference.txt"; exit 1; }

sanitize_pair() {  # tool part -> one line of the matrix
  local tool=$1 part=$2 try rc log summary filter t0=$(date +%s)
  # initcheck instruments every kernel: with the jbm filter, memory that an uninstrumented kernel (XLA's)
  # wrote counts as never written, and it reported false "Uninitialized __global__ memory read"s
  # (H100, 2026-11-23). The other tools instrument our kernels only (mangled names contain "jbm").
  filter=(--kernel-name kns=jbm); [ "$tool" = initcheck ] && filter=()
  for try in $(seq 1 "$TRIES"); do
    log="$LOGS/$tool-$part.txt"; [ "$try" -gt 1 ] && log="$LOGS/$tool-$part.try$try.txt"
    JAX_PLATFORMS=cuda compute-sanitizer --tool "$tool" "${filter[@]}" --error-exitcode 99 --print-limit 20 \
      python3 -X faulthandler tools/sanitize.py --reference "$REF" "$part" > "$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1 | sed 's/^=* *//')
    # a finished pair: a clean run, a tool report (rc 99) or a failed case; anything else is a crash
    if [ $rc -eq 0 ] || [ $rc -eq 99 ] || grep -q "^FAIL " "$log"; then break; fi
  done
  local verdict=clean
  [ $rc -ne 0 ] && verdict="FAILED(exit $rc)"
  grep -q "sanitize: all cases ran" "$log" || verdict="$verdict,INCOMPLETE"
  printf "%-10s %-17s %-8s tries %d  %2d cases ok  %s  (%d s)\n" "$tool" "$part" "$verdict" "$try" \
    "$(grep -c '^ok ' "$log")" "${summary:-no summary}" $(( $(date +%s) - t0 ))
}
export -f sanitize_pair

IFS=, read -ra tools <<< "$TOOLS"; IFS=, read -ra parts <<< "$PARTS"
for tool in "${tools[@]}"; do for part in "${parts[@]}"; do echo "$tool $part"; done; done |
  xargs -P "${JBM_SANITIZE_JOBS:-4}" -L 1 bash -c 'sanitize_pair "$0" "$1"' 2>/dev/null | sort | tee "$OUT/sanitize-matrix$TAG.txt"
(cd "$OUT" && tar czf "sanitize-logs$TAG.tgz" "sanitize$TAG" && rm -rf "sanitize$TAG")  # one file to fetch
! grep -qv " clean " "$OUT/sanitize-matrix$TAG.txt"
