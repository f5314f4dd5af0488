"""Grad-CAM saliency: known answers on hand-built networks, overlays from `predict` and `eval`, ViTs refused."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from finetune.cli import app
from finetune.evaluation.saliency import EagerModel, SaliencyError, grad_cam, write_saliency

from bad_inputs import not_utf8, refuses_not_utf8

runner = CliRunner()
S = 32  # input side of the hand-built networks: their feature maps keep it (stride 1), so no upsampling blurs


class QuadrantReadout(nn.Module):
    """Features A = ReLU(conv(x)), K channels at full resolution; class c's logit is
    sum_k W[c, k] * mean of A_k over quadrant c only (c = 0: top left, 1: top right, 2: bottom left,
    3: bottom right). `channels_last` makes the feature module output NHWC, as Swin's stages do."""

    def __init__(self, conv: nn.Conv2d, readout: torch.Tensor, channels_last: bool = False):
        super().__init__()
        self.features = nn.Sequential(conv, nn.ReLU())
        self.readout, self.channels_last = readout, channels_last  # (classes, K), at most 4 classes
        if channels_last:
            self.features.append(Permute())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        if self.channels_last:
            a = a.permute(0, 3, 1, 2)
        classes = len(self.readout)
        pooled = torch.stack([q.mean(dim=(2, 3)) for q in quadrants(a)[:classes]], dim=1)  # (B, classes, K)
        return (pooled * self.readout).sum(dim=2)  # (B, classes): class c reads its own quadrant


