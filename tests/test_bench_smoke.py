"""The benchmark code works: tiny runs of every benchmark, its checks, its JSON output."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import common, run  # noqa: E402

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _run_tiny(name):
    try:
        return run.BENCHMARKS[name].run("cpu", preset="tiny")
    except common.OpUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", list(run.BENCHMARKS))
def test_tiny_run_checks_and_times_everything(name, capsys):
    records = _run_tiny(name)
    assert records
    for rec in records:
        times = {k: v for k, v in rec.items() if k.endswith("_ms") and "iqr" not in k}
        assert "ours_ms" in times and len(times) >= 2, rec
        assert all(math.isfinite(v) and v > 0 for v in times.values()), rec
        ratios = [v for k, v in rec.items() if k.startswith("ratio_")]
        assert ratios and all(math.isfinite(r) and r > 0 for r in ratios), rec
    run.BENCHMARKS[name].print_results(records)
    out = capsys.readouterr().out
    assert "ours ms" in out and "OOM" not in out


def test_cli_writes_json_with_metadata(tmp_path, capsys):
    try:
        common.require_op("glm_hvp", CPU)
    except common.OpUnavailable as exc:
        pytest.skip(str(exc))
    assert run.main(["--device", "cpu", "--preset", "tiny", "--only", "glm_hvp",
                     "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "glm_hvp-cpu.json").read_text())
    assert payload["benchmark"] == "glm_hvp" and payload["preset"] == "tiny"
    meta = payload["metadata"]
    for key in ("device_name", "torch", "cuda", "git_revision", "date", "cpu_count",
                "fastunlearn"):
        assert key in meta
    assert meta["fastunlearn"]["compiled"] is True
    assert len(payload["records"]) == len(run.BENCHMARKS["glm_hvp"].SIZES["tiny"][2])
    assert "glm_hvp" in capsys.readouterr().out


def test_wrong_results_are_refused_before_timing(monkeypatch):
    """The correctness check can fail: a broken op makes the benchmark raise."""
    import fastunlearn.ops
    from bench import bench_glm_hvp

    monkeypatch.setattr(bench_glm_hvp, "require_op", lambda *args: None)
    monkeypatch.setattr(fastunlearn.ops, "glm_hvp",
                        lambda X, S, V, lam: bench_glm_hvp.torch_hvp(X, S, V, lam) * 1.01,
                        raising=False)
    with pytest.raises(common.CorrectnessError, match="glm_hvp"):
        bench_glm_hvp.run("cpu", preset="tiny")


def test_unknown_benchmark_name_is_rejected():
    with pytest.raises(SystemExit):
        run.main(["--only", "nope", "--no-write"])


# ---- bench.common -------------------------------------------------------------------------


def test_compare_interleaves_and_reports_quartiles():
    calls = []
    res = common.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                         CPU, warmup=1, repeat=4, min_block_s=0.0)
    assert set(res) == {"a", "b"}
    timed = calls[2:]  # after one warm-up call each
    assert timed[:4] == ["a", "b", "a", "b"]
    for m in res.values():
        assert m.timing.samples == 4 and m.timing.number == 1
        assert m.timing.q1 <= m.timing.median <= m.timing.q3
        assert math.isnan(m.peak_bytes)


def test_fast_calls_are_batched_per_sample():
    m = common.measure(lambda: None, CPU, warmup=1, repeat=3, min_block_s=1e-3)
    assert m.timing.number > 1 and m.timing.median < 1e-3


def test_out_of_memory_is_recorded_as_inf():
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")

    res = common.compare({"ok": lambda: None, "oom": oom}, CPU, warmup=1, repeat=3)
    assert math.isinf(res["oom"].ms) and math.isinf(res["oom"].peak_bytes)
    assert math.isfinite(res["ok"].ms)
    assert math.isnan(common.ratio(res["ok"].timing.median, res["oom"].timing.median))


def test_other_errors_propagate():
    def broken():
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        common.measure(broken, CPU, warmup=1, repeat=3)


def test_cpu_peak_memory_counts_torch_allocations():
    def alloc():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)
        del a
        return b.sum()

    peak = common.peak_memory(alloc, CPU)
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_numpy_peak_memory_counts_numpy_arrays():
    import numpy as np

    peak = common.peak_memory(lambda: np.ones(1 << 20).sum(), CPU, method="numpy")  # 8 MiB
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_check_close_names_the_case():
    a = torch.ones(3)
    assert common.check_close(a, a + 1e-9, rtol=1e-6, atol=0, what="x") < 1e-8
    with pytest.raises(common.CorrectnessError, match="my case"):
        common.check_close(a, a * 2, rtol=1e-6, atol=0, what="my case")


def test_print_table_formats_oom_and_missing(capsys):
    common.print_table("t", [{"a": 1.5, "b": math.inf}, {"a": math.nan}],
                       [("a", "A", ".2f"), ("b", "B", ".1f")])
    out = capsys.readouterr().out
    assert "1.50" in out and "OOM" in out and "-" in out


def test_write_results_round_trips(tmp_path):
    path = common.write_results("demo", [{"ms": 1.0, "peak": math.inf, "dtype": torch.float32}],
                                device=CPU, preset="tiny", out_dir=tmp_path)
    assert path.name == "demo-cpu.json"
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    payload = json.loads(path.read_text(), parse_constant=refuse)
    assert payload["records"][0]["peak"] == "inf"  # strict JSON; float() reads it back
    assert float(payload["records"][0]["peak"]) == math.inf
    assert payload["records"][0]["dtype"] == "torch.float32"
    assert payload["metadata"]["git_revision"]


def test_presets_and_devices():
    assert common.resolve_preset(True, None) == "quick"
    assert common.resolve_preset(False, None) == "full"
    assert common.resolve_preset(False, "tiny") == "tiny"
    with pytest.raises(ValueError, match="'preset'"):
        common.resolve_preset(False, "huge")
    with pytest.raises(ValueError, match="'device'"):
        common.resolve_device("mps")


# ---- the demo -----------------------------------------------------------------------------


def test_demo_runs_every_section(capsys):
    import fastunlearn
    from fastunlearn import demo

    assert demo.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for marker in ("fastunlearn", "[1]", "[2]", "[3]", "[4]", "Done in"):
        assert marker in out
    # the certified walk-through: budgets run out, retrains happen, the refusal leaves the model
    assert "RETRAIN" in out and "raised BudgetExceededError" in out
    assert "the model is unchanged" in out
    if fastunlearn.backend()["cpu"]:  # every op compiled: nothing may be skipped
        assert "skipped" not in out
        assert "glm_hvp" in out and "farthest-k" in out and "per-sample" in out


def test_influence_repair_median_over_seeds(capsys):
    from bench import bench_influence

    repairs = [
        {"part": f"repair seed {s}", "seed": s, "params": 6090, "ours_ms": ms,
         "lissa_ms": 2 * ms, "ratio_lissa": 2.0, "ours_num_hvps": hvps,
         "ours_restored": r, "lissa_restored": 0.5, "restored_vs_lissa": r / 0.5}
        for s, ms, hvps, r in ((1, 10.0, 100, 0.9), (2, 30.0, 300, 1.2), (3, 20.0, 250, 0.6))
    ]
    med = bench_influence._median_record(repairs)
    assert med["part"] == "repair median" and med["seeds"] == [1, 2, 3]
    assert med["ours_ms"] == 20.0 and med["restored_vs_lissa"] == pytest.approx(1.8)
    assert med["ours_num_hvps"] == 250 and isinstance(med["ours_num_hvps"], int)
    assert med["params"] == 6090 and "seed" not in med
    bench_influence.print_results(repairs + [med])  # integer columns still format
    assert "repair median" in capsys.readouterr().out


def test_influence_compares_shares_restored_and_damage_left():
    from bench.bench_influence import compare_restored

    got = compare_restored(0.9, 0.6)
    assert got["restored_vs_lissa"] == pytest.approx(1.5)
    assert got["damage_left_lissa_vs_ours"] == pytest.approx(4.0)  # 40 % left vs 10 %
    assert compare_restored(1.15, 0.46)["damage_left_lissa_vs_ours"] == math.inf
    assert compare_restored(0.2, 0.0)["restored_vs_lissa"] == math.inf
    assert compare_restored(0.5, 0.7)["damage_left_lissa_vs_ours"] == pytest.approx(0.6)


def test_influence_parts_run_alone_and_unknown_parts_are_refused():
    from bench import bench_influence

    with pytest.raises(ValueError, match="argument 'parts'"):
        bench_influence.run("cpu", preset="tiny", parts=("nope",))
    solver = bench_influence.run("cpu", preset="tiny", parts=("solver",))
    assert [r["part"] for r in solver] == ["solver"]


def test_certified_fixed_step_variant_is_timed_and_checked(monkeypatch, capsys):
    """The fixed-shape variant (CUDA graphs on a GPU; here eagerly) is timed beside the
    solvers, its weights checked against the reference's, and it reports whether graphs ran."""
    from bench import bench_certified

    monkeypatch.setattr(bench_certified, "variants",
                        lambda device: [("auto", None, "auto"), ("cg", None, "cg"),
                                        ("cg", "eager", "graph"),
                                        ("cg", "eager-fused", "graph_fused"),
                                        ("cg", "eager-fused", "graph_fused_onepass"),
                                        ("cg", "eager-rowwise", "graph_rowwise"),
                                        ("cg", "eager-unchained", "graph_unchained")])
    records = _run_tiny("certified")
    for rec in records:
        for label in ("graph", "graph_fused", "graph_fused_onepass", "graph_rowwise",
                      "graph_unchained"):
            assert rec[f"ours_{label}_per_s"] > 0
            assert rec[f"weight_rel_diff_{label}"] < bench_certified.WEIGHT_RTOL
        assert rec["ours_graph_replayed"] is False  # eager: no graphs on the CPU
        assert "ours_graph_error" not in rec
    bench_certified.print_results(records)
    out = capsys.readouterr().out
    assert "fixed-shape step" in out and "one-pass kernel" in out


