"""misclassified.csv and its contact sheet: checked against an argmax of the predictions made another way."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import confusion_matrix
from typer.testing import CliRunner

from finetune.cli import app
from finetune.evaluation.evaluate import evaluate
from finetune.evaluation.mistakes import contact_sheet, find_mistakes
from finetune.inference import Predictor
from finetune.pathtext import FS_ENCODING, FS_ERRORS

from bad_inputs import not_utf8, refuses_not_utf8

runner = CliRunner()
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def renamed_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_data with two val images renamed: one name not UTF-8, one with a comma and a quote (CSV quoting)."""
    data = tmp_path_factory.mktemp("mistakes") / "data"
    shutil.copytree(tiny_data, data)
    if refuses_not_utf8(data):
        pytest.skip("this file system refuses names that are not UTF-8")
    for cls, name in (("circle", not_utf8("odd", ".png")), ("square", 'a, "b".png')):
        first = sorted((data / "val" / cls).glob("*.png"))[0]
        first.rename(first.with_name(name))
    return data


def _oracle(bundle: Path, data: Path) -> list[tuple[bytes, str, str, float, float]]:
    """(path bytes, true, predicted, p(predicted), p(true)) of every wrong top-1, the most confident first:
    each file predicted on its own by `predict_files`, its label taken from its folder's name."""
    files = sorted((data / "val").rglob("*.png"))
    predictions = Predictor.load(bundle, tta="none").predict_files(files, top_k=len(CLASSES))
    rows = []
    for path, p in zip(files, predictions):
        probs = dict(zip(p.classes, p.probabilities))
        top = max(probs, key=probs.get)
        true = path.parent.name
        if top != true:
            rows.append((os.fsencode(path), true, top, probs[top], probs[true]))
    return sorted(rows, key=lambda r: -r[3])


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding=FS_ENCODING, errors=FS_ERRORS) as f:
        return list(csv.reader(f))


def test_misclassified_csv_is_every_wrong_argmax_most_confident_first(trained_run, renamed_data, tmp_path):
    out = tmp_path / "ev"
    result = evaluate(trained_run / "model", renamed_data, "val", output=out)
    header, *rows = _csv_rows(out / "misclassified.csv")
    assert header == ["path", "true_class", "predicted_class", "predicted_probability", "true_probability"]
    expected = _oracle(trained_run / "model", renamed_data)
    assert expected, "the tiny model makes mistakes on val"
    assert {os.fsencode(r[0]) for r in rows} == {e[0] for e in expected}  # byte-exact names
    by_path = {e[0]: e for e in expected}
    for r in rows:
        _, true, predicted, p_pred, p_true = by_path[os.fsencode(r[0])]
        assert (r[1], r[2]) == (true, predicted)
        assert float(r[3]) == pytest.approx(p_pred, abs=2e-6) and float(r[4]) == pytest.approx(p_true, abs=2e-6)
    confidences = [float(r[3]) for r in rows]
    assert confidences == sorted(confidences, reverse=True)
    truth = [CLASSES.index(e[1]) for e in expected]
    cm = confusion_matrix(truth, [CLASSES.index(e[2]) for e in expected], labels=range(3))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["misclassified"]["count"] == len(rows) == int(cm.sum() - np.trace(cm))
    assert len(result.mistakes) == len(rows)
    assert {os.fsencode(r[0]) for r in rows} <= {os.fsencode(m.path) for m in result.mistakes}


def test_contact_sheet_shows_the_most_confident_mistakes(trained_run, renamed_data, tmp_path):
    out = tmp_path / "ev"
    result = evaluate(trained_run / "model", renamed_data, "val", output=out)
    with Image.open(out / "misclassified.png") as sheet:
        assert sheet.format == "PNG" and sheet.width >= 160 and sheet.height >= 160
    assert out / "misclassified.png" in result.files
    # One image per tile: a sheet of 1 mistake is one tile, a sheet of 5 is two rows.
    one, five = (contact_sheet(result.mistakes[:n], CLASSES, tmp_path / f"s{n}.png") for n in (1, 5))
    with Image.open(one) as a, Image.open(five) as b:
        assert b.height > a.height and b.width > a.width


def test_no_mistakes_means_a_header_only_csv(tmp_path):
    from finetune.evaluation.mistakes import write_mistakes_csv

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    mistakes = find_mistakes(paths, np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]))
    assert mistakes == []
    assert _csv_rows(write_mistakes_csv(mistakes, ["a", "b"], tmp_path / "m.csv")) == [
        ["path", "true_class", "predicted_class", "predicted_probability", "true_probability"]]


def test_eval_prints_the_count_and_the_files(trained_run, renamed_data, tmp_path):
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(renamed_data), "--output",
                                 str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    rows = _csv_rows(tmp_path / "ev" / "misclassified.csv")[1:]
    text = "".join(result.output.split())  # rich wraps long lines anywhere
    assert f"Misclassified:{len(rows)}of12images" in text
    for r in rows[:10]:
        shown = Path(r[0]).name.encode(FS_ENCODING, FS_ERRORS).decode("utf-8", "backslashreplace")
        assert "".join(shown.split()) in text  # a byte that is not UTF-8 shown as \xff
    assert "misclassified.csv" in text and "misclassified.png" in text


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_find_mistakes_properties(n, c, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    labels = rng.integers(0, c, n)
    mistakes = find_mistakes([f"{i}.png" for i in range(n)], probs, labels)
    wrong = {i for i in range(n) if max(range(c), key=lambda k: (probs[i, k], -k)) != labels[i]}
    assert {int(m.path.split(".")[0]) for m in mistakes} == wrong
    for m in mistakes:
        i = int(m.path.split(".")[0])
        assert m.true == labels[i] and m.predicted != m.true
        assert m.predicted_probability == probs[i].max() and m.true_probability == probs[i, labels[i]]
    confidences = [m.predicted_probability for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)


def test_csv_paths_are_the_files_bytes(tmp_path):
    from finetune.evaluation.mistakes import write_mistakes_csv

    if refuses_not_utf8(tmp_path):
        pytest.skip("this file system refuses names that are not UTF-8")
    odd = tmp_path / not_utf8("x", ".png")
    mistakes = find_mistakes([odd], np.array([[0.3, 0.7]]), np.array([0]))
    raw = write_mistakes_csv(mistakes, ["a", "b"], tmp_path / "m.csv").read_bytes()
    assert os.fsencode(odd) in raw
    assert list(csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"))))[1][1:] == [
        "a", "b", "0.700000", "0.300000"]
