"""Face-age image folders: ages from file or folder names, decade bins as class labels.

The forgetting study's face data (AgeDB; the NeurIPS 2023 competition's CASIA-SURF) is an
age *regression* problem that the code treats as 10-class classification on age decades
(0-9, 10-19, ..., 90+) with class-weighted cross-entropy, and forgets whole subjects
(the forget and retain sets share no person). :class:`AgeImageFolder` reads such a folder
from disk (nothing is downloaded) and gives each image its age, its decade bin and, where
the file names carry one, its subject.

Layouts (``layout=``):

============  ==========================================================================
``folder``    ``root/<age>/<any name>.jpg``: one folder per age, e.g. ``root/34/a.png``
``agedb``     AgeDB names ``<id>_<Name>_<age>_<m|f>.jpg`` (``0_MariaCallas_35_f.jpg``);
              the subject is ``<Name>``
``utkface``   UTKFace names ``<age>_<gender>_<race>_<date>.jpg`` (no subject)
``auto``      ``folder`` if ``root`` holds only integer-named folders, otherwise the
              first of ``agedb``, ``utkface`` that matches every file name
============  ==========================================================================

A custom ``pattern`` (a regular expression matched against the file name, with a named
group ``age`` and optionally ``subject``) reads any other naming scheme.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._numbers import as_int, check_fraction, check_int, check_seed, is_integer

__all__ = [
    "AGE_LAYOUTS",
    "IMAGE_EXTENSIONS",
    "AgeImageFolder",
    "age_bins",
    "subject_forget_split",
]

#: File suffixes read as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: Name patterns of the known layouts (matched against the whole file name).
_NAME_PATTERNS = {
    "agedb": re.compile(r"^\d+_(?P<subject>.+)_(?P<age>\d+)_[mfMF]\.[^.]+$"),
    "utkface": re.compile(r"^(?P<age>\d+)_[01]_\d+_\d+.*\.[^.]+$"),
}
AGE_LAYOUTS = ("auto", "folder", *_NAME_PATTERNS)
_MAX_AGE = 150


def age_bins(
    ages: Tensor,
    bin_width: int | np.integer = 10,
    num_bins: int | np.integer = 10,
) -> Tensor:
    """Map ages to bins ``min(age // bin_width, num_bins - 1)`` (decades, 90+ by default).

    Args:
        ages: Non-negative integer ages, any shape.
        bin_width: Years per bin.
        num_bins: Number of bins; the last one is open-ended.

    Returns:
        int64 bin labels, same shape as ``ages``.

    Raises:
        ValueError: If an age is negative or a size is not in ``1..2**63-1``.
        TypeError: If ``ages`` is not an integer tensor.

    """
    # int64 arithmetic: larger values overflow
    bin_width = check_int("bin_width", bin_width, 1, 2**63 - 1)
    num_bins = check_int("num_bins", num_bins, 1, 2**63 - 1)
    if not isinstance(ages, Tensor) or ages.dtype.is_floating_point or ages.dtype == torch.bool:
        raise TypeError("'ages' must be an integer tensor")
    if (ages < 0).any():
        raise ValueError(f"'ages' must be >= 0, got {int(ages.min())}")
    return torch.clamp(ages.to(torch.int64) // bin_width, max=num_bins - 1)


def _is_image(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and (path.suffix.lower() in IMAGE_EXTENSIONS)
    )


def _scan_folders(root: Path) -> list[tuple[Path, int, str | None]] | None:
    """``(path, age, None)`` for ``root/<age>/*`` or None when root is not laid out so."""
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not dirs or not all(re.fullmatch(r"\d+", d.name) for d in dirs):
        return None
    items: list[tuple[Path, int, str | None]] = []
    for d in sorted(dirs, key=lambda d: int(d.name)):
        items += [(p, int(d.name), None) for p in sorted(d.iterdir()) if _is_image(p)]
    return items


def _scan_names(
    files: list[Path], pattern: re.Pattern[str], skip: bool
) -> tuple[list[tuple[Path, int, str | None]], list[Path]]:
    """Return ``(matched items, skipped files)``; a mismatch raises unless ``skip``."""
    items, skipped = [], []
    has_subject = "subject" in pattern.groupindex
    for p in files:
        m = pattern.match(p.name)
        why = "does not match"
        if m is not None:
            # a custom pattern's group may match no digits ("(?P<age>\w+)") or nothing at
            # all (an optional group): such a name carries no age (int() failed unnamed)
            try:
                age = int(m.group("age"))
            except (TypeError, ValueError):
                why = f"gives no whole-number age (group 'age': {m.group('age')!r}) with"
            else:
                items.append((p, age, m.group("subject") if has_subject else None))
                continue
        if not skip:
            raise ValueError(f"file name {p.name!r} {why} the pattern {pattern.pattern!r}")
        skipped.append(p)
    return items, skipped


class AgeImageFolder(Dataset):
    """Images labelled by age, read from a folder, with decade bins as class labels.

    Args:
        root: The folder (see the module docstring for the layouts).
        layout: ``"auto"``, ``"folder"``, ``"agedb"`` or ``"utkface"``; ignored when
            ``pattern`` is given.
        pattern: Regular expression with a named group ``age`` (and optionally
            ``subject``), matched against each file name in ``root``.
        target: What ``dataset[i]`` returns as its label: ``"bin"`` (the int64 class, the
            study's setting) or ``"age"`` (a float32 age for regression).
        bin_width: Years per bin (10: decades).
        num_bins: Number of bins; ages from ``(num_bins - 1) * bin_width`` on share the last.
        size: Resize every image to ``size x size`` (needed to batch images of different
            sizes); ``None`` keeps the stored size.
        grayscale: Read one channel instead of RGB.
        transform: Applied to the PIL image instead of the default conversion to a float
            tensor ``[C, H, W]`` in ``[0, 1]``.
        skip_unmatched: Skip image files whose names match no pattern (UTKFace ships a few
            malformed names) instead of raising; ``auto`` then picks the layout matching
            the most files. The skipped files are listed in ``skipped``.

    Attributes:
        paths: Image files, in a fixed order (sorted by folder age, or by file name).
        ages: int64 ages ``[n]``.
        targets: int64 bin labels ``[n]``.
        subjects: Subject of each image (``agedb`` or a pattern with ``subject``; None for
            a name an optional ``subject`` group does not match), or None when no name
            carries one.
        num_classes: ``num_bins``.
        layout: The layout used (``"pattern"`` for a custom pattern).
        skipped: Files left out by ``skip_unmatched``.

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        ValueError: If no image is found, a file name does not match the layout, an age is
            above 150, or an argument is out of range.
        TypeError: If an argument has the wrong type.

    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        layout: str = "auto",
        pattern: str | None = None,
        target: str = "bin",
        bin_width: int = 10,
        num_bins: int = 10,
        size: int | np.integer | None = None,
        grayscale: bool = False,
        transform: Callable[[Any], Any] | None = None,
        skip_unmatched: bool = False,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"'root' must be a path, got {type(root).__name__}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"'root' {str(root)!r} is not a directory")
        if target not in ("bin", "age"):
            raise ValueError(f"'target' must be 'bin' or 'age', got {target!r}")
        if size is not None and (not is_integer(size) or size < 1):
            raise ValueError(f"'size' must be None or a positive int, got {size!r}")
        if size is not None:
            size = as_int(size)
        if not isinstance(grayscale, (bool, np.bool_)):
            raise TypeError(f"'grayscale' must be a bool, got {type(grayscale).__name__}")
        grayscale = bool(grayscale)  # numpy's bool_ as well
        if transform is not None and not callable(transform):
            raise TypeError("'transform' must be callable or None")
        if not isinstance(skip_unmatched, (bool, np.bool_)):
            raise TypeError(f"'skip_unmatched' must be a bool, got {type(skip_unmatched).__name__}")
        skip_unmatched = bool(skip_unmatched)
        self.skipped: list[Path] = []
        items = self._scan(root, layout, pattern, skip_unmatched)
        if not items and self.skipped:
            raise ValueError(
                f"no file name in {str(root)!r} matches layout {self.layout!r} "
                f"({len(self.skipped)} image(s) skipped)"
            )
        if not items:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {str(root)!r}")
        too_old = [(p, a) for p, a, _ in items if a > _MAX_AGE]
        if too_old:
            p, a = too_old[0]
            raise ValueError(f"{p.name!r} has age {a} > {_MAX_AGE}: not an age (check 'layout')")
        self.root = root
        self.paths = [p for p, _, _ in items]
        self.ages = torch.tensor([a for _, a, _ in items], dtype=torch.int64)
        self.targets = age_bins(self.ages, bin_width, num_bins)
        subjects = [s for _, _, s in items]
        # None when no name carries a subject; an optional 'subject' group of a pattern
        # leaves None for the names without one (the first name alone decided before)
        self.subjects: list[str | None] | None = (
            None if all(s is None for s in subjects) else subjects
        )
        self.num_classes = num_bins
        self.bin_width = bin_width
        self.target = target
        self.size = size
        self.grayscale = grayscale
        self.transform = transform

    def _scan(
        self, root: Path, layout: str, pattern: str | None, skip: bool
    ) -> list[tuple[Path, int, str | None]]:
        if pattern is not None:
            if not isinstance(pattern, str):
                raise TypeError(f"'pattern' must be a str, got {type(pattern).__name__}")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'pattern' is not a regular expression: {exc}") from None
            if "age" not in compiled.groupindex:
                raise ValueError(f"'pattern' needs a named group 'age', got {pattern!r}")
            self.layout = "pattern"
            files = sorted(p for p in root.iterdir() if _is_image(p))
            items, self.skipped = _scan_names(files, compiled, skip)
            return items
        if layout not in AGE_LAYOUTS:
            raise ValueError(f"'layout' must be one of {AGE_LAYOUTS}, got {layout!r}")
        if layout in ("auto", "folder"):
            by_folder = _scan_folders(root)
            if by_folder is not None:
                self.layout = "folder"
                return by_folder
            if layout == "folder":
                raise ValueError(
                    f"layout 'folder' needs integer-named age folders in {str(root)!r}"
                )
        files = sorted(p for p in root.iterdir() if _is_image(p))
        candidates = list(_NAME_PATTERNS) if layout == "auto" else [layout]
        if skip:
            scans = {name: _scan_names(files, _NAME_PATTERNS[name], True) for name in candidates}
            best = max(candidates, key=lambda name: len(scans[name][0]))
            if scans[best][0] or layout != "auto":
                self.layout = best
                items, self.skipped = scans[best]
                return items
        for name in candidates:
            try:
                items, _ = _scan_names(files, _NAME_PATTERNS[name], False)
            except ValueError as exc:
                if layout != "auto":
                    raise ValueError(f"layout {name!r}: {exc}") from None
                continue
            self.layout = name
            return items
        first = next(
            (p.name for p in files if not any(r.match(p.name) for r in _NAME_PATTERNS.values())),
            "?",
        )
        raise ValueError(
            f"layout 'auto': no known layout fits {str(root)!r} ({first!r} matches neither "
            f"{' nor '.join(_NAME_PATTERNS)}); pass 'layout' or 'pattern'"
        )

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.paths)

    def _load(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[index]) as opened:
            img = opened.convert("L" if self.grayscale else "RGB")
            if self.size is not None and img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return img

    def _uint8(self, index: int) -> Tensor:
        array = np.asarray(self._load(index), dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def __getitem__(self, index: int) -> tuple[Any, Tensor]:
        """Return ``(image, label)``: the bin (int64) or the age (float32), per ``target``.

        Raises:
            TypeError: If ``index`` is not an integer (a bool is not one).
            IndexError: If ``index`` is out of range.

        """
        try:
            if isinstance(index, (bool, np.bool_)):
                raise TypeError
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"'index' must be an int, got {type(index).__name__}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image = self.transform(self._load(index)) if self.transform else self._uint8(index) / 255.0
        label = self.targets[index] if self.target == "bin" else self.ages[index].float()
        return image, label

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Load every image: ``(uint8 images [n, C, H, W], bin labels [n])``.

        Raises:
            ValueError: If the images differ in size and ``size`` was not given.

        """
        images = [self._uint8(i) for i in range(len(self))]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"images differ in size {sorted(shapes)[:3]}; pass 'size'")
        return torch.stack(images), self.targets.clone()

    def class_weights(self) -> Tensor:
        """Inverse-frequency class weights for cross-entropy, ``n / (K_present * count_k)``.

        Bins without images get weight 0; the weighted mean over images is 1.
        """
        counts = torch.bincount(self.targets, minlength=self.num_classes).double()
        present = int((counts > 0).sum())
        weights = torch.zeros(self.num_classes, dtype=torch.float64)
        weights[counts > 0] = len(self) / (present * counts[counts > 0])
        return weights.float()

    def subject_forget_split(
        self,
        fraction: float | np.floating,
        seed: int | np.integer = 0,
    ) -> tuple[Tensor, Tensor]:
        """Split whole subjects into forget and retain sets (no person on both sides).

        Subjects are shuffled with ``seed`` and taken whole until the forget set holds at
        least ``round(fraction * n)`` images (at least one subject).

        Args:
            fraction: Target share of images to forget, in ``(0, 1)``.
            seed: Seed of the subject shuffle.

        Returns:
            ``(forget_idx, retain_idx)``, sorted int64 tensors partitioning ``0..n-1``.

        Raises:
            ValueError: If the file names carry no subject, ``fraction`` is outside
                ``(0, 1)``, ``seed`` is outside ``0..2**64-1``, or the split leaves the
                retain set empty.

        """
        return subject_forget_split(self.subjects, fraction, seed)


def subject_forget_split(
    subjects: Sequence[str | None] | None,
    fraction: float | np.floating,
    seed: int | np.integer = 0,
) -> tuple[Tensor, Tensor]:
    """Forget whole subjects: see :meth:`AgeImageFolder.subject_forget_split`.

    Raises:
        TypeError: If ``subjects`` is not a sequence of names (a ``str`` is not one),
            ``fraction`` is not a number or ``seed`` is not an int (a bool is neither).
        ValueError: If ``subjects`` is None (the file names carry no subject), empty or
            holds None (a name without a subject), ``fraction`` is outside ``(0, 1)``,
            ``seed`` is outside ``0..2**64-1``, or the split leaves the retain set empty.

    """
    if subjects is None:
        raise ValueError("'subjects' is None: the file names carry no subject (use 'agedb')")
    if isinstance(subjects, (str, bytes)) or not isinstance(subjects, Sequence):
        raise TypeError(f"'subjects' must be a sequence of names, got {type(subjects).__name__}")
    if len(subjects) == 0:
        raise ValueError("'subjects' is empty: there is nothing to forget from")
    missing = next((i for i, s in enumerate(subjects) if s is None), None)
    if missing is not None:  # sorted() of names and None raised a bare TypeError
        raise ValueError(f"'subjects'[{missing}] is None: that image's name carries no "
                         "subject, so it cannot be kept on one side of the split")
    fraction = check_fraction("fraction", fraction)
    seed = check_seed("seed", seed)  # a negative seed would alias a large one
    named = cast("Sequence[str]", subjects)  # no None left
    n = len(named)
    names = sorted(set(named))
    of = {s: i for i, s in enumerate(names)}
    codes = torch.tensor([of[s] for s in named], dtype=torch.int64)
    counts = torch.bincount(codes, minlength=len(names))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
    goal = max(1, round(fraction * n))
    taken = int(torch.searchsorted(torch.cumsum(counts[order], 0), goal)) + 1
    mask = torch.isin(codes, order[:taken])
    forget, retain = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
    if retain.numel() == 0:
        raise ValueError(f"'fraction' {fraction} takes every subject: the retain set is empty")
    return forget, retain
