#!/usr/bin/env bash
# One call on the device machine: install peers' wheels, build, test, benchmark. Logs under $OUT.
# Usage (from the repo root, on the GPU machine): source tools/gpu_run.sh [pytest args, default: all tests, 8 workers]
# JBM_ARCH: CUDA architectures to build (default 90: the H100/H200 only, half the build time).
# After it, in the same call or a later warm one: export JBM_ARCH=90 PYTHONPATH=... before pytest.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export JBM_ARCH=${JBM_ARCH:-90}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# JBM_OEQ=1: openequivariance-jax from the sdists in .whl/sdist (its extension is built here, its Python
# package used from the unpacked source), for the benchmark's OEQ rows and Nequix's kernel=True path.
if [ "${JBM_OEQ:-0}" = 1 ]; then
  mkdir -p /tmp/oeq && for f in .whl/sdist/openequivariance*.tar.gz; do tar xzf "$f" -C /tmp/oeq; done
  python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site /tmp/oeq/openequivariance_extjax-*/ \
    > "$OUT/oeq-build.log" 2>&1 || tail -20 "$OUT/oeq-build.log"
  export PYTHONPATH=$PYTHONPATH:$(ls -d /tmp/oeq/openequivariance-[0-9]*) OEQ_NOTORCH=1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import scikit_build_core, nanobind, jax; print('skbuild', scikit_build_core.__version__, 'nanobind', nanobind.__version__, 'jax', jax.__version__)"
t0=$(date +%s)
python3 -m pip install -v --no-build-isolation --no-deps -e . -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$JBM_ARCH" \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep -E "jaxbatmobile: building|spill|stack frame" "$OUT/build.log" | sort | uniq -c | sort -rn | head -8
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "import jaxbatmobile as jb, jax; print(jb.build_info(), jax.devices())"
# Default: the whole suite on 8 pytest-xdist workers (on the image) sharing the GPU, each allocating as it
# goes: 285 s on the H100 (2026-11-23) against ~20 min in one process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ $# -eq 0 ] && set -- -n 8 --dist load tests
python3 -m pytest -q "$@" 2>&1 | tee "$OUT/pytest.log" | tail -15
