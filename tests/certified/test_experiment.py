"""The removal experiment driver end to end on the bundled digits (small and fast)."""

import json
import math
import struct
import warnings

import numpy as np
import pytest
import torch

from fastunlearn.certified import BudgetExceededError
from fastunlearn.certified.experiment import (
    SEQUENTIAL_CHUNK,
    ExperimentConfig,
    ExperimentData,
    _chunks,
    _make_model,
    fairness_summary,
    format_record_line,
    load_experiment_data,
    removal_order,
    run_removal_experiment,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")

#: digits 3 vs 8 with a budget that runs out after about 20 removals (see the demo)
BINARY = {"train_mode": "binary", "lam": 1e-2, "std": 1.0, "epsilon": 1.0, "delta": 1e-4}


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("result")
    lines = []
    config = ExperimentConfig(**BINARY, num_removes=30, eval_every=5, result_dir=str(out))
    return run_removal_experiment(config, echo=lines.append), lines, out


def test_run_records_every_removal(binary_run):
    result, lines, _ = binary_run
    recs = result.records
    assert [r["n_removed"] for r in recs] == list(range(1, 31))
    removed = [r["indices"][0] for r in recs]
    assert len(set(removed)) == 30
    assert removed == removal_order(load_experiment_data(result.config).y_train, 30, 0).tolist()
    budget = result.privacy["budget"]
    for r in recs:
        assert r["cumulative"] <= budget + 1e-12
        assert math.isclose(r["budget_left"], budget - r["cumulative"], rel_tol=1e-9,
                            abs_tol=1e-12)
        assert r["seconds"] > 0
    # the budget runs out: at least one automatic retrain, each one warranted (the bound that
    # did not fit would have exceeded the budget)
    retrains = [r for r in recs if r["retrained"]]
    assert retrains and result.privacy["retrains"] == len(retrains)
    for r in retrains:
        before = recs[r["step"] - 2]["cumulative"]
        assert before + r["bound"] > budget and r["cumulative"] < before
    assert len(lines) == 30 and sum("RETRAIN" in line for line in lines) == len(retrains)


def test_privacy_summary(binary_run):
    result, _, _ = binary_run
    p = result.privacy
    c = math.sqrt(2 * math.log(1.5 / 1e-4))
    assert math.isclose(p["c"], c) and math.isclose(p["budget"], 1.0 * 1.0 / c, rel_tol=1e-9)
    first = next(r for r in result.records if r["retrained"])
    assert p["removals_supported"] == first["n_removed"] - 1
    assert p["removals_supported_is_estimate"] is False
    # a removal's data-dependent bound is orders of magnitude below the worst case
    n = result.data["n_train"]
    assert p["worst_case_bound"] == pytest.approx(4 * 0.25 / (1e-4 * (n - 15)), rel=0.06)
    assert p["epsilon_spent"] == pytest.approx(c * p["budget_used"] / 1.0)
    assert 0 < p["mean_bound"] < p["worst_case_bound"] / 100
    assert 0 <= p["training_residual"] < 1e-8


def test_accuracy_fairness_and_timings(binary_run):
    result, _, _ = binary_run
    assert result.training["test_accuracy"] > 0.9
    assert [e["n_removed"] for e in result.evaluations] == [0, 5, 10, 15, 20, 25, 30]
    assert result.final["test_accuracy"] > 0.85 and result.final["retrained_test_accuracy"] > 0.85
    after = result.fairness["after"]
    assert set(after["per_class"]) == {"3", "8"}
    assert after["worst_accuracy"] == min(after["per_class"].values())
    assert math.isclose(after["largest_gap"], max(after["per_class"].values())
                        - min(after["per_class"].values()))
    t = result.timings
    assert t["retrain_seconds"] > 0 and t["removal_seconds_median"] > 0
    assert math.isclose(t["speedup"], t["retrain_seconds"] / t["removal_seconds_median"])


def test_output_files(binary_run):
    result, _, out = binary_run
    files = result.files
    assert set(files) == {"json", "bounds_plot", "accuracy_plot", "time_plot", "markdown"}
    for key in ("bounds_plot", "accuracy_plot", "time_plot"):
        data = open(files[key], "rb").read()
        assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 5000
    payload = json.loads(open(files["json"]).read())
    for key in ("config", "data", "training", "records", "evaluations", "final", "privacy",
                "fairness", "timings", "files"):
        assert key in payload
    assert len(payload["records"]) == 30 and payload["config"]["lam"] == 1e-2
    assert payload["privacy"]["retrains"] == result.privacy["retrains"]
    assert payload["timings"]["retrain_seconds"] == result.timings["retrain_seconds"]
    md = open(files["markdown"]).read()
    assert f"| removals supported by one budget | {result.privacy['removals_supported']} |" in md
    assert f"| budget sigma * epsilon / c | {result.privacy['budget']:.4g} |" in md
    assert f"| automatic retrains | {result.privacy['retrains']} |" in md
    worst = result.fairness["after"]["worst_class"]
    assert f"| after removals | {worst} |" in md
    for key in ("bounds_plot", "accuracy_plot", "time_plot"):
        assert f"]({files[key].rsplit('/', 1)[1]})" in md
    assert all(str(out) in path for path in files.values())


def test_no_retrain_stops_at_the_budget():
    config = ExperimentConfig(**BINARY, num_removes=60, retrain=False, result_dir=None,
                              time_retraining=False)
    result = run_removal_experiment(config)
    p = result.privacy
    assert p["stopped_early"] and "budget" in p["stop_reason"]
    assert p["retrains"] == 0 and 0 < p["removals"] < 60
    assert p["removals_supported"] == p["removals"] and not p["removals_supported_is_estimate"]
    assert result.records[-1]["cumulative"] <= p["budget"]
    assert result.timings["retrain_seconds"] is None and result.files == {}


def test_sequential_calls_lose_no_removal_to_a_mid_call_refusal():
    """Sequential removals go many rows per ``remove`` call; a budget refusal in the middle
    of one keeps (and records, and prints) the removals that call made before it: the same
    removals and bounds as removing one row per call."""
    config = ExperimentConfig(**BINARY, num_removes=60, retrain=False, eval_every=7,
                              result_dir=None, time_retraining=False)
    lines = []
    result = run_removal_experiment(config, echo=lines.append)
    model = _make_model(config)
    data = load_experiment_data(config)
    model.fit(data.X_train, data.y_train)
    expected = []
    for row in removal_order(data.y_train, 60, config.seed).tolist():
        try:
            expected.append(model.remove(row).records[0])
        except BudgetExceededError:
            break
    assert 7 < len(expected) < 60 and len(expected) % 7  # refused inside a call of 7 rows
    assert [r["indices"] for r in result.records] == [list(r.indices) for r in expected]
    for got, want in zip(result.records, expected, strict=True):
        assert got["bound"] == pytest.approx(want.bound, rel=1e-9)
    assert result.privacy["removals"] == len(expected)
    assert f"before removal {len(expected) + 1}" in result.privacy["stop_reason"]
    assert sum(line.startswith("removal") for line in lines) == len(expected)
    # evaluations where they were due, every 7 removals
    assert [e["n_removed"] for e in result.evaluations][:3] == [0, 7, 14]


def test_sequential_chunks_end_where_an_evaluation_is_due():
    order = np.arange(200)
    chunks = _chunks(order, 0, eval_every=50)
    assert [len(c) for c in chunks] == [50, 50, 50, 50]
    chunks = _chunks(order, 0, eval_every=1000)
    assert [len(c) for c in chunks] == [SEQUENTIAL_CHUNK] * 3 + [200 - 3 * SEQUENTIAL_CHUNK]
    assert [len(c) for c in _chunks(order[:10], 0, eval_every=3)] == [3, 3, 3, 1]
    assert [len(c) for c in _chunks(order[:10], 4, eval_every=3)] == [4, 4, 2]  # batches
    assert sum(_chunks(order, 0, eval_every=7), []) == order.tolist()


def test_ovr_batch_removal():
    config = ExperimentConfig(train_mode="ovr", lam=1e-1, std=1.0, num_removes=6, batch=3,
                              result_dir=None)
    result = run_removal_experiment(config)
    assert result.data["classes"] == [str(c) for c in range(10)]
    assert [len(r["indices"]) for r in result.records] == [3, 3]
    assert [r["n_removed"] for r in result.records] == [3, 6]
    # Theorem 1 for a batch of m = 3, summed over the ten classes every row belongs to
    n = result.data["n_train"]
    assert result.privacy["worst_case_bound"] == pytest.approx(
        10 * 4 * 0.25 * 9 / (1e-2 * (n - 4.5)), rel=1e-3)
    assert len(result.fairness["after"]["per_class"]) == 10


def test_injected_synthetic_data_and_tight_gamma():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5)) + np.repeat(np.eye(5)[:2] * 3, 60, axis=0)
    y = np.repeat([0, 1], 60)
    data = ExperimentData(X[::2], y[::2], X[1::2], y[1::2], ("a", "b"), "toy")
    runs = {}
    for gamma in ("paper", "tight"):
        config = ExperimentConfig(train_mode="binary", lam=1e-1, std=1.0, num_removes=5,
                                  gamma=gamma, result_dir=None)
        runs[gamma] = run_removal_experiment(config, data=data)
    paper, tight = (np.array([r["bound"] for r in runs[g].records]) for g in ("paper", "tight"))
    # same removals, the bound scales with gamma
    np.testing.assert_allclose(tight / paper, (1 / (6 * math.sqrt(3))) / 0.25, rtol=1e-6)
    assert runs["tight"].data["dataset"] == "toy"


