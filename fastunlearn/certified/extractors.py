"""Feature extractors for certified removal: DP, adversarial and standard training.

Certified removal (Guo et al., ICML 2020) certifies a *linear* model. On images it is
applied to features of a network trained beforehand. The network is trained on the same
data, so it also remembers the points that are later removed, and the guarantee of the whole
pipeline depends on how it was trained:

- :func:`train_dp_extractor`: DP-SGD through Opacus (Poisson sampling, per-example
  clipping, Gaussian noise, RDP accountant). The extractor is
  ``(epsilon_DP, delta_DP)``-DP, and :func:`compose_privacy` gives the guarantee of
  extractor + certified head after ``k`` removals (group privacy).
- :func:`train_adversarial_extractor`: FGSM with a random start (Wong, Rice & Kolter,
  "Fast is better than free", ICLR 2020) or PGD (Madry et al., ICLR 2018) adversarial
  training; robust features, but **no privacy guarantee** for the extractor.
- :func:`train_standard_extractor`: plain cross-entropy training, no guarantee either.

:func:`extract_features` turns a trained model into float64 feature matrices, and
:func:`save_features`/:func:`load_features` store them in safetensors under the name
:func:`fastunlearn.data.extracted_features_path` gives, where
:func:`fastunlearn.data.load_features_or_pixels` finds them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .._equality import dataclass_eq
from .._numbers import check_fraction, check_int, check_real
from ..data.vision import load_features, save_features
from ..epoch_state import EpochState

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DP_ORDERS",
    "ComposedPrivacy",
    "compose_privacy",
    "dp_epsilon",
    "extract_features",
    "fgsm_attack",
    "load_features",
    "pgd_attack",
    "save_features",
    "supported_removals",
    "train_adversarial_extractor",
    "train_dp_extractor",
    "train_standard_extractor",
]

#: Renyi orders searched when converting RDP to (epsilon, delta): Opacus' defaults plus the
#: reference's grid (1.25..4.5, 5..63, 128..4096), so small sampling rates and long runs
#: find their best order.
DP_ORDERS: tuple[float, ...] = tuple(
    sorted(
        {1 + x / 10.0 for x in range(1, 100)}
        | {float(a) for a in range(12, 64)}
        | {1 + x / 4.0 for x in range(1, 15)}
        | {float(a) for a in range(5, 64)}
        | {float(2**p) for p in range(7, 13)}
    )
)

Device = str | torch.device
Batch = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------




@contextlib.contextmanager
def _activations_out_of_place(model: nn.Module) -> Iterator[None]:
    """Turn off ``inplace`` of every activation and dropout of ``model``; restore on exit.

    Opacus hooks each trainable layer with a full backward hook, and autograd forbids
    modifying such a layer's output in place, which ``ReLU(inplace=True)`` after a
    convolution or norm layer does. The results are the same either way.
    """
    flipped = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    for module in flipped:
        setattr(module, "inplace", False)  # noqa: B010 (nn.Module types attributes as Tensor)
    try:
        yield
    finally:
        for module in flipped:
            setattr(module, "inplace", True)  # noqa: B010


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_range(input_range: object) -> tuple[float, float] | None:
    if input_range is None:
        return None
    if not isinstance(input_range, (tuple, list)) or len(input_range) != 2:
        raise ValueError(f"'input_range' must be (low, high) or None, got {input_range!r}")
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"'input_range' must hold two numbers (low, high), got {input_range!r}"
        ) from None
    if not low < high:
        raise ValueError(f"'input_range' must have low < high, got {input_range!r}")
    return low, high


# ---------------------------------------------------------------------------------------
# training loops
# ---------------------------------------------------------------------------------------


def _run_epochs(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    device: torch.device,
    progress: bool,
    desc: str,
    perturb: Callable[[Tensor, Tensor], Tensor] | None = None,
    epoch_state: EpochState | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    restore_extra: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Minimise mean cross-entropy over ``epochs`` passes of ``loader``.

    With ``epoch_state``, training starts after the epochs saved there (``restore_extra``
    gets what ``extra_state`` returned when they were saved), the state is saved after every
    epoch and the file is removed at the end.
    """
    model.train()
    start = 0
    if epoch_state is not None:
        start = epoch_state.load(
            model, optimizer, epochs=epochs, device=device, loader=loader,
            restore_extra=restore_extra,
        )  # fmt: skip
    for epoch in range(start, epochs):
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if perturb is not None:
                x = perturb(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if x.shape[0] > 0:  # Poisson sampling can draw an empty batch (loss is NaN)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if epoch_state is not None:
            optimizer.zero_grad(set_to_none=True)  # gradients are not part of the state
            epoch_state.save(
                epoch + 1, model, optimizer, device=device, loader=loader,
                extra=extra_state() if extra_state is not None else None,
            )  # fmt: skip
    optimizer.zero_grad(set_to_none=True)  # free the last gradients
    if epoch_state is not None:
        epoch_state.remove()


def _epoch_state(
    path: str | os.PathLike[str] | None,
    kind: str,
    model: nn.Module,
    loader: Iterable[Batch],
    **settings: Any,
) -> EpochState | None:
    """Return the epoch-state file of a run, or None; checked before any training."""
    if path is None:
        return None
    batches = len(loader) if isinstance(loader, Sized) else None
    dataset = getattr(loader, "dataset", None)
    examples = len(dataset) if isinstance(dataset, Sized) else None
    return EpochState.for_run(
        path, dict(kind=kind, batches=batches, examples=examples, **settings), model
    )


def train_standard_extractor(
    model: nn.Module,
    train_loader: Iterable[Batch],
    *,
    epochs: int | np.integer = 10,
    lr: float | np.floating = 1e-3,
    weight_decay: float | np.floating = 0.0,
    device: Device = "cpu",
    progress: bool = True,
    epoch_checkpoint: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Train a classifier with Adam on cross-entropy (no privacy, no robustness).

    Args:
        model: A classifier returning logits, e.g. from :mod:`fastunlearn.models`.
        train_loader: Yields ``(inputs, int labels)`` batches.
        epochs: Passes over the data.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (the reference's ``--lam``, 0 by default).
        device: Where to train.
        progress: Show a tqdm bar per epoch.
        epoch_checkpoint: A file for the state after each finished epoch (weights,
            optimizer, random states), or None. If it exists, training resumes after
            the epochs it holds, ending as an uninterrupted run would (same settings,
            initial weights and device); it is removed when training finishes. See
            :mod:`fastunlearn.epoch_state`.

    Returns:
        The trained ``model`` (same object, on ``device``, in eval mode).

    Raises:
        ValueError: If ``epochs`` < 1 or ``lr``/``weight_decay`` are out of range.
        ValueError: If ``epoch_checkpoint`` holds another run's state (other settings or
            initial weights) or is not an epoch state; it is left as it is.
        TypeError: If ``model`` is not an ``nn.Module``.

    """
    model = _check_model(model)
    epochs = check_int("epochs", epochs, 1)
    lr = check_real("lr", lr, positive=True)
    weight_decay = check_real("weight_decay", weight_decay)
    state = _epoch_state(epoch_checkpoint, "standard", model, train_loader, lr=lr,
                         weight_decay=weight_decay)
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    _run_epochs(
        model, train_loader, optimizer, epochs=epochs, device=device, progress=progress,
        desc="train epoch", epoch_state=state,
    )  # fmt: skip
    return model.eval()


def dp_epsilon(
    noise_multiplier: float | np.floating,
    sample_rate: float | np.floating,
    steps: int | np.integer,
    delta: float | np.floating,
    orders: Sequence[float] = DP_ORDERS,
) -> float:
    """Return the epsilon of ``steps`` Poisson-subsampled Gaussian steps (RDP accountant).

    Useful to choose ``noise_multiplier`` before training: the reference's SVHN setting
    (sample rate 500 / 604,388, 20 epochs, noise 6, delta 1e-5) gives about 0.075.

    Args:
        noise_multiplier: Noise standard deviation over the clipping norm.
        sample_rate: Probability that an example is in a batch (batch size / n).
        steps: Number of noisy steps.
        delta: Target delta in (0, 1).
        orders: Renyi orders searched.

    Returns:
        The smallest epsilon over ``orders``.

    Raises:
        ValueError: If an argument is out of range.

    """
    from opacus.accountants.analysis import rdp

    noise_multiplier = check_real("noise_multiplier", noise_multiplier, positive=True)
    sample_rate = check_fraction("sample_rate", sample_rate, one=True)
    steps = check_int("steps", steps, 0)
    delta = check_fraction("delta", delta)
    if steps == 0:
        return 0.0
    values = rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(orders)
    )
    epsilon, _ = rdp.get_privacy_spent(orders=list(orders), rdp=values, delta=delta)
    return float(epsilon)


def train_dp_extractor(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    *,
    epochs: int | np.integer = 20,
    lr: float | np.floating = 1e-3,
    noise_multiplier: float | np.floating = 6.0,
    max_grad_norm: float | np.floating = 4.0,
    delta: float | np.floating = 1e-5,
    weight_decay: float | np.floating = 0.0,
    device: Device = "cpu",
    progress: bool = True,
    epoch_checkpoint: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, float]:
    """Train a feature extractor with DP-SGD (Opacus) and return it with its epsilon.

    Defaults are the reference's SVHN recipe (``train_svhn.py``): Adam with lr 1e-3, 20
    epochs, clipping norm C = 4, noise multiplier 6, delta 1e-5 (batch 500 is the loader's
    batch size). Differences, both on the safe side: Opacus samples batches by Poisson
    sampling (expected size = the loader's batch size), which the RDP analysis assumes and
    the reference's shuffled fixed-size batches do not satisfy; and every parameter,
    the linear head included, is trained privately (the reference's ``full_private``
    mode). Per-example gradients are clipped to ``max_grad_norm``, summed, noised with
    ``N(0, (noise_multiplier * max_grad_norm)^2)`` and divided by the expected batch size.

    For reproducible noise and sampling, seed torch's global RNG first.

    Args:
        model: A model without BatchNorm (e.g. ``fastunlearn.models.svhn_dp_extractor``);
            it is trained in place.
        train_loader: A ``DataLoader`` of ``(inputs, int labels)``; Opacus samples each
            example with probability ``1 / len(train_loader)`` (``batch_size / len(dataset)``
            when the batch size divides the data set) for ``len(train_loader)`` steps an
            epoch, and the accountant uses the same rate.
        epochs: Passes over the data (each ``len(train_loader)`` noisy steps).
        lr: Adam learning rate.
        noise_multiplier: Noise standard deviation over the clipping norm, > 0.
        max_grad_norm: Per-example clipping norm C, > 0.
        delta: Target delta of the reported epsilon, in (0, 1).
        weight_decay: Adam weight decay (reference ``--lam`` 0).
        device: Where to train.
        progress: Show a tqdm bar per epoch.
        epoch_checkpoint: A file for the state after each finished epoch (weights,
            optimizer, random states, the accountant's history), or None. If it exists,
            training resumes after the epochs it holds, ending with the model and epsilon
            of an uninterrupted run (same settings, initial weights and device); it is
            removed when training finishes. See
            :mod:`fastunlearn.epoch_state`.

    Returns:
        ``(model, epsilon)``: the trained model (the same object, Opacus hooks removed, in
        eval mode) and the epsilon of the whole training at ``delta`` from Opacus' RDP
        accountant over :data:`DP_ORDERS`.

    Raises:
        ValueError: If an argument is out of range (the message names it) or ``model``
            contains a layer DP-SGD cannot train (BatchNorm).
        TypeError: If ``model`` is not an ``nn.Module`` or ``train_loader`` not a
            ``DataLoader``.
        ValueError: Also if ``epoch_checkpoint`` holds another run's state (other settings or
            initial weights) or is not an epoch state; it is left as it is.

    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    model = _check_model(model)
    if not isinstance(train_loader, torch.utils.data.DataLoader):
        raise TypeError(
            f"'train_loader' must be a torch DataLoader, got {type(train_loader).__name__}"
        )
    epochs = check_int("epochs", epochs, 1)
    lr = check_real("lr", lr, positive=True)
    noise_multiplier = check_real("noise_multiplier", noise_multiplier, positive=True)
    max_grad_norm = check_real("max_grad_norm", max_grad_norm, positive=True)
    delta = check_fraction("delta", delta)
    weight_decay = check_real("weight_decay", weight_decay)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        first = str(errors[0]).split(".")[0]
        raise ValueError(
            f"'model' cannot be trained with DP-SGD ({len(errors)} problem(s); first: "
            f"{first}). Use GroupNorm instead of BatchNorm, e.g. norm='group'."
        )
    state = _epoch_state(epoch_checkpoint, "dp", model, train_loader, lr=lr,
                         weight_decay=weight_decay, noise_multiplier=noise_multiplier,
                         max_grad_norm=max_grad_norm)

    device = torch.device(device)
    model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    engine = PrivacyEngine(accountant="rdp")
    with _activations_out_of_place(model):
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=train_loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
        )
        try:
            with warnings.catch_warnings():
                # Opacus' hooks on the first layer fire on outputs because inputs need no
                # gradient: harmless, and printed once per module per step otherwise
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                _run_epochs(
                    private_model, private_loader, private_optimizer, epochs=epochs,
                    device=device, progress=progress, desc="dp epoch", epoch_state=state,
                    extra_state=lambda: {"accountant_history": _history(engine)},
                    restore_extra=lambda extra: _restore_history(engine, extra),
                )  # fmt: skip
        finally:
            private_model.to_standard_module()  # removes the per-sample-gradient hooks
    epsilon = engine.accountant.get_epsilon(delta=delta, alphas=list(DP_ORDERS))
    return model.eval(), float(epsilon)


def _history(engine: Any) -> list[list[float]]:
    """Return the RDP accountant's steps as ``[noise_multiplier, sample_rate, steps]`` rows."""
    return [[float(noise), float(rate), int(steps)] for noise, rate, steps in
            engine.accountant.history]


def _restore_history(engine: Any, extra: dict[str, Any]) -> None:
    rows = extra.get("accountant_history")
    if not isinstance(rows, list):
        raise ValueError("'epoch_checkpoint' holds no DP accountant history: remove it to "
                         "start over")
    engine.accountant.history = [(float(a), float(b), int(c)) for a, b, c in rows]


# ---------------------------------------------------------------------------------------
# adversarial training
# ---------------------------------------------------------------------------------------


def _attack_checks(
    model: object, epsilon: object, alpha: object, input_range: object
) -> tuple[float, float | None, tuple[float, float] | None]:
    _check_model(model)
    eps = check_real("epsilon", epsilon, positive=True)
    step = None if alpha is None else check_real("alpha", alpha, positive=True)
    return eps, step, _check_range(input_range)


def _project(
    x: Tensor, x_adv: Tensor, epsilon: float, input_range: tuple[float, float] | None
) -> Tensor:
    """Closest point of the L-inf ball around ``x`` (intersected with the valid range)."""
    x_adv = torch.max(torch.min(x_adv, x + epsilon), x - epsilon)
    if input_range is not None:
        x_adv = x_adv.clamp(*input_range)
    return x_adv


def _input_gradient(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    """Gradient of the mean cross-entropy w.r.t. the inputs only (no parameter grads)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def _random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """Return a uniform point of the L-inf ball of radius ``eps`` around ``x``.

    Drawn from ``generator`` when given (the caller's global RNG is then left alone), else
    from torch's global RNG. A ``generator`` that is not a ``torch.Generator`` raises
    TypeError.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"'generator' must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    return x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)


def fgsm_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float | np.floating = 8 / 255,
    alpha: float | np.floating | None = None,
    random_start: bool = True,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """One signed-gradient ascent step on the cross-entropy, inside an L-inf ball.

    With ``random_start`` (Wong et al. 2020) the step starts from a uniform point of the
    ball and has size ``alpha = 1.25 epsilon`` by default, then is projected back; without
    it this is Goodfellow et al.'s FGSM with ``alpha = epsilon``. The model's mode
    (train/eval) is left as it is. The random start is drawn from ``generator``, or from
    torch's global RNG (advancing it) when ``generator`` is None.

    Args:
        model: Classifier returning logits.
        x: Inputs ``[B, ...]``.
        y: Int labels ``[B]``.
        epsilon: Radius of the L-inf ball, in input units (8/255 for [0, 1] images).
        alpha: Step size; default ``1.25 * epsilon`` (random start) or ``epsilon``.
        random_start: Start from a uniform random point of the ball.
        input_range: ``(low, high)`` the adversarial inputs are clamped to, or ``None``.
        generator: Generator of the random start, on ``x``'s device (None: the global RNG).

    Returns:
        Adversarial inputs, detached, with ``|x_adv - x|_inf <= epsilon``.

    Raises:
        ValueError: If ``epsilon``/``alpha`` are not positive or ``input_range`` is bad.

    """
    eps, step, valid = _attack_checks(model, epsilon, alpha, input_range)
    x = x.detach()
    if step is None:
        step = 1.25 * eps if random_start else eps
    start = _random_start(x, eps, generator) if random_start else x
    start = _project(x, start, eps, valid)
    x_adv = start + step * _input_gradient(model, start, y).sign()
    return _project(x, x_adv, eps, valid).detach()


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float | np.floating = 8 / 255,
    alpha: float | np.floating | None = None,
    steps: int | np.integer = 10,
    random_start: bool = True,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy inside an L-inf ball (Madry et al.).

    The random start is drawn from ``generator``, or from torch's global RNG (advancing it)
    when ``generator`` is None.

    Args:
        model: Classifier returning logits (its mode is left as it is).
        x: Inputs ``[B, ...]``.
        y: Int labels ``[B]``.
        epsilon: Radius of the L-inf ball, in input units.
        alpha: Step size; default ``2.5 * epsilon / steps`` (enough to cross the ball).
        steps: Number of signed-gradient steps, >= 1.
        random_start: Start from a uniform random point of the ball.
        input_range: ``(low, high)`` the adversarial inputs are clamped to, or ``None``.
        generator: Generator of the random start, on ``x``'s device (None: the global RNG).

    Returns:
        Adversarial inputs, detached, with ``|x_adv - x|_inf <= epsilon``.

    Raises:
        ValueError: If ``epsilon``/``alpha`` are not positive, ``steps`` < 1 or
            ``input_range`` is bad.

    """
    eps, step, valid = _attack_checks(model, epsilon, alpha, input_range)
    steps = check_int("steps", steps, 1)
    if step is None:
        step = 2.5 * eps / steps
    x = x.detach()
    x_adv = _random_start(x, eps, generator) if random_start else x
    x_adv = _project(x, x_adv, eps, valid)
    for _ in range(steps):
        x_adv = _project(x, x_adv + step * _input_gradient(model, x_adv, y).sign(), eps, valid)
    return x_adv.detach()


_ATTACKS = ("fgsm", "pgd")


def train_adversarial_extractor(
    model: nn.Module,
    train_loader: Iterable[Batch],
    *,
    attack: str = "fgsm",
    epsilon: float | np.floating = 8 / 255,
    alpha: float | np.floating | None = None,
    steps: int | np.integer = 10,
    epochs: int | np.integer = 10,
    lr: float | np.floating = 1e-3,
    weight_decay: float | np.floating = 0.0,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    device: Device = "cpu",
    progress: bool = True,
    epoch_checkpoint: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Adversarial training: minimise the cross-entropy on attacked inputs.

    Each batch is replaced by its attacked version (computed with the model in train mode,
    as in Wong et al.) before the Adam step. ``"fgsm"`` is FGSM with a random start and step
    ``1.25 epsilon`` ("fast is better than free", about the cost of two standard epochs);
    ``"pgd"`` runs ``steps`` projected steps (about ``steps + 1`` times the cost). The
    issue's reference run uses ``resnet34`` (:func:`fastunlearn.models.resnet_cifar`), Adam
    lr 0.001 and batch size 64. The result has no privacy guarantee. The attacks' random
    starts draw from torch's global RNG: for a reproducible run, seed it first.

    Args:
        model: Classifier returning logits; trained in place.
        train_loader: Yields ``(inputs, int labels)``; inputs in ``input_range`` (apply any
            normalisation inside the model so ``epsilon`` is in pixel units).
        attack: ``"fgsm"`` or ``"pgd"``.
        epsilon: L-inf radius (8/255 for [0, 1] images).
        alpha: Attack step size (default: see :func:`fgsm_attack` / :func:`pgd_attack`).
        steps: PGD steps (ignored by FGSM).
        epochs: Passes over the data.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        input_range: Valid input range the attacks clamp to, or ``None``.
        device: Where to train.
        progress: Show a tqdm bar per epoch.
        epoch_checkpoint: A file for the state after each finished epoch (weights,
            optimizer, random states), or None. If it exists, training resumes after
            the epochs it holds, ending as an uninterrupted run would (same settings,
            initial weights and device); it is removed when training finishes. See
            :mod:`fastunlearn.epoch_state`.

    Returns:
        The trained ``model`` (same object, on ``device``, in eval mode).

    Raises:
        ValueError: If ``attack`` is unknown or a number is out of range (names the arg).
        ValueError: If ``epoch_checkpoint`` holds another run's state (other settings or
            initial weights) or is not an epoch state; it is left as it is.
        TypeError: If ``model`` is not an ``nn.Module``.

    """
    if attack not in _ATTACKS:
        raise ValueError(f"'attack' must be one of {_ATTACKS}, got {attack!r}")
    eps, step, valid = _attack_checks(model, epsilon, alpha, input_range)
    steps = check_int("steps", steps, 1)
    epochs = check_int("epochs", epochs, 1)
    lr = check_real("lr", lr, positive=True)
    weight_decay = check_real("weight_decay", weight_decay)

    def perturb(x: Tensor, y: Tensor) -> Tensor:
        if attack == "fgsm":
            return fgsm_attack(model, x, y, epsilon=eps, alpha=step, input_range=valid)
        return pgd_attack(model, x, y, epsilon=eps, alpha=step, steps=steps, input_range=valid)

    state = _epoch_state(epoch_checkpoint, "adversarial", model, train_loader, lr=lr,
                         weight_decay=weight_decay, attack=attack, epsilon=eps, alpha=step,
                         steps=steps if attack == "pgd" else None,
                         input_range=list(valid) if valid is not None else None)
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    _run_epochs(
        model, train_loader, optimizer, epochs=epochs, device=device, progress=progress,
        desc=f"{attack} epoch", perturb=perturb, epoch_state=state,
    )  # fmt: skip
    return model.eval()


# ---------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------


def extract_features(
    model: nn.Module,
    loader: Iterable[Batch],
    device: Device = "cpu",
    *,
    feature_fn: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run the backbone over a loader and collect float64 features and labels.

    Args:
        model: A :class:`fastunlearn.models.FeatureClassifier` (its ``extract`` method is
            used) or any module when ``feature_fn`` is given.
        loader: Yields ``(inputs, int labels)`` in a fixed order (do not shuffle: rows must
            match the data set's order for removals by index).
        device: Where to run the model (it is moved there, and stays there afterwards).
        feature_fn: Maps an input batch to features; default ``model.extract``.
        progress: Show a tqdm bar.

    Returns:
        ``(features, labels)``: float64 ``[n, f]`` (outputs flattened per example) and int64
        ``[n]``, on the CPU. The model's train/eval mode is restored afterwards.

    Raises:
        TypeError: If ``model`` has no ``extract`` method and no ``feature_fn`` is given.

    """
    model = _check_model(model)
    if feature_fn is None:
        if not callable(getattr(model, "extract", None)):
            raise TypeError("'model' has no extract() method; pass 'feature_fn'")
        feature_fn = cast("Callable[[Tensor], Tensor]", model.extract)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    chunks, labels = [], []
    try:
        with torch.no_grad():
            for x, y in tqdm(loader, desc="extract", disable=not progress, leave=False):
                out = feature_fn(x.to(device))
                chunks.append(out.reshape(out.shape[0], -1).to("cpu", torch.float64))
                labels.append(torch.as_tensor(y).reshape(-1).to("cpu", torch.int64))
    finally:
        model.train(was_training)
    if not chunks:
        dim = int(getattr(model, "feature_dim", 0))
        return torch.empty(0, dim, dtype=torch.float64), torch.empty(0, dtype=torch.int64)
    return torch.cat(chunks), torch.cat(labels)


# ---------------------------------------------------------------------------------------
# composition of the extractor's DP with the head's certified removal
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposedPrivacy:
    """Guarantee of a DP extractor plus a certified-removal head after ``removals``.

    Attributes:
        epsilon: ``removals * epsilon_dp + epsilon_cr``.
        delta: ``removals * exp((removals - 1) * epsilon_dp) * delta_dp + delta_cr``.
        removals: Points removed since the extractor was trained.
        epsilon_extractor: The extractor's share, ``removals * epsilon_dp``.
        delta_extractor: The extractor's share of ``delta``.

    """

    epsilon: float
    delta: float
    removals: int
    epsilon_extractor: float
    delta_extractor: float

    #: a NaN field compares as on Python <= 3.12 (the same object is equal; 3.13's
    #: generated __eq__ compares fields one by one and calls such a record unequal to itself)
    __eq__ = dataclass_eq

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON reports."""
        return asdict(self)


def _group_delta(k: int, epsilon_dp: float, delta_dp: float) -> float:
    """``k exp((k - 1) epsilon_dp) delta_dp``; ``inf`` when it exceeds the float range."""
    if k == 0 or delta_dp == 0.0:
        return 0.0
    try:
        value = k * math.exp((k - 1) * epsilon_dp) * delta_dp
    except OverflowError:
        value = math.inf
    if math.isfinite(value):
        return value
    # exp (or k * exp) overflowed; the product with a tiny delta_dp may still be finite
    log_value = math.log(k) + (k - 1) * epsilon_dp + math.log(delta_dp)
    return math.exp(log_value) if log_value < math.log(sys.float_info.max) else math.inf


def compose_privacy(
    epsilon_dp: float | np.floating,
    delta_dp: float | np.floating,
    epsilon_cr: float | np.floating,
    delta_cr: float | np.floating,
    removals: int | np.integer,
) -> ComposedPrivacy:
    """Compose a DP extractor with a certified-removal head: (epsilon, delta) after k removals.

    Setting (Guo et al. 2020, Section 4; the reference README): an extractor ``phi`` is
    trained once on the full data ``D`` by an ``(epsilon_dp, delta_dp)``-DP algorithm
    (add/remove-one neighbours, as Opacus' accountant reports), and is never retrained; the
    linear head on ``phi``'s features supports ``(epsilon_cr, delta_cr)``-certified removal
    of the whole set ``R`` removed so far (the estimator's cumulative budget). Compared with
    retraining both from scratch on ``D - R``:

    - ``phi`` was trained on ``D``, which differs from ``D - R`` in ``k = |R|`` points. By
      group privacy an ``(e, d)``-DP algorithm is
      ``(k e, k exp((k - 1) e) d)``-DP for groups of ``k`` points;
    - given ``phi`` (post-processing to extract features), the head adds
      ``(epsilon_cr, delta_cr)``; basic composition adds the two.

    Hence ``epsilon = k epsilon_dp + epsilon_cr`` and
    ``delta = k exp((k - 1) epsilon_dp) delta_dp + delta_cr``. ``k`` counts every removal
    since ``phi`` was trained, *including those before a retraining of the head*: retraining
    the head resets its budget but not the extractor's memory. So the extractor limits the
    number of removals (see :func:`supported_removals`): with the reference's
    ``epsilon_dp ~ 0.1`` about 9-10 removals fit in a total epsilon of 1.

    Args:
        epsilon_dp: Extractor's epsilon (>= 0).
        delta_dp: Extractor's delta, in [0, 1).
        epsilon_cr: Head's certified-removal epsilon (> 0).
        delta_cr: Head's certified-removal delta, in [0, 1).
        removals: ``k``, points removed since the extractor was trained (>= 0; 0 gives the
            head's own guarantee).

    Returns:
        A :class:`ComposedPrivacy` (its ``delta`` is ``inf`` when the extractor's share
        exceeds the float range, e.g. ``epsilon_dp = 8`` after 100 removals).

    Raises:
        ValueError: If an argument is out of range (the message names it).

    """
    epsilon_dp = check_real("epsilon_dp", epsilon_dp)
    epsilon_cr = check_real("epsilon_cr", epsilon_cr, positive=True)
    delta_dp = check_fraction("delta_dp", delta_dp, zero=True)
    delta_cr = check_fraction("delta_cr", delta_cr, zero=True)
    k = check_int("removals", removals, 0)
    eps_ext = k * epsilon_dp
    delta_ext = _group_delta(k, epsilon_dp, delta_dp)
    return ComposedPrivacy(
        epsilon=eps_ext + epsilon_cr,
        delta=delta_ext + delta_cr,
        removals=k,
        epsilon_extractor=eps_ext,
        delta_extractor=delta_ext,
    )


def supported_removals(
    target_epsilon: float | np.floating,
    epsilon_dp: float | np.floating,
    epsilon_cr: float | np.floating,
    *,
    target_delta: float | np.floating | None = None,
    delta_dp: float | np.floating = 0.0,
    delta_cr: float | np.floating = 0.0,
) -> int:
    """Return the largest ``k`` whose composed epsilon (and delta) meets the target.

    ``k = floor((target_epsilon - epsilon_cr) / epsilon_dp)``, lowered further while the
    composed delta exceeds ``target_delta`` when one is given. 0 when even one removal does
    not fit (or ``epsilon_cr > target_epsilon``).

    Args:
        target_epsilon: Total epsilon allowed (> 0).
        epsilon_dp: Extractor's epsilon (> 0; an extractor without DP supports none).
        epsilon_cr: Head's certified-removal epsilon (> 0).
        target_delta: Total delta allowed, or ``None`` to ignore delta.
        delta_dp: Extractor's delta.
        delta_cr: Head's delta.

    Returns:
        The number of removals the pipeline can certify.

    Raises:
        ValueError: If an argument is out of range (the message names it).

    """
    target_epsilon = check_real("target_epsilon", target_epsilon, positive=True)
    epsilon_dp = check_real("epsilon_dp", epsilon_dp, positive=True)
    epsilon_cr = check_real("epsilon_cr", epsilon_cr, positive=True)
    if target_delta is not None:
        target_delta = check_fraction("target_delta", target_delta)
    if epsilon_cr > target_epsilon:
        return 0
    # the tiny slack keeps exact ratios such as (1.0 - 0.1) / 0.1 from rounding down
    k = int(math.floor((target_epsilon - epsilon_cr) / epsilon_dp * (1 + 1e-12)))

    def fits(count: int) -> bool:
        composed = compose_privacy(epsilon_dp, delta_dp, epsilon_cr, delta_cr, count)
        eps_ok = composed.epsilon <= target_epsilon * (1 + 1e-12)
        return eps_ok and (target_delta is None or composed.delta <= target_delta)

    # the composed epsilon and delta both grow with k: bisect for the last k that fits
    low, high = 0, max(k, 0)
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
