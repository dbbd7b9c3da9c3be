"""Feature extractors: DP-SGD accounting, adversarial attacks, extraction, composition."""

import math
import warnings

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
    load_features,
    pgd_attack,
    save_features,
    supported_removals,
    train_adversarial_extractor,
    train_dp_extractor,
    train_standard_extractor,
)
from fastunlearn.data import digits_images, extracted_features_path, load_features_or_pixels
from fastunlearn.models import mlp, resnet_cifar, small_cnn, svhn_dp_extractor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _digits(n):
    images, labels = digits_images()
    return images[:n], labels[:n]


def _loader(n, batch_size, shuffle=False):
    X, y = _digits(n)
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=shuffle)


def _params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _mean_loss(model, X, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(X), y))


@pytest.fixture(scope="module")
def trained_mlp():
    torch.manual_seed(1)
    model = mlp(64, 10, hidden=(32,))
    train_standard_extractor(
        model, _loader(400, 32, shuffle=True), epochs=3, lr=1e-2, progress=False
    )
    return model


# ------------------------------------------------------------------------------ DP-SGD


def _rdp_epsilon_directly(noise, sample_rate, steps, delta):
    from opacus.accountants.analysis import rdp

    orders = list(DP_ORDERS)
    values = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise, steps=steps, orders=orders)
    return rdp.get_privacy_spent(orders=orders, rdp=values, delta=delta)[0]


def test_dp_training_epsilon_matches_rdp_and_falls_with_noise():
    n, batch, delta = 64, 16, 1e-5
    epsilons = []
    for noise in (0.8, 1.6):
        torch.manual_seed(0)
        model = mlp(64, 10, hidden=(16,))
        before = _params(model)
        trained, eps = train_dp_extractor(
            model, _loader(n, batch), epochs=1, noise_multiplier=noise, max_grad_norm=1.0,
            delta=delta, progress=False,
        )  # fmt: skip
        assert trained is model and not model.training
        assert math.isfinite(eps) and eps > 0
        # Poisson sampling at rate batch / n for len(loader) steps per epoch
        expected = _rdp_epsilon_directly(noise, batch / n, n // batch, delta)
        assert eps == pytest.approx(expected, rel=1e-9)
        assert eps == pytest.approx(dp_epsilon(noise, batch / n, n // batch, delta), rel=1e-9)
        after = _params(model)
        assert torch.isfinite(after).all() and not torch.equal(before, after)
        # Opacus' per-sample hooks and attributes are gone
        assert all(not hasattr(p, "grad_sample") for p in model.parameters())
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        epsilons.append(eps)
    assert epsilons[1] < epsilons[0]


def test_dp_training_survives_empty_poisson_batches():
    torch.manual_seed(3)
    model = small_cnn(1, 10, 8, width=4)
    # expected batch size 1 of 6: about a third of the 12 steps draw an empty batch
    _, eps = train_dp_extractor(
        model, _loader(6, 1), epochs=2, noise_multiplier=1.0, progress=False
    )
    assert math.isfinite(eps) and torch.isfinite(_params(model)).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet9", "allcnn", "mobilenet_v2"])
def test_dp_training_of_zoo_networks_with_in_place_layers(name):
    """torchvision's ResNet blocks added their shortcut in place and the zoo's networks use
    ReLU(inplace=True): opacus' backward hooks forbid both, so DP training of every zoo
    network but svhn_dp and mlp stopped at the first step. They train now, and the
    activations' ``inplace`` flags are as they were afterwards."""
    from fastunlearn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, norm="group")
    in_place = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    assert in_place                                   # the case this test is about
    X, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    before = _params(model)
    trained, eps = train_dp_extractor(
        model, DataLoader(TensorDataset(X, y), batch_size=4), epochs=1, noise_multiplier=1.0,
        progress=False,
    )  # fmt: skip
    assert trained is model and math.isfinite(eps) and eps > 0
    after = _params(model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert [m for m in model.modules() if getattr(m, "inplace", None) is True] == in_place
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())


def test_reference_svhn_setting_gives_epsilon_about_0_075():
    # reference train_svhn.py: batch 500 of 604,388 (train + extra), 20 epochs, noise 6
    steps = 20 * math.ceil(604_388 / 500)
    eps = dp_epsilon(6.0, 500 / 604_388, steps, 1e-5)
    assert 0.07 < eps < 0.08


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"delta": 1.5}, "delta"),
        ({"delta": 0.0}, "delta"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1e-3}, "lr"),
        ({"weight_decay": float("nan")}, "weight_decay"),
    ],
)
def test_dp_training_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        train_dp_extractor(mlp(64, 10, hidden=(4,)), _loader(8, 4), progress=False, **kwargs)


def test_dp_training_rejects_batchnorm_and_non_loaders():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="'model'.*BatchNorm"):
        train_dp_extractor(model, _loader(8, 4), progress=False)
    with pytest.raises(TypeError, match="'train_loader'"):
        train_dp_extractor(mlp(), [(torch.zeros(1, 64), torch.zeros(1))], progress=False)


# ------------------------------------------------------------------- adversarial training


@pytest.mark.parametrize("attack", ["fgsm", "fgsm-random-start", "pgd"])
def test_attacks_raise_the_loss_within_the_ball(trained_mlp, attack):
    X, y = _digits(200)
    eps = 0.1
    torch.manual_seed(5)
    if attack == "pgd":
        X_adv = pgd_attack(trained_mlp, X, y, epsilon=eps, steps=5)
    else:
        X_adv = fgsm_attack(trained_mlp, X, y, epsilon=eps, random_start=attack != "fgsm")
    assert X_adv.shape == X.shape and not X_adv.requires_grad
    assert float((X_adv - X).abs().max()) <= eps + 1e-6
    assert float(X_adv.min()) >= 0.0 and float(X_adv.max()) <= 1.0
    clean, adversarial = _mean_loss(trained_mlp, X, y), _mean_loss(trained_mlp, X_adv, y)
    assert adversarial > clean + 0.05
    assert all(p.grad is None for p in trained_mlp.parameters())  # inputs-only gradients


def test_pgd_is_at_least_as_strong_as_one_fgsm_step(trained_mlp):
    X, y = _digits(200)
    fgsm = fgsm_attack(trained_mlp, X, y, epsilon=0.05, random_start=False)
    pgd = pgd_attack(trained_mlp, X, y, epsilon=0.05, steps=10, random_start=False)
    assert _mean_loss(trained_mlp, pgd, y) >= _mean_loss(trained_mlp, fgsm, y)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_training_updates_the_model(attack):
    torch.manual_seed(2)
    model = small_cnn(1, 10, 8, width=4)
    before = _params(model)
    out = train_adversarial_extractor(
        model, _loader(64, 16), attack=attack, epsilon=0.1, steps=2, epochs=1, progress=False
    )
    assert out is model and not model.training
    after = _params(model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"attack": "cw"}, "attack"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"alpha": 0.0}, "alpha"),
        ({"attack": "pgd", "steps": 0}, "steps"),
        ({"input_range": (1.0, 0.0)}, "input_range"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_adversarial_training_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        train_adversarial_extractor(mlp(), _loader(8, 4), progress=False, **kwargs)


def test_standard_training_lowers_the_loss():
    torch.manual_seed(4)
    model = mlp(64, 10, hidden=(16,))
    X, y = _digits(256)
    before = _mean_loss(model, X, y)
    train_standard_extractor(
        model, _loader(256, 32, shuffle=True), epochs=5, lr=1e-2, progress=False
    )
    assert _mean_loss(model, X, y) < 0.5 * before


# ------------------------------------------------------------------------- extraction


def test_svhn_extractor_gives_1600_features_in_loader_order():
    torch.manual_seed(0)
    model = svhn_dp_extractor(64)
    model.train()
    X = torch.rand(10, 3, 32, 32)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    feats, labels = extract_features(model, DataLoader(TensorDataset(X, y), batch_size=4))
    assert feats.shape == (10, 1600) and feats.dtype == torch.float64
    assert torch.equal(labels, y) and labels.dtype == torch.int64
    assert model.training  # mode restored
    with torch.no_grad():
        direct = model.extract(X[4:8]).double()
    torch.testing.assert_close(feats[4:8], direct)
    # the reference's --normalize: unit-norm features
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10, dtype=torch.float64))
    assert svhn_dp_extractor(8, normalize=False).feature_dim == 8 * 5 * 5


def test_extract_features_needs_extract_or_feature_fn():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    loader = _loader(5, 2)
    with pytest.raises(TypeError, match="'feature_fn'"):
        extract_features(plain, loader)
    feats, labels = extract_features(plain, loader, feature_fn=plain)
    assert feats.shape == (5, 3) and labels.shape == (5,)


def test_features_round_trip_through_the_loader(tmp_path):
    torch.manual_seed(0)
    model = small_cnn(1, 10, 8, width=4)
    train_feats, train_labels = extract_features(model, _loader(20, 8))
    test_feats, test_labels = extract_features(model, _loader(6, 8))
    path = extracted_features_path(tmp_path, "dp_delta_1.00e-05_std_6.00", "digits")
    meta = {"model": "small_cnn", "epsilon": 1.5, "delta": 1e-5}
    save_features(
        path, {"train": train_feats, "test": test_feats},
        {"train": train_labels, "test": test_labels}, meta,
    )  # fmt: skip
    feats, labels, got_meta = load_features(path)
    assert torch.equal(feats["train"], train_feats) and torch.equal(labels["test"], test_labels)
    assert got_meta == meta
    split = load_features_or_pixels("digits", tmp_path, extractor="dp_delta_1.00e-05_std_6.00")
    assert split.n_features == 32 and torch.equal(split.X_test, test_feats)


