"""Writers for the graph formats of a bundle: ONNX (legacy exporter) and frozen TorchScript."""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Writes an fp32 ONNX graph with a dynamic batch axis.

    The legacy TorchScript-based exporter (dynamo=False) needs no onnxscript, and in eval mode it
    folds every BatchNorm that follows a convolution into the convolution's weights and bias
    (`count_onnx_ops` lets the caller check).

    Args:
        model: Network in eval mode; maps (B, 3, S, S) -> (B, C).
        example: An input batch, shape (B, 3, S, S), float32.
        path: Output file (model.onnx).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation notices: nothing a user can act on
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=torch.onnx.TrainingMode.EVAL,
        )
    return path


def count_onnx_ops(path: Path) -> Counter:
    """Op type -> node count of an ONNX file (e.g. to see that no BatchNormalization is left)."""
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Writes a frozen TorchScript module; freezing folds Conv+BatchNorm pairs into the convs.

    Scripting keeps control flow; models that do not script (some timm blocks) are traced instead.
    """
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        try:
            scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - TorchScript's frontend raises many types for unsupported code
            scripted = torch.jit.trace(model, example)
        frozen = torch.jit.freeze(scripted)
        torch.jit.save(frozen, str(path))
    return path


def count_torchscript_batchnorms(path: Path) -> int:
    """BatchNorm calls left in a saved TorchScript graph (0 once every one is folded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    return sum("batch_norm" in node.kind() for node in module.inlined_graph.nodes())


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm modules in an eager network."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
