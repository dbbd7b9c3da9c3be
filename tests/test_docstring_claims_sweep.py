"""Docstring claims of metrics / influence / forget / harness / exposure / data / models /
report checked against the code: one test per code defect fixed by the sweep."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastunlearn.exposure import (
    CharLM,
    CharVocab,
    greedy_completion,
    measure_exposure,
    sequence_log_perplexity,
)
from fastunlearn.harness import collect_logits

pytestmark = pytest.mark.usefixtures("one_thread")


class _Doubler(nn.Module):
    """A classifier without parameters (a fixed function of the inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, -x], 1)


@pytest.mark.parametrize(
    ("model", "x", "shape"),
    [
        # old: ValueError "torch.cat(): expected a non-empty list of Tensors" for n = 0
        (nn.Linear(3, 2), torch.randn(0, 3), (0, 2)),
        # old: StopIteration from next(model.parameters()) for a parameterless model
        (_Doubler(), torch.randn(4, 1), (4, 2)),
    ],
)
def test_collect_logits_gives_cpu_logits_n_by_c(model, x, shape):
    # "CPU logits ``[n, C]`` of ``model``"
    out = collect_logits(model, x)
    assert tuple(out.shape) == shape
    assert out.device.type == "cpu" and out.dtype == torch.float32


def _char_model() -> tuple[CharLM, CharVocab]:
    torch.manual_seed(0)
    vocab = CharVocab.from_texts("key: ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    model.train()
    model.rnn.eval()  # a submodule in another mode than its parent
    return model, vocab


@pytest.mark.parametrize("which", ["greedy_completion", "sequence_log_perplexity"])
def test_exposure_scoring_restores_each_submodules_mode(which):
    # old: model.train(was_training) set every submodule to the parent's mode (rnn -> train)
    model, vocab = _char_model()
    if which == "greedy_completion":
        greedy_completion(model, vocab, "key: ", 2)
    else:
        sequence_log_perplexity(model, vocab.encode("key: "), vocab.encode(["12", "34"]))
    assert model.training is True
    assert model.rnn.training is False
    assert model.embed.training is True


@pytest.mark.parametrize("which", ["sequence_log_perplexity", "measure_exposure"])
def test_exposure_batch_size_of_the_wrong_type_is_a_type_error(which):
    # old: ValueError ("must be a positive int") for a float batch size, while
    # measure_exposure documents "TypeError: ... a count has the wrong type"
    model, vocab = _char_model()
    with pytest.raises(TypeError, match="batch_size"):
        if which == "sequence_log_perplexity":
            sequence_log_perplexity(model, vocab.encode("key: "), vocab.encode(["12"]),
                                    batch_size=2.5)
        else:
            measure_exposure(model, vocab, "key: ", "12", batch_size=2.5)
    with pytest.raises(ValueError, match="batch_size"):  # out of range stays a ValueError
        sequence_log_perplexity(model, vocab.encode("key: "), vocab.encode(["12"]),
                                batch_size=0)


def test_fisher_diagonal_restores_each_submodules_mode():
    # old: model.train(was_training) set every submodule's flag (a Dropout left in eval
    # came back in training mode)
    from torch.utils.data import TensorDataset

    from fastunlearn.forget.fisher import fisher_diagonal

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.1),
                                torch.nn.Linear(4, 2))
    model.train()
    model[1].eval()
    ds = TensorDataset(torch.randn(6, 3), torch.randint(0, 2, (6,)))
    fisher_diagonal(model, ds, batch_size=3)
    assert [m.training for m in model.modules()] == [True, True, False, True]
