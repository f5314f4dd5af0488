"""Mutation testing by hand: plant each known bug in a copy of the repo and see whether a test fails.

Usage (from the repository root, with the project's virtualenv):
    .venv/bin/python tools/mutate.py              # every mutant, then the score
    .venv/bin/python tools/mutate.py --list       # names, files and descriptions only
    .venv/bin/python tools/mutate.py --check      # do the snippets still apply? (runs no test)
    .venv/bin/python tools/mutate.py --baseline   # first check that the mapped tests pass unmutated
    .venv/bin/python tools/mutate.py --only onecycle_ignores_warmup --only tta_averages_logits
    .venv/bin/python tools/mutate.py --overlap    # which of these mutmut also makes (after `make mutation`)

This list keeps only bugs mutmut cannot express (several edits at once, a call moved, a module-level constant,
a line deleted): `--overlap` compares each mutant's function with the ones mutmut generated in mutants/.

The mutants live in tools/mutants.py: each is one exact source snippet replaced by a realistic bug,
plus the test files (or test node ids) that should notice. The repository is copied once to a
temporary folder; each mutant is applied there, its tests run with `pytest -x -q`, and the file is
restored. The working tree is never touched. A mutant whose snippet is not found exactly once in
the current source is reported as "stale" (the code moved on): update its snippet.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Not copied: the virtualenv, git data and anything a run or a cache wrote.
IGNORED = shutil.ignore_patterns(".venv", ".git", "runs", "demo_runs", "__pycache__", ".pytest_cache",
                                 "*.egg-info", ".ipynb_checkpoints", "build", "dist")
FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")


@dataclass
class Outcome:
    """What happened to one mutant: caught, survived, timeout (counted as caught), stale or error."""

    mutant: Mutant
    status: str
    detail: str = ""
    seconds: float = 0.0
    why: str = ""  # the first assertion lines pytest printed (shown with --verbose)

    @property
    def killed(self) -> bool:
        return self.status in ("caught", "timeout")


def copy_repo(dest: Path) -> Path:
    """Copies the source tree (package, tests, recipes, config) into `dest`/repo."""
    target = dest / "repo"
    shutil.copytree(ROOT, target, ignore=IGNORED, symlinks=True)
    return target


def pytest_env(repo: Path) -> dict[str, str]:
    """Environment that imports `finetune` from the copy and never writes stale bytecode.

    A mutant may keep the file's size and mtime second; a cached .pyc would then hide it.
    """
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(repo)}
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def check_import_location(repo: Path) -> None:
    """Fails loudly if the copy's tests would import the installed package instead of the copy."""
    out = subprocess.run([sys.executable, "-c", "import finetune; print(finetune.__file__)"], cwd=repo,
                         env=pytest_env(repo), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"tests would import finetune from {out}, not from the copy {repo}")


def find_stale(mutant: Mutant, repo: Path) -> str | None:
    """Why the mutant cannot be applied to the current source, or None when its snippet is unique."""
    path = repo / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    count = path.read_text().count(mutant.old)
    return None if count == 1 else f"snippet found {count} times in {mutant.file} (expected exactly once)"


def run_tests(mutant: Mutant, repo: Path, timeout: float) -> tuple[str, str, str]:
    """Runs the mutant's tests in the copy; returns (status, the first failing test or a note, why)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *mutant.tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=pytest_env(repo), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result within {timeout:.0f} s", ""
    output = proc.stdout + proc.stderr
    failed = [m.group(2) for line in output.splitlines() if (m := FAILED_LINE.match(line))]
    why = "\n".join([line for line in output.splitlines() if line.startswith("E ")][:4])
    if proc.returncode == 0:
        return "survived", "", ""
    if proc.returncode in (1, 2) and failed:  # 2: interrupted by -x after a collection error
        return "caught", failed[0], why
    tail = " | ".join(output.strip().splitlines()[-3:])
    return "error", f"pytest exit {proc.returncode}: {tail}", why


def run_mutant(mutant: Mutant, repo: Path, timeout: float) -> Outcome:
    """Applies one mutant to the copy, runs its tests and restores the original file."""
    stale = find_stale(mutant, repo)
    if stale:
        return Outcome(mutant, "stale", stale)
    path = repo / mutant.file
    original = path.read_text()
    start = time.monotonic()
    try:
        path.write_text(original.replace(mutant.old, mutant.new))
        status, detail, why = run_tests(mutant, repo, timeout)
    finally:
        path.write_text(original)
    return Outcome(mutant, status, detail, time.monotonic() - start, why)


def check_baseline(mutants: list[Mutant], repo: Path, timeout: float) -> None:
    """Runs every mapped test once on the unmutated copy: a test that already fails proves nothing."""
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    print(f"baseline: {len(tests)} test paths on the unmutated source ...", end=" ", flush=True)
    status, detail, why = run_tests(Mutant("baseline", "", "", "", tests, ""), repo, timeout * 4)
    print(status if status != "survived" else "pass", flush=True)
    if status != "survived":
        raise SystemExit(f"the unmutated tests do not pass ({status}: {detail})\n{why}\n"
                         "fix them before scoring mutants")


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions and methods by the names mutmut gives them (x_NAME, xǁCLASSǁNAME)."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[f"x_{node.name}"] = node
        elif isinstance(node, ast.ClassDef):
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found[f"x\u01c1{node.name}\u01c1{f.name}"] = f
    return found


def _shape(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function's arguments and body, without its name or position."""
    return ast.dump(function.args) + "".join(ast.dump(statement) for statement in function.body)


