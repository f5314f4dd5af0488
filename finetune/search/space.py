"""The search space of `finetune tune`: which RunConfig settings vary, over which ranges.

A space maps RunConfig field names to a `Param`. The default space holds the settings the
fine-tuning seeds search (learning rates and weight decay in log space, freeze depth over the
backbone's layer groups, augmentation, label smoothing, mixup); `--space FILE.yaml` replaces it:

    lr: {log-uniform: [1.0e-4, 3.0e-2]}
    label_smoothing: {uniform: [0.0, 0.2]}
    epochs: {int: [5, 20]}
    augment: {choice: [light, standard]}
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial
from pydantic import ValidationError

from finetune.config import WHOLE_MODEL_POLICIES, Augment, RunConfig
from finetune.errors import FinetuneError
from finetune.models.backbone import create_backbone
from finetune.untrusted import read_yaml

KINDS = ("log-uniform", "uniform", "int", "choice")
# Settings a study sets itself (each trial's folder, no bars, no bundles) or that change no result.
NOT_SEARCHABLE = ("data", "output", "overwrite", "progress", "recipe", "export", "workers")
EDGE = 0.05  # a best value in the outer 5% of its range (log width for log-uniform) "sits at the edge"
NARROW_MARGIN = 0.15  # stage 2 range: the top trials' span plus 15% of the old range's width on each side

Space = dict[str, "Param"]


@dataclass(frozen=True)
class Param:
    """One searched setting.

    Attributes:
        name: RunConfig field name.
        kind: "log-uniform", "uniform", "int" or "choice".
        low: Lower bound (numeric kinds).
        high: Upper bound (numeric kinds), inclusive.
        choices: The values of a "choice".
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution sampled for this setting."""
        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log-uniform")

    def to_yaml(self) -> dict[str, list]:
        """The `--space` file form: {kind: [low, high]} or {choice: [...]}."""
        return {self.kind: list(self.choices) if self.kind == "choice" else [self.low, self.high]}

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(_shown(c) for c in self.choices)
        return f"{self.kind} [{_shown(self.low)}, {_shown(self.high)}]"

    def _scale(self, value: float) -> float:
        return math.log(value) if self.kind == "log-uniform" else float(value)

    def _unscale(self, value: float) -> float:
        return math.exp(value) if self.kind == "log-uniform" else value

    def narrowed(self, values: Sequence[Any], margin: float = NARROW_MARGIN) -> "Param":
        """The range around `values` (the best trials' values), padded by `margin` x the old width,
        in log space for log-uniform settings, and never beyond the old range."""
        if self.kind == "choice":
            return replace(self, choices=tuple(c for c in self.choices if c in values) or self.choices)
        lo, hi = self._scale(self.low), self._scale(self.high)
        pad = margin * (hi - lo)
        new_lo = max(lo, self._scale(min(values)) - pad)
        new_hi = min(hi, self._scale(max(values)) + pad)
        if self.kind == "int":
            return replace(self, low=int(math.floor(new_lo)), high=int(math.ceil(new_hi)))
        # exp(log(x)) may land a rounding error beyond x: the top values themselves stay inside
        low = max(self.low, min(min(values), self._unscale(new_lo)))
        high = min(self.high, max(max(values), self._unscale(new_hi)))
        return replace(self, low=low, high=high)

    def contains(self, value: Any) -> bool:
        """Whether `value` could be drawn from this setting's range or choices."""
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def edge(self, value: Any, tolerance: float = EDGE) -> str | None:
        """"low" or "high" when `value` sits in the outer `tolerance` of the range, else None."""
        if not self.numeric or self.low == self.high:
            return None
        lo, hi, v = self._scale(self.low), self._scale(self.high), self._scale(value)
        position = (v - lo) / (hi - lo)
        return "low" if position <= tolerance else "high" if position >= 1 - tolerance else None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)


def suggest(trial: BaseTrial, space: Mapping[str, Param]) -> dict[str, Any]:
    """Draws one value per setting through `trial` (its sampler decides how)."""
    return {name: _suggest(trial, p) for name, p in space.items()}


def _suggest(trial: BaseTrial, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high))
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.kind == "log-uniform")


def narrow(space: Mapping[str, Param], top: Sequence[Mapping[str, Any]], margin: float = NARROW_MARGIN) -> Space:
    """Stage 2's space: each range shrunk around the values of the `top` trials' parameters.

    Args:
        space: Stage 1's space.
        top: The parameters of the best trials (at least one).
        margin: Padding on each side as a fraction of the old range's width (log width for log-uniform).
    """
    out: Space = {}
    for name, p in space.items():
        values = [t[name] for t in top if name in t]
        out[name] = p.narrowed(values, margin) if values else p
    return out


def space_to_dict(space: Mapping[str, Param]) -> dict[str, dict[str, list]]:
    """The `--space` file form of a space (also stored with the study)."""
    return {name: p.to_yaml() for name, p in space.items()}


