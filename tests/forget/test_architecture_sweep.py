"""Every registered forgetting method on architectures other than image CNNs.

The sweep runs each method (with tiny epochs / steps) on: a tabular MLP, an LSTM text
classifier on int64 token ids (``nn.Embedding``), a two-layer GRU text classifier with
dropout, an MLP with ``nn.LayerNorm`` and ``nn.GELU``, a float64 MLP, the LSTM with a frozen
embedding, and a model with no ``nn.Linear`` at all (1-D convolutions only). Each
(method, architecture) outcome is pinned in :data:`EXPECTED`: either the method runs (new
model in eval mode, finite outputs, at least one trainable parameter changed, frozen ones
kept) or it refuses up front, before any training, with a named error. The caller's model
is never modified.

Fixed by this sweep: anti-samples and UNSIR crashed inside the embedding (they generate
float inputs) and now refuse token inputs with a TypeError; influence refused token inputs
although it only differentiates parameters, and now runs on them; Fisher's vectorised
per-example gradients crashed on a multi-layer GRU and now fall back to a loop; methods
that need a final ``nn.Linear`` look it up before any work and name the method.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_state import assert_unchanged, state_copy
from test_inputs_all import no_costly_work  # noqa: F401  (a fixture)
from torch import nn
from torch.utils.data import TensorDataset

from fastunlearn.forget import available_methods, get_method

pytestmark = pytest.mark.filterwarnings(
    # vmap over nn.LSTM on CPU (Fisher's per-example gradients) warns about speed only
    "ignore:There is a performance drop:UserWarning"
)

N_RETAIN, N_FORGET, T, VOCAB, C = 40, 10, 6, 20, 3

# the fields a method's config has among these are set; the rest keep their defaults
TINY = {
    "epochs": 1, "batch_size": 16, "overfit_epochs": 1, "forget_epochs": 1,
    "noise_steps": 2, "noise_size": 8, "retain_per_class": 5, "repair_epochs": 1,
    "max_steps": 1, "lr_decay_epochs": (), "maxiter": 5, "hvp_batch_size": 64,
    "milestones": (), "n_generated": 8,
}
# methods that forget whole classes get a forget set of class 0 only (no class 0 in retain)
CLASSWISE = {"antisamples", "unsir"}


class TextRNN(nn.Module):
    """Token ids ``[N, T]`` -> embedding -> LSTM / GRU -> last hidden state -> Linear."""

    def __init__(self, cell: str = "lstm", dropout: float = 0.0, freeze: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.emb.weight.requires_grad_(not freeze)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        layers = 2 if dropout else 1
        self.rnn = rnn(8, 8, num_layers=layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, C)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.fc(self.drop(out[:, -1]))


class NoLinear(nn.Module):
    """Features ``[N, 10]`` -> two 1-D convolutions -> logits ``[N, 3]``; no nn.Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.out = nn.Conv1d(4, C, 8)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x.unsqueeze(1)))).flatten(1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, C))


# name -> (builder, input kind)
ARCHS = {
    "mlp": (_mlp, "float"),
    "lstm": (lambda: TextRNN("lstm"), "tokens"),
    "gru_dropout": (lambda: TextRNN("gru", dropout=0.2), "tokens"),
    "layernorm_gelu": (
        lambda: nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, C)),
        "float",
    ),
    "float64": (lambda: _mlp().double(), "double"),
    "frozen_embedding": (lambda: TextRNN("lstm", freeze=True), "tokens"),
    "no_linear": (NoLinear, "float"),
}
TOKEN_ARCHS = [a for a, (_, kind) in ARCHS.items() if kind == "tokens"]

_TOKENS = "needs floating-point inputs"
_NO_LINEAR = "needs an nn.Linear classifier head"
# (method, architecture) -> "runs" or (error type, message fragment); "runs" when absent
EXPECTED: dict[tuple[str, str], object] = {
    **{(m, a): (TypeError, f"{m} {_TOKENS}")
       for m in ("antisamples", "antisamples_multiclass") for a in TOKEN_ARCHS},
    **{("unsir", a): (TypeError, f"unsir {_TOKENS}") for a in TOKEN_ARCHS},
    ("activation_reset", "no_linear"): (ValueError, f"reset_mlp=True {_NO_LINEAR}"),
    ("prune_last_layer", "no_linear"): (ValueError, f"prune_last_layer {_NO_LINEAR}"),
}


def _build(arch: str) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ARCHS[arch][0]()
    return model.eval()


def _data(kind: str, classwise: bool) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(1)
    n = N_RETAIN + N_FORGET
    if kind == "tokens":
        x = torch.randint(0, VOCAB, (n, T), generator=g)
    else:
        x = torch.randn(n, 10, generator=g, dtype=torch.float64 if kind == "double" else None)
    if classwise:
        rest = 1 + torch.randint(0, C - 1, (N_RETAIN,), generator=g)
        y = torch.cat([torch.zeros(N_FORGET, dtype=torch.long), rest])
    else:
        y = torch.randint(0, C, (n,), generator=g)
    return (TensorDataset(x[:N_FORGET], y[:N_FORGET]),
            TensorDataset(x[N_FORGET:], y[N_FORGET:]))


def _config(name: str, **overrides):
    _, cls = get_method(name)
    # the fields a method ignores (fisher's epochs) would only warn
    fields = {f.name for f in dataclasses.fields(cls)} - set(cls.UNUSED_FIELDS)
    return cls(**{k: v for k, v in {**TINY, **overrides}.items() if k in fields})




