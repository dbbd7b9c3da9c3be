"""Run forgetting methods over seeds against retrained oracles and score them all.

:func:`run_harness` trains (or loads from the cache) the original model on the whole
training set and ``oracles`` models retrained from scratch on the retain set, runs every
method ``seeds`` times from the original model (``run_method(..., seed=s)``, timed), keeps
the logits of every model on the forget, retain and test sets, and computes:

* forget / retain / test accuracy and OPTML's UA (= 1 - forget accuracy) per model; when
  whole classes are forgotten the test set holds the other classes only (OPTML's class-wise
  protocol), for TA and for MIA's non-members;
* OPTML's SVC MIA-Efficacy per model (retain = members, test = non-members);
* Seed A's epsilon-hat and the NeurIPS 2023 competition forget score F and final score,
  unlearned models (one per seed) vs the oracles on the forget set (needs >= 2 of each);
* class fairness of the forget-set predictions;
* wall time and its ratio to the oracles' mean retraining time;
* the average absolute gap to the oracles over UA, RA, TA and MIA-Efficacy (SalUn's
  "Avg. gap").

A method that raises records the error (per seed) and the run goes on. A ``should_stop``
callable (Ctrl-C in ``fastunlearn forget``, see :mod:`fastunlearn._interrupt`) stops the
run between method runs: what is done is scored and written, the rest is marked "not run".
"""

from __future__ import annotations

import copy
import math
import time
import traceback
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._device import parse_device
from .._interrupt import StopCheck, check_stop_callable, stop_points, stop_requested
from .._model_inputs import refuse_input_dtype
from .._numbers import check_int
from .._output_folder import check_output_folder
from ..forget import run_method
from ..forget.suitability import unsuitable_reason
from ..metrics import (
    accuracy_report,
    class_fairness,
    competition_score,
    epsilon_hat,
    svc_mia_efficacy,
    time_ratio,
)
from ..metrics.competition import mark_final_score_undefined, zero_retrained_accuracies
from ..metrics.evaluate import MIN_BASELINE_HALF
from .config import ORACLE_SEED_OFFSET, HarnessConfig, built_method_config
from .data import HarnessData, load_harness_data, split_forget
from .training import train_or_load

__all__ = ["collect_logits", "privacy_metrics", "run_harness"]

PARTS = ("forget", "retain", "test")


