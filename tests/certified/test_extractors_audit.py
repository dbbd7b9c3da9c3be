"""Audit of the feature extractors against independent computations.

Attacks are checked against closed forms (the input gradient of a linear softmax model, the
L-inf maximiser of a binary linear model) and a hand-written PGD loop; the accountant against
the Gaussian mechanism's RDP in closed form and the binomial expansion of the subsampled
Gaussian; the training loops against hand-written Adam loops; the composition against the
group-privacy formula evaluated by brute force.
"""

import contextlib
import copy
import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastunlearn.certified.extractors import (
    DP_ORDERS,
    compose_privacy,
    dp_epsilon,
    extract_features,
    fgsm_attack,
    pgd_attack,
    supported_removals,
    train_adversarial_extractor,
    train_dp_extractor,
    train_standard_extractor,
)
from fastunlearn.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _linear(num_classes: int, seed: int = 0) -> nn.Module:
    """Softmax regression on 8x8 images in float64: logits = flatten(x) W^T + b."""
    torch.manual_seed(seed)
    return mlp(64, num_classes, hidden=()).double()


def _images(n: int, seed: int = 1, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)


def _binary_direction(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """sign of d CE / d x for a 2-class linear model: sign(w_other - w_y), the same at every x."""
    w = model.head.weight.detach()  # [2, 64]
    return torch.sign(w[1 - y] - w[y]).reshape(-1, 1, 8, 8)


# ---------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("alpha", [None, 0.03])
def test_fgsm_equals_closed_form_input_gradient_of_softmax_regression(alpha):
    model = _linear(3)
    x = _images(40)
    y = torch.arange(40) % 3
    eps = 0.05
    W, b = model.head.weight.detach(), model.head.bias.detach()
    z = x.reshape(40, -1) @ W.T + b
    # d mean CE / d x_i = (softmax(z_i) - e_{y_i}) W / n, by hand
    grad = ((torch.softmax(z, dim=1) - F.one_hot(y, 3).double()) @ W / 40).reshape(x.shape)
    step = eps if alpha is None else alpha
    expected = (x + step * grad.sign()).clamp(x - eps, x + eps).clamp(0.0, 1.0)
    got = fgsm_attack(model, x, y, epsilon=eps, alpha=alpha, random_start=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_fgsm_random_start_and_step_follow_wong_et_al():
    """Binary linear model: the gradient sign s is the same everywhere, so after a uniform
    start u in [-eps, eps] and a step of 1.25 eps the coordinate is min(u + 1.25 eps, eps)
    along s: at least 0.25 eps, and exactly eps with probability 1.25 / 2 = 0.625."""
    model = _linear(2)
    x = _images(300, low=0.3, high=0.7)
    y = torch.arange(300) % 2
    eps = 0.1
    s = _binary_direction(model, y).expand_as(x)
    torch.manual_seed(7)
    got = fgsm_attack(model, x, y, epsilon=eps, input_range=None)
    along = ((got - x) * s).reshape(-1)
    assert float(along.min()) >= 0.25 * eps - 1e-12
    assert float(along.max()) <= eps + 1e-12
    at_edge = float((along > eps - 1e-12).double().mean())
    assert at_edge == pytest.approx(0.625, abs=0.02)  # 19,200 coordinates
    # a step of 2 eps reaches the corner from any start: x + eps s, clamped to [0, 1]
    x01 = _images(50)
    y01 = torch.arange(50) % 2
    corner = (x01 + eps * _binary_direction(model, y01)).clamp(0.0, 1.0)
    got = fgsm_attack(model, x01, y01, epsilon=eps, alpha=2 * eps)
    torch.testing.assert_close(got, corner, rtol=0, atol=1e-15)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_random_start_is_uniform_on_the_ball(attack):
    """With a negligible step the attack returns its start: uniform on [-eps, eps]^d."""
    model = _linear(3)
    x = _images(200, low=0.3, high=0.7)
    y = torch.arange(200) % 3
    eps, tiny = 0.2, 1e-9
    torch.manual_seed(3)
    if attack == "fgsm":
        got = fgsm_attack(model, x, y, epsilon=eps, alpha=tiny, input_range=None)
    else:
        got = pgd_attack(model, x, y, epsilon=eps, alpha=tiny, steps=1, input_range=None)
    u = ((got - x) / eps).reshape(-1)  # 12,800 draws
    assert float(u.abs().max()) <= 1.0 + 1e-6
    assert float(u.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(u.var()) == pytest.approx(1.0 / 3.0, abs=0.02)
    # each quarter of [-1, 1] holds a quarter of the draws
    counts = torch.histc(u.float(), bins=4, min=-1.0, max=1.0) / u.numel()
    torch.testing.assert_close(counts, torch.full((4,), 0.25), rtol=0, atol=0.02)


@pytest.mark.parametrize(("alpha", "steps"), [(None, 7), (0.01, 5)])
def test_pgd_equals_a_hand_written_projected_ascent(alpha, steps):
    torch.manual_seed(0)
    model = mlp(64, 4, hidden=(16,)).double().eval()
    x = _images(30)
    y = torch.arange(30) % 4
    eps = 0.06
    step = 2.5 * eps / steps if alpha is None else alpha
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * g.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    got = pgd_attack(model, x, y, epsilon=eps, alpha=alpha, steps=steps, random_start=False)
    torch.testing.assert_close(got, x_adv, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_with_random_start_finds_the_linear_maximiser():
    """The cross-entropy of a binary linear model is monotone in (w_other - w_y) . x, so its
    maximiser over the ball and [0, 1] is the clamped corner x + eps s; 2.5 eps of steps
    reach it from any start. Random points of the ball never do better."""
    model = _linear(2, seed=4)
    x = _images(64)
    y = torch.arange(64) % 2
    eps = 0.1
    corner = (x + eps * _binary_direction(model, y)).clamp(0.0, 1.0)
    torch.manual_seed(11)
    got = pgd_attack(model, x, y, epsilon=eps, steps=4)
    torch.testing.assert_close(got, corner, rtol=0, atol=1e-12)
    with torch.no_grad():
        best = F.cross_entropy(model(got), y, reduction="none")
        for _ in range(20):
            point = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
            assert (F.cross_entropy(model(point), y, reduction="none") <= best + 1e-12).all()


@pytest.mark.parametrize("training", [True, False])
def test_attacks_leave_the_model_and_the_inputs_alone(training):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train(training)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(16, 1, 8, 8, requires_grad=True)
    x_before = x.detach().clone()
    y = torch.arange(16) % 3
    for out in (
        fgsm_attack(model, x, y, epsilon=0.1),
        pgd_attack(model, x, y, epsilon=0.1, steps=3),
    ):
        assert not out.requires_grad and out.shape == x.shape
        assert float((out - x_before).abs().max()) <= 0.1 + 1e-6
    assert model.training is training
    assert torch.equal(x.detach(), x_before) and x.grad is None and x.requires_grad
    assert all(p.grad is None for p in model.parameters())
    if not training:  # eval mode: running statistics untouched
        for k, v in model.state_dict().items():
            assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize("bad", [(None, 1.0), ("a", "b"), (0.0,), (0.5, 0.5), "01"])
def test_bad_input_range_names_the_argument(bad):
    model = _linear(3)
    x, y = _images(4), torch.arange(4) % 3
    for attack in (fgsm_attack, pgd_attack):
        with pytest.raises(ValueError, match="'input_range'"):
            attack(model, x, y, input_range=bad)


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"epsilon": "0.1"}, TypeError, "epsilon"),
        ({"epsilon": float("inf")}, ValueError, "epsilon"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"steps": True}, TypeError, "steps"),
        ({"steps": 2.0}, TypeError, "steps"),
    ],
)
def test_bad_attack_arguments_name_the_argument(kwargs, error, arg):
    model = _linear(3)
    x, y = _images(4), torch.arange(4) % 3
    with pytest.raises(error, match=f"'{arg}'"):
        pgd_attack(model, x, y, **kwargs)
    with pytest.raises(TypeError, match="'model'"):
        fgsm_attack(lambda t: t, x, y)


