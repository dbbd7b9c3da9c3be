"""Training of the original model and the retrained oracles, with an on-disk cache.

Weights are stored with :mod:`safetensors` (tensors only, never pickled code) under a
file name that is a SHA-256 of everything that determines them: the data (a digest of the
tensors), the training indices, the model name and arguments, the recipe, the seed and the
device type. A JSON sidecar keeps the training wall time, so a cached oracle still reports
the retraining time that the methods' time ratios are measured against.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from .._model_cache import cache_key as shared_cache_key
from .._model_cache import load_cached, store_cached, tensor_digest
from .._process_flags import GLOBAL_RNG_LOCK
from .._repr import fields_repr
from ..epoch_state import EpochState, cache_epoch_state, saved_epochs
from ..forget import _training
from .config import TrainSettings, oracle_recipe
from .data import build_harness_model, model_kwargs

__all__ = ["CACHE_VERSION", "TrainedModel", "cache_key", "train_model", "train_or_load"]

#: Bumped whenever the training code changes what a key produces (2: the methods' shared
#: training loop, :func:`fastunlearn.forget._training.train`).
CACHE_VERSION = 2


@dataclass(repr=False)
class TrainedModel:
    """A trained model and how it was obtained.

    Attributes:
        model: The network (eval mode).
        seconds: Wall time of its training (the original run's, when loaded from the cache).
        cached: Whether the weights came from the cache.
        key: The cache key.
        resumed_after_epoch: The finished epochs an interrupted run had kept in the cache
            and this training continued after (0: trained from its first epoch, or
            loaded). ``seconds`` then counts the kept epochs' time too.

    """

    model: nn.Module
    seconds: float
    cached: bool
    key: str
    resumed_after_epoch: int = 0

    __repr__ = fields_repr  # the network as its class and parameter count, not every layer


def train_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: TrainSettings,
    *,
    seed: int,
    progress: bool = False,
    desc: str = "train",
    epoch_checkpoint: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Train ``model`` in place: SGD (Nesterov), cosine schedule, mean cross-entropy.

    Runs the forgetting methods' own training loop
    (:func:`fastunlearn.forget._training.train`, as the ``retrain`` method does) with
    :func:`~fastunlearn.harness.config.oracle_recipe`, so the retraining time that methods
    are compared with is measured on the same loop. Returns ``model`` in eval mode.

    With ``epoch_checkpoint`` (a file path) the state after every finished epoch is kept
    there (:mod:`fastunlearn.epoch_state`: weights, optimizer, schedule, random states); a
    call with the same model, initial weights, data, settings and seed continues after the
    epochs the file holds and ends with the model an uninterrupted call gives (bit for bit
    on the same device and thread count). The file is removed when training finishes.

    Raises:
        TypeError: Naming ``x``, if ``model`` cannot run on it (e.g. float64 inputs into a
            float32 model, uint8 images), before any training; naming
            ``epoch_checkpoint`` if it is not a path.
        ValueError: If ``epoch_checkpoint`` is a folder, in a folder that does not exist,
            or holds the epochs of another training (other data, settings, seed or initial
            weights); the file is left as it is.

    """
    state = None
    if epoch_checkpoint is not None:
        run = {"kind": "harness", "data": tensor_digest(x), "labels": tensor_digest(y),
               "train": asdict(settings), "seed": int(seed),
               "device": _training.model_device(model).type}
        state = EpochState.for_run(epoch_checkpoint, run, model)
    return _train(model, x, y, settings, seed=seed, progress=progress, desc=desc,
                  epoch_state=state)


def _train(model: nn.Module, x: Tensor, y: Tensor, settings: TrainSettings, *, seed: int,
           progress: bool, desc: str, epoch_state: EpochState | None) -> nn.Module:
    config = _training.SGDConfig(seed=seed, progress=progress, **oracle_recipe(settings))
    dataset = TensorDataset(x, y)
    try:
        k = _training.num_outputs(model, dataset)
    except TypeError as exc:  # the inputs the model cannot run on (named for the caller)
        raise TypeError(f"'x': {exc}") from exc
    with _training.seeded(config.seed, _training.model_device(model)):  # a Python int
        _training.train_main_stage(model, dataset, config, k, desc, epoch_state=epoch_state)
    return model.eval()


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def cache_key(*, data_digest: str, indices: Tensor, model: str, model_args: dict[str, Any],
              settings: TrainSettings, seed: int, device: str = "cpu") -> str:
    """SHA-256 of everything that determines a trained model's weights.

    ``device`` is the device type trained on (``"cpu"``, ``"cuda"``): it changes the weights
    (other kernels) and the stored training time the methods' time ratios are measured
    against, so a model trained on one is never reused on the other.
    """
    return shared_cache_key({
        "version": CACHE_VERSION, "torch": torch.__version__.split("+")[0],
        "data": data_digest, "indices": _digest(indices.long()), "model": model,
        "model_args": model_args, "train": asdict(settings), "seed": seed,
        "device": device,
    })


def train_or_load(
    *,
    model_name: str,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    num_classes: int,
    data_digest: str,
    settings: TrainSettings,
    seed: int,
    cache_dir: str | Path | None,
    device: torch.device,
    role: str,
    progress: bool = False,
) -> TrainedModel:
    """Train the model on rows ``indices`` of ``(x, y)``, or load it from the cache.

    The caller's random states (the CPU generator and every CUDA one) are left as they
    were: the initialisation and the training draw from seeded, forked generators.

    Args:
        model_name: Zoo model.
        x: All training inputs.
        y: All training labels.
        indices: Rows trained on (everything for the original, the retain set for oracles).
        num_classes: Classes.
        data_digest: :meth:`HarnessData.digest`.
        settings: Recipe.
        seed: Seed of the initialisation and the shuffling.
        cache_dir: Cache folder (None: always train, store nothing).
        device: Where to train.
        role: File-name prefix (``original``, ``oracle3``).
        progress: tqdm bar over epochs.

    """
    shape = tuple(x.shape[1:])
    kw = model_kwargs(model_name, shape, num_classes)
    key = cache_key(data_digest=data_digest, indices=indices, model=model_name,
                    model_args=kw, settings=settings, seed=seed, device=device.type)
    # only the CPU generator is forked and seeded (the model is drawn on the CPU):
    # torch.manual_seed would also re-seed every CUDA generator, which nothing restores
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = build_harness_model(model_name, shape, num_classes).to(device)
    state, done = None, 0
    if cache_dir is not None:
        seconds = load_cached(cache_dir, role, key, model, device)
        if seconds is not None:
            return TrainedModel(model, seconds, True, key)
        state, done = cache_epoch_state(cache_dir, role, key, "harness", model)
    t0 = time.perf_counter()
    try:
        _train(model, x[indices], y[indices], settings, seed=seed, progress=progress,
               desc=role, epoch_state=state)
    except KeyboardInterrupt:
        kept = saved_epochs(state.path) if state is not None else None
        if kept:
            raise KeyboardInterrupt(
                f"the {role} model's first {kept} of {settings.epochs} epochs are kept in "
                f"{cache_dir}; the same run resumes after them") from None
        raise
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0 + (state.earlier_seconds if state is not None else 0.0)
    if cache_dir is not None:
        store_cached(cache_dir, role, key, model, seconds, {"model": model_name, "seed": seed})
    return TrainedModel(model, seconds, False, key, done)

