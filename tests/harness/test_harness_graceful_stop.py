"""Ctrl-C in ``fastunlearn forget``: stop between method runs and keep the finished work.

``run_harness(..., should_stop=...)`` asks the callable after each model of the training
phase and before each method run. Between method runs a True answer ends the loop: the runs
made are scored and written, the others are "not run" (no error), and the result says
``stopped_on_request``. During the training phase it raises KeyboardInterrupt (nothing to
compare yet) and keeps the trained models in the cache. The command wires it to
:class:`~fastunlearn._interrupt.GracefulStop` and exits with status 130.
"""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from fastunlearn._interrupt import INTERRUPTED_STATUS, GracefulStop
from fastunlearn.data import load_digits_dataset
from fastunlearn.forget import ForgetConfig, base
from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.harness import cli as harness_cli
from fastunlearn.harness import runner as harness_runner
from fastunlearn.harness.cli import main
from fastunlearn.metrics import load_logits_dir
from tests.helpers import canonical

_DIGITS = load_digits_dataset()
DATA = HarnessData(_DIGITS.X_train[:160].float(), _DIGITS.y_train[:160],
                   _DIGITS.X_test[:60].float(), _DIGITS.y_test[:60], 10, "digits-tiny")

METHODS = ("finetune", "fisher", "neggrad")
SEEDS = 2
#: the original model and one oracle: should_stop is asked once after each
TRAIN_CALLS = 2


def _config(tmp: Path, **kw: Any) -> HarnessConfig:
    opts: dict[str, Any] = dict(methods=METHODS, seeds=SEEDS, oracles=1, model="mlp",
                                train=TrainSettings(epochs=1), forget="class:3", mia=False,
                                cache_dir=str(tmp / "cache"), out_dir=str(tmp / "out"),
                                overrides={"finetune": {"epochs": 1}, "neggrad": {"epochs": 1}})
    opts.update(kw)
    return HarnessConfig(**opts)


class StopAfter:
    """A ``should_stop`` that answers True from its ``k + 1``-th call on (``calls`` counts)."""

    def __init__(self, k: int) -> None:
        self.k, self.calls = k, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.k


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run (no should_stop); its cache is shared with the tests."""
    tmp = tmp_path_factory.mktemp("full")
    return {"tmp": tmp, "result": run_harness(_config(tmp, out_dir=None), DATA)}


def _runs(result: dict[str, Any]) -> list[Any]:
    """Every method run's record in run order, comparable (timings left out)."""
    return [canonical(r, ("cached",)) for e in result["methods"].values() for r in e["runs"]]


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_a_stop_between_method_runs_keeps_the_runs_made(tmp_path: Path, full_run: dict,
                                                        k: int) -> None:
    config = _config(tmp_path, cache_dir=str(full_run["tmp"] / "cache"))
    stop = StopAfter(TRAIN_CALLS + k)
    result = run_harness(config, DATA, should_stop=stop)
    assert stop.calls == TRAIN_CALLS + k + 1  # asked before each run; not after the stop
    assert result["stopped_on_request"] is True
    # the first k runs, as in the full run; the rest not made
    assert _runs(result) == _runs(full_run["result"])[:k]
    total = len(METHODS) * SEEDS
    assert result["stop_note"].startswith("stopped on request")
    assert f"after {k} of {total} method runs" in result["stop_note"]
    for i, name in enumerate(METHODS):
        entry = result["methods"][name]
        done = min(max(k - i * SEEDS, 0), SEEDS)
        assert [r["seed"] for r in entry["runs"]] == list(range(done))
        assert entry.get("not_run", []) == list(range(done, SEEDS))
        if done == 0:
            assert entry["status"] == "not run"
            assert entry["note"] == "stopped on request before it ran"
            assert entry["num_ok"] == 0 and "error" not in entry
            assert name in result["stop_note"]
            assert name not in result["logits"]
        else:  # summarised over the runs made, as without a stop
            assert entry["status"] == "ok" and entry["num_ok"] == done
            assert "unlearning_accuracy" in entry
            if done < SEEDS:
                assert "stopped on request after" in entry["note"]
            else:
                assert "note" not in entry
    # the outputs are written, and say that the run was stopped
    out = tmp_path / "out"
    written = json.loads((out / "results.json").read_text())
    assert written["stopped_on_request"] is True
    assert written["stop_note"] == result["stop_note"]
    assert set(written["methods"]) == set(METHODS)
    table = (out / "results.md").read_text()
    head = table.split("| method |")[0]
    assert "stopped on request" in head and f"after {k} of {total}" in head
    not_run = [n for n in METHODS if result["methods"][n]["status"] == "not run"]
    for name in not_run:
        assert f"| {name} | not run |" in table
    for png in ("accuracy.png", "time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_logits_dir(out / "logits")
    assert set(saved.methods) == {n for n in METHODS if n not in not_run}
    for name, logits in saved.methods.items():
        assert logits.shape[1] == len(result["methods"][name]["runs"])


def test_a_should_stop_that_never_answers_true_changes_nothing(tmp_path: Path,
                                                                full_run: dict) -> None:
    config = _config(tmp_path, cache_dir=str(full_run["tmp"] / "cache"), out_dir=None)
    stop = StopAfter(10**9)
    result = run_harness(config, DATA, should_stop=stop)
    assert stop.calls == TRAIN_CALLS + len(METHODS) * SEEDS
    assert result["stopped_on_request"] is False and "stop_note" not in result
    assert full_run["result"]["stopped_on_request"] is False
    assert "stop_note" not in full_run["result"]
    assert canonical(result, ("cache", "cached")) == \
        canonical(full_run["result"], ("cache", "cached"))
    assert all("not_run" not in e and "note" not in e for e in result["methods"].values())


@pytest.mark.parametrize("bad", [3, "yes", True])
def test_a_bad_should_stop_is_refused_before_training(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       bad: Any) -> None:
    def no_training(**kwargs: Any) -> Any:
        raise AssertionError("trained before the arguments were checked")

    monkeypatch.setattr(harness_runner, "train_or_load", no_training)
    with pytest.raises(TypeError, match="'should_stop'"):
        run_harness(_config(tmp_path), DATA, should_stop=bad)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("k", "oracles"), [(0, 1), (1, 2), (2, 2)])
