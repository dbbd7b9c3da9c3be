"""Settings of the influence experiments that have no effect with the others: one table.

:func:`repair_rules` (:class:`~fastunlearn.influence.experiment.RepairConfig`) and
:func:`feature_rules` (:class:`~fastunlearn.influence.feature_experiment.FeatureConfig`)
say which settings a configuration makes pointless, and why. The table is shown two ways:

- from Python, ``validate()`` names the fields set to a value other than their default:
  ``'damping' has no effect with solver='lissa' (LiSSA is damped by 'lissa_damping')``;
- the ``repair`` and ``unlearn-features`` commands name the flags given on the command line,
  even at their default value: ``'--damping' has no effect with '--solver lissa' (LiSSA is
  damped by '--lissa-damping')``.

:func:`warn_unused_settings` warns about each field once per config, however often the
config is validated, so a command whose run validates its config again does not repeat the
warnings it gave with the flags' names.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._no_effect import no_effect_message
from ..cli_types import name_flags

__all__ = [
    "GIVEN",
    "UnusedRule",
    "feature_rules",
    "repair_rules",
    "unused_setting_messages",
    "warn_unused_settings",
]

#: A condition's value meaning "set at all" (``'columns' set`` / ``'--columns'``).
GIVEN = object()

#: ``repair``'s settings of the second-order solve (none of them is used with order 1).
_SECOND_ORDER = ("solver", "damping", "cg_tol", "cg_maxiter", "lissa_batch", "lissa_damping",
                 "lissa_scale", "lissa_depth", "lissa_hessian")
#: ``repair``'s LiSSA settings.
_LISSA = ("lissa_batch", "lissa_damping", "lissa_scale", "lissa_depth", "lissa_hessian")
#: ``unlearn-features``' settings of the certified linear variant.
_CERTIFIED = ("binary", "linear_lam", "epsilon", "delta")

#: Where a config keeps what it warned about (see :func:`warn_unused_settings`).
_WARNED_KEY = "_warned_unused_settings"


@dataclass(frozen=True)
class UnusedRule:
    """Settings that have no effect under a condition.

    Attributes:
        applies: Whether the condition holds for the configuration.
        fields: The settings made pointless (field names).
        condition: ``(field, value)`` pairs that make them so (``value`` :data:`GIVEN`:
            the field is set at all).
        purpose: What the settings are for, in parentheses; quoted field names in it are
            shown as flags by the commands.

    """

    applies: bool
    fields: tuple[str, ...]
    condition: tuple[tuple[str, Any], ...]
    purpose: str


def repair_rules(config: Any) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.influence.experiment.RepairConfig`."""
    order1, solver = config.order == 1, config.solver
    return [
        UnusedRule(order1, _SECOND_ORDER, (("order", 1),), "(for the second-order solve)"),
        UnusedRule(order1 and config.tau != "auto", ("curvature", "hvp_batch_size"),
                   (("order", 1), ("tau", config.tau)),
                   "(for the line search that picks 'tau' when it is 'auto')"),
        UnusedRule(not order1, ("tau",), (("order", config.order),),
                   "(it is the first-order step size)"),
        UnusedRule(not order1 and solver != "lissa", _LISSA, (("solver", solver),),
                   "(for the LiSSA solver)"),
        UnusedRule(not order1 and solver != "cg", ("cg_tol", "cg_maxiter"),
                   (("solver", solver),), "(for the CG solver)"),
        UnusedRule(not order1 and solver == "lissa", ("damping",), (("solver", "lissa"),),
                   "(LiSSA is damped by 'lissa_damping')"),
        UnusedRule("iterative" not in config.protocols, ("steps", "batch"),
                   (("protocols", tuple(config.protocols)),), "(for the iterative protocol)"),
        UnusedRule(config.dataset == "digits", ("data_dir",), (("dataset", "digits"),),
                   "(bundled; the folder is read for cifar10 only)"),
    ]


