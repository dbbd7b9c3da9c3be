"""Audit of the ``fastunlearn forget`` harness against independent recomputations.

Every number the harness reports is recomputed here from what it saved (the ``.npy``
logits read with numpy, the ``metrics.csv`` read with :mod:`csv`, the cached weights
loaded with :mod:`safetensors`) with the metric functions called directly; the Markdown
table is parsed and compared with the JSON; entry points are monkeypatched to record what
the harness hands them. A cheap registered method (seeded weight noise) stands in for the
real forgetting methods, so the runs take seconds on two cores.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fastunlearn.harness as harness_pkg
from fastunlearn.data import parse_forget_spec
from fastunlearn.forget import ForgetConfig, base
from fastunlearn.harness import (
    DIGITS_OVERRIDES,
    HarnessConfig,
    HarnessData,
    TrainSettings,
    build_harness_model,
    load_harness_data,
    run_harness,
)
from fastunlearn.harness import runner as runner_mod
from fastunlearn.harness import training as training_mod
from fastunlearn.harness.cli import main as forget_main
from fastunlearn.harness.config import ORACLE_SEED_OFFSET
from fastunlearn.metrics import competition_score, epsilon_hat, svc_mia_efficacy

JITTER = "jitter_audit"
FLAKY = "flaky_audit"
FORGET = "random:0.15"
#: One epoch in large batches: a few SGD steps per model (the metrics need no accuracy).
FAST = TrainSettings(epochs=1, batch_size=128)


def _jitter(model: nn.Module, forget: Any, retain: Any, config: ForgetConfig) -> nn.Module:
    """A copy of ``model`` with seeded Gaussian weight noise of scale ``config.lr``."""
    new = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7919 + config.seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(config.lr * torch.randn(p.shape, generator=g).to(p))
    return new


def _flaky(model: nn.Module, forget: Any, retain: Any, config: ForgetConfig) -> nn.Module:
    """Like :func:`_jitter`, but seed 1 fails."""
    if config.seed == 1:
        raise RuntimeError("flaky seed 1")
    return _jitter(model, forget, retain, config)


@pytest.fixture(scope="module", autouse=True)
def _toy_methods() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(base._REGISTRY, JITTER, (_jitter, ForgetConfig))
        mp.setitem(base._REGISTRY, FLAKY, (_flaky, ForgetConfig))
        yield


@pytest.fixture(scope="module")
def small() -> HarnessData:
    """400 training and 150 test digits (every class present in both)."""
    d = load_harness_data("digits")
    return HarnessData(d.x_train[:400], d.y_train[:400], d.x_test[:150], d.y_test[:150], 10,
                       "digits-audit")


@pytest.fixture(scope="module")
def run6(tmp_path_factory: pytest.TempPathFactory, small: HarnessData) -> dict[str, Any]:
    """3 seeds of two toy methods (one fails at seed 1) against 6 oracles, outputs written."""
    root = tmp_path_factory.mktemp("run6")
    cfg = HarnessConfig(methods=(JITTER, FLAKY), seeds=3, oracles=6, forget=FORGET,
                        train=FAST, cache_dir=str(root / "cache"),
                        out_dir=str(root / "out"), mia=True,
                        overrides={JITTER: {"lr": 0.05}, FLAKY: {"lr": 0.05}})
    result = run_harness(cfg, small)
    result["root"] = root
    return result


def _num(v: Any) -> float:
    """A JSON number, ``"inf"`` / ``"nan"`` strings included."""
    return float(v)


def _read_csv(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def _load_fixture(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S, N+1, C]`` array -> logits ``[S, N, C]`` and labels (slot 0 one-hot)."""
    a = torch.from_numpy(np.load(path))
    return a[:, 1:], a[:, 0].argmax(1)


