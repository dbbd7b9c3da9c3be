#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension for the card, run the CUDA tests, then the
# CUDA benchmarks. At most 8 files come back from $OUT, so every log goes to $LOG and after
# each step $LOG is packed into $OUT/logs.tgz and the bench JSON (bench/results/) is copied to
# $OUT: a run cut short still returns what it did.
#
#   OUT=/tmp/out bash bench/device_run.sh
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0, Hopper), MAX_JOBS (default 16),
# STEPS (default below: NAME:SECONDS pairs), SKIP_BUILD=1 (use the
# extension already built, e.g. for a dry run of the script on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastunlearn-device}
LOG=${LOG:-/tmp/fastunlearn-device-logs}
mkdir -p "$OUT" "$LOG"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export OMP_WAIT_POLICY=PASSIVE
PY=${PY:-python3}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
pack() {
  cp bench/results/*cuda*.json "$OUT/" 2>/dev/null
  tar czf "$OUT/logs.tgz" -C "$LOG" . 2>/dev/null
}

stamp "build"
if [ "${SKIP_BUILD:-0}" != 1 ] &&
   ! $PY -m pip install -v --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1; then
  tail -40 "$LOG/build.log"
  pack
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv > "$LOG/gpu.txt" 2>&1
$PY -c "import fastunlearn, json; print(json.dumps(fastunlearn.backend(), default=str))" \
  > "$LOG/backend.json" 2>&1
# Which C++ runtime the module uses (2026-11-30: the image's CXX=/opt/gcc/bin/g++ linked
# libstdc++ statically, so a thrown error crashed; setup.py now links torch's shared one):
# the link line, the toolchain, the module's runtime symbols and where they bind when an op
# raises (the "link" step's tests check the same as pass/fail)
{
  echo "== link line"; grep -E -- "-shared|x86_64-linux-gnu-g(cc|\+\+)" "$LOG/build.log" | tail -3
  echo "== sysconfig"; $PY -c "import sysconfig as s; [print(k, '=', s.get_config_var(k)) for k in ('CC', 'CXX', 'LDSHARED', 'LDCXXSHARED', 'LDFLAGS', 'CFLAGS')]"
  echo "== env"; env | grep -E "^(CC|CXX|LD|CFLAGS|CXXFLAGS|LDFLAGS|LDSHARED)=" || true
  echo "== ldd"; ldd fastunlearn/_C*.so; c++ --version | head -1
  echo "== C++ runtime symbols of the module (U: undefined, T: defined inside)"
  nm -D fastunlearn/_C*.so | grep -E "__cxa_throw|__gxx_personality|_Unwind_Resume|__cxa_allocate_exception" || true
  echo "== bindings when an op raises"
  LD_DEBUG=bindings $PY -c "import torch, fastunlearn.ops
try:
    torch.ops.fastunlearn.glm_hvp(torch.zeros(3), torch.zeros(3, 1), torch.zeros(3, 1), 0.0)
except Exception as e:
    print('raised', type(e).__name__)" 2>&1 | grep -E "_C\.abi3.*(cxa_throw|personality|Unwind_Resume|cxa_allocate|cxa_begin_catch)|raised" | head -20
} > "$LOG/link.txt" 2>&1
tail -1 "$LOG/link.txt"
# wheels carried for what the image lacks (opacus for the DP extractor's GPU test)
if ls build/wheels/*.whl > /dev/null 2>&1; then
  $PY -m pip install --no-deps --no-index build/wheels/*.whl > "$LOG/wheels.log" 2>&1
  tail -1 "$LOG/wheels.log"
fi
# Steps in priority order (the lease is short): NAME:SECONDS. "tests" runs the CUDA tests
# (pytest -m cuda, 6 xdist workers) without the error-path tests: a C++ exception raised by an
# argument check crashed the process on this image (SIGSEGV, 2026-11-28 and -30, until the
# module linked the shared libstdc++); "errors" runs those alone, so a crash costs only that
# step; "link" checks the module's C++ runtime (tests/ops/test_cxx_runtime_link.py).
# "profile" prints where the time of a certified removal goes; "forget" runs every forgetting
# method on digits on the GPU (one seed); "knn" also times farthest_k on the host's CPU cores
# beside scikit-learn; "knn-cpu" (not in the default list) runs the farthest-k bench on the CPU.
# "fused" runs the CUDA tests of the fused certified ops (never run on a GPU before) first, in
# their own process: if they fail, FASTUNLEARN_BENCH_NO_FUSED=1 keeps the fused variants out
# of "certified" and "profile" (a bad memory access would poison the other variants' process).
# (2026-11-30 on an H200, build ~55 s: fused 10, link 4, certified 25, influence 65, tests 30,
# errors 20, profile 15, forget 30, knn 25, glm_hvp 5, glm_cg 20 seconds; the limits are caps)
# "onepass" runs the CUDA tests of glm_hvp's one-pass kernel (FASTUNLEARN_GLM_HVP=onepass,
# never run on a GPU before; its steps are tested on the host by ctest): if they fail,
# FASTUNLEARN_BENCH_NO_ONEPASS=1 keeps its variants out of "certified", "profile" and
# "glm_hvp"; "sanitize" runs compute-sanitizer's four tools on small calls of it.
for step in ${STEPS:-fused:45 onepass:40 link:30 certified:150 glm_hvp:60 influence:200 sanitize:90 tests:80 errors:60 profile:75 forget:90 knn:110 glm_cg:50}; do
  name=${step%%:*}; seconds=${step##*:}
  stamp "$name (limit $seconds s)"
  case "$name" in
    tests) cmd=($PY -m pytest -m cuda tests -q -p no:cacheprovider -n 6
                --continue-on-collection-errors --timeout 60 --maxfail 20
                -k "not bad and not error and not raise and not reject") ;;
    errors) cmd=($PY -m pytest -m cuda tests -q -p no:cacheprovider -n 6
                 --continue-on-collection-errors --timeout 60 --maxfail 50
                 -k "bad or error or raise or reject") ;;
    fused) cmd=($PY -m pytest -m cuda -q -p no:cacheprovider --timeout 30 -x
                tests/ops/test_certified_start.py tests/ops/test_certified_woodbury.py
                tests/ops/test_certified_commit.py tests/ops/test_certified_tail.py
                tests/certified/test_pipelined.py) ;;
    onepass) cmd=($PY -m pytest -m cuda -q -p no:cacheprovider --timeout 60 -x
                  tests/ops/test_glm_hvp_onepass.py) ;;
    sanitize) cmd=(bash bench/sanitize_glm_hvp.sh) ;;
    profile) cmd=($PY -m bench.profile_certified --device cuda --out "$LOG") ;;
    link) cmd=($PY -m pytest -q -p no:cacheprovider tests/ops/test_cxx_runtime_link.py) ;;
    knn-cpu) cmd=($PY -m bench.run --device cpu --only knn --full) ;;
    forget) cmd=($PY -m fastunlearn forget --method all --dataset digits --seeds 1 --oracles 6
                 --device cuda --no-cache --no-progress --out "$LOG/forget-cuda") ;;
    *) cmd=($PY -m bench.run --device cuda --only "$name") ;;
  esac
  timeout "$seconds" "${cmd[@]}" > "$LOG/bench-$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc"
  [ "$name" = fused ] && [ "$rc" != 0 ] && export FASTUNLEARN_BENCH_NO_FUSED=1
  [ "$name" = onepass ] && [ "$rc" != 0 ] && export FASTUNLEARN_BENCH_NO_ONEPASS=1
  [ "$name" = knn-cpu ] && cp bench/results/knn-cpu.json "$OUT/knn-cpu-host.json" 2>/dev/null
  pack
  tail -12 "$LOG/bench-$name.log"
done
stamp "done"
