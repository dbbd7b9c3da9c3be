#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension for the card, run the CUDA tests, then the
# CUDA benchmarks. Every step writes its log under $OUT as it goes, so a run cut short still
# returns what it did; bench JSON lands in bench/results/ and is copied to $OUT.
#
#   OUT=/tmp/out bash bench/device_run.sh
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0, Hopper), MAX_JOBS (default 16),
# BENCHES (default "certified glm_hvp influence glm_cg knn"), TEST_SECONDS (default 100).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastunlearn-device}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-python3}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "build"
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import fastunlearn, json; print(json.dumps(fastunlearn.backend(), default=str))" \
  > "$OUT/backend.json" 2>&1
stamp "cuda tests"
# error-path tests are deselected: a C++ exception raised by an argument check has crashed the
# process on this image before (seen 2026-11-28), which would stop every later test
timeout "${TEST_SECONDS:-100}" $PY -m pytest -m cuda tests -q -p no:cacheprovider \
  --continue-on-collection-errors --timeout 60 --maxfail 20 -k "not bad and not error and not raise and not reject" \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$?"
tail -15 "$OUT/tests.log"
for name in ${BENCHES:-certified glm_hvp influence glm_cg knn}; do
  stamp "bench $name"
  timeout 120 $PY -m bench.run --device cuda --only "$name" > "$OUT/bench-$name.log" 2>&1
  echo "bench $name rc=$?"
  cp bench/results/*cuda*.json "$OUT/" 2>/dev/null
  tail -12 "$OUT/bench-$name.log"
done
stamp "done"