def test_certified_failing_optional_variant_is_recorded_not_fatal(monkeypatch):
    """A failure of the optional fixed-shape variant (first runs on a new GPU) is recorded in
    the case's record; the solvers' numbers still come back."""
    from bench import bench_certified
    from fastunlearn.certified import fixed_step

    def broken(self, row, slot, chain=False):
        raise RuntimeError("capture exploded")

    monkeypatch.setattr(fixed_step.FixedShapeStep, "begin", broken)
    monkeypatch.setattr(fixed_step.FixedShapeStep, "enqueue", lambda self: broken(self, 0, 0))
    monkeypatch.setattr(bench_certified, "variants",
                        lambda device: [("auto", None, "auto"), ("cg", None, "cg"),
                                        ("cg", "eager", "graph")])
    records = _run_tiny("certified")
    for rec in records:
        assert rec["ours_graph_error"] == "RuntimeError: capture exploded"
        assert "ours_graph_per_s" not in rec
        assert rec["ours_per_s"] > 0 and rec["ours_cg_per_s"] > 0


def test_certified_lenient_run_records_a_failing_solver_variant(monkeypatch, capsys):
    """On CUDA (lenient) a failing solver variant is recorded, not fatal: the others are
    still timed and the results still print; elsewhere it raises."""
    from bench import bench_certified

    monkeypatch.setattr(bench_certified, "variants",
                        lambda device: [("auto", None, "auto"), ("nope", None, "cg")])
    cpu = torch.device("cpu")
    rec = bench_certified.run_case("synthetic", 400, 32, 3, 4, 2, device=cpu, lenient=True)
    assert rec["ours_per_s"] > 0 and "ours_cg_per_s" not in rec
    assert "solver" in rec["ours_cg_error"]
    bench_certified.print_results([rec])
    assert "synthetic" in capsys.readouterr().out
    with pytest.raises(ValueError, match="solver"):
        bench_certified.run_case("synthetic", 400, 32, 3, 4, 2, device=cpu)


