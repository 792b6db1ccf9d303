# The two entry points the README opens with. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(PY):
	python3 -m venv $(VENV)

.PHONY: demo test lint
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
