"""Image data sets read from a local folder through torchvision, and feature files.

These machines have no network, so nothing is ever downloaded: every loader reads the files
torchvision's own ``download=True`` would have left in ``data_dir`` and raises a
:class:`FileNotFoundError` that names ``data_dir`` and lists the expected files otherwise.

Expected layout of ``data_dir`` (the names torchvision 0.2x uses):

==================  ==================================================================
``mnist``           ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (unpacked)
``fashion-mnist``   ``FashionMNIST/raw/`` with the same four file names
``cifar10``         ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
``cifar100``        ``cifar-100-python/{train,test,meta}``
``svhn``            ``{train,test,extra}_32x32.mat`` in ``data_dir`` (or ``data_dir/SVHN``)
==================  ==================================================================

Differences from plain torchvision, and why:

- CIFAR batches are Python pickles. They are read with an unpickler that only accepts
  numpy arrays, lists, dicts and strings, so a tampered file cannot run code.
- CIFAR and SVHN files are not MD5-checked unless ``verify=True`` (torchvision always
  checks; the check re-hashes ~180 MB per load and rejects the tiny files tests write).
- Every file is checked whole instead: IDX magic numbers and lengths, 28x28 MNIST images,
  as many labels as images, labels in range (0..9, 0..99, SVHN 0..10), uint8-range pixels,
  SVHN's ``[32, 32, 3, n]`` layout. A defective file raises a ValueError naming it
  (torchvision asserts, raises KeyError/TypeError, or loads misaligned or wrapped data).

Feature files (:func:`save_features` / :func:`load_features`) hold features extracted by a
trained network, one ``X_<split>``/``y_<split>`` tensor pair per split, in safetensors (no
code runs on load). :func:`load_features_or_pixels` finds them by the reference's naming
scheme ``<data_dir>/<extractor>_<dataset>_extracted.safetensors`` (``.pt``/``.pth`` files
holding a dict of tensors, as the reference code wrote them, load with ``weights_only``).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pickle
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from .._atomic_files import permissions_for_replacement
from .._equality import dataclass_eq
from .._json_data import json_ready
from .._numbers import check_flag, is_integer
from .._paths import check_output_file
from .._repr import fields_repr

__all__ = [
    "VISION_DATASETS",
    "FeatureSplit",
    "canonical_dataset_name",
    "extracted_features_path",
    "load_features",
    "load_features_or_pixels",
    "load_vision_dataset",
    "save_features",
    "vision_tensors",
]

#: Canonical names of the supported image data sets.
VISION_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")

# name with "-"/"_" removed and lower-cased -> canonical name
_ALIASES = {
    "mnist": "mnist",
    "fashionmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn",
}
# spelling of the reference code (file names like dp_..._SVHN_extracted.pth)
_REFERENCE_SPELLING = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
}
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SVHN_SUBDIRS = ("", "SVHN", "svhn")
_FEATURE_SUFFIXES = (".safetensors", ".pt", ".pth")
_FORMAT_TAG = "fastunlearn-features"
_FORMAT_VERSION = "1"


# ---------------------------------------------------------------------------------------
# names and paths
# ---------------------------------------------------------------------------------------


def canonical_dataset_name(name: str) -> str:
    """Return the canonical name (one of :data:`VISION_DATASETS`) of a data set.

    Case, ``-`` and ``_`` are ignored: ``"CIFAR-10"``, ``"FashionMNIST"`` and ``"svhn"``
    are accepted.

    Raises:
        ValueError: If ``name`` is not a supported data set.
        TypeError: If ``name`` is not a string.

    """
    if not isinstance(name, str):
        raise TypeError(f"'name' must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise ValueError(f"'name' must be one of {VISION_DATASETS}, got {name!r}")
    return _ALIASES[key]


def _check_data_dir(data_dir: str | os.PathLike) -> Path:
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"'data_dir' must be a path, got {type(data_dir).__name__}")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"'data_dir' {str(root)!r} is not a directory")
    return root


def _check_simple_name(value: object, arg: str) -> str:
    """Check a file-name component: non-empty, no path separators (stays inside data_dir)."""
    if not isinstance(value, str):
        raise TypeError(f"'{arg}' must be a str, got {type(value).__name__}")
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"'{arg}' must be a plain name without path separators, got {value!r}")
    return value


def extracted_features_path(data_dir: str | os.PathLike, extractor: str, dataset: str) -> Path:
    """Return the file an extractor writes its features to (the loaders look there first).

    ``<data_dir>/<extractor>_<dataset>_extracted.safetensors``, the reference code's naming
    scheme with the safetensors suffix; ``dataset`` is written in its canonical spelling when
    it is a known image data set (``svhn``), as given otherwise (``lsun``).

    Raises:
        ValueError: If ``extractor`` or ``dataset`` contains a path separator or is empty.
        TypeError: If ``data_dir`` is not a path or a name is not a str.

    """
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"'data_dir' must be a path, got {type(data_dir).__name__}")
    _check_simple_name(extractor, "extractor")
    _check_simple_name(dataset, "dataset")
    try:
        name = canonical_dataset_name(dataset)
    except ValueError:
        name = dataset
    return Path(data_dir) / f"{extractor}_{name}_extracted.safetensors"


def _feature_file_candidates(data_dir: Path, extractor: str, dataset: str) -> list[Path]:
    names = [dataset]
    try:
        canonical = canonical_dataset_name(dataset)
        names += [canonical, _REFERENCE_SPELLING[canonical]]
    except ValueError:
        pass
    names = list(dict.fromkeys(names))
    return [
        data_dir / f"{extractor}_{name}_extracted{suffix}"
        for suffix in _FEATURE_SUFFIXES
        for name in names
    ]


# ---------------------------------------------------------------------------------------
# restricted unpickling for the CIFAR batches
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _numpy_multiarray() -> Any:
    try:  # numpy >= 2
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


class RefusedPickleError(pickle.UnpicklingError, ValueError):
    """A data file's pickle names a global other than the few a numpy array needs.

    Subclasses both :class:`pickle.UnpicklingError` and :class:`ValueError`, so callers that
    catch either see it; nothing named in the file has been called when it is raised.
    """


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs.

    Anything else (``os.system``, ``builtins.eval``, ...) raises, so loading a data file
    can never execute code. ``_codecs.encode`` is what Python 3 pickles use for bytes at
    protocol 2; it only converts text to bytes. ``numpy._core.numeric._frombuffer`` is what
    numpy writes at protocol 5 (``pickle.dump``'s default); it wraps ``np.frombuffer``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(_numpy_multiarray(), name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _frombuffer
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise RefusedPickleError(
            f"refusing to load {module}.{name}: a CIFAR batch file holds only numpy arrays"
        )


#: The memory orders ``ndarray.reshape`` takes.
_Order = Literal["A", "C", "F"]


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """Rebuild an array pickled at protocol 5 (numpy's own ``_frombuffer``, re-stated)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedPickleError(f"refusing a protocol-5 array of dtype {dtype!r}")
    # numpy pickles its own order here ("C" or "F"); reshape refuses any other value
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=cast(_Order, order))


