"""Every numeric setting at 0, negative, NaN, infinite and huge: accepted and usable, or one clear error, at once."""
from __future__ import annotations

import math
import time
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig, divisors, usable_cpus
from finetune.errors import FinetuneError
from finetune.run.auto_defaults import auto_val_every

runner = CliRunner()
BAD_VALUES = (0, -1, math.nan, math.inf, -math.inf, 10**30)
REQUIRED = {"backbone": "test_resnet", "data": "."}


def _numeric_fields() -> list[str]:
    def numeric(annotation) -> bool:
        args = typing.get_args(annotation) or (annotation,)
        return any(a in (int, float) or numeric(a) for a in args if a is not type(None) and a is not annotation)\
            or annotation in (int, float)
    return [name for name, f in RunConfig.model_fields.items() if numeric(f.annotation)]


def test_every_numeric_field_is_covered():
    assert {"epochs", "batch_size", "image_size", "lr", "workers", "seed", "lr_find_steps", "cache_views",
            "warmup_epochs", "mixup", "ema_decay"} <= set(_numeric_fields())


@pytest.mark.parametrize("name", _numeric_fields())
@pytest.mark.parametrize("value", BAD_VALUES, ids=["0", "-1", "nan", "inf", "-inf", "1e30"])
def test_a_bad_number_is_refused_or_is_finite_and_in_range(name, value):
    started = time.monotonic()
    try:
        config = RunConfig(**REQUIRED, **{name: value})
    except (ValidationError, FinetuneError) as e:  # a FinetuneError from the rules between settings counts too
        assert time.monotonic() - started < 1
        assert "--" + name.replace("_", "-") in str(e).replace("loc", "") or name in str(e)
        return
    got = getattr(config, name)
    assert not (isinstance(got, float) and not math.isfinite(got)), f"--{name} {value} accepted as {got}"
    if name == "workers":  # capped at what the machine has, and said (see the test below)
        assert config.resolved_workers() <= usable_cpus()
    elif isinstance(got, int) and name not in ("limit_train_batches", "limit_val_batches"):  # counts: all of them
        assert got != 10**30, f"--{name} accepted {value}"


@pytest.mark.parametrize("args, message", [
    (["--epochs", "99999999999999999999999"], "--epochs"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--seed", "-1"], "--seed"),
    (["--image-size", "100000"], "--image-size"),
    (["--epochs", "100000", "--val-every", "7"], "choose one of [1, 2, 4, 5, 8, 10, 16,"),
])
def test_the_command_line_refuses_it_in_one_line_within_seconds(tiny_data, tmp_path, args, message):
    started = time.monotonic()
    result = runner.invoke(app, ["run", "--backbone", "test_resnet", "--data", str(tiny_data),
                                 "--output", str(tmp_path / "run"), *args])
    assert time.monotonic() - started < 10  # no divisor loop over 10^23 epochs, no training
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@given(st.integers(1, 20_000))
def test_divisors_are_every_divisor_in_order(n):
    assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]


@given(st.integers(1, 5_000))
def test_the_validation_cadence_is_the_largest_divisor_within_a_twentieth(epochs):
    brute = max(d for d in range(1, epochs + 1) if epochs % d == 0 and d <= -(-epochs // 20))
    assert auto_val_every(epochs) == brute


def test_more_workers_than_cores_are_capped_and_the_plan_says_so(tiny_data, tmp_path, run_args):
    result = runner.invoke(app, [*run_args(tiny_data, tmp_path / "run", "--weights", "none"), "--workers", "10000"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"workers 10000 given -> {usable_cpus()}: the CPU cores this process may use" in text
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]["workers"] == usable_cpus()
