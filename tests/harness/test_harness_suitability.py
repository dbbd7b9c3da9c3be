"""Methods the forget set does not suit: skipped under ``all``, errors when named on purpose.

``antisamples`` forgets one whole class and ``unsir`` whole classes; on a ``random:`` forget
set ``fastunlearn forget --method all`` used to end with status 1 ("methods with errors").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fastunlearn.data import load_digits_dataset
from fastunlearn.forget import available_methods, get_method
from fastunlearn.forget.suitability import unsuitable_reason
from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.harness import runner as harness_runner
from fastunlearn.harness.cli import main
from fastunlearn.harness.report import render_table

_DIGITS = load_digits_dataset()
DATA = HarnessData(_DIGITS.X_train[:150].float(), _DIGITS.y_train[:150],
                   _DIGITS.X_test[:60].float(), _DIGITS.y_test[:60], 10, "digits-150")


@pytest.mark.parametrize(("forget", "retain", "method", "reason"), [
    ([3, 3], [1, 2], "antisamples", None),
    ([3, 5], [1, 2], "antisamples", r"needs a forget set of one class, got classes \[3, 5\]"),
    ([3, 5], [1, 2], "unsir", None),
    ([3], [1, 3], "unsir", r"forget class\(es\) \[3\] still have examples in retain"),
    ([3, 5], [3, 5], "antisamples_multiclass", None),
    ([3, 5], [3, 5], "finetune", None),
])
def test_unsuitable_reason_follows_the_methods_checks(forget: list[int], retain: list[int],
                                                      method: str, reason: str | None) -> None:
    got = unsuitable_reason(method, torch.tensor(forget), torch.tensor(retain))
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert re.search(reason, got)


@pytest.mark.parametrize("method", ["antisamples", "unsir"])
def test_the_reason_is_the_error_the_method_raises(method: str) -> None:
    """The skip reason and the method's own error come from the same check."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = DATA.x_train, DATA.y_train
    forget = torch.arange(0, 150, 5)  # a random-like set: several classes, none whole
    retain = torch.tensor([i for i in range(150) if i % 5])
    fn, config_cls = get_method(method)
    with pytest.raises(ValueError) as caught:
        fn(model, (x[forget], y[forget]), (x[retain], y[retain]), config_cls(epochs=1))
    assert str(caught.value) == unsuitable_reason(method, y[forget], y[retain])


def test_bad_arguments_are_named() -> None:
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="unknown forgetting method 'nope'"):
        unsuitable_reason("nope", labels, labels)
    with pytest.raises(TypeError, match="'forget_labels' must be a tensor"):
        unsuitable_reason("unsir", [1], labels)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'retain_labels' must be a tensor"):
        unsuitable_reason("unsir", labels, None)  # type: ignore[arg-type]


def test_config_skips_only_under_all() -> None:
    assert HarnessConfig(methods="all").skip_unsuitable is True
    assert HarnessConfig(methods="all").methods == tuple(available_methods())
    assert HarnessConfig(methods=("unsir", "finetune")).skip_unsuitable is False
    assert HarnessConfig(methods=("unsir",), skip_unsuitable=True).skip_unsuitable is True
    with pytest.raises(TypeError, match="'skip_unsuitable' must be a bool"):
        HarnessConfig(skip_unsuitable="yes")  # type: ignore[arg-type]


def _config(tmp: Path, methods: object, **kw: object) -> HarnessConfig:
    return HarnessConfig(methods=methods, seeds=1, oracles=1, model="mlp",  # type: ignore[arg-type]
                         train=TrainSettings(epochs=1), forget="random:0.1", mia=False,
                         cache_dir=str(tmp / "cache"), out_dir=str(tmp / "out"), **kw)


def test_skipped_methods_do_not_run_and_say_why(tmp_path: Path) -> None:
    result = run_harness(_config(tmp_path, ("finetune", "unsir", "antisamples"),
                                 skip_unsuitable=True,
                                 overrides={"finetune": {"epochs": 1}}), DATA)
    methods = result["methods"]
    assert methods["finetune"]["status"] == "ok"
    for name in ("unsir", "antisamples"):
        assert methods[name]["status"] == "skipped" and methods[name]["runs"] == []
        assert methods[name]["note"] == unsuitable_reason(
            name, DATA.y_train[result["data"]["forget_indices"]],
            DATA.y_train[[i for i in range(150) if i not in result["data"]["forget_indices"]]])
        assert name not in result["logits"]
    table = render_table(result)
    assert "| unsir | skipped |" in table and "Skipped (the forget set does not suit" in table
    assert "Errors:" not in table
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["methods"]["unsir"]["status"] == "skipped"
    assert saved["config"]["skip_unsuitable"] is True


def test_a_method_named_on_purpose_still_reports_its_error(tmp_path: Path) -> None:
    result = run_harness(_config(tmp_path, ("unsir",)), DATA)
    entry = result["methods"]["unsir"]
    assert entry["status"] == "error" and "UNSIR needs whole classes" in entry["error"]


def test_forget_all_on_a_random_set_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--method all` skips what does not fit instead of failing (status 1 before)."""
    monkeypatch.setattr(harness_runner, "load_harness_data", lambda *args: DATA)  # 150 rows
    status = main(["--method", "all", "--forget", "random:0.1", "--seeds", "1",
                   "--oracles", "1", "--epochs", "1", "--model", "mlp", "--no-mia",
                   "--no-plots", "--no-progress", "--cache-dir", str(tmp_path / "c"),
                   "--out", str(tmp_path / "o"), "--set", "finetune.epochs=1"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "skipped antisamples, unsir: the forget set does not suit them" in err
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    statuses = {n: e["status"] for n, e in saved["methods"].items()}
    assert {n for n, s in statuses.items() if s == "skipped"} == {"antisamples", "unsir"}
    assert all(s == "ok" for n, s in statuses.items() if n not in ("antisamples", "unsir"))