def _load_array_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a CIFAR file with :class:`_ArrayOnlyUnpickler`.

    Raises:
        RefusedPickleError: If the file names any global a numpy array does not need
            (the message names the file).
        ValueError: If the file is not a readable pickle (empty, truncated, corrupt).

    """
    with open(path, "rb") as f:
        try:
            return _ArrayOnlyUnpickler(f, encoding="latin1").load()
        except RefusedPickleError as exc:
            raise RefusedPickleError(f"{str(path)!r}: {exc}") from None
        except Exception as exc:  # any parse failure of untrusted bytes
            raise ValueError(
                f"{str(path)!r} is not a readable pickle (empty, truncated or corrupt): "
                f"{type(exc).__name__}: {exc}"
            ) from exc


# ---------------------------------------------------------------------------------------
# checks shared by the readers: every defect is a ValueError that names the file
# ---------------------------------------------------------------------------------------


def _uint8_pixels(values: Any, path: str, what: str) -> np.ndarray:
    """Return ``values`` as a uint8 array; integers outside 0..255 or non-integers raise."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{path!r}: {what} is not an array of pixels: {exc}") from None
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: {what} has dtype {array.dtype}, expected uint8 pixels")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"{path!r}: {what} holds values outside 0..255 (min {array.min()}, "
            f"max {array.max()}), expected uint8 pixels"
        )
    return array.astype(np.uint8)