@torch.no_grad()
def collect_logits(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """CPU logits ``[n, C]`` of ``model`` (eval mode): float32, float64 for a float64 model.

    Every submodule's mode is restored afterwards, also on an error or an interrupt.
    Logits of a float16 / bfloat16 model are widened to float32; a float64 model's stay
    float64 (rounding them to float32 lost digits silently). An empty ``x`` (``n = 0``)
    gives ``[0, C]`` logits (the model runs once on the empty batch); a model without
    parameters runs on the device of its first buffer, else on the CPU.

    Raises:
        TypeError: If ``model`` cannot run on ``x`` and ``x``'s dtype differs from its
            parameters' (float64 inputs into a float32 model, uint8 images, ...): the
            message names ``x`` and both dtypes; or ``batch_size`` is not an int (a bool
            or a float), ``model`` not a module or ``x`` not a tensor.
        ValueError: If ``batch_size < 1``.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"'x' must be a torch.Tensor, got {type(x).__name__}")
    batch_size = check_int("batch_size", batch_size, 1)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        first: Tensor | None = next(model.parameters(), None)
        if first is None:  # a parameterless model (a fixed function, buffers only)
            first = next(model.buffers(), None)
        device = first.device if first is not None else torch.device("cpu")
        out = []
        # at least one pass: an empty ``x`` still gives [0, C] logits (not an empty cat)
        for i in range(0, max(x.shape[0], 1), batch_size):
            try:
                logits = model(x[i:i + batch_size].to(device))
            except RuntimeError as exc:
                refuse_input_dtype(model, x, "x", exc)
                raise
            keep = logits.dtype == torch.float64
            out.append((logits if keep else logits.float()).cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    return torch.cat(out)


def _device(spec: str) -> torch.device:
    """Parse ``spec`` as ``cpu`` or ``cuda[:N]`` (ValueError, not torch's RuntimeError)."""
    return parse_device(spec)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_scores(logits: dict[str, Tensor], labels: dict[str, Tensor], mia: bool) -> dict:
    out = accuracy_report(**{p: (logits[p], labels[p]) for p in PARTS})
    if mia:
        out["mia_efficacy"] = svc_mia_efficacy((logits["retain"], labels["retain"]),
                                               (logits["test"], labels["test"]),
                                               (logits["forget"], labels["forget"]))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0


def _summarise(per_model: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = [k for k in per_model[0] if isinstance(per_model[0][k], (int, float))
            and not isinstance(per_model[0][k], bool)]
    for k in keys:
        mean, std = _mean_std([float(r[k]) for r in per_model])
        out[k] = mean
        out[f"{k}_std"] = std
    return out


def _iter(items: Any, progress: bool, desc: str) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


def run_harness(config: HarnessConfig, data: HarnessData | None = None, *,
                should_stop: StopCheck | None = None) -> dict[str, Any]:
    """Train, unlearn, score. Returns a JSON-friendly result (and the logits, as tensors).

    Args:
        config: The run's settings.
        data: Tensors to use instead of loading ``config.dataset``.
        should_stop: Called with no arguments after each model of the training phase
            (the original, then each oracle) and before each method run; True means
            "stop here" (``fastunlearn forget`` passes a
            :class:`~fastunlearn._interrupt.GracefulStop`, so the first Ctrl-C asks for
            it; any callable works, e.g. a time limit). None (default): never stop.
            Between method runs a stop ends the loop: the runs already made are scored
            as usual (a method with some runs done is summarised over those), a method
            with none gets status ``"not run"``, the result says
            ``stopped_on_request`` and the outputs are still written. During the
            training phase there is nothing to compare yet: the run stops after the model
            in training is done (it and the earlier ones stay in the cache, so the next
            run reuses them) by raising KeyboardInterrupt, and no result is written.

    Returns:
        ``{"config", "data", "original", "oracles", "methods": {name: {...}}, "cache",
        "stopped_on_request", "timing", "logits", "labels"}``, plus ``"stop_note"`` (which
        runs were made and which not) when stopped on request; a method's entry then also
        has ``"not_run"`` (the seeds not run) and a ``"note"``. ``logits`` / ``labels``
        hold tensors (``[n, C]`` per model and part) and are left out of the JSON. With
        ``config.out_dir`` set, the outputs are written there
        (:func:`fastunlearn.harness.write_outputs`) and ``"paths"`` lists them.

    Raises:
        TypeError: ``config`` is not a :class:`HarnessConfig` (or a field changed after
            construction has the wrong type: the fields are checked again), ``data`` is
            neither None nor a :class:`HarnessData`, ``should_stop`` is neither None nor
            callable, or other bad settings or data (nothing is trained then).
        ValueError: Bad settings (also ``cache_dir`` or ``out_dir`` a file or not
            writable) or data (nothing is trained then).
        KeyboardInterrupt: ``should_stop`` answered True during the training of the
            original model and the oracles (the models trained so far are in the cache;
            nothing is written), or Ctrl-C came while one trained: with a cache its
            finished epochs are kept there too (the message says how many) and the next
            run resumes after them (``resumed_after_epoch`` in the result).

    """
    if not isinstance(config, HarnessConfig):
        raise TypeError(f"'config' must be a HarnessConfig, got {type(config).__name__}")
    # Re-run the field checks: a field changed after construction (``config.oracles = 0``,
    # ``config.mia = "no"``) would otherwise fail after the training, or be misread. Its
    # warnings were shown when the config was built: not repeated here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config.__post_init__()
    check_stop_callable(should_stop, "should_stop")  # before any training
    t_start = time.perf_counter()
    device = _device(config.device)
    if config.out_dir is not None:
        from .report import check_out_dir

        check_out_dir(config.out_dir)  # before training: a bad --out must not waste the run
    if config.cache_dir is not None:  # a file there failed deep in the cache (FileExistsError)
        check_output_folder(config.cache_dir, argument="cache_dir")
    if data is None:
        data = load_harness_data(config.dataset, config.data_dir)
    elif not isinstance(data, HarnessData):
        raise TypeError(f"'data' must be a HarnessData, got {type(data).__name__}")
    forget_idx, retain_idx = split_forget(data, config.forget, config.forget_seed)
    overrides = config.method_settings()
    sets = {"forget": (data.x_train[forget_idx], data.y_train[forget_idx]),
            "retain": (data.x_train[retain_idx], data.y_train[retain_idx]),
            "test": (data.x_test, data.y_test)}
    # classes with no example left in the retain set are forgotten as a whole
    forgotten = sorted(set(sets["forget"][1].tolist()) - set(sets["retain"][1].tolist()))
    if forgotten:
        # OPTML's class-wise protocol drops the forgotten classes from the test set too:
        # TA (retrain ~ the original's accuracy) and MIA's non-members are the other classes
        kept = ~torch.isin(data.y_test, torch.tensor(forgotten, dtype=data.y_test.dtype))
        sets["test"] = (data.x_test[kept], data.y_test[kept])
    labels = {p: sets[p][1] for p in PARTS}
    skipped = ({m: reason for m in config.methods if (reason := unsuitable_reason(
        m, labels["forget"], labels["retain"])) is not None} if config.skip_unsuitable else {})
    digest = data.digest()
    common: dict[str, Any] = dict(
        model_name=config.model, x=data.x_train, y=data.y_train, num_classes=data.num_classes,
        data_digest=digest, settings=config.train, cache_dir=config.cache_dir, device=device,
        progress=config.progress)
    cache = {"hits": 0, "misses": 0}

    def logits_of(model: nn.Module) -> dict[str, Tensor]:
        return {p: collect_logits(model, sets[p][0]) for p in PARTS}

    jobs = [("original", torch.arange(data.x_train.shape[0]), config.train_seed)]
    jobs += [(f"oracle{i}", retain_idx, config.train_seed + ORACLE_SEED_OFFSET + i)
             for i in range(config.oracles)]
    trained = {}
    train_bar = _iter(jobs, config.progress, "train original + oracles")
    for role, idx, seed in train_bar:
        try:
            tm = train_or_load(indices=idx, seed=seed, role=role, **common)
        except TypeError as exc:  # train_or_load names its 'x': here that is data.x_train
            if not str(exc).startswith("'x': "):
                raise
            raise TypeError(f"'data': x_train{str(exc)[3:]}") from None
        cache["hits" if tm.cached else "misses"] += 1
        trained[role] = tm
        # nothing to compare without every oracle: a stop here ends the run, unwritten
        if stop_requested(should_stop, "should_stop"):
            _close(train_bar)
            where = (f"; the {len(trained)} model(s) trained or loaded so far are in the "
                     f"cache ({config.cache_dir})" if config.cache_dir is not None else
                     " (no cache: they are not kept)")
            raise KeyboardInterrupt(
                f"stopped on request while training the original model and the oracles, "
                f"after {role} ({len(trained)} of {len(jobs)}){where}; nothing written")
    original = trained["original"]
    oracle_roles = [r for r, _, _ in jobs[1:]]

    all_logits: dict[str, list[dict[str, Tensor]]] = {"original": [logits_of(original.model)]}
    all_logits["oracles"] = [logits_of(trained[r].model) for r in oracle_roles]
    oracle_scores = [_model_scores(lg, labels, config.mia) for lg in all_logits["oracles"]]
    oracle_seconds = [trained[r].seconds for r in oracle_roles]
    retrain_s = sum(oracle_seconds) / len(oracle_seconds)
    oracle_forget = torch.stack([lg["forget"] for lg in all_logits["oracles"]], 1)
    result: dict[str, Any] = {
        "config": _config_dict(config, overrides),
        "data": {"dataset": data.name, "num_train": int(data.x_train.shape[0]),
                 "num_test": int(sets["test"][0].shape[0]),
                 "test_classes_dropped": forgotten, "num_classes": data.num_classes,
                 "num_forget": int(forget_idx.numel()), "num_retain": int(retain_idx.numel()),
                 "forget_indices": forget_idx.tolist()},
        "original": {**_model_scores(all_logits["original"][0], labels, config.mia),
                     "seconds": original.seconds, "cached": original.cached,
                     "resumed_after_epoch": original.resumed_after_epoch,
                     "fairness": _fairness(all_logits["original"], labels["forget"],
                                           labels["test"], forgotten)},
        "oracles": {**_summarise(oracle_scores), "per_model": oracle_scores,
                    "seeds": [seed for _, _, seed in jobs[1:]],
                    "seconds": oracle_seconds, "mean_seconds": retrain_s,
                    "cached": [trained[r].cached for r in oracle_roles],
                    "resumed_after_epoch": [trained[r].resumed_after_epoch
                                            for r in oracle_roles],
                    "fairness": _fairness(all_logits["oracles"], labels["forget"],
                                          labels["test"], forgotten)},
        "methods": {},
        "cache": cache,
    }
    if config.oracles >= 2 * MIN_BASELINE_HALF:  # the rule of `fastunlearn evaluate`
        half = config.oracles // 2
        base = privacy_metrics(oracle_forget[:, :half], oracle_forget[:, half:2 * half],
                               labels["forget"])
        base["split"] = f"oracles 1..{half} vs {half + 1}..{2 * half}"
        result["oracles"]["baseline"] = base

    # the methods work on copies; a snapshot guards the original against one that does not
    snapshot = {k: v.detach().clone() for k, v in original.model.state_dict().items()}
    runs = [(m, s) for m in config.methods if m not in skipped for s in range(config.seeds)]
    # each method's config once (its warnings were shown, naming it, by the HarnessConfig);
    # a run gets a copy with its seed
    method_configs = {m: built_method_config(m, overrides[m])
                      for m in config.methods if m not in skipped}
    bar = _iter(runs, config.progress, "unlearn")
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in config.methods}
    stopped = False
    with stop_points(should_stop):  # Ctrl-C here: finish the step, then stop
        for name, seed in bar:
            if stop_requested(should_stop, "should_stop"):  # before each run: none is cut short
                stopped = True
                _close(bar)
                break
            if config.progress and hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"{name} seed {seed}")
            record: dict[str, Any] = {"seed": seed}
            try:
                method_config = copy.copy(method_configs[name])
                method_config.seed, method_config.progress = seed, config.progress
                _sync(device)
                t0 = time.perf_counter()
                model = run_method(name, original.model, sets["forget"], sets["retain"],
                                   method_config)
                _sync(device)
                record["seconds"] = time.perf_counter() - t0
                lg = logits_of(model)
                bad = [p for p in PARTS if not bool(torch.isfinite(lg[p]).all())]
                if bad:
                    raise FloatingPointError(f"non-finite logits on the {bad[0]} set")
                record.update(_model_scores(lg, labels, config.mia))
                record["status"] = "ok"
                all_logits.setdefault(name, []).append(lg)
            except Exception as exc:  # noqa: BLE001 - a failing method must not stop the run
                record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc(limit=4))
            state = original.model.state_dict()
            if any(not torch.equal(state[k], v) for k, v in snapshot.items()):
                original.model.load_state_dict(snapshot)
                if record["status"] == "ok":
                    all_logits[name].pop()
                    if not all_logits[name]:
                        del all_logits[name]
                record.update(status="error", error="RuntimeError: the method modified the "
                              "original model (restored; its result is discarded)")
            original.model.eval()
            per_method[name].append(record)
    oracle_summary = result["oracles"]
    for name in config.methods:
        if name in skipped:  # the forget set does not suit it: no run, no error
            result["methods"][name] = {"runs": [], "num_ok": 0, "status": "skipped",
                                       "note": skipped[name]}
            continue
        result["methods"][name] = _method_entry(
            per_method[name], all_logits.get(name, []), oracle_forget, labels["forget"],
            oracle_summary, retrain_s, labels["test"], forgotten)
        if stopped:
            _mark_not_run(result["methods"][name], config.seeds)
    result["stopped_on_request"] = stopped
    if stopped:
        result["stop_note"] = _stop_note(result["methods"], len(runs))
    result["timing"] = {"total_seconds": time.perf_counter() - t_start,
                        "retrain_seconds": retrain_s}
    result["logits"] = all_logits
    result["labels"] = labels
    if config.out_dir is not None:
        from .report import write_outputs

        result["paths"] = write_outputs(result, config.out_dir, plots=config.plots)
    return result


