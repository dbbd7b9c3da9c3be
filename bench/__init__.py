"""fastunlearn benchmarks: each op against its PyTorch / scikit-learn / Opacus peers.

Run ``python -m bench.run --help``; see ``bench/README.md``.
"""

import os

# OpenMP threads that spin while waiting turn a 0.4 ms GEMM into 100 ms when the cores are
# shared with other processes (measured on a loaded 2-core machine). Passive waiting keeps
# timings meaningful there and costs little elsewhere; it only takes effect if torch is not
# imported yet, and an explicit OMP_WAIT_POLICY wins. The value is stored with the results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
