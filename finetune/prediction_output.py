"""Writing predictions to CSV or JSON, chosen by the output file's extension."""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.inference import Prediction

OUTPUT_SUFFIXES = (".csv", ".json")


def write_predictions(results: Sequence[Prediction], path: str | Path) -> Path:
    """Writes one record per image: path, top-k classes and probabilities, or the error.

    CSV columns: path, error, class_1, probability_1, ..., class_k, probability_k.
    JSON: a list of {"path", "classes", "probabilities", "error"}.

    Raises:
        FinetuneError: The extension is neither .csv nor .json.
    """
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FinetuneError(f"--output {path}: unknown extension {path.suffix!r}; valid: {', '.join(OUTPUT_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    else:
        _write_csv(results, path)
    return path


def _write_csv(results: Sequence[Prediction], path: Path) -> None:
    k = max((len(r.classes) for r in results), default=0)
    header = ["path", "error"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in results:
            cells = [c for pair in zip(r.classes, (f"{p:.6f}" for p in r.probabilities)) for c in pair]
            writer.writerow([r.path, r.error or "", *cells, *[""] * (2 * k - len(cells))])
