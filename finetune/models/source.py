"""Where a trained model lives: a run directory, a .ckpt file or an export bundle, and the bundle's config.json.

`resolve_model_source` is the one rule that tells these apart; `BundleConfig` is the one reader and
writer of config.json. Imports no torch: `finetune.inference` uses both without the training stack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune import atomic
from finetune.data.data_config import DataConfig
from finetune.errors import FinetuneError
from finetune.untrusted import read_json

BUNDLE_FORMAT = "finetune-bundle"
FORMAT_VERSION = 1  # raised when a reader of older bundles would misread a new one
CONFIG_NAME = "config.json"
REQUIRED_KEYS = ("format", "format_version", "backbone", "num_classes", "class_names", "data_config")
# Inside a run directory, in order of preference.
RUN_CHECKPOINTS = ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt")
RUN_BUNDLE = "model"
EXPECTED = (f"expected an export bundle (a folder with {CONFIG_NAME}), a run directory (with "
            f"checkpoints/best.ckpt, checkpoints/last.ckpt or {RUN_BUNDLE}/{CONFIG_NAME}) or a .ckpt file")


class BundleError(FinetuneError):
    """A bundle's config.json is missing, unreadable, of another format or incomplete."""


@dataclass(frozen=True)
class BundleConfig:
    """The typed content of BUNDLE/config.json.

    Attributes:
        backbone: Backbone name the weights fit (timm name or tv:NAME).
        class_names: Class names in output index order.
        data_config: The eval preprocessing the network expects.
        build_options: Options the network was built with (rebuilt the same way), or None.
        tta: Default test-time augmentation.
        temperature: Softmax temperature (1.0: uncalibrated).
        split: The run's {"val_split", "seed"}, so `finetune eval` can rebuild its val split; None when unknown.
        format_version: The bundle layout version it was written with.
        extra: Every other key (parity, files, int8, calibration, ...), kept as written.
    """

    backbone: str
    class_names: tuple[str, ...]
    data_config: DataConfig
    build_options: dict[str, Any] | None = None
    tta: str = "none"
    temperature: float = 1.0
    split: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def load(cls, bundle: str | Path) -> BundleConfig:
        """Reads and validates BUNDLE/config.json.

        Raises:
            BundleError: No config.json, not JSON, not a finetune-bundle, a newer format_version,
                a required key missing, or values that do not fit together.
        """
        path = Path(bundle) / CONFIG_NAME
        if not path.is_file():
            raise BundleError(f"{bundle} is not an export bundle: {path} is missing")
        return cls.from_dict(read_json(path, "bundle config", BundleError), where=str(path))

    @classmethod
    def from_dict(cls, raw: Any, where: str = CONFIG_NAME) -> BundleConfig:
        """Validates a parsed config.json; `where` names it in errors."""
        _check_header(raw, where)
        _check_types(raw, where)
        known = {"format", "num_classes", *(f for f in cls.__dataclass_fields__ if f != "extra")}
        try:
            config = cls(backbone=str(raw["backbone"]), class_names=tuple(raw["class_names"]),
                         data_config=DataConfig.from_dict(raw["data_config"]),
                         build_options=raw.get("build_options"), tta=raw.get("tta", "none"),
                         temperature=float(raw.get("temperature", 1.0)), split=raw.get("split"),
                         format_version=raw["format_version"],
                         extra={k: v for k, v in raw.items() if k not in known})
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: data_config or temperature is not valid ({type(e).__name__}: {e}); "
                              f"data_config needs input_size, mean and std") from None
        if raw["num_classes"] != config.num_classes:
            raise BundleError(f"{where}: num_classes {raw['num_classes']} but {config.num_classes} class_names")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of config.json: header and typed fields first, then `extra` in its order."""
        raw = {"format": BUNDLE_FORMAT, "format_version": self.format_version, "backbone": self.backbone,
               "build_options": self.build_options, "num_classes": self.num_classes,
               "class_names": list(self.class_names), "data_config": self.data_config.to_dict(),
               "tta": self.tta, "temperature": self.temperature}
        if self.split is not None:
            raw["split"] = self.split
        return {**raw, **self.extra}

    def save(self, bundle: str | Path) -> Path:
        """Writes BUNDLE/config.json (indented, stable key order) in one rename: never half a file."""
        Path(bundle).mkdir(parents=True, exist_ok=True)
        return atomic.write_text(Path(bundle) / CONFIG_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def _check_header(raw: Any, where: str) -> None:
    """Raises BundleError unless `raw` is a finetune-bundle object this version reads, with every required key."""
    if not isinstance(raw, dict):
        raise BundleError(f"{where} holds a JSON {type(raw).__name__}, not an object; expected the "
                          f"{CONFIG_NAME} written by `finetune export`")
    if raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where} is not a {BUNDLE_FORMAT} config (format: {raw.get('format')!r})")
    version = raw.get("format_version")
    if "format_version" in raw and (type(version) is not int or not 1 <= version <= FORMAT_VERSION):
        raise BundleError(f"{where} has format_version {version!r}; this version of finetune reads format "
                          f"versions 1 to {FORMAT_VERSION}: update finetune, or re-export the bundle with this one")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise BundleError(f"{where} lacks {', '.join(missing)}; a {BUNDLE_FORMAT} config needs "
                          f"{', '.join(REQUIRED_KEYS)}")


def _check_types(raw: dict[str, Any], where: str) -> None:
    """Raises BundleError unless the values the network is rebuilt from have the types `finetune export` writes."""
    names = raw["class_names"]
    if not isinstance(raw["backbone"], str) or not raw["backbone"]:
        raise BundleError(f"{where}: backbone {raw['backbone']!r} is not a backbone name (a timm name or tv:NAME)")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(f"{where}: class_names must be a list of strings, got {_preview(names)}")
    options = raw.get("build_options")
    if options is not None and not isinstance(options, dict):
        raise BundleError(f"{where}: build_options must be an object or null, got {_preview(options)}")


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_bundle(folder: Path) -> bool:
    """True when `folder` holds a config.json (whether it is a valid one is BundleConfig.load's question)."""
    return (folder / CONFIG_NAME).is_file()


@dataclass(frozen=True)
class ModelSource:
    """What a model path points at.

    Attributes:
        path: The path as given.
        bundle: The export bundle folder, or None.
        checkpoint: The checkpoint file, or None.
        run_dir: The run directory: the path itself, or RUN for RUN/checkpoints/X.ckpt; None otherwise.
    """

    path: Path
    bundle: Path | None = None
    checkpoint: Path | None = None
    run_dir: Path | None = None


def resolve_model_source(path: str | Path) -> ModelSource:
    """Tells a bundle, a checkpoint file and a run directory apart.

    - A folder with config.json is a bundle.
    - A file is a checkpoint (whether it loads is the loader's question).
    - Any other folder is a run directory: its first checkpoint of RUN_CHECKPOINTS and its model/ bundle,
      whichever are there (callers choose; a .ckpt given as a file never brings the run's bundle along).

    Raises:
        FinetuneError: The path does not exist, or is a folder with neither a bundle nor a checkpoint.
    """
    path = Path(path)
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return ModelSource(path, checkpoint=path, run_dir=run_dir)
    if not path.is_dir():
        raise FinetuneError(f"{path} does not exist; {EXPECTED}")
    if is_bundle(path):
        return ModelSource(path, bundle=path)
    checkpoint = next((path / c for c in RUN_CHECKPOINTS if (path / c).is_file()), None)
    bundle = path / RUN_BUNDLE if is_bundle(path / RUN_BUNDLE) else None
    if checkpoint is None and bundle is None:
        raise FinetuneError(f"{path} holds no model: {EXPECTED}")
    return ModelSource(path, bundle=bundle, checkpoint=checkpoint, run_dir=path)
