PY ?= .venv/bin/python

.PHONY: install proto lint test
install:            ## venv + package + dev tools
	python3 -m venv .venv && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[dev]'

proto:              ## regenerate paradecom/v1 from proto/
	$(PY) scripts/gen_protos.py

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy paradecom leader runner

test:
	$(PY) -m pytest
