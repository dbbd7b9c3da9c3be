"""A character-level recurrent language model and teacher-forced secret scoring."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._numbers import check_flag, check_int

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CharLM", "sequence_log_perplexity"]

_LN2 = math.log(2.0)


def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule with its training flag (``model.train(flag)`` would set them all)."""
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, mode in modes:
        m.training = mode


class CharLM(nn.Module):
    """Embedding -> LSTM/GRU -> linear next-character logits at every position.

    The reference's model (influence reference section 8) is an embedding of width 64,
    one LSTM layer of 256 units and a dense softmax layer; it predicts the character after
    a 24-character window. This model predicts every next character of a sequence, which
    trains on the same windows with one pass.

    Args:
        vocab_size: Number of tokens.
        embed_dim: Embedding width (64 in the reference).
        hidden: Recurrent units per layer (256 in the reference).
        layers: Recurrent layers.
        cell: ``"lstm"`` (reference) or ``"gru"``.

    Raises:
        ValueError: If a size is not positive or ``cell`` is unknown.
        TypeError: If a size is not an int (a bool is not one).

    """

    def __init__(
        self,
        vocab_size: int | np.integer,
        embed_dim: int | np.integer = 64,
        hidden: int | np.integer = 256,
        layers: int | np.integer = 1,
        cell: str = "lstm",
    ) -> None:
        super().__init__()
        vocab_size = check_int("vocab_size", vocab_size, 1)
        embed_dim = check_int("embed_dim", embed_dim, 1)
        hidden = check_int("hidden", hidden, 1)
        layers = check_int("layers", layers, 1)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell)
        if rnn is None:
            raise ValueError(f"'cell' must be 'lstm' or 'gru', got {cell!r}")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = rnn(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(
        self, tokens: Tensor, state: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """Return ``(logits [B, T, V], state)`` for token ids ``[B, T]``.

        ``state`` is the recurrent state after the last position (pass it back to continue
        the sequence); ``None`` starts from zeros.

        Raises:
            TypeError: If ``tokens`` is not an integer tensor.
            ValueError: If ``tokens`` is not 2-D or holds an id outside ``0..vocab_size-1``.

        """
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
            raise TypeError(f"'tokens' must be an int64 (or int32) tensor of ids, got {got}")
        if tokens.dim() != 2:
            raise ValueError(f"'tokens' must be 2-D [B, T], got shape {tuple(tokens.shape)}")
        if tokens.numel() and bool(((tokens < 0) | (tokens >= self.vocab_size)).any()):
            raise ValueError(f"'tokens' holds ids outside the vocabulary 0..{self.vocab_size - 1}")
        hidden, state = self.rnn(self.embed(tokens), state)
        return self.out(hidden), state


def _check_model(model: object) -> None:
    """Refuse a ``model`` that is not a module with parameters (TypeError naming 'model')."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a CharLM, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise TypeError(f"'model' must be a CharLM (a module with parameters), got a "
                        f"{type(model).__name__} without any")


def _run_model(
    model: nn.Module, tokens: Tensor, state: object = None
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """``model(tokens, state)``; a module that is not a :class:`CharLM` and fails is named.

    Another module than a :class:`CharLM` (a ``Linear`` on token ids, a classifier) fails
    deep inside torch (``mat1 and mat2 must have the same dtype``) or returns no
    ``(logits, state)`` pair: that is a TypeError naming ``model`` and the forward it needs.
    """
    need = ("'model' must be a CharLM (or a module whose forward maps int64 token ids "
            "[B, T] and a state to (logits [B, T, V], state))")
    if isinstance(model, CharLM):
        return model(tokens, state)
    try:
        out = model(tokens) if state is None else model(tokens, state)
    except (RuntimeError, TypeError) as exc:
        raise TypeError(f"{need}; the {type(model).__name__} given failed: {exc}") from None
    if not isinstance(out, tuple) or len(out) != 2 or not isinstance(out[0], Tensor) \
            or out[0].dim() != 3:
        raise TypeError(f"{need}; the {type(model).__name__} given returned "
                        f"{type(out).__name__}")
    return out


def _expand_state(
    state: Tensor | tuple[Tensor, Tensor], batch: int
) -> Tensor | tuple[Tensor, ...]:
    if isinstance(state, tuple):
        return tuple(s.expand(-1, batch, -1).contiguous() for s in state)
    return state.expand(-1, batch, -1).contiguous()


@torch.no_grad()
def sequence_log_perplexity(
    model: CharLM,
    prefix: Tensor,
    secrets: Tensor,
    *,
    batch_size: int | np.integer = 4096,
    progress: bool = False,
) -> Tensor:
    """Log-perplexity in bits of each secret after a prefix, teacher-forced.

    ``P(s) = -sum_i log2 p(s_i | prefix, s_<i)``: each character of the secret is scored
    given the prefix and the secret's *own* earlier characters. (The reference scored its
    canary by feeding back the model's argmax characters but the random secrets by teacher
    forcing; here both use teacher forcing.) The prefix is run once and its state reused.

    Args:
        model: A :class:`CharLM` (any module with the same ``forward`` signature).
        prefix: Token ids ``[P]``, ``P >= 1``.
        secrets: Token ids ``[N, L]``.
        batch_size: Secrets scored per forward pass.
        progress: Show a tqdm bar over the secrets (a space of 10**6 takes minutes on a
            CPU).

    Returns:
        float64 ``[N]`` log-perplexities in bits. The training mode of the model and of
        each of its submodules is restored.

    Raises:
        ValueError: If shapes are wrong, an id is outside the vocabulary or ``batch_size``
            is < 1.
        TypeError: If the ids are not int64 tensors, ``batch_size`` is not an int (a bool
            is not one), ``progress`` not a bool, or ``model`` is not a module, or is not
            a :class:`CharLM` and fails on the ids or does not return
            ``(logits [B, T, V], state)``.

    """
    for value, arg, dim in ((prefix, "prefix", 1), (secrets, "secrets", 2)):
        if not isinstance(value, Tensor) or value.dtype != torch.int64:
            raise TypeError(f"'{arg}' must be an int64 tensor")
        if value.dim() != dim or value.shape[-1] < 1:
            raise ValueError(f"'{arg}' must be {dim}-D with a non-empty last dimension")
        vocab = getattr(model, "vocab_size", None)
        if value.numel() and (value.min() < 0 or (vocab is not None and value.max() >= vocab)):
            raise ValueError(f"'{arg}' holds ids outside the vocabulary")
    batch_size = check_int("batch_size", batch_size, 1)
    progress = check_flag("progress", progress)
    _check_model(model)
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    modes = _module_modes(model)
    model.eval()
    try:
        logits, state = _run_model(model, prefix.to(device).unsqueeze(0))
        first = torch.log_softmax(logits[:, -1].double(), dim=-1)  # [1, V]
        out = torch.empty(secrets.shape[0], dtype=torch.float64)
        bar = tqdm(total=secrets.shape[0], disable=not progress, desc="score", unit="secret",
                   leave=False)
        for start in range(0, secrets.shape[0], batch_size):
            chunk = secrets[start : start + batch_size].to(device)
            b = chunk.shape[0]
            logp = first.expand(b, -1).gather(1, chunk[:, :1]).squeeze(1)
            if chunk.shape[1] > 1:
                rest, _ = _run_model(model, chunk[:, :-1], _expand_state(state, b))
                rest = torch.log_softmax(rest.double(), dim=-1)
                logp = logp + rest.gather(2, chunk[:, 1:].unsqueeze(2)).squeeze(2).sum(1)
            out[start : start + b] = (-logp / _LN2).cpu()
            bar.update(b)
        bar.close()
    finally:
        _restore_modes(modes)
    return out
