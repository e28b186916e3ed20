# Two commands do the whole set-up: `make run` (the demo) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU or CUDA: pip picks the build for this machine. Pinned first so that nothing
# pulls a different torch build behind it; pyproject keeps an open range.
TORCH  ?= torch==2.13.0

.PHONY: setup run test lint docs bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/aepipe run

test: setup lint docs
	$(PY) -m pytest

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: setup
	$(VENV)/bin/ruff check aecore flows tests benchmarks
	$(VENV)/bin/ruff format --check aecore flows tests benchmarks

bench: setup
	$(PY) benchmarks/digits_quality.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/score_speed.py
	$(PY) benchmarks/compression.py

clean:
	rm -rf data/raw data/processed data/models data/reports data/latents mlflow/mlflow.db mlflow/artifacts
