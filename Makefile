# The README's two commands are `make demo` (install, then decompose an example project) and
# `make test` (install, then lint and run every test). Everything else is a step of those.
PY := .venv/bin/python
NODE_RUNNER := clients/node-runner

.PHONY: install proto proto-check lint test demo clean

install: .venv/.installed
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@if [ -f $(NODE_RUNNER)/package-lock.json ]; then npm ci --silent --prefix $(NODE_RUNNER); fi
	touch $@

proto: install           ## regenerate paradecom/v1 from proto/
	$(PY) scripts/gen_protos.py

proto-check: install     ## fail if the committed stubs are stale
	$(PY) scripts/gen_protos.py --check

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy paradecom leader runner

test: install lint
	$(PY) -m pytest

demo: install            ## decompose examples/webshop.yaml on fake-llm with 3 runners
	scripts/demo.sh

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache
