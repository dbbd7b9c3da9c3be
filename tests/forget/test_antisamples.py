"""Anti-sample generator statistics (vs cdist and the sampling law); unlearning on digits."""

import math

import pytest
import torch
from digits_b import accuracy, same_state, setup, state_copy
from helpers import DEVICES

import fastunlearn.forget as fg
from fastunlearn.forget import (
    ANTISAMPLE_PRESETS,
    AntiSampleConfig,
    antisample_preset,
    generate_antisamples,
    run_method,
)


def _data(m=12, n=40, shape=(1, 4, 4), dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    F_ = torch.randn((m, *shape), generator=g, dtype=dtype)
    R = torch.randn((n, *shape), generator=g, dtype=dtype) + 0.5
    labels = torch.arange(n) % 4
    return F_.to(device), R.to(device), labels.to(device)


def _sq_dist(F_, R):
    return torch.cdist(F_.flatten(1).double(), R.flatten(1).double()).pow(2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [None, 1, 5])
def test_neighbours_are_among_the_k_farthest(device, k):
    F_, R, _ = _data(device=device)
    out = generate_antisamples(F_, R, tail_randomized=k, size_multiplier=20, seed=3)
    D = _sq_dist(F_, R).cpu()
    src, nb = out.source.cpu(), out.neighbours.cpu()
    # reported distance = true squared distance to the chosen neighbour
    got = out.neighbour_sq_dist.cpu().double()
    torch.testing.assert_close(got, D[src, nb], rtol=1e-9, atol=1e-9)
    kk = k or 1
    kth = torch.sort(D, dim=1, descending=True).values[:, kk - 1]
    assert bool((D[src, nb] >= kth[src] - 1e-9).all())
    if kk == 1:
        assert torch.equal(nb, D.argmax(1)[src])
    else:
        # uniform over the k: every one of the k is used for some forget row
        used = {(int(s), int(j)) for s, j in zip(src, nb, strict=True)}
        assert len(used) > F_.shape[0] * 2


@pytest.mark.parametrize("device", DEVICES)
def test_pool_law_distance_to_far_neighbour(device):
    # E ||a - x_r||^2 = p * lv^2 * sum_j (|x_f - x_r|_j + eps)^2 ; changed coordinates ~ p
    F_, R, _ = _data(m=4, n=30, device=device)
    p, lv, eps = 0.7, 0.5, 0.1
    out = generate_antisamples(
        F_, R, p=p, local_variance=lv, eps=eps, size_multiplier=2000, tail_randomized=None,
        convex_combination=False, seed=1,
    )
    A = out.pool.flatten(1).cpu()
    xr = R.flatten(1).cpu()[out.neighbours.cpu()]
    xf = F_.flatten(1).cpu()[out.source.cpu()]
    sigma2 = ((xf - xr).abs() + eps).pow(2) * lv**2
    ratio = (A - xr).pow(2).sum(1).mean() / (p * sigma2.sum(1)).mean()
    assert abs(float(ratio) - 1) < 0.03
    changed = (A != xr).double().mean()
    assert abs(float(changed) - p) < 0.01
    # standardised deviations of the kept coordinates are N(0, 1)
    z = ((A - xr) / sigma2.sqrt())[A != xr]
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_no_noise_gives_the_neighbours():
    F_, R, _ = _data()
    for kw in ({"p": 0.0}, {"local_variance": 0.0}):
        out = generate_antisamples(F_, R, convex_combination=False, seed=2, **kw)
        assert torch.equal(out.pool, R[out.neighbours])
        assert torch.equal(out.samples, out.pool)


@pytest.mark.parametrize("device", DEVICES)
def test_convex_weights_sum_to_one_and_mix_the_pool(device):
    F_, R, _ = _data(device=device)
    out = generate_antisamples(F_, R, n_generated=33, size_multiplier=3, return_weights=True,
                               chunk_size=10, seed=4)
    W = out.weights
    assert W.shape == (33, 36) and out.samples.shape == (33, 1, 4, 4)
    assert bool((W > 0).all())
    torch.testing.assert_close(W.sum(1), torch.ones(33, dtype=W.dtype, device=device))
    torch.testing.assert_close(out.samples.flatten(1), W @ out.pool.flatten(1))
    # convex mixtures stay inside the pool's coordinate-wise range
    A = out.pool.flatten(1)
    S = out.samples.flatten(1)
    assert bool((S >= A.min(0).values - 1e-12).all() and (S <= A.max(0).values + 1e-12).all())
    # log-weights are N(0,1) up to a per-row shift: their row-centred variance is ~1
    logw = W.log() - W.log().mean(1, keepdim=True)
    assert abs(float(logw.var(1).mean()) - 1) < 0.15


def test_retain_fraction_is_per_class_and_seeded():
    F_, R, labels = _data(n=40)
    out = generate_antisamples(F_, R, retain_labels=labels, retain_fraction=0.3, seed=5)
    counts = torch.bincount(labels[out.pool_indices], minlength=4)
    assert counts.tolist() == [3, 3, 3, 3]  # round(0.3 * 10) of each class
    assert bool(torch.isin(out.neighbours, out.pool_indices).all())
    assert torch.equal(out.neighbour_labels, labels[out.neighbours])
    again = generate_antisamples(F_, R, retain_labels=labels, retain_fraction=0.3, seed=5)
    assert torch.equal(again.samples, out.samples)
    other = generate_antisamples(F_, R, retain_labels=labels, retain_fraction=0.3, seed=6)
    assert not torch.equal(other.samples, out.samples)
    assert set(out.times) == {"distance_s", "generation_s"}


def test_float32_and_default_sizes():
    F_, R, _ = _data(dtype=torch.float32)
    out = generate_antisamples(F_, R, size_multiplier=2)
    assert out.samples.dtype == torch.float32
    assert out.samples.shape[0] == out.pool.shape[0] == 2 * F_.shape[0]
    assert out.weights is None
    picked = generate_antisamples(F_, R, convex_combination=False, n_generated=7)
    assert picked.samples.shape[0] == 7


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"p": 1.5}, ValueError, "p"),
        ({"p": -0.1}, ValueError, "p"),
        ({"n_generated": 0}, ValueError, "n_generated"),
        ({"retain_fraction": 0.0}, ValueError, "retain_fraction"),
        ({"size_multiplier": 0}, ValueError, "size_multiplier"),
        ({"local_variance": -1.0}, ValueError, "local_variance"),
        ({"eps": float("inf")}, ValueError, "eps"),
        ({"tail_randomized": 2.5}, TypeError, "tail_randomized"),
        ({"convex_combination": 1}, TypeError, "convex_combination"),
        ({"retain_labels": torch.zeros(3, dtype=torch.long)}, ValueError, "retain_labels"),
    ],
)
def test_generator_rejects_bad_arguments(kw, exc, match):
    F_, R, _ = _data()
    with pytest.raises(exc, match=match):
        generate_antisamples(F_, R, **kw)


