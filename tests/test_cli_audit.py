"""``fastunlearn`` command audit: flags reach the run, reports match an independent
computation, bad settings fail early and cleanly, outputs are not lost or overwritten."""

import contextlib
import io
import json
import math
import re
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

from fastunlearn import demo
from fastunlearn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if the run gets as far as building a model."""
    from fastunlearn.certified import experiment

    def refuse(config):
        raise AssertionError("the run started although the settings were refused")

    monkeypatch.setattr(experiment, "_make_model", refuse)


def only_json(folder):
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def kv_table(text, section):
    """The quantity -> value rows of a Markdown section."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| quantity"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            rows[cells[0]] = cells[1]
    return rows


# ---- remove: early, clean refusals that lose nothing ----------------------------------------


def test_zero_std_with_plots_draws_the_zero_budget(tmp_path, capsys):
    """--std 0 gives a zero budget (every removal retrains); the bounds plot names it in
    its legend instead of failing after the run with nothing saved."""
    with pytest.warns(UserWarning, match="exceeds the budget 0.000e.00 .sigma=0.0.; every "
                      "removal will retrain"):
        assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", "0",
                     "--num-removes", "2", "--no-retrain-timing", "--result-dir",
                     str(tmp_path)]) == 0
    capsys.readouterr()
    payload = only_json(tmp_path)
    assert payload["privacy"]["budget"] == 0.0
    assert [r["retrained"] for r in payload["records"]] == [True, True]
    assert len(list(tmp_path.glob("*_bounds.png"))) == 1


def test_zero_std_without_plots_retrains_every_removal_and_writes_the_report(tmp_path, capsys):
    with pytest.warns(UserWarning, match="every removal will retrain"):
        assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", "0",
                     "--num-removes", "3", "--no-plots", "--no-retrain-timing",
                     "--result-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    payload = only_json(tmp_path)
    # budget sigma * epsilon / c = 0: no removal fits, each one retrains
    assert payload["privacy"]["budget"] == 0.0
    assert [r["retrained"] for r in payload["records"]] == [True, True, True]
    assert payload["privacy"]["retrains"] == 3
    assert (tmp_path / (next(tmp_path.glob("*.json")).stem + ".md")).is_file()


