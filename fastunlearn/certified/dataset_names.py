"""The data sets of the certified-removal experiment, by name (imports nothing heavy).

``fastunlearn remove --help`` and ``fastunlearn extract --help`` parse ``--dataset`` with
:func:`canonical_dataset` without importing torch; the experiment checks its config with
the same function.
"""

from __future__ import annotations

__all__ = ["DATASETS", "canonical_dataset"]

#: Data sets accepted by ``dataset`` (``digits`` is bundled; the others load from
#: ``data_dir`` as features written by ``fastunlearn extract`` or as raw pixels).
DATASETS = ("digits", "MNIST", "SVHN", "CIFAR10")


def canonical_dataset(name: object) -> str:
    """Return the name of :data:`DATASETS` that ``name`` spells in any letter case.

    Raises:
        ValueError: ``name`` is no such name (the message lists them).

    """
    for known in DATASETS:
        if str(name).lower() == known.lower():
            return known
    raise ValueError(f"'dataset' must be one of {', '.join(DATASETS)}, got {name!r}")