def test_generator_rejects_bad_tensors():
    F_, R, _ = _data()
    with pytest.raises(ValueError, match="same sample shape"):
        generate_antisamples(F_, R[:, :, :2])
    with pytest.raises(TypeError, match="forget"):
        generate_antisamples(F_.tolist(), R)
    bad = R.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="retain"):
        generate_antisamples(F_, bad)
    with pytest.raises(ValueError, match="retain"):
        generate_antisamples(F_, R[:0])


def test_presets_hold_the_published_settings():
    assert len(ANTISAMPLE_PRESETS) == 18
    for name, cfg in ANTISAMPLE_PRESETS.items():
        assert isinstance(cfg, AntiSampleConfig)
        assert cfg.retain_fraction == (0.3 if name.endswith("u30") else 1.0)
        assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.eps) == (5, 1e-3, 128, 0.01)
    r18 = ANTISAMPLE_PRESETS["resnet18-cifar10-u30"], ANTISAMPLE_PRESETS["resnet18-cifar10-u100"]
    assert [c.lr_scale for c in r18] == [1.6, 1.4]
    assert all((c.local_variance, c.p, c.tail_randomized, c.size_multiplier) == (1, 0.95, 20, 1)
               for c in r18)
    casia = ANTISAMPLE_PRESETS["resnet18-casia-webface-u100"]
    assert (casia.lr_scale, casia.local_variance, casia.p) == (4.8, 10.0, 0.85)
    nb = ANTISAMPLE_PRESETS["notebook-u100"]
    assert (nb.lr_scale, nb.tail_randomized, nb.n_generated) == (2.5, 50, 1500)
    cfg = antisample_preset("allcnn-cifar10-u100", epochs=2)
    assert (cfg.epochs, cfg.lr_scale) == (2, 1.2)
    assert ANTISAMPLE_PRESETS["allcnn-cifar10-u100"].epochs == 5  # the preset is not mutated
    with pytest.raises(ValueError, match="resnet18-cifar10-u30"):
        antisample_preset("resnet50-cifar10-u30")
    assert fg.AntiSampleConfig() == ANTISAMPLE_PRESETS["resnet18-cifar10-u30"]


