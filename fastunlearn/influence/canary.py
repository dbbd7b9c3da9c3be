"""Unlearning an inserted canary from a character model (Warnecke et al., Section 8 setup).

Given a :func:`~fastunlearn.exposure.run_canary_experiment` result (a trained
:class:`~fastunlearn.exposure.CharLM`, its vocabulary and the training text with the
canaries), the secret's characters are replaced by a same-length string of other characters
(the reference uses ``"not there "``): ``Z`` are the training windows (``seq_len + 1``
characters, the training window length of the canary experiment) whose inputs or targets
overlap a secret, ``Z~`` the same windows cut from the corrected text. A first- or
second-order influence update (summed next-character cross-entropy,
:func:`~fastunlearn.influence.influence_update`) removes the secret. Exposure is
measured before, after, and for a model retrained from scratch on the corrected text (same
seed and settings).

The Hessian's data is a seeded sample of ``hvp_windows`` windows of the corrected text plus
the corrected windows (the reference uses every window of the corrected text).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._atomic_files import write_text
from .._numbers import check_flag, check_int, check_seed, is_integer
from .._numbers import plain_fields as _plain_fields
from .._output_folder import check_output_folder
from .._process_flags import GLOBAL_RNG_LOCK
from .._result_shape import check_result_shape, require_entries
from .arguments import (
    _check_auto_or_float,
    _check_order,
)
from .update import CURVATURES, influence_update

__all__ = [
    "AUTO_DAMPING_BASE", "AUTO_DAMPING_FACTOR", "AUTO_DAMPING_TRIES", "AUTO_DAMPING_WINDOWS",
    "CanaryUnlearnConfig", "NextCharModel", "auto_damping", "canary_windows", "sequence_loss",
    "unlearn_canary", "render_canary_report", "write_canary_outputs",
]


class NextCharModel(nn.Module):
    """Wrap a :class:`~fastunlearn.exposure.CharLM` so ``forward`` returns only the logits.

    Shares the wrapped model's parameters: updating this module updates the CharLM.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-character logits ``[B, T, V]`` of token ids ``[B, T]``.

        (oneDNN's fused CPU RNN has no forward-mode derivative; the curvature products and
        ``influence_update`` switch recurrent models to the native kernels themselves.)
        """
        logits, _ = self.lm(tokens)
        return logits


def sequence_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Return the summed next-character cross-entropy (logits [B, T, V], targets [B, T])."""
    return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]),
                                       targets.reshape(-1), reduction="sum")


