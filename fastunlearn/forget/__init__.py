"""Forgetting methods for deep networks: one interface, ``method(model, forget, retain, config)``.

See :mod:`fastunlearn.forget.base` for the interface and the registry.
"""

from .base import (
    ForgetConfig,
    ForgetMethod,
    as_dataset,
    available_methods,
    clone_model,
    get_method,
    iterate,
    make_loader,
    model_device,
    register,
    run_method,
)

__all__ = [
    "ForgetConfig",
    "ForgetMethod",
    "as_dataset",
    "available_methods",
    "clone_model",
    "get_method",
    "iterate",
    "make_loader",
    "model_device",
    "register",
    "run_method",
]

# methods: forgeta -- importing these modules registers retrain, finetune, neggrad,
# neggrad_plus, random_labels, poison_full, two_stage, selective_pruning,
# prune_last_layer, pruning_complex, activation_reset, l1_sparse and fisher.
from . import activation_reset as activation_reset  # noqa: E402
from . import finetune as finetune  # noqa: E402
from . import fisher as fisher  # noqa: E402
from . import gradient_ascent as gradient_ascent  # noqa: E402
from . import l1_sparse as l1_sparse  # noqa: E402
from . import pruning as pruning  # noqa: E402
from . import relabel as relabel  # noqa: E402
from . import retrain as retrain  # noqa: E402

# end methods: forgeta