def test_saved_logits_are_the_cached_models_on_the_right_split(run6: dict,
                                                               small: HarnessData) -> None:
    """Forget/retain/test logits are the oracle's outputs on those rows; MIA is recomputed."""
    from safetensors.torch import load_model

    forget_idx, retain_idx = parse_forget_spec(FORGET, small.y_train, seed=0)
    assert run6["data"]["forget_indices"] == forget_idx.tolist()
    files = sorted((run6["root"] / "cache").glob("oracle0-*.safetensors"))
    assert len(files) == 1
    model = build_harness_model("small_cnn", (1, 8, 8), 10)
    load_model(model, str(files[0]))
    model.eval()
    parts = {"forget": (small.x_train[forget_idx], small.y_train[forget_idx]),
             "retain": (small.x_train[retain_idx], small.y_train[retain_idx]),
             "test": (small.x_test, small.y_test)}
    with torch.no_grad():
        mine = {p: model(x) for p, (x, _) in parts.items()}
    stored = run6["logits"]["oracles"][0]
    for p in parts:
        torch.testing.assert_close(stored[p], mine[p], rtol=1e-5, atol=1e-5)
    rec = run6["oracles"]["per_model"][0]
    for p, (_, y) in parts.items():
        acc = float((mine[p].argmax(1) == y).double().mean())
        assert rec[f"{p}_accuracy"] == pytest.approx(acc, abs=1e-12), p
    assert rec["mia_efficacy"] == svc_mia_efficacy(
        (mine["retain"], parts["retain"][1]), (mine["test"], parts["test"][1]),
        (mine["forget"], parts["forget"][1]))
    # the oracle was trained on the retain rows only, with the oracle seed (not 0..seeds-1)
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["seed"] == ORACLE_SEED_OFFSET


def test_privacy_scores_recomputed_from_the_saved_files(run6: dict,
                                                        small: HarnessData) -> None:
    """epsilon-hat / competition scores of results.json == metric functions on the .npy."""
    out = run6["root"] / "out"
    data = json.loads((out / "results.json").read_text())
    logits_dir = out / "logits"
    retrain, labels = _load_fixture(logits_dir / "logits_retain.npy")
    forget_idx, _ = parse_forget_spec(FORGET, small.y_train, seed=0)
    assert torch.equal(labels, small.y_train[forget_idx])
    assert retrain.shape == (forget_idx.numel(), 6, 10)
    # the oracle group is the oracles' forget logits, in order
    for i, lg in enumerate(run6["logits"]["oracles"]):
        assert torch.equal(retrain[:, i], lg["forget"])
    oracle_csv = _read_csv(logits_dir / "metrics.csv")
    method_csv = _read_csv(logits_dir / JITTER / "metrics.csv")
    unlearn, lab2 = _load_fixture(logits_dir / JITTER / "logits_unlearn.npy")
    assert torch.equal(lab2, labels) and unlearn.shape[1] == 3
    entry = data["methods"][JITTER]
    eps = epsilon_hat(retrain, unlearn, labels)
    assert _num(entry["epsilon_hat"]) == eps.epsilon_hat or (
        math.isnan(eps.epsilon_hat) and math.isnan(_num(entry["epsilon_hat"])))
    np.testing.assert_array_equal([_num(v) for v in entry["per_example"]["epsilon"]],
                                  eps.per_example.numpy())
    accs = {"ra_u": float(np.mean(method_csv["retain_accuracy"])),
            "ra_r": float(np.mean(oracle_csv["retain_accuracy"])),
            "ta_u": float(np.mean(method_csv["test_accuracy"])),
            "ta_r": float(np.mean(oracle_csv["test_accuracy"]))}
    comp = competition_score(retrain, unlearn, labels, accuracies=accs)
    assert entry["competition_forget_score"] == pytest.approx(comp.forget_score, abs=1e-12)
    assert entry["competition_final_score"] == pytest.approx(comp.final_score, rel=1e-12)
    # accuracies in the csv are those of the unlearned logits on the forget set
    for j in range(3):
        acc = float((unlearn[:, j].argmax(1) == labels).double().mean())
        assert method_csv["forget_accuracy"][j] == pytest.approx(acc, abs=1e-12)
    # oracle-vs-oracle baseline: first half of the oracles vs the second half
    base = data["oracles"]["baseline"]
    b_eps = epsilon_hat(retrain[:, :3], retrain[:, 3:], labels)
    np.testing.assert_array_equal([_num(v) for v in base["per_example"]["epsilon"]],
                                  b_eps.per_example.numpy())
    b_comp = competition_score(retrain[:, :3], retrain[:, 3:], labels)
    assert base["competition_forget_score"] == pytest.approx(b_comp.forget_score, abs=1e-12)
    # avg gap over UA, RA, TA and MIA-Efficacy, from the per-run and per-oracle records
    keys = ("unlearning_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy")
    runs = [r for r in entry["runs"] if r["status"] == "ok"]
    gap = np.mean([abs(np.mean([r[k] for r in runs])
                       - np.mean([r[k] for r in data["oracles"]["per_model"]])) for k in keys])
    assert entry["avg_gap"] == pytest.approx(float(gap), rel=1e-12)


