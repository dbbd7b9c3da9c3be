"""Shared benchmark machinery: timing, peak memory, correctness checks, tables, JSON.

Every benchmark follows the same recipe (code_style.md, habit 9):

1. build the inputs once and share them between our op and its peers;
2. check that our result matches the peer's (:func:`check_close`) *before* timing;
3. time all implementations with :func:`compare` (warm-up, repeats taken round-robin so
   background load hits all alike, median and IQR);
4. report ratios ``peer time / our time`` measured in the same process on the same inputs,
   derived throughput from an explicit byte or FLOP model, and peak memory;
5. record an out-of-memory failure as ``inf`` instead of aborting the sweep;
6. print a table (:func:`print_table`) and write JSON (:func:`write_results`).

What the numbers mean:

* **time**: median over repeats of the wall time of one call. On CUDA each sample is
  bracketed by CUDA events after a ``torch.cuda.synchronize()``, so it is GPU time of the
  queued work including launch gaps. On the CPU it is ``time.perf_counter`` around the call.
  Calls much shorter than a millisecond are batched ``number`` at a time per sample.
* **IQR**: interquartile range (q3 - q1) of the per-call samples: the noise level.
* **peak memory**: bytes above what was allocated before the call, at the call's peak.
  CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's live tensors).
  CPU, ``method="torch"``: the peak of the running sum of every allocation and free made
  by PyTorch's CPU allocator during the call, recorded by ``torch.profiler`` with
  ``profile_memory=True`` (exact for tensors, blind to numpy). ``method="numpy"``: the
  peak of Python and numpy allocations traced by ``tracemalloc`` (numpy reports its
  buffers to it), used for non-torch peers such as scikit-learn.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastunlearn._json_data import json_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"

#: H100 SXM HBM3 bandwidth in bytes/s (performance.md section 1).
H100_HBM_BYTES_PER_S = 3.35e12

#: Size presets: ``tiny`` (smoke tests), ``quick`` (2-core CPU, a few minutes), ``full``.
PRESETS = ("tiny", "quick", "full")


class OpUnavailable(RuntimeError):
    """The compiled fastunlearn op (or engine) a benchmark needs is not available."""


class CorrectnessError(AssertionError):
    """Our result disagreed with the peer's: the benchmark refuses to time it."""


# ---------------------------------------------------------------------------------------
# devices and presets


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the device to benchmark on: CUDA if available when ``device`` is None."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("'device' is cuda but no CUDA GPU is visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"'device' must be cpu or cuda, got {device!r}")
    return dev


def resolve_preset(quick: bool, preset: str | None) -> str:
    """Return the size preset: ``preset`` if given, else ``quick`` or ``full``."""
    if preset is None:
        return "quick" if quick else "full"
    if preset not in PRESETS:
        raise ValueError(f"'preset' must be one of {PRESETS}, got {preset!r}")
    return preset


def timing_options(preset: str) -> dict[str, Any]:
    """Warm-up, repeats and time budget per comparison for a size preset."""
    return {
        "tiny": {"warmup": 1, "repeat": 3, "max_time_s": 0.5},
        "quick": {"warmup": 2, "repeat": 7, "max_time_s": 4.0},
        "full": {"warmup": 3, "repeat": 20, "max_time_s": 15.0},
    }[preset]


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 for matmuls and convolutions (cuDNN allows TF32 by default).

    TF32 reads 10 mantissa bits: the peers would compute something else than our float32
    kernels, and the correctness checks would compare different precisions.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


#: The environment variable that selects glm_hvp's CUDA kernel, and its one-pass value
#: (unset: the two cuBLAS GEMMs). Read per call, so it can change between calls.
GLM_HVP_KERNEL_ENV = ("FASTUNLEARN_GLM_HVP", "onepass")


def select_glm_hvp_kernel(onepass: bool) -> None:
    """Select glm_hvp's one-pass CUDA kernel (or the default two GEMMs) for the next calls.

    On the CPU the variable changes nothing. Use inside :func:`kept_glm_hvp_kernel` so the
    caller's setting comes back.
    """
    name, value = GLM_HVP_KERNEL_ENV
    if onepass:
        os.environ[name] = value
    else:
        os.environ.pop(name, None)