def test_removal_order_keeps_a_row_of_every_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    order = removal_order(labels, 3, seed=1)
    assert len(set(order.tolist())) == 3
    left = np.delete(labels, order)
    assert set(left.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(order, removal_order(labels, 3, seed=1))
    with pytest.raises(ValueError, match="'num_removes'"):
        removal_order(labels, 4, seed=0)


def test_fairness_summary():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 0])
    s = fairness_summary(y, pred, ["a", "b", "c"])
    assert s["per_class"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert s["worst_class"] == "c" and s["best_class"] == "a" and s["largest_gap"] == 1.0
    assert fairness_summary(np.array([]), np.array([]), ["a"])["worst_class"] is None


def test_format_record_line():
    line = format_record_line({"n_removed": 7, "indices": [42], "bound": 0.0123,
                               "cumulative": 0.1, "budget_left": 0.128, "retrained": True,
                               "seconds": 0.0015}, 100)
    assert line.startswith("removal   7/100  row     42  bound 1.230e-02")
    assert "RETRAIN" in line and line.endswith("1.50 ms")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("delta", 2.0, "'delta'"), ("delta", 0.0, "'delta'"), ("lam", 0.0, "'lam'"),
    ("epsilon", -1.0, "'epsilon'"), ("std", -0.1, "'std'"),
    ("subsample_ratio", 1.5, "'subsample_ratio'"), ("num_steps", 0, "'num_steps'"),
    ("num_removes", -1, "'num_removes'"), ("train_mode", "multi", "'train_mode'"),
    ("dataset", "imagenet", "'dataset'"), ("gamma", "loose", "'gamma'"),
    ("solver", "lu", "'solver'"), ("device", "tpu", "'device'"),
    ("cg_tol", 0.0, "'cg_tol'"), ("target_epsilon", -1.0, "'target_epsilon'"),
])
def test_bad_config_names_the_field(field, value, match):
    config = ExperimentConfig(result_dir=None)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_vision_datasets_need_a_data_dir():
    with pytest.raises(ValueError, match="'data_dir'"):
        ExperimentConfig(dataset="mnist").validate()
    config = ExperimentConfig(dataset="mnist", data_dir="/x").validate()
    assert config.dataset == "MNIST"


