"""Regularisation around the classifier head: dropout before it, and stochastic depth checks."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from finetune.errors import FinetuneError


class DropoutLinear(nn.Linear):
    """nn.Linear with dropout on its input.

    A subclass rather than nn.Sequential(Dropout, Linear): the parameters keep their names
    (`fc.weight`, not `fc.1.weight`), so weight files, freezing and exports are unaffected, and in
    eval mode it is exactly the original layer.
    """

    def __init__(self, linear: nn.Linear, p: float):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias
        self.drop = nn.Dropout(p)  # holds no tensors: the state dict is the Linear's

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features), input dropped with probability p in training."""
        # F.linear rather than super().forward(): TorchScript cannot compile super() calls.
        return F.linear(self.drop(x), self.weight, self.bias)


def _classifier_path(model: nn.Module, num_classes: int) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
             or isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1)]
    if not names:
        raise FinetuneError(f"cannot find the {num_classes}-class classifier of {type(model).__name__}")
    return names[-1]


def set_head_dropout(model: nn.Module, num_classes: int, p: float) -> None:
    """Puts dropout with probability p right before the classifier of a torchvision network.

    When the classifier already follows an nn.Dropout (VGG, EfficientNet, MobileNet, SqueezeNet)
    that dropout gets probability p; otherwise (ResNet, RegNet, ConvNeXt, ViT...) the final Linear
    becomes a DropoutLinear.

    Args:
        model: The network, modified in place.
        num_classes: Outputs of its classifier (how the classifier is found).
        p: Dropout probability in [0, 1).
    """
    path = _classifier_path(model, num_classes)
    parent_name, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential) and leaf.isdigit() and int(leaf) > 0 \
            and isinstance(parent[int(leaf) - 1], nn.Dropout):
        parent[int(leaf) - 1].p = p
        return
    head = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    if not isinstance(head, nn.Linear):
        raise FinetuneError(f"--head-dropout: the classifier {path} of {type(model).__name__} is a "
                            f"{type(head).__name__} without a dropout before it; use --head-dropout 0")
    if leaf.isdigit():
        parent[int(leaf)] = DropoutLinear(head, p)
    else:
        setattr(parent, leaf, DropoutLinear(head, p))


def has_stochastic_depth(model: nn.Module) -> bool:
    """True when some layer drops residual paths with a positive rate (timm DropPath, torchvision StochasticDepth)."""
    return any(float(getattr(m, "drop_prob", 0) or getattr(m, "p", 0) or 0) > 0
               for m in model.modules() if type(m).__name__ in ("DropPath", "StochasticDepth"))


def no_drop_path_error(name: str) -> FinetuneError:
    return FinetuneError(
        f"--drop-path: {name} has no stochastic depth (drop path). Use --drop-path 0, or a backbone "
        f"that has it: most timm models (resnet*, convnext_*, vit_*, efficientnet_*) or torchvision's "
        f"tv:convnext_*, tv:efficientnet_*, tv:swin_*"
    )
