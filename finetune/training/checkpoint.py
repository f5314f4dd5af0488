"""A trained model as the export and evaluation code see it: loaded from a run dir or a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic_core import PydanticUndefined

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, scan_data
from finetune.errors import DataError, FinetuneError
from finetune.models.backbone import Backbone
from finetune.models.source import resolve_model_source
from finetune.training.checkpoint_format import HELP, read_checkpoint
from finetune.training.module import FinetuneModule

Item = tuple[Path, int]


@dataclass
class TrainedModel:
    """A fine-tuned backbone with what is needed to preprocess, name and re-check its outputs.

    Attributes:
        backbone: The network, in eval mode, fp32, on CPU.
        class_names: Class names in output index order.
        data_config: The eval preprocessing it was trained with (input size after --image-size).
        config: The run settings saved in the checkpoint (None for a module built from its parts).
        checkpoint: The checkpoint file it came from.
    """

    backbone: Backbone
    class_names: list[str]
    data_config: DataConfig
    config: RunConfig | None
    checkpoint: Path

    def setting(self, name: str) -> object:
        """A run setting from the saved config; RunConfig's default for a module saved without one
        (built from its parts): val_split, seed and tta have defaults, data is None."""
        if self.config is not None:
            return getattr(self.config, name)
        default = RunConfig.model_fields[name].default
        return None if default is PydanticUndefined else default

    @property
    def run_dir(self) -> Path | None:
        """The run directory when the checkpoint sits in RUN_DIR/checkpoints/, else None."""
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else None


def resolve_checkpoint(path: str | Path) -> Path:
    """RUN_DIR -> RUN_DIR/checkpoints/best.ckpt (or last.ckpt); a .ckpt file as it is.

    Raises:
        FinetuneError: Neither a checkpoint file nor a run directory with one (an export bundle has none).
    """
    checkpoint = resolve_model_source(path).checkpoint
    if checkpoint is None:
        raise FinetuneError(f"{path} is neither a checkpoint file nor a run directory with "
                            f"checkpoints/best.ckpt or checkpoints/last.ckpt (an export bundle holds no checkpoint)")
    return checkpoint


def load_trained(path: str | Path) -> TrainedModel:
    """Loads the best checkpoint of a run directory, or a given checkpoint file, offline.

    Raises:
        FinetuneError: No checkpoint there, or one that is corrupt or not made by this toolkit.
    """
    ckpt_path = resolve_checkpoint(path)
    saved = read_checkpoint(ckpt_path)
    try:
        module = FinetuneModule.from_saved(saved)
    except (RuntimeError, ValueError) as e:  # weights or settings that do not fit this version's model
        raise FinetuneError(f"{ckpt_path} does not match the model it describes ({str(e).splitlines()[0]}); "
                            f"{HELP} with this toolkit's version") from None
    backbone = module.backbone
    # The record holds the input the run trained at: the weights' preprocessing at --image-size.
    dc = DataConfig.from_dict(saved.data_config).with_size(module.image_size)
    backbone.data_config = dc
    return TrainedModel(backbone.float().cpu().eval(), module.class_names, dc, module.config, ckpt_path)


def scan_for(trained: TrainedModel, data: str | Path | None = None) -> DatasetIndex:
    """Scans the run's data folder with its label table (or `data`: the run's table when it is the run's folder,
    else none but the folder's own metadata file) with the run's split settings, checking the classes.

    Raises:
        DataError: The folder is gone, or its classes differ from the model's.
    """
    saved = trained.setting("data")
    if data is None and saved is None:
        raise DataError(f"{trained.checkpoint} records no data folder (its module was built without a run config); "
                        f"pass --data DIR with the images of the classes {', '.join(trained.class_names)}")
    root = Path(data) if data is not None else Path(saved)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass --data DIR with the images "
                        f"of the classes {', '.join(trained.class_names)}")
    table = TableSpec.of_run(trained.config, root)
    index = scan_data(root, table, val_split=trained.setting("val_split"), seed=trained.setting("seed"))
    check_classes(index.classes, trained.class_names, root)
    return index


def check_classes(found: list[str], expected: list[str], root: Path) -> None:
    """Raises DataError when a data folder's classes are not the model's, in the model's order."""
    if found != list(expected):
        raise DataError(f"{root} has classes {', '.join(found)} but the model was trained on "
                        f"{', '.join(expected)} (same names, same order required)")


def split_items(index: DatasetIndex, split: str) -> list[Item]:
    """(path, label) pairs of a split; DataError naming the splits present when it is missing."""
    items = getattr(index, split, None)
    if not items:
        raise DataError(f"{index.root} has no images in split {split!r}; present: {', '.join(index.splits)}")
    return items
