"""MIA-Efficacy as the OPTML baselines define it (Unlearn-Sparse / SalUn ``SVC_MIA``).

An RBF support-vector classifier (``C = 3``, ``gamma = "auto"``) is trained on one feature,
the confidence (softmax probability of the true class), with retain examples as members
(label 1) and test examples as non-members (label 0); as in their evaluation, the members
are the first ``len(test)`` retain examples (balanced classes). MIA-Efficacy is the fraction
of forget examples the classifier predicts as non-members (OPTML tables report it x 100).
Confidences are computed on the logits' device in float64; the SVC runs in scikit-learn on
the CPU with a fixed ``random_state``, so numpy's global RNG is left untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._numbers import check_flag, check_real
from ._checks import as_tensor
from .statistics import true_class_confidence

__all__ = ["svc_mia_efficacy"]


def svc_mia_efficacy(
    retain: tuple[Any, Any],
    test: tuple[Any, Any],
    forget: tuple[Any, Any],
    *,
    balance: bool = True,
    C: float | np.floating = 3.0,
) -> float:
    """Fraction of the forget set an SVC on the confidence predicts as non-member.

    Args:
        retain: ``(logits [n_r, C], labels [n_r])`` of the retain set (members).
        test: ``(logits [n_t, C], labels [n_t])`` of the test set (non-members).
        forget: ``(logits [n_f, C], labels [n_f])`` of the forget set.
        balance: Use only the first ``n_t`` retain examples (OPTML's evaluation).
        C: SVC regularisation, 3 in OPTML.

    Returns:
        MIA-Efficacy in [0, 1].

    Raises:
        TypeError: If a set is not a ``(logits, labels)`` pair, ``balance`` is not a bool or
            ``C`` is not a number.
        ValueError: On bad shapes/labels, an empty set, sets whose logits have different
            numbers of classes or ``C`` not finite and > 0.

    Errors about a set's logits or labels name the set (``'test': 'labels' has labels
    outside [0, 10) ...``).

    """
    from sklearn.svm import SVC

    check_flag("balance", balance)  # a string such as "no" is truthy
    balance = bool(balance)
    C = check_real("C", C, positive=True)  # libsvm never returns with C = inf

    feats = {}
    classes: dict[str, int] = {}
    for name, pair in (("retain", retain), ("test", test), ("forget", forget)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"'{name}' must be a (logits, labels) pair")
        try:
            logits = as_tensor(pair[0], "logits")  # converted once (a list, say)
            conf = true_class_confidence(logits, pair[1])
        except (TypeError, ValueError) as exc:  # 'labels' alone did not say which set
            raise type(exc)(f"'{name}': {exc}") from exc
        if conf.dim() != 1:
            raise ValueError(f"'{name}' logits must have shape [n, C], got {tuple(conf.shape)}"
                             " (without the class dim)")
        if conf.numel() == 0:
            raise ValueError(f"'{name}' is empty")
        _check_same_classes(classes, name, logits.shape[-1])
        feats[name] = conf.detach().cpu().numpy()  # logits may require grad
    members = feats["retain"][: len(feats["test"])] if balance else feats["retain"]
    x = np.concatenate([members, feats["test"]])[:, None]
    y = np.concatenate([np.ones(len(members)), np.zeros(len(feats["test"]))])
    # a fixed random_state: without it libsvm's fit draws a seed from numpy's global RNG,
    # advancing the caller's stream (the seed has no effect on the result without
    # probability estimates, so the score is unchanged)
    clf = SVC(C=C, gamma="auto", kernel="rbf", random_state=0)
    clf.fit(x, y)
    pred = clf.predict(feats["forget"][:, None])
    return float(1.0 - pred.mean())


def _check_same_classes(classes: dict[str, int], name: str, count: int) -> None:
    """Record set ``name``'s class count; ValueError if it differs from an earlier set's.

    The three sets are one model's logits over the same classes: confidences of a model
    with other classes are not comparable (the SVC would mix them).
    """
    for other, seen in classes.items():
        if count != seen:
            raise ValueError(f"'{name}' logits have {count} classes but '{other}' logits have "
                             f"{seen}: the sets must come from one model over the same classes")
    classes[name] = count
