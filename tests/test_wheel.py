"""The built wheel works on its own: installed into a fresh virtual environment, run outside the source tree.

The wheel is built offline from a copy of the repository (so the working tree gets no build/ folder) and
installed without its dependencies; the fresh environment finds those through a .pth line naming this
interpreter's site-packages, a plain path, so the editable install there is not activated.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".venv", ".git", "runs", "demo_runs", "__pycache__", ".pytest_cache", "build",
                                 "dist", "*.egg-info", ".ipynb_checkpoints")
pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    """Runs a command with no PYTHONPATH (nothing may come from the source tree); returns its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COLUMNS"] = "200"  # rich wraps tables at the terminal width
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel built from this tree; returns its folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED, symlinks=True)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", source)
    wheel = next((tmp / "dist").glob("finetune-*.whl"))
    env = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env)
    site = Path(_run(_python(env), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "finetune-test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run(sys.executable, "-m", "pip", "--python", _python(env), "install", "--no-deps", "--no-index", "-q", wheel)
    return env


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _script(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty working folder outside the source tree."""
    return tmp_path_factory.mktemp("elsewhere")


SHIPPED_RECIPES = sorted(p.stem for p in (ROOT / "finetune" / "recipes").glob("*.yaml"))


def test_the_source_tree_ships_recipes() -> None:
    # Guards the tests below: an empty list would make them pass without checking anything.
    assert "linear-probe" in SHIPPED_RECIPES and len(SHIPPED_RECIPES) >= 4


def test_the_installed_package_is_the_wheel_not_the_source(venv: Path, outside: Path) -> None:
    where = _run(_python(venv), "-c", "import finetune; print(finetune.__file__)", cwd=outside).strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where


def test_every_file_of_the_package_folder_is_in_the_wheel(venv: Path, outside: Path) -> None:
    # Whatever sits next to the modules (recipes, and any data file added later) is read at run time.
    listing = ("import finetune, pathlib; root = pathlib.Path(finetune.__file__).parent; "
               "print('\\n'.join(sorted(str(p.relative_to(root)) for p in root.rglob('*') "
               "if p.is_file() and '__pycache__' not in p.parts)))")
    installed = set(_run(_python(venv), "-c", listing, cwd=outside).split())
    package = ROOT / "finetune"
    source = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert source - installed == set()


def test_finetune_recipes_lists_the_shipped_recipes(venv: Path, outside: Path) -> None:
    listed = _run(_script(venv, "finetune"), "recipes", cwd=outside)
    assert all(name in listed for name in SHIPPED_RECIPES), listed


def test_finetune_recipes_show_prints_the_recipe(venv: Path, outside: Path) -> None:
    shown = _run(_script(venv, "finetune"), "recipes", "show", "linear-probe", cwd=outside)
    values = yaml.safe_load((ROOT / "finetune" / "recipes" / "linear-probe.yaml").read_text())
    assert all(f"{key}:" in shown for key in values), shown


def test_the_python_api_loads_recipes_by_name(venv: Path, outside: Path) -> None:
    code = ("import json, finetune; print(json.dumps({r.name: r.values for r in finetune.list_recipes()} | "
            "{'loaded': finetune.load_recipe('linear-probe').values}))")
    got = json.loads(_run(_python(venv), "-c", code, cwd=outside))
    for name in SHIPPED_RECIPES:
        assert got[name] == yaml.safe_load((ROOT / "finetune" / "recipes" / f"{name}.yaml").read_text()), name
    assert got["loaded"] == got["linear-probe"]


def test_a_run_with_a_recipe_name(venv: Path, outside: Path, tiny_data: Path) -> None:
    out = outside / "run"
    _run(_script(venv, "finetune"), "run", "--recipe", "linear-probe", "--backbone", "test_resnet", "--data",
         tiny_data, "--output", out, "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size",
         "8", "--workers", "0", "--no-progress", "--no-export", "--limit-train-batches", "1", cwd=outside)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == "linear-probe"
    assert saved["freeze_policy"] == "linear-probe" and saved["sources"]["freeze_policy"] == "recipe linear-probe"