def feature_rules(config: Any) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.influence.feature_experiment.FeatureConfig`."""
    return [
        UnusedRule(config.mode != "replace", ("value", "n_rows"), (("mode", config.mode),),
                   "(remove mode zeroes the columns wherever non-zero)"),
        UnusedRule(config.columns is not None, ("top_k",), (("columns", GIVEN),),
                   "(it picks the columns when 'columns' is None)"),
        UnusedRule(config.dataset != "digits", _CERTIFIED, (("dataset", config.dataset),),
                   "(for the certified linear variant, which runs on the digits only)"),
        UnusedRule(config.dataset == "digits" and not config.linear, _CERTIFIED,
                   (("linear", False),), "(for the certified linear variant)"),
    ]


def _condition_text(condition: Sequence[tuple[str, Any]],
                    flags: Mapping[str, str] | None) -> str:
    """``solver='lissa' and tau=0.5``, or with ``flags`` ``'--solver lissa' and '--tau 0.5'``.

    With ``flags``: a bool shows the flag alone (the map names the switch for the value
    the condition has: ``linear`` -> ``--no-linear``), a tuple its items joined by commas.
    """
    parts = []
    for name, value in condition:
        if flags is None:
            parts.append(f"'{name}' set" if value is GIVEN else f"{name}={value!r}")
            continue
        flag = flags.get(name, name)
        if value is GIVEN or isinstance(value, bool):
            parts.append(f"'{flag}'")
        elif isinstance(value, (tuple, list)):
            parts.append(f"'{flag} {','.join(str(v) for v in value)}'")
        else:
            parts.append(f"'{flag} {value}'")
    return " and ".join(parts)


def unused_setting_messages(rules: Iterable[UnusedRule], given: Iterable[str],
                            flags: Mapping[str, str] | None = None) -> list[str]:
    """Return one message per rule that makes settings among ``given`` pointless.

    A message names the rule's fields among ``given``: ``'a' and 'b' have no effect with
    <condition> (<purpose>)``. With ``flags`` (field -> flag) it names flags instead.
    """
    wanted = set(given)
    out = []
    for rule in rules:
        names = [name for name in rule.fields if name in wanted]
        if not (rule.applies and names):
            continue
        purpose = rule.purpose if flags is None else name_flags(rule.purpose, flags, every=True)
        shown = names if flags is None else [flags.get(name, name) for name in names]
        out.append(no_effect_message(shown, f"with {_condition_text(rule.condition, flags)} "
                                            f"{purpose}"))
    return out


def _non_default_fields(config: Any) -> list[str]:
    """Return the dataclass ``config``'s fields set to a value other than their default."""
    return [f.name for f in dataclasses.fields(config)
            if f.default is dataclasses.MISSING or getattr(config, f.name) != f.default]


def warn_unused_settings(config: Any, rules: Iterable[UnusedRule],
                         given: Iterable[str] | None = None,
                         flags: Mapping[str, str] | None = None, *, stacklevel: int = 2) -> None:
    """Warn (UserWarning) about the settings of ``config`` that have no effect.

    Args:
        config: A dataclass config; it keeps what it warned about (not a field), and a
            field is not named again under the same rule.
        rules: Its rules (:func:`repair_rules`, :func:`feature_rules`).
        given: The fields the user set (a command: its flags given on the command line);
            None: those set to a value other than their default.
        flags: Field -> flag; the warnings then name flags.
        stacklevel: As for :func:`warnings.warn`, from this function's caller.

    """
    names = set(_non_default_fields(config) if given is None else given)
    warned: frozenset[tuple[str, str]] = config.__dict__.get(_WARNED_KEY, frozenset())
    for rule in rules:
        key = repr((rule.condition, rule.purpose))
        fresh = [name for name in rule.fields if name in names and (name, key) not in warned]
        for message in unused_setting_messages([rule], fresh, flags):
            warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
            warned |= {(name, key) for name in fresh}
    # a new set each time: a copy of the config (copy.copy) does not share it
    config.__dict__[_WARNED_KEY] = warned
