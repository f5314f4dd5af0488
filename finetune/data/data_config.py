"""Preprocessing that belongs to a set of pretrained weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class DataConfig:
    """What the pretrained weights expect at their input.

    Attributes:
        input_size: Side of the square network input in pixels.
        mean: Per-channel RGB mean on the 0-1 scale.
        std: Per-channel RGB std on the 0-1 scale.
        interpolation: Resize filter, one of INTERPOLATIONS.
        crop_pct: Eval center-crop fraction: resize the shorter side to input_size / crop_pct, then crop.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> "DataConfig":
        """Builds from a timm data config (`timm.data.resolve_model_data_config`)."""
        interpolation = cfg.get("interpolation", "bilinear")
        if interpolation not in INTERPOLATIONS:  # timm also knows 'random', meaningless at eval
            interpolation = "bilinear"
        return cls(
            input_size=int(cfg["input_size"][-1]),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=interpolation,
            crop_pct=float(cfg.get("crop_pct") or 0.875),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def with_size(self, input_size: int | None) -> "DataConfig":
        """Returns a copy with another input size (None keeps the weights' own)."""
        return self if input_size is None else replace(self, input_size=int(input_size))

    @property
    def resize_size(self) -> int:
        """Shorter side before the eval center crop, e.g. 224 / 0.875 = 256."""
        return int(round(self.input_size / self.crop_pct))
