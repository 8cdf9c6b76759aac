# Quick start: `make demo` then `make test`. Both create .venv on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WHEAT := src/gperceiver/datasets/wheat
DEMO_OUT ?= demo-out
JOBS ?= 2

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# The CPU wheel of torch lies on local disk; any other spec pulls a CUDA build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# GBLUP, RKHS and the Perceiver (pretrained once on the genotypes, finetuned per
# fold) on the embedded wheat data, its 10 folds (BENCHMARKS.md: time and accuracy)
demo: $(STAMP)
	$(VENV)/bin/gperceiver evaluate $(WHEAT)/phenotypes.tsv $(WHEAT)/chroms.tsv \
		$(WHEAT)/markers.tsv --methods gblup,rkhs,perceiver-pretrained \
		--out $(DEMO_OUT) --restart

test: $(STAMP)
	$(PYTHON) -m pytest -n $(JOBS) --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
