"""Canary experiment: insert a secret, train briefly, measure its exposure, report.

A secret is inserted into generated text, a character model is trained on it, and the
exposure of the secret (and of a never-inserted control secret) is measured.

The influence-unlearning reference (section 8) does this on *Alice in Wonderland* with a
10-digit telephone number; the defaults here are small enough for a CPU in seconds to
minutes. The trained model, vocabulary and text are returned so that an unlearning method
can be applied and :func:`measure_exposure` called again.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._device import parse_device
from .._equality import dataclass_eq
from .._json_data import json_ready
from .._numbers import as_int, check_flag, check_int, check_real, check_seed, is_integer
from .._process_flags import GLOBAL_RNG_LOCK
from .._unused_settings import warn_unused_settings
from .exposure import (
    _MIN_FIT_CANDIDATES,
    _RECOMMENDED_FIT_CANDIDATES,
    SkewNormalFit,
    _fit_skew_normal,
    _warn_few_candidates,
    rank_exposure,
)
from .model import (
    CharLM,
    _check_model,
    _module_modes,
    _restore_modes,
    _run_model,
    sequence_log_perplexity,
)
from .text import DIGITS, CharVocab, generate_corpus, insert_canary
from .unused_settings import canary_rules

__all__ = [
    "CanaryConfig",
    "CanaryResult",
    "ExposureMeasurement",
    "format_report",
    "greedy_completion",
    "measure_exposure",
    "run_canary_experiment",
    "train_char_lm",
]

# Secrets drawn when sampling and ``n_candidates`` is None.
_DEFAULT_CANDIDATES = 10_000

#: Most secrets one measurement scores (``n_candidates`` and ``enumerate_limit`` are capped
#: by it): their ids alone take ``8 * L`` bytes each, so 10**9 secrets of 10 digits are
#: 80 GB; a larger space cannot be enumerated nor sampled that densely.
MAX_SCORED_SECRETS = 10**9

#: Log-perplexities that differ by at most this many rounding steps (units in the last
#: place of the largest) are "alike": a near-uniform model (logits ~1e-15) scores the 10**4
#: secrets 17.2877... +- 1 ulp, two distinct values, and a skew-normal fitted to them is a
#: spike (a = 6e6, scale = 7e-16) that put a secret tied with 96 % of R at log2 |R|.
_ALIKE_ULPS = 64


def _check_candidates(n_candidates: object) -> int | None:
    """Return ``n_candidates`` (None or an int in ``3..MAX_SCORED_SECRETS``)."""
    if n_candidates is None:
        return None
    if not is_integer(n_candidates):  # a bool or a float is the wrong type
        raise TypeError(f"'n_candidates' must be None or an int, got "
                        f"{type(n_candidates).__name__} {n_candidates!r}")
    n = as_int(n_candidates)
    if n < 3:
        raise ValueError(f"'n_candidates' must be None or >= 3, got {n}")
    if n > MAX_SCORED_SECRETS:
        raise ValueError(f"'n_candidates' must be <= {MAX_SCORED_SECRETS} (the most secrets "
                         f"that can be scored or enumerated), got {n}")
    return n


@dataclass(frozen=True)
class ExposureMeasurement:
    """Exposure of one secret.

    Attributes:
        secret: The secret (e.g. ``"0123"``).
        log_perplexity: Its teacher-forced log-perplexity in bits after the prefix.
        rank: Its rank among the scored secrets (1 = lowest log-perplexity).
        rank_exposure: ``log2 |R'| - log2 rank`` over the scored set ``R'`` (this secret and
            the ``n_scored`` others). When ``exhaustive``, ``R' = R`` and this is the exact
            exposure. Otherwise it is the sampled estimate ``-log2 ((1 + C) / (1 + N))`` of
            ``-log2 (rank_R / |R|)``, ``C`` of the ``N = n_scored`` draws scoring at or below
            the secret; a sample is only drawn when it is smaller than the space
            (``N < |R|``), so it never exceeds ``log2 (N + 1) <= log2 |R|``: a sample of
            ``N`` cannot resolve more (the skew-normal fit extrapolates beyond it).
        skew_normal_exposure: ``-log2 F(P)`` from a skew-normal fit to the scored set,
            capped to ``[0, log2 |R|]``.
        max_exposure: ``log2 |R|`` for the whole space.
        space_size: ``|R| = len(alphabet) ** len(secret)``.
        n_scored: Secrets scored besides this one.
        exhaustive: Whether every secret of the space was scored (the rank is exact).
        fit: The skew-normal parameters (``scale == 0``: a point mass at the lowest
            score, every other scored secret having the same log-perplexity to within 64
            rounding steps).
        others: The log-perplexities (bits) of the ``n_scored`` secrets it was ranked
            against (for plots, :func:`fastunlearn.exposure.plot_exposure`); not in
            :meth:`to_dict`, ``None`` when not kept.

    """

    secret: str
    log_perplexity: float
    rank: int
    rank_exposure: float
    skew_normal_exposure: float
    max_exposure: float
    space_size: int
    n_scored: int
    exhaustive: bool
    fit: SkewNormalFit
    others: np.ndarray | None = field(default=None, repr=False, compare=False)

    #: a NaN field compares as on Python <= 3.12 (the same object is equal; 3.13's
    #: generated __eq__ compares fields one by one and calls such a record unequal to itself)
    __eq__ = dataclass_eq

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (without ``others``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("fit", "others")}
        out["fit"] = dataclasses.asdict(self.fit)
        return out


def _all_secrets(alphabet_ids: Tensor, length: int) -> Tensor:
    """Every string of ``length`` over the alphabet, as ids ``[k ** length, length]``."""
    k = alphabet_ids.numel()
    codes = torch.arange(k**length, dtype=torch.int64)
    places = k ** torch.arange(length - 1, -1, -1, dtype=torch.int64)
    return alphabet_ids[(codes.unsqueeze(1) // places) % k]


def measure_exposure(
    model: CharLM,
    vocab: CharVocab,
    prefix: str,
    secrets: str | Sequence[str],
    *,
    alphabet: str = DIGITS,
    n_candidates: int | np.integer | None = None,
    enumerate_limit: int | np.integer = 100_000,
    seed: int | np.integer = 0,
    batch_size: int | np.integer = 4096,
    progress: bool = False,
) -> list[ExposureMeasurement]:
    """Measure the exposure of secrets that follow ``prefix``.

    Every secret of the space ``R`` (``len(alphabet) ** L`` of them) is scored, and the rank
    is exact, when ``n_candidates`` is None and ``|R| <= enumerate_limit``, and also whenever
    the sample would be at least as large as the space (``n_candidates``, default 10,000,
    ``>= |R|``): scoring all of ``R`` then costs no more than the draws and is exact, while
    ``|R|`` or more draws with replacement would rank the secret among more "secrets" than
    exist (``log2 |R'| - log2 rank`` above ``log2 |R|``, an impossible exposure). Otherwise
    ``n_candidates`` (default 10,000) secrets, fewer than ``|R|``, are drawn uniformly with
    replacement, the rank exposure is the sampled estimate described in
    :class:`ExposureMeasurement` (at most ``log2 (n_scored + 1) <= log2 |R|`` bits), and the
    skew-normal fit extrapolates beyond the sample (capped at ``log2 |R|``).

    Args:
        model: The trained character model.
        vocab: Its vocabulary.
        prefix: Text before the secret (``"my telephone number is "``).
        secrets: One secret or several of the same length (each is measured against the
            same scored set).
        alphabet: Characters a secret is drawn from.
        n_candidates: Sample size; forces sampling when smaller than the space (a value
            ``>= |R|`` scores every secret exactly instead).
        enumerate_limit: Largest space scored exhaustively when ``n_candidates`` is None (a
            space no larger than the default 10,000 draws is always scored exhaustively).
        seed: Seed of the sample.
        batch_size: Secrets per forward pass.
        progress: Show a tqdm bar over the scored secrets.

    Returns:
        One :class:`ExposureMeasurement` per secret, in order.

    Ties: a secret scored exactly like the canary ranks ahead of it (exposure is never
    overstated). The canary is scored in the same forward pass as the secrets it is
    ranked against, so exact ties are kept. Sampled candidates are drawn with replacement
    and draws equal to the measured secret are left out of its ranking. When every other
    secret has the same log-perplexity (to within 64 rounding steps: a near-uniform
    model), the fit is a point mass at the lowest of them (``scale == 0``).

    Warnings (``UserWarning``, one per call, for the secrets together): when sampling,
    a skew-normal fit to fewer than 100 candidates (its exposure varies by several bits
    between seeds; 1,000 or more are advised), and a point-mass fit (its exposure is 0 or
    ``log2 |R|``, nothing in between). Not when the space is scored exhaustively, however
    small: the fit then describes every secret, not a sample, and the exact rank exposure
    is reported next to it.

    Raises:
        ValueError: If a secret is empty, lengths differ, a character is outside
            ``alphabet`` or the vocabulary, a count is out of range, the space has fewer
            than 4 secrets, fewer than 3 sampled candidates differ from a secret, or the
            model gives non-finite log-perplexities.
        TypeError: If ``vocab``, ``prefix``, ``secrets`` (or one of them), ``alphabet``,
            ``seed``, ``progress`` or a count has the wrong type.

    """
    _check_model(model)
    if not isinstance(vocab, CharVocab):
        raise TypeError(f"'vocab' must be a CharVocab, got {type(vocab).__name__}")
    if not isinstance(secrets, (str, Sequence)):
        raise TypeError(f"'secrets' must be a str or a list of str, got {type(secrets).__name__}")
    single = [secrets] if isinstance(secrets, str) else list(secrets)
    bad = next((s for s in single if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"'secrets' must be a str or a list of str, got an element "
                        f"{type(bad).__name__} {bad!r}")
    if not single or not all(single):
        raise ValueError("'secrets' must be a non-empty str or a list of them")
    length = len(single[0])
    if any(len(s) != length for s in single):
        raise ValueError("'secrets' must all have the same length")
    if not isinstance(alphabet, str):
        raise TypeError(f"'alphabet' must be a str, got {type(alphabet).__name__}")
    if not alphabet or len(set(alphabet)) != len(alphabet):
        raise ValueError("'alphabet' must be non-empty without repeats")
    if any(c not in alphabet for s in single for c in s):
        raise ValueError(f"'secrets' must use only the characters of 'alphabet' {alphabet!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"'prefix' must be a str, got {type(prefix).__name__}")
    if not prefix:
        raise ValueError("'prefix' must be a non-empty str")
    for text, arg in ((prefix, "prefix"), (alphabet, "alphabet")):
        missing = sorted(set(text) - set(vocab.chars))
        if missing:
            raise ValueError(f"'{arg}' holds characters not in the vocabulary: {missing}")
    n_candidates = _check_candidates(n_candidates)
    if not is_integer(enumerate_limit):
        raise TypeError(f"'enumerate_limit' must be an int, got {enumerate_limit!r}")
    enumerate_limit = as_int(enumerate_limit)
    if not 0 <= enumerate_limit <= MAX_SCORED_SECRETS:
        raise ValueError(f"'enumerate_limit' must be in 0..{MAX_SCORED_SECRETS} (the most "
                         f"secrets that can be enumerated), got {enumerate_limit}")
    seed = check_seed("seed", seed)
    batch_size = check_int("batch_size", batch_size, 1)
    progress = check_flag("progress", progress)
    space = len(alphabet) ** length
    if space < 4:
        # the secret plus at least 3 others: fewer leave nothing to rank or to fit
        raise ValueError(
            f"'alphabet' {alphabet!r} and secrets of length {length} give only {space} "
            "possible secret(s); exposure needs at least 4"
        )
    alphabet_ids = vocab.encode(alphabet)
    prefix_ids = vocab.encode(prefix)
    secret_ids = vocab.encode(single)
    draws_wanted = _DEFAULT_CANDIDATES if n_candidates is None else n_candidates
    # |R| or more draws would rank the secret among more "secrets" than the space holds
    # (rank exposure above log2 |R|): score the whole space instead, exactly and no dearer
    exhaustive = (n_candidates is None and space <= enumerate_limit) or draws_wanted >= space
    if exhaustive:
        # every secret is in the pool: take its score from the very same forward pass as
        # the scores it is ranked against, so that an exact tie stays a tie (a row scored
        # alone can differ in the last bits from the same row scored in a batch)
        pool = _all_secrets(alphabet_ids, length)
        pool_scores = sequence_log_perplexity(model, prefix_ids, pool, batch_size=batch_size,
                                              progress=progress)
        position = {c: i for i, c in enumerate(alphabet)}
        index = [sum(position[c] * len(alphabet) ** (length - 1 - j) for j, c in enumerate(s))
                 for s in single]
        own = pool_scores[index]
    else:
        g = torch.Generator().manual_seed(seed)
        draws = torch.randint(len(alphabet), (draws_wanted, length), generator=g)
        pool = alphabet_ids[draws]
        # the secrets lead the first batch, scored with (not apart from) the candidates
        scores = sequence_log_perplexity(
            model, prefix_ids, torch.cat([secret_ids, pool]), batch_size=batch_size,
            progress=progress,
        )
        own, pool_scores = scores[: len(single)], scores[len(single) :]
    if not (torch.isfinite(own).all() and torch.isfinite(pool_scores).all()):
        raise ValueError("'model' gives non-finite log-perplexities (NaN or inf weights?)")
    results = []
    fitted_sizes, point_masses = [], []
    for s, ids, p in zip(single, secret_ids, own.tolist(), strict=True):
        others = pool_scores[~(pool == ids).all(dim=1)].numpy()
        if others.size < 3:
            raise ValueError(
                f"only {others.size} of the {pool.shape[0]} sampled candidates differ from "
                f"the secret {s!r}; raise 'n_candidates' (at least 3 others are needed)"
            )
        if np.ptp(others) <= _ALIKE_ULPS * np.spacing(np.abs(others).max()):
            # the model scores every other secret alike (to the last bits): no distribution
            # to fit (a fit to rounding noise is a spike whose tail put a secret tied with
            # most of R at log2 |R|); its limit is a point mass at the lowest score
            # (exposure 0 unless the secret scores lower, as its rank says)
            fit = SkewNormalFit(0.0, float(others.min()), 0.0, int(others.size))
            point_masses.append(f"{s!r} ({others.size} candidates)")
        else:
            fit = _fit_skew_normal(others, warn_stacklevel=None)  # warned once, below
            fitted_sizes.append(int(others.size))
        # others.size < |R| here (all of R but the secret, or fewer than |R| draws), so this
        # is at most log2 |R|; the min() only guards the documented bound
        exposure = min(float(rank_exposure(p, others)), math.log2(space))
        results.append(
            ExposureMeasurement(
                secret=s,
                log_perplexity=float(p),
                rank=int(1 + np.sum(others <= p)),
                rank_exposure=float(exposure),
                skew_normal_exposure=float(fit.exposure(p, space)),
                max_exposure=math.log2(space),
                space_size=space,
                n_scored=int(others.size),
                exhaustive=exhaustive,
                fit=fit,
                others=others,
            )
        )
    # exhaustive: the fit describes all of R, not a sample, and the exact rank is reported
    # next to it (on enumerated spaces of 10 and 100 secrets the two differed by at most
    # 0.4 and 0.1 bit), so neither warning applies
    if not exhaustive and fitted_sizes and min(fitted_sizes) < _MIN_FIT_CANDIDATES:
        _warn_few_candidates(
            min(fitted_sizes),
            f"use 'n_candidates' >= {_RECOMMENDED_FIT_CANDIDATES}, or 'n_candidates' >= |R| = "
            f"{space} to score every secret exactly",
            stacklevel=2,
        )
    if not exhaustive and point_masses:
        warnings.warn(
            "the model scores every sampled candidate of the secret(s) "
            f"{', '.join(point_masses)} alike: the skew-normal fit is a point mass (scale "
            "0), so its exposure is either 0 or the maximum log2 |R| = "
            f"{math.log2(space):.2f} bits, not an extrapolation (does the model predict "
            "every character alike?); read the rank exposure",
            UserWarning,
            stacklevel=2,
        )
    return results


def train_char_lm(
    model: CharLM,
    ids: Tensor,
    *,
    steps: int | np.integer,
    seq_len: int | np.integer = 48,
    batch_size: int | np.integer = 32,
    lr: float | np.floating = 3e-3,
    weight_decay: float | np.floating = 0.0,
    seed: int | np.integer = 0,
    progress: bool = False,
) -> list[float]:
    """Train next-character prediction on random windows of ``ids`` with Adam.

    Args:
        model: The model, trained in place.
        ids: The encoded text ``[T]``, ``T > seq_len``.
        steps: Optimiser steps.
        seq_len: Window length (the reference uses 24).
        batch_size: Windows per step.
        lr: Adam learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``; the reference uses 1e-4).
        seed: Seed of the window draws.
        progress: Show a tqdm bar.

    Returns:
        The training loss (nats per character) of every step.

    Raises:
        ValueError: If ``ids`` is too short or a setting is out of range (``lr`` must be
            finite and > 0, ``weight_decay`` finite and >= 0, ``seed`` in 0..2**64-1).
        TypeError: If ``model`` is not a module or has float16 parameters (Adam diverges
            to NaN in half precision; bfloat16 trains), ``ids`` not an int64 tensor, or a
            setting has the wrong type.

    """
    steps = check_int("steps", steps, 0)
    seq_len = check_int("seq_len", seq_len, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64:
        raise TypeError("'ids' must be an int64 tensor")
    if ids.dim() != 1 or ids.numel() <= seq_len:
        raise ValueError(f"'ids' must be 1-D and longer than seq_len={seq_len}")
    _check_model(model)
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype == torch.float16:
            # Adam's second moment underflows in float16 and its eps rounds to 0: the
            # weights became NaN without an error
            raise TypeError(
                f"'model' must not have float16 parameters (got {name!r} in float16): "
                "Adam's state underflows in half precision; use .float() or .bfloat16()"
            )
    # an infinite rate would turn every weight into NaN without an error
    lr, weight_decay = check_real("lr", lr, positive=True), check_real("weight_decay", weight_decay)
    seed = check_seed("seed", seed)
    progress = check_flag("progress", progress)
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    data = ids.to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    offsets = torch.arange(seq_len + 1)
    losses = []
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="train", leave=False):
        starts = torch.randint(ids.numel() - seq_len, (batch_size, 1), generator=g)
        window = data[(starts + offsets).to(device)]
        logits, _ = _run_model(model, window[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def greedy_completion(
    model: CharLM,
    vocab: CharVocab,
    prefix: str,
    length: int | np.integer,
) -> str:
    """Return the ``length`` characters the model predicts after ``prefix`` (argmax).

    The training mode of the model and of each of its submodules is restored, also on
    error.

    Raises:
        ValueError: If ``prefix`` is empty or outside the vocabulary, or ``length < 0``.
        TypeError: If ``length`` is not an int, ``prefix`` not a str or ``vocab`` not a
            :class:`CharVocab`.

    """
    length = check_int("length", length, 0)
    if not isinstance(prefix, str):
        raise TypeError(f"'prefix' must be a str, got {type(prefix).__name__}")
    if not prefix:
        raise ValueError("'prefix' must be a non-empty str")
    _check_model(model)
    if not isinstance(vocab, CharVocab):
        raise TypeError(f"'vocab' must be a CharVocab, got {type(vocab).__name__}")
    prefix_ids = vocab.encode(prefix)
    modes = _module_modes(model)
    model.eval()
    try:
        device = next(model.parameters()).device
        logits, state = _run_model(model, prefix_ids.to(device).unsqueeze(0))
        out = []
        for _ in range(length):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(nxt))
            logits, state = _run_model(model, nxt, state)
    finally:
        _restore_modes(modes)
    return vocab.decode(torch.tensor(out, dtype=torch.int64))


#: Digits of a drawn secret when :class:`CanaryConfig` gets neither ``secret_length`` nor
#: ``secret``.
_DEFAULT_SECRET_LENGTH = 4


@dataclass(frozen=True)
class CanaryConfig:
    """Settings of :func:`run_canary_experiment`.

    Attributes:
        n_sentences: Generated sentences (about 40 characters each).
        secret: The inserted secret; None draws ``secret_length`` random digits.
        secret_length: Digits of a drawn secret (the reference uses 10). None (default):
            the length of ``secret``, or 4 without one. Given with a ``secret`` of another
            length, it is refused (ValueError).
        prefix: Canary text before the secret.
        suffix: Canary text after the secret.
        insertions: Copies of the canary in the text (the reference: 6 to 29).
        control: Also measure a random secret that was never inserted.
        cell: ``"lstm"`` or ``"gru"``.
        embed_dim: Embedding width.
        hidden: Recurrent units.
        layers: Recurrent layers.
        steps: Training steps (0: none; ``lr``, ``weight_decay`` and ``batch_size`` then
            have no effect, and :func:`run_canary_experiment` warns when they are set).
        seq_len: Training window length.
        batch_size: Windows per step.
        lr: Adam learning rate.
        weight_decay: L2 penalty.
        n_candidates: Sampled secrets; None scores the whole space when it has at most
            ``enumerate_limit`` secrets (else draws 10,000). A sample at least as large as
            the space scores every secret exactly instead (see :func:`measure_exposure`).
            A sample of fewer than 100 draws a warning (the skew-normal exposure is
            unreliable; use 1,000 or more).
        enumerate_limit: Largest space scored exhaustively when ``n_candidates`` is None
            (with ``n_candidates`` set it has no effect; :func:`run_canary_experiment`
            warns when it is set then).
        seed: Seed of text, secret, insertion positions, initialisation and training.
        device: Torch device (a ``torch.device`` is stored as its str).
        progress: Show progress bars (training, and scoring the secrets).

    """

    n_sentences: int = 600
    secret: str | None = None
    secret_length: int | None = None
    prefix: str = "my telephone number is "
    suffix: str = "."
    insertions: int = 12
    control: bool = True
    cell: str = "lstm"
    embed_dim: int = 32
    hidden: int = 128
    layers: int = 1
    steps: int = 400
    seq_len: int = 48
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    n_candidates: int | None = None
    enumerate_limit: int = 100_000
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    @property
    def secret_digits(self) -> int:
        """Digits of the secret: ``len(secret)``, else ``secret_length``, else 4."""
        if self.secret is not None:
            return len(self.secret)
        return int(self.secret_length or _DEFAULT_SECRET_LENGTH)

    def __post_init__(self) -> None:
        for name in (
            "n_sentences",
            "secret_length",
            "embed_dim",
            "hidden",
            "layers",
            "seq_len",
            "batch_size",
        ):
            value = getattr(self, name)
            if name == "secret_length" and value is None:  # from the secret (below)
                continue
            # frozen; a NumPy int is stored as a Python int
            object.__setattr__(self, name, check_int(name, value, 1))
        for name in ("insertions", "steps"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 0))
        if not is_integer(self.enumerate_limit):
            raise TypeError(f"'enumerate_limit' must be an int, got "
                            f"{type(self.enumerate_limit).__name__}")
        if not 1 <= self.enumerate_limit <= MAX_SCORED_SECRETS:
            raise ValueError(f"'enumerate_limit' must be in 1..{MAX_SCORED_SECRETS} (the most "
                             f"secrets that can be enumerated), got {self.enumerate_limit}")
        object.__setattr__(self, "enumerate_limit", as_int(self.enumerate_limit))
        if self.secret is not None and not isinstance(self.secret, str):
            raise TypeError(f"'secret' must be None or a str of digits, got "
                            f"{type(self.secret).__name__} {self.secret!r}")
        if self.secret is not None and (
            not self.secret
            or any(c not in DIGITS for c in self.secret)
        ):
            raise ValueError(
                f"'secret' must be None or a non-empty string of digits, got {self.secret!r}"
            )
        if (self.secret is not None and self.secret_length is not None
                and self.secret_length != len(self.secret)):
            digits = "digit" if len(self.secret) == 1 else "digits"
            raise ValueError(
                f"'secret_length' {self.secret_length} contradicts 'secret' {self.secret!r} "
                f"({len(self.secret)} {digits}): give one"
            )
        object.__setattr__(self, "lr", check_real("lr", self.lr, positive=True))
        object.__setattr__(self, "weight_decay", check_real("weight_decay", self.weight_decay))
        object.__setattr__(self, "n_candidates", _check_candidates(self.n_candidates))
        for name in ("prefix", "suffix"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"'{name}' must be a str, got "
                                f"{type(getattr(self, name)).__name__} {getattr(self, name)!r}")
        if not self.prefix:
            raise ValueError("'prefix' must be a non-empty str")
        # torch.Generator's range (train_char_lm and measure_exposure check it too)
        object.__setattr__(self, "seed", check_seed("seed", self.seed))
        for name in ("control", "progress"):  # a bool or np.bool_, stored as a plain bool
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))
        parse_device(self.device)
        if isinstance(self.device, torch.device):  # stored as its str: to_dict is JSON
            object.__setattr__(self, "device", str(self.device))
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"'cell' must be 'lstm' or 'gru', got {self.cell!r}")


@dataclass
class CanaryResult:
    """What :func:`run_canary_experiment` measured.

    Attributes:
        config: The settings.
        canary: Exposure of the inserted secret.
        control: Exposure of a never-inserted secret (None if ``config.control`` is off).
        completion: The model's greedy continuation of the prefix.
        final_loss: Mean training loss of the last 10 % of steps (nats per character);
            NaN without training steps or when the loss diverged (``None`` in
            :meth:`to_dict`).
        text_chars: Length of the training text.
        train_s: Training wall time.
        measure_s: Scoring and fitting wall time.
        model: The trained model (not in :meth:`to_dict`).
        vocab: Its vocabulary.
        text: The training text with the canaries.
        canary_offsets: Character offsets of the inserted canaries.

    """

    config: CanaryConfig
    canary: ExposureMeasurement
    control: ExposureMeasurement | None
    completion: str
    final_loss: float
    text_chars: int
    train_s: float
    measure_s: float
    model: CharLM = field(repr=False)
    vocab: CharVocab = field(repr=False)
    text: str = field(repr=False)

    #: a NaN field compares as on Python <= 3.12 (the same object is equal; 3.13's
    #: generated __eq__ compares fields one by one and calls such a record unequal to itself)
    __eq__ = dataclass_eq
    canary_offsets: list[int] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (without the model and the text).

        Strict JSON: a non-finite ``final_loss`` (NaN: no training steps) is the string
        ``"nan"`` (:mod:`fastunlearn._json_data`).
        """
        return json_ready({
            "config": dataclasses.asdict(self.config),
            "canary": self.canary.to_dict(),
            "control": None if self.control is None else self.control.to_dict(),
            "completion": self.completion,
            "final_loss": self.final_loss,
            "text_chars": self.text_chars,
            "train_s": self.train_s,
            "measure_s": self.measure_s,
        })