def _close(bar: Any) -> None:
    """Close a progress bar left early (a plain iterable has nothing to close)."""
    close = getattr(bar, "close", None)
    if callable(close):
        close()


def _mark_not_run(entry: dict[str, Any], seeds: int) -> None:
    """Record in a method's entry the seeds a stop on request left out (if any)."""
    done = {r["seed"] for r in entry["runs"]}
    missing = [s for s in range(seeds) if s not in done]
    if not missing:
        return
    entry["not_run"] = missing
    if entry["runs"]:
        entry["note"] = (f"stopped on request after {len(entry['runs'])} of {seeds} run(s); "
                         "summarised over those")
    else:
        entry["note"] = "stopped on request before it ran"


def _stop_note(methods: dict[str, dict[str, Any]], total: int) -> str:
    """Say how far a run stopped on request got and what it left out."""
    done = sum(len(e["runs"]) for e in methods.values())
    left = []
    for name, e in methods.items():
        missing = e.get("not_run") or []
        if not missing:
            continue
        if not e["runs"]:
            left.append(f"{name} (all {len(missing)} seed(s))")
        else:
            left.append(f"{name} (seed(s) {', '.join(map(str, missing))})")
    text = f"stopped on request after {done} of {total} method runs"
    return text + (f"; not run: {', '.join(left)}" if left else "")


