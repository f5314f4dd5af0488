"""Checkpoint files that are either the old version or the new one, never half of one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from finetune import atomic
from finetune.training.checkpoint_format import without_training_state


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, then renames it into place.

    A rename within one folder is atomic, so a crash or kill -9 mid-write leaves the previous
    last.ckpt loadable for --resume. Lightning's own writer stages the bytes in the system temp
    folder; when that is another filesystem, moving the file into place is a copy, which a crash
    can cut short.

    Files named in `inference_only` are written without the optimizer and scheduler state. (Not
    Lightning's save_weights_only: that also skips the callbacks' on_save_checkpoint, through which
    --ema puts the better weights into best.ckpt.)
    """

    def __init__(self, inference_only: tuple[str, ...] = ()):
        super().__init__()
        self.inference_only = inference_only

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        if path.name in self.inference_only:
            checkpoint = without_training_state(checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.open_replacing(path, "wb", needed=_tensor_bytes(checkpoint)) as f:
            torch.save(checkpoint, f)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0
