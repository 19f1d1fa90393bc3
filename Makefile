# Two commands do all the set-up: `make run` (the whole pipeline on the embedded default) and
# `make test` (the test suite). Both create or reuse the virtualenv in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch by default; on a GPU machine: make run TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: install install-test run test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/plm-ray run $(ARGS)

lint: install-test
	$(PY) -m ruff check plm_ray pipelines tests benchmarks

test: lint
	$(PY) -m pytest -q -ra tests

# Side-by-side benchmarks (tens of minutes); CORPUS defaults to ../shared/data/corpus
CORPUS ?= ../shared/data/corpus
bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks --corpus $(CORPUS)

clean:
	rm -rf plm_store bench-results.json .pytest_cache
