"""Typed wrappers around the compiled ``torch.ops.fastunlearn`` operators.

Families: GLM curvature (:mod:`.glm`), generic CG support (:mod:`.cg`), per-sample
gradients of linear-like layers (:mod:`.per_sample`), neighbour search (:mod:`.knn`) and
the competition metric's per-example epsilon (:mod:`.competition`).
Float64 oracles for all of them are in :mod:`.reference`.
"""

# loads the compiled library first: the wrappers below register fake kernels and autograd
# formulas for ops that must already exist
from .. import _extension  # noqa: F401  # isort: skip
from . import (  # noqa: F401  (internal ops of the certified removal step)
    certified,
    certified_commit,
    certified_start,
    certified_tail,
    certified_woodbury,
    reference,
)
from .cg import cg_update_
from .competition import competition_epsilons
from .glm import (
    CGResult,
    glm_cg,
    glm_hessian,
    glm_hvp,
    glm_hvp_margins,
    jacobi_inverse_diagonal,
)
from .knn import farthest_k, knn_extreme, nearest_k
from .per_sample import (
    per_sample_dot,
    per_sample_grad,
    per_sample_sq_norm,
    per_sample_weighted_sum,
)

#: Every op in the ``fastunlearn`` namespace.
OP_NAMES = (
    "glm_hvp",
    "glm_hvp_margins",
    "glm_hessian",
    "glm_cg",
    "cg_update_",
    "per_sample_grad",
    "per_sample_sq_norm",
    "per_sample_dot",
    "per_sample_weighted_sum",
    "knn_extreme",
    "competition_epsilons",
    # the certified removal step's fused pieces (float64; fastunlearn.certified uses them)
    "certified_cg_step",
    "certified_cg_steps",
    "certified_start_",
    "certified_woodbury_row_",
    "certified_cg_tail_",
    "certified_commit_",
)

#: Ops with a CPU kernel only: the CPU removal loop (the GPU runs CUDA graphs instead).
CPU_ONLY_OPS = ("certified_cg_step", "certified_cg_steps")

__all__ = [
    "CPU_ONLY_OPS",
    "OP_NAMES",
    "reference",
    # GLM curvature
    "glm_hvp",
    "glm_hvp_margins",
    "glm_hessian",
    "glm_cg",
    "CGResult",
    "jacobi_inverse_diagonal",
    # CG support
    "cg_update_",
    # per-sample gradients
    "per_sample_grad",
    "per_sample_sq_norm",
    "per_sample_dot",
    "per_sample_weighted_sum",
    # neighbour search
    "knn_extreme",
    "farthest_k",
    "nearest_k",
    # evaluation metrics
    "competition_epsilons",
]
