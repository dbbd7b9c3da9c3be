"""Settings that other settings make pointless warn, naming them, and really change nothing.

``gamma`` and ``milestones`` outside the ``"multistep"`` scheduler (every SGD method that
trains with a schedule) and ``gamma`` when no milestone is below ``epochs``, the schedule
of ``two_stage`` and ``neggrad_plus`` (which train without one), Fisher's
``class_row_var`` without class rows, SCRUB's ``lr_decay_rate`` when no decay epoch is
reached and ``forget_batch_size`` without max steps, and SalUn's ``redraw_labels`` with
one epoch; zero strengths (antisamples' ``p``, l1_sparse's ``alpha``, the pruning
methods' ``quantile``) and the settings they make pointless. Each warns only when set
(another value than its default): the defaults stay quiet, and so does the setting where
it matters.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hand_sgd import assert_models_equal
from tiny_problem import tiny_forget_retain, tiny_linear
from torch import nn

from fastunlearn.forget import get_method, run_method
from fastunlearn.forget.fisher import FisherConfig
from fastunlearn.forget.gradient_ascent import NegGradPlusConfig
from fastunlearn.forget.relabel import TwoStageConfig
from fastunlearn.forget.retrain import RetrainConfig
from fastunlearn.forget.salun import SalUnConfig
from fastunlearn.forget.scrub import ScrubConfig

#: The registered methods that train with ``config.scheduler``.
SCHEDULED = ("finetune", "neggrad", "random_labels", "poison_full", "retrain", "l1_sparse",
             "activation_reset", "selective_pruning", "prune_last_layer", "pruning_complex")

COSINE = ("'gamma' and 'milestones' have no effect with scheduler='cosine' (for the "
          "'multistep' scheduler)")
NO_MILESTONE = ("'gamma' has no effect with scheduler='multistep' and milestones=() (the "
                "factor applied at each milestone)")
TWO_STAGE = ("'scheduler', 'milestones' and 'gamma' have no effect (two_stage trains both "
             "stages without a schedule)")
NEGGRAD_PLUS = ("'scheduler', 'milestones' and 'gamma' have no effect (neggrad_plus runs "
                "its own loop without a schedule)")
NOT_REACHED = ("'gamma' has no effect with epochs=3 and milestones=(3, 7) (no milestone is "
               "reached)")
CLASS_ROW_VAR = ("'class_row_var' has no effect with forget_class_rows=False (the noise "
                 "variance of the zeroed class rows)")
SCRUB_DECAY = ("'lr_decay_rate' has no effect with epochs=3 and lr_decay_epochs=(3, 5, 9) "
               "(no decay epoch is reached)")
SCRUB_FORGET_BATCH = ("'forget_batch_size' has no effect with max_steps=0 (for the max steps "
                      "on the forget set)")
SALUN_REDRAW = ("'redraw_labels' has no effect with epochs=1 (the labels are redrawn from "
                "the second epoch on)")


def _warned(build: Any) -> list[str]:
    """Return the UserWarnings ``build()`` gives (every one shown)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def _quiet(build: Any) -> Any:
    """Return ``build()``, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build()


def _run(name: str, forget: Any = None, retain: Any = None, **settings: Any) -> nn.Module:
    """Run ``name`` on the tiny problem (or the given sets), its warnings silenced."""
    if forget is None:
        forget, retain = tiny_forget_retain()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_method(name, tiny_linear(), forget, retain, **settings)


def _differs(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(va, vb)
               for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# --- 1. gamma and milestones outside the multistep scheduler -------------------------------


@pytest.mark.parametrize("name", SCHEDULED)
@pytest.mark.parametrize("scheduler", ["none", "cosine"])
def test_gamma_and_milestones_warn_outside_multistep(name: str, scheduler: str) -> None:
    _, cls = get_method(name)
    got = _warned(lambda: cls(scheduler=scheduler, gamma=0.5, milestones=(2,)))
    assert got == [COSINE.replace("'cosine'", repr(scheduler))]


@pytest.mark.parametrize("name", SCHEDULED)
def test_gamma_and_milestones_are_quiet_with_multistep(name: str) -> None:
    _, cls = get_method(name)
    _quiet(lambda: cls(scheduler="multistep", gamma=0.5, milestones=(2,), epochs=3))


def test_gamma_without_a_milestone_warns() -> None:
    assert _warned(lambda: RetrainConfig(gamma=0.5, milestones=())) == [NO_MILESTONE]


@pytest.mark.parametrize("name", SCHEDULED)
def test_gamma_warns_when_no_milestone_is_reached(name: str) -> None:
    _, cls = get_method(name)
    got = _warned(lambda: cls(scheduler="multistep", gamma=0.5, milestones=(3, 7), epochs=3))
    assert got == [NOT_REACHED]


@pytest.mark.parametrize("settings", [
    {"epochs": 4, "milestones": (3, 7)},  # one milestone reached is enough
    {"epochs": 30},  # the defaults (35, 70, 90) and 0.1 are not named: not set
    {"epochs": 0, "gamma": 0.5},  # nothing trains
])
def test_a_reached_milestone_or_unset_gamma_stays_quiet(settings: dict) -> None:
    _quiet(lambda: RetrainConfig(**settings))


def test_the_unreached_milestone_warning_names_given_fields() -> None:
    config = RetrainConfig(epochs=30)
    assert config.conditional_warnings() == []
    assert config.conditional_warnings({"gamma"}) == [
        "'gamma' has no effect with epochs=30 and milestones=(35, 70, 90) (no milestone is "
        "reached)"]


def test_gamma_with_no_milestone_reached_changes_nothing() -> None:
    common = dict(epochs=2, lr=0.05, batch_size=8, scheduler="multistep")
    base = _run("finetune", **common, milestones=(2, 5))
    assert_models_equal(_run("finetune", **common, milestones=(2, 5), gamma=0.5), base)
    # a milestone that is reached: gamma matters
    reached = [_run("finetune", **common, milestones=(1,), gamma=g) for g in (0.5, 0.1)]
    assert _differs(*reached)


def test_schedule_defaults_and_an_empty_milestones_stay_quiet() -> None:
    _quiet(lambda: RetrainConfig(scheduler="cosine"))  # its default milestones: not set
    _quiet(lambda: RetrainConfig(scheduler="none", milestones=()))  # nothing to ignore
    _quiet(lambda: RetrainConfig(scheduler="multistep", milestones=(5,)))


def test_the_schedule_warning_names_only_what_was_set() -> None:
    got = _warned(lambda: RetrainConfig(scheduler="cosine", milestones=(3,)))
    assert got == ["'milestones' has no effect with scheduler='cosine' (for the 'multistep' "
                   "scheduler)"]


@pytest.mark.parametrize("cls", [RetrainConfig, TwoStageConfig])
def test_the_warning_points_at_the_caller(cls: type) -> None:
    with pytest.warns(UserWarning) as record:
        cls(scheduler="cosine", gamma=0.5)
    assert [w.filename for w in record] == [__file__]


def test_pruning_subclasses_warn_once_at_the_caller() -> None:
    for name in ("prune_last_layer", "pruning_complex"):
        _, cls = get_method(name)
        with pytest.warns(UserWarning) as record:
            cls(gamma=0.5)
        assert [(str(w.message), w.filename) for w in record] == [
            (COSINE.replace("'gamma' and 'milestones' have", "'gamma' has")
             .replace("'cosine'", "'none'"), __file__)]


def test_the_run_does_not_repeat_the_warning() -> None:
    forget, retain = tiny_forget_retain()
    got = _warned(lambda: run_method("finetune", tiny_linear(), forget, retain, epochs=1,
                                     batch_size=8, scheduler="cosine", gamma=0.5,
                                     milestones=(1,)))
    assert got == [COSINE]


def test_gamma_and_milestones_change_nothing_outside_multistep() -> None:
    common = dict(epochs=3, lr=0.1, batch_size=8)
    for scheduler in ("none", "cosine"):
        a = _run("finetune", scheduler=scheduler, gamma=0.5, milestones=(1,), **common)
        b = _run("finetune", scheduler=scheduler, **common)
        assert_models_equal(a, b)
    # with multistep they matter (the comparison above is not vacuous)
    a = _run("finetune", scheduler="multistep", gamma=0.5, milestones=(1,), **common)
    b = _run("finetune", scheduler="multistep", gamma=0.1, milestones=(1,), **common)
    assert _differs(a, b)
    c = _run("finetune", scheduler="multistep", gamma=0.5, milestones=(), **common)
    d = _run("finetune", scheduler="multistep", milestones=(), **common)
    assert_models_equal(c, d)


# --- 2. / 3. two_stage and neggrad_plus train without a schedule ---------------------------


@pytest.mark.parametrize(("cls", "message"), [(TwoStageConfig, TWO_STAGE),
                                               (NegGradPlusConfig, NEGGRAD_PLUS)])
def test_the_schedule_of_unscheduled_methods_warns_once(cls: type, message: str) -> None:
    # named by UNUSED_FIELDS alone: not again by the scheduler warning
    got = _warned(lambda: cls(scheduler="cosine", milestones=(1,), gamma=0.5))
    assert got == [message]
    assert _warned(lambda: cls(gamma=0.5)) == [message.replace(
        "'scheduler', 'milestones' and 'gamma' have", "'gamma' has")]
    _quiet(lambda: cls(epochs=2, lr=0.02))


@pytest.mark.parametrize("name", ["two_stage", "neggrad_plus"])
def test_the_schedule_changes_nothing_without_one(name: str) -> None:
    common = dict(epochs=3, lr=0.1, batch_size=8)
    plain = _run(name, **common)
    for schedule in ({"scheduler": "cosine"},
                     {"scheduler": "multistep", "milestones": (1,), "gamma": 0.1}):
        assert_models_equal(_run(name, **common, **schedule), plain)


# --- 4. Fisher's class_row_var -------------------------------------------------------------


def _class_sets() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The tiny problem split by class: class 0 is forgotten, the others retained."""
    (xf, yf), (xr, yr) = tiny_forget_retain()
    x, y = torch.cat([xf, xr]), torch.cat([yf, yr])
    return (x[y == 0], y[y == 0]), (x[y != 0], y[y != 0])