# ---------------------------------------------------------------------------- training loops


def _adam_step_by_hand(model, x, y, lr):
    """One Adam step from fresh state: p -= lr * g / (|g| + 1e-8) (bias-corrected m/sqrt(v))."""
    twin = copy.deepcopy(model)
    loss = F.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, list(twin.parameters()))
    with torch.no_grad():
        for p, g in zip(twin.parameters(), grads, strict=True):
            p -= lr * g / (g.abs() + 1e-8)
    return twin


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_training_steps_on_the_attacked_batch(attack):
    """One batch, one epoch: the update is Adam's first step on the clamped corner
    x + eps s (where a 2 eps FGSM step and 4-step PGD both land for a linear model),
    and every forward pass (attack and step) runs in train mode."""
    model = _linear(2, seed=5).float()
    x = _images(32).float()
    y = torch.arange(32) % 2
    eps, lr = 0.1, 0.01
    corner = (x + eps * _binary_direction(model, y).float()).clamp(0.0, 1.0)
    expected = _adam_step_by_hand(model, corner, y, lr)
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    model.eval()
    alpha = 2 * eps if attack == "fgsm" else None
    out = train_adversarial_extractor(
        model, [(x, y)], attack=attack, epsilon=eps, alpha=alpha, steps=4, epochs=1, lr=lr,
        progress=False,
    )  # fmt: skip
    assert out is model and not model.training
    assert modes and all(modes) and len(modes) == (2 if attack == "fgsm" else 5)
    torch.testing.assert_close(_params(model), _params(expected), rtol=1e-5, atol=1e-6)


