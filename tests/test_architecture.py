"""The package's folders import one way: from a higher layer to a lower one, never back up or sideways."""
from __future__ import annotations

import ast
import graphlib
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
    {"reporter"},
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


def module_name(path: Path) -> str:
    """PACKAGE/training/callbacks/ema.py -> finetune.training.callbacks.ema; PACKAGE/run/__init__.py -> finetune.run."""
    return ".".join(("finetune", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the finetune modules it imports, at the top or inside a function.

    `from finetune.a import b` points at finetune.a.b where that is a module, else at finetune.a.
    """
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}
    return graph


def import_cycle() -> list[str] | None:
    """One circle of imports among finetune's modules (first module repeated at the end), or None."""
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_no_import_circle():
    """A circle imports only because one of its imports waits inside a function: a module in the wrong room."""
    assert import_cycle() is None


def test_the_circle_check_sees_one_closed_inside_a_function(tmp_path, monkeypatch):
    """The check would pass vacuously if it missed function-level imports: close a circle with one."""
    import shutil

    copy = tmp_path / "finetune"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "training" / "checkpoint_format.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    from finetune.training import checkpoint\n"
                      "    return checkpoint\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", copy)
    cycle = import_cycle()
    assert cycle is not None and {"finetune.training.checkpoint", "finetune.training.checkpoint_format"} <= set(cycle)
