"""Writes benchmarks/results/mutation.md from mutmut's results: killed, survived, timeouts per module.

Usage (from the repository root, after `make mutation` or `.venv/bin/mutmut run`):
    .venv/bin/python tools/mutation_report.py            # print the table, write the results file
    .venv/bin/python tools/mutation_report.py --survivors  # also list each survivor not argued equivalent
    .venv/bin/mutmut run $(.venv/bin/python tools/mutation_report.py --alive)  # judge the survivors again

mutmut keeps one verdict per mutant (`mutmut results --all true`); this script only counts them per module
and subtracts the mutants argued equivalent in tools/mutation_equivalents.toml (one line of reason each:
a mutant that no test can tell apart from the original, because the behaviour a user sees is the same).
The score of a module is killed / (mutants - equivalent); a mutant with no covering test counts as alive.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"
RESULTS = ROOT / "benchmarks" / "results" / "mutation.md"
# mutmut names a mutant MODULE.x_FUNCTION__mutmut_N or MODULE.xǁCLASSǁMETHOD__mutmut_N.
NAME = re.compile(r"^\s*(?P<name>(?P<module>[\w.]+?)\.x[_ǁ][^:]*__mutmut_\d+): (?P<status>.+)$")
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
TARGET = 0.85


def verdicts(mutmut: str) -> dict[str, tuple[str, str]]:
    """Maps each mutant's name to (module, status) as `mutmut results --all true` prints them."""
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        match = NAME.match(line)
        if match:
            found[match["name"]] = (match["module"], match["status"].strip())
    return found


def equivalents() -> dict[str, str]:
    """The mutants argued equivalent, each with its one-line reason."""
    if not EQUIVALENTS.exists():
        return {}
    return dict(tomllib.loads(EQUIVALENTS.read_text("utf-8")).get("equivalent", {}))


def table(found: dict[str, tuple[str, str]], equivalent: dict[str, str]) -> tuple[list[str], list[str]]:
    """The markdown rows per module, and the survivors that are neither killed nor argued equivalent."""
    counts: dict[str, Counter] = defaultdict(Counter)
    alive = []
    for name, (module, status) in sorted(found.items()):
        if status == "not checked":
            counts[module]["not checked"] += 1
        elif name in equivalent:
            counts[module]["equivalent"] += 1
        elif status in KILLED:
            counts[module]["timeout" if status == "timeout" else "killed"] += 1
        else:
            counts[module][status] += 1
            alive.append(f"{name}: {status}")
    rows = ["| module | mutants | killed | timeouts | equivalent | survived | no tests | other | not run | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        killed = c["killed"] + c["timeout"]
        other = total - killed - c["equivalent"] - c["survived"] - c["no tests"] - c["not checked"]
        scored = total - c["equivalent"] - c["not checked"]
        if c["not checked"] == total:
            score_text = "not run"
        else:
            score = killed / scored if scored else 1.0
            score_text = f"{score:.0%}" + ("" if score >= TARGET else " (below 85%)")
            if c["not checked"]:
                score_text += " (partial)"
        rows.append(f"| {module} | {total} | {c['killed']} | {c['timeout']} | {c['equivalent']} | {c['survived']} "
                    f"| {c['no tests']} | {other} | {c['not checked']} | {score_text} |")
    return rows, alive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list every survivor not argued equivalent")
    parser.add_argument("--mutmut", default=str(Path(sys.executable).parent / "mutmut"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--alive", action="store_true",
                        help="print only the names of the survivors not argued equivalent, for `mutmut run NAMES` "
                             "to judge them again after new tests (mutmut keeps a verdict until its function changes)")
    args = parser.parse_args()
    found = verdicts(args.mutmut)
    if not found:
        print("mutmut has no results: run `make mutation` first", file=sys.stderr)
        return 1
    equivalent = equivalents()
    stale = sorted(set(equivalent) - set(found))
    rows, alive = table(found, equivalent)
    if args.alive:
        print(" ".join(line.split(":")[0] for line in alive))
        return 0
    print("\n".join(rows))
    if stale:
        print(f"\n{len(stale)} equivalents no longer among the mutants (the code moved): {', '.join(stale)}")
    if args.survivors:
        print("\n".join(["", f"{len(alive)} survivors:"] + alive))
    if not args.no_write:
        body = RESULTS.read_text("utf-8") if RESULTS.exists() else ""
        start, end = "<!-- table -->", "<!-- /table -->"
        block = "\n".join([start, *rows, end])
        if start in body and end in body:
            body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
        else:
            body = body + "\n" + block + "\n"
        RESULTS.write_text(body, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