def test_standard_training_equals_a_hand_written_adam_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.0), nn.ReLU(),
                          nn.Linear(8, 3))  # fmt: skip
    twin = copy.deepcopy(model)
    X, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 3
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    opt = torch.optim.Adam(twin.parameters(), lr=0.02, weight_decay=0.1)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(twin(xb), yb).backward()
            opt.step()
    model.train(False)
    out = train_standard_extractor(
        model, loader, epochs=2, lr=0.02, weight_decay=0.1, progress=False
    )
    assert out is model and not model.training
    torch.testing.assert_close(_params(model), _params(twin), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- DP accounting


def _balle_epsilon(rdp: np.ndarray, orders: np.ndarray, delta: float) -> float:
    """RDP -> (epsilon, delta), Balle et al. 2020 Thm 21, minimised over the orders."""
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))  # opacus' RDP is NaN at a few huge orders; it skips them


@pytest.mark.parametrize(("sigma", "steps", "delta"), [(1.0, 1, 1e-5), (4.0, 50, 1e-6)])
def test_dp_epsilon_without_subsampling_is_the_gaussian_mechanism(sigma, steps, delta):
    # no subsampling: RDP of order a of T Gaussian steps is T a / (2 sigma^2)
    orders = np.array(DP_ORDERS)
    expected = _balle_epsilon(steps * orders / (2 * sigma**2), orders, delta)
    assert dp_epsilon(sigma, 1.0, steps, delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.01, 1000), (2.0, 0.25, 40)])
def test_dp_epsilon_matches_the_binomial_expansion_of_the_subsampled_gaussian(sigma, q, steps):
    """Integer orders a: RDP = log sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2))
    / (a - 1) (Mironov, Talwar & Zhang 2019), computed here term by term."""
    orders = list(range(2, 65))
    rdp = []
    for a in orders:
        terms = [
            math.lgamma(a + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1)
            + (a - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
            for k in range(a + 1)
        ]  # fmt: skip
        top = max(terms)
        log_a = top + math.log(sum(math.exp(t - top) for t in terms))
        rdp.append(steps * log_a / (a - 1))
    expected = _balle_epsilon(np.array(rdp), np.array(orders, dtype=float), 1e-5)
    got = dp_epsilon(sigma, q, steps, 1e-5, orders=[float(a) for a in orders])
    assert got == pytest.approx(expected, rel=1e-8)


def test_dp_orders_contain_opacus_defaults_and_the_reference_grid():
    orders = set(DP_ORDERS)
    opacus_defaults = {1 + x / 10.0 for x in range(1, 100)} | set(range(12, 64))
    reference = (
        {1.25 + 0.25 * i for i in range(14)} | set(range(5, 64)) | {128, 256, 512, 1024, 2048, 4096}
    )
    assert opacus_defaults <= orders and reference <= orders
    assert list(DP_ORDERS) == sorted(orders) and min(orders) > 1


@pytest.mark.parametrize(
    ("args", "error", "arg"),
    [
        ((0.0, 0.1, 10, 1e-5), ValueError, "noise_multiplier"),
        ((1.0, 0.0, 10, 1e-5), ValueError, "sample_rate"),
        ((1.0, 1.5, 10, 1e-5), ValueError, "sample_rate"),
        ((1.0, 0.1, -1, 1e-5), ValueError, "steps"),
        ((1.0, 0.1, 10.0, 1e-5), TypeError, "steps"),
        ((1.0, 0.1, 10, 1.0), ValueError, "delta"),
        (("1", 0.1, 10, 1e-5), TypeError, "noise_multiplier"),
    ],
)
def test_dp_epsilon_bad_arguments(args, error, arg):
    with pytest.raises(error, match=f"'{arg}'"):
        dp_epsilon(*args)
    assert dp_epsilon(1.0, 0.1, 0, 1e-5) == 0.0


def _dp_run(seed, X, y, batch_size, epochs):
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=(8,))
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size)
    _, eps = train_dp_extractor(
        model, loader, epochs=epochs, noise_multiplier=1.0, max_grad_norm=1.0, progress=False
    )
    return model, eps, loader


