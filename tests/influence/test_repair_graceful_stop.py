"""Ctrl-C in ``fastunlearn repair``: stop after the step in progress and keep what was done.

``iterative_label_repair`` and ``run_repair_experiment`` take a ``should_stop`` callable
asked between steps; ``fastunlearn repair`` wires it to the first Ctrl-C, writes the
partial result and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
from typing import Any

import pytest
import torch

from fastunlearn._interrupt import INTERRUPTED_STATUS
from fastunlearn.influence import cli, drivers, iterative_label_repair
from fastunlearn.influence import experiment as exp
from fastunlearn.influence.experiment import RepairConfig, load_repair_data, render_report
from tests.influence.small_nets import net_data, small_net

# --- helpers ---------------------------------------------------------------------------


class StopOn:
    """``should_stop`` that answers True from its ``k``-th call on (``calls`` counts)."""

    def __init__(self, k: int | None) -> None:
        self.k, self.calls = k, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.k is not None and self.calls >= self.k


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_X, _Y = net_data(60)
_KW: dict[str, Any] = dict(batch_size=8, seed=0, order=1, tau=1e-2)


def _repair(steps: int, should_stop: Any = None) -> tuple[torch.nn.Module, Any]:
    model = small_net(0)
    out = iterative_label_repair(model, _X, _Y, steps=steps, should_stop=should_stop, **_KW)
    return model, out


# --- iterative_label_repair -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stop_after_k_steps_applies_exactly_k_whole_steps(k):
    reference, ref_out = _repair(k)
    assert len(ref_out.results) == k and not ref_out.stopped_on_request
    stop = StopOn(k)
    model, out = _repair(5, stop)
    assert stop.calls == k  # asked before steps 2 .. k+1, never before the first
    assert _same(_state(model), _state(reference))
    assert out.stopped_on_request
    assert len(out.results) == k
    assert [s["step"] for s in out.steps] == list(range(1, k + 2))
    last = out.steps[-1]
    assert last["batch"] == 0 and "applied" not in last
    assert last["reason"].startswith("stopped on request")
    assert f"after {k} of 5 steps" in last["reason"]
    assert out.num_gradients == ref_out.num_gradients
    assert "stopped_on_request=True" in repr(out)
    assert "stopped_on_request" not in repr(ref_out)


def test_a_stop_that_never_comes_changes_nothing():
    reference, ref_out = _repair(3)
    stop = StopOn(None)
    model, out = _repair(3, stop)
    assert stop.calls == 2  # before steps 2 and 3; not after the last one
    assert _same(_state(model), _state(reference))
    assert not out.stopped_on_request
    assert len(out.steps) == len(ref_out.steps) == 3
    assert [s["mispredicted"] for s in out.steps] == [s["mispredicted"] for s in ref_out.steps]


@pytest.mark.parametrize("bad", [True, 1, "stop"])
def test_a_bad_should_stop_is_refused_before_any_step(bad):
    model = small_net(0)
    before = _state(model)
    with pytest.raises(TypeError, match="should_stop"):
        iterative_label_repair(model, _X, _Y, steps=2, should_stop=bad, **_KW)
    assert _same(_state(model), before)


def test_sigint_during_a_step_finishes_it_and_stops(monkeypatch):
    """A real SIGINT inside a step, with GracefulStop installed as in the command."""
    from fastunlearn._interrupt import GracefulStop

    reference, _ = _repair(1)
    real = drivers.influence_update

    def update(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGINT)  # the first Ctrl-C, mid-step
        return real(*args, **kwargs)

    monkeypatch.setattr(drivers, "influence_update", update)
    import io

    with GracefulStop(what="repair step", stream=io.StringIO()) as stop:
        model, out = _repair(4, stop)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert stop.requested and out.stopped_on_request and len(out.results) == 1
    assert _same(_state(model), _state(reference))


# --- run_repair_experiment --------------------------------------------------------------

_TINY = dict(epochs=2, steps=3, batch=16, order=1, tau=0.01, n_train=300, budget=100,
             seed=3)


@pytest.fixture(scope="module")
def tiny_data() -> exp.RepairData:
    return load_repair_data(RepairConfig(**_TINY))


@pytest.fixture(scope="module")
def reference(tiny_data) -> dict[str, Any]:
    return exp.run_repair_experiment(RepairConfig(**_TINY), tiny_data)


def _run(data: exp.RepairData, should_stop: Any, **changes: Any) -> dict[str, Any]:
    return exp.run_repair_experiment(RepairConfig(**{**_TINY, **changes}), data,
                                     should_stop=should_stop)


def _without_times(step: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in step.items() if not k.startswith("tim") and "second" not in k}


def test_experiment_without_a_stop_is_marked_complete(tiny_data, reference):
    assert reference["stopped_on_request"] is False
    assert reference["stop_note"] is None and reference["skipped_protocols"] == []
    assert list(reference["protocols"]) == ["iterative", "one-shot"]
    assert not any(p["stopped_on_request"] for p in reference["protocols"].values())
    assert "Partial result" not in render_report(reference)
    stop = StopOn(None)
    again = _run(tiny_data, stop)
    # asked between the trainings, before each protocol and before iterative steps 2, 3
    assert stop.calls == 1 + 2 + 2
    assert again["stopped_on_request"] is False
    for name in ("iterative", "one-shot"):
        a, b = again["protocols"][name], reference["protocols"][name]
        assert a["acc_after"] == b["acc_after"]
        # NaN when the tiny run's poisoned model is not worse than the clean one
        assert a["restored"] == pytest.approx(b["restored"], nan_ok=True)
        assert [_without_times(s) for s in a["steps"]] == [_without_times(s) for s in b["steps"]]


def test_experiment_stopped_in_the_iterative_protocol_keeps_its_steps(tiny_data, reference,
                                                                      tmp_path):
    # calls: 1 between the trainings, 2 before "iterative", 3 before step 2, 4 before step 3
    result = _run(tiny_data, StopOn(4))
    assert result["stopped_on_request"] is True
    assert list(result["protocols"]) == ["iterative"]  # one-shot not run
    assert result["skipped_protocols"] == ["one-shot"]
    it, ref = result["protocols"]["iterative"], reference["protocols"]["iterative"]
    assert it["stopped_on_request"] is True
    run = [s for s in it["steps"] if "applied" in s]
    assert len(run) == 2
    assert [_without_times(s) for s in run] == [_without_times(s) for s in ref["steps"][:2]]
    assert it["steps"][-1]["reason"].startswith("stopped on request")
    # accuracy and % restored after the two steps run
    assert it["acc_after"] == run[-1]["eval"]
    tr = result["training"]
    gap = tr["acc_clean"] - tr["acc_poisoned"]  # no damage to restore: NaN
    expected = (it["acc_after"] - tr["acc_poisoned"]) / gap if gap > 0 else math.nan
    assert it["restored"] == pytest.approx(expected, nan_ok=True)
    assert it["num_gradients"] == 2 * sum(s["batch"] for s in it["steps"])
    note = result["stop_note"]
    assert "stopped on request" in note and "2 of 3 steps" in note and "one-shot" in note
    assert "skipped" in note
    files = exp.write_outputs(result, tmp_path, plots=False)
    md = (tmp_path / "repair_digits.md").read_text()
    head = md.split("| model |")[0]  # before the first table
    assert "Partial result" in head and "2 of 3 steps" in head and "one-shot" in head
    written = json.loads((tmp_path / "repair_digits.json").read_text())
    assert written["stopped_on_request"] is True and written["stop_note"] == note
    assert set(files) == {"json", "markdown"}


def test_experiment_stopped_before_the_protocols_reports_the_training(tiny_data, reference):
    result = _run(tiny_data, StopOn(2), protocols=("one-shot", "iterative"))
    assert result["stopped_on_request"] is True and result["protocols"] == {}
    assert result["skipped_protocols"] == ["one-shot", "iterative"]
    assert result["training"]["acc_poisoned"] == reference["training"]["acc_poisoned"]
    assert "no repair protocol run" in result["stop_note"]
    assert "Partial result" in render_report(result)


def test_experiment_stopped_after_one_shot_skips_iterative(tiny_data, reference):
    result = _run(tiny_data, StopOn(3), protocols=("one-shot", "iterative"))
    assert list(result["protocols"]) == ["one-shot"]
    assert result["skipped_protocols"] == ["iterative"]
    assert result["protocols"]["one-shot"]["acc_after"] == \
        reference["protocols"]["one-shot"]["acc_after"]
    assert result["protocols"]["one-shot"]["stopped_on_request"] is False
    assert "one-shot: done" in result["stop_note"]


def test_stop_before_the_poisoned_training_raises(tiny_data, monkeypatch):
    trainings: list[int] = []
    real = exp.train_classifier

    def train(*args: Any, **kwargs: Any) -> float:
        trainings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "train_classifier", train)
    rng = torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_data, StopOn(1))
    assert len(trainings) == 1  # the clean training finished, the poisoned one never began
    assert torch.equal(torch.get_rng_state(), rng)


def test_experiment_refuses_a_bad_should_stop_before_any_work(tiny_data, monkeypatch):
    def train(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("trained before checking should_stop")

    monkeypatch.setattr(exp, "train_classifier", train)
    with pytest.raises(TypeError, match="should_stop"):
        _run(tiny_data, object())


# --- fastunlearn repair -----------------------------------------------------------------

_ARGV = ["--epochs", "2", "--steps", "3", "--batch", "16", "--order", "1", "--n-train", "300",
         "--budget", "100", "--tau", "0.01", "--no-progress"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    return parser.parse_args(["repair", *argv])


def _ctrl_c_in_the_first_update(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = drivers.influence_update

    def update(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C mid-step
        return real(*args, **kwargs)

    monkeypatch.setattr(drivers, "influence_update", update)
    return calls


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_ctrl_c_writes_the_partial_result_and_exits_130(tmp_path, capsys, monkeypatch,
                                                            as_json):
    calls = _ctrl_c_in_the_first_update(monkeypatch)
    args = _parse([*_ARGV, "--result-dir", str(tmp_path), *(["--json"] if as_json else [])])
    assert args.func(args) == INTERRUPTED_STATUS == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert len(calls) == 1  # step 1 of the iterative protocol; one-shot skipped
    out, err = capsys.readouterr()
    assert "Ctrl-C" in err and "stopped on request" in err
    assert str(tmp_path / "repair_digits.json") in err
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"repair_digits.{suffix}").is_file()
    written = json.loads((tmp_path / "repair_digits.json").read_text())
    assert written["stopped_on_request"] is True
    assert written["skipped_protocols"] == ["one-shot"]
    assert list(written["protocols"]) == ["iterative"]
    assert "1 of 3 steps" in written["stop_note"]
    assert "Partial result" in (tmp_path / "repair_digits.md").read_text()
    if as_json:
        document = json.loads(out)  # stdout holds the document alone
        assert document["stopped_on_request"] is True
        assert document["protocols"] == written["protocols"]
        assert document["files"]["json"] == str(tmp_path / "repair_digits.json")
    else:
        assert "wrote json" in out


def test_cli_ctrl_c_during_the_clean_training_propagates(tmp_path, monkeypatch):
    real = exp.train_classifier
    trainings: list[int] = []

    def train(*args: Any, **kwargs: Any) -> float:
        trainings.append(1)
        if len(trainings) == 1:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "train_classifier", train)
    args = _parse([*_ARGV, "--result-dir", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        args.func(args)
    assert len(trainings) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not (tmp_path / "repair_digits.json").exists()


def test_cli_without_ctrl_c_exits_0_and_says_complete(tmp_path, capsys):
    args = _parse([*_ARGV, "--no-plots", "--protocol", "one-shot", "--result-dir",
                   str(tmp_path), "--json"])
    with pytest.warns(UserWarning, match="'--steps' and '--batch' have no effect with "
                      "'--protocol one-shot'"):  # _ARGV's iterative settings
        assert args.func(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["stopped_on_request"] is False and document["stop_note"] is None

