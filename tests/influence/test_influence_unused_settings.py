"""Settings that other settings make pointless: ``RepairConfig`` / ``FeatureConfig`` from
Python (fields at a non-default value) and the ``repair`` / ``unlearn-features`` commands
(flags given), from the one rule table of :mod:`fastunlearn.influence.unused_settings`.

The commands validate their config twice (before the run and inside it): each warning must
be shown once, naming the flags, never again naming the fields.
"""

from __future__ import annotations

import copy
import warnings

import pytest
from helpers import printed_warnings

from fastunlearn._unused_settings import (
    GIVEN,
    UnusedRule,
    unused_setting_messages,
    warn_unused_settings,
)
from fastunlearn.cli import main
from fastunlearn.influence import experiment as repair_experiment
from fastunlearn.influence import feature_experiment
from fastunlearn.influence.experiment import RepairConfig
from fastunlearn.influence.feature_experiment import FeatureConfig
from fastunlearn.influence.unused_settings import repair_rules


class _Stop(Exception):
    """Raised by a stub so that nothing after it runs."""


def _messages(config) -> list[str]:
    """Validate ``config``; return the 'no effect' warnings it gave."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config.validate()
    return [str(w.message) for w in record if "no effect" in str(w.message)]


@pytest.mark.parametrize("settings, expected", [
    ({"solver": "lissa", "damping": 5.0},
     ["'damping' has no effect with solver='lissa' (LiSSA is damped by 'lissa_damping')"]),
    ({"solver": "lissa", "cg_tol": 1e-3, "cg_maxiter": 7},
     ["'cg_tol' and 'cg_maxiter' have no effect with solver='lissa' (for the CG solver)"]),
    ({"solver": "direct", "lissa_depth": 3},
     ["'lissa_depth' has no effect with solver='direct' (for the LiSSA solver)"]),
    ({"order": 1, "solver": "lissa", "lissa_scale": 10.0},
     ["'solver' and 'lissa_scale' have no effect with order=1 (for the second-order "
      "solve)"]),
    ({"order": 1, "tau": 0.5, "hvp_batch_size": 64},
     ["'hvp_batch_size' has no effect with order=1 and tau=0.5 (for the line search that "
      "picks 'tau' when it is 'auto')"]),
    ({"tau": 0.5}, ["'tau' has no effect with order=2 (it is the first-order step size)"]),
    ({"protocols": ("one-shot",), "steps": 3, "batch": 8},
     ["'steps' and 'batch' have no effect with protocols=('one-shot',) (for the iterative "
      "protocol)"]),
    ({"data_dir": "somewhere"},
     ["'data_dir' has no effect with dataset='digits' (bundled; the folder is read for "
      "cifar10 only)"]),
])
def test_repair_config_names_the_fields_that_have_no_effect(settings, expected):
    assert _messages(RepairConfig(**settings)) == expected


@pytest.mark.parametrize("settings", [
    {},
    {"solver": "lissa", "lissa_depth": 3},  # all of LiSSA's settings are used by LiSSA
    {"order": 1, "tau": 0.5},
    {"order": 1, "curvature": "hessian"},  # the line search of tau='auto' uses it
    {"solver": "lissa", "damping": 100.0},  # at its default: not set by the user
    {"protocols": ("iterative",), "steps": 3},
    {"dataset": "cifar10", "data_dir": "somewhere"},
])
def test_repair_config_is_quiet_when_every_setting_is_used(settings):
    assert _messages(RepairConfig(**settings)) == []


@pytest.mark.parametrize("settings, expected", [
    ({"value": 2.0}, ["'value' has no effect with mode='remove' (remove mode zeroes the "
                      "columns wherever non-zero)"]),
    ({"columns": (1, 2), "top_k": 3},
     ["'top_k' has no effect with 'columns' set (it picks the columns when 'columns' is "
      "None)"]),
    ({"dataset": "wine", "epsilon": 1.0, "binary": (1, 7)},
     ["'binary' and 'epsilon' have no effect with dataset='wine' (for the certified linear "
      "variant, which runs on the digits only)"]),
    ({"linear": False, "delta": 0.5},
     ["'delta' has no effect with linear=False (for the certified linear variant)"]),
])
def test_feature_config_names_the_fields_that_have_no_effect(settings, expected):
    assert _messages(FeatureConfig(**settings)) == expected


@pytest.mark.parametrize("settings", [
    {}, {"mode": "replace", "value": 2.0, "n_rows": 5}, {"columns": (1, 2)},
    {"epsilon": 1.0}, {"dataset": "wine", "linear": False},
])
def test_feature_config_is_quiet_when_every_setting_is_used(settings):
    assert _messages(FeatureConfig(**settings)) == []


def test_a_config_warns_once_however_often_it_is_validated():
    config = RepairConfig(solver="lissa", damping=5.0)
    assert len(_messages(config)) == 1
    assert _messages(config) == []  # validated again (as a run does): already said
    config.cg_maxiter = 7  # a field changed afterwards is named, alone
    assert _messages(config) == ["'cg_maxiter' has no effect with solver='lissa' (for the "
                                 "CG solver)"]
    config.solver = "direct"  # another reason: said again, with it
    assert _messages(config) == ["'cg_maxiter' has no effect with solver='direct' (for the "
                                 "CG solver)"]
    # a copy is a config of its own: what the original said is not shared afterwards
    clone = copy.copy(config)
    config.lissa_depth = 3
    assert _messages(config) == ["'lissa_depth' has no effect with solver='direct' (for the "
                                 "LiSSA solver)"]
    clone.lissa_depth = 3
    assert len(_messages(clone)) == 1
    # the warnings point at the caller of validate(), not at the library
    with pytest.warns(UserWarning, match="'damping' has no effect") as record:
        RepairConfig(solver="lissa", damping=5.0).validate()
    assert record[0].filename == __file__


def test_the_flag_rendering_of_a_rule():
    rules = [UnusedRule(True, ("a_b", "c"), (("d", (1, 2)), ("e", False), ("f", GIVEN)),
                        "(used by 'd' and 'g')")]
    flags = {"a_b": "--a-b", "c": "--c", "d": "--d", "e": "--no-e", "f": "--f"}
    assert unused_setting_messages(rules, {"c", "a_b"}) == [
        "'a_b' and 'c' have no effect with d=(1, 2) and e=False and 'f' set "
        "(used by 'd' and 'g')"]
    assert unused_setting_messages(rules, {"c", "a_b"}, flags) == [
        "'--a-b' and '--c' have no effect with '--d 1,2' and '--no-e' and '--f' "
        "(used by '--d' and 'g')"]
    assert unused_setting_messages(rules, {"x"}, flags) == []
    assert unused_setting_messages([UnusedRule(False, ("c",), (), "")], {"c"}) == []


def test_given_names_are_warned_even_at_their_default():
    config = RepairConfig(solver="lissa")  # damping left at its default value
    with pytest.warns(UserWarning, match=r"^'damping' has no effect with solver='lissa'"):
        warn_unused_settings(config, repair_rules(config), given={"damping"})
    assert _messages(config) == []  # validate() does not repeat it


def _printed(argv: list[str], monkeypatch) -> list[str]:
    """Run ``main(argv)`` with the work stubbed after the run's own validate(); return the
    warning lines a user sees."""
    def no_training(*args, **kwargs):
        raise _Stop("training started")

    def no_data(*args, **kwargs):
        raise _Stop("data loading started")

    monkeypatch.setattr(repair_experiment, "train_classifier", no_training)
    monkeypatch.setattr(feature_experiment, "load_feature_data", no_data)
    outcome, lines = printed_warnings(lambda: main(argv), _Stop)
    assert isinstance(outcome, _Stop)  # a warning, not an error: the run went on
    return [line for line in lines if "no effect" in line]


def test_repair_command_names_each_flag_once_though_the_run_validates_again(monkeypatch,
                                                                              tmp_path):
    lines = _printed(["repair", "--solver", "lissa", "--damping", "100", "--cg-maxiter", "5",
                      "--data-dir", str(tmp_path), "--n-train", "100",
                      "--result-dir", str(tmp_path / "out")], monkeypatch)
    assert lines == [
        "fastunlearn repair: warning: '--cg-maxiter' has no effect with '--solver lissa' "
        "(for the CG solver)\n",
        # given at its default value: the command still says it
        "fastunlearn repair: warning: '--damping' has no effect with '--solver lissa' "
        "(LiSSA is damped by '--lissa-damping')\n",
        "fastunlearn repair: warning: '--data-dir' has no effect with '--dataset digits' "
        "(bundled; the folder is read for cifar10 only)\n",
    ]


def test_unlearn_features_command_names_each_flag_once(monkeypatch, tmp_path):
    lines = _printed(["unlearn-features", "--no-linear", "--epsilon", "0.1", "--columns", "3",
                      "--top-k", "2", "--out", str(tmp_path)], monkeypatch)
    assert lines == [
        "fastunlearn unlearn-features: warning: '--top-k' has no effect with '--columns' (it "
        "picks the columns when '--columns' is None)\n",
        "fastunlearn unlearn-features: warning: '--epsilon' has no effect with '--no-linear' "
        "(for the certified linear variant)\n",
    ]