# ------------------------------------------------------------------------ composition


def test_compose_privacy_group_privacy_formula():
    out = compose_privacy(0.1, 1e-5, 0.5, 1e-4, removals=3)
    assert out.epsilon == pytest.approx(3 * 0.1 + 0.5)
    assert out.delta == pytest.approx(3 * math.exp(2 * 0.1) * 1e-5 + 1e-4)
    assert out.epsilon_extractor == pytest.approx(0.3) and out.removals == 3
    assert out.to_dict()["delta_extractor"] == pytest.approx(3 * math.exp(0.2) * 1e-5)
    none_removed = compose_privacy(0.1, 1e-5, 0.5, 1e-4, removals=0)
    assert none_removed.epsilon == 0.5 and none_removed.delta == 1e-4


@pytest.mark.parametrize(
    ("target", "eps_dp", "eps_cr"), [(1.0, 0.1, 0.1), (1.0, 0.075, 0.2), (2.0, 0.3, 0.05)]
)
def test_supported_removals_is_the_largest_fitting_k(target, eps_dp, eps_cr):
    k = supported_removals(target, eps_dp, eps_cr)
    assert compose_privacy(eps_dp, 0.0, eps_cr, 0.0, k).epsilon <= target + 1e-12
    assert compose_privacy(eps_dp, 0.0, eps_cr, 0.0, k + 1).epsilon > target


def test_supported_removals_reference_example_and_delta():
    # reference: epsilon_DP ~ 0.1 limits a total epsilon of 1 to about ten removals
    assert supported_removals(1.0, 0.1, 0.1) == 9
    assert supported_removals(1.0, 0.1, 0.01) == 9
    assert supported_removals(0.05, 0.1, 0.1) == 0
    # a delta target can bind before epsilon does
    k = supported_removals(1.0, 0.1, 0.1, target_delta=1e-4, delta_dp=1e-5, delta_cr=1e-5)
    assert compose_privacy(0.1, 1e-5, 0.1, 1e-5, k).delta <= 1e-4
    assert compose_privacy(0.1, 1e-5, 0.1, 1e-5, k + 1).delta > 1e-4
    assert k < 9


@pytest.mark.parametrize(
    ("args", "arg"),
    [
        ((-0.1, 1e-5, 1.0, 1e-4, 1), "epsilon_dp"),
        ((0.1, 1.0, 1.0, 1e-4, 1), "delta_dp"),
        ((0.1, 1e-5, 0.0, 1e-4, 1), "epsilon_cr"),
        ((0.1, 1e-5, 1.0, -1e-4, 1), "delta_cr"),
        ((0.1, 1e-5, 1.0, 1e-4, -1), "removals"),
    ],
)
def test_compose_privacy_bad_arguments(args, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        compose_privacy(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="'epsilon_dp'"):
            supported_removals(1.0, 0.0, 0.1)


# ------------------------------------------------------------------------------ model zoo


def test_model_zoo_shapes_and_registry():
    from opacus.validators import ModuleValidator

    from fastunlearn.models import MODELS, build_model

    assert set(MODELS) == {
        "svhn_dp", "resnet18", "resnet34", "small_cnn", "mlp",
        "resnet9", "allcnn", "mobilenet_v2", "cifar_cnn",
    }
    for name, kwargs, shape, dim in [
        ("svhn_dp", {"in_channels": 1, "side": 28}, (2, 1, 28, 28), 64 * 4 * 4),
        ("small_cnn", {}, (2, 1, 8, 8), 128),
        ("mlp", {"hidden": ()}, (2, 1, 8, 8), 64),
        ("resnet18", {"num_classes": 3, "norm": "group"}, (2, 3, 8, 8), 512),
    ]:
        model = build_model(name, **kwargs)
        x = torch.rand(shape)
        assert model.feature_dim == dim and model.extract(x).shape == (2, dim)
        assert model(x).shape == (2, kwargs.get("num_classes", 10))
        assert ModuleValidator.validate(model, strict=False) == []  # DP-trainable
    resnet = build_model("resnet18")
    assert resnet.backbone.conv1.stride == (1, 1) and resnet.backbone.conv1.kernel_size == (3, 3)
    assert isinstance(resnet.backbone.maxpool, nn.Identity)
    assert ModuleValidator.validate(resnet, strict=False)  # BatchNorm: not DP-trainable
    with pytest.raises(ValueError, match="'name'"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="'norm'"):
        svhn_dp_extractor(norm="batch")
    with pytest.raises(ValueError, match="'side'"):
        svhn_dp_extractor(side=12)
    with pytest.raises(ValueError, match="'depth'"):
        resnet_cifar(depth=50)
