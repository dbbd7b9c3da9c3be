"""Data of a harness run: train/test tensors, the forget/retain split, the model builder."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._equality import dataclass_eq
from .._numbers import check_int
from .._repr import fields_repr
from ..data import parse_forget_spec
from ..models import build_model

__all__ = ["HarnessData", "build_harness_model", "load_harness_data", "split_forget"]

VISION = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")


@dataclass(repr=False)
class HarnessData:
    """Training and test tensors of one data set.

    Attributes:
        x_train: Float inputs ``[n, ...]``.
        y_train: int64 labels ``[n]`` in ``0..num_classes-1``.
        x_test: Float inputs ``[m, ...]`` shaped like ``x_train`` rows.
        y_test: int64 labels ``[m]``.
        num_classes: Number of classes.
        name: Data set name (for the cache key and the report).

    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str = "custom"

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def __post_init__(self) -> None:
        for n in ("x_train", "y_train", "x_test", "y_test"):
            if not isinstance(getattr(self, n), Tensor):
                raise TypeError(f"'{n}' must be a torch.Tensor, got "
                                f"{type(getattr(self, n)).__name__}")
        self.num_classes = check_int("num_classes", self.num_classes, 2)
        for x, y, part in ((self.x_train, self.y_train, "train"),
                           (self.x_test, self.y_test, "test")):
            if not x.is_floating_point():
                raise TypeError(f"'x_{part}' must be floating point, got {x.dtype}")
            if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
                raise TypeError(f"'y_{part}' must be a 1-D integer tensor, got "
                                f"{y.dtype} {tuple(y.shape)}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"'x_{part}' and 'y_{part}' differ in length "
                                 f"({x.shape[0]} vs {y.shape[0]})")
            if x.shape[0] == 0:
                raise ValueError(f"the {part} set is empty")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"'y_{part}' holds labels in [{int(y.min())}, {int(y.max())}],"
                                 f" outside 0..{self.num_classes - 1} ('num_classes')")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"'x_{part}' contains NaN or inf")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(f"'x_test' rows {tuple(self.x_test.shape[1:])} differ from "
                             f"'x_train' rows {tuple(self.x_train.shape[1:])}")
        self.y_train = self.y_train.long()
        self.y_test = self.y_test.long()

    def digest(self) -> str:
        """SHA-256 of the tensors (part of the cache key).

        The values are read as raw bytes, so every dtype digests (numpy has no bfloat16);
        for the others the bytes are numpy's, so the keys of existing caches still match.
        """
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            c = t.detach().cpu().contiguous()
            h.update(str((c.dtype, tuple(c.shape))).encode())
            h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def load_harness_data(dataset: str, data_dir: str | None = None) -> HarnessData:
    """Load a data set as float tensors in ``[0, 1]``, images ``[n, C, H, W]``.

    Args:
        dataset: ``"digits"`` (the bundled 8x8 digits, its stratified 80/20 split) or a
            vision set read from ``data_dir`` (:func:`fastunlearn.data.vision_tensors`).
        data_dir: Folder of the torchvision files.

    Raises:
        TypeError: ``dataset`` is not a str.
        ValueError: Unknown data set, or a vision set without ``data_dir``.
        FileNotFoundError: Missing files (from the loaders).

    """
    if not isinstance(dataset, str):
        raise TypeError(f"'dataset' must be a str, got {type(dataset).__name__}")
    key = dataset.strip().lower().replace("_", "-")
    if key == "digits":
        from ..data import load_digits_dataset

        split = load_digits_dataset(normalize=False, dtype=torch.float32)
        return HarnessData(split.X_train.reshape(-1, 1, 8, 8) / 16.0, split.y_train,
                           split.X_test.reshape(-1, 1, 8, 8) / 16.0, split.y_test, 10, "digits")
    from ..data import vision_tensors
    from ..data.vision import canonical_dataset_name

    try:
        name = canonical_dataset_name(dataset)
    except ValueError:
        raise ValueError(f"'dataset' must be 'digits' or one of {VISION}, got {dataset!r}") \
            from None
    if data_dir is None:
        raise ValueError(f"'data_dir' is required for dataset {dataset!r} (only 'digits' is "
                         "bundled)")
    xtr, ytr = vision_tensors(name, data_dir, train=True)
    xte, yte = vision_tensors(name, data_dir, train=False)
    k = 100 if name == "cifar100" else 10
    return HarnessData(xtr.float() / 255.0, ytr, xte.float() / 255.0, yte, k, name)


def split_forget(data: HarnessData, spec: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(forget_idx, retain_idx)`` of the training set from a forget spec.

    Raises:
        ValueError / TypeError / FileNotFoundError: As
            :func:`fastunlearn.data.parse_forget_spec` (a malformed spec, a class absent
            from ``data.y_train``, an empty forget or retain set, a bad ``seed``, a
            missing index file).

    """
    return parse_forget_spec(spec, data.y_train, seed=seed)


def _model_kwargs(name: str, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Keyword arguments that fit zoo model ``name`` to rows of ``shape``.

    Reads the builder's signature: ``in_channels`` and ``side`` for images ``[C, H, W]``,
    ``in_features`` for the flattened size.
    """
    from ..models.zoo import MODELS

    params = inspect.signature(MODELS[name]).parameters if name in MODELS else {}
    kw: dict[str, Any] = {"num_classes": num_classes}
    if "in_channels" in params and len(shape) == 3:
        kw["in_channels"] = shape[0]
    if "side" in params and len(shape) == 3:
        kw["side"] = shape[-1]
    if "in_features" in params:
        n = 1
        for s in shape:
            n *= s
        kw["in_features"] = n
    return kw


def _check_fits(model: nn.Module, name: str, shape: tuple[int, ...], num_classes: int) -> None:
    """Run two zero inputs through ``model`` (eval mode, no RNG, no state change).

    Raises:
        ValueError: If the model cannot take rows of ``shape`` or does not give
            ``num_classes`` logits.

    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"'model' {name!r} cannot take inputs of shape {shape}: {first}") \
            from None
    finally:
        model.train(was)
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(f"'model' {name!r} gives logits of shape {tuple(out.shape[1:])} for "
                         f"inputs {shape}, expected ({num_classes},)")


def build_harness_model(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build zoo model ``name`` for inputs of ``shape`` (one row) and ``num_classes``.

    Uses the global RNG (seed it first). A test forward pass on zeros checks that the model
    fits the data.

    Raises:
        ValueError: For an unknown model name, or a model that cannot take ``shape``.

    """
    shape = tuple(shape)
    model = build_model(name, **_model_kwargs(name, shape, num_classes))
    _check_fits(model, name, shape, num_classes)
    return model


def model_kwargs(name: str, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Return the keyword arguments :func:`build_harness_model` passes to the zoo."""
    return _model_kwargs(name, tuple(shape), num_classes)
