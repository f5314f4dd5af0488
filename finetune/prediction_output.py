"""Writing predictions to CSV or JSON, chosen by the output file's extension."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from finetune import atomic
from finetune.errors import FinetuneError
from finetune.inference import Prediction
from finetune.pathtext import FS_ENCODING, FS_ERRORS, escaped

OUTPUT_SUFFIXES = (".csv", ".json")


def write_predictions(results: Sequence[Prediction], path: str | Path) -> Path:
    """Writes one record per image: path, top-k classes and probabilities, or the error.

    CSV columns: path, error, class_1, probability_1, ..., class_k, probability_k; each path is written
    as the file system's bytes (see `finetune.pathtext`). JSON: a list of {"path", "classes",
    "probabilities", "error"}, a path that is not UTF-8 with "\\udcff" escapes. The file appears whole
    under its name or not at all.

    Raises:
        FinetuneError: The extension is neither .csv nor .json, or the file cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FinetuneError(f"--output {escaped(path)}: unknown extension {escaped(path.suffix)!r}; "
                            f"valid: {', '.join(OUTPUT_SUFFIXES)}")
    _make_folder(path)
    try:
        if path.suffix.lower() == ".json":
            # ensure_ascii: valid JSON whatever the names; json.loads gives back the surrogates of their bytes.
            atomic.write_text(path, json.dumps([asdict(r) for r in results], indent=2, ensure_ascii=True) + "\n")
        else:
            # Byte-exact: the file system's encoding and error handler give each name's bytes back as they were.
            atomic.write_text(path, _csv_text(results), encoding=FS_ENCODING, errors=FS_ERRORS, newline="")
    except OSError as e:
        raise FinetuneError(f"cannot write {escaped(path)}: {e.strerror or e} (write elsewhere with --output)") from e
    return path


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # mkdir's "File exists": a file stands where a folder is needed
        raise FinetuneError(f"--output {escaped(path)}: {escaped(path.parent)} is a file, not a folder") from e
    except OSError as e:
        raise FinetuneError(f"--output {escaped(path)}: cannot make its folder ({e.strerror or e})") from e


def _csv_text(results: Sequence[Prediction]) -> str:
    k = max((len(r.classes) for r in results), default=0)
    header = ["path", "error"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for r in results:
        cells = [c for pair in zip(r.classes, (f"{p:.6f}" for p in r.probabilities)) for c in pair]
        writer.writerow([r.path, r.error or "", *cells, *[""] * (2 * k - len(cells))])
    return text.getvalue()
