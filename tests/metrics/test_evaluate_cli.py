import argparse
import json

import numpy as np
import pytest
import torch

from bench import _metrics_reference as ref
from fastunlearn.metrics import cli as metrics_cli
from fastunlearn.metrics import (
    competition_score,
    epsilon_hat,
    evaluate_logits_dir,
    load_logits_dir,
    pack_slots,
    split_slots,
    write_logits_dir,
)


def _small_dir(tmp_path, fixture_arrays, S=24):
    retain, methods = fixture_arrays
    r, y = split_slots(retain[:S])
    ms = {name: split_slots(a[:S])[0] for name, a in methods.items() if name != "poison"}
    oracles = {"retain_accuracy": [1.0, 0.98], "test_accuracy": [0.95, 0.93],
               "wall_time_s": [100.0, 100.0]}
    metrics = {"finetune": {"retain_accuracy": [0.9, 0.92], "test_accuracy": [0.9, 0.9],
                            "wall_time_s": [3.0, 5.0]}}
    path = write_logits_dir(tmp_path / "logits", r, y, ms, metrics, retrain_metrics=oracles)
    return path, r, y, ms


def test_split_and_pack_roundtrip():
    z = torch.randn(4, 3, 5)
    y = torch.tensor([4, 0, 2, 1])
    arr = pack_slots(z, y)
    assert arr.shape == (4, 4, 5)
    z2, y2 = split_slots(arr)
    assert torch.equal(z2, z) and torch.equal(y2, y)
    bad = arr.copy()
    bad[2, 0] = 0.5
    with pytest.raises(ValueError, match="slot 0 must be a one-hot label, example 2"):
        split_slots(bad)
    with pytest.raises(ValueError, match="must have 3 dimensions"):
        split_slots(arr[0])


def test_load_the_shipped_fixture(fixture_dir):
    d = load_logits_dir(fixture_dir, methods=["finetune"])
    assert d.retrain.shape == (1000, 80, 10) and d.labels.shape == (1000,)
    assert list(d.methods) == ["finetune"]
    assert len(d.forget_set) == 1000
    assert len(d.retrain_metrics["test_accuracy"]) == 80
    assert "retrain" not in d.metrics  # the methods' metrics only
    # the per-model forget accuracies of the logits agree with the study's metrics.csv up
    # to 0.025 (the logits come from a re-run: per-model values differ, the mean does not)
    from fastunlearn.metrics import per_model_accuracy

    logits_acc = float(per_model_accuracy(d.methods["finetune"], d.labels).mean())
    assert logits_acc == pytest.approx(d.mean_metric("finetune", "forget_accuracy"), abs=0.025)


def test_evaluate_logits_dir_matches_the_parts(tmp_path, fixture_arrays):
    path, r, y, ms = _small_dir(tmp_path, fixture_arrays)
    res = evaluate_logits_dir(path)
    assert set(res["methods"]) == {"finetune", "prune_complex"}
    ft = res["methods"]["finetune"]
    eps = epsilon_hat(r, ms["finetune"], y)
    assert ft["epsilon_hat"] == eps.epsilon_hat
    # Seed A's per-example epsilons from the study's algorithm on the same arrays
    expected = ref.seed_a_epsilons(pack_slots(r, y), pack_slots(ms["finetune"], y))
    np.testing.assert_allclose(ft["per_example"]["epsilon"], expected, rtol=1e-12)
    comp = competition_score(r, ms["finetune"], y)
    assert ft["competition_forget_score"] == comp.forget_score
    ra = (0.91 / 0.99) * (0.9 / 0.94)
    assert ft["competition_final_score"] == pytest.approx(comp.forget_score * ra)
    assert ft["time_ratio"] == pytest.approx(0.04)
    assert res["methods"]["prune_complex"]["competition_final_score"] is None
    assert "baseline" in res and res["baseline"]["num_models"] == 40
    assert res["mia"]["applicable"] is False
    json.dumps(res)  # JSON-friendly


@pytest.mark.parametrize("models, has_baseline", [(2, False), (3, False), (4, True), (6, True)])
def test_baseline_needs_two_retrained_models_per_half(tmp_path, models, has_baseline):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (30,), generator=gen)
    r = torch.randn(30, models, 10, generator=gen)
    u = torch.randn(30, 4, 10, generator=gen)
    path = write_logits_dir(tmp_path / "logits", r, y, {"finetune": u})
    res = evaluate_logits_dir(path)
    assert ("baseline" in res) is has_baseline
    assert ("baseline_skipped" in res) is not has_baseline
    assert res["methods"]["finetune"]["num_models"] == 4
    if has_baseline:  # halves of the retrained models, scored like a method
        half = models // 2
        expected = epsilon_hat(r[:, :half], r[:, half:2 * half], y)
        assert res["baseline"]["epsilon_hat"] == pytest.approx(expected.epsilon_hat)
        # the competition score needs 3 models in the "unlearned" half
        assert ("competition_forget_score" in res["baseline"]) is (half >= 3)
        assert ("privacy_note" in res["baseline"]) is (half < 3)
    json.dumps(res)


