#!/usr/bin/env bash
# Runs tools/sanitize.py (every jaxbatmobile CUDA kernel, forward and derivatives, small problems) under
# compute-sanitizer's memcheck, racecheck, initcheck and synccheck, instrumenting our kernels only
# (mangled names contain "jbm"; XLA's own kernels run uninstrumented), except for initcheck (below). Logs under $OUT/sanitize-*.txt;
# exits non-zero if any tool reports an error or a case differs from the CPU reference.
# Usage (GPU machine, after the build): bash tools/sanitize.sh [tools, default: memcheck,racecheck,initcheck,synccheck] [parts]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# No preallocated pool: buffers are allocated as needed, so memcheck sees accesses past them. (With
# XLA_PYTHON_CLIENT_ALLOCATOR=platform, the exact bounds of each buffer, python segfaulted under the
# sanitizer on the H100 machine, 2026-11-23.)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# No autotuning of XLA's GEMMs (the SH second derivatives are dots): under compute-sanitizer the
# autotuner crashed the process before any case ran (H100, 2026-11-23: "sh-3-float64-2" segfaulted in
# 7 s with it, ran clean without it). Our kernels are not autotuned, so nothing under test changes.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
status=0
IFS=, read -ra tools <<< "${1:-memcheck,racecheck,initcheck,synccheck}"
tag=${2:+-${2//,/-}}  # the parts in the log's name, so runs of several parts one by one keep their logs
for tool in "${tools[@]}"; do
  t0=$(date +%s)
  # initcheck instruments every kernel: for it, memory that an uninstrumented kernel wrote (XLA's: a
  # cotangent, a reshaped weight) was never written. With the jbm filter it reported "Uninitialized
  # __global__ memory read" (H100, 2026-11-23, 20 reports each: tp_uvu_kernel slot x, conv slot y,
  # the generic forward of batmobile), all in kernels reading such operands; the unfiltered run tells
  # these apart from real reads of unwritten memory.
  filter=(--kernel-name kns=jbm); [ "$tool" = initcheck ] && filter=()
  compute-sanitizer --tool "$tool" "${filter[@]}" --error-exitcode 99 --print-limit 20 \
    python3 tools/sanitize.py ${2:-} > "$OUT/sanitize-$tool$tag.txt" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize-$tool$tag.txt" | tail -1)
  cases=$(grep -c "^ok " "$OUT/sanitize-$tool$tag.txt")
  echo "sanitize $tool: exit $rc, $cases cases ok, ${summary:-no summary} ($(( $(date +%s) - t0 )) s)"
  [ $rc -ne 0 ] && { status=1; grep -E "FAIL|Error|error" "$OUT/sanitize-$tool$tag.txt" | head -20; }
done
exit $status