def test_dp_training_rate_steps_seed_and_cleanup():
    """50 examples, batch 16: Opacus samples at rate 1 / len(loader) = 1/4 for 4 steps an
    epoch (not 16/50); the accountant must report exactly that. The global seed fixes the
    sampling and the noise; the returned model carries no Opacus state."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(50, 1, 8, 8, generator=g), torch.randint(0, 10, (50,), generator=g)
    first, eps, loader = _dp_run(1, X, y, 16, 2)
    assert len(loader) == 4
    orders = np.array(DP_ORDERS)
    from opacus.accountants.analysis import rdp

    values = rdp.compute_rdp(q=1 / 4, noise_multiplier=1.0, steps=8, orders=list(orders))
    assert eps == pytest.approx(_balle_epsilon(np.asarray(values), orders, 1e-5), rel=1e-9)
    assert eps != pytest.approx(dp_epsilon(1.0, 16 / 50, 8, 1e-5), rel=1e-3)
    again, eps_again, _ = _dp_run(1, X, y, 16, 2)
    other, _, _ = _dp_run(2, X, y, 16, 2)
    assert torch.equal(_params(first), _params(again)) and eps_again == eps
    assert not torch.equal(_params(first), _params(other))
    for p in first.parameters():
        assert p.grad is None and getattr(p, "grad_sample", None) is None
        assert getattr(p, "summed_grad", None) is None
    for m in first.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert type(loader.batch_sampler).__name__ == "BatchSampler"  # caller's loader intact


# ---------------------------------------------------------------------------- extraction


def test_extract_features_runs_in_eval_mode_without_touching_the_model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6), nn.Dropout(0.5))
    model = nn.Sequential(backbone, nn.Linear(6, 2)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    X = torch.rand(9, 1, 8, 8)
    X_before = X.clone()
    labels = [[1], [0], [1]]  # labels need not be tensors
    loader = [(X[i : i + 3], labels[i // 3]) for i in range(0, 9, 3)]
    feats, ys = extract_features(model, loader, feature_fn=backbone)
    assert model.training and backbone.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm statistics untouched
    backbone.eval()
    with torch.no_grad():
        expected = backbone(X).double()
    torch.testing.assert_close(feats, expected)
    assert torch.equal(ys, torch.tensor([1, 0, 1])) and ys.dtype == torch.int64
    assert torch.equal(X, X_before)
    # eval stays eval; an empty loader gives [0, feature_dim]
    frozen = mlp(64, 3, hidden=(5,)).eval()
    empty_feats, empty_labels = extract_features(frozen, [])
    assert empty_feats.shape == (0, 5) and empty_labels.shape == (0,)
    assert not frozen.training


# ---------------------------------------------------------------------------- composition


@pytest.mark.parametrize(("eps_dp", "k"), [(8.0, 100), (1.0, 1000), (50.0, 20)])
def test_compose_privacy_survives_large_group_sizes(eps_dp, k):
    """Large epsilon_dp * k overflowed math.exp (OverflowError) even with delta_dp = 0."""
    pure = compose_privacy(eps_dp, 0.0, 1.0, 1e-6, k)
    assert pure.epsilon == pytest.approx(k * eps_dp + 1.0)
    assert pure.delta_extractor == 0.0 and pure.delta == 1e-6
    approx = compose_privacy(eps_dp, 1e-5, 1.0, 1e-6, k)
    # the group bound exceeds any float here: reported as infinite, never a crash
    assert approx.delta == math.inf and approx.epsilon == pure.epsilon
    # exp overflows on its own, the product with a tiny delta_dp does not
    log_value = math.log(k) + (k - 1) * eps_dp + math.log(1e-300)
    tiny = compose_privacy(eps_dp, 1e-300, 1.0, 0.0, k)
    if log_value < 700:
        assert tiny.delta == pytest.approx(math.exp(log_value), rel=1e-9)


def test_compose_privacy_delta_bounds_the_exact_group_sum():
    """Group privacy: delta_k = delta sum_{i<k} e^(i eps) <= k e^((k-1) eps) delta."""
    for eps_dp, delta_dp, k in [(0.1, 1e-5, 1), (0.1, 1e-5, 10), (0.5, 1e-7, 25)]:
        exact = delta_dp * sum(math.exp(i * eps_dp) for i in range(k))
        out = compose_privacy(eps_dp, delta_dp, 0.3, 1e-6, k)
        assert out.delta_extractor >= exact * (1 - 1e-12)
        assert out.delta_extractor == pytest.approx(k * math.exp((k - 1) * eps_dp) * delta_dp)
        assert out.delta == pytest.approx(out.delta_extractor + 1e-6)
        assert out.epsilon == pytest.approx(k * eps_dp + 0.3)


def _largest_k_by_brute_force(target, eps_dp, eps_cr, target_delta, delta_dp, delta_cr):
    best, k = 0, 1
    while k * eps_dp + eps_cr <= target * (1 + 1e-12):
        try:
            delta = k * math.exp((k - 1) * eps_dp) * delta_dp + delta_cr
        except OverflowError:
            delta = math.inf
        if target_delta is None or delta <= target_delta:
            best = k
        k += 1
    return best


@pytest.mark.parametrize(
    ("target", "eps_dp", "eps_cr", "target_delta", "delta_dp", "delta_cr"),
    [
        (1.0, 0.1, 0.1, None, 0.0, 0.0),
        (1.0, 0.075, 0.2, None, 0.0, 0.0),
        (1.0, 0.1, 0.1, 1e-4, 1e-5, 1e-5),
        (3.0, 0.01, 0.5, 1e-3, 1e-5, 1e-4),
        (5.0, 0.3, 1.0, 1e-2, 1e-4, 0.0),
        (2.0, 0.05, 0.1, 1e-5, 1e-6, 1e-5),  # the head's delta alone uses the budget
        (2.0, 0.05, 0.1, 1e-6, 1e-6, 1e-5),  # head's delta over the target: nothing fits
        (0.5, 0.7, 0.1, None, 0.0, 0.0),
        (0.3, 0.1, 0.3, None, 0.0, 0.0),
    ],
)
def test_supported_removals_equals_brute_force(
    target, eps_dp, eps_cr, target_delta, delta_dp, delta_cr
):
    expected = _largest_k_by_brute_force(target, eps_dp, eps_cr, target_delta, delta_dp, delta_cr)
    got = supported_removals(
        target, eps_dp, eps_cr, target_delta=target_delta, delta_dp=delta_dp, delta_cr=delta_cr
    )
    assert got == expected


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail the test (TimeoutError) if its block runs longer than ``seconds`` (SIGALRM)."""

    def expire(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_supported_removals_is_fast_and_finite_at_extremes():
    """A tiny epsilon_dp with a binding delta scanned ~1e9 candidate k one by one, and a
    large target overflowed math.exp."""
    with _deadline(20):  # the one-by-one scan would run for hours
        k = supported_removals(1.0, 1e-9, 0.1, target_delta=1e-5, delta_dp=1e-6)
        assert supported_removals(2000.0, 1.0, 1.0) == 1999
        assert supported_removals(2000.0, 1.0, 1.0, target_delta=0.5, delta_dp=1e-5) == 9
    # 9 e^(8e-9) 1e-6 < 1e-5 < 10 e^(9e-9) 1e-6
    assert 9 * math.exp(8e-9) * 1e-6 <= 1e-5 < 10 * math.exp(9e-9) * 1e-6
    assert k == 9
    assert _largest_k_by_brute_force(2000.0, 1.0, 1.0, 0.5, 1e-5, 0.0) == 9
