"""The checkpoint format: the one module that knows the keys of a `.ckpt` this toolkit writes.

A checkpoint is the dict Lightning saves, with this toolkit's additions (FORMAT_VERSION 1):

    state_dict          parameter name -> tensor (the EMA weights where they scored better, with --ema)
    epoch               the epoch it was written in, counted from 0 (Lightning's)
    global_step, loops  Lightning's training progress
    optimizer_states, lr_schedulers    last.ckpt only (TRAINING_STATE)
    callbacks           the callbacks' states (Lightning's)
    ema                 the EMA callback's state, with --ema
    hyper_parameters    class_names; config (the RunConfig as JSON data, None for a module built from its
                        parts); parts (optimizer, schedule, loss, image_size, channels_last)
    finetune            format_version; plan (the RunPlan record less its config); backbone; class_names;
                        data_config (the training input's); frozen_units; build_options

Writers use `hyperparameters` and `write_record`; readers use `read_checkpoint` (or `migrate` on a dict
Lightning loaded), which upgrades an older layout one version step at a time, as Lightning's
`utilities/migration` does.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from finetune.errors import FinetuneError
from finetune.training.losses import LossSpec
from finetune.training.optim import OptimizerSpec
from finetune.training.schedules import ScheduleSpec

STATE_DICT = "state_dict"
EPOCH = "epoch"
EMA = "ema"
HYPERPARAMETERS = "hyper_parameters"
RECORD = "finetune"
VERSION = "format_version"
# What a file that is never resumed from leaves out: best.ckpt serves eval, export and --teacher,
# while --resume reads last.ckpt. AdamW's two moments are twice the weights: without them best.ckpt
# is a third of the size and of the write time (0.47 s -> 0.16 s for resnet18).
TRAINING_STATE = ("optimizer_states", "lr_schedulers")
# What Lightning restores a run from besides the weights.
RESUME_STATE = (EPOCH, "global_step", "loops", *TRAINING_STATE)

FORMAT_VERSION = 1
# Checkpoints whose record carries no version have the layout of version 1: the first one versioned,
# and every layout before it is unreleased.
UNVERSIONED = 1
# Version v -> the step that upgrades a checkpoint of version v to v + 1, in place. One entry per format
# change, each with a comment naming the change that needed it.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], None]] = {}

HELP = "expected a .ckpt written by `finetune run` (RUN_DIR/checkpoints/best.ckpt or last.ckpt)"
# The keys every reader may rely on, as dotted paths: the messages name them so.
_REQUIRED = {HYPERPARAMETERS: ("class_names", "config", "parts"),
             RECORD: ("plan", "backbone", "data_config", "build_options")}


@dataclass(frozen=True)
class ModuleParts:
    """The parts a FinetuneModule is built from besides its network and classes (`hyper_parameters.parts`)."""

    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    loss: LossSpec
    image_size: int | None
    channels_last: bool | None


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint of this toolkit at FORMAT_VERSION, as its readers see it.

    Attributes:
        path: The file.
        class_names: Class names in output index order.
        config: The RunConfig as JSON data; None for a module built from its parts.
        parts: The module's parts (optimizer, schedule, loss, image_size, channels_last).
        plan: The run plan's record (resolved values, sources) less its config.
        backbone: The backbone's name.
        data_config: The training input's preprocessing (`DataConfig.to_dict`).
        build_options: Builder arguments the network was built with (`Backbone.build_options`).
        state_dict: Parameter name -> tensor, names as the module has them.
        epoch: The epoch it was written in, counted from 0; None when it records none.
        lacking_resume_state: The keys of RESUME_STATE it lacks (best.ckpt keeps no TRAINING_STATE).
    """

    path: Path
    class_names: list[str]
    config: dict[str, Any] | None
    parts: ModuleParts
    plan: dict[str, Any]
    backbone: str
    data_config: dict[str, Any]
    build_options: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    epoch: int | None
    lacking_resume_state: tuple[str, ...]


def hyperparameters(class_names: list[str], config: Mapping[str, Any] | None, parts: ModuleParts) -> dict[str, Any]:
    """The `hyper_parameters` block (what `save_hyperparameters` stores and the trackers see)."""
    return {"class_names": list(class_names), "config": None if config is None else dict(config),
            "parts": {"optimizer": asdict(parts.optimizer), "schedule": asdict(parts.schedule),
                      "loss": asdict(parts.loss), "image_size": parts.image_size,
                      "channels_last": parts.channels_last}}


def _parts(raw: dict[str, Any], path: Path) -> ModuleParts:
    """The parts from their plain-data form.

    Raises:
        FinetuneError: A part is missing or has fields this toolkit's parts do not have.
    """
    try:
        optimizer = OptimizerSpec(**{**raw["optimizer"], "lr_mults": tuple(raw["optimizer"]["lr_mults"])})
        return ModuleParts(optimizer, ScheduleSpec(**raw["schedule"]), LossSpec(**raw["loss"]),
                           raw["image_size"], raw["channels_last"])
    except (KeyError, TypeError) as e:
        raise FinetuneError(f"{path} is not a checkpoint of this toolkit: {HYPERPARAMETERS}.parts does not "
                            f"describe this toolkit's module ({type(e).__name__}: {e}); {HELP}") from None


def write_record(checkpoint: dict[str, Any], *, plan: Mapping[str, Any], backbone: str, class_names: list[str],
                 data_config: Mapping[str, Any], frozen_units: int, build_options: Mapping[str, Any]) -> None:
    """Adds this toolkit's record, stamped with FORMAT_VERSION, to a checkpoint Lightning is saving."""
    checkpoint[RECORD] = {VERSION: FORMAT_VERSION, "plan": dict(plan), "backbone": backbone,
                          "class_names": list(class_names), "data_config": dict(data_config),
                          "frozen_units": frozen_units, "build_options": dict(build_options)}