def test_partial_method_keeps_only_its_successful_runs(run6: dict) -> None:
    entry = run6["methods"][FLAKY]
    assert entry["status"] == "partial" and entry["num_ok"] == 2
    assert [r["status"] for r in entry["runs"]] == ["ok", "error", "ok"]
    folder = run6["root"] / "out" / "logits" / FLAKY
    unlearn, labels = _load_fixture(folder / "logits_unlearn.npy")
    csv_cols = _read_csv(folder / "metrics.csv")
    assert csv_cols["seed"] == [0.0, 2.0] and unlearn.shape[1] == 2
    # seeds 0 and 2 of the flaky method are the jitter method's seeds 0 and 2 (same noise)
    jitter, _ = _load_fixture(folder.parent / JITTER / "logits_unlearn.npy")
    assert torch.equal(unlearn[:, 0], jitter[:, 0]) and torch.equal(unlearn[:, 1], jitter[:, 2])
    assert entry["forget_accuracy"] == pytest.approx(
        float(np.mean(csv_cols["forget_accuracy"])), rel=1e-12)
    assert "competition_forget_score" not in entry  # 2 unlearned models: not enough
    md = (run6["root"] / "out" / "results.md").read_text()
    assert f"| {FLAKY} | partial 2/3 |" in md and "flaky seed 1" in md


def test_evaluate_command_reproduces_the_forget_numbers(run6: dict, tmp_path: Path) -> None:
    """``fastunlearn evaluate OUT/logits`` gives the numbers ``forget`` reported."""
    from fastunlearn.cli import main

    out = run6["root"] / "out"
    assert main(["evaluate", str(out / "logits"), "--out", str(tmp_path / "ev"),
                 "--no-plot"]) == 0
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    forget = json.loads((out / "results.json").read_text())
    for name in (JITTER, FLAKY):
        e, v = forget["methods"][name], ev["methods"][name]
        assert v["num_models"] == e["num_ok"]
        for k in ("epsilon_hat", "competition_forget_score", "competition_final_score",
                  "time_ratio", "forget_accuracy"):
            if k not in e:
                assert k not in v, (name, k)
                continue
            a, b = _num(e[k]), _num(v[k])
            assert a == pytest.approx(b, rel=1e-9) or (math.isnan(a) and math.isnan(b)), k
        assert [_num(x) for x in e["per_example"]["epsilon"]] == \
            [_num(x) for x in v["per_example"]["epsilon"]]
    assert _num(forget["oracles"]["baseline"]["epsilon_hat"]) == pytest.approx(
        _num(ev["baseline"]["epsilon_hat"]))
    assert forget["oracles"]["baseline"]["competition_forget_score"] == pytest.approx(
        ev["baseline"]["competition_forget_score"])
    assert ev["retrain"]["forget_accuracy"] == pytest.approx(
        forget["oracles"]["forget_accuracy"], rel=1e-12)