def _int_labels(values: Any, path: str, what: str, low: int, high: int) -> np.ndarray:
    """Return ``values`` as 1-D int64 labels in ``low..high``; anything else raises.

    Whole-valued floats are accepted (MATLAB stores numbers as doubles); fractions, NaN,
    strings, booleans and out-of-range labels are not.
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: {what} is not a list of labels: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{path!r}: {what} has shape {array.shape}, expected a flat list")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{path!r}: {what} holds labels that are not whole numbers")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: {what} has dtype {array.dtype}, expected integer labels")
    bad = array[(array < low) | (array > high)]
    if bad.size:
        raise ValueError(
            f"{path!r}: {what} holds label {bad[0].item()!r} outside {low}..{high}"
        )
    return array.astype(np.int64)


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an unpacked IDX file of unsigned bytes (MNIST's format), checked whole.

    The file is a 4-byte magic number ``00 00 08 <ndim>``, ``ndim`` big-endian uint32 sizes
    and exactly ``prod(sizes)`` bytes.
    """
    with open(path, "rb") as f:
        data = f.read()
    expected_magic = bytes((0, 0, 0x08, ndim))
    if data[:4] != expected_magic:
        hint = " (still gzip-compressed?)" if data[:2] == b"\x1f\x8b" else ""
        raise ValueError(
            f"{path!r} is not an IDX file of {ndim}-D unsigned bytes: magic number "
            f"0x{data[:4].hex() or '(empty)'}, expected 0x{expected_magic.hex()}{hint}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path!r} is truncated: its header needs {header} bytes, the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise ValueError(
            f"{path!r} holds {len(data) - header} data bytes, its header {list(shape)} "
            f"declares {size} ({'truncated' if len(data) - header < size else 'trailing bytes'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _checked_mnist(
    images: np.ndarray, labels: np.ndarray, image_path: str, label_path: str
) -> tuple[Tensor, Tensor]:
    """``(uint8 [n, 28, 28], int64 [n])`` tensors once shapes, counts and labels agree."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{image_path!r} holds images of shape {list(images.shape)}, expected [n, 28, 28]"
        )
    y = _int_labels(labels, label_path, "the label file", 0, 9)
    if y.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path!r} holds {y.shape[0]} labels but {image_path!r} holds "
            f"{images.shape[0]} images"
        )
    return torch.from_numpy(np.array(images, dtype=np.uint8)), torch.from_numpy(y)


def _read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images [n, 3, 32, 32], int64 labels [n] in 0..9)`` from an SVHN ``.mat``.

    The file holds ``X`` ``[32, 32, 3, n]`` uint8 and ``y`` ``[n, 1]`` with 10 for digit 0.
    """
    import scipy.io as sio

    try:
        mat = sio.loadmat(path)
    except Exception as exc:  # any parse failure of the file's bytes
        raise ValueError(
            f"{path!r} is not a readable MATLAB .mat file (empty, truncated, corrupt or "
            f"saved as v7.3/HDF5): {type(exc).__name__}: {exc}"
        ) from exc
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"{path!r} is not an SVHN file: it needs variables 'X' [32, 32, 3, n] and "
            f"'y' [n, 1], found {found}"
        )
    X = _uint8_pixels(mat["X"], path, "'X'")
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise ValueError(
            f"{path!r}: 'X' has shape {list(X.shape)}, expected [32, 32, 3, n] "
            "(height, width, channel, image)"
        )
    y_raw = np.asarray(mat["y"])
    if sum(size != 1 for size in y_raw.shape) > 1:  # [n, 1] or [1, n]; reshape(-1) took a grid
        raise ValueError(f"{path!r}: 'y' has shape {list(y_raw.shape)}, expected a column "
                         "[n, 1] (or row [1, n]) of labels")
    y = _int_labels(y_raw.reshape(-1), path, "'y'", 0, 10)
    if y.shape[0] != X.shape[3]:
        raise ValueError(f"{path!r}: 'y' holds {y.shape[0]} labels for {X.shape[3]} images")
    y[y == 10] = 0
    return np.transpose(X, (3, 2, 0, 1)), y