@dataclass
class CanaryUnlearnConfig:
    """Settings of :func:`unlearn_canary`.

    Attributes:
        replacement: Same-length string put in place of the secret (None: seeded random
            lowercase letters of the vocabulary).
        seq_len: Window length (inputs; the targets are shifted by one). None (default):
            the training window length of the canary experiment
            (``canary_result.config.seq_len``), so the affected windows are exactly the
            training windows that touch a secret.
        stride: Take every ``stride``-th affected window (plus the last one); 1 (default)
            takes all of them.
        order: 1 or 2.
        tau: First-order step size (or ``"auto"``).
        damping: Tikhonov damping of the second-order CG solve: ``"auto"`` (default) or a
            number >= 0. The summed loss of the affected windows (about canaries x
            (seq_len + secret length) of them) is large, and too small a damping
            overshoots, so the divergence check rejects the step; too large a damping
            shrinks the step (less is forgotten). ``"auto"`` starts from
            ``AUTO_DAMPING_BASE * (num_affected / AUTO_DAMPING_WINDOWS) ** 2`` (300 at
            224 affected windows, about 780 at 360, 2,500 at 648: the smallest dampings
            that were accepted on canary experiments of those sizes grow about
            quadratically) and, while the divergence check rejects the step (the
            corrected training loss grew, or a non-finite step), retries with the damping
            multiplied by ``AUTO_DAMPING_FACTOR`` (2), at most ``AUTO_DAMPING_TRIES`` (4)
            tries in all (Levenberg-Marquardt style). Every try is recorded in the
            result's ``damping_tries``. A number makes one try with that damping. The
            reference used LiSSA with d s = 3,600-3,900 on summed Hessians of 500-window
            batches; relative to its full-data Hessian that damping is about
            ``ceil(N / 500)`` times larger.
        curvature: ``"ggn"`` (positive semidefinite, default) or ``"hessian"``: the
            matrix of the second-order solve, and of the first-order ``tau="auto"`` line
            search's starting (curvature) step.
        cg_maxiter: CG iteration cap.
        hvp_windows: Windows of the corrected text sampled for the Hessian.
        retrain: Also retrain from scratch on the corrected text (same settings and seed
            as the canary experiment) and measure its exposure.
        seed: Seed of the replacement and the window sample.
        progress: Show progress bars (retraining).

    """

    replacement: str | None = None
    seq_len: int | None = None
    stride: int = 1
    order: int = 2
    tau: float | str = "auto"
    damping: float | str = "auto"
    curvature: str = "ggn"
    cg_maxiter: int = 30
    hvp_windows: int = 256
    retrain: bool = True
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        _plain_fields(self)  # NumPy scalars as Python values (equality, JSON)

    def validate(self) -> CanaryUnlearnConfig:
        """Check the fields; return self.

        Raises:
            TypeError: a field of the wrong type (named): a bool, float or str where an
                int is expected (``stride``, ``order`` ...), a bool or non-number ``tau``
                or ``damping``, a non-str ``replacement`` or ``curvature``, or a non-bool
                ``retrain`` or ``progress``.
            ValueError: a field out of range (named).

        """
        _plain_fields(self)  # fields may have been set after construction
        if self.replacement is not None and not isinstance(self.replacement, str):
            raise TypeError(f"'replacement' must be a str or None, got "
                            f"{type(self.replacement).__name__} {self.replacement!r}")
        for name in ("seq_len", "stride", "cg_maxiter", "hvp_windows"):
            value = getattr(self, name)
            if name == "seq_len" and value is None:
                continue
            check_int(name, value, 1)  # a bool or float is no count
        _check_order(self.order)
        _check_auto_or_float("tau", self.tau, positive=True)
        if not isinstance(self.curvature, str):
            raise TypeError(f"'curvature' must be a str, one of {CURVATURES}, got "
                            f"{type(self.curvature).__name__} {self.curvature!r}")
        if self.curvature not in CURVATURES:
            raise ValueError(f"'curvature' must be one of {CURVATURES}, got "
                             f"{self.curvature!r}")
        _check_auto_or_float("damping", self.damping)
        check_seed("seed", self.seed)
        check_flag("retrain", self.retrain)  # "no" would be truthy and retrain
        check_flag("progress", self.progress)
        return self


AUTO_DAMPING_BASE = 300.0
"""``damping="auto"``: the starting damping at ``AUTO_DAMPING_WINDOWS`` affected windows."""
AUTO_DAMPING_WINDOWS = 224
"""``damping="auto"``: the number of affected windows where the start is ``AUTO_DAMPING_BASE``."""
AUTO_DAMPING_FACTOR = 2.0
"""``damping="auto"``: the damping of a rejected try is multiplied by this for the next."""
AUTO_DAMPING_TRIES = 4
"""``damping="auto"``: tries at most (the last at ``AUTO_DAMPING_FACTOR ** 3`` times the start)."""


def auto_damping(num_affected: int) -> float:
    """Return the first damping ``damping="auto"`` tries for ``num_affected`` windows.

    ``AUTO_DAMPING_BASE * (num_affected / AUTO_DAMPING_WINDOWS) ** 2``: 300 at 224 windows
    (8 canaries, 24-character windows, 4 digits), about 780 at 360 (10 canaries, 32, 4),
    about 2,500 at 648 (12 canaries, 48, 6). The smallest accepted dampings of canary
    experiments of those sizes were in (150, 300], (400, 800] and (2400, 3000].

    Raises:
        TypeError: ``num_affected`` is not an int.
        ValueError: ``num_affected < 1``.

    """
    num_affected = check_int("num_affected", num_affected, 1)
    return AUTO_DAMPING_BASE * (num_affected / AUTO_DAMPING_WINDOWS) ** 2


