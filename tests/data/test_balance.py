"""Class imbalance: the warning, --class-weights (auto and file), --sampler balanced."""
from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console

from finetune.config import RunConfig
from finetune.data.balance import (
    balanced_sample_weights,
    class_weights,
    effective_number_weights,
    imbalance_ratio,
    imbalance_warning,
    read_class_weights,
)
from finetune.data.data_config import DataConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.errors import FinetuneError
from finetune.run.fit import fit
from finetune.training.losses import mixed_soft_targets, training_loss


def test_auto_weights_favour_rare_classes_and_keep_the_loss_scale():
    counts = [100, 10, 2]
    w = effective_number_weights(counts)
    assert w[2] > w[1] > w[0] > 0
    n = torch.tensor(counts, dtype=torch.float32)
    assert float((w * n).sum() / n.sum()) == pytest.approx(1.0)  # mean 1 over the training images
    assert torch.allclose(effective_number_weights([7, 7, 7]), torch.ones(3))  # balanced data: unweighted
    # Softer than inverse frequency for a class that is most of the data (Cui et al.'s point).
    inverse = 1 / n
    assert float(w[0] / w[2]) > float(inverse[0] / inverse[2])


def test_weighted_soft_target_loss_matches_torch_with_smoothing_and_mixing():
    torch.manual_seed(0)
    logits, w = torch.randn(6, 3), torch.tensor([0.5, 1.0, 3.0])
    y, partner = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 1, 0, 0])
    target = mixed_soft_targets(y, partner, 0.7, 3, smoothing=0.1)
    ours = training_loss(logits, target, class_weights=w).total
    assert torch.allclose(ours, F.cross_entropy(logits, target, weight=w))
    hard = training_loss(logits, F.one_hot(y, 3).float(), class_weights=w).total
    assert torch.allclose(hard, F.cross_entropy(logits, y, weight=w, reduction="sum") / len(y))


def test_weights_file_names_unknown_and_missing_classes(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"cat": 1.0, "dgo": 2.0}))
    with pytest.raises(FinetuneError, match="unknown classes dgo; missing classes dog; the classes are cat, dog"):
        read_class_weights(path, ["cat", "dog"])
    path.write_text(yaml.safe_dump({"cat": 1.0, "dog": -1}))
    with pytest.raises(FinetuneError, match="numbers >= 0"):
        read_class_weights(path, ["cat", "dog"])
    path.write_text(yaml.safe_dump({"cat": 1.0, "dog": 4}))
    assert class_weights(str(path), {"cat": 5, "dog": 5}).tolist() == [1.0, 4.0]


def test_imbalance_warning_above_ten_to_one():
    assert imbalance_warning({"a": 100, "b": 10}) is None
    message = imbalance_warning({"a": 110, "b": 10, "c": 50})
    assert message.startswith("class imbalance 11:1 in train (a: 110 images, b: 10)")


def test_sampler_and_class_weights_together_are_refused():
    with pytest.raises(ValueError, match="corrects the imbalance twice"):
        RunConfig(backbone="x", data=".", class_weights="auto", sampler="balanced")


def _imbalanced(write_folder, root):
    from PIL import Image

    def draw(cls, rng):
        return Image.new("L", (32, 32), {"big": 40, "small": 200}[cls] + int(rng.integers(0, 20)))

    folder = write_folder(root, ["big", "small"], draw, train=24, val=4)
    for p in sorted((folder / "train" / "small").glob("*.png"))[2:]:
        p.unlink()  # 24 against 2: 12:1
    return folder


def test_balanced_sampler_draws_classes_equally(write_folder, tmp_path):
    data = _imbalanced(write_folder, tmp_path / "d")
    dm = ImageFolderDataModule(data, DataConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), batch_size=26,
                               sampler="balanced", augment="none")
    labels = Counter()
    loader = dm.train_dataloader()
    for _ in range(20):
        for _, y in loader:
            labels.update(y.tolist())
    assert sum(labels.values()) == 20 * 26  # an epoch is still one pass's worth of images
    assert 0.4 < labels[1] / sum(labels.values()) < 0.6  # the 2-image class is drawn half the time
    plain = Counter(y for _, ys in ImageFolderDataModule(data, DataConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                                         batch_size=26, augment="none").train_dataloader()
                    for y in ys.tolist())
    assert plain[1] == 2


