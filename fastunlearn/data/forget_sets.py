"""Forget sets from a short text spec: a class, several classes, a random fraction, a file.

The spec is what the CLI's ``--forget`` takes:

==================  ==================================================================
``class:3``         every example whose label is 3
``class:1,2``       every example whose label is 1 or 2
``random:0.1``      ``round(0.1 * n)`` examples drawn uniformly without replacement
``file:PATH``       the indices stored in ``PATH`` (a leading ``~`` expanded)
==================  ==================================================================

An index file holds 0-based row indices into the data set: ``.npy`` (an integer array,
loaded without pickle), ``.json`` (a list of integers) or text (integers separated by
white space or commas; ``#`` starts a comment). :func:`save_forget_indices` writes the text
form, so a forget set drawn once can be reused by later runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._atomic_files import write_text
from .._numbers import check_seed
from .._paths import check_output_file

__all__ = ["FORGET_SPEC_FORMS", "load_forget_indices", "parse_forget_spec", "save_forget_indices"]

#: The accepted forms, for error messages and ``--help``.
FORGET_SPEC_FORMS = "'class:K', 'class:K1,K2,...', 'random:FRACTION' or 'file:PATH'"

_INT = re.compile(r"^[+-]?\d+$")


class _BadIndexFile(Exception):
    """An index file that was read but does not hold a flat list of integers."""


def _as_labels(labels: object) -> Tensor:
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"'labels' must hold integers, got dtype {labels.dtype}")
        # a copy: torch warns on read-only arrays (the caller's array is never written)
        labels = torch.from_numpy(np.array(labels))
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        if len(labels) == 0:  # torch.as_tensor([]) is float32: it was refused as floats
            raise ValueError("'labels' is empty: there is nothing to forget from")
        try:
            labels = torch.as_tensor(list(labels))
        except (TypeError, ValueError, RuntimeError) as exc:  # ['a'], ragged, 2**70
            raise TypeError(f"'labels' must be a 1-D sequence of integer labels: {exc}") from None
    if not isinstance(labels, Tensor):
        raise TypeError(f"'labels' must be a 1-D integer tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"'labels' must hold integers, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"'labels' must be 1-D, got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("'labels' is empty: there is nothing to forget from")
    labels = labels.detach().to("cpu", torch.int64)
    low = int(labels.min())
    if low < 0:  # a class number, like the models' outputs 0..C-1 (was used silently)
        raise ValueError(f"'labels' must be class numbers >= 0, got label {low}")
    return labels


def _split(mask: Tensor, spec: str) -> tuple[Tensor, Tensor]:
    forget = torch.nonzero(mask).flatten()
    retain = torch.nonzero(~mask).flatten()
    if forget.numel() == 0:
        raise ValueError(f"'spec' {spec!r} selects an empty forget set")
    if retain.numel() == 0:
        raise ValueError(f"'spec' {spec!r} selects every example: the retain set would be empty")
    return forget, retain


def _parse_classes(body: str, spec: str, labels: Tensor) -> Tensor:
    parts = [p.strip() for p in body.split(",")]
    if not parts or any(not _INT.match(p) for p in parts):
        raise ValueError(f"'spec' {spec!r}: 'class:' takes integer labels separated by commas")
    classes = [int(p) for p in parts]
    if len(set(classes)) != len(classes):
        raise ValueError(f"'spec' {spec!r} names a class twice")
    present = set(torch.unique(labels).tolist())
    unknown = [c for c in classes if c not in present]
    if unknown:
        raise ValueError(
            f"'spec' {spec!r}: class {unknown[0]} does not occur in 'labels' "
            f"(labels present: {sorted(present)})"
        )
    return torch.isin(labels, torch.tensor(classes, dtype=torch.int64))


def _parse_fraction(body: str, spec: str, n: int, seed: int) -> Tensor:
    try:
        fraction = float(body)
    except ValueError:
        raise ValueError(f"'spec' {spec!r}: 'random:' takes a fraction in (0, 1)") from None
    if not 0.0 < fraction < 1.0:  # also rejects NaN
        raise ValueError(f"'spec' {spec!r}: the fraction must be in (0, 1), got {fraction}")
    k = round(fraction * n)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask


def load_forget_indices(path: str | os.PathLike) -> Tensor:
    """Read an index file (``.npy``, ``.json`` or text) as a 1-D int64 tensor.

    Args:
        path: The file; see the module docstring for the formats.

    Returns:
        The indices in file order (not checked against a data set: see
        :func:`parse_forget_spec`).

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If the file does not hold a flat list of integers.

    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"'path' must be a path, got {type(path).__name__}")
    path = Path(path).expanduser()  # the shell leaves `file:~/...` unexpanded
    if not path.is_file():
        raise FileNotFoundError(f"forget index file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
            if values.dtype.kind not in "iu":
                raise _BadIndexFile(f"holds dtype {values.dtype}, not integers")
            if values.ndim != 1:
                raise _BadIndexFile(f"holds an array of shape {values.shape}, not a flat list")
            if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
                raise _BadIndexFile(f"holds index {values.max()}, beyond the int64 range")
            return torch.from_numpy(values.astype(np.int64))
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad) skipped
        if suffix == ".json":
            values = json.loads(text)
            if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                raise _BadIndexFile("is not a JSON list of integers")
            return torch.tensor(values, dtype=torch.int64)
        tokens = re.split(r"[\s,]+", re.sub(r"#[^\n]*", "", text).strip())
        tokens = [t for t in tokens if t]
        bad = [t for t in tokens if not _INT.match(t)]
        if bad:
            raise _BadIndexFile(f"has {bad[0]!r} where an integer index was expected")
        return torch.tensor([int(t) for t in tokens], dtype=torch.int64)
    except _BadIndexFile as exc:
        raise ValueError(f"forget index file {str(path)!r} {exc}") from None
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(
            f"forget index file {str(path)!r} could not be read as integer indices: {exc}"
        ) from exc