class Permute(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.permute(0, 2, 3, 1)


def quadrants(a: torch.Tensor) -> list[torch.Tensor]:
    h = a.shape[-1] // 2
    return [a[..., :h, :h], a[..., :h, h:], a[..., h:, :h], a[..., h:, h:]]


def colour_detector() -> nn.Conv2d:
    """1x1 conv whose channel k is input channel k (R, G, B)."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    return conv


def test_saliency_peaks_in_the_quadrant_the_class_reads():
    # Class c reads colour c in quadrant c (red top left, green top right, blue bottom left); the image holds a
    # patch of each colour in its quadrant on a dark noisy ground. The map for class c must sit in quadrant c:
    # a swapped class, a transposed or flipped map, or weights averaged over the wrong axis put it elsewhere.
    net = QuadrantReadout(colour_detector(), torch.eye(3)).eval()
    x = torch.rand(1, 3, S, S) * 0.02
    h = S // 2
    for c, (r, col) in enumerate(((0, 0), (0, h), (h, 0))):
        x[0, c, r + 4:r + 12, col + 4:col + 12] = 1.0
    for c in range(3):
        cam, classes, layer = grad_cam(net, [("features", net.features)], x, torch.tensor([c]))
        assert cam.shape == (1, S, S) and int(classes[0]) == c and layer == f"features ({S}x{S})"
        peak = np.unravel_index(int(cam[0].argmax()), (S, S))
        assert (peak[0] >= h, peak[1] >= h) == (c >= 2, c % 2 == 1), (c, peak)
        assert float(quadrants(cam)[c].sum() / cam.sum()) > 0.8


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "NHWC"])
def test_grad_cam_equals_the_hand_derivation(channels_last):
    # For logit_c = sum_k W[c,k] mean_{Q_c} A_k: d logit_c / d A_k(i,j) = W[c,k] / |Q_c| inside Q_c, 0 outside,
    # so the spatial mean of the gradient is W[c,k] / (S * S) and Grad-CAM is relu(sum_k W[c,k] A_k) up to
    # that positive factor, which the division by the maximum removes.
    torch.manual_seed(0)
    conv, readout = nn.Conv2d(3, 6, 3, padding=1), torch.randn(4, 6)
    net = QuadrantReadout(conv, readout, channels_last).eval()
    x = torch.randn(3, 3, S, S)
    classes = torch.tensor([0, 2, 3])
    cam, _, layer = grad_cam(net, [("features", net.features)], x, classes)
    with torch.no_grad():
        a = torch.relu(conv(x))
        expected = torch.relu(torch.einsum("bk,bkhw->bhw", readout[classes], a))
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)
    assert layer == f"features ({S}x{S})"


def test_without_classes_the_top_class_is_mapped():
    torch.manual_seed(1)
    net = QuadrantReadout(nn.Conv2d(3, 6, 3, padding=1), torch.randn(4, 6)).eval()
    x = torch.randn(4, 3, S, S)
    _, classes, _ = grad_cam(net, [("features", net.features)], x)
    assert classes.tolist() == net(x).argmax(1).tolist()


def _tiny_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i}.png" for i in range(count)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
    return paths


def test_a_vit_is_refused_in_one_line(tmp_path):
    from finetune.models.backbone import create_backbone

    vit, _ = create_backbone("test_vit", 3, "none")
    model = EagerModel(vit.eval().requires_grad_(False), vit.data_config, ["a", "b", "c"])
    with pytest.raises(SaliencyError) as e:
        write_saliency(model, _tiny_images(tmp_path / "img", 2), tmp_path / "out")
    assert "\n" not in str(e.value) and "test_vit" in str(e.value) and "ViT" in str(e.value)
    assert not list((tmp_path / "out").glob("*.png"))


def test_predict_saliency_writes_an_overlay_per_readable_image(trained_run, tiny_data, tmp_path):
    images = sorted((tiny_data / "val").rglob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "saliency"
    (out).mkdir()
    (out / "val_0000.png").write_bytes(b"kept")  # a file already there is never replaced
    result = runner.invoke(app, ["predict", str(tiny_data / "val"), str(broken), "--model", str(trained_run),
                                 "--saliency", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(p for p in out.glob("*.png") if p.read_bytes() != b"kept")
    assert len(written) == len(images)  # one per readable image; the broken file has none
    assert (out / "val_0000.png").read_bytes() == b"kept"
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > im.height > 0
    assert f"{len(images)} overlay(s)" in result.output


def test_predict_saliency_refuses_an_ensemble(trained_run, tiny_data, tmp_path):
    result = runner.invoke(app, ["predict", str(tiny_data / "val"), "--model", str(trained_run), "--model",
                                 str(trained_run), "--saliency", str(tmp_path / "s")])
    assert result.exit_code != 0 and "--saliency maps one model" in result.output
    assert not (tmp_path / "s").exists()


def test_eval_saliency_maps_the_most_confident_mistakes(trained_run, tiny_data, tmp_path):
    out = tmp_path / "ev"
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data), "--output",
                                 str(out), "--saliency", "3"])
    assert result.exit_code == 0, result.output
    with open(out / "misclassified.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = [f"{rank:02d}-{Path(r['path']).stem}.png" for rank, r in enumerate(rows[:3], 1)]
    assert sorted(os.listdir(out / "saliency")) == sorted(expected)
    assert "Saliency (Grad-CAM" in result.output


def test_a_vit_bundle_is_skipped_by_predict_with_one_line(tmp_path):
    from finetune.bundling.bundle import export_bundle
    from finetune.data.images import load_image
    from finetune.models.backbone import create_backbone

    vit, _ = create_backbone("test_vit", 2, "none")
    images = _tiny_images(tmp_path / "img", 2)
    bundle = export_bundle(vit.eval(), ["a", "b"], vit.data_config, tmp_path / "bundle",
                           parity_images=[load_image(p) for p in images])
    result = runner.invoke(app, ["predict", *map(str, images), "--model", str(bundle),
                                 "--saliency", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.output.splitlines() if "Saliency skipped" in ln]
    assert "no spatial feature map" in line and "test_vit" in line
    assert not list((tmp_path / "s").glob("*.png"))


def test_an_overlay_keeps_a_name_that_is_not_utf8(trained_run, tiny_data, tmp_path):
    if refuses_not_utf8(tmp_path):
        pytest.skip("this file system refuses names that are not UTF-8")
    image = tmp_path / not_utf8("odd", ".png")
    image.write_bytes(sorted((tiny_data / "val" / "circle").glob("*.png"))[0].read_bytes())
    result = runner.invoke(app, ["predict", str(image), "--model", str(trained_run), "--saliency",
                                 str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert [os.fsencode(p.name) for p in (tmp_path / "s").iterdir()] == [b"odd\xff\xfe.png"]
    assert "odd\\xff\\xfe.png" in "".join(result.output.split())
