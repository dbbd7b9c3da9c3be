"""Ctrl-C sweep: long entry points interrupted at several points lose nothing.

Each test makes an inner function raise KeyboardInterrupt on its k-th call (a training
step, a solver iteration, a file write) and checks that the interrupt propagates, the
caller's objects and the process-wide torch state are as before, an earlier run's files are
intact, no temporary file is left, and the next run gives the uninterrupted result.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import used_settings
from torch import Tensor, nn

import fastunlearn.influence as inf
from fastunlearn.certified import CertifiedLogisticRegression, estimator, woodbury
from fastunlearn.certified import persistence as cpersist
from fastunlearn.certified.ledger import RemovalLedger
from fastunlearn.data import load_digits_dataset
from fastunlearn.exposure import experiment as exposure_experiment
from fastunlearn.forget import _training, get_method, run_method
from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.harness import report as harness_report
from fastunlearn.harness import training as harness_training
from fastunlearn.influence import drivers
from fastunlearn.influence import update as inf_update
from fastunlearn.metrics import fixtures, load_logits_dir, write_logits_dir
from tests.helpers import canonical

# --- helpers ---------------------------------------------------------------------------


def _flags() -> dict[str, Any]:
    return {
        "num_threads": torch.get_num_threads(),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "mkldnn": torch.backends.mkldnn.enabled,
        "cudnn": torch.backends.cudnn.enabled,
        "grad_enabled": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def _rng() -> tuple[bytes, Any, Any]:
    state = np.random.get_state()
    return (torch.get_rng_state().numpy().tobytes(),
            (state[0], state[1].tobytes(), *state[2:]), random.getstate())


@pytest.fixture(autouse=True)
def _global_state():
    """Every test runs with TF32 allowed and two threads; after it, nothing has changed."""
    saved = _flags()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_num_threads(2)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    flags, rng = _flags(), _rng()
    yield
    after_flags, after_rng = _flags(), _rng()
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.set_num_threads(saved["num_threads"])
    assert after_flags == flags, "a process-wide torch flag was left changed"
    assert after_rng == rng, "a global RNG state was left changed"


class Interrupt:
    """Make ``owner.name`` raise KeyboardInterrupt on its ``k``-th call (``calls`` counts)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, k: int) -> None:
        self.calls, self.k = 0, k
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.k:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    @property
    def fired(self) -> bool:
        return self.calls >= self.k


def _run_interrupted(fn: Callable[[], Any], hook: Interrupt) -> bool:
    """Run ``fn``; True when the interrupt fired (and propagated as KeyboardInterrupt)."""
    try:
        fn()
    except KeyboardInterrupt:
        assert hook.fired
        return True
    assert not hook.fired, "the KeyboardInterrupt was swallowed"
    return False




