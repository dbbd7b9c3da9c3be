"""Ctrl-C in a long command: the first stops at the next safe point, a second aborts.

:class:`fastunlearn._interrupt.GracefulStop` is checked with real SIGINTs (pytest runs in
the main thread, where the handler installs); ``fastunlearn remove`` and its runner are
checked against an uninterrupted run of the same seed; the top-level ``fastunlearn`` main
turns an escaping KeyboardInterrupt into exit status 130 without a traceback.
"""

from __future__ import annotations

import io
import json
import signal
import threading
from typing import Any

import pytest

from fastunlearn import _interrupt
from fastunlearn._interrupt import (
    INTERRUPTED_STATUS,
    GracefulStop,
    skippable,
    stop_points,
    stop_requested,
)
from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified import experiment as certified_experiment
from fastunlearn.certified.experiment import ExperimentConfig, run_removal_experiment
from fastunlearn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


# --- GracefulStop ------------------------------------------------------------------------


def test_first_sigint_in_a_step_loop_requests_a_stop_and_the_second_aborts():
    stream = io.StringIO()
    with GracefulStop(what="removal", stream=stream) as stop, stop_points(stop):
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert not stop()
        signal.raise_signal(signal.SIGINT)
        assert stop() and stop.requested
        assert "stopping after the current removal" in stream.getvalue()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        # the abort put the default handler back at once
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_reused_graceful_stop_starts_without_a_request():
    stop = GracefulStop(stream=io.StringIO())
    with stop, stop_points(stop):
        signal.raise_signal(signal.SIGINT)
    assert stop.requested  # still readable after the block
    with stop, stop_points(stop):
        assert not stop()  # a new run is not stopped by the last one's Ctrl-C
        signal.raise_signal(signal.SIGINT)  # and its first Ctrl-C is again a request
        assert stop()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_a_step_loop_the_first_sigint_aborts_at_once():
    stream = io.StringIO()
    with GracefulStop(stream=stream) as stop:
        with stop_points(stop):
            assert stop.armed
        assert not stop.armed  # the loop is over: e.g. writing files, training
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert not stop.requested and stream.getvalue() == ""
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_skippable_work_skips_it_and_a_second_aborts():
    stream = io.StringIO()
    with GracefulStop(stream=stream) as stop:
        with skippable(stop, "the timing") as skip:
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("the work went on after Ctrl-C")
        assert skip.skipped and stop.requested
        assert "skipping the timing" in stream.getvalue()
        with pytest.raises(KeyboardInterrupt):  # the default handler is back
            signal.raise_signal(signal.SIGINT)


def test_skippable_work_without_a_graceful_stop_propagates_ctrl_c():
    with pytest.raises(KeyboardInterrupt), skippable(lambda: False, "the timing"):
        raise KeyboardInterrupt
    with skippable(None, "the timing") as skip:
        pass
    assert not skip.skipped


def test_stop_points_nest_and_ignore_plain_callables():
    with GracefulStop() as stop:
        with stop_points(stop):
            with stop_points(stop):
                assert stop.armed
            assert stop.armed
        assert not stop.armed
    with stop_points(None), stop_points(lambda: False):
        pass


def test_the_default_handler_is_restored_after_an_error_inside():
    with pytest.raises(ZeroDivisionError), GracefulStop():
        _ = 1 / 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_callers_own_handler_is_left_alone():
    seen: list[int] = []

    def own(signum: int, frame: Any) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, own)
    try:
        with GracefulStop() as stop:
            assert signal.getsignal(signal.SIGINT) is own
            signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT] and not stop.requested
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_is_installed():
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            with GracefulStop() as stop:
                outcome["handler"] = signal.getsignal(signal.SIGINT)
                outcome["requested"] = stop()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert "error" not in outcome
    assert outcome["handler"] is signal.default_int_handler and outcome["requested"] is False


@pytest.mark.parametrize("bad", [3, "stop", True])
def test_a_should_stop_that_is_not_callable_is_refused(bad):
    with pytest.raises(TypeError, match="'should_stop' must be None or a callable"):
        stop_requested(bad)
    assert stop_requested(None) is False
    assert stop_requested(lambda: 1) is True


# --- run_removal_experiment --------------------------------------------------------------

_CONFIG = dict(num_removes=30, lam=0.01, std=1.0, time_retraining=True, result_dir=None)


def _after_calls(k: int):
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > k

    return should_stop


def test_a_stopped_run_keeps_the_removals_made_and_writes_them(tmp_path):
    full = run_removal_experiment(ExperimentConfig(**_CONFIG))
    config = ExperimentConfig(**{**_CONFIG, "eval_every": 5, "result_dir": str(tmp_path),
                                 "plots": False})
    part = run_removal_experiment(config, should_stop=_after_calls(2))
    assert part.stopped_on_request and not full.stopped_on_request
    assert [r["indices"] for r in part.records] == [r["indices"] for r in full.records[:10]]
    assert [r["bound"] for r in part.records] == pytest.approx(
        [r["bound"] for r in full.records[:10]], rel=1e-12)
    assert part.privacy["removals"] == 10 and part.privacy["stopped_early"]
    assert part.privacy["stop_reason"] == "stopped on request after 10 of 30 removals"
    # no budget ran out: the removals one budget supports stay a projection
    assert part.privacy["removals_supported_is_estimate"] == (full.privacy["retrains"] == 0)
    assert part.timings["retrain_seconds"] is None  # the user asked to stop: not timed
    assert full.timings["retrain_seconds"] > 0
    assert "stopped_on_request=True" in repr(part)
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["stopped_on_request"] is True and len(stored["records"]) == 10
    assert "stopped on request after 10 of 30 removals" in next(tmp_path.glob("*.md")).read_text()


