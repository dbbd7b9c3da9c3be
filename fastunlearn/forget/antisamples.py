"""Anti-samples (Mondal and Samanta, PReMI 2025): model-free samples that unlearn by training.

The generator (:func:`generate_antisamples`) needs no model and no gradient. For every forget
sample ``x_f`` (flattened) it picks a *far* retain neighbour ``x_r`` (uniformly among its
``tail_randomized`` farthest rows of the retain pool, found by the fused
:func:`fastunlearn.ops.knn.farthest_k` op without a distance matrix), then draws, per
coordinate, ``s ~ N(x_r, sigma^2)`` with ``sigma = (|x_f - x_r| + eps) * local_variance``,
keeping ``s`` with probability ``p`` and ``x_r``'s value otherwise. Repeating this
``size_multiplier`` times gives a pool ``A``; with ``convex_combination`` the output is
``softmax(W) @ A`` for ``W`` with i.i.d. ``N(0, 1)`` entries (``n_generated`` rows), i.e.
random convex mixtures of pool samples. There is no clipping to the input range.

Unlearning (:func:`antisamples_single_class`, :func:`antisamples_multi_class`) labels the
anti-samples of forget class ``c`` with ``c`` and fine-tunes the model on them together with
a retain subset (true labels) with Adam at ``lr * lr_scale`` for 5 epochs. The retain subset
is ``retain_fraction`` of every retain class: 0.3 is *Unlearning-30*, 1.0 *Unlearning-100*.
Single-class draws the far neighbours from the other classes of that subset; multi-class
(as the published multi-class script) from the whole retain set, one class at a time.
:data:`ANTISAMPLE_PRESETS` holds the published per-model settings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._equality import dataclass_eq
from .._no_effect import no_effect_message
from .._numbers import check_flag, check_real
from .._repr import fields_repr
from ._common_b import (
    TrainingData,
    check_adam_dtype,
    check_float_inputs,
    check_fraction,
    check_single_batches,
    checked_tensors,
    class_subset,
    float_input_dtype,
    prepare_inputs,
    train_ce,
)
from .base import (
    ForgetConfig,
    check_count,
    check_signed_seed,
    clone_model,
    iterate,
    model_device,
    offset_seed,
    register,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ANTISAMPLE_PRESETS",
    "AntiSampleConfig",
    "AntiSamples",
    "antisample_preset",
    "antisamples_multi_class",
    "antisamples_single_class",
    "generate_antisamples",
]


@dataclass(repr=False)
class AntiSamples:
    """The output of :func:`generate_antisamples`.

    Attributes:
        samples: The anti-samples ``[G, *shape]`` (``G = n_generated``, or the pool size
            without convex combination and ``n_generated``).
        pool: The pool ``A`` ``[m * size_multiplier, *shape]`` before mixing.
        source: Row of ``forget`` each pool sample was generated from ``[|A|]``.
        neighbours: Row of ``retain`` (the caller's indexing) of each pool sample's far
            neighbour ``[|A|]``.
        neighbour_sq_dist: Squared distance from the forget sample to its far neighbour
            ``[|A|]``.
        neighbour_labels: ``retain_labels`` of the neighbours, or ``None``.
        weights: ``softmax(W)`` ``[G, |A|]`` when ``return_weights`` and convex
            combination were requested, else ``None``.
        pool_indices: Rows of ``retain`` that formed the search pool (after
            ``retain_fraction``).
        times: Seconds spent in the neighbour search (``"distance_s"``) and in sampling and
            mixing (``"generation_s"``).

    """

    samples: Tensor
    pool: Tensor
    source: Tensor
    neighbours: Tensor
    neighbour_sq_dist: Tensor
    neighbour_labels: Tensor | None
    weights: Tensor | None
    pool_indices: Tensor
    times: dict[str, float] = field(default_factory=dict)

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"'{name}' must be a Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"'{name}' must be a real tensor, got {t.dtype}")
    if t.dim() < 2 or t.numel() == 0:
        raise ValueError(f"'{name}' must have shape [n >= 1, ...features], got {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def generate_antisamples(
    forget: Tensor,
    retain: Tensor,
    *,
    retain_labels: Tensor | None = None,
    retain_fraction: float | np.floating = 1.0,
    n_generated: int | np.integer | None = None,
    tail_randomized: int | np.integer | None = 20,
    local_variance: float | np.floating = 1.0,
    p: float | np.floating = 0.95,
    eps: float | np.floating = 0.01,
    size_multiplier: int | np.integer = 1,
    convex_combination: bool = True,
    seed: int | np.integer = 0,
    return_weights: bool = False,
    chunk_size: int | np.integer = 4096,
) -> AntiSamples:
    """Generate anti-samples for ``forget`` from far neighbours in ``retain``.

    Args:
        forget: Forget inputs ``[m, *shape]`` (flattened internally).
        retain: Retain inputs ``[n, *shape]``, same shape, dtype and device as ``forget``.
        retain_labels: Labels ``[n]`` of ``retain``; when given, the ``retain_fraction``
            subset is drawn per class and the neighbours' labels are returned.
        retain_fraction: Share of ``retain`` searched for neighbours, in (0, 1] (0.3:
            Unlearning-30, 1.0: Unlearning-100).
        n_generated: Number of anti-samples ``G``. With ``convex_combination``, ``None``
            means the pool size. Without it, ``None`` returns the pool itself and an int
            draws ``G`` pool rows uniformly with replacement.
        tail_randomized: Choose each neighbour uniformly among the ``k`` farthest rows
            (capped at the pool size); ``None`` or 0 takes the single farthest.
        local_variance: Multiplier of the per-coordinate standard deviation.
        p: Probability that a coordinate takes the Gaussian draw, in [0, 1].
        eps: Added to ``|x_f - x_r|`` before scaling, so equal coordinates still vary.
        size_multiplier: Pool samples generated per forget sample.
        convex_combination: Mix the pool with row-softmaxed Gaussian weights.
        seed: Seed of every random draw (neighbour choice, Gaussians, masks, weights).
        return_weights: Keep the ``[G, |A|]`` mixing weights in the result (memory).
        chunk_size: Rows of ``W`` mixed per GEMM.

    Returns:
        An :class:`AntiSamples`.

    Raises:
        TypeError: If an argument has the wrong type, or ``forget`` and ``retain`` differ
            in dtype.
        ValueError: If shapes disagree or a parameter is out of range.

    """
    forget = _check_tensor("forget", forget)
    retain = _check_tensor("retain", retain)
    if forget.shape[1:] != retain.shape[1:]:
        raise ValueError(
            f"forget and retain must have the same sample shape, got {tuple(forget.shape[1:])} "
            f"and {tuple(retain.shape[1:])}"
        )
    if forget.device != retain.device:
        raise ValueError("forget and retain must be on the same device")
    if forget.dtype != retain.dtype:  # was converted silently (a float64 retain lost digits)
        raise TypeError(
            f"forget and retain must have the same dtype, got {forget.dtype} and {retain.dtype}"
        )
    if retain_labels is not None:
        if not isinstance(retain_labels, Tensor):
            raise TypeError(f"'retain_labels' must be a Tensor, got {type(retain_labels).__name__}")
        if retain_labels.shape != (retain.shape[0],) or retain_labels.is_floating_point() \
                or retain_labels.is_complex() or retain_labels.dtype == torch.bool:
            raise ValueError(
                f"'retain_labels' must be an integer tensor of shape [{retain.shape[0]}], "
                f"got {retain_labels.dtype} {tuple(retain_labels.shape)}"
            )
    retain_fraction = check_fraction("retain_fraction", retain_fraction)
    if n_generated is not None:
        n_generated = check_count("n_generated", n_generated)
    if tail_randomized is not None:
        tail_randomized = check_count("tail_randomized", tail_randomized, 0)
    local_variance = check_real("local_variance", local_variance)
    p = check_fraction("p", p, allow_zero=True)
    eps = check_real("eps", eps)
    size_multiplier = check_count("size_multiplier", size_multiplier)
    chunk_size = check_count("chunk_size", chunk_size)
    convex_combination = check_flag("convex_combination", convex_combination)
    return_weights = check_flag("return_weights", return_weights)
    seed = check_signed_seed("seed", seed)

    from ..ops.knn import farthest_k  # loads the compiled op library on first use

    device = forget.device
    dtype = forget.dtype if forget.dtype in (torch.float32, torch.float64) else torch.float32
    sample_shape = tuple(forget.shape[1:])
    Q = forget.reshape(forget.shape[0], -1).to(dtype)
    R_all = retain.reshape(retain.shape[0], -1).to(dtype)

    cpu_gen = torch.Generator().manual_seed(seed)
    if retain_fraction < 1.0:
        if retain_labels is not None:
            pool_idx = class_subset(retain_labels.cpu(), retain_fraction, cpu_gen)
        else:
            n_keep = max(1, int(round(retain_fraction * R_all.shape[0])))
            pool_idx = torch.sort(torch.randperm(R_all.shape[0], generator=cpu_gen)[:n_keep]).values
    else:
        pool_idx = torch.arange(R_all.shape[0])
    R = R_all[pool_idx.to(device)]
    k = min(tail_randomized or 1, R.shape[0])

    gen = torch.Generator(device=device).manual_seed(offset_seed(seed, 1))
    _sync(device)
    t0 = time.perf_counter()
    far_d, far_i = farthest_k(Q.contiguous(), R.contiguous(), k)
    _sync(device)
    t1 = time.perf_counter()

    m = Q.shape[0]
    pools, sources, neigh, neigh_d = [], [], [], []
    rows = torch.arange(m, device=device)
    for _ in range(size_multiplier):
        pick = torch.randint(0, k, (m,), device=device, generator=gen)
        j = far_i[rows, pick]
        xr = R[j]
        sigma = ((Q - xr).abs() + eps) * local_variance
        s = xr + sigma * torch.randn(xr.shape, device=device, dtype=dtype, generator=gen)
        keep = torch.rand(xr.shape, device=device, dtype=dtype, generator=gen) < p
        pools.append(torch.where(keep, s, xr))
        sources.append(rows)
        neigh.append(j)
        neigh_d.append(far_d[rows, pick])
    A = torch.cat(pools)
    neighbours = pool_idx.to(device)[torch.cat(neigh)]

    weights = None
    if convex_combination:
        G = A.shape[0] if n_generated is None else n_generated
        out = torch.empty((G, A.shape[1]), device=device, dtype=dtype)
        kept: list[Tensor] | None = [] if return_weights else None
        for start in range(0, G, chunk_size):
            rows_w = min(chunk_size, G - start)
            W = torch.randn((rows_w, A.shape[0]), device=device, dtype=dtype, generator=gen)
            W = torch.softmax(W, dim=1)
            out[start : start + rows_w] = W @ A
            if kept is not None:
                kept.append(W)
        if kept is not None:
            weights = torch.cat(kept)
    elif n_generated is not None:
        out = A[torch.randint(0, A.shape[0], (n_generated,), device=device, generator=gen)]
    else:
        out = A
    _sync(device)
    t2 = time.perf_counter()

    return AntiSamples(
        samples=out.reshape(-1, *sample_shape),
        pool=A.reshape(-1, *sample_shape),
        source=torch.cat(sources),
        neighbours=neighbours,
        neighbour_sq_dist=torch.cat(neigh_d),
        neighbour_labels=None if retain_labels is None else retain_labels.to(device)[neighbours],
        weights=weights,
        pool_indices=pool_idx,
        times={"distance_s": t1 - t0, "generation_s": t2 - t1},
    )


@dataclass
class AntiSampleConfig(ForgetConfig):
    """Anti-sample unlearning settings (defaults: ResNet18 / CIFAR-10, Unlearning-30).

    Attributes:
        epochs: Fine-tuning epochs on anti-samples + retain subset.
        lr: Base Adam learning rate (1e-3); the rate used is ``lr * lr_scale``.
        batch_size: Fine-tuning batch size.
        momentum: Unused (Adam).
        weight_decay: Adam weight decay (0 in the paper).
        lr_scale: The published ``unlearn_scale_lr``.
        retain_fraction: Share of every retain class used (0.3: Unlearning-30, 1.0:
            Unlearning-100) for fine-tuning and, single-class, as the neighbour pool.
        tail_randomized: Neighbour drawn among this many farthest (``None``: farthest).
        local_variance: Multiplier of the per-coordinate standard deviation.
        p: Probability of taking the Gaussian draw per coordinate.
        eps: Added to ``|x_f - x_r|`` in the standard deviation.
        size_multiplier: Pool samples per forget sample.
        n_generated: Anti-samples per forget class; ``None``: the mean per-class count of
            the retain subset (1500 for CIFAR-10 U-30, 5000 for U-100).
        convex_combination: Mix the pool with softmax(W) weights.

    """

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    lr_scale: float = 1.6
    retain_fraction: float = 0.3
    tail_randomized: int | None = 20
    local_variance: float = 1.0
    p: float = 0.95
    eps: float = 0.01
    size_multiplier: int = 1
    n_generated: int | None = None
    convex_combination: bool = True

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = {
        "momentum": "(anti-sample fine-tuning trains with Adam, at its default betas)"}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lr_scale = check_real("lr_scale", self.lr_scale, positive=True)
        self.retain_fraction = check_fraction("retain_fraction", self.retain_fraction)
        if self.tail_randomized is not None:
            self.tail_randomized = check_count("tail_randomized", self.tail_randomized, 0)
        self.local_variance = check_real("local_variance", self.local_variance)
        self.p = check_fraction("p", self.p, allow_zero=True)
        self.eps = check_real("eps", self.eps)
        self.size_multiplier = check_count("size_multiplier", self.size_multiplier)
        if self.n_generated is not None:
            self.n_generated = check_count("n_generated", self.n_generated)
        self.convex_combination = check_flag("convex_combination", self.convex_combination)
        self._warn_settings()

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the base class's warnings and the Gaussian draw's with ``p=0``."""
        out = super().conditional_warnings(given)
        names = self._set_fields(("local_variance", "eps"), given) if self.p == 0 else []
        if names:
            out.append(no_effect_message(names, "with p=0 (the Gaussian draw is never taken: "
                                         "each coordinate is the neighbour's)"))
        return out


def _preset(scale: float, retain_fraction: float, *, lv: float = 1.0, p: float = 0.95,
            tail: int = 20, n: int | None = None) -> AntiSampleConfig:
    return AntiSampleConfig(lr_scale=scale, retain_fraction=retain_fraction, local_variance=lv,
                            p=p, tail_randomized=tail, n_generated=n)


#: Published settings (``config_munge.py`` of the PReMI code; the last two from its demo
#: notebooks): ``"<model>-<dataset>-u30"`` / ``"-u100"`` -> config. Use
#: :func:`antisample_preset` to get a fresh copy with overrides.
ANTISAMPLE_PRESETS: dict[str, AntiSampleConfig] = {
    "resnet18-cifar10-u30": _preset(1.6, 0.3),
    "resnet18-cifar10-u100": _preset(1.4, 1.0),
    "resnet18-fashionmnist-u30": _preset(2.0, 0.3),
    "resnet18-fashionmnist-u100": _preset(1.7, 1.0),
    "resnet18-mnist-u30": _preset(1.4, 0.3),
    "resnet18-mnist-u100": _preset(2.0, 1.0),
    "resnet18-svhn-u30": _preset(1.6, 0.3),
    "resnet18-svhn-u100": _preset(1.4, 1.0),
    "resnet18-casia-webface-u30": _preset(5.0, 0.3, lv=10.0, p=0.95),
    "resnet18-casia-webface-u100": _preset(4.8, 1.0, lv=10.0, p=0.85),
    "resnet9-cifar10-u30": _preset(2.0, 0.3),
    "resnet9-cifar10-u100": _preset(1.6, 1.0),
    "allcnn-cifar10-u30": _preset(1.5, 0.3),
    "allcnn-cifar10-u100": _preset(1.2, 1.0),
    "mobilenet_v2-cifar10-u30": _preset(1.3, 0.3),
    "mobilenet_v2-cifar10-u100": _preset(1.1, 1.0),
    "notebook-u30": _preset(2.2, 0.3, lv=5.0, tail=20, n=500),
    "notebook-u100": _preset(2.5, 1.0, lv=1.0, tail=50, n=1500),
}


def antisample_preset(name: str, **overrides: Any) -> AntiSampleConfig:
    """Return a fresh copy of the preset ``name`` with ``overrides`` applied.

    Raises:
        TypeError: If ``name`` is not a str.
        ValueError: If ``name`` is not in :data:`ANTISAMPLE_PRESETS` (the message lists them).

    """
    if not isinstance(name, str):
        raise TypeError(f"'name' must be a str, got {type(name).__name__}")
    if name not in ANTISAMPLE_PRESETS:
        known = ", ".join(ANTISAMPLE_PRESETS)
        raise ValueError(f"unknown anti-sample preset {name!r}; known: {known}")
    return dataclasses.replace(ANTISAMPLE_PRESETS[name], **overrides)


def _unlearn(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: AntiSampleConfig,
    *, single: bool,
) -> nn.Module:
    forget_ds, retain_ds, n_classes = prepare_inputs(
        model, config, AntiSampleConfig, forget_ds, retain_ds
    )
    xf, yf = checked_tensors(forget_ds, n_classes, "forget")
    xr, yr = checked_tensors(retain_ds, n_classes, "retain")
    if xf.shape[1:] != xr.shape[1:]:
        raise ValueError(
            f"forget and retain inputs differ in shape: {tuple(xf.shape[1:])} "
            f"vs {tuple(xr.shape[1:])}"
        )
    check_float_inputs(model, xr, "antisamples" if single else "antisamples_multiclass",
                       "it trains on anti-samples interpolated between inputs")
    classes = torch.unique(yf).tolist()
    if single:
        check_single_class(classes)
    check_adam_dtype(model, "antisamples" if single else "antisamples_multiclass")
    new = clone_model(model)
    # the inputs the model trains on keep the data's floating dtype (integer data: the
    # model's); the neighbour search and mixing run in float32 (float64 for float64 data)
    train_dtype = float_input_dtype(model, xr)
    dtype = torch.float64 if train_dtype == torch.float64 else torch.float32
    device = model_device(new)

    gen = torch.Generator().manual_seed(config.seed)
    sub = class_subset(yr, config.retain_fraction, gen)
    xr_sub, yr_sub = xr[sub].to(dtype), yr[sub]
    per_class = int(round(sub.numel() / max(1, torch.unique(yr_sub).numel())))
    n_gen = config.n_generated if config.n_generated is not None else per_class
    if config.epochs > 0:  # at least one anti-sample per class joins the retain subset
        n_train = sub.numel() + len(classes)
        check_single_batches(
            new, xr_sub[:1].to(train_dtype),
            [TrainingData("anti-samples + retain subset", n_train, "batch_size",
                          config.batch_size)],
        )

    anti_x, anti_y = [], []
    for i, c in enumerate(iterate(classes, progress=config.progress, desc="anti-samples")):
        # single-class: the other classes of the retain subset; multi-class: the whole
        # retain set (as in the published scripts)
        pool = xr_sub[yr_sub != c] if single else xr.to(dtype)
        if pool.shape[0] == 0:
            raise ValueError(f"the retain set has no samples outside forget class {c}")
        result = generate_antisamples(
            xf[yf == c].to(dtype).to(device),
            pool.to(device),
            retain_fraction=1.0,
            n_generated=n_gen,
            tail_randomized=config.tail_randomized,
            local_variance=config.local_variance,
            p=config.p,
            eps=config.eps,
            size_multiplier=config.size_multiplier,
            convex_combination=config.convex_combination,
            seed=offset_seed(config.seed, 7919 * (i + 1)),
        )
        anti_x.append(result.samples.cpu())
        anti_y.append(torch.full((result.samples.shape[0],), int(c), dtype=torch.long))

    inputs = torch.cat([*anti_x, xr_sub]).to(train_dtype)  # bf16/fp16 data: back to it
    labels = torch.cat([*anti_y, yr_sub])
    opt = torch.optim.Adam(new.parameters(), lr=config.lr * config.lr_scale,
                           weight_decay=config.weight_decay)
    train_ce(
        new, inputs, labels, opt, epochs=config.epochs, batch_size=config.batch_size,
        seed=config.seed, progress=config.progress, desc="anti-sample fine-tune",
    )
    return new.eval()



def check_single_class(classes: list[int]) -> None:
    """Raise ValueError unless the forget set's ``classes`` are one class (``antisamples``)."""
    if len(classes) != 1:
        raise ValueError(
            f"antisamples (single-class) needs a forget set of one class, got classes {classes}; "
            "use 'antisamples_multiclass'"
        )

@register("antisamples", AntiSampleConfig)
def antisamples_single_class(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: AntiSampleConfig
) -> nn.Module:
    """Forget one class with anti-samples drawn far into the *other* classes.

    Args:
        model: The trained model; left unchanged.
        forget_ds: The forget set; all of one class ``c``.
        retain_ds: The retain set; ``retain_fraction`` of every class is used.
        config: An :class:`AntiSampleConfig` (see :data:`ANTISAMPLE_PRESETS`).

    Returns:
        The fine-tuned model.

    Raises:
        ValueError: If the forget set holds more than one class.
        TypeError: If the inputs are not floating-point and the model does not run on
            them as floats (token ids for an ``nn.Embedding``): anti-samples are
            interpolated inputs (checked before any work), or ``model`` has float16
            parameters (Adam's state underflows in half precision; bfloat16 trains).

    """
    return _unlearn(model, forget_ds, retain_ds, config, single=True)


@register("antisamples_multiclass", AntiSampleConfig)
def antisamples_multi_class(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: AntiSampleConfig
) -> nn.Module:
    """Forget several classes (or samples): anti-samples of each class from the whole retain pool.

    For each class ``c`` in the forget set, the forget samples of ``c`` are matched against
    the whole retain set (not only the ``retain_fraction`` subset, as in the published
    multi-class script) and their ``n_generated`` anti-samples are labelled ``c``; one
    fine-tune then uses all anti-samples and the retain subset.

    Args:
        model: The trained model; left unchanged.
        forget_ds: The forget set (any number of classes).
        retain_ds: The retain set; ``retain_fraction`` of every class is used.
        config: An :class:`AntiSampleConfig`.

    Returns:
        The fine-tuned model.

    Raises:
        TypeError: As :func:`antisamples_single_class` (non-float inputs the model does
            not run on as floats, or a float16 model).

    """
    return _unlearn(model, forget_ds, retain_ds, config, single=False)