def _model_state(model: nn.Module) -> Any:
    return (canonical(model.state_dict()), [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [None if p.grad is None else canonical(p.grad) for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules()))


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- certified removal ------------------------------------------------------------------

_DIGITS = load_digits_dataset()
_CX, _CY = _DIGITS.X_train[:120].numpy(), _DIGITS.y_train[:120].numpy()
# lam 0.1, sigma 1: the first six removals fit the budget, the last ones retrain
_ORDER = [3, 17, 40, 55, 71, 90, 101, 110]
#: derived caches: the Woodbury scratch inverse, the fixed step and the margins cache
#: (recomputed when absent), and the cached spectral bounds (checked apart: valid bounds)
_CACHES = ("_fixed", "_wood_last", "_Z", "M_spare", "_eig", "_h_eig", "_h_eig_slack",
           "_factor_generation")


def _certified(mode: str | None = None, **kw: Any) -> CertifiedLogisticRegression:
    opts: dict[str, Any] = dict(lam=0.1, sigma=1.0)
    opts.update(kw)
    model = CertifiedLogisticRegression(**opts).fit(_CX, _CY)
    if mode is not None:  # "off": the Python steps, not the compiled CPU loop
        model._fixed_step_mode = mode
    return model


def _state(model: CertifiedLogisticRegression) -> Any:
    state = dict(model.__dict__)
    wood = state.get("_wood")
    if wood is not None and wood.pending:  # rows the compiled step left to fold in: as
        threads = torch.get_num_threads()  # a later step folds them (on one thread, as
        torch.set_num_threads(1)  # remove() runs small problems)
        try:
            state["_wood"] = wood = woodbury.settle(copy.deepcopy(wood))
        finally:
            torch.set_num_threads(threads)
    if wood is not None and wood.folded == 0:  # factors started, no row in them yet: the
        state["_wood"] = None  # cache the next step would start (its buffers are checked)
    return canonical(state, _CACHES)


def _assert_wood_clean(model: CertifiedLogisticRegression) -> None:
    """The Woodbury buffers past the folded rows hold nothing a step left uncommitted."""
    wood = getattr(model, "_wood", None)
    if wood is None:
        return
    t = wood.folded
    assert not bool(wood.U_buf[..., t:].any()) and not bool(wood.G_buf[..., t:].any())
    eye = torch.eye(wood.capacity - t, dtype=wood.C_buf.dtype)
    assert torch.equal(wood.C_buf[:, t:, t:], eye.expand_as(wood.C_buf[:, t:, t:]))


def _boundaries(model: CertifiedLogisticRegression, order: list[int], batch: bool
                ) -> list[Any]:
    """The model's state before and after each step of ``remove(order)`` (on a copy)."""
    ref = copy.deepcopy(model)
    snaps = [_state(ref)]
    real_event, real_run = ref._checkpoint_event, ref._remove_compiled

    def snapshot() -> None:
        snap = copy.deepcopy(ref)
        snap._sync_public()  # remove() syncs the public attributes when it returns
        for name in ("_checkpoint_event", "_remove_compiled"):
            del snap.__dict__[name]
        snaps.append(_state(snap))

    def after_step(event: str, record: Any) -> None:
        snapshot()
        real_event(event, record)

    def after_run(*args: Any) -> tuple[int, bool]:  # a run of rows in one compiled call
        out = real_run(*args)
        if out[0]:
            snapshot()
        return out

    ref._checkpoint_event = after_step  # type: ignore[method-assign]
    ref._remove_compiled = after_run  # type: ignore[method-assign]
    ref.remove(order, batch=batch)
    return snaps


def _assert_spectral_valid(model: CertifiedLogisticRegression) -> None:
    """The cached ``lambda_max`` bounds bound the (remaining) Gram matrices, mirrors agree."""
    true = torch.linalg.eigvalsh(model._gram)[..., -1]
    assert bool((model._eig >= true * (1 - 1e-9) - 1e-12).all())
    assert np.array_equal(model._h_eig, model._eig.cpu().numpy())


_REMOVE_CASES = [
    # (model kwargs, batch, module, function)
    ({"solver": "cholesky"}, False, estimator, "cholesky_factor"),
    ({"solver": "cholesky"}, False, estimator, "lambda_max_upper"),
    ({"solver": "cholesky"}, False, estimator, "newton_fit"),
    ({"solver": "cholesky"}, True, estimator, "newton_fit"),
    ({"solver": "cholesky", "sigma": 5.0}, True, estimator, "curvature_weights"),
    ({"solver": "cg", "cg_tol": 1e-9, "mode": "off"}, False, woodbury, "extend"),
    ({"solver": "cg", "cg_tol": 1e-9, "mode": "off"}, True, estimator.ops, "glm_hvp_margins"),
    ({"solver": "cg", "cg_tol": 1e-9, "mode": "off"}, False, woodbury, "solve"),
    ({"solver": "auto"}, False, estimator, "lambda_max_upper"),
    ({"solver": "auto"}, False, estimator, "newton_fit"),
]


@pytest.mark.parametrize(("kw", "batch", "owner", "name"), _REMOVE_CASES,
                         ids=[f"{c[0]['solver']}-{'batch' if c[1] else 'seq'}-{c[3]}"
                              for c in _REMOVE_CASES])
def test_certified_remove_interrupted_is_before_or_after_a_step(monkeypatch, kw, batch,
                                                               owner, name):
    base = _certified(**kw)
    snaps = _boundaries(base, _ORDER, batch)
    fired = 0
    for k in (1, 2, 3, 5, 8):
        model = copy.deepcopy(base)
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            if not _run_interrupted(lambda: model.remove(_ORDER, batch=batch), hook):  # noqa: B023
                break
        fired += 1
        state = _state(model)
        assert state in snaps, f"{name} call {k}: the model is between two steps"
        n = model.n_removed_
        assert n in ((0, len(_ORDER)) if batch else range(len(_ORDER) + 1))
        assert model.removed_indices_.tolist() == sorted(_ORDER[:n])
        _assert_spectral_valid(model)
        _assert_wood_clean(model)
        # it goes on: the rest removes to a certified model
        rest = [i for i in _ORDER if i not in set(model.removed_indices_.tolist())]
        if rest:
            model.remove(rest, batch=batch)
        assert model.removed_indices_.tolist() == sorted(_ORDER)
        assert model.gradient_residual()["norm"] <= model.budget_used_ * (1 + 1e-6) + 1e-12
        assert model.budget_used_ <= model.budget_
    assert fired, f"{name} was never called"


@pytest.mark.parametrize("name", ["newton_fit", "lambda_max_upper", "gram_matrices"])
def test_certified_fit_and_retrain_now_interrupted_change_nothing(monkeypatch, name):
    model = _certified(solver="cholesky")
    model.remove([3, 17])
    model.set_params(seed=3, lam=0.2)  # read by the next fit
    before = _state(model)
    with monkeypatch.context() as m:
        hook = Interrupt(m, estimator, name, 1)
        assert _run_interrupted(lambda: model.fit(_CX, _CY), hook)
    assert _state(model) == before
    if name != "gram_matrices":  # a retrain reuses the Gram matrices
        retrained = copy.deepcopy(model)
        retrained.retrain_now()
        with monkeypatch.context() as m:
            hook = Interrupt(m, estimator, name, 1)
            assert _run_interrupted(model.retrain_now, hook)
        # interrupted in the fit: unchanged; in the spectral refresh after it: retrained
        assert _state(model) == (before if name == "newton_fit" else _state(retrained))
        _assert_spectral_valid(model)
        model = copy.deepcopy(retrained)
    fresh = CertifiedLogisticRegression(lam=0.1, sigma=1.0)
    with monkeypatch.context() as m:
        hook = Interrupt(m, estimator, name, 1)
        assert _run_interrupted(lambda: fresh.fit(_CX, _CY), hook)
    assert not hasattr(fresh, "coef_") and not hasattr(fresh, "_X")
    np.testing.assert_array_equal(fresh.fit(_CX, _CY).coef_, _certified().coef_)


@pytest.mark.parametrize(("owner", "name"), [
    (estimator, "newton_fit"), (cpersist, "save_model"), (RemovalLedger, "append"),
    (cpersist, "_write_atomically"),
])
def test_certified_checkpoint_interrupted_loads_consistently(tmp_path, monkeypatch, owner,
                                                             name):
    path = tmp_path / "m.safetensors"
    for k in (1, 3, 7):
        model = _certified(solver="cholesky", checkpoint=str(path))
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            if not _run_interrupted(lambda: model.remove(_ORDER), hook):  # noqa: B023
                break
        leftovers = [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
        assert not leftovers, leftovers
        loaded = cpersist.load_model(path)
        removed = loaded.removed_indices_.tolist()
        assert removed in [sorted(_ORDER[:j]) for j in range(len(_ORDER) + 1)]
        # the file holds the model's state before or at the step it was interrupted in
        assert len(removed) in (len(model.removed_indices_), len(model.removed_indices_) - 1)
        records = [r for r in RemovalLedger(path.with_name(path.name + ".ledger.jsonl"))
                   .records() if r["seq"] > 0]
        assert records[-1]["n_removed"] == len(removed)
        # both go on: the model in memory (it owns the file) and the loaded copy
        rest = [i for i in _ORDER if i not in set(model.removed_indices_.tolist())]
        if rest:
            model.remove(rest)
        again = cpersist.load_model(path)
        np.testing.assert_array_equal(again.coef_, model.coef_)
        assert again.removed_indices_.tolist() == sorted(_ORDER)
        path.unlink()
        for p in tmp_path.iterdir():
            p.unlink()


# --- logits folders ---------------------------------------------------------------------


def _logits(seed: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (6,), generator=g)
    return (torch.randn(6, 2, 3, generator=g), labels,
            {"a": torch.randn(6, 3, 3, generator=g), "b": torch.randn(6, 2, 3, generator=g)})


@pytest.mark.parametrize(("owner", "name", "ks"), [
    (np, "save", (1, 2, 3)), (fixtures, "_write_metrics", (1, 2)),
    (fixtures.os, "replace", (1, 2)), (fixtures.shutil, "rmtree", (1,)),
])
def test_write_logits_dir_interrupted_keeps_the_earlier_folder(tmp_path, monkeypatch, owner,
                                                               name, ks):
    root = tmp_path / "logits"
    retrain, labels, methods = _logits(0)
    write_logits_dir(root, retrain, labels, methods, {"a": {"x": [1.0, 2.0, 3.0]}},
                     retrain_metrics={"x": [1.0, 2.0]}, forget_set=list(range(6)))
    before = _tree(tmp_path)
    new = _logits(1)
    for k in ks:
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            fired = _run_interrupted(
                lambda: write_logits_dir(root, *new, {"a": {"x": [4.0, 5.0, 6.0]}},
                                         retrain_metrics={"x": [3.0, 4.0]}), hook)
        after = _tree(tmp_path)
        if fired and name == "rmtree":  # interrupted after the swap: the new folder, whole
            assert {p for p in after if not p.startswith(".")} == \
                {p for p in after if p.startswith("logits/")}
            assert load_logits_dir(root).methods["b"].shape == (6, 2, 3)
            continue
        assert after == before, f"{name} call {k}: the earlier folder changed or a " \
            "temporary one was left"
    write_logits_dir(root, *new)  # the next run goes through
    assert torch.equal(load_logits_dir(root).methods["a"], new[2]["a"])


# --- forget harness ---------------------------------------------------------------------

_HDATA = HarnessData(_DIGITS.X_train[:160].float(), _DIGITS.y_train[:160],
                     _DIGITS.X_test[:60].float(), _DIGITS.y_test[:60], 10, "digits-tiny")


def _hconfig(tmp: Path, **kw: Any) -> HarnessConfig:
    opts: dict[str, Any] = dict(methods=("finetune",), seeds=1, oracles=1, model="mlp",
                                train=TrainSettings(epochs=1), forget="class:3",
                                cache_dir=str(tmp / "cache"), out_dir=str(tmp / "out"),
                                overrides={"finetune": {"epochs": 1}})
    opts.update(kw)
    return HarnessConfig(**opts)


@contextlib.contextmanager
def _as_the_tests_run() -> Iterator[None]:
    """The thread count :func:`_global_state` gives each test, for a module's reference run.

    A module-scoped fixture runs before that function-scoped one: without this, a process
    started with another thread count (``OMP_NUM_THREADS=1``) sums in another order and
    the bit-exact comparisons with the reference fail.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def harness_reference(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("reference")
    with _as_the_tests_run():
        return run_harness(_hconfig(tmp), _HDATA)


@pytest.mark.parametrize(("owner", "name", "ks"), [
    (harness_training, "_train", (1, 2)),  # the training train_or_load runs
    (harness_training, "save_model", (1, 2)),
    (_training, "train_main_stage", (1, 2)),
    (harness_report, "plot_times", (1,)),
    (harness_report, "_write_logits", (1,)),
    (harness_report, "render_table", (1,)),
])
def test_harness_interrupted_keeps_outputs_and_cache_sound(tmp_path, monkeypatch, owner, name,
                                                          ks, harness_reference):
    if name == "save_model":  # imported inside train_or_load
        import safetensors.torch as owner  # noqa: PLW0127
    config = _hconfig(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": "run"}\n')
    (out / "results.md").write_text("earlier table\n")
    (out / "logits").mkdir()
    np.save(out / "logits" / "logits_retain.npy", np.zeros((2, 2, 2)))
    before = _tree(out)
    for k in ks:
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            assert _run_interrupted(lambda: run_harness(config, _HDATA), hook)  # noqa: B023
        assert _tree(out) == before, "an earlier run's outputs were changed"
        cache = tmp_path / "cache"
        if cache.exists():
            assert not [p.name for p in cache.iterdir() if p.suffix == ".tmp"
                        or p.name.startswith(".")], "a temporary file was left in the cache"
    result = run_harness(config, _HDATA)  # the next run with the same settings
    assert canonical(result, ("cache", "cached", "config")) == \
        canonical(harness_reference, ("cache", "cached", "config"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert load_logits_dir(out / "logits").methods["finetune"].shape[1] == 1


def test_collect_logits_interrupted_restores_every_mode(monkeypatch):
    from fastunlearn.harness.runner import collect_logits

    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.1), nn.Linear(8, 10))
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    hook = Interrupt(monkeypatch, model[2], "forward", 2)
    assert _run_interrupted(lambda: collect_logits(model, _DIGITS.X_train[:8].float(),
                                                   batch_size=4), hook)
    assert [m.training for m in model.modules()] == modes


# --- forgetting methods -----------------------------------------------------------------


def _forget_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                              nn.Dropout(0.2), nn.Linear(16, 10))
    model[0].requires_grad_(False)
    model.eval()
    model(_DIGITS.X_train[:4].float()).square().sum().backward()
    return model


_FX, _FY = _DIGITS.X_train[:200].float(), _DIGITS.y_train[:200]
_FORGET = (_FX[_FY == 0].clone(), _FY[_FY == 0].clone())
_RETAIN = (_FX[_FY != 0].clone(), _FY[_FY != 0].clone())
_FORGET_SETTINGS: dict[str, dict[str, Any]] = {
    "finetune": {}, "scrub": {"max_steps": 1, "lr_decay_epochs": ()}, "fisher": {},
    "influence": {"maxiter": 5, "retain_fraction": 0.5},
}


@pytest.mark.parametrize("method", sorted(_FORGET_SETTINGS))
@pytest.mark.parametrize("point", ["step", "forward"])
def test_forget_method_interrupted_keeps_caller_state(monkeypatch, method, point):
    model = _forget_model()
    before = _model_state(model)
    inputs = [t.clone() for t in (*_FORGET, *_RETAIN)]
    _, cls = get_method(method)
    config = cls(**used_settings(method, epochs=1, batch_size=32), seed=0,
                 **_FORGET_SETTINGS[method])
    fired = 0
    for k in (1, 3):
        with monkeypatch.context() as m:
            if point == "step":
                hook = Interrupt(m, torch.optim.SGD, "step", k)
            else:  # every forward of the copies (the caller's model is run too, in eval)
                hook = Interrupt(m, nn.Linear, "forward", 2 * k + 1)
            with torch.no_grad():  # called from evaluation code: grad mode comes back too
                fired += _run_interrupted(
                    lambda: run_method(method, model, _FORGET, _RETAIN, config), hook)
        assert _model_state(model) == before
    assert all(torch.equal(a, b) for a, b in zip(inputs, (*_FORGET, *_RETAIN), strict=True))
    if point == "forward":
        assert fired
    new = run_method(method, model, _FORGET, _RETAIN, config)  # the next run goes through
    assert _model_state(model) == before and isinstance(new, nn.Module)


# --- influence --------------------------------------------------------------------------


def _influence_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 10))
    model.double()
    model[0].weight.requires_grad_(False)
    model.train()
    model[2].eval()
    return model


_IX, _IY = _DIGITS.X_train[:80].double(), _DIGITS.y_train[:80]


def _summed(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y, reduction="sum")


_INFLUENCE_CASES = [
    ("cg", inf_update, "cg"), ("cg", inf_update, "gradient_difference"),
    ("lissa", inf_update, "lissa_solve"), ("direct", inf_update, "_solve_direct"),
    ("cg", inf_update, "loss_value"), ("cg", inf_update, "unflatten"),
]


@pytest.mark.parametrize(("solver", "owner", "name"), _INFLUENCE_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in _INFLUENCE_CASES])
def test_influence_update_interrupted_changes_nothing(monkeypatch, solver, owner, name):
    model = _influence_model()
    before = _model_state(model)
    rows = torch.arange(6)
    new_y = (_IY[rows] + 1) % 10
    y_fixed = _IY.clone()
    y_fixed[rows] = new_y
    data = [t.clone() for t in (_IX, _IY, y_fixed)]
    kw: dict[str, Any] = dict(order=2, solver=solver, train_data=(_IX, y_fixed), damping=0.1,
                              loss_fn=_summed,
                              maxiter=20, check_loss=True, loss_tolerance=10.0)
    if solver == "lissa":
        kw.update(lissa=inf.LissaSettings(batch_size=40, depth=5, repetitions=1,
                                             scale=50.0, damping=0.01))
        kw.pop("damping")
        kw.pop("maxiter")
    if solver == "direct":
        kw.pop("maxiter")
    reference = _influence_model()
    expected = inf.influence_update(reference, _IX[rows], _IY[rows], _IX[rows], new_y, **kw)
    assert expected.applied
    fired = 0
    for k in (1, 2):
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            if not _run_interrupted(lambda: inf.influence_update(  # noqa: B023
                    model, _IX[rows], _IY[rows], _IX[rows], new_y, **kw), hook):
                break
        fired += 1
        assert _model_state(model) == before
    assert fired
    assert all(torch.equal(a, b) for a, b in zip(data, (_IX, _IY, y_fixed), strict=True))
    if hook.fired:
        inf.influence_update(model, _IX[rows], _IY[rows], _IX[rows], new_y, **kw)
    assert _model_state(model) == _model_state(reference)


def test_iterative_label_repair_interrupted_keeps_whole_steps_and_closes_its_bar(monkeypatch):
    import tqdm.auto

    bars: list[Any] = []

    class Bar(tqdm.auto.tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw["disable"] = True
            super().__init__(*a, **kw)
            self.closed = False
            bars.append(self)

        def close(self) -> None:
            self.closed = True
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    y_bad = _IY.clone()
    y_bad[:10] = (y_bad[:10] + 3) % 10
    reference = _influence_model()
    kw: dict[str, Any] = dict(batch_size=16, order=1, tau=1e-3, seed=0, progress=True,
                              loss_fn=_summed)
    drivers.iterative_label_repair(reference, _IX, _IY, steps=1, **kw)
    model = _influence_model()
    with monkeypatch.context() as m:
        hook = Interrupt(m, drivers, "influence_update", 2)
        assert _run_interrupted(
            lambda: drivers.iterative_label_repair(model, _IX, _IY, steps=3, **kw), hook)
    # the first step is applied whole, the interrupted one not at all
    assert _model_state(model) == _model_state(reference)
    assert bars and all(b.closed for b in bars), "the progress bar was left open"


# --- exposure ---------------------------------------------------------------------------

_CANARY = dict(n_sentences=60, steps=4, embed_dim=8, hidden=16, secret_length=3,
               batch_size=8, seq_len=16, n_candidates=None)


@pytest.fixture(scope="module")
def canary_reference() -> Any:
    with _as_the_tests_run():
        return exposure_experiment.run_canary_experiment(
            exposure_experiment.CanaryConfig(**_CANARY))


@pytest.mark.parametrize(("owner", "name", "ks"), [
    (torch.optim.Adam, "step", (1, 3)),
    (exposure_experiment, "sequence_log_perplexity", (1,)),
    (exposure_experiment, "greedy_completion", (1,)),
])
def test_canary_experiment_interrupted_keeps_global_state(monkeypatch, owner, name, ks,
                                                          canary_reference):
    cfg = exposure_experiment.CanaryConfig(**_CANARY)
    reference = canary_reference
    for k in ks:
        with monkeypatch.context() as m:
            hook = Interrupt(m, owner, name, k)
            assert _run_interrupted(lambda: exposure_experiment.run_canary_experiment(cfg),
                                    hook)
    again = exposure_experiment.run_canary_experiment(cfg)
    assert canonical(again.canary) == canonical(reference.canary)
    assert canonical(again.model) == canonical(reference.model)


def test_measure_exposure_interrupted_restores_the_callers_model(monkeypatch,
                                                                canary_reference):
    cfg = exposure_experiment.CanaryConfig(**_CANARY)
    result = canary_reference
    model = copy.deepcopy(result.model).train()
    before = _model_state(model)
    for k in (1, 2):
        with monkeypatch.context() as m:
            hook = Interrupt(m, type(model), "forward", k)
            assert _run_interrupted(lambda: exposure_experiment.measure_exposure(
                model, result.vocab, cfg.prefix, [result.canary.secret], batch_size=64), hook)
        assert _model_state(model) == before
