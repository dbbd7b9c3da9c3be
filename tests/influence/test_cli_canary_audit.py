"""Audit of `fastunlearn repair`, `fastunlearn unlearn-features` and canary unlearning.

Expected values come from the command line given (flags recorded at the experiment's entry
point), from the written files parsed back, or from a brute-force recomputation (every
secret scored by a full forward pass, a retraining done here), never from an output of the
code under test compared with itself.
"""

import dataclasses
import itertools
import json
import math
import re

import pytest
import torch
from scipy.stats import skewnorm

from fastunlearn._json_data import NON_FINITE_STRINGS
from fastunlearn.cli import main
from fastunlearn.exposure import CanaryConfig, CharLM, run_canary_experiment, train_char_lm
from fastunlearn.influence import canary as canary_module
from fastunlearn.influence import experiment as repair_experiment
from fastunlearn.influence import feature_experiment
from fastunlearn.influence.canary import (
    CanaryUnlearnConfig,
    unlearn_canary,
    write_canary_outputs,
)

# the every-flag runs pass flags that do nothing in their combination on purpose; the
# warnings saying so are tested in test_influence_cli_fixes.py
pytestmark = pytest.mark.filterwarnings("ignore:.*(has|have) no effect:UserWarning")


class _Stop(Exception):
    """Raised by a recording stub so that nothing after the entry point runs."""


def _strict_json(text):
    """Parse JSON, refusing NaN / Infinity (not JSON, though Python's json writes them)."""
    def bad(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=bad)


# ---- fastunlearn repair ------------------------------------------------------------------


def _record_repair(monkeypatch, error=ValueError):
    seen = []

    def stub(config, data=None, *, should_stop=None):
        seen.append(config)
        raise error("stub: stop before training")

    monkeypatch.setattr(repair_experiment, "run_repair_experiment", stub)
    return seen


