"""The metrics on CUDA tensors give the CPU's results (random logits: the shared fixture does
not travel to a GPU machine)."""

import pytest
import torch

from fastunlearn import metrics

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _logits(seed, S=64, N=8, C=10, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(S, N, C, generator=gen, dtype=torch.float64) * 2.0
    labels = torch.randint(0, C, (S,), generator=gen)
    logits[torch.arange(S), :, labels] += 1.0 + shift  # models fairly sure of the label
    return logits, labels


def test_epsilon_hat_on_cuda_equals_cpu():
    r, y = _logits(0)
    u, _ = _logits(1, shift=0.5)
    u = u[:, :6]
    cpu = metrics.epsilon_hat(r, u, y)
    gpu = metrics.epsilon_hat(r.cuda(), u.cuda(), y.cuda())
    torch.testing.assert_close(gpu.per_example, cpu.per_example, rtol=1e-9, atol=1e-9,
                               equal_nan=True)
    assert gpu.epsilon_hat == pytest.approx(cpu.epsilon_hat, rel=1e-9)
    assert gpu.n_infinite == cpu.n_infinite and gpu.n_nan == cpu.n_nan


def test_competition_score_on_cuda_equals_cpu():
    r, y = _logits(2)
    u, _ = _logits(3, shift=0.3)
    cpu = metrics.competition_score(r, u, y)
    gpu = metrics.competition_score(r.cuda(), u.cuda(), y.cuda())
    torch.testing.assert_close(gpu.per_example, cpu.per_example, rtol=1e-9, atol=1e-9)
    assert gpu.forget_score == pytest.approx(cpu.forget_score, rel=1e-12)
    assert 0.0 <= gpu.forget_score <= 1.0


def test_accuracy_and_fairness_on_cuda_equal_cpu():
    logits, y = _logits(4)
    first = logits[:, 0]
    assert metrics.accuracy(first.cuda(), y.cuda()) == pytest.approx(metrics.accuracy(first, y))
    torch.testing.assert_close(metrics.per_model_accuracy(logits.cuda(), y.cuda()).cpu(),
                               metrics.per_model_accuracy(logits, y))
    torch.testing.assert_close(metrics.per_class_accuracy(logits.cuda(), y.cuda()).cpu(),
                               metrics.per_class_accuracy(logits, y))
    gpu = metrics.class_fairness(logits.cuda(), y.cuda())
    cpu = metrics.class_fairness(logits, y)
    assert gpu["worst_class"] == cpu["worst_class"]
    assert gpu["largest_gap"] == pytest.approx(cpu["largest_gap"])


def test_svc_mia_on_cuda_equals_cpu():
    gen = torch.Generator().manual_seed(5)

    def part(n, sure):
        logits = torch.randn(n, 10, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        logits[torch.arange(n), labels] += sure
        return logits, labels

    retain, test, forget = part(200, 4.0), part(150, 1.0), part(80, 2.0)
    cpu = metrics.svc_mia_efficacy(retain, test, forget)
    gpu = metrics.svc_mia_efficacy(*[(x.cuda(), y.cuda()) for x, y in (retain, test, forget)])
    assert gpu == pytest.approx(cpu)