def test_result_dir_that_is_a_file_is_refused_before_fitting(tmp_path, capsys, no_fit):
    target = tmp_path / "results"
    target.write_text("keep me")
    assert main(["remove", "--num-removes", "3", "--result-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn remove: error: ") and "'--result-dir'" in err
    assert "Traceback" not in err
    assert target.read_text() == "keep me"


# ---- remove: flags reach the run --------------------------------------------------------------


def test_eval_every_sets_the_accuracy_evaluations(tmp_path, capsys, built):
    assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", "1",
                 "--num-removes", "7", "--eval-every", "3", "--no-plots",
                 "--no-retrain-timing", "--result-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    payload = only_json(tmp_path)
    points = [e["n_removed"] for e in payload["evaluations"]]
    assert {0, 3, 6} <= set(points) <= {0, 3, 6, 7}
    assert points == sorted(points)
    # the last evaluation is of the final model: recompute it from the captured model
    from fastunlearn.data import load_digits_dataset

    split = load_digits_dataset(binary=(3, 8))
    acc = float((np.asarray(built[0].predict(split.X_test.numpy()))
                 == split.y_test.numpy()).mean())
    assert payload["final"]["test_accuracy"] == pytest.approx(acc, abs=1e-12)
    if points[-1] == 7:
        assert payload["evaluations"][-1]["test_accuracy"] == pytest.approx(acc, abs=1e-12)


def test_subsample_ratio_reaches_the_one_vs_rest_model(tmp_path, capsys, built):
    assert main(["remove", "--train-mode", "ovr", "--lam", "0.01", "--std", "1",
                 "--subsample-ratio", "0.5", "--num-removes", "2", "--no-plots",
                 "--no-retrain-timing", "--result-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert built[0].get_params()["subsample_ratio"] == 0.5
    assert only_json(tmp_path)["config"]["subsample_ratio"] == 0.5
    assert any("ratio_0.5" in p.name for p in tmp_path.iterdir())


def test_subsample_ratio_is_ignored_with_a_warning_in_binary_mode(tmp_path, capsys, built):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", "1",
                     "--subsample-ratio", "0.5", "--num-removes", "2", "--no-plots",
                     "--no-retrain-timing", "--result-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert built[0].get_params()["subsample_ratio"] == 1.0
    assert [str(w.message) for w in caught if "subsample" in str(w.message)] == [
        "'--subsample-ratio' has no effect with '--train-mode binary' (as in the reference, "
        "where it subsamples the negatives of each one-vs-rest class)"]  # once


@pytest.mark.parametrize(("flags", "target"), [((), 2.0 * 0.5), (("--target-epsilon", "3"), 3.0)])
def test_target_epsilon_reaches_the_privacy_summary(tmp_path, capsys, flags, target):
    # given without a DP extractor, it is recorded and said to have no effect
    unused = "'--target-epsilon' has no effect with '--extractor none'"
    with pytest.warns(UserWarning, match=unused) if flags else contextlib.nullcontext():
        assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", "1",
                     "--epsilon", "0.5", "--num-removes", "1", "--no-plots",
                     "--no-retrain-timing", "--result-dir", str(tmp_path), *flags]) == 0
    capsys.readouterr()
    assert only_json(tmp_path)["privacy"]["target_epsilon"] == pytest.approx(target)


# ---- remove: the JSON and the Markdown against an independent computation ------------------


def test_reported_numbers_match_an_independent_computation(tmp_path, capsys, built):
    from fastunlearn.data import load_digits_dataset

    std, epsilon, delta = 1.5, 0.8, 2e-4
    assert main(["remove", "--train-mode", "binary", "--lam", "0.01", "--std", str(std),
                 "--epsilon", str(epsilon), "--delta", str(delta), "--num-removes", "6",
                 "--no-plots", "--no-retrain-timing", "--result-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    payload = only_json(tmp_path)
    model = built[0]
    priv, records = payload["privacy"], payload["records"]

    c = math.sqrt(2.0 * math.log(1.5 / delta))
    assert priv["c"] == pytest.approx(c, rel=1e-12)
    assert priv["budget"] == pytest.approx(std * epsilon / c, rel=1e-12)
    assert priv["removals"] == 6 and [r["n_removed"] for r in records] == list(range(1, 7))
    # the rows the records list are the rows the model removed, each once
    listed = [i for r in records for i in r["indices"]]
    assert sorted(listed) == sorted(set(listed))
    assert sorted(listed) == sorted(np.asarray(model.removed_indices_).tolist())
    # used budget: the training residual plus the bounds since the (only) fit
    assert not any(r["retrained"] for r in records)
    running = payload["training"]["residual"]
    for r in records:
        running += r["bound"]
        assert r["cumulative"] == pytest.approx(running, rel=1e-9)
        assert r["budget_left"] == pytest.approx(priv["budget"] - running, rel=1e-9, abs=1e-15)
    assert priv["mean_bound"] == pytest.approx(np.mean([r["bound"] for r in records]))
    # accuracy and fairness of the final model, recomputed from the model itself
    split = load_digits_dataset(binary=(3, 8))
    pred = np.asarray(model.predict(split.X_test.numpy()))
    y = split.y_test.numpy()
    assert payload["final"]["test_accuracy"] == pytest.approx(float((pred == y).mean()))
    per_class = {str(split.classes[k]): float((pred[y == k] == k).mean()) for k in (0, 1)}
    after = payload["fairness"]["after"]
    assert after["per_class"] == pytest.approx(per_class)
    assert after["worst_class"] == min(per_class, key=per_class.get)
    assert after["largest_gap"] == pytest.approx(max(per_class.values())
                                                 - min(per_class.values()))
    # the Markdown says the same
    text = next(tmp_path.glob("*.md")).read_text()
    privacy = kv_table(text, "Privacy")
    assert float(privacy["budget sigma * epsilon / c"]) == pytest.approx(std * epsilon / c,
                                                                          rel=1e-3)
    assert privacy["removals done"] == "6" and privacy["automatic retrains"] == "0"
    accuracy = kv_table(text, "Accuracy")
    assert float(accuracy["test accuracy after the removals"].rstrip(" %")) == pytest.approx(
        100 * float((pred == y).mean()), abs=0.005)
    for name, acc in per_class.items():
        assert re.search(rf"^\| {name} \| [0-9.]+ % \| {100 * acc:.2f} % \|$", text, re.M)
    assert "removed 6 rows, 0 automatic retrain(s)" in out


# ---- extract ------------------------------------------------------------------------------------


def run_extract(tmp_path, *flags):
    return main(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "256", "--quiet", *flags])


def test_extract_model_too_small_for_the_images_is_a_clean_error(tmp_path, capsys):
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "allcnn") == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn extract: error: ") and "'--model' allcnn" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*.safetensors"))