def test_a_stop_while_the_oracles_train_raises_and_keeps_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int, oracles: int) -> None:
    config = _config(tmp_path, oracles=oracles)
    stop = StopAfter(k)  # True after the (k + 1)-th model of original + oracles
    with pytest.raises(KeyboardInterrupt, match="stopped on request"):
        run_harness(config, DATA, should_stop=stop)
    assert stop.calls == k + 1  # the model in training was finished, no further one
    assert not (tmp_path / "out").exists()  # nothing to compare: nothing written
    cached = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".safetensors"]
    assert len(cached) == k + 1
    # the next run loads them and trains the rest only
    calls: list[str] = []
    real = harness_runner.train_or_load

    def spy(**kwargs: Any) -> Any:
        tm = real(**kwargs)
        calls.append("hit" if tm.cached else "miss")
        return tm

    monkeypatch.setattr(harness_runner, "train_or_load", spy)
    result = run_harness(_config(tmp_path, oracles=oracles, methods=("fisher",), seeds=1,
                                 overrides={}, out_dir=None), DATA)
    assert result["cache"] == {"hits": k + 1, "misses": oracles - k}
    assert calls == ["hit"] * (k + 1) + ["miss"] * (oracles - k)


# --- the command ------------------------------------------------------------------------

def _cli_args(tmp_path: Path, methods: str) -> list[str]:
    return ["--method", methods, "--seeds", "1", "--oracles", "1", "--epochs", "1",
            "--model", "mlp", "--no-mia", "--no-progress", "--set", "finetune.epochs=1",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]


def _register(monkeypatch: pytest.MonkeyPatch, name: str, action: Any) -> None:
    """Register a forgetting method that calls ``action()`` and returns a copy of the model."""
    def method(model: nn.Module, forget: Any, retain: Any, config: Any) -> nn.Module:
        action()
        return copy.deepcopy(model)

    monkeypatch.setitem(base._REGISTRY, name, (method, ForgetConfig))


def _default_sigint() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not _default_sigint(), reason="SIGINT has a handler of its own here")
def test_ctrl_c_in_a_method_run_exits_130_with_the_partial_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    presses: list[int] = []

    def ctrl_c() -> None:  # a real SIGINT, as the terminal sends it
        presses.append(1)
        signal.raise_signal(signal.SIGINT)

    _register(monkeypatch, "ctrl_c_for_test", ctrl_c)
    rc = main(_cli_args(tmp_path, "ctrl_c_for_test,finetune"))
    assert rc == INTERRUPTED_STATUS
    assert presses == [1]
    assert _default_sigint()  # the handler was put back
    captured = capsys.readouterr()
    assert "Ctrl-C: stopping after the current method run" in captured.err
    assert "stopped on request" in captured.err and str(tmp_path / "out") in captured.err
    assert "methods with errors" not in captured.err  # "not run" is no error
    out = tmp_path / "out"
    written = json.loads((out / "results.json").read_text())
    assert written["stopped_on_request"] is True
    assert written["methods"]["ctrl_c_for_test"]["status"] == "ok"
    assert written["methods"]["finetune"]["status"] == "not run"
    assert "| finetune | not run |" in (out / "results.md").read_text()
    assert "| finetune | not run |" in captured.out
    assert list(load_logits_dir(out / "logits").methods) == ["ctrl_c_for_test"]


def test_json_prints_the_partial_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    stops: list[GracefulStop] = []

    class Recorded(GracefulStop):
        def __enter__(self) -> GracefulStop:
            stops.append(self)
            return super().__enter__()

    def press() -> None:  # what the first Ctrl-C does
        stops[0].requested = True

    monkeypatch.setattr(harness_cli, "GracefulStop", Recorded)
    _register(monkeypatch, "press_for_test", press)
    rc = main([*_cli_args(tmp_path, "press_for_test,finetune,fisher"), "--json"])
    assert rc == INTERRUPTED_STATUS
    assert len(stops) == 1 and stops[0].what == "method run"
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert document["stopped_on_request"] is True
    assert "not run: finetune" in document["stop_note"]
    assert [document["methods"][n]["status"] for n in ("press_for_test", "finetune",
                                                       "fisher")] == ["ok", "not run",
                                                                      "not run"]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {k: v for k, v in document.items() if k != "paths"} == written
    assert "stopped on request" in captured.err and "| method |" in captured.err


def test_the_command_without_a_stop_is_unchanged(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    rc = main([*_cli_args(tmp_path, "finetune"), "--json"])
    assert rc == 0
    document = json.loads(capsys.readouterr().out)
    assert document["stopped_on_request"] is False and "stop_note" not in document
    assert document["methods"]["finetune"]["status"] == "ok"


@pytest.mark.skipif(not _default_sigint(), reason="SIGINT has a handler of its own here")
def test_a_second_ctrl_c_aborts_at_once(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def ctrl_c_twice() -> None:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt here

    _register(monkeypatch, "twice_for_test", ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt):
        main(_cli_args(tmp_path, "twice_for_test,finetune"))
    assert _default_sigint()
    assert not (tmp_path / "out" / "results.json").exists()