def without_training_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint without TRAINING_STATE: what a file never resumed from keeps."""
    return {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}


def migrate(checkpoint: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """Upgrades a checkpoint of this toolkit to FORMAT_VERSION in place, one MIGRATIONS step at a time.

    Args:
        checkpoint: The loaded dict; one without this toolkit's record is left as it is (`check` names what
            it lacks).
        where: The file, for messages.

    Returns:
        The same dict, stamped with FORMAT_VERSION.

    Raises:
        FinetuneError: A version that is not a count, or one newer than this toolkit writes.
    """
    record = checkpoint.get(RECORD)
    if not isinstance(record, dict):
        return checkpoint
    version = record.get(VERSION, UNVERSIONED)
    if type(version) is not int or version < 1:
        raise FinetuneError(f"{where} records {RECORD}.{VERSION} {version!r}, not a format version; {HELP}")
    if version > FORMAT_VERSION:
        raise FinetuneError(f"{where} has checkpoint format {version}, newer than this toolkit reads "
                            f"(formats 1 to {FORMAT_VERSION}): upgrade finetune to load it")
    for step in range(version, FORMAT_VERSION):
        MIGRATIONS[step](checkpoint)
    checkpoint[RECORD][VERSION] = FORMAT_VERSION
    return checkpoint


def read_checkpoint(path: Path, map_location: str = "cpu", mmap: bool = False) -> SavedCheckpoint:
    """Loads a checkpoint of this toolkit (tensors and plain data only), migrated and checked.

    Args:
        path: The .ckpt file.
        map_location: Where tensors go (torch.load's).
        mmap: Map the tensors instead of reading them (cheap when only the record is needed).

    Raises:
        FinetuneError: The file does not load (corrupt, truncated, not PyTorch, or pickled objects that
            torch.load(weights_only=True) refuses), it is another program's checkpoint (no hyper_parameters,
            state_dict or record of this toolkit), or its records have other types than this toolkit writes.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (zip, pickle, EOF) for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FinetuneError(f"{path} cannot be read as a PyTorch checkpoint ({reason}); {HELP}") from None
    return _view(migrate(ckpt, str(path)) if isinstance(ckpt, dict) else ckpt, Path(path))


def _view(ckpt: object, path: Path) -> SavedCheckpoint:
    """The checked reader's view of a loaded checkpoint at FORMAT_VERSION.

    Raises:
        FinetuneError: A key a reader relies on is missing, or holds another type than this toolkit writes.
    """
    missing = _missing_keys(ckpt)
    if missing:
        raise FinetuneError(f"{path} is not a checkpoint of this toolkit: it has no {', '.join(missing)}; {HELP}")
    wrong = _wrong_types(ckpt)
    if wrong:
        raise FinetuneError(f"{path} is not a checkpoint of this toolkit: {wrong}; {HELP}")
    hparams, record = ckpt[HYPERPARAMETERS], ckpt[RECORD]
    return SavedCheckpoint(path, hparams["class_names"], hparams["config"], _parts(hparams["parts"], path),
                           record["plan"], record["backbone"], record["data_config"], record["build_options"],
                           ckpt[STATE_DICT], ckpt.get(EPOCH), tuple(k for k in RESUME_STATE if k not in ckpt))


def _missing_keys(ckpt: object) -> list[str]:
    """The keys, as dotted paths, a reader relies on that `ckpt` lacks."""
    if not isinstance(ckpt, dict):
        return [HYPERPARAMETERS, STATE_DICT, RECORD]
    missing = [] if STATE_DICT in ckpt else [STATE_DICT]
    for block, keys in _REQUIRED.items():
        if not isinstance(ckpt.get(block), dict):
            missing.append(block)
        else:
            missing += [f"{block}.{k}" for k in keys if k not in ckpt[block]]
    return missing


def _wrong_types(ckpt: dict[str, Any]) -> str | None:
    """What in the records the readers use has another type than this toolkit writes, or None."""
    hparams, record = ckpt[HYPERPARAMETERS], ckpt[RECORD]
    names = hparams["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"{HYPERPARAMETERS}.class_names is not a list of class names"
    if not isinstance(ckpt[STATE_DICT], dict):
        return f"{STATE_DICT} is not a mapping of names to tensors"
    if not isinstance(record["backbone"], str):
        return f"{RECORD}.backbone is a {type(record['backbone']).__name__}, not a backbone name"
    epoch = ckpt.get(EPOCH)
    if epoch is not None and (type(epoch) is not int or epoch < 0):
        return f"{EPOCH} is {epoch!r}, not a count of epochs"
    mappings = [(f"{HYPERPARAMETERS}.config", hparams["config"] or {}), (f"{HYPERPARAMETERS}.parts", hparams["parts"])]
    mappings += [(f"{RECORD}.{k}", record[k]) for k in ("plan", "data_config", "build_options")]
    for key, value in mappings:
        if not isinstance(value, dict):
            return f"{key} is a {type(value).__name__}, not a mapping"
    return None


def saved_epoch(path: Path) -> int:
    """The epoch (counted from 0, as Lightning does) a checkpoint of this toolkit was written in; its tensors
    are mapped, not read.

    Raises:
        FinetuneError: The file is not a checkpoint of this toolkit, or records no epoch.
    """
    epoch = read_checkpoint(path, mmap=True).epoch
    if epoch is None:
        raise FinetuneError(f"{path} records no {EPOCH}; {HELP}")
    return epoch