def test_extract_builds_every_model_for_the_images_channels(tmp_path, capsys, monkeypatch):
    """cifar_cnn takes 3 channels and 32x32 by default: the digits' 1x8x8 must reach it."""
    from fastunlearn.certified import extractors
    from fastunlearn.data import load_digits_dataset, load_features

    seen = []

    def no_training(model, loader, **kwargs):  # the shapes matter here, not the weights
        seen.append(next(iter(loader))[0].shape[1:])
        return model

    monkeypatch.setattr(extractors, "train_standard_extractor", no_training)
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "cifar_cnn") == 0
    capsys.readouterr()
    assert seen == [torch.Size([1, 8, 8])]
    features, _, meta = load_features(tmp_path / "standard_cifar_cnn_digits_extracted"
                                                 ".safetensors")
    split = load_digits_dataset()
    assert features["train"].shape[0] == split.X_train.shape[0]
    assert features["test"].shape[0] == split.X_test.shape[0]
    assert meta["model"] == "cifar_cnn"


def test_extract_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    """Same name, different --model: the stored extractor is not loaded into the wrong
    network (a deep state_dict traceback) and its features are not overwritten."""
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "mlp",
                       "--name", "feat") == 0
    capsys.readouterr()
    features = tmp_path / "feat_digits_extracted.safetensors"
    before = features.read_bytes()
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "small_cnn",
                       "--name", "feat") == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn extract: error: ") and "'--checkpoint'" in err
    assert "--force" in err and "Traceback" not in err
    assert features.read_bytes() == before


def test_extract_refuses_a_checkpoint_of_another_training(tmp_path, capsys):
    """A standard extractor is not passed off as the DP one asked for."""
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "mlp",
                       "--name", "feat") == 0
    capsys.readouterr()
    assert run_extract(tmp_path, "--extractor", "dp", "--model", "mlp", "--name", "feat") == 2
    err = capsys.readouterr().err
    assert "'--checkpoint'" in err and "standard extractor" in err


def test_extract_creates_the_checkpoint_folder(tmp_path, capsys):
    checkpoint = tmp_path / "new" / "deeper" / "model.safetensors"
    assert run_extract(tmp_path, "--extractor", "standard", "--model", "mlp",
                       "--checkpoint", str(checkpoint)) == 0
    out = capsys.readouterr().out
    assert checkpoint.is_file() and f"wrote {checkpoint}" in out
    assert (tmp_path / "standard_mlp_digits_extracted.safetensors").is_file()


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_shows_the_first_records_those_around_retrains_and_the_last():
    records = [{"retrained": i in (5, 6)} for i in range(12)]
    # first three (0-2), one before/after each retrain (4-7), the last (11); gaps marked
    assert demo._shown_records(records) == [0, 1, 2, None, 4, 5, 6, 7, None, 11]
    assert demo._shown_records([]) == []
    assert demo._shown_records([{"retrained": True}]) == [0]


def test_demo_section_prints_what_its_report_says(tmp_path):
    buf = io.StringIO()
    with redirect_stdout(buf):
        demo.section_certified("[1] test", demo.BINARY, torch.device("cpu"), str(tmp_path))
    out = buf.getvalue()
    payload = only_json(tmp_path)
    priv = payload["privacy"]
    assert payload["config"]["num_removes"] == demo.BINARY["num_removes"]
    assert (f"=> {priv['removals']} removals, {priv['retrains']} automatic retrain(s); one "
            f"budget covered {priv['removals_supported']} removals") in out
    assert f"budget sigma*eps/c = {priv['budget']:.4g}" in out
    report = re.search(r"report: (\S+\.md)", out)
    assert report and report.group(1) == str(next(tmp_path.glob("*.md")))


def test_demo_command_passes_its_device_and_result_dir(monkeypatch, tmp_path):
    """`fastunlearn demo` reaches the demo's own --device and --result-dir (it passed none)."""
    import fastunlearn.demo as demo

    seen = []
    monkeypatch.setattr(demo, "main", lambda argv: seen.append(argv) or 0)
    assert main(["demo"]) == 0
    assert main(["demo", "--device", "cpu", "--result-dir", str(tmp_path)]) == 0
    assert seen == [[], ["--device", "cpu", "--result-dir", str(tmp_path)]]
