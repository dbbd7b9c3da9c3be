"""Whether a layer normalises with the statistics of the batch it is given."""

from __future__ import annotations

from torch import nn

__all__ = ["uses_batch_statistics"]


def uses_batch_statistics(module: nn.Module, *, training: bool | None = None) -> bool:
    """Whether ``module`` is a batch-norm layer normalising with its batch's statistics.

    It does in training mode, and in either mode without running statistics
    (``track_running_stats=False``); it then couples the rows of a batch (the loss is not a
    sum over rows). ``training``: the mode to judge in (None: the module's own; False for
    code that runs the model in eval mode).
    """
    training = module.training if training is None else training
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and (
        training or module.running_mean is None or module.running_var is None
    )
