#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension for the card, run the CUDA tests, then the
# CUDA benchmarks. Every step writes its log under $OUT as it goes, so a run cut short still
# returns what it did; bench JSON lands in bench/results/ and is copied to $OUT.
#
#   OUT=/tmp/out bash bench/device_run.sh
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0, Hopper), MAX_JOBS (default 16),
# STEPS (default below: NAME:SECONDS pairs), TEST_SECONDS (default 100).
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
# Does a C++ argument-check error reach Python as an exception on this image? (It crashed the
# process here on 2026-11-28.) A child process tries; the libraries loaded tell why not.
$PY - > "$OUT/exceptions.txt" 2>&1 <<'PYEOF'
import subprocess, sys
code = (
    "import torch, fastunlearn\n"
    "try:\n"
    "    torch.ops.fastunlearn.glm_hvp(torch.zeros(3), torch.zeros(3, 1), torch.zeros(3, 1), 0.0)\n"
    "    print('no error raised')\n"
    "except Exception as e:\n"
    "    print('raised', type(e).__name__, str(e).splitlines()[0])\n"
    "maps = open('/proc/self/maps').read().split()\n"
    "print(sorted({p for p in maps if 'libstdc++' in p or 'libgcc_s' in p}))\n"
)
r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
print("child rc", r.returncode)
print(r.stdout)
print(r.stderr[-3000:])
PYEOF
{ ldd fastunlearn/_C*.so; c++ --version | head -1; } >> "$OUT/exceptions.txt" 2>&1
head -5 "$OUT/exceptions.txt"
stamp "cuda tests"
# error-path tests are deselected: a C++ exception raised by an argument check has crashed the
# process on this image before (seen 2026-11-28), which would stop every later test
timeout "${TEST_SECONDS:-100}" $PY -m pytest -m cuda tests -q -p no:cacheprovider \
  --continue-on-collection-errors --timeout 60 --maxfail 20 -k "not bad and not error and not raise and not reject" \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$?"
tail -15 "$OUT/tests.log"
# Steps in priority order (the lease is short): NAME:SECONDS. "profile" prints where the time of
# a certified removal goes; "knn-cpu" runs the farthest-k bench on this machine's CPU cores.
for step in ${STEPS:-certified:150 profile:120 influence:180 knn:240 glm_hvp:90 glm_cg:90 knn-cpu:240}; do
  name=${step%%:*}; seconds=${step##*:}
  stamp "$name (limit $seconds s)"
  case "$name" in
    profile) cmd=($PY -m bench.profile_certified --device cuda --out "$OUT") ;;
    knn-cpu) cmd=($PY -m bench.run --device cpu --only knn --full) ;;
    *) cmd=($PY -m bench.run --device cuda --only "$name") ;;
  esac
  timeout "$seconds" "${cmd[@]}" > "$OUT/bench-$name.log" 2>&1
  echo "$name rc=$?"
  cp bench/results/*cuda*.json "$OUT/" 2>/dev/null
  [ "$name" = knn-cpu ] && cp bench/results/knn-cpu.json "$OUT/knn-cpu-host.json" 2>/dev/null
  tail -12 "$OUT/bench-$name.log"
done
stamp "done"
