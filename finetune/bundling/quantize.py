"""int8 ONNX via onnxruntime's static (QDQ) quantization, calibrated on real training images."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import numpy as np

from finetune.bundling.formats import INPUT_NAME
from finetune.config import QuantizeMode

QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)


class _Batches:
    """onnxruntime CalibrationDataReader over preprocessed batches (B, 3, S, S) float32."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches = batches
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, batch: int = 8) -> Path:
    """Writes a statically quantized int8 model (QDQ, per-channel weights, uint8 activations).

    Static rather than dynamic quantization: dynamic mode leaves convolutions in float (or makes
    slow ConvInteger ops), so it barely helps CNNs; static calibration quantizes the convs.

    Args:
        fp32: The fp32 ONNX model.
        out: Output file (model.int8.onnx).
        calibration: Preprocessed images, shape (N, 3, S, S) float32, to pick activation ranges.
        batch: Calibration batch size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    reader = _Batches([calibration[i:i + batch] for i in range(0, len(calibration), batch)])
    try:
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
    return out
