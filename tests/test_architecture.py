"""The package's folders import one way: from a higher layer to a lower one, never back up or sideways."""
from __future__ import annotations

import ast
from pathlib import Path

import finetune

PACKAGE = Path(finetune.__file__).parent
# Lowest first. A module may import its own unit and any unit of a lower layer; units that share a
# layer are independent of each other. docs/ARCHITECTURE.md draws the same picture.
LAYERS = [
    {"errors", "atomic"},
    {"pathtext", "untrusted"},
    {"cache", "config", "figures", "heap", "locks", "quiet", "stats"},
    {"console"},
    {"data"},
    {"models"},
    {"training"},
    {"inference"},
    {"evaluation", "bundling", "prediction_output"},
    {"run"},
    {"options", "views"},
    {"search"},
    {"cli"},
]
# The package facade (lazy public API) and `python -m finetune` sit above everything.
FACADES = {"__init__", "__main__"}


def unit_of(module: str) -> str:
    """finetune.training.callbacks.ema -> training; finetune.cli -> cli; finetune -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"finetune.{unit} is in no layer of tests/test_architecture.py: place it")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every finetune import in the file, those inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                and node.module.split(".")[0] == "finetune"):
            modules = [node.module] if node.module != "finetune" else [
                f"finetune.{a.name}" if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                else "finetune"
                for a in node.names]
            found += [(node.lineno, m) for m in modules]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "finetune"]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "<relative>"))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("finetune", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        source = unit_of(module)
        if source in FACADES:
            continue
        for line, target in imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if target == "<relative>":
                bad.append(f"{where}: relative import (spell the module out)")
                continue
            dest = unit_of(target)
            if dest == source:
                continue
            if dest in FACADES:
                bad.append(f"{where}: imports {target}, the package facade")
            elif layer_of(dest) > layer_of(source):
                bad.append(f"{where}: {source} imports {target}, a higher layer")
            elif layer_of(dest) == layer_of(source):
                bad.append(f"{where}: {source} imports {target}, a unit of its own layer")
    return bad


def test_every_import_goes_down_a_layer():
    assert violations() == []


def test_the_walk_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    """The rule would pass vacuously if the walk missed imports: plant one in a copy of the package."""
    import shutil

    copy = tmp_path / "finetune"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "data" / "images.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    from finetune.run.fit import fit\n    return fit\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", copy)
    assert [v for v in violations() if "data/images.py" in v and "finetune.run.fit" in v]


def test_every_unit_is_placed_in_a_layer():
    units = {unit_of(".".join(("finetune", *p.relative_to(PACKAGE).with_suffix("").parts)))
             for p in PACKAGE.rglob("*.py")}
    for unit in units - FACADES:
        layer_of(unit)