def test_too_many_removals_is_a_clean_error():
    config = ExperimentConfig(train_mode="binary", num_removes=10_000, result_dir=None)
    with pytest.raises(ValueError, match="'num_removes' must be at most"):
        run_removal_experiment(config)


# ---- data from a folder -------------------------------------------------------------------


def _write_idx(path, array):
    """An IDX file as MNIST ships it: magic (0, 0, 0x08, ndim), big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", (0x08 << 8) | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def test_raw_mnist_pixels_binary_3_vs_8(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        images[labels == 3, :14] += 150  # 3s bright on top, 8s at the bottom
        images[labels == 8, 14:] += 150
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    config = ExperimentConfig(dataset="MNIST", data_dir=str(tmp_path), train_mode="binary",
                              lam=1e-1, std=0.1, num_removes=3, result_dir=None)
    result = run_removal_experiment(config)
    assert result.data["n_train"] == 12 and result.data["n_features"] == 784
    assert sorted(result.data["classes"]) == ["3", "8"]
    assert result.training["test_accuracy"] == 1.0
    assert len(result.records) == 3 and result.privacy["extractor"] is None


def test_extracted_features_compose_with_the_extractor_privacy(tmp_path):
    from fastunlearn.data.vision import extracted_features_path, save_features

    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(10, 16, generator=gen)
    feats, labels = {}, {}
    for split, n in (("train", 200), ("test", 50)):
        y = torch.arange(n) % 10
        feats[split] = centers[y] + torch.randn(n, 16, generator=gen)
        labels[split] = y
    path = extracted_features_path(tmp_path, "dp_test", "SVHN")
    save_features(path, feats, labels, meta={"epsilon": 0.1, "delta": 1e-5})
    config = ExperimentConfig(dataset="svhn", data_dir=str(tmp_path), extractor="dp_test",
                              lam=1e-2, std=1.0, num_removes=4, batch=2, result_dir=None)
    result = run_removal_experiment(config)
    assert result.data["dataset"] == "SVHN" and result.data["n_features"] == 16
    assert len(result.data["classes"]) == 10 and result.training["test_accuracy"] > 0.8
    # group privacy over the 4 removals: 4 * 0.1 + 1 and 4 exp(3 * 0.1) 1e-5 + 1e-4
    extractor = result.privacy["extractor"]
    assert extractor["private"] and extractor["epsilon"] == 0.1
    composed = extractor["composed"]
    assert composed["removals"] == 4 and composed["epsilon"] == pytest.approx(1.4)
    assert composed["delta"] == pytest.approx(4 * math.exp(0.3) * 1e-5 + 1e-4)
    # the extractor limits the removals: within total epsilon 2 (twice the head's 1), at most
    # floor((2 - 1) / 0.1) = 10 removals; the name is the feature-file prefix
    assert extractor["name"] == "dp_test" and extractor["target_epsilon"] == 2.0
    assert extractor["removals_supported"] == 10
    config.target_epsilon = 1.55
    assert run_removal_experiment(config).privacy["extractor"]["removals_supported"] == 5
    with pytest.raises(FileNotFoundError, match="no features of extractor 'other'"):
        run_removal_experiment(ExperimentConfig(dataset="SVHN", data_dir=str(tmp_path),
                                                extractor="other", result_dir=None))


def test_binary_mode_ignores_the_subsample_ratio_like_the_reference():
    config = ExperimentConfig(train_mode="binary", subsample_ratio=0.2, num_removes=2,
                              result_dir=None, time_retraining=False)
    with pytest.warns(UserWarning, match=r"^'subsample_ratio' has no effect with "
                                         r"train_mode='binary' \(as in the reference"):
        config.validate()
    assert config.effective_subsample_ratio == 1.0 and "_ratio_" not in config.stem
    # said once per config: the run validates it again without repeating it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_removal_experiment(config)
    assert not [w for w in caught if "'subsample_ratio' has no effect" in str(w.message)]
    fresh = ExperimentConfig(train_mode="binary", subsample_ratio=0.2, num_removes=2,
                             result_dir=None, time_retraining=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_removal_experiment(fresh)
    assert len([w for w in caught if "'subsample_ratio' has no effect" in str(w.message)]) == 1
    plain = run_removal_experiment(ExperimentConfig(train_mode="binary", num_removes=2,
                                                    result_dir=None, time_retraining=False))
    assert result.final == plain.final
    assert [r["bound"] for r in result.records] == [r["bound"] for r in plain.records]
    ovr = ExperimentConfig(subsample_ratio=0.2, result_dir=None)
    assert ovr.validate().effective_subsample_ratio == 0.2 and "_ratio_0.2" in ovr.stem


def test_retraining_time_is_the_median_of_repeated_fits(monkeypatch):
    from fastunlearn.certified import experiment

    fits = []
    real = experiment._make_model

    def counting(config):
        model = real(config)
        fit = model.fit
        model.fit = lambda X, y: (fits.append(len(X)), fit(X, y))[1]
        return model

    monkeypatch.setattr(experiment, "_make_model", counting)
    config = ExperimentConfig(train_mode="binary", num_removes=3, result_dir=None)
    result = run_removal_experiment(config)
    # the experiment's own fit, then three timed fits on the remaining rows
    assert fits[1:] == [fits[0] - 3] * experiment.RETRAIN_TIMINGS
    assert result.timings["retrain_seconds"] > 0


def test_runs_differing_in_a_result_setting_write_different_files():
    """The reference's name (extractor, dataset, mode, std, lam, epsilon) stays for the
    defaults; each setting that changes the results adds itself when it is not the default,
    so two such runs in one result folder do not overwrite each other."""
    base = ExperimentConfig(**BINARY)
    assert base.stem == "none_digits_binary_std_1_lam_0.01_eps_1"
    changes = {"delta": 1e-5, "gamma": "tight", "solver": "cg", "seed": 3,
               "target_epsilon": 2.0, "retrain": False, "batch": 4, "num_removes": 40,
               "num_steps": 20, "eval_every": 5, "cg_tol": 1e-9}
    stems = {base.stem}
    for name, value in changes.items():
        stem = ExperimentConfig(**{**BINARY, name: value}).stem
        assert stem.startswith(base.stem) and stem not in stems, name
        stems.add(stem)
    assert ExperimentConfig(**{**BINARY, "delta": 1e-5}).stem.endswith("_delta_1e-05")
    assert ExperimentConfig(**{**BINARY, "seed": 3}).stem.endswith("_seed_3")
    assert ExperimentConfig(**{**BINARY, "num_removes": 200}).stem.endswith("_removes_200")
    assert ExperimentConfig(**{**BINARY, "cg_tol": 1e-9}).stem.endswith("_cg_tol_1e-09")
    # the Cholesky solver ignores the CG tolerance: no new name for an identical run
    cholesky = ExperimentConfig(**{**BINARY, "solver": "cholesky"}).stem
    assert ExperimentConfig(**{**BINARY, "solver": "cholesky", "cg_tol": 1e-9}).stem == cholesky


def test_the_json_is_written_before_the_plots(tmp_path, monkeypatch):
    """A plot that fails (here: matplotlib's writer raising) leaves the run's JSON behind."""
    import fastunlearn.report as report

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "plot_bounds", broken)
    config = ExperimentConfig(**BINARY, num_removes=3, result_dir=str(tmp_path),
                              time_retraining=False)
    with pytest.raises(OSError, match="disk full"):
        run_removal_experiment(config, echo=lambda line: None)
    payload = json.loads((tmp_path / f"{config.stem}.json").read_text())
    assert len(payload["records"]) == 3 and payload["files"] == {
        "json": str(tmp_path / f"{config.stem}.json")}


def test_final_exactness_is_reported_in_json_markdown_and_summary(binary_run):
    """The measured gradient residual (tested against numpy in test_estimator) is within the
    used budget; the JSON, the Markdown and the retrained accuracy row carry it."""
    result, _, _ = binary_run
    final = result.final
    assert 0 < final["gradient_residual"] <= result.privacy["budget_used"]
    n_left = result.data["n_train"] - final["n_removed"]
    # lam n-strong convexity: the distance bound is the residual over lam * n_rows
    assert final["distance_bound"] == pytest.approx(
        final["gradient_residual"] / (BINARY["lam"] * n_left), rel=1e-9)
    payload = json.loads(open(result.files["json"]).read())
    assert payload["final"]["gradient_residual"] == final["gradient_residual"]
    md = open(result.files["markdown"]).read()
    assert f"| {final['gradient_residual']:.4g} |" in md
    assert f"| {100 * final['retrained_test_accuracy']:.2f} % |" in md