def _cells(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _check_pct(cell: str, v: Any, std: Any = None) -> None:
    if v is None or not math.isfinite(_num(v)):
        assert cell == "-"
        return
    mean, _, spread = cell.partition(" ± ")
    assert float(mean) == pytest.approx(100 * _num(v), abs=0.05 + 1e-9), cell
    if std is not None and _num(std) > 0:
        assert float(spread) == pytest.approx(100 * _num(std), abs=0.05 + 1e-9), cell
    else:
        assert not spread, cell


def _check_num(cell: str, v: Any, places: int) -> None:
    if v is None or math.isnan(_num(v)):
        assert cell == "-"
    elif math.isinf(_num(v)):
        assert cell == "inf"
    else:
        assert float(cell) == pytest.approx(_num(v), abs=0.5 * 10 ** -places + 1e-12), cell


def test_markdown_table_agrees_with_the_json(run6: dict) -> None:
    out = run6["root"] / "out"
    data = json.loads((out / "results.json").read_text())
    rows = _cells((out / "results.md").read_text())
    orc = data["oracles"]
    entries = {"original": data["original"], "retrain (oracles)": {
        **orc, "seconds": orc["mean_seconds"],
        "epsilon_hat": orc["baseline"]["epsilon_hat"],
        "competition_forget_score": orc["baseline"]["competition_forget_score"]}}
    entries.update(data["methods"])
    assert set(rows) == set(entries)
    for name, e in entries.items():
        c = rows[name]
        for i, k in enumerate(("unlearning_accuracy", "retain_accuracy", "test_accuracy",
                               "mia_efficacy"), start=1):
            _check_pct(c[i], e.get(k), e.get(f"{k}_std"))
        _check_pct(c[5], e.get("avg_gap"))
        _check_num(c[6], e.get("epsilon_hat"), 2)
        _check_num(c[7], e.get("competition_forget_score"), 3)
        _check_num(c[8], e.get("competition_final_score"), 3)
        _check_pct(c[9], e["fairness"]["test_kept_classes"]["worst_accuracy"])
        _check_num(c[10], e.get("seconds"), 2)
        if name != "retrain (oracles)":
            _check_num(c[11], e.get("time_ratio"), 3)
    assert float(rows["retrain (oracles)"][11]) == 1.0
    assert rows[JITTER][0] == "ok"


def test_seeds_settings_and_split_reach_run_method(monkeypatch: pytest.MonkeyPatch,
                                                   small: HarnessData) -> None:
    calls: list[dict[str, Any]] = []

    def spy(name: str, model: nn.Module, forget: Any, retain: Any,
            config: ForgetConfig, **kw: Any) -> nn.Module:
        assert not kw  # the settings come in the config
        calls.append({"name": name, "forget": forget, "retain": retain, "config": config,
                      "seed": config.seed})
        return copy.deepcopy(model)

    monkeypatch.setattr(runner_mod, "run_method", spy)
    cfg = HarnessConfig(methods=("finetune", JITTER), seeds=4, oracles=1, forget="class:3",
                        train=FAST, cache_dir=None, mia=False,
                        overrides={"finetune": {"lr": 0.02}})
    result = run_harness(cfg, small)
    assert [(c["name"], c["seed"]) for c in calls] == \
        [("finetune", s) for s in range(4)] + [(JITTER, s) for s in range(4)]
    expected_ft = {**DIGITS_OVERRIDES["finetune"], "lr": 0.02}
    for c in calls:
        assert c["config"].progress is cfg.progress   # bars follow the run's --progress
        cls = base.get_method(c["name"])[1]
        settings = expected_ft if c["name"] == "finetune" else {}
        # each run its own config: the settings with the run's seed
        assert c["config"] == cls(**settings, seed=c["seed"], progress=cfg.progress)
        assert torch.equal(c["forget"][1], small.y_train[small.y_train == 3])
        assert torch.equal(c["forget"][0], small.x_train[small.y_train == 3])
        assert torch.equal(c["retain"][0], small.x_train[small.y_train != 3])
    assert len({id(c["config"]) for c in calls}) == len(calls)
    assert [r["seed"] for r in result["methods"]["finetune"]["runs"]] == [0, 1, 2, 3]
    # the published defaults: nothing from DIGITS_OVERRIDES reaches the method
    calls.clear()
    run_harness(HarnessConfig(methods=("finetune",), seeds=1, oracles=1, forget="class:3",
                              train=FAST, cache_dir=None, mia=False,
                              digits_defaults=False), small)
    assert calls[0]["config"] == base.get_method("finetune")[1](seed=0, progress=cfg.progress)


def test_oracles_flag_and_the_saved_oracle_seeds(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, small: HarnessData) -> None:
    seen: list[tuple[str, torch.Tensor, int]] = []
    real = runner_mod.train_or_load

    def spy(**kw: Any) -> Any:
        seen.append((kw["role"], kw["indices"], kw["seed"]))
        return real(**kw)

    monkeypatch.setattr(runner_mod, "train_or_load", spy)
    cfg = HarnessConfig(methods=(JITTER,), seeds=2, oracles=3, forget=FORGET, forget_seed=5,
                        train=FAST, cache_dir=None, mia=False,
                        out_dir=str(tmp_path / "out"), train_seed=11)
    result = run_harness(cfg, small)
    forget_idx, retain_idx = parse_forget_spec(FORGET, small.y_train, seed=5)
    assert [r for r, _, _ in seen] == ["original", "oracle0", "oracle1", "oracle2"]
    assert torch.equal(seen[0][1], torch.arange(400))
    for _, idx, _ in seen[1:]:
        assert torch.equal(idx, retain_idx)
    oracle_seeds = [s for _, _, s in seen[1:]]
    assert seen[0][2] == 11 and oracle_seeds == [11 + ORACLE_SEED_OFFSET + i for i in range(3)]
    assert result["data"]["forget_indices"] == forget_idx.tolist()
    saved = tmp_path / "out" / "logits"
    retrain, _ = _load_fixture(saved / "logits_retain.npy")
    assert retrain.shape[1] == 3
    # the oracles' metrics.csv records the seeds they were trained with
    assert _read_csv(saved / "metrics.csv")["seed"] == [float(s) for s in oracle_seeds]
    assert _read_csv(saved / JITTER / "metrics.csv")["seed"] == [0.0, 1.0]


def test_cli_flags_reach_the_harness_config(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture,
                                            tmp_path: Path) -> None:
    got: list[HarnessConfig] = []

    def fake(config: HarnessConfig, **kwargs: Any) -> dict:
        got.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(harness_pkg, "run_harness", fake)
    # the published defaults are svhn's anyway: the flag reaches the config, with a warning
    with pytest.warns(UserWarning, match=r"^'--published-defaults' has no effect with "
                                         r"'--dataset svhn' \(other data sets always get the "
                                         r"published defaults\)$"):
        rc = forget_main(["--method", "finetune, scrub", "--dataset", "svhn", "--data-dir",
                          "/d", "--model", "mlp", "--forget", "random:0.2", "--forget-seed",
                          "4", "--seeds", "5", "--oracles", "7", "--epochs", "3", "--lr",
                          "0.2", "--batch-size", "16", "--out", "/o", "--no-cache",
                          "--device", "cpu", "--set", "scrub.lr=0.5", "--set",
                          "finetune.epochs=2", "--published-defaults", "--no-mia",
                          "--no-progress"])
    assert rc == 2 and "fastunlearn forget: error: stop here" in capsys.readouterr().err
    c = got[0]
    assert c.methods == ("finetune", "scrub") and c.dataset == "svhn" and c.data_dir == "/d"
    assert (c.model, c.forget, c.forget_seed, c.seeds, c.oracles) == (
        "mlp", "random:0.2", 4, 5, 7)
    assert (c.train.epochs, c.train.lr, c.train.batch_size) == (3, 0.2, 16)
    assert c.overrides == {"scrub": {"lr": 0.5}, "finetune": {"epochs": 2}}
    assert c.digits_defaults is False and c.cache_dir is None and c.out_dir == "/o"
    assert (c.device, c.mia, c.progress) == ("cpu", False, False)
    got.clear()
    cache = str(tmp_path / "c")  # the cache folder is checked before the run: writable
    assert forget_main(["--method", "finetune", "--cache-dir", cache]) == 2
    c = got[0]
    # no progress flag: bars only on a terminal (pytest's captured stderr is none)
    assert (c.cache_dir, c.mia, c.progress, c.digits_defaults) == (cache, True, False, True)
    got.clear()
    assert forget_main(["--method", "finetune", "--cache-dir", cache, "--progress"]) == 2
    assert got[0].progress is True


@pytest.mark.parametrize("device", ["foo", "cuda:x", "meta"])
def test_a_bad_device_is_a_clean_error_before_training(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = forget_main(["--method", JITTER, "--seeds", "1", "--oracles", "1", "--epochs", "1",
                      "--device", device, "--no-progress", "--no-mia",
                      "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("fastunlearn forget: error: '--device'"), err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_a_bad_out_folder_is_refused_before_training(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    as_file = tmp_path / "file.txt"
    as_file.write_text("not a folder\n")
    foreign = tmp_path / "foreign"
    (foreign / "logits").mkdir(parents=True)
    (foreign / "logits" / "notes.txt").write_text("mine\n")
    for out in (as_file, foreign):
        cache = tmp_path / f"cache-{out.name}"
        rc = forget_main(["--method", JITTER, "--seeds", "1", "--oracles", "1",
                          "--epochs", "1", "--no-progress", "--no-mia",
                          "--cache-dir", str(cache), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("fastunlearn forget: error: '--out'"), err
        assert not cache.exists()  # refused before anything was trained
    assert as_file.read_text() == "not a folder\n"
    assert (foreign / "logits" / "notes.txt").read_text() == "mine\n"


def test_a_rerun_without_epsilons_drops_the_old_histogram(tmp_path: Path,
                                                          small: HarnessData) -> None:
    out = tmp_path / "out"
    common = dict(methods=(JITTER,), forget=FORGET, train=FAST,
                  cache_dir=str(tmp_path / "cache"), mia=False, out_dir=str(out))
    first = run_harness(HarnessConfig(seeds=2, oracles=2, **common), small)
    assert (out / "epsilon_hist.png").is_file() and "epsilon_hist" in first["paths"]
    with pytest.warns(UserWarning, match="other settings"):
        second = run_harness(HarnessConfig(seeds=1, oracles=1, **common), small)
    assert "per_example" not in second["methods"][JITTER]
    assert "epsilon_hist" not in second["paths"]
    assert not (out / "epsilon_hist.png").exists()  # no stale plot of the first run
    assert sorted(p.name for p in out.iterdir() if p.name != "earlier") == sorted(
        Path(p).name for p in second["paths"].values())
    # the first run (other seeds) is kept whole, its histogram beside its results
    kept = out / "earlier" / "results-1"
    assert (kept / "epsilon_hist.png").is_file() and (kept / "logits").is_dir()
    assert json.loads((kept / "results.json").read_text())["config"]["seeds"] == 2


def test_cache_key_separates_devices(monkeypatch: pytest.MonkeyPatch,
                                     small: HarnessData) -> None:
    from fastunlearn.harness import cache_key

    kw = dict(data_digest="d", indices=torch.arange(5), model="small_cnn",
              model_args={"num_classes": 10}, settings=FAST, seed=0)
    assert cache_key(**kw, device="cpu") != cache_key(**kw, device="cuda")
    keys: list[dict[str, Any]] = []
    real = training_mod.cache_key

    def spy(**k: Any) -> str:
        keys.append(k)
        return real(**k)

    monkeypatch.setattr(training_mod, "cache_key", spy)
    training_mod.train_or_load(
        model_name="small_cnn", x=small.x_train[:64], y=small.y_train[:64],
        indices=torch.arange(64), num_classes=10, data_digest="d",
        settings=FAST, seed=0, cache_dir=None,
        device=torch.device("cpu"), role="original")
    assert keys[0]["device"] == "cpu"


def test_cache_misses_on_changed_settings_and_survives_a_broken_sidecar(
    tmp_path: Path, small: HarnessData
) -> None:
    common = dict(methods=(JITTER,), seeds=1, oracles=1, forget=FORGET, mia=False,
                  train=FAST, cache_dir=str(tmp_path / "cache"))
    first = run_harness(HarnessConfig(**common), small)
    assert first["cache"] == {"hits": 0, "misses": 2}
    # another forget set: the original is reused, the oracle (other retain rows) is not
    other = run_harness(HarnessConfig(forget_seed=1, **common), small)
    assert other["cache"] == {"hits": 1, "misses": 1}
    assert not torch.equal(other["logits"]["oracles"][0]["test"],
                           first["logits"]["oracles"][0]["test"])
    # another model: nothing is reused
    mlp = run_harness(HarnessConfig(model="mlp", **common), small)
    assert mlp["cache"] == {"hits": 0, "misses": 2}
    # another training seed: the original is retrained
    seeded = run_harness(HarnessConfig(train_seed=3, **common), small)
    assert seeded["cache"] == {"hits": 0, "misses": 2}
    # a sidecar cut short by an interrupted run is a miss, not an error
    metas = [p for p in (tmp_path / "cache").glob("oracle0-*.json")
             if json.loads(p.read_text())["model"] == "small_cnn"]
    for meta in metas:
        meta.write_text('{"key": "')
    again = run_harness(HarnessConfig(**common), small)
    assert again["original"]["cached"] and not again["oracles"]["cached"][0]
    assert torch.equal(again["logits"]["oracles"][0]["test"],
                       first["logits"]["oracles"][0]["test"])


def test_class_forgetting_drops_the_class_from_the_test_set(tmp_path: Path,
                                                            small: HarnessData) -> None:
    """OPTML's class-wise protocol: the test set holds the classes not forgotten, so a
    retrained model's TA is its accuracy on those classes (not ~90 % of it) and MIA's
    non-members are those examples. Recomputed from the oracle's own logits."""
    cfg = HarnessConfig(methods=(JITTER,), seeds=1, oracles=2, forget="class:3", train=FAST,
                        cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"),
                        mia=True, overrides={JITTER: {"lr": 0.05}})
    result = run_harness(cfg, small)
    kept = small.y_test != 3
    assert result["data"]["num_test"] == int(kept.sum()) < small.y_test.numel()
    assert result["data"]["test_classes_dropped"] == [3]
    oracle = result["logits"]["oracles"][0]
    assert oracle["test"].shape[0] == int(kept.sum())
    rec = result["oracles"]["per_model"][0]
    acc = float((oracle["test"].argmax(1) == small.y_test[kept]).double().mean())
    assert rec["test_accuracy"] == pytest.approx(acc, abs=1e-12)
    forget_idx, retain_idx = parse_forget_spec("class:3", small.y_train)
    assert rec["mia_efficacy"] == svc_mia_efficacy(
        (oracle["retain"], small.y_train[retain_idx]), (oracle["test"], small.y_test[kept]),
        (oracle["forget"], small.y_train[forget_idx]))
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"/ {int(kept.sum())} test of the classes not forgotten (3 dropped" in table