# ----- the default space ---------------------------------------------------------------------------
def freeze_choices(backbone: str) -> tuple[str | None, ...]:
    """Freeze depths over the backbone's layer groups: the data's choice (auto, the default, so that
    the default run is a point of the space), nothing frozen, then freezing before each later group
    (the first layer of the group trains), down to the head alone."""
    net, _ = create_backbone(backbone, 2, "none")  # the groups only: no weights needed
    return ("auto", None, *(g.unit_names[0] for g in net.groups[1:]))


def default_space(config: RunConfig) -> Space:
    """The seeds' space for `config`'s backbone. Settings the config fixes another way are left
    out: freeze depth under --freeze-policy linear-probe/full, the backbone LR multiplier under --lr-decay."""
    params = [
        Param("lr", "log-uniform", 1e-4, 3e-2),  # around AdamW's 1e-3, 10x below it and 30x above
        Param("backbone_lr_mult", "log-uniform", 0.01, 1.0),  # 1: one LR for the network; 0.01: a nearly frozen body
        Param("weight_decay", "log-uniform", 1e-5, 0.1),
        Param("freeze_until", "choice", choices=freeze_choices(config.backbone)),
        Param("augment", "choice", choices=get_args(Augment)),
        Param("label_smoothing", "uniform", 0.0, 0.2),
        Param("mixup", "uniform", 0.0, 0.4),  # Beta(alpha, alpha); the usual 0.2-0.4, and off
    ]
    skip = {"freeze_until"} if config.freeze_policy in WHOLE_MODEL_POLICIES else set()
    skip |= {"backbone_lr_mult"} if config.lr_decay is not None else set()
    return {p.name: p for p in params if p.name not in skip}


# ----- space files ---------------------------------------------------------------------------------
def load_space(path: str | Path) -> Space:
    """Reads and checks a `--space` YAML file.

    Raises:
        FinetuneError: A key that is not a searchable RunConfig field (naming the nearest one), an
            unknown kind (naming the valid ones), or bounds or choices RunConfig refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"--space {path}: no such file")
    raw = read_yaml(path, "--space") or {}
    if not isinstance(raw, dict) or not raw:
        raise FinetuneError(f"--space {path}: expected a mapping of settings to ranges, "
                            "e.g. lr: {log-uniform: [1e-4, 1e-2]}")
    return {str(key): parse_param(str(key), value, where=f"--space {path}") for key, value in raw.items()}


def parse_param(key: str, value: Any, where: str = "space") -> Param:
    """One `key: {kind: ...}` entry of a space file, checked against RunConfig."""
    _check_key(key, where)
    if not isinstance(value, dict) or len(value) != 1:
        raise FinetuneError(f"{where}: {key}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, "
                            f"got {value!r}")
    kind, spec = next(iter(value.items()))
    if kind not in KINDS:
        near = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.4)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise FinetuneError(f"{where}: {key}: unknown kind '{kind}'; {hint}valid kinds: {', '.join(KINDS)}")
    param = _param_of_kind(key, kind, spec, where)
    for bound in (param.choices if kind == "choice" else (param.low, param.high)):
        _check_value(key, bound, where)
    return param


def _check_key(key: str, where: str) -> None:
    valid = [k for k in RunConfig.model_fields if k not in NOT_SEARCHABLE]
    if key in NOT_SEARCHABLE:
        raise FinetuneError(f"{where}: '{key}' is set by the study, not searched")
    if key not in valid:
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
        raise FinetuneError(f"{where}: unknown key '{key}'; {hint}")


def _param_of_kind(key: str, kind: str, spec: Any, where: str) -> Param:
    if kind == "choice":
        if not isinstance(spec, list) or not spec:
            raise FinetuneError(f"{where}: {key}: choice needs a non-empty list, got {spec!r}")
        return Param(key, kind, choices=tuple(spec))
    numbers = isinstance(spec, list) and len(spec) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    if not numbers or spec[0] >= spec[1]:
        raise FinetuneError(f"{where}: {key}: {kind} needs [low, high] with low < high, got {spec!r}")
    if kind == "log-uniform" and spec[0] <= 0:
        raise FinetuneError(f"{where}: {key}: log-uniform needs low > 0 (got {spec[0]}); "
                            "use uniform for a range from 0")
    if kind == "int" and not all(float(v).is_integer() for v in spec):
        raise FinetuneError(f"{where}: {key}: int needs whole-number bounds, got {spec!r}")
    low, high = (int(v) for v in spec) if kind == "int" else (float(v) for v in spec)
    return Param(key, kind, low, high)


def _check_value(key: str, value: Any, where: str) -> None:
    """The value alone must be a valid setting (as recipes are checked: placeholders for the required fields)."""
    try:
        RunConfig.model_validate({"backbone": "-", "data": ".", key: value}, context={"unused": "allow"})
    except ValidationError as e:
        raise FinetuneError(f"{where}: {key}: {value!r} is not a valid value: {e.errors()[0]['msg']}") from None