def test_repair_every_flag_reaches_the_experiment_config(monkeypatch, tmp_path, capsys):
    seen = _record_repair(monkeypatch)
    # every value differs from its default
    argv = ["repair", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--model", "mlp",
            "--budget", "30", "--seed", "7", "--epochs", "3", "--lr", "0.02",
            "--train-batch", "17", "--protocol", "one-shot", "--order", "1",
            "--solver", "lissa", "--curvature", "hessian", "--damping", "2.5", "--tau", "0.125",
            "--steps", "4", "--batch", "33", "--last-layers", "2", "--hvp-batch-size", "99",
            "--cg-tol", "0.001", "--cg-maxiter", "12", "--lissa-batch", "21",
            "--lissa-damping", "0.003", "--lissa-scale", "555", "--lissa-depth", "9",
            "--lissa-hessian", "full", "--n-train", "123", "--progress",
            "--cache-dir", str(tmp_path / "cache"), "--result-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "stub: stop before training" in capsys.readouterr().err
    (cfg,) = seen
    expected = dict(dataset="cifar10", data_dir=str(tmp_path), model="mlp", budget=30, seed=7,
                    epochs=3, lr=0.02, train_batch=17, protocols=("one-shot",), order=1,
                    solver="lissa", curvature="hessian", damping=2.5, tau=0.125, steps=4,
                    batch=33, last_layers=2, hvp_batch_size=99, cg_tol=0.001, cg_maxiter=12,
                    lissa_batch=21, lissa_damping=0.003, lissa_scale=555.0, lissa_depth=9,
                    lissa_hessian="full", n_train=123, device="cpu", progress=True,
                    cache_dir=str(tmp_path / "cache"))
    assert dataclasses.asdict(cfg) == expected
    # "both" runs the two protocols, "iterative" only that one; "auto" stays a string
    for protocol, protocols in (("both", ("iterative", "one-shot")),
                                ("iterative", ("iterative",))):
        assert main(["repair", "--protocol", protocol, "--result-dir",
                     str(tmp_path / "out")]) == 2
        assert tuple(seen[-1].protocols) == protocols and seen[-1].tau == "auto"


@pytest.mark.parametrize("flag, value", [
    ("--lr", "nan"), ("--lr", "0"), ("--damping", "inf"), ("--tau", "-1"), ("--tau", "nan"),
    ("--budget", "0"), ("--epochs", "0"), ("--lissa-scale", "-2"), ("--order", "3"),
    ("--solver", "newton"), ("--n-train", "-1"), ("--cg-tol", "-0.1"),
])
def test_repair_bad_flag_values_are_argparse_errors(monkeypatch, tmp_path, capsys, flag, value):
    seen = _record_repair(monkeypatch)
    with pytest.raises(SystemExit) as info:
        main(["repair", flag, value, "--result-dir", str(tmp_path)])
    assert info.value.code == 2 and not seen
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def _unwritable_target(tmp_path, where, json_name):
    """``(blocker file, output folder)``: the folder is the file, below it, or its JSON
    output path is taken by a folder."""
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    if where == "file":
        return blocker, blocker
    if where == "below_file":
        return blocker, blocker / "sub"
    target = tmp_path / "out"
    (target / json_name).mkdir(parents=True)
    return blocker, target


@pytest.mark.parametrize("where", ["file", "below_file", "json_is_folder"])
def test_repair_unwritable_result_dir_is_refused_before_training(
        monkeypatch, tmp_path, capsys, where):
    seen = _record_repair(monkeypatch, error=AssertionError)
    blocker, target = _unwritable_target(tmp_path, where, "repair_digits.json")
    assert main(["repair", "--result-dir", str(target), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn repair: error:") and str(target) in err
    assert not seen  # refused before any training
    assert blocker.read_text() == "keep me"


def test_repair_corrupt_cifar_file_is_a_clean_error(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"")  # truncated download
    status = main(["repair", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                   "--result-dir", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn repair: error:") and str(tmp_path) in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _table_row(markdown, first_cell):
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in the Markdown")


def test_repair_json_stdout_is_strict_and_equals_the_written_file(tmp_path, capsys):
    # lr 1e-12: training moves no weight, so the clean and the poisoned model are the same
    # network, their accuracies are equal and "% restored" is 0 / 0 (not a number)
    out = tmp_path / "out"
    status = main(["repair", "--epochs", "1", "--lr", "1e-12", "--n-train", "200",
                   "--budget", "20", "--protocol", "one-shot", "--cg-maxiter", "1",
                   "--result-dir", str(out), "--no-plots", "--json"])
    assert status == 0
    captured = capsys.readouterr()
    # stdout holds the JSON document alone; the summary lines went to stderr
    (document,) = captured.out.strip().splitlines()
    printed = _strict_json(document)
    lines = captured.err.strip().splitlines()
    written = _strict_json((out / "repair_digits.json").read_text())
    assert printed == written
    assert printed["files"] == {"json": str(out / "repair_digits.json"),
                                "markdown": str(out / "repair_digits.md")}
    tr = written["training"]
    assert tr["acc_clean"] == tr["acc_poisoned"]
    assert written["protocols"]["one-shot"]["restored"] == "nan"  # 0 / 0, strict JSON
    # the printed summary shows the JSON's values
    summary = re.search(r"clean (\S+)\s+poisoned (\S+)", "\n".join(lines))
    assert float(summary[1]) == pytest.approx(tr["acc_clean"], abs=5e-5)
    assert float(summary[2]) == pytest.approx(tr["acc_poisoned"], abs=5e-5)
    one_shot = next(line for line in lines if line.strip().startswith("one-shot:"))
    assert "restored -" in one_shot
    p = written["protocols"]["one-shot"]
    repaired = float(re.search(r"repaired (\S+)", one_shot)[1])
    assert repaired == pytest.approx(p["acc_after"], abs=5e-5)
    assert f"gradients {p['num_gradients']}" in one_shot and f"HVPs {p['num_hvps']}" in one_shot
    assert p["num_gradients"] == 2 * written["data"]["flipped"] == 40
    # the Markdown's accuracy table shows the same numbers
    md = (out / "repair_digits.md").read_text()
    for cell, value in (("clean (= retraining)", tr["acc_clean"]),
                        ("poisoned", tr["acc_poisoned"]),
                        ("repaired (one-shot)", p["acc_after"])):
        assert float(_table_row(md, cell)[1]) == pytest.approx(value, rel=1e-3)


# ---- fastunlearn unlearn-features ---------------------------------------------------------


def _record_features(monkeypatch, error=ValueError):
    seen = []

    def stub(config, data=None):
        seen.append(config)
        raise error("stub: stop before fitting")

    monkeypatch.setattr(feature_experiment, "run_feature_experiment", stub)
    return seen


def test_unlearn_features_every_flag_reaches_the_experiment_config(monkeypatch, tmp_path,
                                                                    capsys):
    seen = _record_features(monkeypatch)
    argv = ["unlearn-features", "--dataset", "wine", "--columns", "5, 2,7", "--top-k", "3",
            "--mode", "replace", "--rows", "11", "--value", "-0.75", "--l2", "3.5",
            "--steps", "2", "--tau", "0.0625", "--cg-tol", "1e-7", "--cg-maxiter", "44",
            "--seed", "9", "--no-linear", "--binary", "1,7", "--linear-lam", "0.5",
            "--epsilon", "0.3", "--delta", "0.2", "--progress", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "stub: stop before fitting" in capsys.readouterr().err
    (cfg,) = seen
    got = dataclasses.asdict(cfg)
    expected = dict(dataset="wine", columns=(5, 2, 7), top_k=3, mode="replace", n_rows=11,
                    value=-0.75, l2=3.5, steps=2, tau=0.0625, cg_tol=1e-7, cg_maxiter=44,
                    seed=9, linear=False, binary=(1, 7), linear_lam=0.5, epsilon=0.3,
                    delta=0.2, progress=True)
    assert {k: got[k] for k in expected} == expected
    # the settings without a flag keep FeatureConfig's defaults
    defaults = dataclasses.asdict(feature_experiment.FeatureConfig())
    assert {k: v for k, v in got.items() if k not in expected} == \
        {k: v for k, v in defaults.items() if k not in expected}


@pytest.mark.parametrize("where", ["file", "below_file", "json_is_folder"])
def test_unlearn_features_unwritable_out_is_refused_before_fitting(
        monkeypatch, tmp_path, capsys, where):
    seen = _record_features(monkeypatch, error=AssertionError)
    blocker, target = _unwritable_target(tmp_path, where, "features_wine.json")
    assert main(["unlearn-features", "--dataset", "wine", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn unlearn-features: error:") and str(target) in err
    assert not seen and blocker.read_text() == "keep me"


def test_unlearn_features_non_finite_results_print_like_the_report(monkeypatch, tmp_path,
                                                                    capsys):
    # a finite but huge replacement value (1e100: under the limit where its square
    # overflows, which is refused) makes the retraining non-finite: the distances to it
    # and its residual are not finite in the JSON; the summary must print them, not crash
    real = feature_experiment.run_feature_experiment

    def quick(config, data=None):  # fewer L-BFGS rounds: the same failure, faster
        return real(dataclasses.replace(config, train_rounds=2), data)

    monkeypatch.setattr(feature_experiment, "run_feature_experiment", quick)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="times the largest absolute feature value"):
        status = main(["unlearn-features", "--dataset", "wine", "--columns", "3", "--mode",
                       "replace", "--rows", "5", "--value", "1e100", "--no-linear",
                       "--no-plots", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Traceback" not in captured.err
    (document,) = captured.out.strip().splitlines()
    lines = captured.err.strip().splitlines()
    written = _strict_json((out / "features_wine.json").read_text())
    assert _strict_json(document) == written
    # the overflow happened: non-finite, written as the strings "inf" / "nan"
    assert written["retrained"]["residual"] in NON_FINITE_STRINGS
    assert written["original"]["distance_retrained"] in NON_FINITE_STRINGS

    def shown(value, text):
        if value is None or value == "nan":
            return text == "-"
        if value in ("inf", "-inf"):
            return text == value
        return math.isclose(float(text), value, rel_tol=1e-3, abs_tol=1e-12)

    rows = {"original": written["original"], "retrained": written["retrained"],
            **written["methods"]}
    for name, entry in rows.items():
        line = next(x for x in lines if x.strip().startswith(f"{name}:"))
        assert shown(entry["residual"], re.search(r"residual (\S+)", line)[1]), line
        assert shown(entry["acc"], re.search(r"acc (\S+)", line)[1]), line
        if "distance_retrained" in entry:
            assert shown(entry["distance_retrained"], re.search(r"distance (\S+)", line)[1])
    md = (out / "features_wine.md").read_text()
    assert _table_row(md, "retrained")[1] == "-"  # its residual


# ---- canary unlearning --------------------------------------------------------------------


def _tiny_canary(steps=4, **kwargs):
    return run_canary_experiment(CanaryConfig(n_sentences=60, steps=steps, hidden=16,
                                              embed_dim=8, insertions=3, seq_len=16,
                                              secret_length=3, **kwargs))


@torch.no_grad()
def _brute_force(model, vocab, prefix, secret):
    """Teacher-forced log2-perplexity of every 3-digit secret by full forward passes."""
    model.eval()
    pre = vocab.encode(prefix)
    pool = ["".join(t) for t in itertools.product("0123456789", repeat=len(secret))]
    seqs = torch.stack([torch.cat([pre, vocab.encode(s)]) for s in pool])
    logits, _ = model(seqs[:, :-1])
    logp = torch.log_softmax(logits.double(), dim=-1)
    tail = seqs[:, len(pre):]
    bits = -logp[:, len(pre) - 1:].gather(2, tail.unsqueeze(2)).squeeze(2).sum(1) / math.log(2)
    scores = dict(zip(pool, bits.tolist(), strict=True))
    own = scores.pop(secret)
    others = torch.tensor(list(scores.values()), dtype=torch.float64)
    # greedy completion, re-running the whole sequence for every character
    ids = pre.clone()
    for _ in range(len(secret)):
        nxt = model(ids.unsqueeze(0))[0][0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1)])
    completion = vocab.decode(ids[len(pre):])
    return own, others, completion


def _check_measurement(measured, model, vocab, prefix, secret):
    own, others, completion = _brute_force(model, vocab, prefix, secret)
    assert measured["log_perplexity"] == pytest.approx(own, rel=1e-6, abs=1e-6)
    low = 1 + int((others < own - 1e-6).sum())
    high = 1 + int((others <= own + 1e-6).sum())
    assert low <= measured["rank"] <= high
    space = others.numel() + 1
    assert measured["max_exposure"] == pytest.approx(math.log2(space))
    assert measured["rank_exposure"] == pytest.approx(
        math.log2(space) - math.log2(measured["rank"]))
    a, loc, scale = skewnorm.fit(others.numpy())
    expected = min(max(-skewnorm.logcdf(own, a, loc=loc, scale=scale) / math.log(2), 0.0),
                   math.log2(space))
    assert measured["skew_normal_exposure"] == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert measured["completion"] == completion


@pytest.fixture(scope="module")
def canary_run():
    """A tiny canary model, unlearned by a first-order update, with every exposure call."""
    import fastunlearn.exposure as exposure_pkg

    res = _tiny_canary()
    calls = []
    real = exposure_pkg.measure_exposure

    def spy(model, vocab, prefix, secrets, **kwargs):
        calls.append({"model": model, "vocab": vocab, "prefix": prefix, "secrets": secrets,
                      "kwargs": kwargs,
                      "params": [p.detach().clone() for p in model.parameters()]})
        return real(model, vocab, prefix, secrets, **kwargs)

    original = [p.detach().clone() for p in res.model.parameters()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exposure_pkg, "measure_exposure", spy)
        out = unlearn_canary(res, CanaryUnlearnConfig(order=1, tau=1e-3, retrain=True))
    return res, out, calls, original


def test_canary_before_after_retrained_use_one_candidate_set_and_seed(canary_run):
    res, out, calls, original = canary_run
    assert len(calls) == 3  # before, after, retrained
    ccfg = res.config
    for call in calls:
        assert call["vocab"] is res.vocab and call["prefix"] == ccfg.prefix
        assert call["secrets"] == res.canary.secret
        # the alphabet (digits) is left at its default, as in the canary experiment
        assert call["kwargs"] == {"n_candidates": ccfg.n_candidates,
                                  "enumerate_limit": ccfg.enumerate_limit, "seed": ccfg.seed}
    # before: the trained model as given; after: the updated copy; retrained: a third one
    assert calls[0]["model"] is res.model
    assert all(torch.equal(a, b) for a, b in zip(calls[0]["params"], original, strict=True))
    assert calls[1]["model"] is out["model"] and out["model"] is not res.model
    assert any(not torch.equal(a, b) for a, b in zip(calls[1]["params"], original,
                                                      strict=True))
    assert calls[2]["model"] not in (res.model, out["model"])
    # the original model is untouched and "before" is the canary experiment's measurement
    assert all(torch.equal(a, p) for a, p in zip(original, res.model.parameters(),
                                                 strict=True))
    # (scored there together with the control secret: batch rounding only)
    assert out["before"]["log_perplexity"] == pytest.approx(res.canary.log_perplexity,
                                                           rel=1e-7)
    assert out["before"]["rank"] == res.canary.rank


def test_canary_exposures_match_brute_force_scoring(canary_run):
    res, out, _, _ = canary_run
    assert out["update"]["applied"]
    prefix, secret = res.config.prefix, res.canary.secret
    _check_measurement(out["before"], res.model, res.vocab, prefix, secret)
    _check_measurement(out["after"], out["model"], res.vocab, prefix, secret)
    # the update moved the secret's score: measuring the wrong model would be noticed
    assert abs(out["after"]["log_perplexity"] - out["before"]["log_perplexity"]) > 1e-3


def test_canary_retrained_is_a_retraining_on_the_corrected_text(canary_run):
    res, out, _, _ = canary_run
    cfg, secret = res.config, res.canary.secret
    text = res.text
    for off in res.canary_offsets:  # the corrected text, built here
        a = off + len(cfg.prefix)
        assert text[a:a + len(secret)] == secret
        text = text[:a] + out["replacement"] + text[a + len(secret):]
    torch.manual_seed(cfg.seed)
    fresh = CharLM(res.vocab.size, cfg.embed_dim, cfg.hidden, cfg.layers, cfg.cell)
    train_char_lm(fresh, res.vocab.encode(text), steps=cfg.steps, seq_len=cfg.seq_len,
                  batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  seed=cfg.seed)
    _check_measurement(out["retrained"], fresh, res.vocab, cfg.prefix, secret)
    assert out["retrain_seconds"] > 0


def test_canary_files_agree_with_the_result(canary_run, tmp_path):
    res, out, _, _ = canary_run
    files = write_canary_outputs(out, tmp_path)
    saved = _strict_json((tmp_path / "canary_unlearning.json").read_text())
    assert "model" not in saved and saved["files"] == files
    assert saved["config"]["order"] == 1 and saved["config"]["tau"] == 1e-3
    assert saved["config"]["seq_len"] == res.config.seq_len
    md = (tmp_path / "canary_unlearning.md").read_text()
    header = md.splitlines()[2]
    assert f"`{saved['secret']}` replaced by `{saved['replacement']}`" in header
    assert f"in {len(res.canary_offsets)} canaries: {saved['num_affected']} affected" in header
    assert "first order (tau 0.001)" in header and "applied: yes" in header
    for row, key in (("before", "before"), ("updated", "after"), ("retrained", "retrained")):
        cells = _table_row(md, row)
        m = saved[key]
        assert float(cells[1]) == pytest.approx(m["log_perplexity"], rel=1e-3)
        assert int(cells[2]) == m["rank"]
        assert float(cells[3]) == pytest.approx(m["rank_exposure"], rel=1e-3, abs=1e-4)
        assert cells[5] == f"`{m['completion']}`"
    assert f"{saved['update']['num_gradients']} window gradients" in md
    assert saved["update"]["num_gradients"] == 2 * saved["num_affected"]


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_canary_first_order_auto_step_uses_the_configured_curvature(monkeypatch, curvature):
    res = _tiny_canary(steps=0, control=False)
    seen = {}

    def stub(model, *args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(canary_module, "influence_update", stub)
    with pytest.raises(_Stop):
        unlearn_canary(res, CanaryUnlearnConfig(order=1, tau="auto", curvature=curvature,
                                                retrain=False))
    assert seen["order"] == 1 and seen["tau"] == "auto"
    assert seen.get("curvature") == curvature
    # second order: the CG settings reach the update too
    seen.clear()
    with pytest.raises(_Stop):
        unlearn_canary(res, CanaryUnlearnConfig(order=2, curvature=curvature, damping=12.5,
                                                cg_maxiter=7, retrain=False))
    assert (seen["order"], seen["solver"], seen["curvature"], seen["damping"],
            seen["maxiter"]) == (2, "cg", curvature, 12.5, 7)


@pytest.mark.parametrize("cfg, match", [
    (CanaryUnlearnConfig(order=1, tau=-0.5, retrain=False), "tau"),
    (CanaryUnlearnConfig(order=2, curvature="fisher", retrain=False), "curvature"),
    (CanaryUnlearnConfig(order=1, curvature="fisher", retrain=False), "curvature"),
    (CanaryUnlearnConfig(seq_len=10_000, retrain=False), "seq_len"),
])
def test_canary_errors_raised_by_the_update_leave_the_model_unchanged(cfg, match):
    res = _tiny_canary(steps=0, control=False)
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        unlearn_canary(res, cfg)
    assert all(torch.equal(v, before[k]) for k, v in res.model.state_dict().items())
