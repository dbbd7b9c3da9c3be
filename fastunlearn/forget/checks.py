"""Argument checks the forgetting methods share: label range, duplicates, forget/retain overlap.

Both checks only use what a data set exposes cheaply (the label tensor of a
:class:`~torch.utils.data.TensorDataset`, the ``targets`` of a torchvision data set, the
indices of a :class:`~torch.utils.data.Subset`); they never decode images. Where a data set
exposes nothing, the label check is skipped here and the training loops check every batch
(:func:`check_batch_labels`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sized
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "check_batch_labels",
    "check_disjoint",
    "check_label_dtype",
    "check_labels",
    "check_sets",
    "check_unique",
    "dataset_labels",
    "item_labels",
]


def dataset_labels(dataset: Dataset) -> Tensor | None:
    """Return the int64 labels of ``dataset`` when they are available without loading inputs.

    Handles :class:`TensorDataset` (its second tensor), data sets with a ``targets``
    attribute (torchvision) and :class:`Subset` of either. Returns ``None`` otherwise.
    """
    if isinstance(dataset, Subset):
        base = dataset_labels(dataset.dataset)
        if base is None:
            return None
        return base[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            return None
        labels = dataset.tensors[1]
        return labels if not labels.is_floating_point() else None
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    labels = torch.as_tensor(targets)
    return labels.long() if not labels.is_floating_point() else None


def check_label_dtype(labels: Tensor, name: str) -> None:
    """Raise TypeError naming ``name`` unless ``labels`` hold integers (not bool).

    Floating labels are refused even when they hold whole numbers (3.0): a label 3.5 would
    otherwise be truncated to 3 by ``int()`` or ``.long()`` without a word.

    Raises:
        TypeError: If the labels are floating, complex or bool.

    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integers, got {labels.dtype}")


def item_labels(dataset: Dataset, name: str) -> Tensor:
    """Every label of ``dataset`` read item by item, checked to be integers, as int64.

    For data sets that do not expose their labels (:func:`dataset_labels` gives ``None``);
    each label is checked on its own, so a float label is never truncated by ``int()``.

    Raises:
        TypeError: Naming ``name``, if a label is not an integer (float, bool, complex).

    """
    labels = []
    for i in range(len(cast(Sized, dataset))):  # torch's Dataset stub has no __len__
        label = torch.as_tensor(dataset[i][1])
        check_label_dtype(label, name)
        labels.append(label.reshape(()))
    return torch.stack(labels).long() if labels else torch.zeros(0, dtype=torch.long)


def _check_first_label(dataset: Dataset, name: str) -> None:
    """:func:`check_label_dtype` on the first item's label (a data set hiding its labels)."""
    try:
        item = dataset[0]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            return
        label = torch.as_tensor(item[1])
    except (TypeError, ValueError, RuntimeError, IndexError):
        return  # not readable as a tensor here; the methods' own checks report it
    check_label_dtype(label, name)


def _label_range(labels: Tensor) -> tuple[int, int]:
    """Smallest and largest of non-empty integer ``labels`` as Python ints, as given.

    torch has no ``min``/``max`` for uint16, uint32 and uint64 (NotImplementedError): they
    are read as int64, where uint64 labels >= 2**63 wrap round to negative numbers, which
    are mapped back to their unsigned values.
    """
    if labels.dtype not in (torch.uint16, torch.uint32, torch.uint64):
        return int(labels.min()), int(labels.max())
    wide = labels.to(torch.int64)
    wrapped = wide < 0  # only uint64 labels >= 2**63
    if not bool(wrapped.any()):
        return int(wide.min()), int(wide.max())
    high = int(wide[wrapped].max()) + 2**64
    low = int(wide[~wrapped].min()) if not bool(wrapped.all()) else int(wide.min()) + 2**64
    return low, high


def check_labels(labels: Tensor, num_classes: int, name: str) -> None:
    """Raise ValueError naming ``name`` if a label lies outside ``0 .. num_classes - 1``.

    Raises:
        TypeError: If the labels are not integers (floating, complex or bool).
        ValueError: If they are not a 1-D tensor of class indices or one is out of range.

    """
    check_label_dtype(labels, name)
    if labels.dim() != 1:
        raise ValueError(
            f"{name}: labels must be a 1-D tensor of class indices, got shape "
            f"{tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        return
    low, high = _label_range(labels)
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name}: label {bad} is out of range for a model with {num_classes} outputs "
            f"(labels must be in 0..{num_classes - 1})"
        )


def check_batch_labels(labels: Tensor, num_classes: int, name: str) -> None:
    """Per-batch form of :func:`check_labels` for data sets whose labels are not exposed."""
    check_labels(labels, num_classes, name)


