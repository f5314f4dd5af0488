"""Head dropout lands right before the classifier; drop path exists or is a clear error."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.errors import FinetuneError
from finetune.models.backbone import create_backbone
from finetune.models.heads import has_stochastic_depth

runner = CliRunner()


def _classifier_inputs(name: str, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the classifier `fc` in train and in eval mode, shape (4, features)."""
    torch.manual_seed(0)  # the same init whatever p
    backbone, _ = create_backbone(name, 3, "none", drop_rate=p)
    seen = []
    fc = backbone.model.fc
    if hasattr(fc, "drop"):  # torchvision: the dropout sits inside the classifier, before its matmul
        fc.drop.register_forward_hook(lambda m, args, out: seen.append(out))
    else:  # timm applies drop_rate in forward_head, right before fc
        fc.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    backbone.train()(x)
    backbone.eval()(x)
    return seen[0], seen[1]


@pytest.mark.parametrize("name", ["test_resnet", "tv:resnet18"])
def test_head_dropout_drops_the_classifier_input(name):
    plain_train, plain_eval = _classifier_inputs(name, 0.0)
    drop_train, drop_eval = _classifier_inputs(name, 0.5)
    alive = plain_train != 0
    dropped = (drop_train[alive] == 0).float().mean().item()
    assert 0.3 < dropped < 0.7  # p = 0.5 over a few hundred features
    kept = drop_train[alive] != 0
    assert torch.allclose(drop_train[alive][kept], 2 * plain_train[alive][kept], atol=1e-5)  # scaled by 1/(1-p)
    assert torch.equal(drop_eval, plain_eval)  # eval mode: no dropout


def test_tv_head_dropout_keeps_weight_names_and_eval_logits():
    torch.manual_seed(0)
    plain, _ = create_backbone("tv:resnet18", 3, "none")
    dropped, _ = create_backbone("tv:resnet18", 3, "none", drop_rate=0.3)
    assert list(plain.model.state_dict()) == list(dropped.model.state_dict())
    dropped.model.load_state_dict(plain.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain.eval()(x), dropped.eval()(x))


def test_drop_path_is_set_or_a_clear_error():
    backbone, _ = create_backbone("test_resnet", 3, "none", drop_path_rate=0.2)
    assert has_stochastic_depth(backbone.model)
    assert not has_stochastic_depth(create_backbone("test_resnet", 3, "none")[0].model)
    with pytest.raises(FinetuneError, match="tv:resnet18 has no stochastic depth.*--drop-path 0"):
        create_backbone("tv:resnet18", 3, "none", drop_path_rate=0.1)


def test_cli_passes_head_dropout_and_drop_path(tiny_data, tmp_path, run_args, monkeypatch):
    import finetune.run.plan as fit_module

    seen = {}
    original = fit_module.create_backbone

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fit_module, "create_backbone", spy)
    args = run_args(tiny_data, tmp_path / "run", "--weights", "none", "--head-dropout", "0.25", "--drop-path", "0.1",
                    "--limit-train-batches", "1", "--limit-val-batches", "1")
    assert runner.invoke(app, args).exit_code == 0
    assert seen["drop_rate"] == 0.25 and seen["drop_path_rate"] == 0.1
    result = runner.invoke(app, [*run_args(tiny_data, tmp_path / "bad", "--weights", "none", "--drop-path", "0.1")[:2],
                                 "tv:resnet18",
                                 *run_args(tiny_data, tmp_path / "bad", "--weights", "none", "--drop-path", "0.1")[3:]])
    assert result.exit_code == 2 and "no stochastic depth" in result.output