def test_class_row_var_warns_without_class_rows() -> None:
    assert _warned(lambda: FisherConfig(forget_class_rows=False, class_row_var=0.5)) == [
        CLASS_ROW_VAR]
    _quiet(lambda: FisherConfig(class_row_var=0.5))  # read for the class rows
    _quiet(lambda: FisherConfig(forget_class_rows=False))  # its default: not set


def test_class_row_var_changes_nothing_without_class_rows() -> None:
    forget, retain = _class_sets()
    a = _run("fisher", forget, retain, forget_class_rows=False, class_row_var=0.5)
    b = _run("fisher", forget, retain, forget_class_rows=False)
    assert_models_equal(a, b)
    c = _run("fisher", forget, retain, class_row_var=0.5)
    d = _run("fisher", forget, retain)
    assert _differs(c, d)  # with the class rows it is their noise


# --- 5. / 6. SCRUB: lr_decay_rate and forget_batch_size -------------------------------------


def test_scrub_defaults_stay_quiet_though_no_decay_epoch_is_reached() -> None:
    _quiet(ScrubConfig)
    _quiet(lambda: ScrubConfig(epochs=2, max_steps=1))


@pytest.mark.parametrize(("settings", "message"), [
    ({"lr_decay_rate": 0.5}, SCRUB_DECAY),
    ({"lr_decay_rate": 0.5, "epochs": 2, "lr_decay_epochs": ()},
     "'lr_decay_rate' has no effect with epochs=2 and lr_decay_epochs=() (no decay epoch is "
     "reached)"),
    ({"lr_decay_rate": 0.5, "epochs": 4, "lr_decay_epochs": [4]},
     "'lr_decay_rate' has no effect with epochs=4 and lr_decay_epochs=(4,) (no decay epoch "
     "is reached)"),
    ({"max_steps": 0, "forget_batch_size": 8}, SCRUB_FORGET_BATCH),
])
def test_scrub_settings_that_are_not_read_warn(settings: dict, message: str) -> None:
    assert _warned(lambda: ScrubConfig(**settings)) == [message]


