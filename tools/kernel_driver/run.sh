#!/usr/bin/env bash
# On the GPU machine, after the build (source tools/gpu_run.sh): builds the JAX-free kernel driver against
# the build's kernel library, writes each call with tools/dump_tp_call.py, times it (checking the output
# against JAX's), and with NCU=1 profiles it with Nsight Compute (full set; text report per call).
# Usage: bash tools/kernel_driver/run.sh "PROBLEM SLOT [--det]" ...   e.g. "mace-medium z" "nequix-train x --det"
# Logs under $OUT: driver.txt, ncu-NAME.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
lib=$(find build -name libjbm_cuda_kernels.a | head -1)
[ -n "$lib" ] || { echo "no libjbm_cuda_kernels.a under build/: build first (tools/gpu_run.sh)"; exit 1; }
xla=$(python3 -c "import jax.ffi; print(jax.ffi.include_dir())")
nvcc -std=c++17 -O2 -Icsrc -I"$xla" tools/kernel_driver/driver.cc "$lib" -o /tmp/jbm_kernel_driver || exit 1
status=0
for spec in "$@"; do
  name=$(echo "$spec" | sed 's/ --/-/g; s/ /-/g')
  dir=/tmp/calls/$name
  # shellcheck disable=SC2086  # spec is "PROBLEM SLOT [--det]": split on purpose
  python3 tools/dump_tp_call.py $spec "$dir" || { status=1; continue; }
  /tmp/jbm_kernel_driver "$dir" 20 | tee -a "$OUT/driver.txt" || status=1
  if [ "${NCU:-0}" = 1 ]; then
    ncu --clock-control none --set full -k regex:'tp_|segment' --launch-count 2 -f -o "/tmp/ncu-$name" \
      /tmp/jbm_kernel_driver "$dir" 1 > "$OUT/ncu-$name.log" 2>&1 || status=1
    ncu --import "/tmp/ncu-$name.ncu-rep" --page details > "$OUT/ncu-$name.txt" 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|Compute \(SM\)" \
      "$OUT/ncu-$name.txt" | head -12
  fi
  rm -rf "$dir"
done
exit $status
