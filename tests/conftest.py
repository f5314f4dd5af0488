"""Shared fixtures: tiny generated image folders and locally saved weights."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl

from finetune.config import RunConfig

# pytest-xdist workers start with COLUMNS=80 in the environment, which would fix the width of the consoles
# finetune.console creates at import: tests that give the CLI a width (env={"COLUMNS": ...}) need it unset.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    # The workers share the cores: one intra-op thread each, in the worker and in the commands, kernels and
    # DDP ranks it starts, or torch's thread pools oversubscribe the cores and spin.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
# Tests never reach the hub: an empty weights folder and caches under the test's own tmp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The toolkit's cache (converted weights, verified scans) in a folder of this session, not the home's.
os.environ.setdefault("FINETUNE_CACHE_DIR", tempfile.mkdtemp(prefix="finetune-cache-"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 shape classes, 8 train + 4 val images each, 32 px, split layout."""
    from finetune.data.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    return make_image_folder(root, "shapes", train_per_class=8, val_per_class=4, size=32,
                             classes=("circle", "square", "triangle"), seed=0)


@pytest.fixture(scope="session")
def test_resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init test_resnet (1000 classes) saved as safetensors: stands in for pretrained weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def fitted_resnet_weights(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet (1000 classes) trained briefly on `tiny_data`: weights from the data's own domain,
    whose last group fits it better than the first (as real pretrained weights do on a related task),
    so `--freeze-until auto` keeps the size rule. Random weights may fit either way."""
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from finetune.data.images import load_image
    from finetune.data.scan import scan_image_folder
    from finetune.data.transforms import build_eval_transform
    from finetune.models.backbone import create_backbone

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False)
    index = scan_image_folder(tiny_data)
    transform = build_eval_transform(create_backbone("test_resnet", 3, "none")[0].data_config.with_size(32))
    x = torch.stack([transform(load_image(p)) for p, _ in index.train])
    y = torch.tensor([label for _, label in index.train])
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(10):  # full-batch steps: the train loss falls from ~7 to ~0.03
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("fitted") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _fast_run_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["run", "--backbone", "test_resnet", "--data", str(data), "--output", str(output),
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--no-progress", "--no-export", *extra]  # export has its own tests; skipping it saves seconds a run


@pytest.fixture(scope="session")
def run_args():
    """Builds CLI arguments for a run that takes seconds: test_resnet, 32 px, 1 epoch, no workers, no export."""
    return _fast_run_args


def draw_arrow(direction: str, rng, size: int = 32):  # noqa: ANN201 - a PIL image
    """A grey arrow pointing left or right at a random height and length: mirroring swaps the classes."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    y, half = int(rng.integers(10, size - 10)), int(rng.integers(8, 13))
    x0, x1 = size // 2 - half, size // 2 + half
    d.line([(x0, y), (x1, y)], fill=255, width=3)
    tip, back = (x1, x1 - 7) if direction == "right" else (x0, x0 + 7)
    d.polygon([(tip, y), (back, y - 6), (back, y + 6)], fill=255)
    return img


def _write_folder(root: Path, classes, draw, train: int = 20, val: int = 4) -> Path:
    """Writes DIR/{train,val}/<class>/*.png with `draw(class, rng)` images; returns DIR."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                draw(cls, rng).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def arrows_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Left and right arrows, 20 train + 4 val each, 32 px grey: a task where mirroring changes the class."""
    return _write_folder(tmp_path_factory.mktemp("arrows"), ["left", "right"], draw_arrow)


@pytest.fixture
def write_folder():
    """`write_folder(root, classes, draw)`: a train/val image folder of `draw(class, rng)` images."""
    return _write_folder


# ----- training runs: a fast RunConfig and a recorder of group LRs -------------------------------
class GroupLRs(pl.Callback):
    """Records every optimizer group's LR and whether its parameters train, before each step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.trains: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        names = {id(p): n for n, p in pl_module.backbone.model.named_parameters()}
        self.steps.append({g["name"]: g["lr"] for g in groups})
        self.trains.append({g["name"]: all(pl_module.is_trainable(names[id(p)]) for p in g["params"]) for g in groups})


@pytest.fixture
def make_config(tiny_data, tmp_path):
    """RunConfig for test_resnet at 32 px, 1 epoch, fp32, no workers; keyword arguments override."""

    def make(**kw) -> RunConfig:
        base = dict(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, batch_size=8, workers=0,
                    progress=False, output=tmp_path / "run", precision="32")
        return RunConfig(**{**base, **kw})

    return make


@pytest.fixture
def group_lrs() -> GroupLRs:
    return GroupLRs()


# ----- a trained run with its bundle: evaluation, export, inference and the run record -----------
@pytest.fixture(scope="session")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`finetune run` with --tta flip: 2 epochs of test_resnet at 32 px; writes RUN/model/."""
    from typer.testing import CliRunner

    from finetune.cli import app

    out = tmp_path_factory.mktemp("evalrun") / "run"
    args = ["run", "--backbone", "test_resnet", "--data", str(tiny_data), "--output", str(out),
            "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--no-progress",
            "--weights", "none", "--lr", "0.01", "--tta", "flip"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out




# Under `make mutation` each mutant runs the tests that called its function. Those of a metric include every
# training test; a surviving mutant would run them all (minutes each). The mutant runs take the tests the
# whole-suite pass timed (mutants/mutmut-stats.json) fastest first, and leave out those slower than
# FINETUNE_MUTATION_TEST_SECONDS (default 1): a mutant only slower tests would catch counts as survived. A
# function that only slower tests call still gets its fastest one, up to FINETUNE_MUTATION_MAX_SECONDS
# (default 10): otherwise every mutant of it would count as survived without a single test run.
def _mutant_under_test() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def mutant_tests(seconds: dict[str, float], limit: float, longest: float) -> list[str]:
    """The tests a mutant runs, fastest first: those that took at most `limit` seconds, or, where none did,
    the fastest one if it took at most `longest`. `seconds` maps each covering test's id to its time."""
    fast = sorted((t for t, s in seconds.items() if s <= limit), key=seconds.__getitem__)
    if fast or not seconds:
        return fast
    fastest = min(seconds, key=seconds.__getitem__)
    return [fastest] if seconds[fastest] <= longest else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first: spread over several processes, the long ones start at once and the short ones
    fill in around them, instead of the last long one running alone at the end. Under a mutant, the fast tests
    only, fastest first."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if not _mutant_under_test() or not Path("mutmut-stats.json").is_file():
        return
    import json

    timed = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    by_id = {item.nodeid: item for item in items}
    chosen = mutant_tests({nodeid: timed.get(nodeid, 0.0) for nodeid in by_id},
                          float(os.environ.get("FINETUNE_MUTATION_TEST_SECONDS", "1")),
                          float(os.environ.get("FINETUNE_MUTATION_MAX_SECONDS", "10")))
    kept = [by_id[nodeid] for nodeid in chosen]
    kept_ids = set(chosen)
    left = [item for item in items if item.nodeid not in kept_ids]
    if left:
        config.hook.pytest_deselected(items=left)
    items[:] = kept
