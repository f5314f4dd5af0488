"""--logger wandb: the offline run's records read back, a resume continuing the same W&B run, and a W&B
host that does not answer costing seconds (offline, said in one line), not minutes of retries."""
from __future__ import annotations

import csv
import http.server
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from finetune.run import trackers
from finetune.run.fit import fit
from finetune.run.trackers import wandb_offline_reason

BLOCK = 32768  # the .wandb file is a LevelDB log: 32 KiB blocks of records with 7-byte headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file, read by the LevelDB log layout
    (checksum 4 bytes, length 2 bytes little-endian, type 1 byte; a record may span blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _history(records: list, key: str) -> list[float]:
    return [json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "history"
            for item in r.history.item if (item.key or "/".join(item.nested_key)) == key]


def _config(records: list) -> dict:
    updates = [u for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update]
    updates += [u for r in records if r.WhichOneof("record_type") == "run" for u in r.run.config.update]
    return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}


def _val_acc1(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["val/acc1"]) for r in csv.DictReader(f) if r["val/acc1"]]


def _offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(autouse=True)
def fresh_probe():
    """Each test asks its own host: a port number of an earlier test may come back, with its cached answer."""
    trackers._answers.cache_clear()
    yield
    trackers._answers.cache_clear()


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> Path:
    """W&B offline, with its files, settings and caches under the test's folder."""
    home = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(home))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    for var in ("WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    home.mkdir()
    return home


def test_offline_wandb_run_holds_the_settings_and_the_val_figures(make_config, wandb_env):
    result = fit(make_config(epochs=2, val_every=1, export=False, logger=["wandb"]), Console(file=io.StringIO()))
    (offline,) = _offline_runs(wandb_env)
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())["resolved"]["wandb_run_id"]
    assert offline.name.endswith(f"-{recorded}")
    records = wandb_records(offline / f"run-{recorded}.wandb")
    assert _history(records, "val/acc1") == pytest.approx(_val_acc1(result.run_dir), abs=1e-6)
    assert len(_history(records, "val/acc1")) == 2
    config = _config(records)
    assert config["config"]["backbone"] == "test_resnet" and config["config"]["epochs"] == 2
    assert config["class_names"] == ["circle", "square", "triangle"]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {recorded} and runs[0].display_name == result.run_dir.name


def test_a_resumed_run_continues_its_wandb_run(make_config, wandb_env):
    from finetune.run.resume import resume_config

    first = fit(make_config(epochs=1, val_every=1, export=False, logger=["wandb"]), Console(file=io.StringIO()))
    run_id = yaml.safe_load((first.run_dir / "config.yaml").read_text())["resolved"]["wandb_run_id"]
    fit(resume_config(first.run_dir, {"epochs": 2}), Console(file=io.StringIO()),
        ckpt_path=first.run_dir / "checkpoints" / "last.ckpt")
    offline = _offline_runs(wandb_env)
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)  # one W&B run, two starts
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["resolved"]["wandb_run_id"] == run_id
    logged = [v for p in offline for v in _history(wandb_records(p / f"run-{run_id}.wandb"), "val/acc1")]
    assert logged == pytest.approx(_val_acc1(first.run_dir), abs=1e-6) and len(logged) == 2


@pytest.fixture
def silent_host():
    """A loopback address that accepts connections and never answers (a black-holed or stalled W&B host)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_an_unanswering_wandb_host_means_offline_in_seconds(make_config, wandb_env, silent_host, monkeypatch,
                                                             caplog):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_BASE_URL", silent_host)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a key, so that wandb itself would try the host
    monkeypatch.setattr(trackers, "PROBE_SECONDS", 1.0)  # the rule, not the length of the wait, is tested here
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finetune.run.trackers"):
        result = fit(make_config(epochs=1, export=False, logger=["wandb"]), Console(file=io.StringIO()))
    assert time.monotonic() - start < 60  # wandb's own retries against such a host last minutes
    (line,) = [r.getMessage() for r in caplog.records if r.name == "finetune.run.trackers"]
    assert "\n" not in line and silent_host in line and "offline" in line
    (offline,) = _offline_runs(wandb_env)
    run_id = offline.name.rsplit("-", 1)[1]
    assert _history(wandb_records(offline / f"run-{run_id}.wandb"), "val/acc1") == pytest.approx(
        _val_acc1(result.run_dir), abs=1e-6)


def test_the_probe_takes_at_most_its_timeout(silent_host, monkeypatch):
    monkeypatch.setattr(trackers, "PROBE_SECONDS", 1.0)
    start = time.monotonic()
    reason = wandb_offline_reason({"WANDB_BASE_URL": silent_host})
    assert reason is not None and silent_host in reason and "1 s" in reason
    assert time.monotonic() - start < 1.0 + 1.5


def test_a_refused_connection_is_offline_at_once():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert wandb_offline_reason({"WANDB_BASE_URL": f"http://127.0.0.1:{port}"}) is not None
    assert time.monotonic() - start < 2


class _Answering(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(401)  # what a W&B server says to a request without a key: still an answer
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_an_answering_host_or_a_set_mode_leaves_the_mode_to_wandb():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert wandb_offline_reason({"WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}"}) is None
    finally:
        server.shutdown()
    assert wandb_offline_reason({"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9"}) is None


def test_wandb_is_a_logger_choice_in_the_help():
    from finetune.config import RunConfig

    assert "wandb" in RunConfig.model_fields["logger"].description