# ---------------------------------------------------------------------------------------
# torchvision data set classes with local-only checks (built lazily: importing torchvision
# costs seconds and is not needed for the embedded digits)
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _local_classes() -> dict[str, type[Any]]:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity
    from torchvision.datasets.vision import VisionDataset

    class _CheckedMnistMixin:
        """MNIST reader: torchvision's layout and item access, every file checked whole.

        torchvision asserts on a bad magic number and accepts label files of another length
        or with labels above 9; here each defect is a ValueError naming the file.
        """

        root: str
        train: bool
        training_file: str
        test_file: str
        _folder: str

        @property
        def raw_folder(self) -> str:
            return os.path.join(self.root, self._folder, "raw")

        @property
        def processed_folder(self) -> str:
            return os.path.join(self.root, self._folder, "processed")

        def _load_data(self) -> tuple[Tensor, Tensor]:
            prefix = "train" if self.train else "t10k"
            image_path = os.path.join(self.raw_folder, f"{prefix}-images-idx3-ubyte")
            label_path = os.path.join(self.raw_folder, f"{prefix}-labels-idx1-ubyte")
            images, labels = _read_idx(image_path, 3), _read_idx(label_path, 1)
            return _checked_mnist(images, labels, image_path, label_path)

        def _load_legacy_data(self) -> tuple[Tensor, Tensor]:
            name = self.training_file if self.train else self.test_file
            path = os.path.join(self.processed_folder, name)
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # corrupt file, or one holding more than tensors
                raise ValueError(
                    f"{path!r} is not a readable torch file of (images, labels) tensors: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from None
            if not (
                isinstance(raw, (tuple, list))
                and len(raw) == 2
                and all(isinstance(t, Tensor) for t in raw)
            ):
                raise ValueError(f"{path!r} must hold a pair (images, labels) of tensors")
            images, labels = raw
            if images.dtype != torch.uint8:
                raise ValueError(f"{path!r}: images have dtype {images.dtype}, expected uint8")
            return _checked_mnist(images.numpy(), labels.numpy(), path, path)

    class LocalMNIST(_CheckedMnistMixin, tvd.MNIST):
        _folder = "MNIST"

    class LocalFashionMNIST(_CheckedMnistMixin, tvd.FashionMNIST):
        _folder = "FashionMNIST"

    class _SafeCifarMixin:
        """CIFAR reader: torchvision's layout and item access, restricted unpickling.

        Every batch must be a dict with uint8-range ``data`` ``[n, 3072]`` and ``n`` labels
        under the data set's own key, in range; the meta file must name every class.
        """

        base_folder: str
        train_list: list
        test_list: list
        meta: dict
        _label_key: str
        _num_classes: int

        def __init__(
            self, root: str, train: bool, transform: Callable | None, verify: bool
        ) -> None:
            VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            folder = os.path.join(root, self.base_folder)
            files = self.train_list if train else self.test_list
            key, k = self._label_key, self._num_classes
            batches = []
            targets: list[int] = []
            for file_name, md5 in files:
                path = os.path.join(folder, file_name)
                if verify and not check_integrity(path, md5):
                    raise ValueError(f"{path!r} failed its MD5 check (verify=True)")
                entry = _load_array_pickle(path)
                if not isinstance(entry, dict) or "data" not in entry or key not in entry:
                    got = (
                        f"a dict with keys {', '.join(sorted(map(repr, entry))[:6])}"
                        if isinstance(entry, dict)
                        else f"a {type(entry).__name__}"
                    )
                    raise ValueError(
                        f"{path!r} is not a CIFAR batch (a dict with 'data' and {key!r}): "
                        f"got {got}"
                    )
                rows = _uint8_pixels(entry["data"], path, "'data'")
                labels = _int_labels(entry[key], path, repr(key), 0, k - 1)
                if rows.ndim != 2 or rows.shape != (len(labels), 3072):
                    raise ValueError(
                        f"{path!r} is not a CIFAR batch: 'data' has shape {rows.shape} for "
                        f"{len(labels)} labels (expected [{len(labels)}, 3072])"
                    )
                batches.append(rows)
                targets.extend(labels.tolist())
            # stored as rows of 3072 bytes, channel-major; torchvision keeps HWC
            self.data = np.vstack(batches).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            self.targets = targets
            meta_path = os.path.join(folder, self.meta["filename"])
            meta = _load_array_pickle(meta_path)
            names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
            if isinstance(names, np.ndarray):
                names = names.tolist()
            if not isinstance(names, (list, tuple)) or len(names) != k:
                raise ValueError(
                    f"{meta_path!r} is not CIFAR's meta file: expected a dict whose "
                    f"{self.meta['key']!r} lists {k} class names"
                )
            self.classes = list(names)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    class LocalCIFAR10(_SafeCifarMixin, tvd.CIFAR10):
        _label_key, _num_classes = "labels", 10

    class LocalCIFAR100(_SafeCifarMixin, tvd.CIFAR100):
        _label_key, _num_classes = "fine_labels", 100

    class LocalSVHN(tvd.SVHN):
        """SVHN with each ``.mat`` checked (shapes, dtype, labels); MD5 only when asked."""

        def __init__(self, root: str, split: str, transform: Callable | None, verify: bool) -> None:
            VisionDataset.__init__(self, root, transform=transform)
            self.split = split
            self.url, self.filename, self.file_md5 = self.split_list[split]
            path = os.path.join(root, self.filename)
            if verify and not check_integrity(path, self.file_md5):
                raise ValueError(f"{path!r} failed its MD5 check (verify=True)")
            self.data, self.labels = _read_svhn_mat(path)

    return {
        "mnist": LocalMNIST,
        "fashion-mnist": LocalFashionMNIST,
        "cifar10": LocalCIFAR10,
        "cifar100": LocalCIFAR100,
        "svhn": LocalSVHN,
    }


def _missing(root: Path, relative: list[str], name: str, hint: str) -> None:
    absent = [r for r in relative if not (root / r).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{name} not found in data_dir {str(root)!r}: missing {', '.join(absent)} "
            f"(expected {', '.join(relative)}; {hint}). Nothing is downloaded."
        )


def _svhn_root(root: Path, splits: list[str]) -> Path:
    files = [f"{s}_32x32.mat" for s in splits]
    for sub in _SVHN_SUBDIRS:
        if all((root / sub / f).is_file() for f in files):
            return root / sub
    _missing(root, files, "SVHN", "also looked in data_dir/SVHN; from ufldl.stanford.edu")
    raise AssertionError("unreachable")  # pragma: no cover


def load_vision_dataset(
    name: str,
    data_dir: str | os.PathLike,
    *,
    train: bool = True,
    transform: Callable | None = None,
    svhn_extra: bool = False,
    verify: bool = False,
) -> torch.utils.data.Dataset:
    """Load an image data set from ``data_dir`` through torchvision (never downloads).

    Args:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"svhn"``
            (case, ``-`` and ``_`` ignored).
        data_dir: Folder laid out as torchvision's ``download=True`` leaves it (see the
            module docstring for the file names).
        train: Training split if true, test split otherwise.
        transform: Applied to each PIL image, e.g. ``torchvision.transforms.ToTensor()``;
            ``None`` returns PIL images (torchvision's behaviour).
        svhn_extra: SVHN only: with ``train=True``, append the 531,131-image ``extra``
            split (the reference DP extractor trains on train + extra).
        verify: Check the published MD5 of CIFAR/SVHN files (slow on the full files).

    Returns:
        A map-style dataset yielding ``(image, int label)``; labels are ``0..9`` (SVHN's
        digit 0, stored as 10, becomes 0) or ``0..99`` for CIFAR-100.

    Raises:
        FileNotFoundError: If ``data_dir`` or an expected file is missing; the message names
            ``data_dir`` and the expected files.
        ValueError: If ``name`` is unknown, ``svhn_extra`` is set for another data set, a
            file fails its MD5 check with ``verify=True``, or a file is unreadable, truncated
            or holds the wrong shapes, dtypes or labels (the message names the file; a CIFAR
            pickle naming anything but numpy arrays raises :class:`RefusedPickleError`).
        TypeError: If ``name`` is not a str, ``data_dir`` not a path, ``train``,
            ``svhn_extra`` or ``verify`` not a bool, or ``transform`` not callable.

    """
    canonical = canonical_dataset_name(name)
    for value, arg in ((train, "train"), (svhn_extra, "svhn_extra"), (verify, "verify")):
        check_flag(arg, value)
    train, svhn_extra, verify = bool(train), bool(svhn_extra), bool(verify)
    if transform is not None and not callable(transform):
        raise TypeError(f"'transform' must be callable or None, got {type(transform).__name__}")
    root = _check_data_dir(data_dir)
    if svhn_extra and canonical != "svhn":
        raise ValueError(f"'svhn_extra' applies to svhn only, got name={name!r}")
    classes = _local_classes()
    if canonical in ("mnist", "fashion-mnist"):
        folder = "MNIST" if canonical == "mnist" else "FashionMNIST"
        legacy = [f"{folder}/processed/training.pt", f"{folder}/processed/test.pt"]
        if not all((root / r).is_file() for r in legacy):
            _missing(
                root,
                [f"{folder}/raw/{f}" for f in _MNIST_FILES],
                canonical,
                "the four files unpacked from their .gz archives",
            )
        return classes[canonical](str(root), train=train, transform=transform, download=False)
    if canonical in ("cifar10", "cifar100"):
        cls = classes[canonical]
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        _missing(
            root,
            [f"{cls.base_folder}/{f}" for f in names],
            canonical,
            f"the unpacked python version of the archive {cls.filename}",
        )
        return cls(str(root), train, transform, verify)
    splits = ["train", "extra"] if (train and svhn_extra) else ["train" if train else "test"]
    svhn_root = _svhn_root(root, splits)
    parts = [classes["svhn"](str(svhn_root), split, transform, verify) for split in splits]
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def _as_tensors(ds: Any) -> tuple[Tensor, Tensor]:
    """``(uint8 images [n, C, H, W], int64 labels [n])`` from a loaded data set's arrays."""
    if isinstance(ds, torch.utils.data.ConcatDataset):
        parts = [_as_tensors(d) for d in ds.datasets]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if hasattr(ds, "labels"):  # SVHN: data already [n, 3, 32, 32]
        images = torch.from_numpy(np.ascontiguousarray(ds.data))
        return images, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    if isinstance(ds.data, np.ndarray):  # CIFAR: [n, 32, 32, 3]
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
    images = ds.data.unsqueeze(1).contiguous()  # MNIST: uint8 tensor [n, 28, 28]
    return images, torch.as_tensor(ds.targets, dtype=torch.int64)


def vision_tensors(
    name: str,
    data_dir: str | os.PathLike,
    *,
    train: bool = True,
    svhn_extra: bool = False,
    verify: bool = False,
) -> tuple[Tensor, Tensor]:
    """Load a whole split as tensors, without per-image PIL conversion (fast training).

    Args:
        name: As in :func:`load_vision_dataset`.
        data_dir: As in :func:`load_vision_dataset`.
        train: Training split if true, test split otherwise.
        svhn_extra: As in :func:`load_vision_dataset`.
        verify: As in :func:`load_vision_dataset`.

    Returns:
        ``(images, labels)``: uint8 images ``[n, C, H, W]`` (C = 1 for the MNISTs, 3
        otherwise; divide by 255 for ``ToTensor`` values) and int64 labels ``[n]``.

    Raises:
        FileNotFoundError: As in :func:`load_vision_dataset`.
        ValueError: As in :func:`load_vision_dataset`.
        TypeError: As in :func:`load_vision_dataset` (``name``, ``data_dir`` or a flag of
            the wrong type).

    """
    ds = load_vision_dataset(name, data_dir, train=train, svhn_extra=svhn_extra, verify=verify)
    return _as_tensors(ds)


# ---------------------------------------------------------------------------------------
# feature files
# ---------------------------------------------------------------------------------------


def _as_split_mapping(value: Tensor | Mapping[str, Tensor], arg: str) -> dict[str, Tensor]:
    if isinstance(value, Tensor):
        return {"train": value}
    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"'{arg}' must be a Tensor or a non-empty mapping split -> Tensor")
    out = {}
    for split, tensor in value.items():
        if not isinstance(split, str) or not split.isidentifier():
            raise ValueError(f"'{arg}' split names must be identifiers, got {split!r}")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"'{arg}[{split!r}]' must be a Tensor, got {type(tensor).__name__}")
        out[split] = tensor
    return out


