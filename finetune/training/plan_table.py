"""The plan table printed before training: each layer group, its size, its state, its LR."""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from finetune.training.freeze import unfreeze_epoch
from finetune.training.module import FinetuneModule


@dataclass(frozen=True)
class PlanRow:
    """One layer group in the plan.

    Attributes:
        group: Layer group name.
        params: Scalar parameters in the group.
        trainable: Of those, how many train at the start.
        lr: The group's peak LR (head LR x its multiplier).
        trains_from: First epoch in which the whole group trains; None: never.
    """

    group: str
    params: int
    trainable: int
    lr: float
    trains_from: int | None = 0

    @property
    def state(self) -> str:
        if self.trainable == 0:
            return "frozen"
        return "trains" if self.trainable == self.params else "partly frozen"


def plan_rows(module: FinetuneModule, world_size: int = 1) -> list[PlanRow]:
    """Reads the plan off the module: what trains now, from which epoch, and at which LR."""
    params = dict(module.backbone.model.named_parameters())
    head_lr = module.head_lr(world_size)
    rows = []
    for i, (group, mult) in enumerate(zip(module.backbone.groups, module.lr_mults(), strict=True)):
        trainable = sum(params[n].numel() for n in group.param_names if module.is_trainable(n))
        rows.append(PlanRow(group.name, group.num_params, trainable, head_lr * mult,
                            unfreeze_epoch(module.freeze_schedule, module.backbone, i)))
    return rows


def print_plan(module: FinetuneModule, console: Console | None = None, world_size: int = 1) -> None:
    """Prints the group / parameters / frozen-or-trainable / LR table (LR: a group's peak, once it trains)."""
    rows = plan_rows(module, world_size)
    gradual = bool(module.freeze_schedule.milestones)
    table = Table(title=f"Plan: {module.backbone.name} -> {len(module.class_names)} classes", title_justify="left")
    columns = [("group", "left"), ("params", "right"), ("state", "left"), ("lr", "right")]
    for col, justify in columns + ([("trains from epoch", "right")] if gradual else []):
        table.add_column(col, justify=justify)
    for r in rows:
        style = "dim" if r.state == "frozen" else None
        lr = "-" if r.state == "frozen" and r.trains_from is None else f"{r.lr:.2e}"
        cells = [r.group, f"{r.params:,}", r.state, lr]
        if gradual:
            cells.append("-" if r.trains_from is None else str(r.trains_from + 1))  # counted from 1, as on the console
        table.add_row(*cells, style=style)
    total, trainable = sum(r.params for r in rows), sum(r.trainable for r in rows)
    table.caption = f"{trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.1f}%)"
    (console or Console()).print(table)