def _assert_runs(name: str, model: nn.Module, new: nn.Module, retain: TensorDataset) -> None:
    assert isinstance(new, nn.Module) and new is not model
    assert not any(m.training for m in new.modules()), "returned model is not in eval mode"
    old = dict(model.named_parameters())
    changed = False
    for n, p in new.named_parameters():
        assert p.dtype == old[n].dtype, n
        assert p.requires_grad == old[n].requires_grad, n
        if p.requires_grad:
            changed |= not torch.equal(p, old[n])
        else:  # frozen parameters come back bit-identical
            assert torch.equal(p, old[n]), n
    assert changed, f"{name} returned the model unchanged"
    with torch.no_grad():
        out = new(retain.tensors[0])
    assert out.shape == (N_RETAIN, C)
    assert bool(torch.isfinite(out).all())


def test_sweep_covers_the_registry():
    assert len(available_methods()) >= 20
    assert {m for m, _ in EXPECTED} <= set(available_methods())
    assert {a for _, a in EXPECTED} <= set(ARCHS)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", available_methods())
def test_method_on_architecture(name, arch):
    model = _build(arch)
    before = state_copy(model)
    forget, retain = _data(ARCHS[arch][1], name in CLASSWISE)
    fn, _ = get_method(name)
    expected = EXPECTED.get((name, arch), "runs")
    if expected == "runs":
        new = fn(model, forget, retain, _config(name))
        assert_unchanged(model, before)
        _assert_runs(name, model, new, retain)
    else:
        error, fragment = expected
        with pytest.raises(error, match=fragment):
            fn(model, forget, retain, _config(name))
        assert_unchanged(model, before)


@pytest.mark.usefixtures("no_costly_work")
@pytest.mark.parametrize("arch", TOKEN_ARCHS)
@pytest.mark.parametrize("name", ["antisamples", "antisamples_multiclass", "unsir"])
def test_input_generating_methods_refuse_tokens_before_any_work(name, arch):
    """The refusal comes before any training, noise optimisation or neighbour search."""
    model = _build(arch)
    before = state_copy(model)
    forget, retain = _data("tokens", classwise=True)
    pattern = r"needs floating-point inputs \(it trains on .*int64 inputs.*Embedding cannot"
    with pytest.raises(TypeError, match=pattern):
        get_method(name)[0](model, forget, retain, _config(name))
    assert_unchanged(model, before)


@pytest.mark.usefixtures("no_costly_work")
@pytest.mark.parametrize("name", ["activation_reset", "prune_last_layer"])
def test_missing_head_is_refused_before_any_work(name):
    model = _build("no_linear")
    before = state_copy(model)
    forget, retain = _data("float", classwise=False)
    with pytest.raises(ValueError, match="model has no nn.Linear layer"):
        get_method(name)[0](model, forget, retain, _config(name))
    assert_unchanged(model, before)


def test_activation_reset_without_head_runs_with_reset_mlp_off():
    model = _build("no_linear")
    before = state_copy(model)
    forget, retain = _data("float", classwise=False)
    new = get_method("activation_reset")[0](model, forget, retain,
                                            _config("activation_reset", reset_mlp=False))
    assert_unchanged(model, before)
    _assert_runs("activation_reset", model, new, retain)


def test_fisher_classwise_without_head():
    """Class-wise Fisher zeroes head rows: without an nn.Linear it refuses up front,
    and runs (noise only) with ``forget_class_rows=False``."""
    model = _build("no_linear")
    before = state_copy(model)
    forget, retain = _data("float", classwise=True)
    fn = get_method("fisher")[0]
    with pytest.raises(ValueError, match=f"forget_class_rows=True.*{_NO_LINEAR}"):
        fn(model, forget, retain, _config("fisher"))
    assert_unchanged(model, before)
    new = fn(model, forget, retain, _config("fisher", forget_class_rows=False))
    assert_unchanged(model, before)
    _assert_runs("fisher", model, new, retain)


def test_fisher_gru_matches_per_example_gradients():
    """The loop fallback (no vmap rule for a two-layer GRU) gives the autograd Fisher."""
    from fastunlearn.forget.fisher import fisher_diagonal

    model = _build("gru_dropout")
    _, retain = _data("tokens", classwise=False)
    x, y = retain.tensors
    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(8):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(params.values()))
        for n, g in zip(params, grads, strict=True):
            expected[n] += g.pow(2)
    fisher = fisher_diagonal(model, TensorDataset(x[:8], y[:8]), batch_size=16)
    assert set(fisher) == set(params)
    for n in params:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-7)


def test_influence_runs_on_token_inputs():
    """Influence differentiates only the parameters, so integer token ids are accepted."""
    model = _build("lstm")
    forget, retain = _data("tokens", classwise=False)
    new = get_method("influence")[0](model, forget, retain, _config("influence"))
    assert new.unlearning_info["applied"]
    _assert_runs("influence", model, new, retain)


@pytest.mark.usefixtures("no_costly_work")
@pytest.mark.parametrize("name", available_methods())
def test_inputs_the_model_cannot_take_are_refused_before_any_work(name):
    """uint8 images into a float CNN: a TypeError naming the inputs, not a torch error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, C))
    before = state_copy(model)
    x = torch.randint(0, 255, (N_FORGET + N_RETAIN, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(N_FORGET + N_RETAIN) % C
    if name in CLASSWISE:
        y = torch.cat([torch.zeros(N_FORGET, dtype=torch.long),
                       1 + torch.arange(N_RETAIN) % (C - 1)])
    forget = TensorDataset(x[:N_FORGET], y[:N_FORGET])
    retain = TensorDataset(x[N_FORGET:], y[N_FORGET:])
    with pytest.raises(TypeError, match=r"model cannot run on the inputs \(dtype torch.uint8"):
        get_method(name)[0](model, forget, retain, _config(name))
    assert_unchanged(model, before)
