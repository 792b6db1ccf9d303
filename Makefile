# The two entry points the README opens with. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(PY):
	python3 -m venv $(VENV)

.PHONY: demo test lint mutation
demo: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e .
	$(VENV)/bin/qcore run --out runs/demo

test: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(PY)
	$(PY) -m ruff check --fix src tests benchmarks
	$(PY) -m ruff format src tests benchmarks

# Mutation testing (mutmut, pinned in the test extra; not part of `make test`): mutants of
# the modules listed in pyproject.toml [tool.mutmut], then the score per module.
# MUTANTS narrows the run to some mutant names (globs), e.g. MUTANTS='qcore.core.quant.*';
# MUTATION_CHILDREN is how many mutants run at once. PYTHONPATH makes the tests' own
# subprocesses (qcore device ...) import the mutated copy too.
MUTATION_CHILDREN ?= 2
MUTANTS ?=
mutation: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	rm -rf mutants
	mkdir -p mutants/src
	PYTHONPATH=$(CURDIR)/mutants/src $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTANTS)
	$(PY) benchmarks/mutation_score.py --survivors