def _fairness(logits: list[dict[str, Tensor]], forget_labels: Tensor, test_labels: Tensor,
              forgotten: list[int]) -> dict[str, Any]:
    """Class fairness on the forget set and on the test examples of the kept classes."""
    out: dict[str, Any] = {
        "forget": class_fairness(torch.stack([lg["forget"] for lg in logits], 1), forget_labels)}
    keep = ~torch.isin(test_labels, torch.tensor(forgotten, dtype=torch.long))
    if bool(keep.any()):
        test = torch.stack([lg["test"][keep] for lg in logits], 1)
        out["test_kept_classes"] = class_fairness(test, test_labels[keep])
    out["forgotten_classes"] = list(forgotten)
    return out


def _method_entry(records: list[dict[str, Any]], logits: list[dict[str, Tensor]],
                  oracle_forget: Tensor, forget_labels: Tensor, oracles: dict[str, Any],
                  retrain_s: float, test_labels: Tensor,
                  forgotten: list[int]) -> dict[str, Any]:
    """Summarise a method's runs; a method with no run (stopped before it) is "not run"."""
    if not records:  # never "ok": nothing ran (a stop on request came first)
        return {"runs": [], "num_ok": 0, "status": "not run"}
    ok = [r for r in records if r["status"] == "ok"]
    entry: dict[str, Any] = {"runs": records, "num_ok": len(ok),
                             "status": "ok" if len(ok) == len(records) else
                             ("partial" if ok else "error")}
    errors = [r["error"] for r in records if r["status"] != "ok"]
    if errors:
        entry["error"] = errors[0]
    if not ok:
        return entry
    entry.update(_summarise([{k: v for k, v in r.items() if k != "seed"} for r in ok]))
    entry["time_ratio"] = time_ratio(entry["seconds"], retrain_s) if retrain_s > 0 else math.nan
    gaps = [abs(entry[k] - oracles[k]) for k in
            ("unlearning_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy")
            if k in entry and k in oracles]
    entry["avg_gap"] = sum(gaps) / len(gaps) if gaps else math.nan
    unlearn = torch.stack([lg["forget"] for lg in logits], 1)
    entry["fairness"] = _fairness(logits, forget_labels, test_labels, forgotten)
    accs = {"ra_u": entry["retain_accuracy"], "ra_r": oracles["retain_accuracy"],
            "ta_u": entry["test_accuracy"], "ta_r": oracles["test_accuracy"]}
    # the final score divides by the oracles' accuracies: where one is 0 it is undefined
    # (final_score raised, after every run, and the whole result was lost)
    zero = zero_retrained_accuracies(accs)
    entry.update(privacy_metrics(oracle_forget, unlearn, forget_labels,
                                 None if zero else accs))
    mark_final_score_undefined(entry, zero, "the oracles'")
    return entry


