"""torchvision's ResNet basic block with its shortcut added out of place.

torchvision's block ends with ``out += identity``: an in-place change of the last norm
layer's output. A layer with a full backward hook (opacus' per-sample gradients for DP-SGD)
returns its output through a custom autograd function that autograd forbids modifying in
place, so DP-SGD training of a torchvision ResNet stopped at the first backward pass. The
subclass computes the same function with the same parameters and state-dict keys; only the
sum is a new tensor. Kept in its own module (imported when a ResNet is built) so that
importing the zoo does not import torchvision, and so that the class pickles by name.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

__all__ = ["OutOfPlaceBasicBlock", "use_out_of_place_blocks"]


class OutOfPlaceBasicBlock(BasicBlock):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, nothing modified in place."""

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output for ``x`` [N, C, H, W]."""
        shortcut = x if self.downsample is None else self.downsample(x)
        hidden = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(hidden)) + shortcut)


def use_out_of_place_blocks(net: nn.Module) -> nn.Module:
    """Turn every torchvision ``BasicBlock`` of ``net`` into an :class:`OutOfPlaceBasicBlock`.

    The blocks keep their modules and parameters (only their class changes); returns ``net``.
    """
    for module in net.modules():
        if type(module) is BasicBlock:
            module.__class__ = OutOfPlaceBasicBlock
    return net
