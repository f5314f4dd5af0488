"""Building a Trainer on the requested devices, with Lightning's refusals as one-line user errors."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException

from finetune.config import DEVICES_HELP
from finetune.errors import FinetuneError

# Words in Lightning's messages about the device settings (it raises several exception types for them).
_DEVICE_WORDS = ("accelerator", "devices", "device", "strategy", "num_nodes", "Requirement", "backend")


def device_trainer(accelerator: str, devices: int | str, strategy: str = "auto", num_nodes: int = 1,
                   **kwargs: Any) -> pl.Trainer:
    """`pl.Trainer(accelerator=..., devices=..., strategy=..., num_nodes=..., **kwargs)`.

    Raises:
        FinetuneError: Lightning refused the device settings; names them, what it said, the
            accelerators this machine has, and what --devices takes.
    """
    try:
        return pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, **kwargs)
    except (MisconfigurationException, TypeError, ValueError, ModuleNotFoundError) as e:
        if not isinstance(e, MisconfigurationException) and not any(w in str(e) for w in _DEVICE_WORDS):
            raise
        raise FinetuneError(f"--accelerator {accelerator} --devices {devices} --strategy {strategy}: "
                            f"{' '.join(str(e).split())} "
                            f"Accelerators available here: {', '.join(available_accelerators())}; "
                            f"--devices takes {DEVICES_HELP} (cpu: a count of processes)") from None


def available_accelerators() -> list[str]:
    """The accelerator names that would run on this machine."""
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

    found = [("cpu", CPUAccelerator), ("gpu", CUDAAccelerator), ("mps", MPSAccelerator)]
    return [name for name, accelerator in found if accelerator.is_available()]


def planned_world_size(accelerator: str, devices: int | str, strategy: str = "auto", num_nodes: int = 1) -> int:
    """How many processes a run on these settings trains in, as Lightning resolves them.

    A Trainer is built and dropped (no process starts before `fit`): Lightning's own rules for
    "auto", -1, GPU id lists and nodes apply, rather than a copy of them.
    """
    probe = device_trainer(accelerator, devices, strategy, num_nodes, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
    return int(probe.world_size)
