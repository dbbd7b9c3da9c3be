"""repr / str sweep of the public results, reports and helpers users print.

Every repr must stay short whatever the size of the object (the generated dataclass repr
printed every record, every index and up to a thousand values of each tensor), say what
the object holds, and never raise on an empty or NaN object.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastunlearn.certified import CertifiedLogisticRegression, RemovalRecord, RemovalReport
from fastunlearn.certified.experiment import ExperimentConfig, ExperimentData, ExperimentResult
from fastunlearn.certified.math import NewtonResult
from fastunlearn.data import DigitsSplit, FeatureSplit
from fastunlearn.forget import AntiSamples
from fastunlearn.harness import HarnessData, TrainedModel
from fastunlearn.influence import IterativeRepairResult, LinearUpdateResult, UpdateResult
from fastunlearn.linalg import CGResult, LissaResult
from fastunlearn.metrics import CompetitionResult, EpsilonResult, LogitsDir, Stopwatch
from fastunlearn.ops import CGResult as GlmCGResult

LIMIT = 1500  # characters


def _both(obj: object) -> list[str]:
    return [repr(obj), str(obj)]


def test_removal_report_repr_is_bounded_after_many_removals():
    # old: repr(model.remove(range(1000))) printed every RemovalRecord (~200,000 chars)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1100, 4))
    y = (X[:, 0] > 0).astype(int)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(X, y)
    report = model.remove(range(1000))
    for text in _both(report):
        assert len(text) < LIMIT
        assert text.startswith("RemovalReport(steps=1000, rows=1000, ")
        assert f"retrains={report.retrains}" in text and "... 998 more" in text
        assert "budget_left=" in text and "cumulative=" in text
    assert "RemovalRecord(indices=(0,)" in repr(report)  # the first record, in full
    assert len(repr(model.report())) < LIMIT


def test_removal_record_repr_truncates_a_large_batch():
    # old: a batch removal's record listed every index (5,000 indices: ~34,000 chars)
    record = RemovalRecord(tuple(range(5000)), 0.5, 0.25, 1.0, False, 0.01, 2.0)
    for text in _both(record):
        assert len(text) < 300
        assert "indices=(0, 1, 2, ... 4994 more, 4997, 4998, 4999)" in text
        assert "bound=0.5" in text and "budget_left=1" in text


def test_removal_report_and_record_repr_on_empty_and_nan():
    # old: the empty report did not say it holds no step (no count at all)
    assert repr(RemovalReport()) == (
        "RemovalReport(steps=0, rows=0, retrains=0, seconds=0, records=[])")
    record = RemovalRecord((), math.nan, math.nan, math.inf, True, math.nan)
    assert "bound=nan" in repr(record) and "budget_left=inf" in repr(record)
    report = RemovalReport([record], retrains=1, seconds=math.nan)
    assert "steps=1, rows=0, retrains=1, seconds=nan" in repr(report)


def test_removal_report_fields_equality_and_pickle_unchanged():
    report = RemovalReport([RemovalRecord((3,), 0.1, 0.1, 0.9, False, 0.01)], 0, 0.02)
    copy = pickle.loads(pickle.dumps(report))
    assert copy == report and copy.records[0].indices == (3,) and copy.bounds == [0.1]


def _experiment_result(n_records: int) -> ExperimentResult:
    records = [{"step": i, "indices": [i], "bound": 0.01, "retrained": False, "seconds": 0.001}
               for i in range(n_records)]
    return ExperimentResult(
        config=ExperimentConfig(result_dir=None, plots=False),
        data={"dataset": "digits", "classes": [str(c) for c in range(10)]},
        training={"residual": 1e-9}, records=records,
        evaluations=[{"n_removed": i, "test_accuracy": 0.9} for i in range(n_records)],
        final={"test_accuracy": 0.93, "retrained_test_accuracy": math.nan},
        privacy={"removals": n_records, "retrains": 2, "epsilon": 1.0, "budget_left": 0.5}
        if n_records else {},
        fairness={}, timings={"removal_seconds_total": 1.25, "speedup": None})


def test_experiment_result_repr_summarises_records():
    # old: every record and evaluation dict was printed (5,000 records: ~650,000 chars)
    for text in _both(_experiment_result(5000)):
        assert len(text) < LIMIT
        for part in ("dataset='digits'", "removals=5000", "retrains=2", "test_accuracy=0.93",
                     "retrained_test_accuracy=nan", "budget_left=0.5", "records=5000",
                     "removal_seconds_total=1.25"):
            assert part in text
    empty = repr(_experiment_result(0))
    assert "records=0, evaluations=0" in empty and "removals" not in empty


def test_iterative_repair_result_repr_summarises_steps():
    # old: every step dict and every UpdateResult (with its step tensor) was printed
    step = torch.zeros(50)
    results = [UpdateResult(order=2, solver="cg", step=step, param_names=["w"], num_params=50,
                            num_affected=8, applied=i % 4 != 0, diverged=i % 4 == 0)
               for i in range(400)]
    steps = [{"step": i + 1, "mispredicted": 500 - i, "batch": 8} for i in range(400)]
    result = IterativeRepairResult(steps, results, 3.5, 3200, 12800)
    for text in _both(result):
        assert len(text) < 300
        assert ("IterativeRepairResult(steps=400, applied=300, diverged=100, "
                "mispredicted=500->101, update_time_s=3.5, num_gradients=3200, "
                "num_hvps=12800)") == text
    assert repr(IterativeRepairResult()) == (
        "IterativeRepairResult(steps=0, applied=0, diverged=0, update_time_s=0, "
        "num_gradients=0, num_hvps=0)")


def _big_results() -> list[object]:
    v = torch.linspace(0.0, 1.0, 900, dtype=torch.float64)  # below torch's 1000 threshold
    x = v.reshape(300, 3).float()
    labels = torch.arange(300) % 2
    return [
        CGResult(v, torch.tensor([3]), v[:500], torch.tensor([True]), 7, torch.tensor([False])),
        LissaResult(v, 10, v.reshape(30, 30), torch.arange(30)),
        UpdateResult(order=2, solver="cg", step=v, param_names=[f"l{i}.weight" for i in range(300)],
                     num_params=900, num_affected=1, timings={"total": 0.5}),
        LinearUpdateResult(v, 2, 0.1, 0.2, None, 1.0, None, None, 1, 2, 0.01),
        CompetitionResult(0.5, v, 4, 1e-5, None),
        EpsilonResult(1.0, v, 0.05, 0, 0, 1.0),
        LogitsDir(Path("x"), torch.zeros(2, 300, 3), labels, {"m": torch.ones(2, 300, 3)},
                  {"m": {"acc": [0.5] * 900}}, list(range(900)), {"acc": [0.25] * 900}),
        HarnessData(x, labels, x, labels, 2),
        DigitsSplit(x, labels, x, labels, (3, 8)),
        FeatureSplit(x, labels, x, labels, (3, 8)),
        AntiSamples(x, x + 1, labels, labels[:, None], v[:300, None], None, None, labels),
        ExperimentData(x.numpy(), labels.numpy(), x.numpy(), labels.numpy(),
                       tuple(str(i) for i in range(100)), "cifar100",
                       {"extractor": "x" * 5000}),
        NewtonResult(v.reshape(90, 10), 1e-9, 3, True, v.reshape(1, 30, 30)),
        GlmCGResult(v.reshape(90, 10), torch.tensor([3]), v[:10]),
    ]


@pytest.mark.parametrize("result", _big_results(),
                         ids=lambda r: f"{type(r).__module__}.{type(r).__name__}")
def test_tensor_results_repr_is_bounded(result):
    # old: tensors under 1000 elements and Python lists printed every value (10,000+ chars)
    for text in _both(result):
        assert len(text) < LIMIT
        assert text.startswith(type(result).__name__ + "(") and "\n" not in text
    assert "Tensor(shape=[" in repr(result) or "ndarray(shape=[" in repr(result)


def test_tensor_result_repr_keeps_key_numbers_and_small_values():
    v = torch.arange(900, dtype=torch.float64)
    text = repr(EpsilonResult(1.25, v, 0.05, 3, 0, 2.0))
    assert text == ("EpsilonResult(epsilon_hat=1.25, per_example=Tensor(shape=[900], "
                    "dtype=float64), delta=0.05, n_infinite=3, n_nan=0, mean=2.0)")
    small = repr(CGResult(v[:2], torch.tensor([3, 4]), v[:2], torch.tensor([True, True]), 7,
                          torch.tensor([False, False])))
    assert "iterations=tensor([3, 4])" in small and "num_matvecs=7" in small
    names = repr(_big_results()[2])
    assert "'l0.weight', 'l1.weight', 'l2.weight', ... 294 more, " in names
    logits = repr(_big_results()[6])
    assert "forget_set=[0, 1, 2, ... 894 more, 897, 898, 899]" in logits


def test_results_repr_on_empty_and_nan_tensors():
    empty = torch.empty(0)
    for obj in (EpsilonResult(math.nan, empty, math.nan, 0, 0, math.nan),
                CompetitionResult(math.nan, empty, 0, math.nan),
                LogitsDir(Path(""), empty, empty.long())):
        text = repr(obj)
        assert "Tensor(shape=[0]" in text and len(text) < 400
    assert "nan" in repr(EpsilonResult(math.nan, torch.full((3,), math.nan), 0.0, 0, 3, math.nan))


def test_trained_model_repr_names_the_network_not_every_layer():
    # old: the whole module tree was printed (100 layers: ~5,000 chars)
    net = nn.Sequential(*[nn.Linear(4, 4) for _ in range(100)])
    text = repr(TrainedModel(net, 1.5, True, "cache-key"))
    assert text == ("TrainedModel(model=Sequential(2000 parameters), seconds=1.5, cached=True, "
                    "key='cache-key', resumed_after_epoch=0)")


def test_stopwatch_repr_shows_seconds():
    # old: <fastunlearn.metrics.timing.Stopwatch object at 0x...>
    sw = Stopwatch(cuda_sync=False)
    assert repr(sw) == "Stopwatch(seconds=nan, cuda_sync=False)"
    with sw:
        pass
    assert repr(sw) == f"Stopwatch(seconds={sw.seconds!r}, cuda_sync=False)"
