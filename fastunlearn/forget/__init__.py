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

# methods: forgetb (SCRUB, Bad Teacher, SalUn, UNSIR, anti-samples); importing registers them
from . import antisamples, bad_teacher, salun, scrub, unsir  # noqa: E402, F401  # isort: skip
from .antisamples import (  # noqa: E402  # isort: skip
    ANTISAMPLE_PRESETS,
    AntiSampleConfig,
    AntiSamples,
    antisample_preset,
    generate_antisamples,
)
from .bad_teacher import BadTeacherConfig  # noqa: E402  # isort: skip
from .salun import SalUnConfig, saliency_mask  # noqa: E402  # isort: skip
from .scrub import ScrubConfig  # noqa: E402  # isort: skip
from .unsir import UnsirConfig, error_maximizing_noise  # noqa: E402  # isort: skip

__all__ += [
    "ANTISAMPLE_PRESETS",
    "AntiSampleConfig",
    "AntiSamples",
    "BadTeacherConfig",
    "SalUnConfig",
    "ScrubConfig",
    "UnsirConfig",
    "antisample_preset",
    "error_maximizing_noise",
    "generate_antisamples",
    "saliency_mask",
]
# end methods: forgetb

# the influence-unlearning method (fastunlearn.influence behind the shared interface)
from . import influence_method as influence_method  # noqa: E402