def save_forget_indices(path: str | os.PathLike, indices: Tensor | Sequence[int]) -> Path:
    """Write indices as text, one per line, readable by ``file:PATH``.

    Args:
        path: Destination; parent folders must exist.
        indices: 1-D integer indices.

    Returns:
        ``Path(path)``.

    Raises:
        TypeError: If ``indices`` does not hold integers (or is not a sequence), or
            ``path`` is not a path.
        ValueError: If ``indices`` is not 1-D, holds a negative index, one beyond the int64
            range or one twice (such a file would be refused by ``file:PATH``), or ``path``
            is empty or an existing folder, or its parent is not a folder.
        FileNotFoundError: If the folder of ``path`` does not exist.

    """
    path = check_output_file(path)
    if isinstance(indices, np.ndarray) and indices.dtype.kind == "u":
        if indices.size and indices.max() > np.iinfo(np.int64).max:
            raise ValueError(f"'indices' holds {indices.max()}, beyond the int64 range")
        indices = indices.astype(np.int64)
    if isinstance(indices, Sequence) and not isinstance(indices, (str, bytes)):
        # torch.as_tensor raises a RuntimeError ("Overflow when unpacking long"), not an
        # OverflowError, for a Python int beyond int64
        big = next((i for i in indices if isinstance(i, int) and not -(2**63) <= i < 2**63), None)
        if big is not None:
            raise ValueError(f"'indices' holds {big}, beyond the int64 range")
    try:
        idx = torch.as_tensor(indices)
    except OverflowError:
        raise ValueError("'indices' holds an index beyond the int64 range") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"'indices' must be a 1-D sequence of integers, got {type(indices).__name__}: {exc}"
        ) from None
    if idx.numel() == 0 and not isinstance(indices, Tensor):
        idx = idx.to(torch.int64)  # torch.as_tensor([]) is float32
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"'indices' must hold integers, got dtype {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"'indices' must be 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError(f"'indices' must be 0-based row indices, got {int(idx.min())}")
    unique, counts = torch.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"'indices' holds {int(unique[counts > 1][0])} more than once")
    return write_text(path, "".join(f"{i}\n" for i in idx.tolist()))


def _parse_file(body: str, spec: str, n: int) -> Tensor:
    if not body.strip():
        raise ValueError(f"'spec' {spec!r}: 'file:' needs a path")
    idx = load_forget_indices(body.strip())
    if idx.numel() == 0:
        raise ValueError(f"'spec' {spec!r}: the index file is empty (an empty forget set)")
    out = idx[(idx < 0) | (idx >= n)]
    if out.numel():
        raise ValueError(
            f"'spec' {spec!r}: index {int(out[0])} is out of range for {n} examples "
            f"(indices are 0-based, 0..{n - 1})"
        )
    unique, counts = torch.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"'spec' {spec!r}: index {int(unique[counts > 1][0])} appears "
            f"{int(counts.max())} times (duplicates)"
        )
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask


def parse_forget_spec(
    spec: str,
    labels: object,
    seed: int | np.integer = 0,
) -> tuple[Tensor, Tensor]:
    """Split a data set into forget and retain indices from a spec.

    Args:
        spec: ``"class:3"``, ``"class:1,2"``, ``"random:0.1"`` or ``"file:PATH"`` (see the
            module docstring). White space around the parts is ignored.
        labels: Labels of the whole data set, 1-D integers (tensor, numpy array or list);
            its length is the number of examples.
        seed: Seed of the random draw (``random:`` only); the same seed gives the same set.

    Returns:
        ``(forget_idx, retain_idx)``: sorted int64 tensors that partition ``0..n-1``.

    Raises:
        ValueError: If the spec is malformed, names a class absent from ``labels`` or a
            class twice, has a fraction outside (0, 1), or its file holds no indices,
            non-integers, indices outside ``0..n-1`` or duplicates; if the forget set or
            the retain set would be empty; if a label is negative; or if ``seed`` is
            outside ``0..2**64-1``.
        TypeError: If ``spec`` is not a string, ``labels`` not integers or ``seed`` not an
            int.
        FileNotFoundError: If the index file does not exist.

    """
    if not isinstance(spec, str):
        raise TypeError(f"'spec' must be a str, got {type(spec).__name__}")
    seed = check_seed("seed", seed)  # a negative seed would alias a large one
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("class", "random", "file"):
        raise ValueError(f"'spec' must be one of {FORGET_SPEC_FORMS}, got {spec!r}")
    y = _as_labels(labels)
    n = y.numel()
    if kind == "class":
        mask = _parse_classes(body, spec, y)
    elif kind == "random":
        mask = _parse_fraction(body.strip(), spec, n, seed)
    else:
        mask = _parse_file(body, spec, n)
    return _split(mask, spec)