# On an 8x8-digits MLP the published 5 Adam epochs over a few hundred samples are only ~20
# steps; these settings give the fine-tune enough steps (documented in the README section).
DIGITS_U30 = {"epochs": 10, "lr_scale": 10.0, "batch_size": 32, "retain_fraction": 0.3}
DIGITS_U100 = {"epochs": 30, "lr_scale": 5.0, "retain_fraction": 1.0}


@pytest.mark.parametrize("kw", [DIGITS_U30, DIGITS_U100], ids=["u30", "u100"])
def test_single_class_unlearning_reaches_the_oracle(kw):
    s = setup((3,))
    before = state_copy(s.original)
    new = run_method("antisamples", s.original, s.forget, s.retain, **kw)
    assert same_state(s.original, before)
    assert accuracy(s.original, *s.forget) > 0.95 and accuracy(s.oracle, *s.forget) < 0.05
    assert accuracy(new, *s.forget) <= accuracy(s.oracle, *s.forget) + 0.1
    assert accuracy(new, *s.retain) >= accuracy(s.original, *s.retain) - 0.04
    assert accuracy(new, *s.test_retain) >= accuracy(s.oracle, *s.test_retain) - 0.04


def test_multi_class_unlearning_moves_every_class_toward_the_oracle():
    # (3, 8): the convex mixtures are close to the mean digit, which looks like an 8, so
    # class 8 is forgotten only partly at this budget (class 3 completely)
    s = setup((3, 8))
    new = run_method("antisamples_multiclass", s.original, s.forget, s.retain, **DIGITS_U30)
    xf, yf = s.forget
    orig, oracle = accuracy(s.original, xf, yf), accuracy(s.oracle, xf, yf)
    assert accuracy(new, xf, yf) <= oracle + 0.5 * (orig - oracle)
    for c in (3, 8):
        m = yf == c
        assert accuracy(new, xf[m], yf[m]) <= accuracy(s.original, xf[m], yf[m]) - 0.2
    assert accuracy(new, *s.retain) >= accuracy(s.original, *s.retain) - 0.04
    assert accuracy(new, *s.test_retain) >= accuracy(s.oracle, *s.test_retain) - 0.04


def test_single_class_rejects_several_classes_and_bad_config():
    s = setup((3, 8))
    with pytest.raises(ValueError, match="antisamples_multiclass"):
        run_method("antisamples", s.original, s.forget, s.retain)
    with pytest.raises(TypeError, match="AntiSampleConfig"):
        run_method("antisamples", s.original, s.forget, s.retain, config=fg.ScrubConfig())
    with pytest.raises(ValueError, match="retain_fraction"):
        AntiSampleConfig(retain_fraction=2.0)
    with pytest.raises(ValueError, match="lr_scale"):
        AntiSampleConfig(lr_scale=0.0)