def test_count_certified_ops_reports_the_cuda_loops_host_work(capsys):
    """The counts behind bench/GPU_NOTES.md: one commit run per removal, at most one device
    read per planning and iteration, and outside the step's functions only the fills of the
    row and slot (a removal loop that issued its commit op by op would show ~14 here)."""
    from bench import count_certified_ops

    result = count_certified_ops.main(["--rows", "12", "--rowwise"])
    runs = result["runs_per_removal"]
    assert runs["_pipelined_step"] == 0.0
    assert runs["_commit"] == 1.0
    assert runs["_start"] + runs["_start_and_iterate"] == 1.0
    plannings = 1.0 + runs["_iterate"]
    assert 1.0 <= result["device_reads_per_removal"] <= plannings + 1e-9
    assert result["host_kernels_per_removal"] <= 3.0
    inside = result["inside"]
    assert inside["_start_and_iterate"]["not_views"] > inside["_start"]["not_views"] > 0
    assert "device reads" in capsys.readouterr().out


def test_count_certified_ops_pipelined_runs_read_the_device_once_per_window(capsys):
    """Pipelined runs (the default): one replay per row of the graph that plans and commits
    it, and device reads per window of rows, not per row."""
    from bench import count_certified_ops

    result = count_certified_ops.main(["--rows", "40"])
    assert result["pipelined"]
    runs = result["runs_per_removal"]
    assert runs["_pipelined_step"] >= 1.0  # rows past one chained iteration: also row by row
    assert runs["_commit"] == runs["_start"] + runs["_start_and_iterate"] < 0.2
    assert result["device_reads_per_removal"] <= 0.3
    assert result["host_kernels_per_removal"] <= 1.5
    inside = result["inside"]
    assert inside["_pipelined_step"]["not_views"] > inside["_start_and_iterate"]["not_views"]
    assert "pipelined runs" in capsys.readouterr().out
    # the fused ops (start, end of each CG step, commit): the pipelined graph less than half
    fused = count_certified_ops.main(["--rows", "12", "--fused"])["inside"]
    assert fused["_pipelined_step"]["not_views"] < inside["_pipelined_step"]["not_views"] / 2
    assert fused["_iterate"]["not_views"] < inside["_iterate"]["not_views"] / 2
    assert fused["_start"]["not_views"] <= inside["_start"]["not_views"] - 20


