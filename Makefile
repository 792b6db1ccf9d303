# The two entry points the README opens with. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(PY):
	python3 -m venv $(VENV)

.PHONY: demo test lint mutation mcu
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

# The Cortex-M4 check of the exported C runtime (not part of `make test`, which checks the
# host C build): installs what is missing of the cross compiler with its C library and
# QEMU (Debian packages, apt-get as root or with sudo; `command -v` first), then runs
# tests/edge/test_mcu.py with QCORE_MCU_REQUIRED=1: a missing tool fails, never skips.
MCU_PACKAGES_CC := gcc-arm-none-eabi libnewlib-arm-none-eabi
MCU_PACKAGES_QEMU := qemu-system-arm
mcu: $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@missing=""; \
	if ! command -v arm-none-eabi-gcc >/dev/null || \
	   [ ! -f "$$(arm-none-eabi-gcc -print-file-name=libc_nano.a)" ]; then \
	  missing="$(MCU_PACKAGES_CC)"; fi; \
	command -v qemu-system-arm >/dev/null || missing="$$missing $(MCU_PACKAGES_QEMU)"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "make mcu: installing$$missing"; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	QCORE_MCU_REQUIRED=1 $(PY) -m pytest -q -p no:cacheprovider tests/edge/test_mcu.py