def test_scrub_settings_that_are_read_stay_quiet() -> None:
    _quiet(lambda: ScrubConfig(epochs=4, lr_decay_rate=0.5))  # decays from epoch 4 on
    _quiet(lambda: ScrubConfig(epochs=2, lr_decay_epochs=(1,), lr_decay_rate=0.5))
    _quiet(lambda: ScrubConfig(max_steps=1, forget_batch_size=8))
    _quiet(lambda: ScrubConfig(max_steps=0))  # forget_batch_size at its default


def test_scrub_given_fields_are_named_even_at_their_default() -> None:
    config = ScrubConfig(max_steps=0)
    assert config.conditional_warnings() == []
    assert config.conditional_warnings({"lr_decay_rate", "forget_batch_size"}) == [
        SCRUB_DECAY, SCRUB_FORGET_BATCH]


def test_scrub_unread_settings_change_nothing() -> None:
    common = dict(epochs=2, lr=0.05, batch_size=8, forget_batch_size=4)
    base = _run("scrub", **common, lr_decay_epochs=(2,))
    assert_models_equal(_run("scrub", **common, lr_decay_epochs=(2,), lr_decay_rate=0.5), base)
    # a decay epoch that is reached: the rate matters
    reached = [_run("scrub", **common, lr_decay_epochs=(1,), lr_decay_rate=r)
               for r in (0.5, 0.1)]
    assert _differs(*reached)
    no_max = {**common, "max_steps": 0}
    del no_max["forget_batch_size"]
    assert_models_equal(_run("scrub", **no_max, forget_batch_size=2),
                        _run("scrub", **no_max, forget_batch_size=5))
    assert _differs(_run("scrub", **{**no_max, "max_steps": 1}, forget_batch_size=2),
                    _run("scrub", **{**no_max, "max_steps": 1}, forget_batch_size=5))