def test_certified_fused_variants_run_last_and_can_be_left_out(monkeypatch):
    """On CUDA the fused ops' variant is timed last (its kernels are the newest: a bad access
    would poison the process the other variants run in), and FASTUNLEARN_BENCH_NO_FUSED=1
    (set by bench/device_run.sh when their CUDA tests fail) leaves it out of the benchmark
    and the profile."""
    from bench import bench_certified, profile_certified

    cuda = torch.device("cuda")
    monkeypatch.delenv("FASTUNLEARN_BENCH_NO_FUSED", raising=False)
    monkeypatch.delenv("FASTUNLEARN_BENCH_NO_ONEPASS", raising=False)
    labels = [label for *_, label in bench_certified.variants(cuda)]
    assert labels[-2:] == ["graph_fused", "graph_fused_onepass"] and "graph" in labels
    monkeypatch.setenv("FASTUNLEARN_BENCH_NO_ONEPASS", "1")
    labels = [label for *_, label in bench_certified.variants(cuda)]
    assert labels[-1] == "graph_fused" and "graph_fused_onepass" not in labels
    assert profile_certified.default_modes().split(",")[-1] == "graph-fused"
    monkeypatch.delenv("FASTUNLEARN_BENCH_NO_ONEPASS")
    assert profile_certified.default_modes().split(",")[-2:] == ["graph-fused",
                                                                "graph-fused-onepass"]
    monkeypatch.setenv("FASTUNLEARN_BENCH_NO_FUSED", "1")
    assert "graph_fused" not in [label for *_, label in bench_certified.variants(cuda)]
    assert "graph-fused" not in profile_certified.default_modes()
    assert [label for *_, label in bench_certified.variants(torch.device("cpu"))] == ["auto", "cg"]


def test_certified_fixed_step_modes_are_timed_with_the_default_solver():
    """The CUDA fixed-step modes run with solver="auto": "cg" alone keeps its factors past
    the Woodbury capacity, where every row takes the general step whatever the mode."""
    from bench import bench_certified

    modes = [(solver, step) for solver, step, _ in bench_certified.variants(torch.device("cuda"))
             if step is not None]
    assert modes and all(solver == "auto" for solver, _ in modes)


