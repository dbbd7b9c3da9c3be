#!/usr/bin/env bash
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on small calls of glm_hvp's
# one-pass CUDA kernel (FASTUNLEARN_GLM_HVP=onepass), instrumenting only that kernel and its
# reduction. Run by bench/device_run.sh's "sanitize" step on a GPU machine; exits 0 with a
# note where no compute-sanitizer is installed, 3 when a tool reports an error.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$SANITIZER" ]; then
  echo "no compute-sanitizer on this machine: nothing checked"
  exit 0
fi
code='
import os, torch, fastunlearn
from fastunlearn.ops import glm_hvp_margins
os.environ["FASTUNLEARN_GLM_HVP"] = "onepass"
for n, d, K in ((37, 17, 3), (100, 65, 12), (300, 784, 10), (1001, 832, 16)):
    g = torch.Generator().manual_seed(n)
    X = torch.randn(n, d, generator=g, dtype=torch.float64).cuda()
    S = torch.rand(n, K, generator=g, dtype=torch.float64).cuda()
    V = torch.randn(d, K, generator=g, dtype=torch.float64).cuda()
    out, margins = glm_hvp_margins(X, S, V, 0.1)
    want = X.T @ (S * (X @ V)) + 0.1 * V
    torch.cuda.synchronize()
    print(n, d, K, "max error", float((out - want).abs().max()))
'
status=0
for tool in memcheck racecheck synccheck initcheck; do
  echo "== $tool"
  "$SANITIZER" --tool "$tool" --kernel-name kns=onepass --error-exitcode 3 "$PY" -c "$code" \
    || status=3
done
exit $status