# --- SalUn's redraw_labels -----------------------------------------------------------------


def test_redraw_labels_warns_with_one_epoch() -> None:
    assert _warned(lambda: SalUnConfig(epochs=1, redraw_labels=False)) == [SALUN_REDRAW]
    _quiet(lambda: SalUnConfig(epochs=2, redraw_labels=False))
    _quiet(lambda: SalUnConfig(epochs=1))


def test_redraw_labels_changes_nothing_with_one_epoch() -> None:
    common = dict(lr=0.1, batch_size=8, mask_ratio=0.5)
    assert_models_equal(_run("salun", epochs=1, redraw_labels=False, **common),
                        _run("salun", epochs=1, **common))
    assert _differs(_run("salun", epochs=3, redraw_labels=False, **common),
                    _run("salun", epochs=3, **common))


# --- zero strengths: antisamples' p, l1_sparse's alpha, the pruning methods' quantile -------

P_ZERO = ("'local_variance' and 'eps' have no effect with p=0 (the Gaussian draw is never "
          "taken: each coordinate is the neighbour's)")
ALPHA_ZERO = ("'include_bias' has no effect with alpha=0 (no L1 penalty: the method "
              "fine-tunes on the retain set)")
QUANTILE_ZERO = ("{} no effect with quantile=0 (no weight is re-drawn, so the copies that "
                 "select them change nothing)")


def test_zero_strengths_name_the_settings_they_make_pointless() -> None:
    config = get_method("antisamples")[1]
    assert _warned(lambda: config(p=0.0, local_variance=2.0, eps=0.5)) == [P_ZERO]
    _quiet(lambda: config(p=0.5, local_variance=2.0, eps=0.5))
    _quiet(lambda: config(p=0.0))
    assert _warned(lambda: get_method("l1_sparse")[1](alpha=0.0, include_bias=False)) == [
        ALPHA_ZERO]
    _quiet(lambda: get_method("l1_sparse")[1](alpha=1e-3, include_bias=False))
    assert _warned(lambda: get_method("selective_pruning")[1](quantile=0.0, overfit_lr=0.1)) \
        == [QUANTILE_ZERO.format("'overfit_lr' has")]
    assert _warned(lambda: get_method("pruning_complex")[1](
        quantile=0.0, overfit_epochs=3, retain_lr_divisor=2.0)) == [
        QUANTILE_ZERO.format("'overfit_epochs' and 'retain_lr_divisor' have")]
    _quiet(lambda: get_method("pruning_complex")[1](quantile=0.1, overfit_epochs=3))


def test_p_zero_keeps_every_coordinate_of_the_neighbour() -> None:
    from fastunlearn.forget.antisamples import generate_antisamples

    torch.manual_seed(0)
    forget, retain = torch.randn(6, 5), torch.randn(20, 5)
    a = generate_antisamples(forget, retain, p=0.0, local_variance=3.0, eps=0.5, seed=1)
    b = generate_antisamples(forget, retain, p=0.0, seed=1)
    assert torch.equal(a.samples, b.samples)
    assert torch.equal(a.pool, retain[a.neighbours])  # the pool: the neighbours themselves
    c = generate_antisamples(forget, retain, p=0.5, local_variance=3.0, seed=1)
    assert not torch.equal(c.samples, b.samples)


def test_zero_alpha_and_quantile_make_the_settings_change_nothing() -> None:
    common = dict(epochs=2, lr=0.1, batch_size=8)
    assert_models_equal(_run("l1_sparse", alpha=0.0, include_bias=False, **common),
                        _run("l1_sparse", alpha=0.0, **common))
    assert _differs(_run("l1_sparse", alpha=0.5, include_bias=False, **common),
                    _run("l1_sparse", alpha=0.5, **common))
    pruning = dict(common, overfit_epochs=2)
    assert_models_equal(_run("selective_pruning", quantile=0.0, overfit_lr=0.5, **pruning),
                        _run("selective_pruning", quantile=0.0, **pruning))
    assert _differs(_run("selective_pruning", quantile=0.5, overfit_lr=1.0, **pruning),
                    _run("selective_pruning", quantile=0.5, overfit_lr=1e-6, **pruning))