@contextlib.contextmanager
def kept_glm_hvp_kernel() -> Iterator[None]:
    """Restore ``FASTUNLEARN_GLM_HVP`` to its value on entry (set or unset) when the block
    ends, however it ends."""
    name, _ = GLM_HVP_KERNEL_ENV
    saved = os.environ.get(name)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def require_op(name: str, device: torch.device) -> None:
    """Raise :class:`OpUnavailable` unless ``fastunlearn::<name>`` has a kernel on ``device``."""
    try:
        from fastunlearn._extension import has_kernel
    except Exception as exc:  # the package itself failed to import
        raise OpUnavailable(f"fastunlearn failed to import: {exc}") from exc
    try:
        available = has_kernel(name, device.type)
    except Exception:  # the op schema is not even registered
        available = False
    if not available:
        raise OpUnavailable(f"fastunlearn::{name} has no {device.type} kernel in this build")


# ---------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class Timing:
    """Per-call wall times of one implementation, in seconds."""

    median: float
    q1: float
    q3: float
    samples: int
    number: int

    @property
    def iqr(self) -> float:
        """Interquartile range q3 - q1."""
        return self.q3 - self.q1

    @property
    def ms(self) -> float:
        """Median in milliseconds."""
        return self.median * 1e3

    @property
    def iqr_ms(self) -> float:
        """IQR in milliseconds."""
        return self.iqr * 1e3

    @classmethod
    def failed(cls) -> Timing:
        """The timing recorded for an implementation that ran out of memory."""
        inf = math.inf
        return cls(median=inf, q1=inf, q3=inf, samples=0, number=0)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