def save_features(
    path: str | os.PathLike,
    features: Tensor | Mapping[str, Tensor],
    labels: Tensor | Mapping[str, Tensor],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write extracted features to a safetensors file, atomically.

    Each split ``s`` is stored as tensors ``X_<s>`` (features ``[n, f]``) and ``y_<s>``
    (int64 labels ``[n]``), the key names of the reference code's ``.pth`` files; ``meta``
    is stored as JSON in the safetensors header. The file is written to a temporary name in
    the same folder, flushed and fsynced, then renamed over ``path``, so a crash leaves
    either the old file or the new one.

    Args:
        path: Destination (``.safetensors`` recommended; see
            :func:`extracted_features_path` for the name the loaders look for).
        features: A ``[n, f]`` floating tensor (stored as split ``"train"``) or a mapping
            split name -> tensor, e.g. ``{"train": X_train, "test": X_test}``. The dtype is
            kept (float32 halves the file; the loaders return float64).
        labels: Same structure as ``features``; ``[n]`` integer labels per split.
        meta: JSON-serialisable description (extractor, epsilon, delta, ...).

    Returns:
        The path written.

    Raises:
        ValueError: If the splits of ``features`` and ``labels`` differ, a feature tensor
            is not 2-D floating point or not finite, labels are not 1-D integers >= 0 within
            the int64 range, row counts differ, or ``meta`` is not JSON-serialisable
            (a non-finite number in it is written as ``"nan"``, ``"inf"`` or ``"-inf"``).
        TypeError: If ``features``/``labels`` are not tensors or mappings of tensors, or
            ``path`` is not a path, or ``meta`` not a mapping.
        ValueError: If ``path`` is empty, an existing folder or ends in ``.pt``/``.pth``
            (names :func:`load_features` reads as torch pickles), its parent is not a
            folder, or a label is negative or beyond the int64 range.
        FileNotFoundError: If the folder of ``path`` does not exist.

    """
    from safetensors.torch import save_file

    path = check_output_file(path)
    if path.suffix in (".pt", ".pth"):  # load_features reads those as torch pickles
        raise ValueError(
            f"'path' {str(path)!r} ends in {path.suffix!r}, which load_features reads as a "
            "torch pickle: save_features writes safetensors, use a '.safetensors' name"
        )
    feats = _as_split_mapping(features, "features")
    labs = _as_split_mapping(labels, "labels")
    if set(feats) != set(labs):
        raise ValueError(
            f"'labels' splits {sorted(labs)} differ from 'features' splits {sorted(feats)}"
        )
    tensors: dict[str, Tensor] = {}
    for split, X in feats.items():
        y = labs[split]
        if X.dim() != 2 or not X.is_floating_point():
            raise ValueError(
                f"'features[{split!r}]' must be a 2-D floating tensor, got {tuple(X.shape)} "
                f"{X.dtype}"
            )
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"'features[{split!r}]' holds NaN or inf")
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(
                f"'labels[{split!r}]' must be a 1-D integer tensor, got {tuple(y.shape)} {y.dtype}"
            )
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                f"'labels[{split!r}]' has {y.shape[0]} rows, 'features[{split!r}]' {X.shape[0]}"
            )
        y64 = y.detach().cpu().to(torch.int64)  # uint64 >= 2**63 wraps to negative here
        low = int(y64.min()) if y64.numel() else 0
        if low < 0 and y.dtype == torch.uint64:
            raise ValueError(f"'labels[{split!r}]' holds {low + 2**64}, beyond the int64 range")
        if low < 0:
            raise ValueError(f"'labels[{split!r}]' holds label {low}; labels must be class "
                             "numbers >= 0")
        tensors[f"X_{split}"] = X.detach().cpu().contiguous()
        tensors[f"y_{split}"] = y64.contiguous()
    # safetensors refuses tensors sharing memory (one tensor given for two splits)
    seen: set[int] = set()
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[key] = t.clone()
        seen.add(ptr)
    if meta is not None and not isinstance(meta, Mapping):  # dict() took a list of pairs
        raise TypeError(f"'meta' must be a mapping or None, got {type(meta).__name__}")
    try:  # non-finite numbers as "nan" / "inf" strings, as every JSON the library writes
        meta_json = json.dumps(json_ready(dict(meta or {})), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'meta' must be JSON-serialisable: {exc}") from exc

    header = {"format": _FORMAT_TAG, "version": _FORMAT_VERSION, "meta": meta_json}
    target = Path(os.path.realpath(path)) if path.is_symlink() else path  # keep a link
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp and save_file create it private (0600): the mode of the file it replaces
        permissions_for_replacement(tmp, target)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class _ForeignFeatureFile(Exception):
    """A safetensors file that was read but is not a feature file this version reads."""


def load_features(
    path: str | os.PathLike,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """Read a feature file written by :func:`save_features` (or a reference ``.pth``).

    ``.safetensors`` files are parsed without executing anything. ``.pt``/``.pth`` files
    (the reference's ``{"X_train", "y_train", "X_test", "y_test"}`` dicts) are read with
    ``torch.load(weights_only=True)``.

    Args:
        path: The feature file.

    Returns:
        ``(features, labels, meta)``: dicts split name -> tensor (features as stored,
        labels int64) and the stored metadata (empty for ``.pt`` files).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        TypeError: If ``path`` is not a str or ``os.PathLike``.
        ValueError: If the file cannot be read (truncated, corrupt, objects other than
            tensors, another version of this format, a ``meta`` header that is not a JSON
            object), holds no ``X_<split>``/``y_<split>`` pair or mismatched ones, a split
            with an empty name (``X_``), features that are not finite, or labels that are
            not whole numbers.

    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"'path' must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file 'path' {str(path)!r} not found")
    meta: dict[str, Any] = {}
    try:
        if path.suffix in (".pt", ".pth"):
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                raw = {k: f.get_tensor(k) for k in f.keys()}
            if header.get("format") == _FORMAT_TAG and header.get("version") != _FORMAT_VERSION:
                raise _ForeignFeatureFile(
                    f"it is a {_FORMAT_TAG} file of version {header.get('version')!r}; this "
                    f"fastunlearn reads version {_FORMAT_VERSION} only (a newer one wrote it?)"
                )
            if "meta" in header:
                meta = json.loads(header["meta"])
                if not isinstance(meta, dict):
                    raise _ForeignFeatureFile(
                        f"its 'meta' header holds a JSON {type(meta).__name__}, not an object"
                    )
    except _ForeignFeatureFile as exc:
        raise ValueError(f"{str(path)!r} is not a readable feature file: {exc}") from None
    except Exception as exc:  # truncated, corrupt, or objects weights_only refuses
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{str(path)!r} is not a readable feature file (truncated, corrupt, or holding "
            f"more than tensors): {type(exc).__name__}: {first_line}"
        ) from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{str(path)!r} must hold a dict of tensors, got {type(raw)}")
    tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    splits = sorted(k[2:] for k in tensors if k.startswith("X_"))
    if not splits:
        raise ValueError(f"{str(path)!r} holds no 'X_<split>' feature tensors")
    if "" in splits:
        raise ValueError(f"{str(path)!r} holds tensor 'X_' with an empty split name "
                         "(expected 'X_<split>')")
    features, labels = {}, {}
    for split in splits:
        if f"y_{split}" not in tensors:
            raise ValueError(f"{str(path)!r} has 'X_{split}' but no 'y_{split}'")
        X, y = tensors[f"X_{split}"], tensors[f"y_{split}"]
        if sum(size != 1 for size in y.shape) > 1:  # [n], [n, 1] or [1, n]: one label a row
            raise ValueError(f"{str(path)!r}: 'y_{split}' has shape {tuple(y.shape)}, "
                             "expected one label per row ([n] or [n, 1])")
        y = y.reshape(-1)
        if X.dim() != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"{str(path)!r}: 'X_{split}' {tuple(X.shape)} does not match 'y_{split}' "
                f"{tuple(y.shape)}"
            )
        if X.is_complex() or X.dtype == torch.bool or (
            X.is_floating_point() and not bool(torch.isfinite(X).all())
        ):
            raise ValueError(f"{str(path)!r}: 'X_{split}' must hold finite real numbers")
        if y.is_complex() or y.dtype == torch.bool or (
            y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())
                                                & (y.abs() < 2.0**63)).all())
        ):
            raise ValueError(f"{str(path)!r}: 'y_{split}' must hold whole-number labels")
        features[split] = X
        labels[split] = y.to(torch.int64)  # the reference stored float labels
    return features, labels, meta


