"""Input checks of the influence functions found by an API probe.

A1: ``loss_gradient``, ``loss_value`` and ``gradient_difference`` took a mean-reduced loss
(a gradient 1/n too small) and ``loss_value`` dropped the label -100 (cross-entropy's
``ignore_index``) without a word. A4: ``tau`` was not checked with ``order=2`` and ``tau``
or ``lissa`` given where they do nothing was silent. A6: a ``curvature_subsample`` above
the training rows was quietly taken as "all rows". B1: ``params`` given as a generator
failed in the drivers ("selects no parameters"). B2: raw torch errors (IndexError,
RuntimeError) from the gradient functions and ``PerSampleGradients``. C: ``repair_labels``
blamed ``'train_data[1]'`` for a bad entry of ``labels``; bools and float labels were
ValueErrors where TypeError is right.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from small_nets import ce_sum, net_data, same_state, small_net, state_of
from torch import nn

from fastunlearn.grad import PerSampleGradients
from fastunlearn.influence import (
    LissaSettings,
    default_loss,
    fit_logistic,
    gradient_difference,
    influence_update,
    iterative_label_repair,
    linear_influence_update,
    loss_gradient,
    loss_value,
    repair_labels,
    unlearn_features,
)

pytestmark = pytest.mark.usefixtures("one_thread")

N = 40
ROWS = [0, 1, 2, 3]


def _mean_ce(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, t)  # reduction="mean": refused


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = small_net()
    X, y = net_data(N)
    return model, X, y, (y[ROWS] + 1) % 3


GRADIENT_FUNCTIONS = {
    "loss_value": lambda m, loss, X, y: loss_value(m, loss, X, y),
    "loss_gradient": lambda m, loss, X, y: loss_gradient(m, loss, X, y),
    "gradient_difference": lambda m, loss, X, y: gradient_difference(m, loss, X, y, X,
                                                                    (y + 1) % 3),
}


# ---- A1: the gradient functions need a summed loss ----------------------------------------

@pytest.mark.parametrize("name", list(GRADIENT_FUNCTIONS))
def test_gradient_functions_refuse_a_mean_reduced_loss(name):
    # was: a loss (gradient) n times too small, no error
    model, X, y, _ = _problem()
    state = state_of(model)
    with pytest.raises(ValueError, match="'loss_fn' must sum over the batch"):
        GRADIENT_FUNCTIONS[name](model, _mean_ce, X, y)
    assert same_state(model, state)
    GRADIENT_FUNCTIONS[name](model, ce_sum, X, y)  # the summed loss still works


def test_loss_value_refuses_the_ignored_label_minus_100():
    # was: 6.39, the loss of the first row only (cross_entropy's ignore_index=-100)
    model, X, _, _ = _problem()
    with pytest.raises(ValueError, match=r"'targets' holds labels in \[-100, 0\]"):
        loss_value(model, default_loss, X[:2], torch.tensor([0, -100]))


# ---- B2: named errors instead of torch's -------------------------------------------------

@pytest.mark.parametrize("name", list(GRADIENT_FUNCTIONS))
def test_gradient_functions_name_labels_outside_the_classes(name):
    # was: IndexError "Target 7 is out of bounds."
    model, X, y, _ = _problem()
    bad = y.clone()
    bad[5] = 7
    with pytest.raises(ValueError, match=r"'targets' holds labels in \[0, 7\].*3 classes"):
        GRADIENT_FUNCTIONS[name](model, default_loss, X, bad)
    with pytest.raises(ValueError, match="'targets' holds labels"):
        GRADIENT_FUNCTIONS[name](model, ce_sum, X, bad)  # any loss: as influence_update


@pytest.mark.parametrize("name", list(GRADIENT_FUNCTIONS))
def test_gradient_functions_name_float_labels_and_inputs_of_another_dtype(name):
    model, X, y, _ = _problem()
    # was: RuntimeError "expected target dtype to be Long or Byte, but got Float"
    with pytest.raises(TypeError, match="'targets' must hold integer class labels"):
        GRADIENT_FUNCTIONS[name](model, default_loss, X, y.float())
    # was: RuntimeError "mat1 and mat2 must have the same dtype"
    with pytest.raises(TypeError, match="'inputs' must have the parameters' dtype"):
        GRADIENT_FUNCTIONS[name](model, default_loss, X.float(), y)


def test_gradient_difference_names_new_inputs_of_another_width():
    # was: RuntimeError "mat1 and mat2 shapes cannot be multiplied"
    model, X, y, _ = _problem()
    with pytest.raises(ValueError, match=r"'new_inputs' must have the shape of 'inputs'"):
        gradient_difference(model, ce_sum, X, y, X[:, :2], y)
    with pytest.raises(ValueError, match=r"'new_targets' must have the shape of 'targets'"):
        gradient_difference(model, ce_sum, X, y, X, y[:, None])
    with pytest.raises(ValueError, match=r"'new_targets' holds labels in \[5, 5\]"):
        gradient_difference(model, ce_sum, X, y, X, torch.full_like(y, 5))


def _engine_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    return model, torch.randn(8, 5), torch.randint(0, 3, (8,))


def _sum_ce(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, t, reduction="sum")


def test_per_sample_gradients_names_inputs_of_another_dtype():
    # was: RuntimeError "mat1 and mat2 must have the same dtype, but got Double and Float"
    model, x, t = _engine_problem()
    with pytest.raises(TypeError, match="'inputs' is torch.float64 but the model's parameters "
                                        "are torch.float32"):
        PerSampleGradients(model).sq_norms(x.double(), t, _sum_ce)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(reduction="sum"),
                                     default_loss, _sum_ce],
                         ids=["CrossEntropyLoss", "default_loss", "lambda"])
def test_per_sample_gradients_names_labels_outside_the_classes(loss_fn):
    # was: IndexError "Target 7 is out of bounds." (a device-side assert on CUDA)
    model, x, t = _engine_problem()
    bad = t.clone()
    bad[2] = 7
    state = state_of(model)
    with pytest.raises(ValueError, match="'targets'"):
        PerSampleGradients(model).sq_norms(x, bad, loss_fn)
    assert same_state(model, state) and all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_per_sample_gradients_checks_class_labels_of_a_known_classification_loss():
    model, x, t = _engine_problem()
    engine = PerSampleGradients(model)
    ce = nn.CrossEntropyLoss(reduction="sum")
    # was: RuntimeError "expected scalar type Long but found Float"
    with pytest.raises(TypeError, match="'targets' must hold integer class labels"):
        engine.sq_norms(x, t.float(), ce)
    # the loss's own ignore_index is its documented meaning, not a mistake
    ignored = t.clone()
    ignored[0] = -100
    norms = engine.sq_norms(x, ignored, ce)
    assert norms[0] == 0 and bool((norms[1:] > 0).all())
    # class probabilities (the outputs' shape) stay accepted
    probs = torch.softmax(torch.randn(8, 3), dim=1)
    assert engine.sq_norms(x, probs, ce).shape == (8,)


# ---- A4: tau with order=2, settings without effect ---------------------------------------

@pytest.mark.parametrize(("tau", "error", "match"), [
    (-5, ValueError, "'tau' must be finite and > 0"),
    ("bogus", ValueError, "'tau' must be a positive number or 'auto'"),
    (True, TypeError, "'tau' must be a real number"),
    (float("nan"), ValueError, "'tau'"),
])
def test_repair_labels_checks_tau_also_with_order_2(tau, error, match):
    # was: ran normally (tau was read for order=1 only)
    model, X, y, new = _problem()
    state = state_of(model)
    with pytest.raises(error, match=match):
        repair_labels(model, X, y, ROWS, new, order=2, tau=tau, damping=1.0)
    assert same_state(model, state)


def _no_warnings(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_tau_and_lissa_without_effect_are_warned_about():
    model, X, y, new = _problem()
    kw = dict(damping=1.0, curvature="ggn", check_loss=False, apply=False)
    with pytest.warns(UserWarning, match=r"^'tau' has no effect with order=2 \(it is the "
                                         r"first-order step size\)$"):
        repair_labels(model, X, y, ROWS, new, order=2, tau=0.5, **kw)
    with pytest.warns(UserWarning, match=r"^'lissa' has no effect with solver='cg' \(for the "
                                         r"LiSSA solver\)$"):
        influence_update(model, X[ROWS], y[ROWS], None, new, train_data=(X, y),
                         lissa=LissaSettings(batch_size=8), **kw)
    with pytest.warns(UserWarning, match=r"'lissa' has no effect with order=1"):
        influence_update(model, X[ROWS], y[ROWS], None, new, train_data=(X, y), order=1,
                         tau=0.01, lissa=LissaSettings(), check_loss=False, apply=False)
    # also when no row is affected (unlearn_features returns before influence_update)
    X0 = X.clone()
    X0[:, 0] = 0
    with pytest.warns(UserWarning, match=r"^'tau' has no effect with order=2"):
        res = unlearn_features(model, X0, y, [0], order=2, tau=0.5, damping=1.0)
    assert res.num_affected == 0
    # a lissa that is no LissaSettings is refused wherever it is given
    state = state_of(model)
    with pytest.raises(TypeError, match="'lissa' must be a LissaSettings"):
        repair_labels(model, X, y, ROWS, new, solver="cg", lissa="x", **kw)
    assert same_state(model, state)
    # the defaults and settings in use are never named
    _no_warnings(lambda: repair_labels(model, X, y, ROWS, new, order=2, **kw))
    _no_warnings(lambda: repair_labels(model, X, y, ROWS, new, order=1, tau=0.01,
                                       check_loss=False, apply=False))
    _no_warnings(lambda: repair_labels(
        model, X, y, ROWS, new, order=2, solver="lissa", check_loss=False, apply=False,
        lissa=LissaSettings(batch_size=8, scale=100.0, depth=5)))


def _linear_problem():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = torch.where(torch.randn(30, generator=gen) > 0, 1.0, -1.0).double()
    w, _ = fit_logistic(X, y, 0.1)
    return X, y, w


def test_linear_influence_update_checks_tau_also_with_order_2():
    # was: ran normally with tau=-1.0
    X, y, w = _linear_problem()
    with pytest.raises(ValueError, match="'tau' must be finite and > 0"):
        linear_influence_update(X, y, w, [1], new_y=-y[[1]], lam=0.1, order=2, tau=-1.0)
    with pytest.raises(TypeError, match="'tau' must be a real number"):
        linear_influence_update(X, y, w, [1], new_y=-y[[1]], lam=0.1, order=2, tau="1")
    with pytest.warns(UserWarning, match=r"^'tau' has no effect with order=2"):
        got = linear_influence_update(X, y, w, [1], new_y=-y[[1]], lam=0.1, order=2, tau=0.5)
    ref = _no_warnings(lambda: linear_influence_update(X, y, w, [1], new_y=-y[[1]], lam=0.1))
    assert torch.equal(got.weights, ref.weights)


def test_linear_lam_of_the_wrong_type_is_a_type_error():
    # was: ValueError "'lam' must be finite and > 0, got True"
    X, y, w = _linear_problem()
    for bad in (True, "0.1", None):
        with pytest.raises(TypeError, match="'lam' must be a real number"):
            linear_influence_update(X, y, w, [1], lam=bad)
        with pytest.raises(TypeError, match="'lam' must be a real number"):
            fit_logistic(X, y, bad)
    with pytest.raises(ValueError, match="'lam' must be finite and > 0"):
        linear_influence_update(X, y, w, [1], lam=0.0)


# ---- A6: curvature_subsample above the training rows --------------------------------------

@pytest.mark.parametrize("solver", ["cg", "direct"])
def test_curvature_subsample_above_the_training_rows_is_refused(solver):
    # was: silently every row
    model, X, y, new = _problem()
    state = state_of(model)
    with pytest.raises(ValueError, match=rf"'curvature_subsample' must be <= {N}, the number "
                                         rf"of training rows.*got {N + 1}"):
        influence_update(model, X[ROWS], y[ROWS], None, new, train_data=(X, y), solver=solver,
                         damping=1.0, curvature_subsample=N + 1)
    with pytest.raises(ValueError, match=rf"'curvature_subsample' must be <= {N}"):
        repair_labels(model, X, y, ROWS, new, solver=solver, damping=1.0,
                      curvature_subsample=10 * N)
    assert same_state(model, state)


# ---- B1: params as a generator -----------------------------------------------------------

def _drivers():
    X, y = net_data(N)
    new = (y[ROWS] + 1) % 3
    flipped = y.clone()
    flipped[ROWS] = new
    kw = dict(damping=10.0, curvature="ggn", check_loss=False)
    return {
        "repair_labels": lambda m, p: repair_labels(m, X, y, ROWS, new, params=p, **kw),
        "unlearn_features": lambda m, p: unlearn_features(m, X, y, [0, 1], rows=ROWS,
                                                          params=p, **kw),
        "iterative_label_repair": lambda m, p: iterative_label_repair(
            m, X, flipped, steps=2, batch_size=4, params=p, **kw),
    }


@pytest.mark.parametrize("driver", ["repair_labels", "unlearn_features",
                                    "iterative_label_repair"])
def test_drivers_take_params_as_a_generator(driver):
    # was: ValueError "'params' selects no parameters" (the generator was used up)
    call = _drivers()[driver]
    by_list, by_generator = small_net(), small_net()
    call(by_list, list(by_list[2].parameters()))
    call(by_generator, by_generator[2].parameters())
    after_list, after_generator = state_of(by_list), state_of(by_generator)
    assert all(torch.equal(after_list[k], v) for k, v in after_generator.items())
    assert not torch.equal(after_list["2.weight"], state_of(small_net())["2.weight"])
    assert torch.equal(after_list["0.weight"], state_of(small_net())["0.weight"])


# ---- C: repair_labels' labels, bools and float labels -------------------------------------

def test_repair_labels_names_labels_outside_the_classes():
    # was: "'train_data[1]' holds labels in [0, 9]" (an argument the caller never wrote)
    model, X, y, new = _problem()
    bad = y.clone()
    bad[20] = 9  # not among the rows that change
    state = state_of(model)
    with pytest.raises(ValueError, match=r"^'labels' holds labels in \[0, 9\]"):
        repair_labels(model, X, bad, ROWS, new, damping=1.0)
    bad[20], bad[ROWS[0]] = y[20], -1  # among them
    with pytest.raises(ValueError, match=r"^'labels' holds labels in \[-1, 2\]"):
        repair_labels(model, X, bad, ROWS, new, damping=1.0)
    assert same_state(model, state)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(steps=True), "'steps' must be an int"),
    (dict(batch_size=False), "'batch_size' must be an int"),
    (dict(chunk_size=2.0), "'chunk_size' must be an int"),
    (dict(seed=True), "'seed' must be an int"),
])
def test_iterative_label_repair_counts_of_the_wrong_type_are_type_errors(kwargs, match):
    # was: ValueError "'steps' must be an int >= 1, got True"
    model, X, y, _ = _problem()
    state = state_of(model)
    with pytest.raises(TypeError, match=match):
        iterative_label_repair(model, X, y, damping=1.0, **kwargs)
    assert same_state(model, state)


def test_iterative_label_repair_float_labels_are_a_type_error():
    # was: ValueError "'labels' must be a 1-D integer tensor ..."
    model, X, y, _ = _problem()
    state = state_of(model)
    with pytest.raises(TypeError, match="'labels' must hold integer class labels"):
        iterative_label_repair(model, X, y.double(), steps=1, damping=1.0)
    with pytest.raises(ValueError, match="'labels' must be 1-D with one label per row"):
        iterative_label_repair(model, X, y[:-1], steps=1, damping=1.0)
    with pytest.raises(ValueError, match="'steps' must be >= 1"):
        iterative_label_repair(model, X, y, steps=0, damping=1.0)
    assert same_state(model, state)
