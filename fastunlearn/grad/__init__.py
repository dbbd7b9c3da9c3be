"""Per-sample gradient engine for nn.Modules (hooks -> per-sample ops, torch.func fallback).

:class:`PerSampleGradients` computes per-sample gradient norms, dot products, DP-SGD
clipped sums and materialised per-sample gradients of any model from one forward and one
backward pass. Layer rules are registered by module type in :data:`LAYER_RULES`.
"""

from .conv import ConvRule
from .engine import LossFn, PerSampleGradients
from .fallback import FunctorchRule
from .layers import (
    LAYER_RULES,
    CapturedLayer,
    EmbeddingRule,
    GroupNormRule,
    LayerCall,
    LayerNormRule,
    LayerRule,
    LinearLikeRule,
    LinearRule,
    MaterialisingRule,
    RMSNormRule,
    find_rule,
    register_rule,
)

__all__ = [
    # engine
    "PerSampleGradients",
    "LossFn",
    # rule registry and extension points
    "LAYER_RULES",
    "register_rule",
    "find_rule",
    "LayerRule",
    "MaterialisingRule",
    "LinearLikeRule",
    "LayerCall",
    "CapturedLayer",
    # native rules
    "LinearRule",
    "ConvRule",
    "EmbeddingRule",
    "LayerNormRule",
    "GroupNormRule",
    "RMSNormRule",
    # fallback
    "FunctorchRule",
]
