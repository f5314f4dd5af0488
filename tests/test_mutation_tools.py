"""The mutation-testing tools: which tests a mutant runs (tests/conftest.py) and how tools/mutation_report.py
counts mutmut's verdicts into benchmarks/results/mutation.md. Expected values are worked by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    """A module by its file: tests/conftest.py is not importable by name (each test folder's conftest is)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report():
    return _load("mutation_report", ROOT / "tools" / "mutation_report.py")


mutant_tests = _load("tests_root_conftest", ROOT / "tests" / "conftest.py").mutant_tests


def test_a_mutant_runs_its_fast_tests_fastest_first():
    seconds = {"t::slow": 3.0, "t::b": 0.4, "t::a": 0.1, "t::edge": 1.0}
    assert mutant_tests(seconds, limit=1.0, longest=10.0) == ["t::a", "t::b", "t::edge"]


def test_a_function_only_slow_tests_call_gets_its_fastest_one_within_the_longest():
    seconds = {"t::six": 6.0, "t::three": 3.0, "t::twelve": 12.0}
    assert mutant_tests(seconds, limit=1.0, longest=10.0) == ["t::three"]
    assert mutant_tests(seconds, limit=1.0, longest=2.0) == []
    assert mutant_tests({}, limit=1.0, longest=10.0) == []


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.floats(0, 20), max_size=12),
       st.floats(0, 5), st.floats(0, 20))
def test_the_chosen_tests_are_the_fast_ones_or_the_single_fastest(seconds, limit, longest):
    chosen = mutant_tests(seconds, limit, longest)
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(seconds)
    assert [seconds[t] for t in chosen] == sorted(seconds[t] for t in chosen)
    fast = {t for t, s in seconds.items() if s <= limit}
    if fast:
        assert set(chosen) == fast
    elif seconds and min(seconds.values()) <= longest:
        assert len(chosen) == 1 and seconds[chosen[0]] == min(seconds.values())
    else:
        assert chosen == []


def test_the_report_reads_mutmut_names_of_functions_and_methods():
    name = _report().NAME
    line = "    finetune.search.pruning.xǁTrialPruningǁ__init____mutmut_5: survived"
    match = name.match(line)
    assert (match["name"], match["module"], match["status"]) == (
        "finetune.search.pruning.xǁTrialPruningǁ__init____mutmut_5", "finetune.search.pruning", "survived")
    match = name.match("finetune.training.callbacks.ema.x_helper__mutmut_12: no tests")
    assert (match["module"], match["status"]) == ("finetune.training.callbacks.ema", "no tests")


def test_the_score_leaves_out_equivalents_and_counts_no_tests_as_alive():
    report = _report()
    statuses = ["killed"] * 6 + ["timeout", "survived", "survived", "no tests"]
    found = {f"pkg.a.x_f__mutmut_{i}": ("pkg.a", s) for i, s in enumerate(statuses)}
    found.update({f"pkg.b.x_g__mutmut_{i}": ("pkg.b", "not checked") for i in range(3)})
    found.update({"pkg.c.x_h__mutmut_0": ("pkg.c", "killed"), "pkg.c.x_h__mutmut_1": ("pkg.c", "not checked")})
    rows, alive = report.table(found, {"pkg.a.x_f__mutmut_7": "same behaviour"})
    by_module = {row.split(" | ")[0].lstrip("| "): row for row in rows[2:]}
    # pkg.a: 10 mutants, 1 equivalent; 7 of the other 9 killed (6 + 1 timeout) = 78%, below the target.
    assert by_module["pkg.a"] == "| pkg.a | 10 | 6 | 1 | 1 | 1 | 1 | 0 | 0 | 78% (below 85%) |"
    assert by_module["pkg.b"].endswith("| 3 | not run |")
    assert by_module["pkg.c"].endswith("| 1 | 100% (partial) |")
    assert sorted(alive) == ["pkg.a.x_f__mutmut_8: survived", "pkg.a.x_f__mutmut_9: no tests"]


def test_alive_prints_the_names_to_judge_again_and_writes_nothing(monkeypatch, capsys, tmp_path):
    report = _report()
    found = {"pkg.a.x_f__mutmut_1": ("pkg.a", "killed"), "pkg.a.x_f__mutmut_2": ("pkg.a", "survived"),
             "pkg.a.x_f__mutmut_3": ("pkg.a", "no tests"), "pkg.a.x_f__mutmut_4": ("pkg.a", "survived"),
             "pkg.a.x_f__mutmut_5": ("pkg.a", "not checked")}
    monkeypatch.setattr(report, "verdicts", lambda mutmut: found)
    monkeypatch.setattr(report, "equivalents", lambda: {"pkg.a.x_f__mutmut_4": "same behaviour"})
    monkeypatch.setattr(report, "RESULTS", tmp_path / "mutation.md")
    monkeypatch.setattr("sys.argv", ["mutation_report.py", "--alive"])
    assert report.main() == 0
    assert capsys.readouterr().out.split() == ["pkg.a.x_f__mutmut_2", "pkg.a.x_f__mutmut_3"]
    assert not (tmp_path / "mutation.md").exists()