def test_a_stop_asked_after_the_last_removal_skips_the_retraining_timing():
    calls = [0]

    def should_stop() -> bool:  # False for each of the 3 calls of removals, then True
        calls[0] += 1
        return calls[0] > 3

    result = run_removal_experiment(ExperimentConfig(**{**_CONFIG, "eval_every": 10}),
                                    should_stop=should_stop)
    assert calls[0] == 4 and result.privacy["removals"] == 30
    assert not result.stopped_on_request and result.timings["retrain_seconds"] is None
    assert "retrained_test_accuracy" not in result.final


def test_a_should_stop_that_never_answers_true_changes_nothing():
    plain = run_removal_experiment(ExperimentConfig(**{**_CONFIG, "time_retraining": False}))
    asked = run_removal_experiment(ExperimentConfig(**{**_CONFIG, "time_retraining": False}),
                                   should_stop=lambda: False)
    assert not asked.stopped_on_request
    assert [r["bound"] for r in asked.records] == [r["bound"] for r in plain.records]
    assert asked.privacy["stop_reason"] is None and asked.final == pytest.approx(plain.final)


def test_a_bad_should_stop_is_refused_before_the_fit(monkeypatch):
    def fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fitted before the check")

    monkeypatch.setattr(CertifiedLogisticRegression, "fit", fit)
    with pytest.raises(TypeError, match="should_stop"):
        run_removal_experiment(ExperimentConfig(**_CONFIG), should_stop=5)  # type: ignore[arg-type]


# --- the command -------------------------------------------------------------------------


def _sigint_in_remove(monkeypatch, times: int) -> None:
    """The first ``remove`` call of the run raises ``times`` SIGINTs while it works."""
    original = CertifiedLogisticRegression.remove
    sent = [0]

    def remove(self: Any, *args: Any, **kwargs: Any) -> Any:
        while sent[0] < times:
            sent[0] += 1
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CertifiedLogisticRegression, "remove", remove)


def test_remove_command_stops_after_the_call_in_progress(tmp_path, capsys, monkeypatch):
    _sigint_in_remove(monkeypatch, 1)
    status = main(["remove", "--num-removes", "30", "--eval-every", "4", "--lam", "0.01",
                   "--std", "1", "--out", str(tmp_path), "--no-plots", "--json"])
    assert status == INTERRUPTED_STATUS
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # --json: the partial document alone on stdout
    assert document["stopped_on_request"] is True
    assert document["privacy"]["removals"] == 4  # the call in progress (4 rows) finished
    assert "stopping after the current batch of removals" in captured.err
    assert "stopped on request (Ctrl-C)" in captured.err and str(tmp_path) in captured.err
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["stopped_on_request"] is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_timing_the_retraining_keeps_every_removal(tmp_path, capsys,
                                                                 monkeypatch):
    original = certified_experiment._time_retraining

    def time_retraining(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(certified_experiment, "_time_retraining", time_retraining)
    status = main(["remove", "--num-removes", "12", "--out", str(tmp_path), "--no-plots",
                   "--json"])
    assert status == INTERRUPTED_STATUS
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["privacy"]["removals"] == 12 and not document["stopped_on_request"]
    assert document["timings"]["retrain_seconds"] is None
    assert "skipping the retraining timing" in captured.err
    assert "cover all 12 removals; the retraining was not timed" in captured.err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_aborts_with_status_130_and_no_traceback(tmp_path, capsys,
                                                                  monkeypatch):
    _sigint_in_remove(monkeypatch, 2)
    status = main(["remove", "--num-removes", "10", "--out", str(tmp_path), "--no-plots"])
    assert status == INTERRUPTED_STATUS
    err = capsys.readouterr().err
    assert "fastunlearn remove: interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.json"))  # aborted mid-run: no partial file
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_outside_any_loop_exits_130(tmp_path, capsys, monkeypatch):
    def fit(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(CertifiedLogisticRegression, "fit", fit)
    assert main(["remove", "--num-removes", "3", "--no-plots", "--no-progress",
                 "--out", str(tmp_path)]) == INTERRUPTED_STATUS
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


def test_the_exit_status_is_the_shells_for_sigint():
    assert INTERRUPTED_STATUS == 128 + int(signal.SIGINT)
    assert set(_interrupt.__all__) >= {"GracefulStop", "stop_requested", "INTERRUPTED_STATUS"}
    import fastunlearn

    assert fastunlearn.GracefulStop is GracefulStop and "GracefulStop" in fastunlearn.__all__
