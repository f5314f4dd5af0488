"""Weight decay reaches weight matrices only: no biases, norms, position embeddings or class tokens."""
from __future__ import annotations

import torch

from finetune.models.backbone import create_backbone
from finetune.training.optim import param_groups


def _decay_of(name: str, **kw) -> dict[str, float]:
    """Parameter name -> weight decay of its optimizer group, for a backbone built on the meta device."""
    with torch.device("meta"):
        backbone, _ = create_backbone(name, 3, weights="none", **kw)
    names = {id(p): n for n, p in backbone.model.named_parameters()}
    groups = param_groups(backbone, 0.01, 0.05, [1.0] * len(backbone.groups))
    return {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}


def test_timm_vit_position_embedding_and_class_token_get_no_weight_decay():
    decay = _decay_of("test_vit")
    assert decay["pos_embed"] == 0.0 and decay["cls_token"] == 0.0  # timm's model.no_weight_decay()
    assert decay["blocks.0.norm1.weight"] == 0.0 and decay["blocks.0.attn.qkv.bias"] == 0.0
    assert decay["patch_embed.proj.weight"] == 0.05 and decay["blocks.0.attn.qkv.weight"] == 0.05


def test_torchvision_transformer_embeddings_get_no_weight_decay():
    decay = _decay_of("tv:swin_t")
    tables = [n for n in decay if n.endswith("relative_position_bias_table")]
    assert tables and all(decay[n] == 0.0 for n in tables)
    assert decay["features.0.0.weight"] == 0.05
    decay = _decay_of("tv:vit_b_32")
    assert decay["class_token"] == 0.0 and decay["encoder.pos_embedding"] == 0.0
    assert decay["conv_proj.weight"] == 0.05
