"""Settings that other settings make pointless: rules, and their warnings two ways.

A config's rules (:class:`UnusedRule`: which fields have no effect under which condition,
and what they are for) are shown

- from Python, by the config's ``validate()``, naming the fields set to a value other than
  their default: ``'damping' has no effect with solver='lissa' (LiSSA is damped by
  'lissa_damping')``;
- by a command, naming the flags given on the command line, even at their default value:
  ``'--damping' has no effect with '--solver lissa' (LiSSA is damped by '--lissa-damping')``.

:func:`warn_unused_settings` warns about each field once per config, however often the
config is validated; a command's run, which validates the config again, neither repeats a
warning with the fields' names nor names a field the command's user did not give.
The tables: :mod:`fastunlearn.influence.unused_settings` (``repair``,
``unlearn-features``) and :mod:`fastunlearn.certified.unused_settings` (``remove``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._no_effect import no_effect_message
from .cli_types import name_flags

__all__ = [
    "GIVEN",
    "UnusedRule",
    "non_default_fields",
    "unused_setting_messages",
    "warn_unused_settings",
]

#: A condition's value meaning "set at all" (``'columns' set`` / ``'--columns'``).
GIVEN = object()

#: Where a config keeps what it warned about (see :func:`warn_unused_settings`).
_WARNED_KEY = "_warned_unused_settings"
#: Where a config keeps the fields a command's user gave (see :func:`warn_unused_settings`).
_GIVEN_KEY = "_given_settings"


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


def non_default_fields(config: Any, names: Iterable[str] | None = None) -> list[str]:
    """Return the dataclass ``config``'s fields (among ``names``) not at their default.

    A ``default_factory`` field is compared with a fresh default; a field without any
    default counts as set.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    out = []
    for name in fields if names is None else names:
        f = fields[name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            out.append(name)
            continue
        if getattr(config, name) != default:
            out.append(name)
    return out


def warn_unused_settings(config: Any, rules: Iterable[UnusedRule],
                         given: Iterable[str] | None = None,
                         flags: Mapping[str, str] | None = None, *, stacklevel: int = 2) -> None:
    """Warn (UserWarning) about the settings of ``config`` that have no effect.

    Args:
        config: A dataclass config; it keeps what it warned about (not a field), and a
            field is not named again under the same rule.
        rules: Its rules (e.g.
            :func:`fastunlearn.influence.unused_settings.repair_rules`).
        given: The fields the user set (a command: its flags given on the command line);
            kept by the config for its later calls. None: the fields a command gave
            before, else those set to a value other than their default.
        flags: Field -> flag; the warnings then name flags.
        stacklevel: As for :func:`warnings.warn`, from this function's caller.

    """
    if given is not None:
        config.__dict__[_GIVEN_KEY] = frozenset(given)
    stored = config.__dict__.get(_GIVEN_KEY)
    names = set(stored if stored is not None else non_default_fields(config))
    warned: frozenset[tuple[str, str]] = config.__dict__.get(_WARNED_KEY, frozenset())
    for rule in rules:
        key = repr((rule.condition, rule.purpose))
        fresh = [name for name in rule.fields if name in names and (name, key) not in warned]
        for message in unused_setting_messages([rule], fresh, flags):
            warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
            warned |= {(name, key) for name in fresh}
    # a new set each time: a copy of the config (copy.copy) does not share it
    config.__dict__[_WARNED_KEY] = warned
