"""End-to-end harness runs on digits: outputs, metrics vs the saved logits, cache, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import _metrics_reference as ref
from fastunlearn.forget import ForgetConfig, base
from fastunlearn.harness import (
    HarnessConfig,
    HarnessData,
    TrainSettings,
    load_harness_data,
    method_overrides,
    run_harness,
    write_outputs,
)
from fastunlearn.harness.cli import main, parse_set
from fastunlearn.metrics import load_logits_dir

FAST = TrainSettings(epochs=2)


@pytest.fixture(scope="module")
def digits() -> HarnessData:
    return load_harness_data("digits")


def _config(tmp: Path, **kw: object) -> HarnessConfig:
    opts: dict = dict(methods=("fisher", "finetune"), seeds=1, oracles=1, train=FAST,
                      cache_dir=str(tmp / "cache"))
    opts.update(kw)
    if "finetune" in opts["methods"]:
        opts.setdefault("overrides", {"finetune": {"epochs": 1}})
    return HarnessConfig(**opts)


def test_end_to_end_outputs_match_the_saved_logits(tmp_path: Path, digits: HarnessData) -> None:
    result = run_harness(_config(tmp_path, out_dir=str(tmp_path / "out")), digits)
    paths = result["paths"]
    for key in ("json", "markdown", "accuracy", "time", "logits"):
        assert Path(paths[key]).exists(), key
    for png in ("accuracy", "time"):
        assert Path(paths[png]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(Path(paths["json"]).read_text())
    assert set(data["methods"]) == {"fisher", "finetune"}
    assert all(m["status"] == "ok" for m in data["methods"].values())
    # class:3: the oracle never saw a 3, the original did
    assert data["oracles"]["forget_accuracy"] < 0.1
    assert data["original"]["forget_accuracy"] > 0.5
    assert data["data"]["num_forget"] == int((digits.y_train == 3).sum())
    # the saved logits (fixture layout) give the reported accuracies: independent recount
    saved = load_logits_dir(paths["logits"])
    assert (saved.labels == 3).all()
    assert saved.retrain.shape == (data["data"]["num_forget"], 1, 10)
    for name in ("fisher", "finetune"):
        acc = float((saved.methods[name][:, 0].argmax(1) == saved.labels).double().mean())
        assert acc == pytest.approx(data["methods"][name]["forget_accuracy"], abs=1e-12)
        assert saved.metrics[name]["forget_accuracy"][0] == pytest.approx(acc)
        # one seed, one oracle: the epsilon metrics say why they are missing
        assert "privacy_note" in data["methods"][name]
        assert data["methods"][name]["time_ratio"] == pytest.approx(
            data["methods"][name]["seconds"] / data["oracles"]["mean_seconds"])
    assert saved.forget_set == data["data"]["forget_indices"]
    table = Path(paths["markdown"]).read_text()
    assert "| fisher | ok |" in table and "| finetune | ok |" in table


@pytest.fixture(scope="module")
def privacy_run(tmp_path_factory: pytest.TempPathFactory, digits: HarnessData) -> dict:
    """4 oracles and 3 seeds of "retrain" (the oracles' recipe) on a random forget set.

    Both groups come out of the same training process, so epsilon-hat and the competition
    score are finite and unsaturated and the SVC MIA-Efficacy is neither 0 nor 1 (with a
    class forget set every model has MIA-Efficacy 1 and a method like fisher gives an
    infinite epsilon-hat). One epoch of training keeps the run to a few models' seconds.
    """
    cfg = _config(tmp_path_factory.mktemp("privacy"), methods=("retrain",), seeds=3,
                  oracles=4, forget="random:0.1", train=TrainSettings(epochs=1), mia=True)
    return run_harness(cfg, digits)


def _fixture_layout(logits: list[dict], labels: torch.Tensor) -> np.ndarray:
    """Forget-set logits of a list of models as a study fixture array [S, 1 + N, C]."""
    z = torch.stack([lg["forget"] for lg in logits], 1).numpy().astype(np.float64)
    onehot = np.eye(z.shape[-1])[labels.numpy()]
    return np.concatenate([onehot[:, None], z], 1)


def _seed_a_reference(retain: np.ndarray, unlearn: np.ndarray) -> np.ndarray:
    """``ref.seed_a_epsilons`` extended to the scores the study's script cannot take.

    With two models per group a density often underflows: the score is then x/0 = +inf,
    which ``sklearn.metrics.det_curve`` refuses, or 0/0, which gets the rule the library
    documents (+inf if the log ratio is positive, else 0). The DET curve depends only on
    the order of the scores (ties included), so it is taken on their dense ranks.
    """
    from scipy.stats import norm, rankdata
    from sklearn.metrics import det_curve

    hr, hu = ref.seed_a_hinge(retain), ref.seed_a_hinge(unlearn)
    mr, sr, mu, su = hr.mean(1), hr.std(1), hu.mean(1), hu.std(1)

    def scores(h: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = ref._pdf_loop(h, mu, su) / ref._pdf_loop(h, mr, sr)
        log_ratio = (norm.logpdf(h, mu[:, None], su[:, None])
                     - norm.logpdf(h, mr[:, None], sr[:, None]))
        return np.where(np.isnan(s), np.where(log_ratio > 0, np.inf, 0.0), s)

    lr, lu = scores(hr), scores(hu)
    out = np.empty(hr.shape[0])
    for i in range(hr.shape[0]):
        neg, pos = (lu[i], lr[i]) if np.median(lr[i]) > np.median(lu[i]) else (lr[i], lu[i])
        y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        fpr, fnr, _ = det_curve(y, rankdata(np.r_[neg, pos], method="dense"))
        out[i] = ref._seed_a_example_eps(fpr, fnr, 0.05)
    return out


def _official_confidences(logits: list[dict], labels: torch.Tensor) -> np.ndarray:
    """The competition statistic of every model, as the official code computes it: [S, N]."""
    y = labels.numpy()
    return np.stack([ref.logit_scaled_confidence(lg["forget"].numpy().copy(), y)
                     for lg in logits], 1)


def _recount(lg: dict, labels: dict) -> dict[str, float]:
    """Accuracies of one model's stored logits, counted here."""
    acc = {f"{p}_accuracy": float((lg[p].argmax(1) == labels[p]).double().mean())
           for p in ("forget", "retain", "test")}
    acc["unlearning_accuracy"] = 1.0 - acc["forget_accuracy"]
    return acc


def _mia_by_hand(lg: dict, labels: dict) -> float:
    """OPTML's SVC MIA-Efficacy from the stored logits, with numpy and sklearn only."""
    from sklearn.svm import SVC

    def conf(p: str) -> np.ndarray:
        z = lg[p].numpy().astype(np.float64)
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[np.arange(len(z)), labels[p].numpy()]

    test = conf("test")
    members = conf("retain")[: len(test)]  # balanced: the first len(test) retain examples
    clf = SVC(C=3.0, gamma="auto", kernel="rbf").fit(
        np.r_[members, test][:, None], np.r_[np.ones(len(members)), np.zeros(len(test))])
    return float(1.0 - clf.predict(conf("forget")[:, None]).mean())


def test_epsilon_and_competition_scores_with_enough_models(tmp_path: Path,
                                                         privacy_run: dict) -> None:
    result = privacy_run
    entry = result["methods"]["retrain"]
    assert entry["status"] == "ok" and entry["num_ok"] == 3
    oracles, runs = result["logits"]["oracles"], result["logits"]["retrain"]
    assert len(oracles) == 4 and len(runs) == 3
    labels = result["labels"]
    y = labels["forget"]
    # the stored logits are the scored ones: the accuracies recounted from them are recorded
    for lg, rec in zip(runs, entry["runs"], strict=True):
        for key, value in _recount(lg, labels).items():
            assert rec[key] == pytest.approx(value, abs=1e-12), key
    # Seed A's epsilons by the attack-script reference (scipy pdf + sklearn det_curve)
    eps_ref = ref.seed_a_epsilons(_fixture_layout(oracles, y), _fixture_layout(runs, y), 0.05)
    np.testing.assert_allclose(entry["per_example"]["epsilon"], eps_ref, rtol=1e-12, atol=0)
    # where the plain reference runs, its rank-based extension (used below) agrees exactly
    np.testing.assert_array_equal(
        _seed_a_reference(_fixture_layout(oracles, y), _fixture_layout(runs, y)), eps_ref)
    assert math.isfinite(entry["epsilon_hat"])
    assert entry["epsilon_hat"] == pytest.approx(float(np.nanmedian(eps_ref)), rel=1e-12)
    assert entry["seed_a"]["n_infinite"] == int(np.isinf(eps_ref).sum())
    # the competition's epsilons, forget score and final score by the official algorithm
    comp_ref = ref.competition_epsilons(_official_confidences(oracles, y),
                                        _official_confidences(runs, y))
    np.testing.assert_allclose(entry["per_example"]["competition_epsilon"], comp_ref,
                               rtol=1e-6, atol=0)
    f_ref = ref.competition_forget_score(comp_ref, len(runs))
    assert math.isfinite(entry["competition_forget_score"])
    assert 0.0 < entry["competition_forget_score"] < 1.0  # not saturated either way
    assert entry["competition_forget_score"] == pytest.approx(f_ref, rel=1e-12)

    def mean_acc(models: list[dict], part: str) -> float:
        return float(np.mean([_recount(lg, labels)[f"{part}_accuracy"] for lg in models]))

    final_ref = f_ref * (mean_acc(runs, "retain") / mean_acc(oracles, "retain")) * (
        mean_acc(runs, "test") / mean_acc(oracles, "test"))
    assert entry["competition_final_score"] == pytest.approx(final_ref, rel=1e-12)
    paths = write_outputs(result, tmp_path / "out")
    assert Path(paths["epsilon_hist"]).read_bytes()[:4] == b"\x89PNG"
    from fastunlearn.metrics import evaluate_logits_dir

    ev = evaluate_logits_dir(paths["logits"])  # `fastunlearn evaluate` reads the harness
    assert ev["methods"]["retrain"]["competition_forget_score"] == pytest.approx(
        entry["competition_forget_score"])


def test_retrain_runs_are_not_the_oracles(privacy_run: dict) -> None:
    """``retrain`` at seed s follows the oracles' recipe but never an oracle's seed.

    With oracle i at ``train_seed + 1 + i`` (before), retrain's seeds 1 and 2 reproduced
    oracles 0 and 1 bit for bit, and comparing a model with itself flattered its privacy.
    """
    from fastunlearn.harness.config import ORACLE_SEED_OFFSET

    oracles = privacy_run["logits"]["oracles"]
    for run in privacy_run["logits"]["retrain"]:
        for oracle in oracles:
            assert not torch.equal(run["test"], oracle["test"])
    assert ORACLE_SEED_OFFSET > privacy_run["config"]["seeds"]


def test_mia_efficacy_avg_gap_and_oracle_baseline(privacy_run: dict) -> None:
    from fastunlearn.metrics import svc_mia_efficacy

    result = privacy_run
    labels = result["labels"]
    entry, summary = result["methods"]["retrain"], result["oracles"]
    models = [(result["original"], result["logits"]["original"][0])]
    models += list(zip(summary["per_model"], result["logits"]["oracles"], strict=True))
    models += list(zip(entry["runs"], result["logits"]["retrain"], strict=True))
    assert len(models) == 1 + 4 + 3
    # MIA-Efficacy of every model: retain = members, test = non-members, scored on forget
    for record, lg in models:
        pair = {p: (lg[p], labels[p]) for p in ("retain", "test", "forget")}
        expected = svc_mia_efficacy(pair["retain"], pair["test"], pair["forget"])
        assert record["mia_efficacy"] == expected
        assert record["mia_efficacy"] == _mia_by_hand(lg, labels)
    assert 0.0 < entry["mia_efficacy"] < 1.0  # not saturated: the wiring is visible
    keys = ("unlearning_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy")
    method_mean = {k: float(np.mean([r[k] for r in entry["runs"]])) for k in keys}
    oracle_mean = {k: float(np.mean([r[k] for r in summary["per_model"]])) for k in keys}
    for k in keys:
        assert entry[k] == pytest.approx(method_mean[k], rel=1e-12), k
        assert summary[k] == pytest.approx(oracle_mean[k], rel=1e-12), k
    # SalUn's Avg. gap: mean absolute gap to the oracles over UA, RA, TA and MIA-Efficacy
    gap = sum(abs(method_mean[k] - oracle_mean[k]) for k in keys) / len(keys)
    assert gap > 0
    assert entry["avg_gap"] == pytest.approx(gap, rel=1e-12)
    # oracle-vs-oracle baseline: oracles 1-2 (retrained) vs 3-4 (as the "unlearned")
    base = summary["baseline"]
    oracles, y = result["logits"]["oracles"], labels["forget"]
    assert base["split"] == "oracles 1..2 vs 3..4"
    # (2 models a group: some densities underflow, x/0 scores the plain reference refuses)
    base_ref = _seed_a_reference(_fixture_layout(oracles[:2], y), _fixture_layout(oracles[2:], y))
    np.testing.assert_allclose(base["per_example"]["epsilon"], base_ref, rtol=1e-12, atol=0)
    assert base["epsilon_hat"] == pytest.approx(float(np.nanmedian(base_ref)), rel=1e-12)
    assert base["seed_a"]["n_infinite"] == int(np.isinf(base_ref).sum())
    # 2 against 2 models: epsilon-hat only, the competition needs >= 3 "unlearned" models
    assert "competition_forget_score" not in base
    assert "competition score needs" in base["privacy_note"]


def test_cache_reuse_does_not_retrain(tmp_path: Path, digits: HarnessData) -> None:
    cfg = _config(tmp_path, methods=("fisher",), oracles=2, mia=False)
    first = run_harness(cfg, digits)
    assert first["cache"] == {"hits": 0, "misses": 3}
    second = run_harness(cfg, digits)
    assert second["cache"] == {"hits": 3, "misses": 0}
    assert second["original"]["cached"] and all(second["oracles"]["cached"])
    # same weights (same logits) and the stored training times of the first run
    for a, b in zip(first["logits"]["oracles"], second["logits"]["oracles"], strict=True):
        assert torch.equal(a["test"], b["test"])
    assert second["oracles"]["seconds"] == first["oracles"]["seconds"]
    # a sidecar that does not match its key is a miss: trained again from a fresh init,
    # which reproduces the first run's weights exactly
    for meta in (tmp_path / "cache").glob("oracle0-*.json"):
        meta.write_text(json.dumps({"key": "stale", "seconds": 0.0}))
    again = run_harness(cfg, digits)
    assert again["cache"] == {"hits": 2, "misses": 1}
    assert torch.equal(again["logits"]["oracles"][0]["test"],
                       first["logits"]["oracles"][0]["test"])
    # a different recipe is a different key: trained again
    third = run_harness(_config(tmp_path, methods=("fisher",), oracles=2, mia=False,
                                train=TrainSettings(epochs=1)), digits)
    assert third["cache"] == {"hits": 0, "misses": 3}
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 6


def test_a_failing_method_is_recorded_and_the_run_goes_on(
    tmp_path: Path, digits: HarnessData, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model, forget, retain, config):  # noqa: ANN001, ANN202
        raise RuntimeError("exploded on purpose")

    def vandal(model, forget, retain, config):  # noqa: ANN001, ANN202
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # modifies the caller's model, against the interface
        return model

    monkeypatch.setitem(base._REGISTRY, "broken_for_test", (broken, ForgetConfig))
    monkeypatch.setitem(base._REGISTRY, "vandal_for_test", (vandal, ForgetConfig))
    result = run_harness(_config(tmp_path, methods=("broken_for_test", "vandal_for_test",
                                                    "fisher"), mia=False), digits)
    assert result["methods"]["vandal_for_test"]["status"] == "error"
    assert "modified the original" in result["methods"]["vandal_for_test"]["error"]
    assert "vandal_for_test" not in result["logits"]
    # fisher ran after it from the restored original: same as a run without the vandal
    alone = run_harness(_config(tmp_path, methods=("fisher",), mia=False), digits)
    assert torch.equal(result["logits"]["fisher"][0]["forget"],
                       alone["logits"]["fisher"][0]["forget"])
    assert result["methods"]["broken_for_test"]["status"] == "error"
    assert "exploded on purpose" in result["methods"]["broken_for_test"]["error"]
    assert result["methods"]["fisher"]["status"] == "ok"
    paths = write_outputs(result, tmp_path / "out")
    table = Path(paths["markdown"]).read_text()
    assert "| broken_for_test | error |" in table and "exploded on purpose" in table


def test_bad_inputs_raise_clear_errors(tmp_path: Path, digits: HarnessData) -> None:
    with pytest.raises(ValueError, match="unknown forgetting method 'nope'"):
        HarnessConfig(methods=("nope",))
    with pytest.raises(ValueError, match="'methods' is empty"):
        HarnessConfig(methods=())
    with pytest.raises(ValueError, match="not a field of FinetuneConfig"):
        HarnessConfig(methods=("finetune",), overrides={"finetune": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="'seeds'"):
        HarnessConfig(seeds=0)
    with pytest.raises(ValueError, match="'model' must be one of"):
        HarnessConfig(model="resnet1000")
    with pytest.raises(ValueError, match="empty forget set"):  # random:0.0001 of 1438 -> 0
        run_harness(_config(tmp_path, forget="random:0.0001"), digits)
    with pytest.raises(ValueError, match="class 12 does not occur"):
        run_harness(_config(tmp_path, forget="class:12"), digits)
    dup = tmp_path / "dup.txt"
    dup.write_text("1 2 3 2\n")  # an index twice: forget rows overlapping each other
    with pytest.raises(ValueError, match="duplicates"):
        run_harness(_config(tmp_path, forget=f"file:{dup}"), digits)
    far = tmp_path / "far.txt"
    far.write_text("0 5000\n")
    with pytest.raises(ValueError, match="out of range"):
        run_harness(_config(tmp_path, forget=f"file:{far}"), digits)
    x, y = digits.x_train, digits.y_train
    with pytest.raises(ValueError, match="differ in length"):
        HarnessData(x, y[:-1], digits.x_test, digits.y_test, 10)
    with pytest.raises(ValueError, match="outside 0..9"):
        HarnessData(x, y + 1, digits.x_test, digits.y_test, 10)
    with pytest.raises(ValueError, match="'x_test' rows"):
        HarnessData(x, y, digits.x_test[:, :, :4], digits.y_test, 10)
    with pytest.raises(ValueError, match="'data_dir' is required"):
        load_harness_data("cifar10")
    assert not (tmp_path / "cache").exists()  # nothing trained on bad input


def test_method_overrides_layers_digits_defaults_and_user_values() -> None:
    ov = method_overrides("finetune", {"lr": 0.2})
    assert ov["lr"] == 0.2 and "epochs" in ov
    assert method_overrides("finetune", {}, digits_defaults=False) == {}


def test_parse_set() -> None:
    assert parse_set(["finetune.lr=0.02", "scrub.lr_decay_epochs=(3, 5)",
                      "bad_teacher.incompetent_seed=None", "fisher.fisher=true_fisher",
                      "influence.solver=cg"]) == {
        "finetune": {"lr": 0.02}, "scrub": {"lr_decay_epochs": (3, 5)},
        "bad_teacher": {"incompetent_seed": None}, "fisher": {"fisher": "true_fisher"},
        "influence": {"solver": "cg"}}
    with pytest.raises(ValueError, match="method.key=value"):
        parse_set(["lr=0.1"])


def test_cli_runs_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    rc = main(["--method", "fisher,finetune", "--seeds", "1", "--oracles", "1", "--epochs",
               "2", "--set", "finetune.epochs=1", "--out", str(out), "--cache-dir",
               str(tmp_path / "c"), "--no-progress", "--no-mia"])
    assert rc == 0
    assert (out / "results.md").is_file() and (out / "logits" / "logits_retain.npy").is_file()
    assert "| finetune | ok |" in capsys.readouterr().out
    rc = main(["--method", "finetune,bogus", "--out", str(out), "--no-progress"])
    assert rc == 2
    assert "unknown forgetting method 'bogus'" in capsys.readouterr().err
    rc = main(["--method", "finetune", "--set", "finetune.nope=1", "--no-progress"])
    assert rc == 2
    rc = main(["--method", "finetune", "--dataset", "mnist", "--data-dir", str(tmp_path),
               "--no-progress", "--cache-dir", str(tmp_path / "c2")])
    assert rc == 2  # the MNIST files are missing: a clear message, nothing trained
    assert "mnist" in capsys.readouterr().err.lower()
    assert not (tmp_path / "c2").exists()


def test_retrain_method_follows_the_oracle_recipe(tmp_path: Path, digits: HarnessData) -> None:
    result = run_harness(_config(tmp_path, methods=("retrain",), mia=False), digits)
    settings = result["config"]["method_settings"]["retrain"]
    assert (settings["epochs"], settings["lr"], settings["batch_size"]) == (
        FAST.epochs, FAST.lr, FAST.batch_size)
    assert (settings["scheduler"], settings["milestones"], settings["nesterov"]) == (
        "cosine", [], True)  # the oracles' schedule, whatever the data set's defaults
    entry = result["methods"]["retrain"]
    assert entry["status"] == "ok"
    assert entry["forget_accuracy"] < 0.1  # never saw a 3
    assert entry["retain_accuracy"] > 0.3  # 2 epochs: well above chance (1/9)


def test_a_method_named_retrain_keeps_its_own_metrics(tmp_path: Path,
                                                      digits: HarnessData) -> None:
    from fastunlearn.metrics import evaluate_logits_dir

    cfg = _config(tmp_path, methods=("retrain", "finetune"), oracles=2, mia=False,
                  overrides={"finetune": {"epochs": 1}, "retrain": {"epochs": 1}},
                  out_dir=str(tmp_path / "out"))
    result = run_harness(cfg, digits)
    saved = load_logits_dir(result["paths"]["logits"])
    oracle_s = result["oracles"]["seconds"]
    # the top-level metrics.csv holds the two oracles, retrain/metrics.csv the one run
    assert saved.retrain_metrics["wall_time_s"] == pytest.approx(oracle_s)
    assert len(saved.retrain_metrics["seed"]) == 2
    assert saved.metrics["retrain"]["wall_time_s"] == pytest.approx(
        [result["methods"]["retrain"]["seconds"]])
    lines = (Path(result["paths"]["logits"]) / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 2
    ev = evaluate_logits_dir(result["paths"]["logits"], baseline=False)
    assert ev["retrain"]["csv"]["wall_time_s"] == pytest.approx(sum(oracle_s) / 2)
    assert ev["methods"]["retrain"]["time_ratio"] == pytest.approx(
        result["methods"]["retrain"]["seconds"] / (sum(oracle_s) / 2))


def test_a_second_run_replaces_the_logits_folder(tmp_path: Path, digits: HarnessData) -> None:
    result = run_harness(_config(tmp_path, mia=False), digits)  # fisher and finetune
    out = tmp_path / "out"
    folder = Path(write_outputs(result, out)["logits"])
    assert (folder / "fisher" / "logits_unlearn.npy").is_file()
    only_finetune = {**result, "methods": {"finetune": result["methods"]["finetune"]}}
    write_outputs(only_finetune, out)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["finetune"]
    assert list(load_logits_dir(folder).methods) == ["finetune"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_oracles_and_methods_share_one_training_loop(monkeypatch: pytest.MonkeyPatch,
                                                     digits: HarnessData) -> None:
    from fastunlearn.forget import _training, run_method
    from fastunlearn.harness import build_harness_model, train_model

    calls: list[str] = []
    real = _training.train

    def spy(model, dataset, config, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(kw["desc"])
        return real(model, dataset, config, **kw)

    monkeypatch.setattr(_training, "train", spy)
    x, y = digits.x_train[:200], digits.y_train[:200]
    torch.manual_seed(0)
    model = build_harness_model("small_cnn", (1, 8, 8), 10)
    trained = train_model(model, x, y, TrainSettings(epochs=1), seed=0, desc="oracle0")
    assert calls == ["oracle0"] and not trained.training
    run_method("retrain", model, (x[:10], y[:10]), (x[10:], y[10:]), epochs=1)
    assert calls == ["oracle0", "retrain"]


def test_bad_overrides_fail_before_anything_is_trained(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="'overrides' for 'finetune': 'lr' must be finite"):
        HarnessConfig(methods=("finetune",), overrides={"finetune": {"lr": -1}})
    with pytest.raises(TypeError, match="'overrides' for 'scrub': 'alpha' must be a real number"):
        HarnessConfig(methods=("scrub",), overrides={"scrub": {"alpha": "x"}})
    with pytest.raises(ValueError, match="'seed' is set by the harness.*seeds"):
        HarnessConfig(methods=("finetune",), overrides={"finetune": {"seed": 5}})
    with pytest.raises(ValueError, match="'progress' is set by the harness"):
        HarnessConfig(methods=("finetune",), overrides={"finetune": {"progress": True}})
    with pytest.raises(ValueError, match="'seed' is set by the harness"):
        method_overrides("finetune", {"seed": 5})
    for item in ("finetune.lr=-1", "finetune.seed=5"):
        rc = main(["--method", "finetune", "--set", item, "--no-progress", "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
        assert rc == 2
        assert "'--set' for 'finetune'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_digits_overrides_apply_to_digits_only(tmp_path: Path) -> None:
    digits_cfg = HarnessConfig(methods=("finetune",))
    assert digits_cfg.digits_defaults is True
    assert digits_cfg.method_settings()["finetune"] == method_overrides("finetune", {})
    cifar = HarnessConfig(methods=("finetune",), dataset="cifar10", data_dir=str(tmp_path))
    assert cifar.digits_defaults is False
    assert cifar.method_settings()["finetune"] == {}
    forced = HarnessConfig(methods=("finetune",), dataset="cifar10", digits_defaults=True)
    assert forced.method_settings()["finetune"]["epochs"] == 10
    published = HarnessConfig(methods=("finetune",), digits_defaults=False)
    assert published.method_settings()["finetune"] == {}
    with pytest.raises(TypeError, match="'digits_defaults'"):
        HarnessConfig(digits_defaults="yes")


def test_resnet18_fits_one_channel_images_through_the_harness_builder() -> None:
    from fastunlearn.harness import build_harness_model
    from fastunlearn.harness.data import model_kwargs

    assert model_kwargs("resnet18", (1, 28, 28), 10)["in_channels"] == 1
    model = build_harness_model("resnet18", (1, 28, 28), 10).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # a model that cannot take the data is a ValueError (CLI exit 2), not a traceback
    with pytest.raises(ValueError, match="'model' 'allcnn' cannot take inputs of shape"):
        build_harness_model("allcnn", (1, 8, 8), 10)