def test_profile_reports_the_device_share_of_the_kernels_alone():
    """The device time per removal counts the kernels' own events, not the operators that
    launched them (which repeat that time)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from bench import profile_certified

    events = [
        SimpleNamespace(device_type=DeviceType.CPU, self_device_time_total=500.0),  # aten op
        SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=300.0),  # kernel
        SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=100.0),
    ]
    line = profile_certified._device_share(events, profiled_ms=0.05)
    per_removal = 400.0 * 1e-3 / profile_certified.REMOVALS
    assert f"device busy {per_removal:.3f} ms per removal" in line
    assert f"({100 * per_removal / 0.05:.0f} %)" in line


def test_certified_onepass_variant_sets_the_kernel_variable_only_around_its_calls(monkeypatch):
    """``graph_fused_onepass`` runs its calls with FASTUNLEARN_GLM_HVP=onepass (a CUDA graph
    keeps the kernel it was captured with); every other variant without it, and the
    variable's previous value comes back."""
    import os

    from bench import bench_certified
    from bench.common import GLM_HVP_KERNEL_ENV

    name, _ = GLM_HVP_KERNEL_ENV
    monkeypatch.setenv(name, "before")
    with bench_certified.hvp_kernel_for("graph_fused_onepass"):
        assert os.environ[name] == "onepass"
    assert os.environ[name] == "before"
    with bench_certified.hvp_kernel_for("graph_fused"):
        assert name not in os.environ
    assert os.environ[name] == "before"
    monkeypatch.delenv(name)
    with pytest.raises(RuntimeError), bench_certified.hvp_kernel_for("x_onepass"):
        raise RuntimeError
    assert name not in os.environ


def test_result_metadata_records_the_kernel_settings(monkeypatch):
    """Every result file's backend summary says which kernel-choosing variables were set."""
    from bench.common import backend_summary

    monkeypatch.setenv("FASTUNLEARN_GLM_HVP", "onepass")
    assert backend_summary()["settings"]["FASTUNLEARN_GLM_HVP"] == "onepass"


@pytest.mark.parametrize("flags", [["--quick", "--full"], ["--quick", "--preset", "tiny"],
                                   ["--full", "--preset", "quick"]])
def test_conflicting_size_flags_are_rejected(flags, capsys):
    """Two size choices at once used to let one win silently; now argparse refuses them."""
    with pytest.raises(SystemExit) as exc:
        run.main([*flags, "--only", "glm_hvp", "--no-write"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_benchmark_named_twice_runs_once(monkeypatch):
    calls = []

    def fake_run(device, *, preset):
        calls.append(preset)
        return []

    monkeypatch.setattr(run.BENCHMARKS["glm_hvp"], "run", fake_run)
    monkeypatch.setattr(run.BENCHMARKS["glm_hvp"], "print_results", lambda records: None)
    assert run.main(["--device", "cpu", "--preset", "tiny", "--only", "glm_hvp, glm_hvp",
                     "--no-write"]) == 0
    assert calls == ["tiny"]


def test_a_rate_over_a_failed_time_is_nan_not_zero():
    assert common.rate(8e9, 2.0) == 4e9
    for seconds in (math.inf, math.nan, 0.0):
        assert math.isnan(common.rate(8e9, seconds))


def test_glm_hvp_out_of_memory_gives_no_bandwidth(monkeypatch):
    """An implementation that ran out of memory has no GB/s (was 0.0 GB/s)."""
    from bench import bench_glm_hvp

    real = common.compare

    def ours_runs_out(impls, device, **kwargs):
        res = real(impls, device, **kwargs)
        res["ours"] = common.Measurement(common.Timing.failed(), math.inf)
        return res

    monkeypatch.setattr(bench_glm_hvp, "compare", ours_runs_out)
    try:
        records = bench_glm_hvp.run("cpu", preset="tiny")
    except common.OpUnavailable as exc:
        pytest.skip(str(exc))
    assert records and all(math.isnan(r["ours_gbps"]) and r["torch_gbps"] > 0 for r in records)
