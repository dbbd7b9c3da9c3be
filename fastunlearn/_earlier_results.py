"""Keep the report files of an earlier run with other settings instead of replacing them.

``repair`` and ``unlearn-features`` name their results by data set (``repair_digits.json``,
``.md``, ``.png``); ``evaluate``, ``exposure`` and ``forget`` by their folder
(``evaluation.json``, ``.md``, ``epsilon_hist.png``; ``exposure.*``; ``results.json``,
``.md``, the PNGs and ``logits/``), so a second run with other settings into the same folder
would replace the first run's files. Before a report is written, :func:`keep_earlier_run`
moves such files into ``earlier/<stem>-<n>/`` in the same folder (the Markdown's figure
links stay valid: the files keep their names) and warns where they went. A run with the
same settings replaces its files, as before.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["IGNORED_SETTINGS", "keep_earlier_run"]

#: Config entries that do not change the results (how the run reports progress, where its
#: cached models live, the output folder itself, whether figures are drawn).
IGNORED_SETTINGS = frozenset({"progress", "cache_dir", "out_dir", "result_dir", "plots"})

#: Settings named in the warning before it says "and N more".
_SHOWN = 4


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the config as its JSON file holds it, less the entries that change no result."""
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in plain.items() if k not in IGNORED_SETTINGS}


def _differences(old: Any, new: Mapping[str, Any]) -> list[str]:
    """Return ``'name': old -> new`` for each setting that differs.

    The names are quoted, so that a command shows its flags instead
    (:func:`~fastunlearn.cli_types.name_flags`).
    """
    if not isinstance(old, Mapping):
        return ["no settings recorded"]
    old_settings, new_settings = _settings(old), _settings(new)
    return [f"'{key}': {old_settings.get(key, '-')!r} -> {new_settings.get(key, '-')!r}"
            for key in sorted(set(old_settings) | set(new_settings))
            if old_settings.get(key) != new_settings.get(key)]


def _config_entry(saved: Mapping[str, Any]) -> Any:
    """Return the settings of a report JSON that records them under ``"config"``."""
    return saved.get("config")


def keep_earlier_run(
    folder: str | os.PathLike[str], stem: str, config: Mapping[str, Any],
    suffixes: Iterable[str] = (".json", ".md", ".png"),
    *,
    extra_names: Iterable[str] = (),
    settings_of: Callable[[Mapping[str, Any]], Any] = _config_entry,
) -> Path | None:
    """Move the report files of a run with other settings out of the way.

    The earlier run's settings are read from ``<stem>.json`` (by ``settings_of``: its
    ``"config"`` entry by default); when they differ from ``config`` (or cannot be read),
    every ``<stem><suffix>`` file and every file of ``extra_names`` present is moved into
    ``folder/earlier/<stem>-<n>/`` (the smallest free ``n >= 1``; ``earlier-runs`` where a
    file is named ``earlier``) and a ``UserWarning`` names the folder and the first
    settings that differ.

    Args:
        folder: The output folder.
        stem: The report's file-name stem (``repair_digits``).
        config: The settings of the run about to write its report (JSON-ready values).
        suffixes: The report's file suffixes.
        extra_names: Other files or folders of the report (``epsilon_hist.png``,
            ``logits``).
        settings_of: The settings recorded in a loaded report JSON.

    Returns:
        The folder the earlier files went to, or None when nothing was moved.

    """
    folder = Path(folder)
    earlier_json = folder / f"{stem}.json"
    names = [f"{stem}{suffix}" for suffix in suffixes] + list(extra_names)
    present = [folder / name for name in names if (folder / name).exists()]
    if not present:
        return None
    old_config: Any = None
    if earlier_json.is_file():
        try:
            saved = json.loads(earlier_json.read_text())
            old_config = settings_of(saved) if isinstance(saved, Mapping) else None
        except (OSError, ValueError):  # unreadable, not JSON
            old_config = None
    differences = _differences(old_config, config)
    if not differences:
        return None
    # a file of the user's named ``earlier`` is left alone: the runs go beside it
    root = next((folder / name for name in ("earlier", "earlier-runs")
                 if not (folder / name).exists() or (folder / name).is_dir()), None)
    if root is None:
        raise FileExistsError(f"cannot keep the earlier results of {stem} in {folder}: "
                              "'earlier' and 'earlier-runs' there are files, not folders")
    n = 1
    while (root / f"{stem}-{n}").exists():
        n += 1
    destination = root / f"{stem}-{n}"
    destination.mkdir(parents=True)
    for path in present:
        path.replace(destination / path.name)
    shown = "; ".join(differences[:_SHOWN])
    more = f"; and {len(differences) - _SHOWN} more" if len(differences) > _SHOWN else ""
    warnings.warn(f"{stem} in {folder} held the results of a run with other settings "
                  f"({shown}{more}); they were moved to {destination} instead of being "
                  "replaced", UserWarning, stacklevel=3)
    return destination
