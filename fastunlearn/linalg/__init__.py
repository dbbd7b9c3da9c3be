"""Linear operators (GLM and network Hessians) and solvers (CG, PCG, LiSSA, Cholesky)."""

from .cg import CGInverseOperator, CGNotConvergedError, CGResult, cg
from .dense import cholesky_solve, dense_hessian
from .lissa import LissaDivergenceError, LissaResult, lissa
from .network import (
    NetworkHessianOperator,
    flatten_params,
    params_vector,
    selected_parameter_names,
    unflatten_like,
)
from .operators import (
    DenseOperator,
    GLMHessianOperator,
    LinearOperator,
    ScaledIdentityPlus,
    damped,
)

__all__ = [
    # operators
    "LinearOperator",
    "DenseOperator",
    "GLMHessianOperator",
    "ScaledIdentityPlus",
    "damped",
    # network Hessians and parameter vectors
    "NetworkHessianOperator",
    "selected_parameter_names",
    "params_vector",
    "flatten_params",
    "unflatten_like",
    # conjugate gradients
    "cg",
    "CGResult",
    "CGInverseOperator",
    "CGNotConvergedError",
    # LiSSA
    "lissa",
    "LissaResult",
    "LissaDivergenceError",
    # dense solves
    "cholesky_solve",
    "dense_hessian",
]