class _Weights(pl.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.seen = pl_module.class_weights


def test_run_with_class_weights_auto_trains_with_them_and_records_them(write_folder, tmp_path):
    data = _imbalanced(write_folder, tmp_path / "d")
    out, probe = io.StringIO(), _Weights()
    config = RunConfig(backbone="test_resnet", data=data, weights="none", image_size=32, epochs=1, batch_size=8,
                       workers=0, progress=False, export=False, output=tmp_path / "run", class_weights="auto")
    result = fit(config, Console(file=out, width=200), callbacks=[probe])
    expected = effective_number_weights([24, 2])
    assert torch.allclose(probe.seen, expected)
    resolved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["resolved"]
    assert resolved["class_counts"] == {"big": 24, "small": 2} and resolved["imbalance_ratio"] == 12.0
    assert resolved["class_weights"]["small"] == pytest.approx(float(expected[1]), rel=1e-5)
    assert "Warning: class imbalance 12:1 in train (big: 24 images, small: 2)" in out.getvalue()


def test_weights_file_with_only_unknown_or_only_missing_classes_names_those(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"cat": 1.0, "dog": 2.0, "cow": 1.0, "emu": 3.0}))  # two extra, none missing
    with pytest.raises(FinetuneError, match=r"w\.yaml: unknown classes cow, emu; the classes are cat, dog$"):
        read_class_weights(path, ["cat", "dog"])
    path.write_text(yaml.safe_dump({"cat": 1.0}))  # two missing, none extra
    with pytest.raises(FinetuneError, match=r"w\.yaml: missing classes dog, emu; the classes are cat, dog, emu$"):
        read_class_weights(path, ["cat", "dog", "emu"])


@pytest.mark.parametrize("weight", [True, "heavy", None, [1.0]])
def test_weights_file_refuses_a_weight_that_is_not_a_number(tmp_path, weight):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"cat": 1.0, "dog": weight}))
    with pytest.raises(FinetuneError, match=r"w\.yaml: weights must be numbers >= 0, got \{'dog': "):
        read_class_weights(path, ["cat", "dog"])


def test_weights_file_that_is_not_a_mapping_says_what_it_is(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump([1.0, 2.0]))
    with pytest.raises(FinetuneError, match=r"--class-weights .*w\.yaml: expected a mapping .* got list$"):
        read_class_weights(path, ["cat", "dog"])


@pytest.mark.parametrize(("name", "text"), [("w.yaml", b"cat: [1\n"), ("w.json", b'{"cat": 1,}'),
                                            ("w.yaml", b"cat: \xff\n"), ("missing/w.yaml", None)])
def test_weights_file_that_cannot_be_parsed_names_the_option_and_file(tmp_path, name, text):
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text)
    with pytest.raises(FinetuneError, match=re.escape(f"--class-weights {path}")) as caught:
        read_class_weights(path, ["cat"])
    assert "\n" not in str(caught.value)  # one line, no traceback


def test_auto_weights_keep_their_precision_for_a_set_of_millions_of_images():
    """Against Cui et al.'s definition E_n = 1 + beta + ... + beta^(n-1), summed term by term in float64. With
    N = 2e6, 1 - beta = 5e-7 is about 8 float32 steps below 1: float32 would be percents off, float64 is not."""
    counts = [2_000_000, 5, 3, 1]
    beta = 1 - 1 / sum(counts)
    effective = np.array([np.sum(beta ** np.arange(c, dtype=np.float64)) for c in counts])
    expected = (1 / effective) * sum(counts) / np.sum(np.array(counts) / effective)  # mean 1 over the images
    np.testing.assert_allclose(effective_number_weights(counts).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_balanced_sample_weights_take_labels_of_any_integer_type(dtype):
    """Labels 0, 2, 2, 1 of three classes: 1 / (its class's count) each, whatever integer type holds them
    (torch reads a uint8 index as a mask, so the labels must be cast first)."""
    weights = balanced_sample_weights(np.array([0, 2, 2, 1], dtype=dtype), 3)
    assert weights.tolist() == [1.0, 0.5, 0.5, 1.0]


def test_imbalance_ratio_by_hand():
    assert imbalance_ratio({"a": 30, "b": 5, "c": 10}) == 6.0 and imbalance_ratio({"a": 4, "b": 1}) == 4.0
    assert imbalance_ratio({"a": 1, "b": 0}) == float("inf")  # a class without images: unbounded
    assert imbalance_ratio({"a": 5, "b": 0}) == float("inf")
    assert imbalance_ratio({"a": 0, "b": 0}) == 1.0 and imbalance_ratio({}) == 1.0  # no images: nothing to balance


def test_class_weights_none_means_an_unweighted_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file called "none" to be read instead
    assert class_weights("none", {"cat": 5, "dog": 50}) is None


def test_auto_weights_of_a_one_or_two_image_set_give_the_empty_class_zero():
    """N = 1: beta = 0, E_1 = 1; N = 2: beta = 1/2, E_2 = 1.5 (by hand). Either way the one class with images
    gets the mean-1 weight and the empty class 0, as for any other set."""
    assert effective_number_weights([1, 0]).tolist() == [1.0, 0.0]
    assert effective_number_weights([0, 2]).tolist() == [0.0, 1.0]
    assert effective_number_weights([0, 0]).tolist() == [1.0, 1.0]  # no images: unweighted


def test_weights_from_a_file_are_float32_whatever_the_default_dtype(tmp_path):
    """A notebook that sets torch's default dtype to float64 still gets weights the float32 loss accepts."""
    from finetune.data.balance import read_class_weights

    path = tmp_path / "weights.json"
    path.write_text('{"cat": 1, "dog": 2.5}')
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        weights = read_class_weights(path, ["cat", "dog"])
    finally:
        torch.set_default_dtype(before)
    assert weights.dtype == torch.float32 and weights.tolist() == [1.0, 2.5]