# ---------------------------------------------------------------------------------------
# feature matrices for the certified linear model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class FeatureSplit:
    """Float64 feature matrices and labels of a train/test split.

    Attributes:
        X_train: Features ``[n_train, d]`` (float64).
        y_train: Labels ``[n_train]`` (int64).
        X_test: Features ``[n_test, d]`` (float64).
        y_test: Labels ``[n_test]`` (int64).
        classes: Original class of each label: ``classes[label] == original``. For a binary
            task ``binary=(pos, neg)`` this is ``(neg, pos)``: label 1 is the positive class.
        source: Where the features came from (``"pixels"`` or the feature file's path).
        meta: The feature file's metadata (empty for pixels).

    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]
    source: str = "pixels"
    meta: Mapping[str, Any] | None = None

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    @property
    def n_features(self) -> int:
        """Feature dimension ``d``."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of labels."""
        return len(self.classes)


def _check_binary(binary: object) -> tuple[int, int] | None:
    if binary is None:
        return None
    if not isinstance(binary, (tuple, list)) or len(binary) != 2:
        raise ValueError(f"'binary' must be a pair of classes like (3, 8), got {binary!r}")
    for c in binary:
        if not is_integer(c) or not 0 <= c < 2**63:
            raise ValueError(f"'binary' must hold two non-negative int classes, got {binary!r}")
    if binary[0] == binary[1]:
        raise ValueError(f"'binary' classes must differ, got {binary!r}")
    return int(binary[0]), int(binary[1])