def _time_block(fn: Callable[[], Any], number: int, device: torch.device) -> float:
    """Seconds per call of ``number`` back-to-back calls."""
    synchronize(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / number
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (CUDA or host)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# peak memory


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ backend logs every start and stop)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _torch_cpu_peak(fn: Callable[[], Any]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return float(peak)


def _traced_peak(fn: Callable[[], Any]) -> float:
    """Peak of Python and numpy allocations (numpy reports its buffers to tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return float(max(0, tracemalloc.get_traced_memory()[1] - before))
    finally:
        if not was_tracing:
            tracemalloc.stop()


def peak_memory(fn: Callable[[], Any], device: torch.device, *, method: str = "torch") -> float:
    """Peak bytes allocated by one call of ``fn`` above what was live before it.

    Args:
        fn: The call to measure (run once, after the caller's warm-up).
        device: Where ``fn`` allocates.
        method: ``"torch"`` (CUDA allocator statistics or the CPU profiler's allocation
            events) or ``"numpy"`` (tracemalloc: Python and numpy allocations, for
            non-torch peers such as scikit-learn).

    Returns:
        Bytes; ``inf`` if the call ran out of memory, ``nan`` if not measurable here.
    """
    try:
        if device.type == "cuda" and method == "torch":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn()
            synchronize(device)
            return float(torch.cuda.max_memory_allocated(device) - before)
        if method == "numpy":
            return _traced_peak(fn)
        return _torch_cpu_peak(fn)
    except Exception as exc:
        if is_oom(exc):
            _release(device)
            return math.inf
        raise


# ---------------------------------------------------------------------------------------
# measurement = timing + memory, OOM-safe


@dataclass(frozen=True)
class Measurement:
    """Timing and (optionally) peak memory of one implementation on one case."""

    timing: Timing
    peak_bytes: float = math.nan

    @property
    def ms(self) -> float:
        """Median milliseconds per call."""
        return self.timing.ms

    @property
    def peak_mb(self) -> float:
        """Peak memory in MiB."""
        return self.peak_bytes / 2**20


def compare(
    impls: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    memory: str | dict[str, str | None] | None = None,
    setups: dict[str, Callable[[], Any]] | None = None,
    warmup: int = 2,
    repeat: int = 10,
    max_time_s: float = 3.0,
    min_block_s: float = 2e-3,
) -> dict[str, Measurement]:
    """Time several implementations of the same computation, interleaved.

    Samples are taken round-robin (A, B, C, A, B, C, ...), so background load on a shared
    machine slows every implementation alike and the ratios stay meaningful. An
    implementation that runs out of memory gets ``inf`` time and memory; the others go on.

    Args:
        impls: Name -> zero-argument call.
        device: Where they run.
        memory: ``None`` (skip), ``"torch"`` or ``"numpy"`` (see :func:`peak_memory`),
            measured once per implementation after the timing; or a dict giving the
            method per implementation name.
        setups: Name -> untimed preparation before every call of that implementation
            (forces one call per sample for it).
        warmup: Untimed calls per implementation first (one only for calls > 0.25 s).
        repeat: Samples per implementation; fewer (but at least 3) once ``max_time_s``
            has passed.
        max_time_s: Soft budget for all timed samples together.
        min_block_s: Calls shorter than this are repeated back to back inside one sample.

    Returns:
        Name -> :class:`Measurement`.
    """
    setups = setups or {}
    numbers: dict[str, int] = {}
    failed: set[str] = set()
    for name, fn in impls.items():
        setup = setups.get(name)
        try:
            for _ in range(max(warmup, 1)):
                if setup is not None:
                    setup()
                probe = _time_block(fn, 1, device)
                if probe > 0.25:  # long calls are warm after one run
                    break
        except Exception as exc:
            if not is_oom(exc):
                raise
            _release(device)
            failed.add(name)
            continue
        numbers[name] = 1
        if setup is None and probe < min_block_s:
            numbers[name] = min(1000, max(1, math.ceil(min_block_s / max(probe, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in numbers}
    deadline = time.perf_counter() + max_time_s
    rounds = 0
    while numbers and rounds < repeat and (rounds < 3 or time.perf_counter() < deadline):
        for name in list(numbers):
            setup = setups.get(name)
            try:
                if setup is not None:
                    setup()
                samples[name].append(_time_block(impls[name], numbers[name], device))
            except Exception as exc:
                if not is_oom(exc):
                    raise
                _release(device)
                failed.add(name)
                del numbers[name]
        rounds += 1
    out: dict[str, Measurement] = {}
    for name, fn in impls.items():
        if name in failed:
            out[name] = Measurement(Timing.failed(), math.inf)
            continue
        q1, median, q3 = _quartiles(samples[name])
        timing = Timing(median=median, q1=q1, q3=q3, samples=len(samples[name]),
                        number=numbers[name])
        peak = math.nan
        method = memory.get(name) if isinstance(memory, dict) else memory
        if method is not None:
            if name in setups:
                setups[name]()
            peak = peak_memory(fn, device, method=method)
        out[name] = Measurement(timing, peak)
    return out


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    memory: str | None = None,
    setup: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> Measurement:
    """Time one implementation (and optionally its peak memory); see :func:`compare`."""
    setups = {"fn": setup} if setup is not None else None
    return compare({"fn": fn}, device, memory=memory, setups=setups, **kwargs)["fn"]


def time_once(fn: Callable[[], Any]) -> Measurement:
    """One timed call of a host (CPU) implementation too slow to repeat; no memory trace."""
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    return Measurement(Timing(median=elapsed, q1=elapsed, q3=elapsed, samples=1, number=1))


def rate(amount: float, seconds: float) -> float:
    """``amount / seconds`` (bytes or FLOPs per second); nan when undefined.

    Undefined: a time that was not measured (``inf``: out of memory; ``nan``), which would
    otherwise read as a rate of 0.
    """
    if not (math.isfinite(seconds) and seconds > 0):
        return math.nan
    return amount / seconds


def ratio(peer: float, ours: float) -> float:
    """``peer / ours`` (> 1 means we are faster); nan when undefined.

    Undefined includes a peer that failed (``inf``: out of memory) or was not measured
    (``nan``): its time is recorded as such, and a ratio of ``inf`` would report a failure
    of the peer as an infinite speed-up.
    """
    if not (math.isfinite(ours) and ours > 0 and math.isfinite(peer) and peer > 0):
        return math.nan
    return peer / ours


# ---------------------------------------------------------------------------------------
# correctness


def check_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    what: str,
) -> float:
    """Assert ``actual`` matches ``expected`` and return the max absolute error.

    Both are compared in float64 on the CPU. ``atol`` is absolute: scale it to the
    magnitude of ``expected`` at the call site where that varies.

    Raises:
        CorrectnessError: On a mismatch, naming ``what``.
    """
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    try:
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)
    except AssertionError as exc:
        raise CorrectnessError(f"{what}: result disagrees with the peer\n{exc}") from None
    return float((a - e).abs().max()) if a.numel() else 0.0


def scaled_atol(expected: torch.Tensor, rel: float) -> float:
    """An absolute tolerance of ``rel`` times the largest magnitude in ``expected``."""
    if expected.numel() == 0:
        return rel
    return rel * max(float(expected.detach().abs().max()), 1e-30)


# ---------------------------------------------------------------------------------------
# reporting


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "OOM" if value > 0 else "-inf"
        return format(value, spec)
    return str(value)


def print_table(
    title: str,
    records: Iterable[dict[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    file: Any = None,
) -> None:
    """Print records as an aligned text table.

    Args:
        title: Printed above the table.
        records: One dict per row.
        columns: ``(key, header, format_spec)`` per column; missing keys print ``-``,
            ``inf`` prints ``OOM``.
        file: Stream (stdout by default).
    """
    rows = [[_fmt(r.get(key), spec) for key, _, spec in columns] for r in records]
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    out = file or sys.stdout
    print(f"\n== {title}", file=out)
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
    out.flush()


def _git_revision() -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # result files written earlier in the same run do not make the code dirty
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":(exclude)bench/results"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"git_revision": rev or "unknown", "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": "unknown", "git_dirty": None}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """Human-readable name of the CPU model or GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def device_tag(device: torch.device) -> str:
    """File-name tag: ``cpu``, or ``cuda-<gpu name>`` (e.g. ``cuda-nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in device_name(device).lower())
    return "cuda-" + "-".join(part for part in slug.split("-") if part)


def backend_summary() -> dict[str, Any]:
    """The short form of ``fastunlearn.backend()`` stored with every result file."""
    try:
        import fastunlearn

        info = fastunlearn.backend()
    except Exception as exc:  # benchmarks of the peers still run without the library
        return {"compiled": False, "load_error": str(exc)}
    return {key: info.get(key) for key in (
        "version", "compiled", "load_error", "cpu", "cuda", "cuda_arch_list", "ops", "settings",
    )}


def environment(device: torch.device) -> dict[str, Any]:
    """Metadata describing where and with what the numbers were taken."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **_git_revision(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastunlearn": backend_summary(),
    }


def write_results(
    name: str,
    records: Sequence[dict[str, Any]],
    *,
    device: torch.device,
    preset: str,
    out_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``records`` with metadata to ``<out_dir>/<name>-<device tag>.json``.

    Strict JSON, as the library's results: ``inf`` (out of memory) and ``nan`` (not
    applicable) are written as the strings ``"inf"`` and ``"nan"``, which ``float()`` reads
    back (``fastunlearn._json_data``).

    Args:
        name: Benchmark name (``glm_hvp``...).
        records: Result rows.
        device: Device the rows were measured on.
        preset: Size preset used (``tiny``, ``quick`` or ``full``).
        out_dir: Folder, ``bench/results`` by default; created if needed.

    Returns:
        The path written.
    """
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device_tag(device)}.json"
    payload = {
        "benchmark": name,
        "preset": preset,
        "metadata": environment(device),
        "records": list(records),
    }
    plain = json.loads(json.dumps(payload, default=_json_default))  # Timing, dtypes -> JSON
    path.write_text(json.dumps(json_ready(plain), indent=2, allow_nan=False) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, Timing):
        return asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