def overlap(mutants: list[Mutant]) -> list[str]:
    """The hand-made mutants whose mutated function equals one mutmut generated (mutants/ must exist)."""
    generated: dict[str, dict[str, set[str]]] = {}
    same = []
    for m in mutants:
        mutated_file = ROOT / "mutants" / m.file
        source = (ROOT / m.file).read_text()
        if not mutated_file.exists() or source.count(m.old) != 1:
            continue
        before, after = _functions(ast.parse(source)), _functions(ast.parse(source.replace(m.old, m.new)))
        changed = [name for name in before if name in after and _shape(before[name]) != _shape(after[name])]
        if m.file not in generated:
            shapes: dict[str, set[str]] = {}
            for node in ast.walk(ast.parse(mutated_file.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name \
                        and not node.name.endswith("_orig"):
                    shapes.setdefault(node.name.rsplit("__mutmut_", 1)[0], set()).add(_shape(node))
            generated[m.file] = shapes
        if len(changed) == 1 and _shape(after[changed[0]]) in generated[m.file].get(changed[0], set()):
            same.append(m.name)
    return same


def print_table(outcomes: list[Outcome], verbose: bool = False) -> None:
    width = max(len(o.mutant.name) for o in outcomes)
    print(f"\n{'mutant':<{width}}  {'result':<8}  {'secs':>5}  caught by / note")
    print("-" * (width + 60))
    for o in outcomes:
        print(f"{o.mutant.name:<{width}}  {o.status:<8}  {o.seconds:5.0f}  {o.detail}")
        if verbose and o.why:
            print("    " + o.why.replace("\n", "\n    "))


def score(outcomes: list[Outcome]) -> tuple[int, int]:
    """(killed, scored): stale and broken mutants are not scored; they are reported as errors."""
    scored = [o for o in outcomes if o.status in ("caught", "timeout", "survived")]
    return sum(o.killed for o in scored), len(scored)


def select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return list(MUTANTS)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown mutant(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    return [known[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--check", action="store_true", help="only check that every snippet applies, run no test")
    parser.add_argument("--tests", nargs="+", metavar="TEST",
                        help="run these test paths/node ids instead of each mutant's own "
                             "(e.g. to see what else catches it)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every mapped test on the unmutated source and stop if one fails")
    parser.add_argument("--verbose", action="store_true", help="show the assertion that caught each mutant")
    parser.add_argument("--overlap", action="store_true",
                        help="list the mutants mutmut also generates (run `make mutation` first) and exit")
    parser.add_argument("--min-score", type=float, default=90.0,
                        help="exit 1 below this percentage of caught mutants (default 90), or on any stale mutant")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default 300)")
    args = parser.parse_args(argv)
    mutants = select(args.only)
    if args.tests:
        mutants = [replace(m, tests=tuple(args.tests)) for m in mutants]
    if args.list:
        for m in mutants:
            print(f"{m.name}\n    {m.file}: {m.description}\n    tests: {' '.join(m.tests)}")
        return 0
    if args.overlap:
        if not (ROOT / "mutants").is_dir():
            raise SystemExit("no mutants/ folder: run `make mutation` first")
        same = overlap(mutants)
        print("\n".join(same) or "none: every mutant here is one mutmut does not make")
        return 1 if same else 0
    if args.check:
        stale = [(m.name, why) for m in mutants if (why := find_stale(m, ROOT))]
        for name, why in stale:
            print(f"stale mutant {name}: {why}")
        print(f"{len(mutants) - len(stale)} of {len(mutants)} mutants apply to the current source")
        return 1 if stale else 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="finetune-mutate-") as tmp:
        repo = copy_repo(Path(tmp))
        check_import_location(repo)
        if args.baseline:
            check_baseline(mutants, repo, args.timeout)
        outcomes = []
        for i, m in enumerate(mutants, 1):
            print(f"[{i}/{len(mutants)}] {m.name} ...", end=" ", flush=True)
            outcomes.append(run_mutant(m, repo, args.timeout))
            print(outcomes[-1].status, flush=True)
    print_table(outcomes, args.verbose)
    killed, scored = score(outcomes)
    broken = [o for o in outcomes if o.status in ("stale", "error")]
    print(f"\nscore: {killed}/{scored} mutants caught ({100 * killed / max(1, scored):.0f}%), "
          f"{len(broken)} stale or broken, wall time {time.monotonic() - start:.0f} s")
    return 1 if broken or 100 * killed < args.min_score * scored else 0


if __name__ == "__main__":
    sys.exit(main())