def run_canary_experiment(config: CanaryConfig | None = None) -> CanaryResult:
    """Insert a canary into generated text, train a character model, measure exposure.

    Steps: generate ``n_sentences`` sentences; insert ``prefix + secret + suffix``
    ``insertions`` times; train a :class:`CharLM` for ``steps`` steps; score the secret
    and a control secret of the same length (never inserted) against the space of all
    secrets (or a sample); return both exposures and the greedy completion.

    Args:
        config: Settings; None uses :class:`CanaryConfig`'s defaults.

    Returns:
        A :class:`CanaryResult`.

    Warns (UserWarning), once per config however often it is run, about fields set to a
    value other than their default that the others make pointless (the table:
    :func:`~fastunlearn.exposure.unused_settings.canary_rules`): ``'lr', 'weight_decay'
    and 'batch_size' have no effect with steps=0 (for the training)`` and
    ``'enumerate_limit' has no effect with 'n_candidates' set (for the default,
    n_candidates=None)``.

    Raises:
        TypeError: If ``config`` is neither None nor a :class:`CanaryConfig`.
        ValueError: From :class:`CanaryConfig` or the steps (e.g. more insertions than
            sentences).

    """
    cfg = CanaryConfig() if config is None else config
    if not isinstance(cfg, CanaryConfig):
        raise TypeError(f"'config' must be a CanaryConfig, got {type(cfg).__name__}")
    # settings the others make pointless (each named once per config, however often run)
    warn_unused_settings(cfg, canary_rules(cfg), stacklevel=2)
    rng = random.Random(cfg.seed)
    length = cfg.secret_digits
    secret = cfg.secret or "".join(rng.choice(DIGITS) for _ in range(length))
    control = "".join(rng.choice(DIGITS) for _ in range(length))
    while control == secret:
        control = "".join(rng.choice(DIGITS) for _ in range(length))
    corpus = generate_corpus(cfg.n_sentences, cfg.seed)
    try:
        text, offsets = insert_canary(corpus, cfg.prefix + secret + cfg.suffix,
                                      cfg.insertions, cfg.seed)
    except ValueError:  # said in the config's terms, not the helper's
        raise ValueError(f"'insertions' {cfg.insertions} is more than the sentences of the "
                         f"generated text (n_sentences {cfg.n_sentences}): each copy of the "
                         "canary starts a sentence") from None
    if len(text) <= cfg.seq_len:
        raise ValueError(f"'seq_len' {cfg.seq_len} is not shorter than the generated text "
                         f"({len(text)} characters): lower it or raise n_sentences")
    vocab = CharVocab.from_texts(text, cfg.prefix, cfg.suffix)
    # seeded initialisation without resetting the caller's global RNG stream
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = CharLM(vocab.size, cfg.embed_dim, cfg.hidden, cfg.layers, cfg.cell)
    model = model.to(cfg.device)
    start = time.perf_counter()
    losses = train_char_lm(
        model,
        vocab.encode(text),
        steps=cfg.steps,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    measured = measure_exposure(
        model,
        vocab,
        cfg.prefix,
        [secret, control] if cfg.control else [secret],
        n_candidates=cfg.n_candidates,
        enumerate_limit=cfg.enumerate_limit,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    measure_s = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :] if losses else [float("nan")]
    return CanaryResult(
        config=cfg,
        canary=measured[0],
        control=measured[1] if cfg.control else None,
        completion=greedy_completion(model, vocab, cfg.prefix, length),
        final_loss=float(np.mean(tail)),
        text_chars=len(text),
        train_s=train_s,
        measure_s=measure_s,
        model=model,
        vocab=vocab,
        text=text,
        canary_offsets=offsets,
    )


def format_report(result: CanaryResult) -> str:
    """Return a Markdown report of a canary experiment.

    Raises:
        TypeError: If ``result`` is not a :class:`CanaryResult`.

    """
    if not isinstance(result, CanaryResult):
        raise TypeError(f"'result' must be a CanaryResult, got {type(result).__name__}")
    cfg = result.config
    rows = [result.canary] + ([result.control] if result.control is not None else [])
    kinds = ["inserted"] + (["control (never inserted)"] if result.control is not None else [])
    m = result.canary
    if m.exhaustive:
        scored = f"all {m.space_size} of |R|"
        drawn = cfg.n_candidates or _DEFAULT_CANDIDATES
        if cfg.n_candidates is not None or m.space_size > cfg.enumerate_limit:
            # a sample of at least |R| draws is replaced by the exact, exhaustive ranking
            scored += f" (exact: the {drawn} draws asked for are at least |R|)"
    else:  # each secret is ranked among the draws that differ from it
        drawn = cfg.n_candidates or _DEFAULT_CANDIDATES
        scored = (f"{drawn} uniform draws (with replacement) from |R| = {m.space_size}; "
                  f"the secret ranked among the {m.n_scored} that differ from it "
                  f"(sampled rank exposure at most log2({m.n_scored} + 1) = "
                  f"{math.log2(m.n_scored + 1):.2f} bits)")
    lines = [
        "# Canary exposure",
        "",
        f"- Text: {result.text_chars} generated characters; canary "
        f"`{cfg.prefix}{m.secret}{cfg.suffix}` inserted {cfg.insertions} times.",
        f"- Model: {cfg.cell.upper()} {cfg.layers}x{cfg.hidden}, embedding {cfg.embed_dim}; "
        f"{cfg.steps} Adam steps, final loss "
        f"{f'{result.final_loss:.3f} nats/char' if math.isfinite(result.final_loss) else 'n/a'} "
        f"({result.train_s:.1f} s).",
        f"- Secrets scored: {scored}; max exposure "
        f"log2|R| = {m.max_exposure:.2f} bits ({result.measure_s:.1f} s).",
        f"- Greedy completion of the prefix: `{result.completion}`.",
        "",
        "| secret | kind | log-perplexity (bits) | rank | exposure (rank) | "
        "exposure (skew-normal) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in zip(kinds, rows, strict=True):
        lines.append(
            f"| `{row.secret}` | {kind} | {row.log_perplexity:.2f} | {row.rank} | "
            f"{row.rank_exposure:.2f} | {row.skew_normal_exposure:.2f} |"
        )
    f = m.fit
    lines += ["", f"Skew-normal fit: a = {f.a:.3f}, loc = {f.loc:.2f}, scale = {f.scale:.2f}.", ""]
    return "\n".join(lines)
