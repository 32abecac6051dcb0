# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs into .venv.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,data,control,wandb]"
	touch $(VENV_STAMP)

.PHONY: demo test test-all bench lint
demo: $(VENV_STAMP)
	.venv/bin/dipod demo

test: $(VENV_STAMP)
	.venv/bin/lint-imports
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

test-all: $(VENV_STAMP)
	$(PY) -m pytest -q -m ""

bench: $(VENV_STAMP)
	$(PY) benchmarks/run.py --quick

lint: $(VENV_STAMP)
	.venv/bin/ruff check .