def _select(
    X: Tensor, y: Tensor, pair: tuple[int, int] | None, split: str
) -> tuple[Tensor, Tensor]:
    if pair is None:
        return X, y
    pos, neg = pair
    keep = (y == pos) | (y == neg)
    for c in pair:  # a model needs both classes to train; a test part may lack one
        if split == "train" and not bool((y == c).any()):
            raise ValueError(f"'binary' class {c} has no training examples")
    return X[keep], (y[keep] == pos).to(torch.int64)


def _same_dataset(a: str, b: str) -> bool:
    """Whether two data set names mean the same one (``"SVHN"`` and ``"svhn"`` do)."""
    try:
        return canonical_dataset_name(a) == canonical_dataset_name(b)
    except ValueError:
        return a.lower() == b.lower()


def _check_feature_origin(
    path: Path, meta: Mapping[str, Any], extractor: str, dataset: str
) -> None:
    """Refuse a feature file whose metadata names another extractor or data set.

    ``fastunlearn extract`` records the extractor's ``name`` (the file-name prefix) and the
    ``dataset``; a file renamed or copied under another extractor's or data set's name
    would otherwise be used (and its privacy claims reported) as the one asked for.
    """
    name, stored = meta.get("name"), meta.get("dataset")
    if isinstance(name, str) and name != extractor:
        raise ValueError(
            f"{str(path)!r} holds features of extractor {name!r} (its metadata), not of "
            f"{extractor!r}: pass extractor={name!r}, or rename the file back"
        )
    if isinstance(stored, str) and not _same_dataset(stored, dataset):
        raise ValueError(
            f"{str(path)!r} holds features of data set {stored!r} (its metadata), not of "
            f"{dataset!r}"
        )


