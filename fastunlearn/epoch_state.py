"""Resumable training: the state after each finished epoch, saved and restored.

Networks train for many epochs (the reference's DP extractor: 20 passes over SVHN; the
repair experiment's CIFAR-10 CNNs: 100). With an ``epoch_checkpoint`` file, the training
functions of :mod:`fastunlearn.certified.extractors` (and, with a cache, the trainings of
the repair experiment and of ``fastunlearn forget``'s original model and oracles) write
everything the next epoch depends on after every epoch,
atomically: the weights, the optimizer's state, torch's random-number states (CPU, the
training GPU's and the loader's generator) and what the caller adds (the DP accountant's
history). A run started again with the same settings and initial weights continues after
the last finished epoch and ends with the same model (bit for bit on the same device and
thread count) and, for DP-SGD, the same epsilon as an uninterrupted run. The file goes when
training finishes.

The file is a ``torch.save`` archive read with ``weights_only=True``: tensors, numbers and
strings only, never code. It records the settings that must not change between the runs
and a digest of the initial weights; a run with other settings or other initial weights
(another seed) is refused with a ValueError instead of mixing two trainings.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._atomic_files import replace_atomically
from ._model_cache import weights_digest

__all__ = ["EPOCH_STATE_VERSION", "EpochState", "cache_epoch_state", "saved_epochs",
           "weights_digest"]

#: Layout version of the epoch-state file.
EPOCH_STATE_VERSION = 1


def saved_epochs(path: str | os.PathLike[str]) -> int | None:
    """Return how many finished epochs the epoch-state file at ``path`` holds.

    None when there is no such file or it is not a readable epoch state (training then
    refuses it with the reason).
    """
    if not Path(path).is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return int(saved["epochs_done"]) if saved.get("version") == EPOCH_STATE_VERSION else None
    except Exception:  # any unreadable file: the training call reports it properly
        return None


def _rng_states(device: torch.device, loader: object) -> dict[str, torch.Tensor | None]:
    generator = getattr(loader, "generator", None)
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loader": generator.get_state() if isinstance(generator, torch.Generator) else None,
    }


def _set_rng_states(states: Mapping[str, Any], device: torch.device, loader: object) -> None:
    torch.set_rng_state(states["cpu"])
    if states.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    generator = getattr(loader, "generator", None)
    if states.get("loader") is not None and isinstance(generator, torch.Generator):
        generator.set_state(states["loader"])


@dataclass
class EpochState:
    """The epoch-state file of one training run.

    Attributes:
        path: Where the state after each finished epoch is kept.
        settings: JSON-able settings a resumed run must share with the saved one (the
            training kind, learning rate, batches per epoch, ...).
        initial_digest: :func:`weights_digest` of the model before its first epoch.
        earlier_seconds: Training time of the epochs :meth:`load` restored, as the saving
            run recorded it in ``extra["seconds"]`` (0 when nothing was restored): a
            resumed run adds it to its own time to report the whole training's.

    """

    path: Path
    settings: dict[str, Any]
    initial_digest: str = field(default="")
    earlier_seconds: float = field(default=0.0)

    @classmethod
    def for_run(
        cls, path: str | os.PathLike[str], settings: Mapping[str, Any], model: nn.Module
    ) -> EpochState:
        """Describe a run about to start from ``model``'s current weights.

        Raises:
            TypeError: If ``path`` is not a path.
            ValueError: If ``path`` is a folder or its folder does not exist.

        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"'epoch_checkpoint' must be a path or None, got {type(path).__name__}"
            )
        out = Path(path)
        if out.is_dir():
            raise ValueError(f"'epoch_checkpoint' {str(out)!r} is a folder, not a file")
        if not out.parent.is_dir():
            raise ValueError(
                f"'epoch_checkpoint' {str(out)!r}: its folder {str(out.parent)!r} does not exist"
            )
        return cls(out, json.loads(json.dumps(dict(settings))), weights_digest(model))

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        device: torch.device,
        loader: object,
        restore_extra: Callable[[dict[str, Any]], None] | None = None,
    ) -> int:
        """Restore the last finished epoch into ``model`` and ``optimizer``, if one is saved.

        Call it after the optimizer exists and just before the first epoch: the random
        states are restored too, and anything drawn later would differ from the saved run.

        ``restore_extra`` gets the ``extra`` saved with the epochs (e.g. the DP accountant's
        history) before anything else is restored; it may raise ValueError to refuse it.

        Returns:
            The number of finished epochs restored (0 when there is no file).

        Raises:
            ValueError: If the file is not an epoch state, was saved with other settings or
                other initial weights, or holds more epochs than ``epochs``. Nothing is
                changed then.

        """
        if not self.path.exists():
            return 0
        where = f"'epoch_checkpoint' {str(self.path)!r}"
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: refuse, never overwrite it
            raise ValueError(f"{where} is not a readable epoch state (torch.load: {exc}); "
                             "remove it or pass another path") from None
        if not isinstance(saved, dict) or saved.get("version") != EPOCH_STATE_VERSION:
            raise ValueError(f"{where} is not an epoch state of this version; remove it or "
                             "pass another path")
        settings = json.loads(saved["settings"])
        if settings.get("kind") != self.settings.get("kind"):
            raise ValueError(f"{where} was saved by {settings.get('kind')} training, not "
                             f"{self.settings.get('kind')} training; remove it to start over")
        if settings != self.settings:
            changed = sorted(k for k in settings.keys() | self.settings.keys()
                             if settings.get(k) != self.settings.get(k))
            shown = ", ".join(f"{k}: saved {settings.get(k)!r}, now {self.settings.get(k)!r}"
                              for k in changed)
            raise ValueError(f"{where} was saved by a run with other settings ({shown}); "
                             "use the same settings to resume, or remove the file to start over")
        if saved["initial_digest"] != self.initial_digest:
            raise ValueError(f"{where} was saved by a run that started from other initial "
                             "weights (another seed or model?); seed torch as before building "
                             "the model to resume, or remove the file to start over")
        done = int(saved["epochs_done"])
        if done > epochs:
            raise ValueError(f"'epochs' {epochs} is fewer than the {done} epochs {where} "
                             "already holds")
        extra = dict(saved.get("extra") or {})
        if done and restore_extra is not None:
            restore_extra(extra)
        self.earlier_seconds = float(extra.get("seconds", 0.0)) if done else 0.0
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        _set_rng_states(saved["rng"], device, loader)
        return done

    def save(
        self,
        epochs_done: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        loader: object,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the state after ``epochs_done`` finished epochs (whole or not at all)."""
        state = {
            "version": EPOCH_STATE_VERSION,
            "settings": json.dumps(self.settings, sort_keys=True),
            "initial_digest": self.initial_digest,
            "epochs_done": int(epochs_done),
            "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "rng": _rng_states(device, loader),
            "extra": dict(extra or {}),
        }
        replace_atomically(self.path, lambda tmp: torch.save(state, tmp))

    def remove(self) -> None:
        """Delete the file (training finished)."""
        self.path.unlink(missing_ok=True)


def cache_epoch_state(folder: str | os.PathLike[str], role: str, key: str, kind: str,
                      model: nn.Module) -> tuple[EpochState, int]:
    """Return the epoch state a model cache keeps for one training, and its finished epochs.

    The file is ``<folder>/<role>-<key[:24]>.epoch-state.pt``, beside the finished models
    (:mod:`fastunlearn._model_cache`); ``key`` is the cache key, so another training never
    finds it. An unreadable file (not an epoch state of this version) is removed with a
    RuntimeWarning: the training then starts from its first epoch.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{role}-{key[:24]}.epoch-state.pt"
    done = saved_epochs(path)
    if path.exists() and done is None:
        warnings.warn(f"removed the unreadable epoch state {str(path)!r}; the {role} model "
                      "trains from its first epoch", RuntimeWarning, stacklevel=3)
        path.unlink()
    return EpochState.for_run(path, {"kind": kind, "key": key}, model), done or 0
