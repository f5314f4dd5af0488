"""--logger tensorboard / mlflow read back, and the quiet console (with --verbose bringing Lightning back)."""
from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest
from rich.console import Console

from finetune.errors import FinetuneError
from finetune.run.fit import fit


def _val_acc1(run_dir) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["epoch"]): float(r["val/acc1"]) for r in csv.DictReader(f) if r["val/acc1"]}


def test_tensorboard_event_file_holds_the_epoch_figures(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(make_config(epochs=2, val_every=1, export=False, logger=["csv", "tensorboard"]),
                 Console(file=io.StringIO()))
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    assert "val/acc1" in events.Tags()["scalars"] and "train/loss_step" in events.Tags()["scalars"]
    values = [e.value for e in events.Scalars("val/acc1")]
    assert values == pytest.approx(list(_val_acc1(result.run_dir).values()), abs=1e-6)


def test_mlflow_local_store_in_the_run_dir_holds_the_run(make_config):
    from mlflow.tracking import MlflowClient

    result = fit(make_config(epochs=2, val_every=1, export=False, logger=["mlflow"]), Console(file=io.StringIO()))
    client = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("finetune")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/acc1")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        list(_val_acc1(result.run_dir).values()), abs=1e-6)
    assert run.data.params  # the run's settings went with it
    assert (result.run_dir / "metrics.csv").is_file()  # the record is written with any tracker


def test_a_resumed_run_continues_its_mlflow_run(make_config):
    from mlflow.tracking import MlflowClient

    from finetune.run.resume import resume_config

    first = fit(make_config(epochs=1, val_every=1, export=False, logger=["mlflow"]), Console(file=io.StringIO()))
    config = resume_config(first.run_dir, {"epochs": 2})
    fit(config, Console(file=io.StringIO()), ckpt_path=first.run_dir / "checkpoints" / "last.ckpt")
    client = MlflowClient(tracking_uri=f"sqlite:///{first.run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert len(runs) == 1  # not a second run of the same name
    assert len(client.get_metric_history(runs[0].info.run_id, "val/acc1")) == 2


def test_mlflow_uri_sends_the_run_to_another_store(make_config, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    result = fit(make_config(epochs=1, export=False, logger=["mlflow"], mlflow_uri=uri), Console(file=io.StringIO()))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert run.info.run_name == result.run_dir.name and "val/acc1" in run.data.metrics
    assert not (result.run_dir / "mlflow.db").exists()


def test_a_tracker_without_its_package_is_a_clear_error(make_config, monkeypatch):
    import pytorch_lightning.loggers.tensorboard as tb

    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", False)
    with pytest.raises(FinetuneError, match=r"--logger tensorboard needs the tensorboard package: pip install"):
        fit(make_config(epochs=1, export=False, logger=["tensorboard"]), Console(file=io.StringIO()))


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_console_is_quiet_unless_verbose(tiny_data, tmp_path, run_args, verbose):
    # A separate process: Lightning's log handler writes to the stream it found at import, which an
    # in-process runner would not capture, and a quiet test that cannot see the banners proves nothing.
    args = run_args(tiny_data, tmp_path / "run", "--epochs", "2", "--val-every", "1", "--weights", "none",
                    *(["--verbose"] if verbose else []))
    done = subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    noise = ("GPU available", "Tip:", "litlogger", "was configured", "LeafSpec", "`Trainer.fit` stopped")
    if verbose:
        assert "GPU available" in text and "`Trainer.fit` stopped" in text
    else:
        assert not [n for n in noise if n in text], text
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "val top-1" in lines[-1] and "img/s" in lines[-1] and "ETA" in lines[0]