def load_features_or_pixels(
    dataset: str,
    data_dir: str | os.PathLike,
    extractor: str | None = None,
    binary: tuple[int, int] | None = None,
) -> FeatureSplit:
    """Feature matrices for certified removal: raw pixels or an extractor's saved features.

    With ``extractor`` ``None``/``"none"`` the images of ``dataset`` are loaded from
    ``data_dir`` and flattened as in the reference (``x / 255 - 0.5``, channel-major):
    784-d for the MNISTs, 3072-d otherwise. Otherwise the first existing file among
    ``<data_dir>/<extractor>_<dataset>_extracted{.safetensors,.pt,.pth}`` (``dataset`` as
    given, canonical, or in the reference's spelling such as ``SVHN``) is read with
    :func:`load_features`; it must hold ``train`` and ``test`` splits. Any ``dataset`` name
    is accepted with an extractor (e.g. features of LSUN computed elsewhere).

    Rows are not normalised here; the certified estimator L2-normalises them.

    Args:
        dataset: Data set name (see :data:`VISION_DATASETS` for pixels).
        data_dir: Folder with the images or the feature file.
        extractor: Feature-file prefix, or ``None``/``"none"`` for raw pixels.
        binary: ``None`` for all classes; ``(pos, neg)`` keeps only those two classes and
            labels ``pos -> 1`` (the positive class, ``+1`` in the estimator's encoding) and
            ``neg -> 0``, as the reference's MNIST ``(3, 8)`` task (3 -> +1, 8 -> -1).

    Returns:
        A :class:`FeatureSplit` with float64 features and int64 labels.

    Raises:
        FileNotFoundError: If ``data_dir``, the images or the feature file are missing (the
            message lists the expected paths).
        ValueError: If ``dataset`` is unknown (pixels), ``extractor`` is not a plain name,
            ``binary`` is malformed or names a class without training examples, or the feature
            file lacks a train or test split, has an empty one or a negative label, or its
            metadata names another extractor (``name``) or data set (``dataset``).
        TypeError: If ``data_dir`` is not a path, or ``dataset`` or ``extractor`` is not a
            str.

    """
    pair = _check_binary(binary)
    root = _check_data_dir(data_dir)
    if extractor is None or extractor == "none":
        canonical = canonical_dataset_name(dataset)
        parts = []
        for train in (True, False):
            images, y = vision_tensors(canonical, root, train=train)
            X = images.reshape(images.shape[0], -1).to(torch.float64).div_(255.0).sub_(0.5)
            parts.append((X, y))
        source = "pixels"
        meta: dict[str, Any] = {}
        n_classes = 100 if canonical == "cifar100" else 10
    else:
        _check_simple_name(dataset, "dataset")
        _check_simple_name(extractor, "extractor")
        candidates = _feature_file_candidates(root, extractor, dataset)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no features of extractor {extractor!r} for {dataset!r} in data_dir "
                f"{str(root)!r}; looked for {', '.join(p.name for p in candidates)}"
            )
        feats, labs, meta = load_features(found)
        _check_feature_origin(found, meta, extractor, dataset)
        for split in ("train", "test"):
            if split not in feats:
                raise ValueError(f"{str(found)!r} has no {split!r} split (X_{split}, y_{split})")
        parts = [(feats[s].to(torch.float64), labs[s]) for s in ("train", "test")]
        for split, (_, y) in zip(("train", "test"), parts, strict=True):
            if y.numel() == 0:
                raise ValueError(f"{str(found)!r}: its {split!r} split holds no rows")
            if int(y.min()) < 0:
                raise ValueError(f"{str(found)!r}: 'y_{split}' holds label {int(y.min())}; "
                                 "labels must be class numbers 0..K-1")
        source = str(found)
        n_classes = int(max(int(parts[0][1].max()), int(parts[1][1].max())) + 1)
    (X_train, y_train), (X_test, y_test) = (
        _select(X, y, pair, split) for (X, y), split in zip(parts, ("train", "test"), strict=True)
    )
    classes = (pair[1], pair[0]) if pair is not None else tuple(range(n_classes))
    return FeatureSplit(
        X_train=X_train.contiguous(),
        y_train=y_train.contiguous(),
        X_test=X_test.contiguous(),
        y_test=y_test.contiguous(),
        classes=classes,
        source=source,
        meta=meta,
    )
