"""The plan table printed before training: each layer group, its size, its state, its LR."""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from finetune.training.module import FinetuneModule


@dataclass(frozen=True)
class PlanRow:
    group: str
    params: int
    trainable: int
    lr: float

    @property
    def state(self) -> str:
        if self.trainable == 0:
            return "frozen"
        return "trains" if self.trainable == self.params else "partly frozen"


def plan_rows(module: FinetuneModule) -> list[PlanRow]:
    """Reads the plan off the module: what trains now, and at which LR."""
    params = dict(module.backbone.model.named_parameters())
    rows = []
    for group, mult in zip(module.backbone.groups, module.lr_mults(), strict=True):
        tensors = [params[n] for n in group.param_names]
        trainable = sum(p.numel() for p in tensors if p.requires_grad)
        rows.append(PlanRow(group.name, group.num_params, trainable, module.config.lr * mult))
    return rows


def print_plan(module: FinetuneModule, console: Console | None = None) -> None:
    """Prints the group / parameters / frozen-or-trainable / LR table."""
    rows = plan_rows(module)
    table = Table(title=f"Plan: {module.backbone.name} -> {len(module.class_names)} classes", title_justify="left")
    for col, justify in (("group", "left"), ("params", "right"), ("state", "left"), ("lr", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        style = "dim" if r.state == "frozen" else None
        lr = "-" if r.state == "frozen" else f"{r.lr:.2e}"
        table.add_row(r.group, f"{r.params:,}", r.state, lr, style=style)
    total, trainable = sum(r.params for r in rows), sum(r.trainable for r in rows)
    table.caption = f"{trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.1f}%)"
    (console or Console()).print(table)