def canary_windows(
    ids: Tensor, spans: list[tuple[int, int]], seq_len: int, stride: int = 1
) -> Tensor:
    """Start offsets of every training window of ``seq_len + 1`` characters touching ``spans``.

    Training draws windows starting at ``s`` in ``0 .. n - seq_len - 1``, with inputs
    ``s .. s + seq_len - 1`` and targets ``s + 1 .. s + seq_len``. Its inputs or targets
    contain a character of ``[a, b)`` exactly when ``a - seq_len <= s <= b - 1`` (at
    ``s = b - 1`` only an input: the secret's last character predicts the next one). Those
    starts (clipped to the text) are taken every ``stride``-th, plus the last one.

    Returns:
        Sorted unique int64 start offsets.

    Raises:
        TypeError: ``ids`` is not a 1-D tensor, ``spans`` not a sequence of ``(a, b)``
            int pairs, ``seq_len`` or ``stride`` not an int.
        ValueError: A span is not ``0 <= a < b <= len(ids)``, or ``seq_len`` or
            ``stride`` is < 1.

    """
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"'ids' must be a 1-D tensor of character ids, got {shape}")
    seq_len = check_int("seq_len", seq_len, 1)
    stride = check_int("stride", stride, 1)
    n = ids.numel()
    if isinstance(spans, (str, bytes)) or not hasattr(spans, "__iter__"):
        raise TypeError(f"'spans' must be a sequence of (a, b) pairs, got "
                        f"{type(spans).__name__}")
    spans = list(spans)
    for span in spans:
        if not (isinstance(span, (tuple, list)) and len(span) == 2
                and all(is_integer(v) for v in span)):
            raise TypeError(f"'spans' must hold (a, b) pairs of ints, got {span!r}")
        if not 0 <= span[0] < span[1] <= n:
            raise ValueError(f"'spans' holds {tuple(span)!r}, not 0 <= a < b <= {n} (the "
                             "length of 'ids')")
    starts: set[int] = set()
    for a, b in spans:
        low, high = max(0, a - seq_len), min(b - 1, n - seq_len - 1)
        if high < low:
            continue
        starts.update(range(low, high + 1, stride))
        starts.add(high)
    return torch.tensor(sorted(starts), dtype=torch.int64)


