#!/usr/bin/env bash
# SASS of our CUDA kernels without a GPU: compiles one .cu for sm_90 (or takes a built .o/.cubin/.so) and
# disassembles it with cuobjdump + nvdisasm, which this machine's CUDA lacks: they come from PyPI wheels
# (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) unpacked under /tmp/jbm-sass-tools on first use.
# Usage: bash tools/sass.sh [file.cu | file.o | file.cubin] [grep pattern for instruction lines]
#   bash tools/sass.sh csrc/cuda/tp_kernels.cu 'ATOMS|RED|CAS'   (~4 min to compile tp_kernels.cu)
# Example finding (2026-11-23): a float atomicAdd to shared memory is a CAS loop on sm_90
# (LDS, FADD, ATOMS.CAST.SPIN, BRA), while one to global memory is a single RED.E.ADD.F32.
set -euo pipefail
src=${1:?usage: tools/sass.sh FILE [PATTERN]}
pattern=${2:-}
tools=/tmp/jbm-sass-tools
if [ ! -x "$tools/bin/cuobjdump" ] || [ ! -x "$tools/bin/nvdisasm" ]; then
  mkdir -p "$tools/whl" "$tools/bin"
  python3 -m pip download -q --no-deps -d "$tools/whl" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm 2>&1 | grep -v WARNING || true
  for w in "$tools"/whl/*.whl; do python3 -m zipfile -e "$w" "$tools/unpacked"; done
  for b in cuobjdump nvdisasm; do
    cp "$(find "$tools/unpacked" -name "$b" -type f | head -1)" "$tools/bin/$b" && chmod +x "$tools/bin/$b"
  done
fi
export PATH="$tools/bin:$PATH"
root=$(cd "$(dirname "$0")/.." && pwd)
case "$src" in
  *.cu)
    obj=/tmp/jbm-sass-$(basename "$src" .cu).cubin
    nvcc -std=c++17 -arch=sm_90 -cubin -I"$root/csrc" -o "$obj" "$src"
    ;;
  *) obj=$src ;;
esac
if [ -n "$pattern" ]; then
  cuobjdump -sass "$obj" | grep -E "Function|$pattern"
else
  cuobjdump -sass "$obj"
fi