def privacy_metrics(retrain: Tensor, unlearn: Tensor, labels: Tensor,
                    accuracies: dict[str, float] | None = None) -> dict[str, Any]:
    """Seed A's epsilon-hat (>= 2 models per group) and the competition scores (>= 3).

    Args:
        retrain: ``[S, N, C]`` oracle logits on the forget set.
        unlearn: ``[S, M, C]`` unlearned-model logits.
        labels: ``[S]``.
        accuracies: ``ra_u, ra_r, ta_u, ta_r`` for the competition's final score.

    Returns:
        ``epsilon_hat``, ``seed_a``, ``competition_forget_score``,
        ``competition_final_score``, ``competition``, ``per_example`` where computable,
        and ``privacy_note`` saying what was skipped.

    """
    out: dict[str, Any] = {}
    notes = []
    n, m = int(retrain.shape[1]), int(unlearn.shape[1])
    if n >= 2 and m >= 2:
        eps = epsilon_hat(retrain, unlearn, labels)
        out["epsilon_hat"] = eps.epsilon_hat
        out["seed_a"] = eps.to_dict()
        out["per_example"] = {"epsilon": [float(v) for v in eps.per_example.tolist()]}
    else:
        notes.append(f"epsilon-hat needs >= 2 oracles and >= 2 unlearned models ({n}, {m})")
    if n >= 2 and m >= 3:
        comp = competition_score(retrain, unlearn, labels, accuracies=accuracies)
        out["competition_forget_score"] = comp.forget_score
        out["competition_final_score"] = comp.final_score
        out["competition"] = comp.to_dict()
        out.setdefault("per_example", {})["competition_epsilon"] = [
            float(v) for v in comp.per_example.tolist()]
    else:
        notes.append(f"the competition score needs >= 2 oracles and >= 3 unlearned models "
                     f"({n}, {m})")
    if notes:
        out["privacy_note"] = "; ".join(notes)
    return out


def _config_dict(config: HarnessConfig, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(config)
    out["methods"] = list(config.methods)
    out["method_settings"] = {m: {k: (list(v) if isinstance(v, tuple) else v)
                                  for k, v in o.items()} for m, o in overrides.items()}
    return out