def test_load_rejects_mismatched_arrays(tmp_path):
    z = torch.randn(5, 4, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    write_logits_dir(tmp_path, z, y, {"m": torch.randn(6, 4, 3)[:5]})
    np.save(tmp_path / "m" / "logits_unlearn.npy", pack_slots(torch.randn(5, 4, 2),
                                                              torch.tensor([0, 1, 1, 0, 1])))
    with pytest.raises(ValueError, match="does not match the retrained"):
        load_logits_dir(tmp_path)
    np.save(tmp_path / "m" / "logits_unlearn.npy", pack_slots(torch.randn(5, 4, 3),
                                                              torch.tensor([1, 1, 2, 0, 1])))
    with pytest.raises(ValueError, match="labels .* differ"):
        load_logits_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no logits_retain.npy"):
        load_logits_dir(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="'nope'"):
        load_logits_dir(tmp_path, methods=["nope"])


def _args(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    metrics_cli.add_parser(sub)
    return parser.parse_args(["evaluate", *argv])


def test_cli_writes_json_markdown_and_png(tmp_path, fixture_arrays, capsys):
    path, *_ = _small_dir(tmp_path, fixture_arrays, S=12)
    out = tmp_path / "out"
    args = _args([str(path), "--out", str(out), "--methods", "finetune"])
    assert args.func(args) == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert list(res["methods"]) == ["finetune"]
    md = (out / "evaluation.md").read_text()
    assert "| finetune |" in md and "baseline" in md
    assert (out / "epsilon_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_cli_bad_input_exit_status(tmp_path, capsys):
    args = _args([str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert args.func(args) == 2
    assert "logits_retain.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args([str(tmp_path), "--delta", "1.5"])


def test_a_method_with_too_few_models_is_skipped_not_fatal(tmp_path):
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (20,), generator=gen)
    r = torch.randn(20, 6, 5, generator=gen)
    methods = {"two": torch.randn(20, 2, 5, generator=gen),
               "one": torch.randn(20, 1, 5, generator=gen),
               "four": torch.randn(20, 4, 5, generator=gen)}
    res = evaluate_logits_dir(write_logits_dir(tmp_path / "logits", r, y, methods))
    two, one, four = (res["methods"][n] for n in ("two", "one", "four"))
    assert "epsilon_hat" in two and "competition_forget_score" not in two
    assert "competition score needs >= 2 retrained and >= 3 unlearned" in two["privacy_note"]
    assert "epsilon_hat" not in one and "epsilon-hat needs" in one["privacy_note"]
    assert one["forget_accuracy"] == pytest.approx(
        float((methods["one"][:, 0].argmax(1) == y).double().mean()))
    assert "privacy_note" not in four and four["competition_forget_score"] is not None
    from fastunlearn.metrics.report import render_evaluation_markdown

    md = render_evaluation_markdown(res)
    assert "| two |" in md and "Skipped:" in md and "- `one`: epsilon-hat needs" in md
    json.dumps(res)


def test_write_replaces_an_earlier_run_and_keeps_oracle_metrics_apart(tmp_path):
    gen = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (6,), generator=gen)
    r = torch.randn(6, 3, 3, generator=gen)
    u = torch.randn(6, 3, 3, generator=gen)
    folder = tmp_path / "logits"
    write_logits_dir(folder, r, y, {"old": u, "finetune": u})
    oracle_cols = {"wall_time_s": [10.0, 20.0, 30.0]}
    write_logits_dir(folder, r, y, {"retrain": u, "finetune": u},
                     {"retrain": {"wall_time_s": [1.0, 1.0, 1.0]}},
                     retrain_metrics=oracle_cols, forget_set=[4, 2, 9, 1, 0, 3])
    d = load_logits_dir(folder)
    assert sorted(d.methods) == ["finetune", "retrain"]  # "old" is gone
    assert not (folder / "old").exists()
    assert d.retrain_metrics["wall_time_s"] == [10.0, 20.0, 30.0]
    assert d.metrics["retrain"]["wall_time_s"] == [1.0, 1.0, 1.0]
    assert d.forget_set == [4, 2, 9, 1, 0, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="'metrics' names 'retrain'.*'retrain_metrics'"):
        write_logits_dir(folder, r, y, {"finetune": u}, {"retrain": oracle_cols})
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace it"):
        write_logits_dir(other, r, y, {"finetune": u})
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert sorted(load_logits_dir(folder).methods) == ["finetune", "retrain"]  # untouched


def test_evaluation_md_links_its_histogram_and_no_plots_removes_a_stale_one(tmp_path):
    """`fastunlearn html evaluation.md` embeds the plot; --no-plots leaves no old one beside."""
    from fastunlearn.cli import main
    from fastunlearn.report import write_html_report

    torch.manual_seed(0)
    y = torch.randint(0, 3, (12,))
    path = write_logits_dir(tmp_path / "logits", torch.randn(12, 4, 3), y,
                            {"m": torch.randn(12, 4, 3)})
    out = tmp_path / "out"
    assert main(["evaluate", str(path), "--out", str(out), "--no-progress"]) == 0
    markdown = (out / "evaluation.md").read_text()
    assert markdown.rstrip().endswith("![Per-example epsilon-hat of each method]"
                                      "(epsilon_hist.png)")
    html = write_html_report(out / "evaluation.md").read_text()
    assert html.count("data:image/png;base64,") == 1
    assert main(["evaluate", str(path), "--out", str(out), "--no-plots", "--no-progress"]) == 0
    assert not (out / "epsilon_hist.png").exists()
    assert ".png" not in (out / "evaluation.md").read_text()


@pytest.mark.parametrize(("value", "why"), [("", "names no method"), (" , ", "names no method"),
                                            ("m,m", "names m twice")])
def test_an_empty_or_repeated_methods_list_is_refused(tmp_path, capsys, value, why):
    """Before, '' evaluated every method and 'm,m' was taken as 'm' (forget refuses both)."""
    from fastunlearn.cli import main

    path = write_logits_dir(tmp_path / "logits", torch.randn(6, 4, 3),
                            torch.randint(0, 3, (6,)), {"m": torch.randn(6, 4, 3)})
    out = tmp_path / "out"
    assert main(["evaluate", str(path), "--methods", value, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fastunlearn evaluate: error: '--methods' {value!r} {why}; leave it out to evaluate "
        "every method")
    assert not out.exists()
    with pytest.raises(ValueError, match="'methods' names 'm' twice"):
        load_logits_dir(path, methods=["m", "m"])


def test_a_one_class_forget_set_says_the_class_columns_repeat_forget_accuracy(tmp_path):
    from fastunlearn.metrics.report import render_evaluation_markdown

    torch.manual_seed(0)
    one = evaluate_logits_dir(write_logits_dir(
        tmp_path / "one", torch.randn(8, 4, 3), torch.full((8,), 2),
        {"m": torch.randn(8, 4, 3)}))
    assert "The forget set holds one class" in render_evaluation_markdown(one)
    two = evaluate_logits_dir(write_logits_dir(
        tmp_path / "two", torch.randn(8, 4, 3), torch.tensor([0, 2] * 4),
        {"m": torch.randn(8, 4, 3)}))
    assert "The forget set holds one class" not in render_evaluation_markdown(two)


def test_cli_keeps_an_earlier_evaluation_with_other_settings(tmp_path, fixture_arrays, capsys):
    """A second evaluation into the same --out with another --delta moves the first one's
    files to earlier/evaluation-1/ (with a warning), where a repeat replaces them."""
    from fastunlearn.cli import main

    path, *_ = _small_dir(tmp_path, fixture_arrays)
    out = tmp_path / "out"
    argv = ["evaluate", str(path), "--out", str(out), "--no-progress", "--no-baseline"]
    assert main(argv) == 0
    first = json.loads((out / "evaluation.json").read_text())
    assert main(argv) == 0  # the same settings: replaced, nothing kept
    assert not (out / "earlier").exists()
    with pytest.warns(UserWarning, match=r"'delta': 0.05 -> 0.1"):
        assert main([*argv, "--delta", "0.1"]) == 0
    kept = out / "earlier" / "evaluation-1"
    assert sorted(p.name for p in kept.iterdir()) == [
        "epsilon_hist.png", "evaluation.json", "evaluation.md"]
    assert json.loads((kept / "evaluation.json").read_text())["delta"] == first["delta"] == 0.05
    assert json.loads((out / "evaluation.json").read_text())["delta"] == 0.1
    capsys.readouterr()
