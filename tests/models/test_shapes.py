"""Every architecture gets a head sized to the task and returns plain logits in both modes."""
import pytest
import torch

from finetune.models.backbone import create_backbone

NUM_CLASSES = 5
# (backbone, input side): the smallest side each architecture accepts, to keep the suite fast.
ZOO = [
    ("tv:resnet18", 64), ("tv:alexnet", 64), ("tv:squeezenet1_0", 64), ("tv:vgg16", 32),
    ("tv:densenet161", 64), ("tv:inception_v3", 80), ("tv:googlenet", 64),
    ("tv:shufflenet_v2_x1_0", 64), ("tv:mobilenet_v2", 64), ("tv:resnext50_32x4d", 64),
    ("tv:wide_resnet50_2", 64), ("tv:mnasnet1_0", 64), ("tv:mobilenet_v3_small", 64),
    ("tv:efficientnet_b0", 64), ("tv:convnext_tiny", 64), ("tv:vit_b_16", 224),
    ("test_resnet", 64), ("test_convnext", 64), ("test_vit", 160), ("test_efficientnet", 64),
]


@pytest.mark.parametrize(("name", "side"), ZOO)
def test_logits_shape_in_train_and_eval(name: str, side: int) -> None:
    torch.manual_seed(0)
    backbone, report = create_backbone(name, NUM_CLASSES, weights="none")
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        for train in (True, False):
            out = backbone.train(train)(x)
            assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES), (name, train)
    assert report.source == "random init"
