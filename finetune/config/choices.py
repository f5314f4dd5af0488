"""Every list of choices of the toolkit's settings and options, each spelled once, as a Literal alias.

RunConfig's fields are typed with these aliases; the command line's help, the modules that act on a
choice and the checks of the options that are no run setting take the names from them
(`typing.get_args`), so adding a choice is one edit here (and its implementation where it acts).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

# ----- run settings (RunConfig fields) ------------------------------------------------------------
Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Optimizer = Literal["adamw", "adam", "sgd", "rmsprop"]
Augment = Literal["auto", "none", "light", "standard", "strong"]
FreezePolicy = Literal["linear-probe", "bn-only", "full"]
Schedule = Literal["cosine", "step", "onecycle", "constant"]
Monitor = Literal["acc1", "balanced-acc", "macro-f1", "loss"]
Sampler = Literal["shuffle", "balanced"]
FeatureCache = Literal["auto", "off"]
Logger = Literal["csv", "tensorboard", "mlflow", "wandb"]
Tta = Literal["none", "flip", "five-crop", "ten-crop", "scales"]
# Lightning's accelerator names, plus its alias gpu and auto.
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
# The named values of settings that otherwise take a path: --weights, --class-weights.
WeightsName = Literal["imagenet", "none"]
ClassWeights = Literal["none", "auto"]

ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
CLASS_WEIGHTS: tuple[str, ...] = get_args(ClassWeights)
# Settings' names that are no path: with_absolute_paths leaves them as they are.
NAMED_VALUES: tuple[str, ...] = tuple(dict.fromkeys((*get_args(WeightsName), *CLASS_WEIGHTS)))
# The policies that set the frozen part themselves, so that --freeze-until has nothing left to say.
WHOLE_MODEL_POLICIES: tuple[FreezePolicy, ...] = ("linear-probe", "full")
# Optimizers without momentum: --momentum and --nesterov have nothing to act on.
NO_MOMENTUM: tuple[Optimizer, ...] = ("adam", "adamw")

# ----- options of other commands (eval, export, demo, tune) ---------------------------------------
# The CLI shows and checks these before it imports the modules that act on them (most import torch).
Split = Literal["val", "test"]  # what `finetune eval` scores
ExportFormat = Literal["onnx", "torchscript"]
QuantizeMode = Literal["int8"]
DemoTask = Literal["textures", "silhouettes", "faces"]
Pruner = Literal["median", "asha", "none"]


def noted(choices: Any, notes: Mapping[str, str] | None = None) -> list[str]:
    """The choices of a Literal alias, each with its note where it has one: ["a", "b (note)"].

    Raises:
        ValueError: A note for a name that is not one of the choices (a renamed or dropped choice).
    """
    names, notes = get_args(choices), notes or {}
    if set(notes) - set(names):
        raise ValueError(f"notes for {sorted(set(notes) - set(names))}, which are not among {names}")
    return [f"{name} ({notes[name]})" if name in notes else name for name in names]


def one_of(choices: Any, notes: Mapping[str, str] | None = None, otherwise: str | None = None) -> str:
    """The choices of a Literal alias as help text, each with its note: "a, b (note) or c".

    Args:
        choices: A Literal alias.
        notes: Choice -> a note shown after it in parentheses.
        otherwise: What else the setting takes, listed last ("PATH to a file"), where it is not only a choice.

    Raises:
        ValueError: A note for a name that is not one of the choices (a renamed or dropped choice).
    """
    shown = noted(choices, notes) + ([otherwise] if otherwise else [])
    return f"{', '.join(shown[:-1])} or {shown[-1]}" if len(shown) > 1 else shown[0]