def _windows(ids: Tensor, starts: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    idx = starts.unsqueeze(1) + torch.arange(seq_len + 1)
    w = ids[idx]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def _replacement(vocab: Any, length: int, seed: int) -> str:
    letters = [c for c in vocab.chars if c.isalpha() and c.islower()]
    rng = random.Random(seed)
    return "".join(rng.choice(letters) for _ in range(length))


def unlearn_canary(
    canary_result: Any, config: CanaryUnlearnConfig | None = None
) -> dict[str, Any]:
    """Remove a canary's secret from a trained character model with an influence update.

    Args:
        canary_result: A :class:`~fastunlearn.exposure.CanaryResult` (its ``model`` is
            not modified: a copy is updated).
        config: Settings (default :class:`CanaryUnlearnConfig`).

    Returns:
        A JSON-ready dict: ``secret``, ``replacement``, ``num_affected`` windows,
        ``before`` / ``after`` / ``retrained`` exposures (rank and skew-normal, log-
        perplexity, greedy completion), ``update`` (the :class:`UpdateResult` fields of
        the last try), ``damping`` (that try's damping, the one finally used; None for
        first order), ``damping_tries`` (one dict per try: ``damping``, ``applied``,
        ``diverged``, ``loss_before``, ``loss_after``, ``residual``, ``converged``,
        ``solver_iterations``, ``reason``, ``seconds``; several only with
        ``damping="auto"``), ``update_seconds`` (all tries) and ``retrain_seconds``.
        When no try is applied, ``after`` measures the unchanged copy. ``model`` (the
        updated CharLM) is also returned under ``"model"`` (not JSON).

    Raises:
        TypeError: If ``config`` is neither None nor a :class:`CanaryUnlearnConfig`, or
            ``canary_result`` lacks a :class:`~fastunlearn.exposure.CanaryResult`'s fields.
        ValueError: Bad settings; ``canary_result`` has no inserted canary (or its text
            does not hold the secret at a canary offset); a replacement of the wrong length,
            with characters outside the vocabulary or reusing the secret's digits; or a
            ``seq_len`` not shorter than the text.

    """
    from ..exposure import CharLM, greedy_completion, measure_exposure, train_char_lm

    if config is not None and not isinstance(config, CanaryUnlearnConfig):
        raise TypeError(f"'config' must be a CanaryUnlearnConfig or None, got "
                        f"{type(config).__name__}")
    cfg = (config or CanaryUnlearnConfig()).validate()
    res = canary_result
    for attr in ("model", "vocab", "text", "canary_offsets", "config", "canary"):
        if not hasattr(res, attr):
            raise TypeError(f"'canary_result' must be a CanaryResult (missing {attr!r})")
    ccfg, vocab, text = res.config, res.vocab, res.text
    secret = res.canary.secret
    if not res.canary_offsets:
        raise ValueError("'canary_result' has no inserted canary (insertions = 0)")
    replacement = cfg.replacement if cfg.replacement is not None else _replacement(
        vocab, len(secret), cfg.seed)
    if len(replacement) != len(secret):
        raise ValueError(f"'replacement' must have the secret's length {len(secret)}, got "
                         f"{len(replacement)}")
    if any(c not in vocab.chars for c in replacement):
        raise ValueError("'replacement' holds characters outside the model's vocabulary")
    if any(c in secret for c in replacement if c.isdigit()):
        raise ValueError("'replacement' must not reuse the secret's digits")

    # corrected text: the secret replaced in every canary (same length: offsets unchanged)
    chars = list(text)
    spans = []
    for off in res.canary_offsets:
        a = off + len(ccfg.prefix)
        if text[a:a + len(secret)] != secret:
            raise ValueError(f"no secret at canary offset {off} of the text")
        chars[a:a + len(secret)] = replacement
        spans.append((a, a + len(secret)))
    corrected_text = "".join(chars)
    ids, new_ids = vocab.encode(text), vocab.encode(corrected_text)
    seq_len = cfg.seq_len if cfg.seq_len is not None else int(ccfg.seq_len)
    if ids.numel() <= seq_len:
        raise ValueError(f"'seq_len' {seq_len} must be shorter than the text ({ids.numel()})")
    starts = canary_windows(ids, spans, seq_len, cfg.stride)
    x_old, y_old = _windows(ids, starts, seq_len)
    x_new, y_new = _windows(new_ids, starts, seq_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    # the Hessian's sample: training windows (starts 0 .. n - seq_len - 1) of the new text
    sample = torch.randint(new_ids.numel() - seq_len, (cfg.hvp_windows,), generator=gen)
    xs, ys = _windows(new_ids, sample, seq_len)
    train_x, train_y = torch.cat([xs, x_new]), torch.cat([ys, y_new])

    device = next(res.model.parameters()).device
    lm = copy.deepcopy(res.model)
    wrapped = NextCharModel(lm)
    # the curvature also gives the first-order "auto" step its starting value
    kwargs: dict[str, Any] = dict(order=cfg.order, loss_fn=sequence_loss, tau=cfg.tau,
                                  curvature=cfg.curvature)
    auto = cfg.order == 2 and cfg.damping == "auto"
    if cfg.order == 2:
        kwargs.update(solver="cg", maxiter=cfg.cg_maxiter, tol=1e-6)
    dampings: list[float | None] = [None]  # first order: no damping
    if auto:
        start = auto_damping(int(starts.numel()))
        dampings = [start * AUTO_DAMPING_FACTOR ** k for k in range(AUTO_DAMPING_TRIES)]
    elif cfg.order == 2:
        dampings = [float(cfg.damping)]
    data = (x_old.to(device), y_old.to(device), x_new.to(device), y_new.to(device))
    train_data = (train_x.to(device), train_y.to(device))
    tries: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for damping in dampings:
        t_try = time.perf_counter()
        extra = {} if damping is None else {"damping": damping}
        # the model is changed only by an applied step: a rejected try leaves it as it was
        upd = influence_update(wrapped, *data, train_data=train_data, **kwargs, **extra)
        tries.append({"damping": damping, "applied": upd.applied, "diverged": upd.diverged,
                      "loss_before": upd.loss_before, "loss_after": upd.loss_after,
                      "residual": upd.residual, "converged": upd.converged,
                      "solver_iterations": upd.solver_iterations, "reason": upd.reason,
                      "seconds": time.perf_counter() - t_try})
        # a larger damping only helps a step the divergence check rejected (not a
        # non-finite gradient, a zero step or an applied one)
        if upd.applied or not upd.diverged or not math.isfinite(upd.gradient_norm):
            break
    update_s = time.perf_counter() - t0

    def measure(model: CharLM) -> dict[str, Any]:
        m = measure_exposure(model, vocab, ccfg.prefix, secret,
                             n_candidates=ccfg.n_candidates,
                             enumerate_limit=ccfg.enumerate_limit, seed=ccfg.seed)[0]
        return {"log_perplexity": m.log_perplexity, "rank": m.rank,
                "rank_exposure": m.rank_exposure,
                "skew_normal_exposure": m.skew_normal_exposure,
                "max_exposure": m.max_exposure,
                "completion": greedy_completion(model, vocab, ccfg.prefix, len(secret))}

    out: dict[str, Any] = {
        "config": {**asdict(cfg), "seq_len": seq_len}, "secret": secret,
        "replacement": replacement,
        "num_affected": int(starts.numel()), "num_canaries": len(spans),
        "before": measure(res.model), "after": measure(lm),
        "update": upd.to_dict(), "damping": tries[-1]["damping"], "damping_tries": tries,
        "update_seconds": update_s,
        "retrained": None, "retrain_seconds": None, "model": lm,
    }
    if cfg.retrain:
        # the experiment's initialisation, without resetting the caller's global RNG stream
        with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(ccfg.seed)
            fresh = CharLM(vocab.size, ccfg.embed_dim, ccfg.hidden, ccfg.layers, ccfg.cell)
        fresh = fresh.to(device)
        t0 = time.perf_counter()
        train_char_lm(fresh, new_ids, steps=ccfg.steps, seq_len=ccfg.seq_len,
                      batch_size=ccfg.batch_size, lr=ccfg.lr, weight_decay=ccfg.weight_decay,
                      seed=ccfg.seed, progress=cfg.progress)
        out["retrain_seconds"] = time.perf_counter() - t0
        out["retrained"] = measure(fresh)
    return out


def _code(text: Any) -> str:
    r"""Return ``text`` as a Markdown code span fit for a table cell.

    A greedy completion is any characters: a ``|`` would split the cell and a line break
    end the row (both escaped: ``\|``, ``\n``), a backtick end the span (a longer fence).
    """
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


#: The parts of an :func:`unlearn_canary` result the report reads: top-level entries, and
#: the entries of its dict parts (``before`` and ``after`` are exposure measurements).
_RESULT_KEYS = ("config", "update", "before", "after", "secret", "replacement",
                "num_canaries", "num_affected", "update_seconds")
_RESULT_PART_KEYS = {
    "config": ("order", "seq_len"),
    "update": ("applied", "num_gradients", "num_hvps", "solver_iterations"),
    "before": ("log_perplexity", "rank", "rank_exposure", "skew_normal_exposure",
               "completion", "max_exposure"),
    "after": ("log_perplexity", "rank", "rank_exposure", "skew_normal_exposure",
              "completion"),
}


def _check_result(result: object) -> dict[str, Any]:
    """Refuse anything but an :func:`unlearn_canary` result (named, not a KeyError)."""
    check_result_shape(result, "unlearn_canary", _RESULT_PART_KEYS, _RESULT_KEYS)
    assert isinstance(result, dict)  # for mypy: checked just above
    # what the sentence on the update reads: the damping of a second-order update, the
    # step size of a first-order one
    second = result["config"]["order"] == 2
    for part, keys in (("config", ("damping", "curvature") if second else ()),
                       ("update", ("damping",) if second else ("tau",))):
        require_entries(result, "unlearn_canary", part, keys)
    if result.get("retrained") and "retrain_seconds" not in result:
        raise ValueError("'result' is not an unlearn_canary result: it has 'retrained' but "
                         "lacks 'retrain_seconds'")
    return result


def render_canary_report(result: dict[str, Any]) -> str:
    """Markdown page of an :func:`unlearn_canary` result.

    Raises:
        TypeError / ValueError: ``result`` is not an :func:`unlearn_canary` result (not a
            dict, or a missing entry, named).

    """
    from ..report import format_value as fv

    result = _check_result(result)
    cfg, u = result["config"], result["update"]
    tries = result.get("damping_tries") or []
    if cfg["order"] == 2:
        damping = fv(u["damping"])
        if cfg["damping"] == "auto":
            tried = ", ".join(f"{fv(t['damping'])} ({'applied' if t['applied'] else 'rejected'})"
                              for t in tries)
            damping = f"auto: {tried}" if tried else "auto"
        how = f"second order (CG, {cfg['curvature']}, damping {damping})"
    else:
        how = f"first order (tau {fv(u['tau'])})"
    lines = ["# Canary unlearning", "",
             f"Secret `{result['secret']}` replaced by `{result['replacement']}` in "
             f"{result['num_canaries']} canaries: {result['num_affected']} affected windows of "
             f"{cfg['seq_len']} characters; {how}; applied: {fv(u['applied'])}"
             + (f" ({u['reason']})" if u.get("reason") else "") + ".", "",
             "| model | log-perplexity (bits) | rank | exposure (rank) | "
             "exposure (skew-normal) | greedy completion | time (s) |",
             "|---|---|---|---|---|---|---|"]
    rows = [("before", result["before"], None), ("updated", result["after"],
                                                 result["update_seconds"])]
    if result.get("retrained"):
        rows.append(("retrained", result["retrained"], result["retrain_seconds"]))
    for name, m, sec in rows:
        lines.append(f"| {name} | {fv(m['log_perplexity'])} | {m['rank']} | "
                     f"{fv(m['rank_exposure'])} | {fv(m['skew_normal_exposure'])} | "
                     f"{_code(m['completion'])} | {fv(sec)} |")
    lines += ["", f"Maximum exposure log2|R| = {fv(result['before']['max_exposure'])} bits. "
              f"Update: {u['num_gradients']} window gradients, {u['num_hvps']} window HVPs, "
              f"{u['solver_iterations']} solver iterations.", ""]
    return "\n".join(lines)


def write_canary_outputs(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``canary_unlearning.json`` and ``.md`` (the model is left out) into ``out_dir``.

    The result, the folder and the names in it are checked, and the report rendered,
    before anything is written: a bad argument leaves no file created or replaced.

    Returns:
        Kind (``json``, ``markdown``) -> path.

    Raises:
        TypeError: ``out_dir`` is not a str or ``os.PathLike``, or ``result`` not a dict.
        ValueError: ``out_dir`` is empty, it or a folder above it is a file, it is not
            writable, ``canary_unlearning.json`` or ``.md`` in it is a folder, or
            ``result`` is not an :func:`unlearn_canary` result (named).

    """
    from .._json_data import json_ready

    names = ("canary_unlearning.json", "canary_unlearning.md")
    folder = check_output_folder(out_dir, argument="out_dir", names=names)
    data = {k: v for k, v in _check_result(result).items() if k != "model"}
    markdown = render_canary_report(data)
    files = {"json": str(folder / names[0]), "markdown": str(folder / names[1])}
    text = json.dumps(json_ready({**data, "files": files}), indent=2, allow_nan=False) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(files["json"], text)
    write_text(files["markdown"], markdown)
    return files