def _root_and_indices(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """Follow nested Subsets to the root data set; the composed indices, or None if none.

    Negative indices (Python's, from the end) are made non-negative with the length of
    the data set they index, so ``Subset(ds, [-1])`` and ``Subset(ds, [len(ds) - 1])`` name
    the same example (where that length is not available they are kept as given).
    """
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        own = [int(i) for i in dataset.indices]
        if any(i < 0 for i in own):
            try:
                size = len(cast(Sized, dataset.dataset))
            except TypeError:
                size = None
            if size is not None:
                own = [i + size if -size <= i < 0 else i for i in own]
        indices = own if indices is None else [own[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


#: dtypes numpy has no type for: their rows are hashed as raw bytes (bfloat16 inputs)
_NO_NUMPY = {torch.bfloat16} | {
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                "float8_e5m2fnuz") if hasattr(torch, n)
}


def _numpy_view(rows: Tensor) -> Tensor:
    """``rows`` (contiguous, 2-D), viewed as bytes where numpy has no type for its dtype."""
    return rows.view(torch.uint8) if rows.dtype in _NO_NUMPY else rows


def _row_digests(dataset: TensorDataset) -> list[bytes]:
    """One digest per example of the (inputs, labels) pair; exact duplicates collide."""
    inputs, labels = dataset.tensors[0], dataset.tensors[1]
    if not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        # one label dtype: a tuple's labels are made int64 (as_dataset), a TensorDataset
        # keeps int32 / uint8 ones, and the same label must give the same digest
        labels = labels.long()
    flat = _numpy_view(inputs.detach().reshape(inputs.shape[0], -1).cpu().contiguous())
    lab = _numpy_view(labels.detach().reshape(labels.shape[0], -1).cpu().contiguous())
    # one byte view of each (contiguous) tensor, sliced per row: the same bytes as each
    # row's tobytes() without a tensor index and a numpy conversion per row
    row_bytes, label_bytes = _bytes_view(flat), _bytes_view(lab)
    step = flat.shape[1] * flat.element_size()
    label_step = lab.shape[1] * lab.element_size()
    out = []
    for i in range(flat.shape[0]):
        h = hashlib.blake2b(row_bytes[i * step:(i + 1) * step], digest_size=16)
        h.update(label_bytes[i * label_step:(i + 1) * label_step])
        out.append(h.digest())
    return out


def _bytes_view(rows: Tensor) -> memoryview:
    """Return the bytes of a contiguous CPU tensor, without a copy."""
    # numpy's stub declares ndarray.__buffer__ only for Python >= 3.12 (mypy checks 3.10)
    return (memoryview(rows.numpy()).cast("B")  # type: ignore[arg-type]
            if rows.numel() else memoryview(b""))


def check_disjoint(forget: Dataset, retain: Dataset) -> None:
    """Raise ValueError if ``forget`` and ``retain`` share examples.

    Two cases are checked:

    - both are (possibly nested) :class:`Subset` views of the same root data set: they
      overlap if they share an index;
    - both are :class:`TensorDataset`: they overlap if an ``(input, label)`` pair occurs
      bit-for-bit in both (exact duplicates only; near-duplicates are not detected).

    Any other combination cannot be checked without loading every example and is accepted.
    """
    f_root, f_idx = _root_and_indices(forget)
    r_root, r_idx = _root_and_indices(retain)
    if f_root is r_root and f_idx is not None and r_idx is not None:
        shared = set(f_idx) & set(r_idx)
        if shared:
            example = min(shared)
            raise ValueError(
                f"forget and retain overlap: {len(shared)} index(es) of the same data set are "
                f"in both (e.g. index {example}); the retain set must exclude the forget set"
            )
        return
    if f_root is r_root and (f_idx is None or r_idx is None):
        raise ValueError(
            "forget and retain overlap: one of them is the whole data set the other is drawn from"
        )
    if isinstance(forget, TensorDataset) and isinstance(retain, TensorDataset):
        if len(forget.tensors) < 2 or len(retain.tensors) < 2:
            return
        if forget.tensors[0].shape[1:] != retain.tensors[0].shape[1:]:
            return
        f_keys = set(_row_digests(forget))
        shared_count = sum(1 for key in _row_digests(retain) if key in f_keys)
        if shared_count:
            raise ValueError(
                f"forget and retain overlap: {shared_count} retain example(s) equal a forget "
                f"example (same input and label); the retain set must exclude the forget set"
            )


def check_unique(dataset: Dataset, name: str = "forget") -> None:
    """Raise ValueError naming ``name`` if ``dataset`` holds the same example twice.

    A (nested) :class:`Subset` repeats an example when it repeats an index (as the harness's
    ``file:`` forget sets refuse); a :class:`TensorDataset` when an ``(input, label)`` pair
    occurs twice bit for bit. Other data sets cannot be checked cheaply and are accepted.
    """
    _, indices = _root_and_indices(dataset)
    if indices is not None:
        seen: set[int] = set()
        for i in indices:
            if i in seen:
                raise ValueError(f"{name}: index {i} occurs more than once (duplicates)")
            seen.add(i)
        return
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        first: dict[bytes, int] = {}
        for row, key in enumerate(_row_digests(dataset)):
            if key in first:
                raise ValueError(
                    f"{name}: rows {first[key]} and {row} are the same example "
                    "(same input and label; duplicates)"
                )
            first[key] = row


def check_sets(
    forget: Dataset, retain: Dataset, num_classes: int, *, check_overlap: bool = True
) -> None:
    """Run every data check of a forgetting method, cheapest first.

    Labels of both sets within ``0 .. num_classes - 1`` (where the data sets expose them;
    the training loops check the rest per batch), no duplicate forget example and, when
    ``check_overlap``, no example in both sets.

    Raises:
        ValueError: Naming ``forget`` or ``retain`` and what is wrong.
        TypeError: Naming the set, if its labels are not integers (a float, bool or
            complex label; for a data set that does not expose its labels, its first one).

    """
    for ds, name in ((forget, "forget"), (retain, "retain")):
        labels = dataset_labels(ds)
        if labels is None and isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
            labels = ds.tensors[1]  # floating labels, which check_labels refuses (TypeError)
        if labels is not None:
            check_labels(labels, num_classes, name)
        else:  # labels not exposed: at least the first one (float 3.5, bool) is checked
            _check_first_label(ds, name)
    check_unique(forget, "forget")
    if check_overlap:
        check_disjoint(forget, retain)
